//! PEM text and DER: the blocks a certificate secret may hold, read strictly (labels matched,
//! never echoed; at most [`MAX_CERTIFICATES`] certificates before any is decoded), and blocks
//! written 64 characters a line. Every buffer that may hold a key is wiped when dropped.
//!
//! May use: `base` (base64).

use zeroize::Zeroizing;

use crate::base::encoding;
use crate::shape::certificate::MAX_CERTIFICATES;

/// The PEM blocks a certificate secret may hold. Labels are matched against these and never
/// echoed from the value: text there could be key material.
pub(super) const PEM_LABELS: [&str; 5] = [
    "CERTIFICATE",
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];

/// A PEM block's label and its DER, wiped when dropped (it may be a key).
pub(super) type Block = (String, Zeroizing<Vec<u8>>);

/// `(label, DER)` of each `-----BEGIN …-----` block; every label is one of [`PEM_LABELS`].
pub(super) fn pem_blocks(text: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    let mut certificates = 0;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let line = after.split(['\n', '\r']).next().unwrap_or_default();
        let label = line
            .strip_suffix("-----")
            .and_then(|l| PEM_LABELS.into_iter().find(|k| *k == l))
            .ok_or(
                "a PEM block that is not a CERTIFICATE or an unencrypted PRIVATE KEY (PKCS#8, RSA or EC), or a malformed BEGIN line",
            )?;
        // A key and the certificates; more is refused before the rest is decoded.
        certificates += usize::from(label == "CERTIFICATE");
        if certificates > MAX_CERTIFICATES || blocks.len() > MAX_CERTIFICATES {
            return Err(format!(
                "it holds more than {MAX_CERTIFICATES} certificates (Key Vault keeps a value of at most 25 KB, about 200); store the leaf and its chain only"
            ));
        }
        let body = &after[line.len()..];
        let end = format!("-----END {label}-----");
        let (b64, tail) = body
            .split_once(&end)
            .ok_or_else(|| format!("a {label} block has no END line"))?;
        let der = encoding::base64_strict(b64, false)
            .map(Zeroizing::new)
            .map_err(|why| format!("a {label} block is not base64 ({why})"))?;
        blocks.push((label.to_string(), der));
        rest = tail;
    }
    if blocks.is_empty() {
        return Err("it holds no PEM block".into());
    }
    Ok(blocks)
}

/// The length of the PEM block [`push_pem`] writes for `len` bytes of DER.
pub(super) fn pem_len(label: &str, len: usize) -> usize {
    let b64 = len.div_ceil(3) * 4;
    2 * label.len() + 32 + b64 + b64.div_ceil(64)
}

/// Append `der` as a PEM block, 64 characters a line. The base64 of each line is wiped.
pub(super) fn push_pem(out: &mut String, label: &str, der: &[u8]) {
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in der.chunks(48) {
        out.push_str(&Zeroizing::new(encoding::base64_encode(line)));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

#[cfg(test)]
pub(super) fn pem_block(label: &str, der: &[u8]) -> String {
    let mut out = String::with_capacity(pem_len(label, der.len()));
    push_pem(&mut out, label, der);
    assert_eq!(out.len(), pem_len(label, der.len()));
    out
}

/// The (label, DER) blocks of PEM text, to compare by content and not by line wrapping.
#[cfg(test)]
pub(super) fn blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    let blocks = pem_blocks(text).unwrap().into_iter();
    blocks.map(|(l, d)| (l, d.to_vec())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_read_strictly() {
        let text = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
        assert_eq!(
            blocks(text),
            vec![("CERTIFICATE".to_string(), vec![0, 1, 2])]
        );
        assert!(
            pem_blocks("-----BEGIN CERTIFICATE-----\nAAEC\n").is_err(),
            "no END line"
        );
        assert!(
            pem_blocks("-----BEGIN CERTIFICATE-----\nAA*C\n-----END CERTIFICATE-----").is_err()
        );
        assert!(pem_blocks("no pem here").is_err());
        // A label is never taken from the value: a broken header cannot carry key text out.
        let key = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ";
        for text in [
            format!("-----BEGIN PRIVATE KEY----\n{key}\n-----END PRIVATE KEY-----\n"),
            format!("-----BEGIN {key}-----\nAAEC\n-----END {key}-----\n"),
            format!("-----BEGIN PRIVATE KEY-----\n{key}\n"),
        ] {
            let e = pem_blocks(&text).unwrap_err();
            assert!(!e.contains(&key[..12]), "{e}");
        }
        assert_eq!(
            blocks(&pem_block("PRIVATE KEY", &[9; 100])),
            vec![("PRIVATE KEY".to_string(), vec![9; 100])]
        );
    }

    #[test]
    fn certificates_past_the_cap_are_refused_before_they_are_decoded() {
        let block = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n";
        let at_cap = block.repeat(MAX_CERTIFICATES);
        assert_eq!(pem_blocks(&[key, &at_cap].concat()).unwrap().len(), 257);
        for over in [
            block.repeat(MAX_CERTIFICATES + 1),
            key.repeat(MAX_CERTIFICATES + 2),
        ] {
            let e = pem_blocks(&over).unwrap_err();
            assert!(e.contains("more than 256 certificates"), "{e}");
        }
    }
}
