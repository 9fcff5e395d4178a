//! The flag table: every flag's names, environment variable, value, default, modes and help
//! line. Parsing ([`super::parse`]), `--help` and the completions ([`super::help`]) all read it.

/// One flag: its names, environment variable, value name (None for a switch), default and help.
pub struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    pub env: &'static str,
    pub value: Option<&'static str>,
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// The commands that take this flag ([`FETCH`] | [`WATCH`] | [`EXEC`]).
    pub modes: u8,
}

/// Mode bits for [`Flag::modes`].
pub const FETCH: u8 = 1;
pub const WATCH: u8 = 2;
pub const EXEC: u8 = 4;
pub(super) const ALL: u8 = FETCH | WATCH | EXEC;

pub(super) const fn flag(
    long: &'static str,
    env: &'static str,
    value: Option<&'static str>,
    default: Option<&'static str>,
    help: &'static str,
) -> Flag {
    Flag {
        long,
        short: None,
        env,
        value,
        default,
        help,
        modes: ALL,
    }
}

pub(super) const fn only(mut f: Flag, modes: u8) -> Flag {
    f.modes = modes;
    f
}

/// Every flag, with the commands that take it.
pub const FLAGS: &[Flag] = &[
    flag(
        "vault",
        "KVFETCH_VAULT",
        Some("NAME|URL"),
        None,
        "Key Vault name (NAME.vault.azure.net) or URL; https only (http for loopback emulators)",
    ),
    flag(
        "secret",
        "KVFETCH_SECRETS",
        Some("SPEC"),
        None,
        "[ALIAS=]NAME[/VERSION][?OPTIONS] or [ALIAS=]https://HOST/secrets/NAME[/VERSION][?OPTIONS]; OPTIONS: format=pem|key|cert|chain|pfx, json=/POINTER, decode=base64|base64url|hex, optional, file (exec: the variable names an in-memory file holding the value; NAME?file sets NAME_FILE), joined by &; repeatable (env: separated by commas, spaces or newlines)",
    ),
    flag(
        "all",
        "KVFETCH_ALL",
        None,
        None,
        "also fetch every enabled, current secret the --vault lists (needs the list permission); re-read on every refresh",
    ),
    flag(
        "prefix",
        "KVFETCH_PREFIX",
        Some("PREFIX"),
        None,
        "also fetch every listed secret whose name starts with PREFIX (any case); files are named without it, variables keep it: app-db -> file db, variable APP_DB (see --env-prefix)",
    ),
    flag(
        "env-prefix",
        "KVFETCH_ENV_PREFIX",
        Some("PREFIX"),
        None,
        "variables of secrets chosen by --all/--prefix/--tag are PREFIX + the name (APP_ + db -> APP_DB), a prefix of the app's own ending in _ (a runtime's namespace such as GO, OTEL_, SPRING_, PG is refused); without it, --prefix P keeps P in the variable (app-db -> APP_DB), --all/--tag need it (or --allow-env NAME for each bare name)",
    ),
    flag(
        "tag",
        "KVFETCH_TAGS",
        Some("KEY=VALUE"),
        None,
        "also fetch every listed secret carrying this tag; repeatable, all must match (env: separated by commas or newlines); with --prefix, both apply",
    ),
    flag(
        "skip-managed",
        "KVFETCH_SKIP_MANAGED",
        None,
        None,
        "with --all/--prefix/--tag: leave out certificate-backed secrets (managed: true)",
    ),
    flag(
        "template",
        "KVFETCH_TEMPLATES",
        Some("SRC:DEST[:MODE]"),
        None,
        "render the text file SRC into DEST, replacing {{ secret \"NAME\" }} (with | json \"/pointer\" and | base64); repeatable (env: separated by newlines)",
    ),
    flag(
        "dir",
        "KVFETCH_DIR",
        Some("DIR"),
        None,
        "write one file per secret here, named by alias or name (created if missing: mode 0700, with r-x for group/others where --file-mode lets them read, e.g. 0440 -> 0750; owned by --owner)",
    ),
    flag(
        "dir-layout",
        "KVFETCH_DIR_LAYOUT",
        Some("LAYOUT"),
        Some("files"),
        "files (one regular file per secret) or atomic (Kubernetes-style: each write a new hidden directory, ..data flipped to it, names symlinked through it)",
    ),
    flag(
        "env-file",
        "KVFETCH_ENV_FILE",
        Some("FILE"),
        None,
        "write all secrets to this env file",
    ),
    flag(
        "env-format",
        "KVFETCH_ENV_FORMAT",
        Some("FORMAT"),
        Some("dotenv"),
        "env file format: dotenv, shell, docker or json",
    ),
    flag(
        "file-mode",
        "KVFETCH_FILE_MODE",
        Some("MODE"),
        Some("0400"),
        "octal mode of the files kvfetch writes (no setuid/setgid/sticky, not group/world-writable)",
    ),
    flag(
        "owner",
        "KVFETCH_OWNER",
        Some("UID[:GID]"),
        None,
        "numeric owner of the files kvfetch writes (needs root or CAP_CHOWN)",
    ),
    flag(
        "require-tmpfs",
        "KVFETCH_REQUIRE_TMPFS",
        None,
        None,
        "fail (exit 6) instead of warning when --dir or the env file's directory is not on tmpfs/ramfs",
    ),
    flag(
        "require-private-dir",
        "KVFETCH_REQUIRE_PRIVATE_DIR",
        None,
        None,
        "fail (exit 6) instead of warning when --dir or the env file's directory is a symlink or writable by group or others",
    ),
    flag(
        "allow-env",
        "KVFETCH_ALLOW_ENV",
        Some("NAME"),
        None,
        "let a secret set this variable although it steers programs (PATH, IFS, ENV, BASH_ENV, SHELLOPTS, BASHOPTS, PS4, GLIBC_TUNABLES, LD_*); a selected secret whose bare name is NAME sets NAME itself; repeatable or comma-separated",
    ),
    flag(
        "identity-source",
        "KVFETCH_IDENTITY_SOURCE",
        Some("SOURCE"),
        Some("auto"),
        "auto (the Azure SDKs' order), imds, app-service, workload, arc, cloud-shell or service-fabric; a source whose variables are incomplete is an error, never a fall back",
    ),
    flag(
        "client-id",
        "AZURE_CLIENT_ID",
        Some("ID"),
        None,
        "use the user-assigned identity with this client id",
    ),
    flag(
        "object-id",
        "KVFETCH_OBJECT_ID",
        Some("ID"),
        None,
        "use the user-assigned identity with this object (principal) id",
    ),
    flag(
        "resource-id",
        "KVFETCH_RESOURCE_ID",
        Some("ARM_ID"),
        None,
        "use the user-assigned identity with this ARM resource id",
    ),
    flag(
        "resource",
        "KVFETCH_RESOURCE",
        Some("URL"),
        None,
        "token audience; default follows the vault's DNS suffix (vault.azure.net, vault.azure.cn, vault.usgovcloudapi.net, vault.microsoftazure.de); required for any other host",
    ),
    flag(
        "ca-file",
        "KVFETCH_CA_FILE",
        Some("PEM"),
        None,
        "extra trusted root certificates for every remote TLS connection (Key Vault, Entra ID, --notify-url), on top of the bundled Mozilla roots and SSL_CERT_FILE / SSL_CERT_DIR",
    ),
    flag(
        "api-version",
        "KVFETCH_API_VERSION",
        Some("VERSION"),
        Some("7.5"),
        "Key Vault REST api-version",
    ),
    flag(
        "concurrency",
        "KVFETCH_CONCURRENCY",
        Some("N"),
        Some("8"),
        "secrets fetched in parallel",
    ),
    flag(
        "timeout",
        "KVFETCH_TIMEOUT",
        Some("DURATION"),
        Some("2m"),
        "deadline for the whole run, retries included (10ms to 24h)",
    ),
    flag(
        "backoff-base",
        "KVFETCH_BACKOFF_BASE",
        Some("DURATION"),
        Some("1s"),
        "first retry delay, 10ms to 1m; later ones double (IMDS 410 is retried for 70 x this)",
    ),
    flag(
        "access-retry",
        "KVFETCH_ACCESS_RETRY",
        Some("DURATION"),
        Some("30s"),
        "how long to keep retrying 403 ForbiddenByRbac/AccessDenied while a role assignment propagates (0s to 1h)",
    ),
    flag(
        "start-splay",
        "KVFETCH_START_SPLAY",
        Some("DURATION"),
        Some("0s"),
        "wait a random time up to DURATION before the first fetch, so a fleet started at once does not hit the vault at once (0s to 1h)",
    ),
    flag(
        "log-format",
        "KVFETCH_LOG_FORMAT",
        Some("FORMAT"),
        Some("text"),
        "log lines on stderr as text or json",
    ),
    Flag {
        long: "quiet",
        short: Some('q'),
        env: "KVFETCH_QUIET",
        value: None,
        default: None,
        help: "log errors only",
        modes: ALL,
    },
    Flag {
        long: "verbose",
        short: Some('v'),
        env: "KVFETCH_VERBOSE",
        value: None,
        default: None,
        help: "log retries and details",
        modes: ALL,
    },
    only(
        flag(
            "refresh",
            "KVFETCH_REFRESH",
            Some("DURATION"),
            Some("5m"),
            "time between refreshes (10ms to 30d), spread +-10% at random (exec: turns on supervision; no default there)",
        ),
        WATCH | EXEC,
    ),
    only(
        flag(
            "max-stale",
            "KVFETCH_MAX_STALE",
            Some("DURATION"),
            None,
            "when refreshes have failed this long (10ms to 365d), fail /readyz and exit 7 (default: serve the last good secrets for ever)",
        ),
        WATCH | EXEC,
    ),
    only(
        flag(
            "stale-ok",
            "KVFETCH_STALE_OK",
            Some("DURATION"),
            None,
            "when Key Vault or the identity endpoint stays unreachable (exit 7 or 3), keep the outputs this kvfetch wrote at most DURATION ago (1s to 365d; checked against its manifest) and exit 0 / become ready marked stale; needs --dir or --env-file",
        ),
        FETCH | WATCH,
    ),
    only(
        flag(
            "full-read-every",
            "KVFETCH_FULL_READ_EVERY",
            Some("DURATION"),
            Some("1h"),
            "refreshes list the vault and GET only secrets whose 'updated' changed; every DURATION one refresh GETs every secret (10ms to 30d)",
        ),
        WATCH | EXEC,
    ),
    only(
        flag(
            "ready-file",
            "KVFETCH_READY_FILE",
            Some("PATH"),
            None,
            "created after the first complete write, removed on exit",
        ),
        WATCH,
    ),
    only(
        flag(
            "health-listen",
            "KVFETCH_HEALTH_LISTEN",
            Some("ADDR"),
            None,
            "serve /healthz, /readyz and /metrics on this address (e.g. 127.0.0.1:8089; exec: with --refresh)",
        ),
        WATCH | EXEC,
    ),
    only(
        flag(
            "serve",
            "KVFETCH_SERVE",
            Some("ADDR"),
            None,
            "serve GET /v1/secrets/NAME (the value; ?format=json for name, value, version, contentType, updated) on this loopback address, e.g. 127.0.0.1:8090; needs --serve-token-file",
        ),
        WATCH,
    ),
    only(
        flag(
            "serve-token-file",
            "KVFETCH_SERVE_TOKEN_FILE",
            Some("FILE"),
            None,
            "every --serve request must carry X-Kvfetch-Token with the token in FILE; created (32 random bytes, hex; --file-mode, --owner) when it does not exist",
        ),
        WATCH,
    ),
    only(
        flag(
            "serve-allow-remote",
            "KVFETCH_SERVE_ALLOW_REMOTE",
            None,
            None,
            "let --serve listen on an address that is not loopback (other hosts could then ask for secrets; see docs/serve.md)",
        ),
        WATCH,
    ),
    only(
        flag(
            "notify-url",
            "KVFETCH_NOTIFY_URL",
            Some("URL"),
            None,
            "after a refresh that changed anything, POST {\"changed\":[names]} here (http(s)://host[:port][/path][?query]; the query, e.g. a token, is never logged, but a flag is in argv for every process to read: give a token in KVFETCH_NOTIFY_URL)",
        ),
        WATCH,
    ),
    only(
        flag(
            "cleanup",
            "KVFETCH_CLEANUP",
            None,
            None,
            "on SIGTERM/SIGINT remove the files, env file and ready file kvfetch wrote",
        ),
        WATCH,
    ),
    only(
        flag(
            "on-change",
            "KVFETCH_ON_CHANGE",
            Some("ACTION"),
            Some("restart"),
            "supervised exec: restart, signal:SIG (HUP, INT, QUIT, TERM, USR1, USR2 or WINCH) or none when a secret changes",
        ),
        EXEC,
    ),
    only(
        flag(
            "grace",
            "KVFETCH_GRACE",
            Some("DURATION"),
            Some("10s"),
            "supervised exec: how long a restarted child gets after SIGTERM before SIGKILL (0s to 1h)",
        ),
        EXEC,
    ),
];
