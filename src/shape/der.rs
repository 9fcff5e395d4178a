//! Just enough DER to read certificate secrets: a reader of definite-length TLVs and a writer
//! of the few structures kvfetch builds (PKCS#8 around an old key format). A PKCS#12 or X.509
//! crate would do this too, but with a parser and an OID registry that cost the static binary
//! more than its size budget allows (see the README's dependency list).

/// A cursor over a sequence of TLVs.
#[derive(Clone, Copy)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader(data)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next TLV: its tag, its content and all of its bytes.
    pub fn next_tlv(&mut self) -> Option<(u8, &'a [u8], &'a [u8])> {
        let (tag, content, rest) = read_tlv(self.0)?;
        let whole = &self.0[..self.0.len() - rest.len()];
        self.0 = rest;
        Some((tag, content, whole))
    }

    /// The next TLV's content, if its tag is `tag`.
    pub fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next_tlv()? {
            (t, content, _) if t == tag => Some(content),
            _ => None,
        }
    }

    /// The next TLV's content if it has tag `tag`; otherwise nothing is consumed.
    pub fn optional(&mut self, tag: u8) -> Option<&'a [u8]> {
        if self.peek_tag() == Some(tag) {
            self.expect(tag)
        } else {
            None
        }
    }

    /// A SEQUENCE's content, as a reader.
    pub fn sequence(&mut self) -> Option<Reader<'a>> {
        self.expect(SEQUENCE).map(Reader)
    }

    /// A small non-negative INTEGER.
    pub fn small_int(&mut self) -> Option<u32> {
        let bytes = self.expect(INTEGER)?;
        if bytes.is_empty() || bytes.len() > 5 || bytes[0] & 0x80 != 0 {
            return None;
        }
        let n = bytes.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
        u32::try_from(n).ok()
    }
}

pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
pub const OID: u8 = 0x06;
pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const UTC_TIME: u8 = 0x17;
pub const GENERALIZED_TIME: u8 = 0x18;
/// `[0]` constructed (EXPLICIT, or IMPLICIT of a constructed type).
pub const CONTEXT_0: u8 = 0xa0;
/// `[0]` primitive (IMPLICIT OCTET STRING).
pub const CONTEXT_0_PRIMITIVE: u8 = 0x80;
pub const CONTEXT_1: u8 = 0xa1;

/// One definite-length TLV: `(tag, content, rest)`. Indefinite lengths (BER) and lengths
/// over 4 bytes are refused.
pub fn read_tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Encode one TLV.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = header(tag, content.len());
    out.extend_from_slice(content);
    out
}

/// The tag and length of a TLV of `len` content bytes, so a writer of key material can size
/// its buffer before filling it.
pub fn header(tag: u8, len: usize) -> Vec<u8> {
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as
/// Unix seconds.
pub fn time(tag: u8, content: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(content).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 12) => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, h, m, s) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = crate::identity::token::days_from_civil(year, month, day);
    Some(days * 86400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_and_bad_ones_are_refused() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 70_000] {
            let content = vec![7u8; len];
            let t = tlv(0x04, &content);
            let (tag, got, rest) = read_tlv(&t).unwrap();
            assert_eq!((tag, got.len(), rest.len()), (0x04, len, 0));
        }
        assert!(
            read_tlv(&[0x04, 0x05, 1, 2]).is_none(),
            "shorter than its length"
        );
        assert!(read_tlv(&[0x04, 0x80]).is_none(), "indefinite length");
        assert!(
            read_tlv(&[0x04, 0x85, 1, 1, 1, 1, 1]).is_none(),
            "over 4 length bytes"
        );
        assert!(read_tlv(&[0x04]).is_none());
    }

    #[test]
    fn readers_take_what_they_expect_only() {
        let mut data = tlv(INTEGER, &[1, 0]);
        data.extend(tlv(OCTET_STRING, b"ab"));
        let mut r = Reader::new(&data);
        assert_eq!(r.optional(OCTET_STRING), None, "not consumed");
        assert_eq!(r.small_int(), Some(256));
        assert_eq!(r.expect(OCTET_STRING), Some(&b"ab"[..]));
        assert!(r.is_empty());
        assert_eq!(
            Reader::new(&tlv(INTEGER, &[0x80])).small_int(),
            None,
            "negative"
        );
    }

    #[test]
    fn times_of_both_kinds() {
        assert_eq!(time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(
            time(GENERALIZED_TIME, b"21261106054300Z"),
            Some(4_949_617_380)
        );
        assert_eq!(time(UTC_TIME, b"701301000000Z"), None, "month 13");
        assert_eq!(time(UTC_TIME, b"700101000000"), None, "no Z");
        assert_eq!(time(GENERALIZED_TIME, b"700101000000Z"), None, "too short");
    }
}
