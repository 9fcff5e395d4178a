//! The names a vault may not choose: variables that steer a runtime, a loader or a shell
//! (reserved names and prefixes, about 130 runtime namespaces), checked for every listed name and
//! for the operator's `--env-prefix`.

use crate::error::Error;
use crate::spec::{self};

/// The namespaces [`reserved_for_selection`] covers beyond [`spec::steers_programs`].
pub(super) const RESERVED_PREFIXES: &[&str] = &[
    "PYTHON",
    "NODE_",
    "NPM_",
    "JAVA",
    "_JAVA",
    "JDK_",
    "DOTNET_",
    "CORECLR_",
    "COMPLUS_",
    "RUBY",
    "GEM_",
    "BUNDLE_",
    "PERL",
    "PHP",
    "GOFLAGS",
    "GOPROXY",
    "GOPATH",
    "GOROOT",
    "GOTOOLCHAIN",
    "GOPRIVATE",
    "GONOSUMDB",
    "CARGO_",
    "RUST",
    "LD_",
    "DYLD_",
    "AZURE_",
    "IDENTITY_",
    "MSI_",
    "IMDS_",
    "KVFETCH_",
    "KUBERNETES_",
    "AWS_",
    "GOOGLE_",
    "OPENSSL",
    "SSL",
    "GIT_",
    "LESS",
    "BASH_",
    "ZDOTDIR",
    "XDG_",
    "LC_",
    "DBUS_",
    "ERL_",
    "ELIXIR_",
    "LUA_",
    "GRPC_",
    "ASPNETCORE_",
    "KRB5",
];

/// The variables [`reserved_for_selection`] names beyond [`spec::steers_programs`].
pub(super) const RESERVED_NAMES: &[&str] = &[
    "HOME",
    "SHELL",
    "USER",
    "LOGNAME",
    "PAGER",
    "EDITOR",
    "VISUAL",
    "BROWSER",
    "TERM",
    "PROMPT_COMMAND",
    "LANG",
    "LANGUAGE",
    "TZ",
    "HOSTNAME",
    "PWD",
    "OLDPWD",
    "MAIL",
    "SSH_AUTH_SOCK",
    "DISPLAY",
    "TERMINFO",
    "INPUTRC",
    "MANPAGER",
    "SUDO_ASKPASS",
    "SSH_ASKPASS",
    "GNUPGHOME",
    "CURL_HOME",
    "WGETRC",
    "NETRC",
    "TEMP",
    "TMP",
];

/// Variables a vault writer could use to take over the app or its platform, beyond
/// [`spec::steers_programs`]: runtimes' hooks, shells' and tools' commands, Azure's and
/// kvfetch's own settings. A selected secret never sets one unless `--allow-env` names it.
pub fn reserved_for_selection(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    spec::steers_programs(name)
        || RESERVED_NAMES.contains(&upper.as_str())
        || RESERVED_PREFIXES.iter().any(|p| upper.starts_with(p))
}

/// Namespaces of runtimes, tools and agents an app's container commonly holds, refused as (the
/// beginning of) `--env-prefix`: every variable under them is theirs to read, now or in a later
/// version (`GOMAXPROCS`, `SPRING_APPLICATION_JSON`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `PGHOST`,
/// `R_LIBS`, `DOCKER_HOST`, …). Compared in upper case; a prefix starting with one is refused,
/// and so is one that is the beginning of one.
pub const RUNTIME_NAMESPACES: &[&str] = &[
    // Go, the JVM and its tools, .NET
    "GO",
    "JAVA",
    "JDK_",
    "JRE_",
    "JVM_",
    "CATALINA_",
    "MAVEN_",
    "GRADLE_",
    "SBT_",
    "KAFKA_",
    "SPARK_",
    "HADOOP_",
    "SPRING_",
    "MANAGEMENT_",
    "LOGGING_",
    "DOTNET_",
    "ASPNETCORE_",
    "NUGET_",
    "MSBUILD",
    // scripting runtimes and their package managers
    "NODE",
    "NPM_",
    "YARN_",
    "PNPM_",
    "COREPACK_",
    "DENO_",
    "BUN_",
    "TS_NODE_",
    "ELECTRON_",
    "PUPPETEER_",
    "PLAYWRIGHT_",
    "PYTHON",
    "PIP_",
    "PIPENV_",
    "POETRY_",
    "UV_",
    "CONDA",
    "VIRTUAL_ENV",
    "PERL",
    "RUBY",
    "GEM_",
    "BUNDLE_",
    "PHP",
    "LUA_",
    "ERL",
    "ELIXIR_",
    "MIX_",
    "HEX_",
    "REBAR",
    "R_",
    "JULIA_",
    "CARGO_",
    "RUST",
    // the C library and the loader
    "LD_",
    "DYLD_",
    "MALLOC_",
    "GLIBC_",
    "GCONV_",
    "NSS_",
    // clients of databases and services
    "PG",
    "MYSQL",
    "ORACLE_",
    "TNS_",
    "ODBC",
    "DOCKER_",
    "BUILDKIT_",
    "COMPOSE_",
    "CONTAINERS_",
    "KUBE",
    "HELM_",
    "TF_",
    "ANSIBLE_",
    "VAULT_",
    "CONSUL_",
    "NOMAD_",
    "SYSTEMD_",
    "DBUS_",
    "SUDO_",
    "NIX_",
    "PKG_CONFIG",
    // clouds and their credentials
    "AWS_",
    "AZURE",
    "ARM_",
    "MSI_",
    "IDENTITY_",
    "IMDS_",
    "GOOGLE_",
    "GCLOUD_",
    "CLOUDSDK_",
    "KVFETCH_",
    // telemetry agents (where the app's traces, errors and data go)
    "OTEL_",
    "DD_",
    "NEW_RELIC_",
    "ELASTIC_APM_",
    "SENTRY_",
    // traffic, trust, shells and the user's environment
    "HTTP",
    "FTP_",
    "SOCKS",
    "SSL",
    "OPENSSL",
    "CURL_",
    "WGET",
    "GIT_",
    "SSH_",
    "GPG",
    "GNUPG",
    "KRB5",
    "HOME",
    "XDG_",
    "LC_",
    "LANG",
    "TZ",
    "TERM",
    "BASH_",
    "ZSH",
    "LESS",
];

/// `--env-prefix` (or `--prefix` as a variable, `what`): a variable name's beginning of 3-64
/// letters, digits and `_`, ending in `_` with at least 2 characters before it, that is no
/// runtime's namespace nor the beginning of one: a vault writer completes it with any name, so
/// no completion may be a variable something other than the app reads.
pub fn check_env_prefix(p: &str, what: &str) -> Result<String, Error> {
    let mut chars = p.chars();
    let shaped = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && p.len() <= 64
        && p.ends_with('_')
        && p.len() >= 3;
    if !shaped {
        return Err(Error::Usage(format!(
            "{what} {p:?} cannot begin the variables of selected secrets: give --env-prefix with 3-64 letters, digits and _ (not starting with a digit) that ends in _ after at least 2 characters, e.g. --env-prefix APP_ or MYAPP_"
        )));
    }
    if runtime_namespace(p) {
        return Err(Error::Usage(format!(
            "{what} {p:?} would put the vault's names into variables starting with {p}, a namespace programs, runtimes or tools read (a vault writer could steer the app): give --env-prefix with a prefix of your app's own, e.g. --env-prefix APP_ or MYAPP_"
        )));
    }
    Ok(p.to_string())
}

/// Whether variables starting with `p` may be read by something other than the app: `p` lies in
/// a reserved namespace, or begins a reserved namespace or name (of [`spec::steers_programs`],
/// [`reserved_for_selection`] or [`RUNTIME_NAMESPACES`]).
pub(super) fn runtime_namespace(p: &str) -> bool {
    let upper = p.to_ascii_uppercase();
    let spaces = spec::STEERING_PREFIXES
        .iter()
        .chain(RESERVED_PREFIXES)
        .chain(RUNTIME_NAMESPACES);
    let names = spec::STEERING_NAMES.iter().chain(RESERVED_NAMES);
    let mut all = spaces.clone().chain(names);
    reserved_for_selection(&format!("{p}X"))
        || spaces
            .clone()
            .any(|n| upper.starts_with(&n.to_ascii_uppercase()))
        || all.any(|n| n.to_ascii_uppercase().starts_with(&upper))
}
