//! The encodings kvfetch needs, on the crates the tree already links through ureq: URL
//! percent-encoding (query values, `percent-encoding`), lenient base64url decoding (reading a
//! token's claims to name the identity in messages) and the strict decoders of `decode=` (a
//! secret's bytes must come out exactly or not at all), both `base64`. What is kvfetch's own is
//! the thin glue: white space in wrapped text, and errors that say where, never what.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

/// Everything but RFC 3986's unreserved characters is encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Padding optional but right when present; the unused bits of the last character must be zero.
const STRICT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_encode_padding(true)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(false);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, STRICT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, STRICT);
/// A token's claims: read only to name the identity in messages, so any leftover bits pass.
const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    STRICT.with_decode_allow_trailing_bits(true),
);

/// Decode base64url (padding optional); `None` when it is not base64url.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    LENIENT_URL_SAFE.decode(s).ok()
}

/// Standard base64 with padding (PEM bodies).
pub fn base64_encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Strict base64 (`url`: the URL-safe alphabet) as `decode=` reads it: ASCII white space
/// (line breaks of wrapped text) is skipped, padding is optional but must be complete when
/// present, and the unused bits of the last character must be zero, so one text has one
/// meaning. The error says where, never what (the text is a secret).
pub fn base64_strict(text: &str, url: bool) -> Result<Vec<u8>, String> {
    let white = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let compact: Zeroizing<Vec<u8>> = Zeroizing::new(text.bytes().filter(|c| !white(c)).collect());
    let pad = compact.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 0 && !compact.len().is_multiple_of(4) {
        return Err("its length is not that of base64 text".into());
    }
    // The byte of `text` that is the `n`th of `compact`.
    let at = |n: usize| {
        text.bytes()
            .enumerate()
            .filter(|(_, c)| !white(c))
            .nth(n)
            .map_or(text.len(), |(i, _)| i)
    };
    let engine = if url { &URL_SAFE } else { &STANDARD };
    engine.decode(&*compact).map_err(|e| match e {
        base64::DecodeError::InvalidByte(n, b'=') => {
            format!("text after the '=' padding (byte {})", at(n))
        }
        base64::DecodeError::InvalidByte(n, _) => {
            format!("a character outside the alphabet at byte {}", at(n))
        }
        base64::DecodeError::InvalidLastSymbol { .. } => {
            "the last character has bits set that no byte uses".into()
        }
        base64::DecodeError::InvalidLength(_) | base64::DecodeError::InvalidPadding => {
            "its length is not that of base64 text".into()
        }
    })
}

/// Lower-case hex of `bytes` (digests, request ids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
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
        assert_eq!(hex(&[0, 0x0f, 0xa0, 0xff]), "000fa0ff");
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

    proptest::proptest! {
        /// Any bytes, encoded, then wrapped or spaced anywhere, decode to the same bytes; the
        /// unpadded and URL-safe forms too.
        #[test]
        fn strict_base64_takes_back_what_was_encoded(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let text = base64_encode(&data);
            let mut wrapped = text.clone();
            for cut in cuts {
                let at = cut.min(wrapped.len());
                wrapped.insert(at, if cut % 2 == 0 { '\n' } else { ' ' });
            }
            proptest::prop_assert_eq!(&base64_strict(&wrapped, false).unwrap(), &data);
            proptest::prop_assert_eq!(&base64_strict(text.trim_end_matches('='), false).unwrap(), &data);
            let url = text.replace('+', "-").replace('/', "_");
            proptest::prop_assert_eq!(&base64_strict(&url, true).unwrap(), &data);
            proptest::prop_assert_eq!(&base64url_decode(&url).unwrap(), &data);
        }

        /// Hex is two lower-case digits per byte, and reads back to the same bytes.
        #[test]
        fn hex_takes_back_what_it_wrote(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let text = hex(&data);
            proptest::prop_assert_eq!(text.len(), data.len() * 2);
            proptest::prop_assert!(text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
            proptest::prop_assert_eq!(hex_strict(&text).unwrap(), data);
        }

        /// Whatever the text, a refusal names a place or a rule, never the text.
        #[test]
        fn strict_decoders_never_quote_the_text(text in "[A-Za-z0-9+/=_*\\- \n]{0,40}XQZ[A-Za-z0-9+/= ]{0,40}") {
            for url in [false, true] {
                if let Err(e) = base64_strict(&text, url) {
                    proptest::prop_assert!(!e.contains("XQZ"), "{}", e);
                }
            }
            if let Err(e) = hex_strict(&text) {
                proptest::prop_assert!(!e.contains("XQZ"), "{}", e);
            }
        }
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(percent_encode("a b/ü?&="), "a%20b%2F%C3%BC%3F%26%3D");
    }
}
