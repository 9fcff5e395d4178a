//! What kvfetch says about itself: each command's `--help` (flags grouped, each with its
//! environment variable and default, then real examples), the short usage a bare `kvfetch`
//! prints, and shell completions. Everything is generated from [`cli::FLAGS`], the same table
//! parsing uses, so help, completions and parsing cannot disagree.

use crate::cli::{self, EXEC, FETCH, FLAGS, Flag, WATCH};
use crate::error::EXIT_CODES;

mod completions;
pub use completions::completions;
use completions::*;

/// The help groups, in the order shown; every flag is in exactly one (a unit test checks).
pub const GROUPS: &[(&str, &[&str])] = &[
    (
        "Source (which secrets, from which vault)",
        &[
            "vault",
            "secret",
            "all",
            "prefix",
            "env-prefix",
            "tag",
            "skip-managed",
            "api-version",
            "ca-file",
            "concurrency",
        ],
    ),
    (
        "Identity (which managed identity, which audience)",
        &[
            "identity-source",
            "client-id",
            "object-id",
            "resource-id",
            "resource",
        ],
    ),
    (
        "Output (where the secrets go)",
        &[
            "dir",
            "dir-layout",
            "env-file",
            "env-format",
            "template",
            "file-mode",
            "owner",
            "require-tmpfs",
            "require-private-dir",
            "allow-env",
        ],
    ),
    (
        "Retry",
        &[
            "timeout",
            "backoff-base",
            "access-retry",
            "start-splay",
            "stale-ok",
        ],
    ),
    ("Logging", &["log-format", "quiet", "verbose"]),
    (
        "Refresh (watch, supervised exec)",
        &[
            "refresh",
            "full-read-every",
            "max-stale",
            "ready-file",
            "health-listen",
            "notify-url",
            "cleanup",
            "on-change",
            "grace",
        ],
    ),
    (
        "Secrets endpoint (watch)",
        &["serve", "serve-token-file", "serve-allow-remote"],
    ),
];

/// One example: the command it belongs to, what it does, environment set before it (shown as
/// `NAME='value'`), and the arguments after `kvfetch`.
pub struct Example {
    pub command: &'static str,
    pub about: &'static str,
    pub env: &'static [(&'static str, &'static str)],
    pub args: &'static str,
}

/// Examples shown in help; a unit test parses every one of them with the real parser.
pub const EXAMPLES: &[Example] = &[
    Example {
        command: "fetch",
        about: "init step: two secrets as files in a tmpfs volume",
        env: &[],
        args: "fetch --vault contoso-kv --secret db-password --secret api-key --dir /run/secrets",
    },
    Example {
        command: "fetch",
        about: "an env file, with a user-assigned identity",
        env: &[],
        args: "fetch --vault contoso-kv --secret DB_PASSWORD=db-password --env-file /run/secrets/app.env --client-id 3f2a9c4e-1b7d-4e8a-9c2f-5d6e7f8a9b0c",
    },
    Example {
        command: "fetch",
        about: "files the app's group (1000) can read",
        env: &[],
        args: "fetch --vault contoso-kv --secret tls-key --dir /run/secrets --file-mode 0440 --owner 65532:1000",
    },
    Example {
        command: "fetch",
        about: "nginx's key and certificate chain from one certificate secret, one request",
        env: &[],
        args: "fetch --vault contoso-kv --secret 'tls.key=contoso-tls?format=key' --secret 'tls.crt=contoso-tls?format=chain' --dir /run/secrets",
    },
    Example {
        command: "doctor",
        about: "why does fetch fail? the same options, checked one by one",
        env: &[],
        args: "doctor --vault contoso-kv --secret db-password --secret api-key --dir /run/secrets",
    },
    Example {
        command: "doctor",
        about: "the same, for a machine (one JSON object per check)",
        env: &[],
        args: "doctor --vault contoso-kv --secret db-password --dir /run/secrets --log-format json",
    },
    Example {
        command: "watch",
        about: "sidecar: refresh every 10 minutes, probes on port 8089",
        env: &[],
        args: "watch --vault contoso-kv --secret db-password --dir /run/secrets --refresh 10m --health-listen 0.0.0.0:8089",
    },
    Example {
        command: "watch",
        about: "the app asks 127.0.0.1:8090 for a value (token in the file kvfetch creates)",
        env: &[],
        args: "watch --vault contoso-kv --secret db-password --serve 127.0.0.1:8090 --serve-token-file /run/secrets/serve-token",
    },
    Example {
        command: "watch",
        about: "tell the app when a secret changed; a ready file for a startup probe",
        env: &[],
        args: "watch --vault contoso-kv --secret api-key --dir /run/secrets --notify-url http://127.0.0.1:8080/reload --ready-file /run/ready",
    },
    Example {
        command: "watch",
        about: "every secret named app-*, as files that all flip at once, and a rendered config",
        env: &[],
        args: "watch --vault contoso-kv --prefix app- --dir /run/secrets --dir-layout atomic --template /etc/app/db.conf.tpl:/run/secrets/db.conf:0440",
    },
    Example {
        command: "exec",
        about: "entrypoint: secrets in the environment, then become the app",
        env: &[],
        args: "exec --vault contoso-kv --secret DB_PASSWORD=db-password -- /app/server",
    },
    Example {
        command: "exec",
        about: "App Service style references already in the environment",
        env: &[(
            "DB_PASSWORD",
            "@Microsoft.KeyVault(SecretUri=https://contoso-kv.vault.azure.net/secrets/db-password)",
        )],
        args: "exec -- /app/server --port 8080",
    },
    Example {
        command: "exec",
        about: "supervised: restart the app when a secret rotates",
        env: &[],
        args: "exec --refresh 15m --vault contoso-kv --secret API_KEY=api-key -- /app/server",
    },
    Example {
        command: "exec",
        about: "an image that reads *_FILE variables: the value in an in-memory file, in no variable",
        env: &[],
        args: "exec --vault contoso-kv --secret 'POSTGRES_PASSWORD_FILE=db-password?file' -- docker-entrypoint.sh postgres",
    },
];

/// What a bare `kvfetch` prints (to stderr, exit 2).
pub fn short_usage() -> String {
    "Usage: kvfetch COMMAND [options]\n\n\
     Commands:\n\
     \x20 fetch        fetch secrets once, write them, exit (init step)\n\
     \x20 watch        fetch, then keep the outputs fresh (sidecar)\n\
     \x20 exec         put secrets in the environment, then become COMMAND (entrypoint)\n\
     \x20 doctor       check what fetch would do and why, writing nothing and showing no value\n\
     \x20 help CMD     the options of one command, with examples (also: kvfetch CMD --help)\n\
     \x20 completions  bash|zsh|fish: a completion script for your shell\n\n\
     Example:\n  kvfetch fetch --vault contoso-kv --secret db-password --dir /run/secrets\n"
        .to_string()
}

fn mode_of(command: Option<&str>) -> u8 {
    match command {
        Some("watch") => WATCH,
        Some("exec") => EXEC,
        _ => FETCH, // fetch and doctor
    }
}

fn intro(command: Option<&str>) -> &'static str {
    match command {
        Some("doctor") => {
            "Usage:\n  kvfetch doctor [fetch options]\n\n\
             `doctor` takes fetch's options and checks what fetch would do, writing nothing and printing no\n\
             value or token: the outputs, the identity source and why, the token's claims (oid, appid,\n\
             tid, aud, expiry), each vault (resolves, connects, trusted certificate) and each secret\n\
             (version and content type), each failure with its fix. Exit 0 when all is well, else the\n\
             code fetch would give. --log-format json prints one JSON object per check.\n"
        }
        Some("watch") => {
            "Usage:\n  kvfetch watch --vault NAME|URL (--secret SPEC... | --all | --prefix P | --tag K=V...)\n\
             \x20               (--dir DIR | --env-file FILE | --template SRC:DEST[:MODE]...) [options]\n\n\
             `watch` fetches like `fetch` (same first-fetch rules and exit codes), then keeps the outputs fresh:\n\
             only changed files are replaced; SIGHUP refreshes now; SIGTERM/SIGINT exit 0.\n"
        }
        Some("exec") => {
            "Usage:\n  kvfetch exec [fetch options] [--refresh DURATION [exec options]] -- COMMAND [ARGS...]\n\n\
             `exec` resolves --secret specs and inherited @Microsoft.KeyVault(...) references into the\n\
             environment, then becomes COMMAND (execve). With --refresh it stays the parent instead:\n\
             it forwards signals, reaps zombies, refreshes, and restarts or signals the child on change.\n\
             A ?file secret (or a reference in a *_FILE variable) sets its variable to the path of a\n\
             file in memory that holds the value (mode 0400): a memfd, or with --refresh a private\n\
             tmpfs directory under /dev/shm rewritten on rotation and removed on exit.\n"
        }
        _ => {
            "Usage:\n  kvfetch fetch --vault NAME|URL (--secret SPEC... | --all | --prefix P | --tag K=V...)\n\
             \x20               (--dir DIR | --env-file FILE | --template SRC:DEST[:MODE]...) [options]\n  \
             kvfetch watch [options]            (sidecar: fetch, then keep fresh; kvfetch help watch)\n  \
             kvfetch exec [options] -- COMMAND  (entrypoint wrapper; kvfetch help exec)\n  \
             kvfetch doctor [fetch options]     (check everything fetch needs; kvfetch help doctor)\n  \
             kvfetch completions bash|zsh|fish  (a completion script)\n\n\
             `fetch` gets one token, fetches every secret in parallel, and writes all outputs or none.\n"
        }
    }
}

fn flag_entry(f: &Flag, mode: u8) -> String {
    let short = f.short.map(|c| format!("-{c}, ")).unwrap_or_default();
    let value = f.value.map(|v| format!(" {v}")).unwrap_or_default();
    let mut out = format!(
        "  {short}--{}{value}\n      {}\n      [env: {}]",
        f.long, f.help, f.env
    );
    if let Some(d) = f.default.filter(|_| !(mode == EXEC && f.long == "refresh")) {
        out.push_str(&format!(" [default: {d}]"));
    }
    out.push('\n');
    out
}

/// One example as a person would type it.
pub fn example_line(e: &Example) -> String {
    let env: String = e.env.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    format!("{env}kvfetch {}", e.args)
}

/// The `--help` text for one command (or the overview: fetch's flags), from [`FLAGS`].
pub fn help(command: Option<&str>) -> String {
    if command == Some("completions") {
        return COMPLETIONS_HELP.to_string();
    }
    let mode = mode_of(command);
    let mut out = format!(
        "kvfetch: read Azure Key Vault secrets with a managed identity.\n\n{}\n\
         Options (each also read from the environment variable shown; a flag wins over its variable):\n",
        intro(command)
    );
    for (title, names) in GROUPS {
        let flags: Vec<&Flag> = names
            .iter()
            .filter_map(|n| FLAGS.iter().find(|f| f.long == *n))
            .filter(|f| f.modes & mode != 0)
            .collect();
        if flags.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{title}:\n"));
        for f in flags {
            out.push_str(&flag_entry(f, mode));
        }
    }
    out.push_str(
        "\n  -h, --help     show this help\n  -V, --version  show the version\n\n\
         Identity endpoint (environment only):\n\
         \x20 AZURE_POD_IDENTITY_AUTHORITY_HOST  base URL replacing IMDS (http://169.254.169.254), as in the Azure SDKs\n\
         \x20 IDENTITY_ENDPOINT + IDENTITY_HEADER  App Service / Container Apps identity endpoint (used when both are set)\n\
         \x20 HTTPS_PROXY, NO_PROXY               honoured for Key Vault; identity endpoints never use a proxy\n\n\
         Examples:\n",
    );
    let name = command.unwrap_or("fetch");
    for e in EXAMPLES.iter().filter(|e| e.command == name) {
        out.push_str(&format!("  # {}\n  {}\n", e.about, example_line(e)));
    }
    out.push_str("\nExit codes:\n");
    out.push_str(EXIT_CODES);
    if mode == EXEC {
        out.push_str("\n  126  COMMAND is not executable\n  127  COMMAND not found\n  otherwise the child's exit status, or 128+N when it was killed by signal N");
    }
    out.push('\n');
    out
}

/// The arguments of an example, split as a shell would (examples hold no quotes).
pub fn example_args(e: &Example) -> Vec<String> {
    // Words are quoted as a shell needs them ('…?format=key'); no example quotes white space.
    e.args
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_string())
        .collect()
}

/// Used by the unit tests: parse an example with the real parser.
pub fn parse_example(e: &Example) -> Result<cli::Options, crate::Error> {
    let env = e
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cli::parse(&example_args(e), &env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_is_in_exactly_one_group() {
        for f in FLAGS {
            let n = GROUPS.iter().filter(|(_, g)| g.contains(&f.long)).count();
            assert_eq!(n, 1, "--{} is in {n} groups", f.long);
        }
        for (_, names) in GROUPS {
            for n in *names {
                assert!(FLAGS.iter().any(|f| f.long == *n), "no flag --{n}");
            }
        }
    }

    #[test]
    fn every_example_parses_and_each_command_has_two_to_four() {
        for e in EXAMPLES {
            let o = parse_example(e).unwrap_or_else(|err| panic!("{}: {err}", e.args));
            assert_eq!(cli::command_name(&o.command), e.command, "{}", e.args);
        }
        for c in ["fetch", "watch", "exec", "doctor"] {
            let n = EXAMPLES.iter().filter(|e| e.command == c).count();
            assert!((2..=4).contains(&n), "{c}: {n} examples");
            let h = help(Some(c));
            for e in EXAMPLES.iter().filter(|e| e.command == c) {
                assert!(h.contains(&example_line(e)), "{c} help lacks {}", e.args);
            }
        }
    }

    #[test]
    fn help_is_grouped_and_shows_only_the_commands_flags() {
        let fetch = help(Some("fetch"));
        assert!(fetch.contains("\nIdentity (") && fetch.contains("\nRetry:\n"));
        assert!(!fetch.contains("--health-listen") && !fetch.contains("Refresh ("));
        let watch = help(Some("watch"));
        assert!(watch.contains("--health-listen") && !watch.contains("--on-change"));
        let exec = help(Some("exec"));
        assert!(exec.contains("--on-change") && !exec.contains("--ready-file"));
        // Each group's heading comes before its first flag, in the order of GROUPS.
        let at = |s: &str| fetch.find(s).unwrap();
        assert!(at("\nSource (") < at("\n  --vault") && at("\n  --vault") < at("\nIdentity ("));
        assert!(at("\nOutput (") < at("\n  --dir") && at("\n  --timeout") > at("\nRetry:"));
    }
}
