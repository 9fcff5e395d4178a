//! `--all`, `--prefix` and `--tag`: choosing secrets from the vault's list instead of naming
//! each one. The list is read on every fetch (and so on every refresh), so a secret added to
//! the vault appears and one deleted, disabled or expired disappears.
//!
//! What the vault lists is not the operator's word: a listed name that cannot become an output
//! (a variable that would steer programs, a name the explicit `--secret` specs already use) is
//! skipped with a log line, never an error that a vault writer could use to stop the app.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::error::Error;
use crate::spec::options::Shape;
use crate::spec::{self, SecretSpec, Vault};
use crate::vault::keyvault::Listed;

mod names;
#[cfg(test)]
use names::*;
pub use names::{RUNTIME_NAMESPACES, check_env_prefix, reserved_for_selection};

/// What to choose from one vault's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub vault: Vault,
    /// Only names starting with this (compared without regard to case, as Key Vault names
    /// are); it is stripped from the output names.
    pub prefix: Option<String>,
    /// Every `KEY=VALUE` must be among the secret's tags (exact, case-sensitive).
    pub tags: Vec<(String, String)>,
    /// Leave out certificate-backed secrets (`managed: true`).
    pub skip_managed: bool,
    /// The outputs in use: files (`--dir`), variables (an env file or exec), and `--allow-env`.
    pub files: bool,
    pub env: bool,
    pub allow_env: Vec<String>,
    /// What every selected secret's variable starts with: `--env-prefix`, else `--prefix` as a
    /// variable (`app-` → `APP_`). None: only names `--allow-env` gives become variables.
    pub env_prefix: Option<String>,
    /// `--dir`, and the other files kvfetch writes or reads there (env file, ready file,
    /// templates): a listed name may not land on one of them.
    pub dir: Option<PathBuf>,
    pub taken: Vec<PathBuf>,
    /// `--env-file`'s format, when there is one (a value it cannot carry is skipped).
    pub env_format: Option<crate::output::Format>,
}

/// The most secrets one selection may choose: more is an error that says so, never a run of
/// tens of thousands of requests, files or variables a vault writer could steer.
pub const MAX_SELECTED: usize = 10_000;

/// Why a listed secret that matches the selection is not used (one log line each).
fn skip_reason(
    sel: &Selection,
    l: &Listed,
    out: &str,
    now: u64,
    explicit: &[SecretSpec],
) -> Option<String> {
    if !l.enabled {
        return Some("it is disabled".into());
    }
    if l.expires.is_some_and(|exp| exp <= now) {
        return Some("it has expired (exp is in the past)".into());
    }
    if l.not_before.is_some_and(|nbf| nbf > now) {
        return Some("it is not valid yet (nbf is in the future)".into());
    }
    if l.managed && sel.skip_managed {
        return Some("it backs a certificate (--skip-managed)".into());
    }
    if out.is_empty() {
        return Some("its name is the prefix alone, which leaves no output name".into());
    }
    let env = match variable(sel, out) {
        Ok(var) => var,
        Err(why) if sel.env => return Some(why),
        Err(_) => String::new(),
    };
    let shown = explicit.iter().filter(|s| !s.hidden);
    for s in shown {
        if sel.files && s.file_name() == out || sel.env && s.env_name() == env {
            return Some(format!(
                "--secret {:?} already writes that name (explicit specs win)",
                s.text
            ));
        }
    }
    if sel.env && !spec::valid_env_name(&env) {
        return Some(format!("{env:?} is not a valid variable name"));
    }
    if sel.env && reserved_for_selection(&env) && !sel.allow_env.iter().any(|a| a == &env) {
        return Some(format!(
            "it would set {env}, which a vault writer could use to steer the app or its platform (allow it with --allow-env {env})"
        ));
    }
    // Images read `X_FILE` as the path of a file holding X: a value there is a path of the
    // vault writer's choosing (a service account token, a federated token), which the app would
    // then read and use as the secret.
    if sel.env && env.ends_with("_FILE") && !sel.allow_env.iter().any(|a| a == &env) {
        return Some(format!(
            "it would set {env}, which apps read as the path of a file: a vault writer could make the app read any file it can (allow it with --allow-env {env}, or name the secret with ?file)"
        ));
    }
    if let Some(dir) = &sel.dir {
        let path = dir.join(out);
        if sel
            .taken
            .iter()
            .any(|t| crate::output::files::same_path(t, &path))
        {
            return Some(format!(
                "its file {} is another output or input of kvfetch",
                path.display()
            ));
        }
    }
    None
}

/// The variable a selected secret sets: its name as a variable under the operator's prefix, or
/// bare when `--allow-env` names it. A vault writer chooses names, never the namespace: no
/// listed name can reach a variable a runtime reads (`ERL_AFLAGS`, `LUA_INIT`, `TMP`, …)
/// unless the operator chose that prefix or name. Err: why it sets none.
fn variable(sel: &Selection, out: &str) -> Result<String, String> {
    let bare = spec::env_name_for(out);
    if sel.allow_env.iter().any(|a| a == &bare) {
        return Ok(bare);
    }
    match &sel.env_prefix {
        Some(p) => Ok(format!("{p}{bare}")),
        None => Err(format!(
            "it would set {bare}, a variable named by the vault rather than by you, which a vault writer could use to steer the app (give --env-prefix, or --allow-env {bare})"
        )),
    }
}

/// The output name of a listed secret, if it matches the prefix and tags.
fn matches(sel: &Selection, l: &Listed) -> Option<String> {
    let out = match &sel.prefix {
        Some(p) => {
            let head = l.name.get(..p.len())?;
            if !head.eq_ignore_ascii_case(p) {
                return None;
            }
            l.name[p.len()..].to_string()
        }
        None => l.name.clone(),
    };
    let tagged = sel
        .tags
        .iter()
        .all(|(k, v)| l.tags.get(k).is_some_and(|t| t == v));
    tagged.then_some(out)
}

/// The explicit specs followed by the listed secrets the selection chooses. `noted` holds the
/// log lines already given (skips, certificate notes), so that each is logged once while it
/// holds, and again should it come back after it stopped.
pub fn choose(
    sel: &Selection,
    explicit: &[SecretSpec],
    listed: &[Listed],
    now: u64,
    noted: &mut BTreeSet<String>,
) -> Result<Vec<SecretSpec>, Error> {
    let mut specs = explicit.to_vec();
    let mut notes = BTreeSet::new();
    // A few new notes are named, the rest counted: a list of 10,000 disabled secrets is not
    // 10,000 lines.
    let mut shown = crate::base::log::Capped::new();
    let mut note = |key: String, msg: &str, fields: &[(&str, &str)]| {
        if !noted.contains(&key) {
            shown.note(|| crate::base::log::info(msg, fields));
        }
        notes.insert(key);
    };
    for l in listed {
        let Some(out) = matches(sel, l) else { continue };
        let fields = [
            ("secret", l.name.as_str()),
            ("vault", sel.vault.url.as_str()),
        ];
        if let Some(why) = skip_reason(sel, l, &out, now, explicit) {
            let msg = format!("skipped a listed secret: {why}");
            note(format!("skip {} {why}", l.name), &msg, &fields);
            continue;
        }
        if specs.len() - explicit.len() == MAX_SELECTED {
            return Err(Error::Protocol(format!(
                "the selection chose more than {MAX_SELECTED} secrets from vault {}; kvfetch reads at most {MAX_SELECTED} (each is a request and a file or variable): narrow it with --prefix or --tag, or name the secrets with --secret",
                sel.vault.url
            )));
        }
        if l.managed {
            let ct = l.content_type.as_deref().unwrap_or("none");
            let with = [fields[0], fields[1], ("content_type", ct)];
            let msg = "selected a certificate-backed secret: its value is the certificate as Key Vault stores it (see content_type); --skip-managed leaves these out";
            note(format!("managed {} {ct}", l.name), msg, &with);
        }
        specs.push(SecretSpec {
            text: format!("{} (selected)", l.name),
            alias: None,
            vault: sel.vault.clone(),
            name: l.name.clone(),
            version: None,
            // A secret deleted or disabled between the list and its GET is dropped, not an
            // error: selected secrets are optional.
            shape: Shape {
                optional: true,
                ..Shape::default()
            },
            env_alias: if sel.env {
                variable(sel, &out).ok()
            } else {
                None
            },
            output_name: (out != l.name).then_some(out),
            hidden: false,
            file: false,
        });
    }
    shown.finish(
        false,
        "more listed secrets were skipped or selected with a note (as those named above); not named one by one",
        &[("vault", &sel.vault.url)],
    );
    if specs.len() == explicit.len() {
        if !noted.contains("none") {
            crate::base::log::warn(
                "the selection chose no secret from the vault's list; check --prefix and --tag against the vault's names and tags",
                &[
                    ("vault", &sel.vault.url),
                    ("listed", &listed.len().to_string()),
                ],
            );
        }
        notes.insert("none".into());
    }
    *noted = notes;
    spec::check_names(&specs, sel.files, sel.env, &sel.allow_env)?;
    Ok(specs)
}

/// Drop the chosen secrets (those after the `explicit` ones) whose values cannot be variables
/// (a NUL byte; what the env file's format refuses): one value in the vault must not stop every
/// output. Each drop is logged once while it holds, through `noted`.
pub fn drop_uncarriable(
    sel: &Selection,
    explicit: usize,
    snap: &mut crate::vault::snapshot::Snapshot,
    noted: &mut BTreeSet<String>,
) {
    if !sel.env {
        return;
    }
    let mut now = BTreeSet::new();
    let mut shown = crate::base::log::Capped::new();
    let mut i = explicit;
    while i < snap.specs.len() {
        let why = snap.values[i].as_ref().and_then(|f| {
            if f.value.contains('\0') {
                return Some("a NUL byte, which no variable can hold".to_string());
            }
            let format = sel.env_format?;
            let entry = [(snap.specs[i].env_name(), f.value.clone())];
            crate::output::envfile::render(format, &entry)
                .err()
                .map(|_| "text this env-file format cannot carry exactly".to_string())
        });
        let Some(why) = why else {
            i += 1;
            continue;
        };
        let version = snap.values[i].as_ref().map_or("", |f| f.version.as_str());
        let key = format!("value {} {version}", snap.specs[i].name);
        if !noted.contains(&key) {
            shown.note(|| {
                crate::base::log::warn(
                    &format!(
                        "skipped a listed secret: its value holds {why}; name it with --secret to make this an error, or use --dir or --env-format json"
                    ),
                    &[
                        ("secret", &snap.specs[i].name),
                        ("vault", &sel.vault.url),
                        ("version", version),
                    ],
                )
            });
        }
        now.insert(key);
        snap.specs.remove(i);
        snap.values.remove(i);
    }
    shown.finish(
        true,
        "more listed secrets were skipped for values no variable can carry; not named one by one",
        &[("vault", &sel.vault.url)],
    );
    *noted = now;
}

/// `--tag KEY=VALUE` → (KEY, VALUE); the key may not be empty.
pub fn parse_tag(text: &str) -> Result<(String, String), Error> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(Error::Usage(format!(
            "--tag {text:?} must be KEY=VALUE (a tag the secret must carry; repeatable, all must match)"
        ))),
    }
}

/// `--prefix`: a non-empty beginning of secret names (letters, digits and dashes).
pub fn check_prefix(p: &str) -> Result<String, Error> {
    let ok =
        !p.is_empty() && p.len() < 127 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(Error::Usage(format!(
            "--prefix {p:?} must be the beginning of secret names: 1-126 letters, digits and dashes"
        )));
    }
    Ok(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        spec::parse_vault("https://127.0.0.1:8443", None).unwrap()
    }

    fn sel(prefix: Option<&str>, tags: &[(&str, &str)]) -> Selection {
        Selection {
            vault: vault(),
            prefix: prefix.map(String::from),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            skip_managed: false,
            files: true,
            env: true,
            allow_env: Vec::new(),
            env_prefix: prefix.map(spec::env_name_for),
            dir: Some("/run/out".into()),
            taken: vec!["/run/out/ready".into()],
            env_format: None,
        }
    }

    fn listed(name: &str) -> Listed {
        Listed {
            name: name.into(),
            enabled: true,
            not_before: None,
            expires: None,
            updated: None,
            managed: false,
            content_type: None,
            tags: Default::default(),
        }
    }

    fn names(specs: &[SecretSpec]) -> Vec<(String, String, String)> {
        specs
            .iter()
            .map(|s| (s.name.clone(), s.file_name().to_string(), s.env_name()))
            .collect()
    }

    #[test]
    fn prefix_is_matched_without_case_and_stripped() {
        let l = [
            listed("app-db"),
            listed("APP-Api-Key"),
            listed("other"),
            listed("ap"),
        ];
        let got = choose(
            &sel(Some("app-"), &[]),
            &[],
            &l,
            100,
            &mut Default::default(),
        )
        .unwrap();
        assert_eq!(
            names(&got),
            [
                ("app-db".into(), "db".into(), "APP_DB".into()),
                ("APP-Api-Key".into(), "Api-Key".into(), "APP_API_KEY".into()),
            ]
        );
    }

    #[test]
    fn skips_and_tags() {
        let mut l: Vec<Listed> = ["off", "old", "early", "cert", "app", "path", "1x", "ok"]
            .iter()
            .map(|n| listed(n))
            .collect();
        l[0].enabled = false;
        l[1].expires = Some(100);
        l[2].not_before = Some(101);
        l[3].managed = true;
        for x in &mut l {
            x.tags.insert("team".into(), "a".into());
        }
        l.push(listed("untagged"));
        let mut s = sel(None, &[("team", "a")]);
        s.skip_managed = true;
        // No prefix for the variables: only the names the operator allowed become variables.
        s.allow_env = ["APP", "OK", "EARLY", "CERT", "1X"]
            .map(String::from)
            .to_vec();
        let explicit = spec::parse_spec("APP=other", Some(&vault())).unwrap();
        let mut noted = BTreeSet::new();
        let got = choose(&s, std::slice::from_ref(&explicit), &l, 100, &mut noted).unwrap();
        let chosen: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        // nbf == now is valid, exp == now is expired; "app" clashes with the explicit APP.
        assert_eq!(chosen, ["other", "ok"]);
        assert_eq!(noted.len(), 7, "{noted:?}");
        // Managed secrets are kept without --skip-managed, with a note.
        s.skip_managed = false;
        l[2].not_before = Some(100);
        let got = choose(&s, &[explicit], &l, 100, &mut noted).unwrap();
        let chosen: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(chosen, ["other", "early", "cert", "ok"]);
        assert!(noted.iter().any(|n| n.starts_with("managed cert")));
    }

    #[test]
    fn variables_that_steer_programs_are_skipped_unless_allowed() {
        let l = [listed("ld-preload"), listed("Path")];
        for name in [
            "PYTHONWARNINGS",
            "BROWSER",
            "AZURE_AUTHORITY_HOST",
            "home",
            "KVFETCH_VAULT",
        ] {
            assert!(reserved_for_selection(name), "{name}");
        }
        assert!(!reserved_for_selection("DB_PASSWORD") && !reserved_for_selection("API_KEY"));
        let taken = choose(
            &sel(None, &[]),
            &[],
            &[listed("ready")],
            0,
            &mut Default::default(),
        );
        assert!(taken.unwrap().is_empty(), "the ready file's name is taken");
        let got = choose(&sel(None, &[]), &[], &l, 0, &mut Default::default()).unwrap();
        assert!(got.is_empty());
        // Under an operator's prefix a listed name is harmless; that prefix cannot be a
        // runtime's own namespace.
        let mut p = sel(None, &[]);
        p.env_prefix = Some("APP_".into());
        let got = choose(
            &p,
            &[],
            &[listed("erl-aflags"), listed("tmp")],
            0,
            &mut Default::default(),
        )
        .unwrap();
        let vars: Vec<String> = got.iter().map(SecretSpec::env_name).collect();
        assert_eq!(vars, ["APP_ERL_AFLAGS", "APP_TMP"]);
        for bad in ["LD_", "PYTHON", "ERL_", "JAVA", "1A", "A-B", ""] {
            assert!(check_env_prefix(bad, "--env-prefix").is_err(), "{bad}");
        }
        assert!(check_env_prefix("APP_", "--env-prefix").is_ok());
        let mut s = sel(None, &[]);
        s.allow_env = vec!["PATH".into()];
        let got = choose(&s, &[], &l, 0, &mut Default::default()).unwrap();
        assert_eq!(got.len(), 1);
        s.env = false;
        let got = choose(&s, &[], &l, 0, &mut Default::default()).unwrap();
        assert_eq!(got.len(), 2, "files only: any name is a file");
    }

    #[test]
    fn an_env_prefix_is_no_runtimes_namespace_nor_the_beginning_of_one() {
        let bad = [
            "GO", "GO_", "GOLANG_", "SPRING_", "OTEL_", "MALLOC_", "PG", "PGX_", "R_", "DENO_",
            "DOCKER_", "NODE_", "HTTP_", "NO_", "BASH_", "KUBE_", "TZ_", "LC_", "X_", "AB", "_",
            "__", "APP", "ALL_", "SSL_", "DD_", "PS_X", "AZURE_",
        ];
        for p in bad {
            assert!(check_env_prefix(p, "--env-prefix").is_err(), "{p}");
            assert!(
                check_env_prefix(&p.to_ascii_lowercase(), "--env-prefix").is_err(),
                "{p}"
            );
        }
        for p in [
            "APP_", "MYAPP_", "KV_", "CFG_", "PAY_", "SVC_", "DB_", "A1_", "_A_",
        ] {
            assert!(check_env_prefix(p, "--env-prefix").is_ok(), "{p}");
        }
        // Every namespace and every name of the lists: neither it nor its beginning is a prefix.
        for n in RUNTIME_NAMESPACES.iter().chain(RESERVED_PREFIXES) {
            let p = format!("{}_", n.trim_end_matches('_'));
            assert!(runtime_namespace(&p), "{p}");
        }
        let names = spec::STEERING_NAMES.iter().chain(RESERVED_NAMES);
        for n in names.filter_map(|n| n.split_once('_')) {
            let p = format!("{}_", n.0);
            assert!(p.len() < 3 || runtime_namespace(&p), "{p}");
        }
    }

    #[test]
    fn flags() {
        assert_eq!(
            parse_tag("env=prod").unwrap(),
            ("env".into(), "prod".into())
        );
        assert_eq!(parse_tag("k=a=b").unwrap(), ("k".into(), "a=b".into()));
        assert_eq!(parse_tag("k=").unwrap(), ("k".into(), "".into()));
        assert!(parse_tag("=v").is_err() && parse_tag("novalue").is_err());
        assert!(check_prefix("app-").is_ok());
        assert!(check_prefix("").is_err() && check_prefix("a/b").is_err());
    }
    #[test]
    fn selected_secrets_are_optional() {
        let l = [listed("app-db")];
        let got = choose(
            &sel(Some("app-"), &[]),
            &[],
            &l,
            100,
            &mut Default::default(),
        );
        assert!(
            got.unwrap()[0].shape.optional,
            "deleted between list and GET: dropped"
        );
    }

    #[test]
    fn a_prefix_is_1_to_126_letters_digits_and_dashes() {
        for ok in ["a", "app-", &"a".repeat(126)] {
            assert_eq!(check_prefix(ok).unwrap(), ok);
        }
        for bad in ["", "a_b", "a.", &"a".repeat(127)] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
