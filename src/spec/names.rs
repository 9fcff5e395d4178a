//! Names: what a secret, a version, a variable and a file may be called, and the variables that
//! steer programs (a loader, a runtime, a shell), which no secret may set unasked.

/// `db-password` → `DB_PASSWORD`.
pub fn env_name_for(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// Is this a valid Key Vault object name (`[0-9A-Za-z-]{1,127}`)?
pub fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(super) fn valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Is this a valid environment variable name (`[A-Za-z_][A-Za-z0-9_]*`)?
pub fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Is this a plain file name (no `/`, not `.` or `..`, not empty, and not the name of
/// kvfetch's own temp files)? Its length is checked with the outputs.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.starts_with(crate::output::files::TEMP_PREFIX)
}

/// The variables [`steers_programs`] names (compared in upper case).
pub const STEERING_NAMES: &[&str] = &[
    // shells and the C library
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "CDPATH",
    "GLIBC_TUNABLES",
    "GCONV_PATH",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "MALLOC_CONF",
    "TMPDIR",
    // language runtimes
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_EXTRA_CA_CERTS",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONINSPECT",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "DOTNET_STARTUP_HOOKS",
    "DOTNET_ADDITIONAL_DEPS",
    "GODEBUG",
    // traffic and trust
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
];
/// The namespaces [`steers_programs`] covers (compared in upper case).
pub const STEERING_PREFIXES: &[&str] = &["LD_", "DYLD_", "CORECLR_", "COR_", "COMPlus_"];

/// Variables that choose which program runs, what a shell, the loader or a language runtime
/// loads before the app's own code, or where the app's traffic goes and whom it trusts. A vault
/// value must not set them unless the operator names them in `--allow-env`. Compared without
/// regard to case, as some tools read lower-case forms (`http_proxy`).
pub fn steers_programs(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    STEERING_NAMES.contains(&upper.as_str())
        || STEERING_PREFIXES
            .iter()
            .any(|p| upper.starts_with(&p.to_ascii_uppercase()))
}
