//! The part of PKCS#12 (RFC 7292) that certificate secrets use: open a PFX with the empty
//! password Key Vault gives it, check its MAC, and collect its private key and certificates.
//!
//! Encryption schemes read: PBES2 (PBKDF2 with HMAC-SHA-1/256/384/512, AES-128/192/256-CBC or
//! 3DES-CBC; what OpenSSL 3 and recent Windows write) and the PKCS#12 PBES1 schemes
//! (SHA-1 with 3-key 3DES-CBC, 40- or 128-bit RC2-CBC; what Windows, .NET and older OpenSSL
//! write). ring (already in the binary for TLS) gives SHA, HMAC and PBKDF2; the block ciphers are
//! RustCrypto's. Only DER is read: a BER-encoded PFX (indefinite lengths) is refused by name.
//!
//! Every buffer that holds decrypted bytes (a bag's private key, a decrypted SafeContents) or a
//! derived key is a [`Zeroizing`] one, decrypted in place and never grown, so no copy of a key
//! stays behind in freed memory.

use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, InnerIvInit, KeyInit, KeyIvInit};
use ring::{digest, hmac, pbkdf2};
use zeroize::Zeroizing;

use crate::shape::der::{self, Reader};

/// A PFX's contents: its first private key (PKCS#8 DER) and every certificate (DER).
pub struct Contents {
    pub key: Option<Zeroizing<Vec<u8>>>,
    pub certs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contents")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("certs", &self.certs.len())
            .finish()
    }
}

// Object identifiers, as the content bytes of their DER encoding.
const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const ENCRYPTED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x06];
const KEY_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x01,
];
const SHROUDED_KEY_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x02,
];
const CERT_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x03,
];
const X509_CERT: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x16, 0x01];
const PBE_SHA1_3DES: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x03];
const PBE_SHA1_RC2_128: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x05];
const PBE_SHA1_RC2_40: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x06];
const PBES2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d];
const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

/// Iteration counts beyond this are refused (OpenSSL, Windows, .NET and Java write 2,000 to
/// 10,000): ten times the most a real writer uses.
const MAX_ITERATIONS: u32 = 100_000;
/// All the hashing one PFX may cost, MAC and bags together: a fraction of a second on an
/// optimised build (4 million cost 11 s on the fuzz build: `fuzz/regressions/pkcs12`), so a
/// hostile value cannot make kvfetch spin, on every refresh.
const MAX_WORK: u64 = 250_000;
/// Bags beyond this are refused (a certificate, its chain and a key are a handful).
const MAX_BAGS: usize = 64;

/// The hashing a PFX may still cost.
struct Work(u64);

impl Work {
    /// Take `iterations` × `rounds` from the budget, refusing what is over it.
    fn spend(&mut self, iterations: u32, rounds: u64) -> Result<()> {
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(malformed("an iteration count of 0 or over 100,000"));
        }
        self.0 = self.0.checked_sub(u64::from(iterations) * rounds).ok_or(
            "its PFX asks for more key-derivation work than kvfetch spends on one (over 250,000 hash iterations); re-export it with the usual iteration counts",
        )?;
        Ok(())
    }
}

type Result<T> = std::result::Result<T, String>;

fn malformed(what: &str) -> String {
    format!("its PFX is malformed ({what})")
}

/// Open `pfx` with the empty password.
pub fn open(pfx: &[u8]) -> Result<Contents> {
    let contents = open_unscrubbed(pfx);
    scrub_stack();
    contents
}

/// How much of the stack below [`open`]'s caller [`scrub_stack`] wipes: more than decrypting
/// uses (the block ciphers decrypt several blocks at a time in stack buffers).
const SCRUBBED: usize = 64 * 1024;

/// Overwrite the stack that opening a PFX used, so no decrypted block stays in it.
#[inline(never)]
fn scrub_stack() {
    let mut stack = [0xffu8; SCRUBBED];
    zeroize::Zeroize::zeroize(&mut stack[..]);
    std::hint::black_box(&stack);
}

fn open_unscrubbed(pfx: &[u8]) -> Result<Contents> {
    let mut work = Work(MAX_WORK);
    let mut top = Reader::new(pfx);
    let mut pfx_seq = top.sequence().ok_or_else(|| {
        if pfx.get(1) == Some(&0x80) {
            "its PFX is BER-encoded (indefinite lengths), which kvfetch does not read; re-export it as DER (e.g. openssl pkcs12 -export)".to_string()
        } else {
            malformed("not a PFX")
        }
    })?;
    if pfx_seq.small_int() != Some(3) {
        return Err(malformed("not version 3"));
    }
    let auth_safe = data_content(&mut pfx_seq.sequence().ok_or_else(|| malformed("authSafe"))?)?;
    let mac = match pfx_seq.is_empty() {
        true => None,
        false => Some(pfx_seq.sequence().ok_or_else(|| malformed("macData"))?),
    };
    if !pfx_seq.is_empty() || !top.is_empty() {
        return Err(malformed("bytes after its end"));
    }
    // The empty password is two zero bytes as a BMPString (most writers) or none at all.
    let bmp = match mac {
        Some(mut mac) => mac_password(&mut mac, auth_safe, &mut work)?,
        None => &[0, 0][..],
    };
    let mut contents = Contents {
        key: None,
        certs: Vec::new(),
    };
    let mut bags = 0;
    let mut safes = Reader::new(auth_safe)
        .sequence()
        .ok_or_else(|| malformed("AuthenticatedSafe"))?;
    while !safes.is_empty() {
        let mut info = safes.sequence().ok_or_else(|| malformed("ContentInfo"))?;
        let kind = info
            .expect(der::OID)
            .ok_or_else(|| malformed("content type"))?;
        let safe = if kind == DATA {
            let mut wrapped = info;
            Zeroizing::new(data_body(&mut wrapped)?.to_vec())
        } else if kind == ENCRYPTED_DATA {
            encrypted_data(&mut info, bmp, &mut work)?
        } else {
            continue; // enveloped data (public-key privacy): not used for Key Vault certificates
        };
        bags += read_bags(&safe, bmp, &mut contents, &mut work)?;
        if bags > MAX_BAGS {
            return Err(malformed("more than 64 bags"));
        }
    }
    Ok(contents)
}

/// A ContentInfo of type data: its OCTET STRING.
fn data_content<'a>(info: &mut Reader<'a>) -> Result<&'a [u8]> {
    if info.expect(der::OID) != Some(DATA) {
        return Err("its PFX is signed with a public key (not password-protected), which kvfetch does not read".into());
    }
    data_body(info)
}

fn data_body<'a>(info: &mut Reader<'a>) -> Result<&'a [u8]> {
    let explicit = info
        .expect(der::CONTEXT_0)
        .ok_or_else(|| malformed("content"))?;
    Reader::new(explicit)
        .expect(der::OCTET_STRING)
        .ok_or_else(|| malformed("content is not an OCTET STRING"))
}

/// Check the MAC, trying both spellings of the empty password; the one that matches is the
/// one the PFX's encryption uses too.
fn mac_password<'a>(mac: &mut Reader, auth_safe: &[u8], work: &mut Work) -> Result<&'a [u8]> {
    let mut digest_info = mac.sequence().ok_or_else(|| malformed("MAC"))?;
    let mut alg = digest_info
        .sequence()
        .ok_or_else(|| malformed("MAC algorithm"))?;
    let oid = alg
        .expect(der::OID)
        .ok_or_else(|| malformed("MAC algorithm"))?;
    let (hash, mac_alg) = match oid {
        SHA1 => (
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        ),
        SHA256 => (&digest::SHA256, hmac::HMAC_SHA256),
        SHA384 => (&digest::SHA384, hmac::HMAC_SHA384),
        SHA512 => (&digest::SHA512, hmac::HMAC_SHA512),
        _ => return Err("its PFX's MAC uses a hash kvfetch does not know".into()),
    };
    let expected = digest_info
        .expect(der::OCTET_STRING)
        .ok_or_else(|| malformed("MAC value"))?;
    let salt = mac
        .expect(der::OCTET_STRING)
        .ok_or_else(|| malformed("MAC salt"))?;
    let iterations = match mac.peek_tag() {
        Some(der::INTEGER) => mac.small_int().ok_or_else(|| malformed("MAC iterations"))?,
        _ => 1,
    };
    for bmp in [&[0u8, 0][..], &[]] {
        work.spend(iterations, 1)?;
        let key = kdf(hash, bmp, salt, 3, iterations, hash.output_len());
        let key = hmac::Key::new(mac_alg, &key);
        if hmac::verify(&key, auth_safe, expected).is_ok() {
            return Ok(bmp);
        }
    }
    Err("its PFX does not open with the empty password Key Vault uses (the MAC does not match); import the certificate with an empty password, or as PEM".into())
}

/// EncryptedData { version, EncryptedContentInfo { type, algorithm, [0] IMPLICIT content } }.
fn encrypted_data(info: &mut Reader, bmp: &[u8], work: &mut Work) -> Result<Zeroizing<Vec<u8>>> {
    let explicit = info
        .expect(der::CONTEXT_0)
        .ok_or_else(|| malformed("encrypted data"))?;
    let mut data = Reader::new(explicit)
        .sequence()
        .ok_or_else(|| malformed("encrypted data"))?;
    data.small_int()
        .ok_or_else(|| malformed("encrypted data version"))?;
    let mut content = data
        .sequence()
        .ok_or_else(|| malformed("encrypted content"))?;
    content.expect(der::OID);
    let alg = content
        .sequence()
        .ok_or_else(|| malformed("encryption algorithm"))?;
    let encrypted = content
        .expect(der::CONTEXT_0_PRIMITIVE)
        .ok_or_else(|| malformed("encrypted content"))?;
    decrypt(alg, encrypted, bmp, work)
}

/// SafeContents: a SEQUENCE OF SafeBag { bagId, [0] bagValue, attributes OPTIONAL }; returns
/// how many bags it held.
fn read_bags(bags: &[u8], bmp: &[u8], contents: &mut Contents, work: &mut Work) -> Result<usize> {
    let mut count = 0;
    let mut bags = Reader::new(bags)
        .sequence()
        .ok_or_else(|| malformed("SafeContents"))?;
    while !bags.is_empty() {
        count += 1;
        if count > MAX_BAGS {
            return Err(malformed("more than 64 bags"));
        }
        let mut bag = bags.sequence().ok_or_else(|| malformed("SafeBag"))?;
        let id = bag.expect(der::OID).ok_or_else(|| malformed("bag type"))?;
        let value = bag
            .expect(der::CONTEXT_0)
            .ok_or_else(|| malformed("bag value"))?;
        let key = match id {
            KEY_BAG => Some(Zeroizing::new(value.to_vec())),
            SHROUDED_KEY_BAG => {
                let mut info = Reader::new(value)
                    .sequence()
                    .ok_or_else(|| malformed("shrouded key"))?;
                let alg = info.sequence().ok_or_else(|| malformed("key encryption"))?;
                let data = info
                    .expect(der::OCTET_STRING)
                    .ok_or_else(|| malformed("shrouded key"))?;
                if contents.key.is_some() {
                    None // only the first key is used: the others are not decrypted
                } else {
                    Some(tlv_whole(decrypt(alg, data, bmp, work)?)?)
                }
            }
            CERT_BAG => {
                let mut cert = Reader::new(value)
                    .sequence()
                    .ok_or_else(|| malformed("certificate bag"))?;
                if cert.expect(der::OID) == Some(X509_CERT) {
                    let explicit = cert
                        .expect(der::CONTEXT_0)
                        .ok_or_else(|| malformed("certificate"))?;
                    let der = Reader::new(explicit)
                        .expect(der::OCTET_STRING)
                        .ok_or_else(|| malformed("certificate"))?;
                    contents.certs.push(der.to_vec());
                }
                None
            }
            _ => None, // CRLs, secrets, nested safes: not part of a TLS certificate
        };
        if let Some(k) = key
            && contents.key.is_none()
        {
            contents.key = Some(k);
        }
    }
    Ok(count)
}

/// The one TLV that decrypted bytes must be (a PrivateKeyInfo).
fn tlv_whole(plain: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>> {
    match der::read_tlv(&plain) {
        Some((der::SEQUENCE, _, [])) => Ok(plain),
        _ => Err(malformed("a decrypted key is not a PrivateKeyInfo")),
    }
}

/// Decrypt `data` with the password-based scheme `alg` (an AlgorithmIdentifier's content).
fn decrypt(
    mut alg: Reader,
    data: &[u8],
    bmp: &[u8],
    work: &mut Work,
) -> Result<Zeroizing<Vec<u8>>> {
    let oid = alg
        .expect(der::OID)
        .ok_or_else(|| malformed("encryption algorithm"))?;
    let (_, params, whole) = alg
        .next_tlv()
        .filter(|t| t.0 == der::SEQUENCE)
        .ok_or_else(|| malformed("encryption parameters"))?;
    let failed = || "its PFX does not decrypt with the empty password Key Vault uses".to_string();
    if oid == PBES2 {
        return pbes2(whole, data, work).ok_or_else(failed)?;
    }
    let mut params = Reader::new(params);
    let salt = params
        .expect(der::OCTET_STRING)
        .ok_or_else(|| malformed("salt"))?;
    let iterations = params.small_int().ok_or_else(|| malformed("iterations"))?;
    // The key (up to 24 bytes: two SHA-1 rounds) and the IV (one).
    work.spend(iterations, 3)?;
    let sha1 = &digest::SHA1_FOR_LEGACY_USE_ONLY;
    let mut buf = Zeroizing::new(data.to_vec());
    let plain = match oid {
        PBE_SHA1_3DES => {
            let key = kdf(sha1, bmp, salt, 1, iterations, 24);
            let iv = kdf(sha1, bmp, salt, 2, iterations, 8);
            cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
                .map_err(|_| failed())?
                .decrypt_padded_mut::<Pkcs7>(&mut buf)
                .map(<[u8]>::len)
        }
        PBE_SHA1_RC2_40 | PBE_SHA1_RC2_128 => {
            let bits = if oid == PBE_SHA1_RC2_40 { 40 } else { 128 };
            let key = kdf(sha1, bmp, salt, 1, iterations, bits / 8);
            let iv = kdf(sha1, bmp, salt, 2, iterations, 8);
            let cipher = rc2::Rc2::new_with_eff_key_len(&key, bits);
            cbc::Decryptor::<rc2::Rc2>::inner_iv_slice_init(cipher, &iv)
                .map_err(|_| failed())?
                .decrypt_padded_mut::<Pkcs7>(&mut buf)
                .map(<[u8]>::len)
        }
        _ => return Err("its PFX is encrypted with a scheme kvfetch does not read; re-export it with AES-256 or 3DES".into()),
    };
    let len = plain.map_err(|_| failed())?;
    buf.truncate(len); // the padding after it is wiped with the rest of the capacity
    Ok(buf)
}

/// The cipher refusal, for a PBES2 cipher `pkcs5` does not know and one kvfetch does not read.
const UNKNOWN_CIPHER: &str =
    "its PFX is encrypted with a cipher kvfetch does not read; re-export it with AES-256 or 3DES";

/// PBES2 { keyDerivationFunc PBKDF2 {salt, iterations, keyLength?, prf?}, encryptionScheme },
/// `params` its whole DER, read by `pkcs5`. `None`: the decryption failed (wrong key);
/// `Some(Err)`: the parameters are not readable.
fn pbes2(params: &[u8], data: &[u8], work: &mut Work) -> Option<Result<Zeroizing<Vec<u8>>>> {
    use pkcs5::der::Decode;
    use pkcs5::pbes2::{EncryptionScheme, Kdf, Parameters, Pbkdf2Prf};
    let parsed = match Parameters::from_der(params) {
        Ok(parsed) => parsed,
        Err(e) => return Some(Err(pbes2_refusal(e))),
    };
    let Kdf::Pbkdf2(kdf) = parsed.kdf else {
        return Some(Err(malformed("PBES2 parameters"))); // scrypt: not written for a PFX
    };
    // Two hashes per iteration per output block, and AES-256 takes two SHA-1 blocks.
    if let Err(e) = work.spend(kdf.iteration_count, 4) {
        return Some(Err(e));
    }
    let prf = match kdf.prf {
        Pbkdf2Prf::HmacWithSha1 => pbkdf2::PBKDF2_HMAC_SHA1,
        Pbkdf2Prf::HmacWithSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        Pbkdf2Prf::HmacWithSha384 => pbkdf2::PBKDF2_HMAC_SHA384,
        Pbkdf2Prf::HmacWithSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        _ => return Some(Err(UNKNOWN_HASH.into())),
    };
    let (key_len, iv): (usize, &[u8]) = match parsed.encryption {
        EncryptionScheme::Aes128Cbc { iv } => (16, iv),
        EncryptionScheme::Aes192Cbc { iv } => (24, iv),
        EncryptionScheme::Aes256Cbc { iv } => (32, iv),
        EncryptionScheme::DesEde3Cbc { iv } => (24, iv),
        _ => return Some(Err(UNKNOWN_CIPHER.into())),
    };
    let iterations = std::num::NonZeroU32::new(kdf.iteration_count)?;
    let mut key = Zeroizing::new(vec![0u8; key_len]);
    // PBES2 takes the password as its UTF-8 bytes: the empty password is no bytes at all.
    pbkdf2::derive(prf, iterations, kdf.salt, b"", &mut key);
    let mut buf = Zeroizing::new(data.to_vec());
    let plain = match parsed.encryption {
        EncryptionScheme::Aes128Cbc { .. } => cbc_decrypt::<aes::Aes128>(&key, iv, &mut buf),
        EncryptionScheme::Aes192Cbc { .. } => cbc_decrypt::<aes::Aes192>(&key, iv, &mut buf),
        EncryptionScheme::Aes256Cbc { .. } => cbc_decrypt::<aes::Aes256>(&key, iv, &mut buf),
        _ => cbc_decrypt::<des::TdesEde3>(&key, iv, &mut buf),
    };
    buf.truncate(plain?);
    Some(Ok(buf))
}

const UNKNOWN_HASH: &str = "its PFX uses a PBKDF2 hash kvfetch does not know";

/// Why `pkcs5` refused PBES2 parameters, as kvfetch words it: an unknown HMAC (RSA DSI's
/// digest arc, 1.2.840.113549.2), an unknown cipher, or parameters that are not readable.
fn pbes2_refusal(e: pkcs5::der::Error) -> String {
    const DIGEST_ARC: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02];
    const PKCS5_ARC: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05];
    match e.kind() {
        pkcs5::der::ErrorKind::OidUnknown { oid } if oid.as_bytes().starts_with(DIGEST_ARC) => {
            UNKNOWN_HASH.into()
        }
        // An unknown key derivation (not PBKDF2 or scrypt) is unreadable parameters.
        pkcs5::der::ErrorKind::OidUnknown { oid } if !oid.as_bytes().starts_with(PKCS5_ARC) => {
            UNKNOWN_CIPHER.into()
        }
        _ => malformed("PBES2 parameters"),
    }
}

/// Decrypt `buf` in place; the plaintext's length.
fn cbc_decrypt<C>(key: &[u8], iv: &[u8], buf: &mut [u8]) -> Option<usize>
where
    C: cbc::cipher::BlockDecrypt + cbc::cipher::BlockCipher + KeyInit,
{
    cbc::Decryptor::<C>::new_from_slices(key, iv)
        .ok()?
        .decrypt_padded_mut::<Pkcs7>(buf)
        .ok()
        .map(<[u8]>::len)
}

/// The PKCS#12 key derivation (RFC 7292, appendix B.2), by the `pkcs12` crate: `n` bytes for
/// purpose `id` (1: key, 2: IV, 3: MAC key) from the BMPString password `bmp` and `salt`.
fn kdf(
    hash: &'static digest::Algorithm,
    bmp: &[u8],
    salt: &[u8],
    id: u8,
    iterations: u32,
    n: usize,
) -> Zeroizing<Vec<u8>> {
    use pkcs12::kdf::{Pkcs12KeyType, derive_key};
    let id = match id {
        1 => Pkcs12KeyType::EncryptionKey,
        2 => Pkcs12KeyType::Iv,
        _ => Pkcs12KeyType::Mac,
    };
    // Bounded by MAX_ITERATIONS before any derivation.
    let rounds = i32::try_from(iterations).unwrap_or(i32::MAX);
    Zeroizing::new(if *hash == digest::SHA256 {
        derive_key::<sha2::Sha256>(bmp, salt, id, rounds, n)
    } else if *hash == digest::SHA384 {
        derive_key::<sha2::Sha384>(bmp, salt, id, rounds, n)
    } else if *hash == digest::SHA512 {
        derive_key::<sha2::Sha512>(bmp, salt, id, rounds, n)
    } else {
        derive_key::<sha1::Sha1>(bmp, salt, id, rounds, n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::der::tlv;

    #[test]
    fn the_pkcs12_kdf_matches_known_answers() {
        // OpenSSL's test vectors (test/pkcs12_format_test / the PKCS#12 KDF vectors): password
        // "smeg", salt 0A58CF64530D823F, 1 iteration, SHA-1.
        let bmp: Vec<u8> = "smeg\0".encode_utf16().flat_map(u16::to_be_bytes).collect();
        let salt = [0x0a, 0x58, 0xcf, 0x64, 0x53, 0x0d, 0x82, 0x3f];
        let sha1 = &digest::SHA1_FOR_LEGACY_USE_ONLY;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
        assert_eq!(
            hex(&kdf(sha1, &bmp, &salt, 1, 1, 24)),
            "8AAAE6297B6CB04642AB5B077851284EB7128F1A2A7FBCA3"
        );
        assert_eq!(hex(&kdf(sha1, &bmp, &salt, 2, 1, 8)), "79993DFE048D3B76");
    }

    /// PBES2 parameters: PBKDF2 (salt, `iterations`, HMAC `prf`, NULL) and `cipher` with a
    /// 16-byte IV.
    fn pbes2_params(kdf: &[u8], iterations: u8, prf: &[u8], cipher: &[u8]) -> Vec<u8> {
        let prf = tlv(0x30, &[tlv(0x06, prf), vec![0x05, 0x00]].concat());
        let pbkdf2 = [tlv(0x04, &[7; 8]), tlv(0x02, &[iterations]), prf].concat();
        let kdf = tlv(0x30, &[tlv(0x06, kdf), tlv(0x30, &pbkdf2)].concat());
        let scheme = tlv(0x30, &[tlv(0x06, cipher), tlv(0x04, &[1; 16])].concat());
        tlv(0x30, &[kdf, scheme].concat())
    }

    #[test]
    fn pbes2_parameters_read_by_pkcs5_keep_their_refusals() {
        const PBKDF2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c];
        const HMAC_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09];
        const HMAC_SHA224: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x08];
        const HMAC_UNKNOWN: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x0c];
        const AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
        const AES128_GCM: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x06];
        const KDF_UNKNOWN: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x63];
        let refusal = |params: Vec<u8>| {
            let mut work = Work(MAX_WORK);
            match pbes2(&params, &[0; 16], &mut work) {
                Some(Err(e)) => e,
                Some(Ok(_)) => "decrypted".into(),
                None => "did not decrypt".into(),
            }
        };
        let says = |params, what: &str| {
            let e = refusal(params);
            assert!(e.contains(what), "{what}: {e}");
        };
        says(
            pbes2_params(PBKDF2, 1, HMAC_SHA256, AES256_CBC),
            "did not decrypt",
        );
        says(
            pbes2_params(PBKDF2, 1, HMAC_SHA224, AES256_CBC),
            "PBKDF2 hash kvfetch does not know",
        );
        says(
            pbes2_params(PBKDF2, 1, HMAC_UNKNOWN, AES256_CBC),
            "PBKDF2 hash kvfetch does not know",
        );
        says(
            pbes2_params(PBKDF2, 1, HMAC_SHA256, AES128_GCM),
            "a cipher kvfetch does not read",
        );
        says(
            pbes2_params(KDF_UNKNOWN, 1, HMAC_SHA256, AES256_CBC),
            "malformed (PBES2 parameters)",
        );
        says(
            pbes2_params(PBKDF2, 0, HMAC_SHA256, AES256_CBC),
            "malformed",
        );
        let mut truncated = pbes2_params(PBKDF2, 1, HMAC_SHA256, AES256_CBC);
        truncated.pop();
        says(truncated, "malformed (PBES2 parameters)");
    }

    #[test]
    fn not_a_pfx_ber_and_huge_iteration_counts_are_refused_by_name() {
        assert!(open(b"").unwrap_err().contains("not a PFX"));
        assert!(
            open(&[0x30, 0x80, 0x02, 0x01, 0x03, 0, 0])
                .unwrap_err()
                .contains("BER-encoded")
        );
        let v2 = [0x30, 0x03, 0x02, 0x01, 0x02];
        assert!(open(&v2).unwrap_err().contains("not version 3"));
        let mut w = Work(MAX_WORK);
        assert!(w.spend(0, 1).is_err() && w.spend(MAX_ITERATIONS + 1, 1).is_err());
        assert!(w.spend(MAX_ITERATIONS, 2).is_ok() && w.spend(1, 1).is_ok());
        assert!(
            w.spend(MAX_ITERATIONS, 1).is_err(),
            "over the budget in all: {}",
            w.0
        );
        let mut trailing =
            std::fs::read_to_string("tests/fixtures/certs/rsa-3des.pfx.b64").unwrap();
        trailing = trailing.trim().to_string();
        let mut der = crate::base::encoding::base64_strict(&trailing, false).unwrap();
        assert!(open(&der).is_ok());
        der.push(0);
        assert!(open(&der).unwrap_err().contains("bytes after its end"));
    }
    /// A PFX without a MAC whose AuthenticatedSafe holds one data SafeContents per entry of
    /// `bags`, each of that many bags of a type kvfetch skips.
    fn pfx_of_bags(bags: &[usize]) -> Vec<u8> {
        let data_info = |content: &[u8]| {
            let body = tlv(0xa0, &tlv(der::OCTET_STRING, content));
            tlv(0x30, &[tlv(der::OID, DATA), body].concat())
        };
        let skipped = tlv(
            0x30,
            &[tlv(der::OID, &[0x2a, 0x03]), tlv(0xa0, &[5, 0])].concat(),
        );
        let safes: Vec<u8> = bags
            .iter()
            .flat_map(|n| data_info(&tlv(0x30, &skipped.repeat(*n))))
            .collect();
        tlv(
            0x30,
            &[tlv(0x02, &[3]), data_info(&tlv(0x30, &safes))].concat(),
        )
    }

    #[test]
    fn at_most_64_bags_in_all_however_they_are_split() {
        for ok in [vec![64], vec![40, 24], vec![1, 1, 62]] {
            let c = open(&pfx_of_bags(&ok)).unwrap();
            assert!(c.key.is_none() && c.certs.is_empty(), "{ok:?}");
        }
        for over in [vec![65], vec![40, 25], vec![64, 1]] {
            let e = open(&pfx_of_bags(&over)).unwrap_err();
            assert!(e.contains("more than 64 bags"), "{over:?}: {e}");
        }
    }

    #[test]
    fn contents_debug_shows_no_key() {
        let c = Contents {
            key: Some(Zeroizing::new(vec![0x42; 8])),
            certs: vec![vec![1]],
        };
        assert_eq!(
            format!("{c:?}"),
            r#"Contents { key: Some("<redacted>"), certs: 1 }"#
        );
    }
    #[test]
    fn pbes2_reads_each_pbkdf2_hash_and_cipher_openssl_writes() {
        // `openssl pkcs8 -topk8 -v2 CIPHER -v2prf hmacWithHASH -passout pass:` of the EC key.
        let key = super::super::pem::blocks(include_str!("../../tests/fixtures/certs/leaf-ec.key"));
        for b64 in [
            include_str!("../../tests/fixtures/certs/leaf-ec.pbes2-sha1-aes-256-cbc.p8.b64"),
            include_str!("../../tests/fixtures/certs/leaf-ec.pbes2-sha384-aes-128-cbc.p8.b64"),
            include_str!("../../tests/fixtures/certs/leaf-ec.pbes2-sha512-des-ede3-cbc.p8.b64"),
        ] {
            let info = crate::base::encoding::base64_strict(b64, false).unwrap();
            let mut info = Reader::new(&info).sequence().unwrap();
            let alg = info.sequence().unwrap();
            let data = info.expect(der::OCTET_STRING).unwrap();
            let plain = decrypt(alg, data, &[0, 0], &mut Work(MAX_WORK)).unwrap();
            assert_eq!(&plain[..], &key[0].1[..]);
        }
    }
}
