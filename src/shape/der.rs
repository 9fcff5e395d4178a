//! A cursor over DER TLVs for the PKCS#12 walk (`pkcs12.rs`): the tags, lengths and INTEGERs
//! are read by RustCrypto's `der`; this is only the shape the walk reads them in. No crate
//! offers the PKCS#12 structures without copying a bag's plaintext key outside a wiped buffer
//! (`pkcs12` 0.1 keeps each bag value in a `Vec`), so the walk itself stays kvfetch's.

use ::der::{Decode, Header, Reader as _, SliceReader};

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

    /// A SEQUENCE's content, as a reader.
    pub fn sequence(&mut self) -> Option<Reader<'a>> {
        self.expect(SEQUENCE).map(Reader)
    }

    /// A non-negative INTEGER that fits 32 bits.
    pub fn small_int(&mut self) -> Option<u32> {
        let (tag, _, whole) = self.next_tlv()?;
        (tag == INTEGER).then_some(())?;
        u32::from_der(whole).ok()
    }
}

pub const INTEGER: u8 = 0x02;
pub const OCTET_STRING: u8 = 0x04;
pub const OID: u8 = 0x06;
pub const SEQUENCE: u8 = 0x30;
/// `[0]` constructed (EXPLICIT, or IMPLICIT of a constructed type).
pub const CONTEXT_0: u8 = 0xa0;
/// `[0]` primitive (IMPLICIT OCTET STRING).
pub const CONTEXT_0_PRIMITIVE: u8 = 0x80;

/// One TLV as `der` reads it: `(tag, content, rest)`. Indefinite lengths (BER), lengths that
/// are not minimal, and lengths past the input are refused, so nothing is allocated for them.
pub fn read_tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let mut reader = SliceReader::new(data).ok()?;
    let header = Header::decode(&mut reader).ok()?;
    let content = reader.read_slice(header.length).ok()?;
    let used = usize::try_from(reader.position()).ok()?;
    Some((u8::from(header.tag), content, &data[used..]))
}

#[cfg(test)]
/// Encode one TLV (tests only: kvfetch writes DER through `der`'s types).
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
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
    out.extend_from_slice(content);
    out
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
        assert!(
            read_tlv(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]).is_none(),
            "not minimal"
        );
        assert!(read_tlv(&[0x04]).is_none());
    }

    #[test]
    fn readers_take_what_they_expect_only() {
        let mut data = tlv(INTEGER, &[1, 0]);
        data.extend(tlv(OCTET_STRING, b"ab"));
        let mut r = Reader::new(&data);
        assert_eq!(r.small_int(), Some(256));
        assert_eq!(r.expect(OCTET_STRING), Some(&b"ab"[..]));
        assert!(r.is_empty());
        assert_eq!(
            Reader::new(&tlv(INTEGER, &[0x80])).small_int(),
            None,
            "negative"
        );
        assert_eq!(
            Reader::new(&tlv(INTEGER, &[1, 0, 0, 0, 0])).small_int(),
            None,
            "over 32 bits"
        );
        assert_eq!(
            Reader::new(&tlv(INTEGER, &[0, 1])).small_int(),
            None,
            "not minimal"
        );
    }
    #[test]
    fn expect_takes_only_the_tag_asked_for() {
        let oid = [0x2a, 0x86, 0x48];
        let bytes = [tlv(OCTET_STRING, &oid), tlv(OID, &oid)].concat();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.expect(OID), None, "the same bytes under another tag");
        assert_eq!(r.expect(OID), Some(&oid[..]));
        assert_eq!(r.expect(OID), None, "nothing left");
    }
}
