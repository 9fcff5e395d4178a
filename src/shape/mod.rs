//! What to make of a fetched value before it is written: a spec's options (parsed in
//! `spec::options`) applied to it — JSON fields, decodings, a certificate's key, leaf and chain
//! (`certificate`, which `pem`, `keys`, `pkcs12` and `der` serve) — and templates rendered
//! from the values (`template`). One request serves every shape of the same secret.
//!
//! May use: `error`, `base`, `spec`, `output` (file modes), `vault` (fetched values).

pub mod certificate;
pub mod der;
mod keys;
mod pem;
pub mod pkcs12;
pub mod template;

pub use crate::spec::options::{CertFormat, Decode, Shape, json_pointer, parse};

use crate::base::encoding;
use crate::error::Error;
use crate::spec::SecretSpec;
use crate::vault::keyvault::Fetched;

/// The bytes `spec` writes for the fetched value `f`: the value itself, a JSON field of it, its
/// decoded bytes, or a part of a certificate. Errors (exit 5) name the secret and what did not
/// fit, never a byte of the value.
pub fn apply(spec: &SecretSpec, f: &Fetched) -> Result<Vec<u8>, Error> {
    let shape = &spec.shape;
    if let Some(format) = shape.format {
        return crate::shape::certificate::extract(spec, f, format);
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
        crate::base::redact::wipe(&mut self.0);
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
        let mut f = crate::vault::keyvault::parse_bundle(r#"{"value":"","id":"x/1"}"#).unwrap();
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
