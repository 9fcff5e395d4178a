//! The one error type, and the one place that maps failures to exit codes.
//!
//! Every variant carries a complete, one-line message built where the failure happened: what
//! failed, for which secret, identity or vault, and what to do. Exit codes are part of kvfetch's
//! interface (documented in the README and `--help`) and never change meaning.

/// Everything that can end a kvfetch run early.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Bad flags, environment or configuration.
    #[error("{0}")]
    Usage(String),
    /// No managed-identity token: no endpoint, identity not found, or gave up waiting.
    #[error("{0}")]
    NoToken(String),
    /// Key Vault refused the identity (401 after a fresh token, 403).
    #[error("{0}")]
    AccessDenied(String),
    /// The secret does not exist or is disabled.
    #[error("{0}")]
    NotFound(String),
    /// Key Vault itself said the secret is absent (404 `SecretNotFound`, or disabled): the only
    /// failure an `optional` secret skips. Exit code and kind are [`Error::NotFound`]'s.
    #[error("{0}")]
    Absent(String),
    /// An output could not be written (or cannot carry a value).
    #[error("{0}")]
    Output(String),
    /// Key Vault stayed throttled, failing or unreachable until `--timeout`.
    #[error("{0}")]
    VaultUnavailable(String),
    /// A server kvfetch cannot trust or understand: TLS verification failed (certificate not
    /// trusted, expired, for another name), or an answer too large or not UTF-8.
    #[error("{0}")]
    Protocol(String),
    /// A local resource limit: no thread, no file descriptor, an environment too large for
    /// `execve`. Not the vault's fault, and not retried as if it were.
    #[error("{0}")]
    Resource(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
    /// `exec`: the command was not found.
    #[error("{0}")]
    CommandNotFound(String),
    /// `exec`: the command is not executable.
    #[error("{0}")]
    NotExecutable(String),
}

/// Whether an I/O error is this process's or node's limit: out of file descriptors or memory.
pub fn local_limit(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

impl Error {
    /// `msg` (which names `e`) as the error `kind` makes of it, unless `e` is a local resource
    /// limit: then it is [`Error::Resource`], so a limit is never reported as a bad flag, output
    /// or server.
    pub fn from_io(e: &std::io::Error, kind: fn(String) -> Error, msg: String) -> Error {
        if local_limit(e) {
            Error::Resource(format!(
                "{msg}: a limit of this process or node (ulimit -n, memory), not a fault of what was named"
            ))
        } else {
            kind(msg)
        }
    }
}

/// How the identity endpoint's "kept failing until the deadline" message starts: the one
/// [`Error::NoToken`] that is an outage (see [`Error::outage`]).
pub const GAVE_UP_ON_IDENTITY: &str = "gave up on ";

/// Process exit codes, stable across releases.
pub mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_TOKEN: u8 = 3;
    pub const ACCESS_DENIED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const OUTPUT: u8 = 6;
    pub const VAULT_UNAVAILABLE: u8 = 7;
    pub const PROTOCOL: u8 = 8;
    pub const RESOURCE: u8 = 9;
    pub const NOT_EXECUTABLE: u8 = 126;
    pub const COMMAND_NOT_FOUND: u8 = 127;
}

impl Error {
    /// The exit code this error ends the process with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::NoToken(_) => exit::NO_TOKEN,
            Error::AccessDenied(_) => exit::ACCESS_DENIED,
            Error::NotFound(_) | Error::Absent(_) => exit::NOT_FOUND,
            Error::Output(_) => exit::OUTPUT,
            Error::VaultUnavailable(_) => exit::VAULT_UNAVAILABLE,
            Error::Protocol(_) => exit::PROTOCOL,
            Error::Resource(_) => exit::RESOURCE,
            Error::Other(_) => exit::OTHER,
            Error::CommandNotFound(_) => exit::COMMAND_NOT_FOUND,
            Error::NotExecutable(_) => exit::NOT_EXECUTABLE,
        }
    }

    /// Whether this is an outage: Key Vault or the identity endpoint stayed unreachable, throttled
    /// or failing until the deadline (exit 7, or exit 3 when kvfetch gave up waiting on the
    /// identity endpoint). Never a denial, a missing secret, a refused identity, a usage or an
    /// output error. `--stale-ok` may keep what kvfetch wrote before through an outage only.
    pub fn outage(&self) -> bool {
        match self {
            Error::VaultUnavailable(_) => true,
            // Only the identity endpoint's "gave up on SOURCE at ENDPOINT after …" (see
            // identity::ask): no identity found, a refused or unusable answer are not outages.
            Error::NoToken(t) => t.starts_with(GAVE_UP_ON_IDENTITY),
            _ => false,
        }
    }

    /// The same error with its text passed through `f` (to scrub what must not be shown).
    pub fn map_text(self, f: impl Fn(&str) -> String) -> Error {
        match self {
            Error::Usage(t) => Error::Usage(f(&t)),
            Error::NoToken(t) => Error::NoToken(f(&t)),
            Error::AccessDenied(t) => Error::AccessDenied(f(&t)),
            Error::NotFound(t) => Error::NotFound(f(&t)),
            Error::Absent(t) => Error::Absent(f(&t)),
            Error::Output(t) => Error::Output(f(&t)),
            Error::VaultUnavailable(t) => Error::VaultUnavailable(f(&t)),
            Error::Protocol(t) => Error::Protocol(f(&t)),
            Error::Resource(t) => Error::Resource(f(&t)),
            Error::Other(t) => Error::Other(f(&t)),
            Error::CommandNotFound(t) => Error::CommandNotFound(f(&t)),
            Error::NotExecutable(t) => Error::NotExecutable(f(&t)),
        }
    }

    /// A short name of the kind, for JSON logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::NoToken(_) => "no_token",
            Error::AccessDenied(_) => "access_denied",
            Error::NotFound(_) | Error::Absent(_) => "not_found",
            Error::Output(_) => "output",
            Error::VaultUnavailable(_) => "vault_unavailable",
            Error::Protocol(_) => "protocol",
            Error::Resource(_) => "resource",
            Error::Other(_) => "other",
            Error::CommandNotFound(_) => "command_not_found",
            Error::NotExecutable(_) => "not_executable",
        }
    }
}

/// The exit-code table as `--help` and the README show it.
pub const EXIT_CODES: &str = "  0  success
  1  unexpected error
  2  usage or configuration error
  3  no managed-identity token (no endpoint, identity not found, gave up on the endpoint)
  4  access denied by Key Vault (401 after a fresh token, 403)
  5  secret not found or disabled
  6  output could not be written (or a value the env format cannot carry)
  7  gave up on Key Vault at --timeout (429/5xx/unreachable); watch/exec: failing longer than --max-stale
  8  the vault failed TLS verification (untrusted, expired or wrong-name certificate) or sent an answer
     kvfetch cannot use (larger than 1 MiB, not UTF-8); not retried
  9  a local resource limit: no thread or file descriptor to be had, or an environment too large
     for the kernel to start COMMAND with";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_vault_or_identity_endpoint_is_an_outage() {
        assert!(Error::VaultUnavailable("gave up on secret a".into()).outage());
        assert!(Error::NoToken(format!("{GAVE_UP_ON_IDENTITY}IMDS at http://…")).outage());
        for e in [
            Error::NoToken("no managed identity found: …".into()),
            Error::NoToken("the identity endpoint … refused a token".into()),
            Error::AccessDenied("gave up on".into()),
            Error::NotFound("x".into()),
            Error::Absent("x".into()),
            Error::Usage("x".into()),
            Error::Output("x".into()),
            Error::Protocol("x".into()),
            Error::Resource("x".into()),
        ] {
            assert!(!e.outage(), "{e:?}");
        }
    }
}
