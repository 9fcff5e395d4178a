//! The encodings kvfetch needs and std lacks: URL percent-encoding (query values), lenient
//! base64url decoding (reading a token's claims to name the identity in messages), and the
//! strict decoders of `decode=` (a secret's bytes must come out exactly or not at all).

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode base64url (padding optional); `None` on any invalid character.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Standard base64 with padding (PEM bodies).
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict base64 (`url`: the URL-safe alphabet) as `decode=` reads it: ASCII white space
/// (line breaks of wrapped text) is skipped, padding is optional but must be right when present,
/// and the unused bits of the last character must be zero, so one text has one meaning. The
/// error says where, never what (the text is a secret).
pub fn base64_strict(text: &str, url: bool) -> Result<Vec<u8>, String> {
    let (c62, c63) = if url { (b'-', b'_') } else { (b'+', b'/') };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits, mut chars, mut pad) = (0u32, 0u32, 0usize, 0usize);
    for (i, c) in text.bytes().enumerate() {
        let v = match c {
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            b'=' => {
                pad += 1;
                continue;
            }
            _ if pad > 0 => return Err(format!("text after the '=' padding (byte {i})")),
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            _ if c == c62 => 62,
            _ if c == c63 => 63,
            _ => return Err(format!("a character outside the alphabet at byte {i}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        chars += 1;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if chars % 4 == 1 || (pad > 0 && (chars + pad) % 4 != 0) || pad > 2 {
        return Err("its length is not that of base64 text".into());
    }
    if acc & ((1 << bits) - 1) != 0 {
        return Err("the last character has bits set that no byte uses".into());
    }
    Ok(out)
}

/// Hex, either case; ASCII white space skipped.
pub fn hex_strict(text: &str) -> Result<Vec<u8>, String> {
    let mut digits = Vec::with_capacity(text.len());
    for (i, c) in text.bytes().enumerate() {
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => digits.push(
                (c as char)
                    .to_digit(16)
                    .ok_or_else(|| format!("a character that is not a hex digit at byte {i}"))?
                    as u8,
            ),
        }
    }
    if digits.len() % 2 != 0 {
        return Err("an odd number of hex digits".into());
    }
    Ok(digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(
            percent_encode("https://vault.azure.net"),
            "https%3A%2F%2Fvault.azure.net"
        );
        assert_eq!(base64url_decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64url_decode("YWI=").unwrap(), b"ab");
        assert!(base64url_decode("a*b").is_none());
    }

    #[test]
    fn strict_decoders_take_one_text_to_one_meaning() {
        assert_eq!(base64_strict("aGVsbG8=", false).unwrap(), b"hello");
        assert_eq!(base64_strict("aGVs\nbG8", false).unwrap(), b"hello");
        assert_eq!(base64_strict("+/+/", false).unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(base64_strict("-_-_", true).unwrap(), [0xfb, 0xff, 0xbf]);
        assert_eq!(base64_strict("", false).unwrap(), b"");
        for (bad, url) in [
            ("-_-_", false),
            ("+/+/", true),
            ("aGVsb", false), // a lone last character
            ("aGVsbG8==", false),
            ("aGVsbG9=", false), // unused bits set
            ("aG=Vs", false),
            ("aGVsbG8===", false),
            ("aGV*bG8=", false),
        ] {
            assert!(base64_strict(bad, url).is_err(), "{bad:?} (url: {url})");
        }
        let e = base64_strict("s3cr*t", false).unwrap_err();
        assert!(!e.contains("s3cr"), "{e}");
        assert_eq!(hex_strict("00ff Aa\n10").unwrap(), [0, 0xff, 0xaa, 0x10]);
        assert!(hex_strict("abc").is_err());
        assert!(hex_strict("0g").is_err());
        for data in [
            &b""[..],
            b"h",
            b"he",
            b"hel",
            b"hello",
            &[0xfb, 0xff, 0xbf, 0],
        ] {
            let text = base64_encode(data);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(base64_strict(&text, false).unwrap(), data, "{text}");
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
    }
}
