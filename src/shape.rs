//! A spec's options (`NAME?format=key&optional`): what to make of a secret's value before it
//! is written. Parsed with the spec, so a wrong option is a usage error before any request;
//! applied to each fetched value, so one request serves every shape of the same secret.

use crate::encoding;
use crate::error::Error;
use crate::keyvault::Fetched;
use crate::spec::SecretSpec;

/// The options after a spec's `?`: what to make of the secret's value before writing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// `format=`: a certificate secret (PKCS#12 or PEM) as key, leaf, chain, PEM or PFX.
    pub format: Option<CertFormat>,
    /// `json=`: an RFC 6901 pointer into a value that is a JSON document.
    pub json: Option<String>,
    /// `decode=`: the value (or the `json=` field) is text in this encoding.
    pub decode: Option<Decode>,
    /// `optional`: a missing or disabled secret is skipped, not an error.
    pub optional: bool,
}

/// `format=`: which part of a certificate secret is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFormat {
    /// The private key (PKCS#8 PEM), then the leaf, then the chain towards the root.
    Pem,
    Key,
    Cert,
    Chain,
    /// The PFX bytes, decoded from base64.
    Pfx,
}

/// `decode=`: the encodings a value may be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    Base64,
    Base64Url,
    Hex,
}

/// Parse the options after `?`: `format=`, `json=`, `decode=`, `optional`, joined by `&`.
pub fn parse(options: &str, text: &str) -> Result<Shape, Error> {
    let bad = |why: String| Error::Usage(format!("--secret {text:?}: {why}"));
    let mut shape = Shape::default();
    let mut seen: Vec<&str> = Vec::new();
    for option in options.split('&') {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        if seen.contains(&key) {
            return Err(bad(format!("the option {key:?} is given twice")));
        }
        seen.push(key);
        match (key, value) {
            ("format", Some(v)) => shape.format = Some(cert_format(v).ok_or_else(|| {
                bad(format!("format={v:?} is not one of pem, key, cert, chain, pfx"))
            })?),
            ("json", Some(v)) => shape.json = Some(json_pointer(v).map_err(|why| {
                bad(format!("json={v:?} is not a JSON pointer ({why}); write /KEY/0/KEY, with ~1 for '/' and ~0 for '~' in a key"))
            })?),
            ("decode", Some(v)) => shape.decode = Some(decode_kind(v).ok_or_else(|| {
                bad(format!("decode={v:?} is not one of base64, base64url, hex"))
            })?),
            ("optional", None) => shape.optional = true,
            _ => {
                return Err(bad(format!(
                    "{option:?} is not an option; the options are format=pem|key|cert|chain|pfx, json=/POINTER, decode=base64|base64url|hex and optional, joined by '&'"
                )));
            }
        }
    }
    if shape.format.is_some() && (shape.json.is_some() || shape.decode.is_some()) {
        return Err(bad(
            "format= reads a certificate secret as Key Vault stores it, so it does not combine with json= or decode=".into(),
        ));
    }
    Ok(shape)
}

fn cert_format(v: &str) -> Option<CertFormat> {
    Some(match v {
        "pem" => CertFormat::Pem,
        "key" => CertFormat::Key,
        "cert" => CertFormat::Cert,
        "chain" => CertFormat::Chain,
        "pfx" => CertFormat::Pfx,
        _ => return None,
    })
}

fn decode_kind(v: &str) -> Option<Decode> {
    Some(match v {
        "base64" => Decode::Base64,
        "base64url" => Decode::Base64Url,
        "hex" => Decode::Hex,
        _ => return None,
    })
}

/// An RFC 6901 pointer: empty (the whole document) or `/`-led, every `~` escaping `0` or `1`.
pub fn json_pointer(v: &str) -> Result<String, &'static str> {
    if !v.is_empty() && !v.starts_with('/') {
        return Err("it must start with '/'");
    }
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("'~' is not followed by 0 or 1");
        }
    }
    Ok(v.to_string())
}

/// The bytes `spec` writes for the fetched value `f`: the value itself, a JSON field of it, its
/// decoded bytes, or a part of a certificate. Errors (exit 5) name the secret and what did not
/// fit, never a byte of the value.
pub fn apply(spec: &SecretSpec, f: &Fetched) -> Result<Vec<u8>, Error> {
    let shape = &spec.shape;
    if let Some(format) = shape.format {
        return crate::certificate::extract(spec, f, format);
    }
    let text = match &shape.json {
        Some(pointer) => json_field(spec, &f.value, pointer)?,
        None => Zeroing(f.value.clone()),
    };
    match shape.decode {
        None => Ok(text.0.as_bytes().to_vec()),
        Some(kind) => {
            let decoded = match kind {
                Decode::Base64 => encoding::base64_strict(&text.0, false),
                Decode::Base64Url => encoding::base64_strict(&text.0, true),
                Decode::Hex => encoding::hex_strict(&text.0),
            };
            decoded.map_err(|why| {
                Error::NotFound(format!(
                    "secret {} is not {} text ({why}), as --secret {:?} asks; store the encoded value, or drop decode=",
                    spec.reference(),
                    decode_name(kind),
                    spec.text
                ))
            })
        }
    }
}

fn decode_name(kind: Decode) -> &'static str {
    match kind {
        Decode::Base64 => "base64",
        Decode::Base64Url => "base64url",
        Decode::Hex => "hex",
    }
}

/// A copy of secret text that is zeroed when dropped.
struct Zeroing(String);

impl Drop for Zeroing {
    fn drop(&mut self) {
        crate::keyvault::wipe(&mut self.0);
    }
}

/// The field `pointer` names in the JSON document `value`: a string as is, anything else as
/// its JSON text.
fn json_field(spec: &SecretSpec, value: &str, pointer: &str) -> Result<Zeroing, Error> {
    let doc: serde_json::Value = serde_json::from_str(value).map_err(|e| {
        // serde_json's message names the kind of fault and where, never the text itself.
        Error::NotFound(format!(
            "secret {} is not a JSON document (at line {}, column {}), so --secret {:?} cannot read json={pointer}; store JSON, or drop json=",
            spec.reference(),
            e.line(),
            e.column(),
            spec.text
        ))
    })?;
    let field = doc.pointer(pointer).ok_or_else(|| {
        Error::NotFound(format!(
            "secret {} has no field at json={pointer} (--secret {:?}); check the pointer against the document's keys (RFC 6901: /key/0/key)",
            spec.reference(),
            spec.text
        ))
    })?;
    Ok(Zeroing(match field {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_spec, parse_vault};

    fn spec(text: &str) -> Result<SecretSpec, Error> {
        let vault = parse_vault("https://127.0.0.1:8443", None).unwrap();
        parse_spec(text, Some(&vault))
    }

    fn fetched(value: &str, content_type: Option<&str>) -> Fetched {
        let mut f = crate::keyvault::parse_bundle(r#"{"value":"","id":"x/1"}"#).unwrap();
        f.value = value.to_string();
        f.content_type = content_type.map(String::from);
        f
    }

    fn usage(text: &str) -> String {
        match spec(text) {
            Err(Error::Usage(m)) => m,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn options_follow_the_first_question_mark_and_the_alias_ends_before_it() {
        let s = spec("tls.key=mycert?format=key").unwrap();
        assert_eq!(
            (s.alias.as_deref(), s.name.as_str()),
            (Some("tls.key"), "mycert")
        );
        assert_eq!(s.shape.format, Some(CertFormat::Key));
        let s = spec("DB_PASS=db/abc123?json=/a=b/c&decode=hex&optional").unwrap();
        assert_eq!(
            (s.name.as_str(), s.version.as_deref()),
            ("db", Some("abc123"))
        );
        assert_eq!(
            s.shape,
            Shape {
                format: None,
                json: Some("/a=b/c".into()),
                decode: Some(Decode::Hex),
                optional: true,
            }
        );
        let s = spec("https://v1.vault.azure.net/secrets/c/ff?format=pem").unwrap();
        assert_eq!(
            (s.vault.host.as_str(), s.name.as_str()),
            ("v1.vault.azure.net", "c")
        );
        assert_eq!(s.shape.format, Some(CertFormat::Pem));
        for (f, want) in [
            ("pem", CertFormat::Pem),
            ("key", CertFormat::Key),
            ("cert", CertFormat::Cert),
            ("chain", CertFormat::Chain),
            ("pfx", CertFormat::Pfx),
        ] {
            assert_eq!(
                spec(&format!("c?format={f}")).unwrap().shape.format,
                Some(want)
            );
        }
        for (d, want) in [
            ("base64", Decode::Base64),
            ("base64url", Decode::Base64Url),
            ("hex", Decode::Hex),
        ] {
            assert_eq!(
                spec(&format!("c?decode={d}")).unwrap().shape.decode,
                Some(want)
            );
        }
        assert_eq!(spec("c").unwrap().shape, Shape::default());
        assert_eq!(spec("c?json=").unwrap().shape.json.as_deref(), Some(""));
    }

    #[test]
    fn unknown_repeated_or_clashing_options_are_usage_errors() {
        for (text, says) in [
            ("c?optional&optional", "given twice"),
            ("c?json=/a&json=/b", "given twice"),
            ("c?format=der", "not one of pem, key, cert, chain, pfx"),
            ("c?decode=b32", "not one of base64, base64url, hex"),
            ("c?json=a", "must start with '/'"),
            ("c?json=/a~2", "'~' is not followed by 0 or 1"),
            ("c?json=/a~", "'~' is not followed by 0 or 1"),
            ("c?colour=red", "is not an option"),
            ("c?optional=yes", "is not an option"),
            ("c?format", "is not an option"),
            ("c?", "is not an option"),
            ("c?format=pem&json=/a", "does not combine"),
            ("c?format=key&decode=hex", "does not combine"),
        ] {
            let m = usage(text);
            assert!(m.contains(says) && m.contains(text), "{text}: {m}");
        }
    }

    #[test]
    fn json_fields_are_written_as_strings_or_json_text() {
        let doc = r#"{"user":"u-Zx81","port":5432,"tls":true,"opts":{"a":[1,"b"]},"a/b":"slash","m~n":"tilde","n":null}"#;
        for (pointer, want) in [
            ("/user", "u-Zx81"),
            ("/port", "5432"),
            ("/tls", "true"),
            ("/opts", r#"{"a":[1,"b"]}"#),
            ("/opts/a/1", "b"),
            ("/a~1b", "slash"),
            ("/m~0n", "tilde"),
            ("/n", "null"),
            ("", doc),
        ] {
            let s = spec(&format!("c?json={pointer}")).unwrap();
            let got = apply(&s, &fetched(doc, None)).unwrap();
            let want = if pointer.is_empty() {
                serde_json::from_str::<serde_json::Value>(doc)
                    .unwrap()
                    .to_string()
            } else {
                want.to_string()
            };
            assert_eq!(String::from_utf8(got).unwrap(), want, "{pointer}");
        }
        let s = spec("c?json=/password").unwrap();
        let e = apply(&s, &fetched(doc, None)).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert!(e.to_string().contains("no field at json=/password"), "{e}");
        assert!(!e.to_string().contains("u-Zx81"), "{e}");
        let e = apply(&s, &fetched("Zq9-not-json {", None)).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert!(e.to_string().contains("is not a JSON document"), "{e}");
        assert!(!e.to_string().contains("Zq9"), "{e}");
        let s = spec("c?json=/opts/a/01").unwrap();
        assert!(
            apply(&s, &fetched(doc, None)).is_err(),
            "a leading zero is no index"
        );
    }

    #[test]
    fn decoded_bytes_are_exact_and_bad_text_names_the_secret_not_the_value() {
        let s = spec("c?decode=base64").unwrap();
        assert_eq!(
            apply(&s, &fetched("AP8Kx4A=", None)).unwrap(),
            [0, 0xff, 0x0a, 0xc7, 0x80]
        );
        let s = spec("c?decode=base64url").unwrap();
        assert_eq!(apply(&s, &fetched("_-8", None)).unwrap(), [0xff, 0xef]);
        let s = spec("c?decode=hex").unwrap();
        assert_eq!(
            apply(&s, &fetched("00FF0a", None)).unwrap(),
            [0, 0xff, 0x0a]
        );
        let s = spec("c?json=/k&decode=base64").unwrap();
        assert_eq!(apply(&s, &fetched(r#"{"k":"aGk="}"#, None)).unwrap(), b"hi");
        let s = spec("c?decode=base64").unwrap();
        let e = apply(&s, &fetched("Qx7*secret", None)).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        let m = e.to_string();
        assert!(
            m.contains("secret c is not base64 text") && !m.contains("Qx7"),
            "{m}"
        );
        assert_eq!(
            apply(&spec("c").unwrap(), &fetched("as is", None)).unwrap(),
            b"as is"
        );
    }
}
