//! A spec's options, the text after its `?` (`NAME?format=key&optional`): parsed with the
//! spec, so a wrong option is a usage error before any request. What they make of a value is
//! `shape`'s work; `file` says how `exec` hands the value over (a file, not a variable).

use crate::error::Error;

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

/// Parse the options after `?`: `format=`, `json=`, `decode=`, `optional`, `file`, joined by
/// `&`. Returns the shape and whether `file` was given (`exec` hands the shaped value over as a
/// file whose path is the variable).
pub fn parse(options: &str, text: &str) -> Result<(Shape, bool), Error> {
    let bad = |why: String| Error::Usage(format!("--secret {text:?}: {why}"));
    let mut shape = Shape::default();
    let mut file = false;
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
            ("file", None) => file = true,
            ("file" | "optional", Some(_)) => {
                return Err(bad(format!(
                    "{option:?} is not an option: {key} takes no value (write ?{key})"
                )));
            }
            _ => {
                return Err(bad(format!(
                    "{option:?} is not an option; the options are format=pem|key|cert|chain|pfx, json=/POINTER, decode=base64|base64url|hex, optional and file, joined by '&'"
                )));
            }
        }
    }
    if shape.format.is_some() && (shape.json.is_some() || shape.decode.is_some()) {
        return Err(bad(
            "format= reads a certificate secret as Key Vault stores it, so it does not combine with json= or decode=".into(),
        ));
    }
    Ok((shape, file))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_combines_with_the_shaping_options_and_takes_no_value() {
        let (shape, file) = parse("json=/pw&file&optional", "x").unwrap();
        assert!(file && shape.optional);
        assert_eq!(shape.json.as_deref(), Some("/pw"));
        assert!(parse("format=key&file", "x").is_ok_and(|(s, f)| f && s.format.is_some()));
        assert!(parse("decode=base64", "x").is_ok_and(|(_, f)| !f));
        for bad in ["file=yes", "file&file", "optional=1", "files"] {
            let Err(Error::Usage(msg)) = parse(bad, "x") else {
                panic!("{bad} accepted")
            };
            assert!(msg.contains("--secret \"x\""), "{bad}: {msg}");
        }
        let Err(Error::Usage(msg)) = parse("file=/run/x", "x") else {
            panic!("a value for file accepted")
        };
        assert!(msg.contains("file takes no value"), "{msg}");
    }
}
