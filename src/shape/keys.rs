//! Private keys: the public half of a PKCS#8 key (to find its certificate), and the old
//! formats (PKCS#1 RSA, SEC1 EC) wrapped as PKCS#8. RustCrypto's `pkcs8`, `pkcs1` and `sec1`
//! read and write them; kvfetch only sizes the buffers, so that each one that holds a key is a
//! wiped one of exactly its length.
//!
//! May use: nothing of kvfetch.

use der::asn1::AnyRef;
use der::oid::ObjectIdentifier;
use der::{Decode, Encode};
use pkcs8::AlgorithmIdentifierRef;
use zeroize::Zeroizing;

/// rsaEncryption (its AlgorithmIdentifier carries NULL parameters).
pub(super) const RSA_ALGORITHM: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-ecPublicKey (the curve is its AlgorithmIdentifier's parameters).
pub(super) const EC_ALGORITHM: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// PKCS#8 PrivateKeyInfo { version 0, algorithm, privateKey OCTET STRING }, written into a
/// wiped buffer sized before it is filled.
pub(super) fn pkcs8_wrap(
    oid: ObjectIdentifier,
    parameters: AnyRef,
    key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let info = pkcs8::PrivateKeyInfo {
        algorithm: AlgorithmIdentifierRef {
            oid,
            parameters: Some(parameters),
        },
        private_key: key,
        public_key: None,
    };
    encode_wiped(&info)
}

/// `value`'s DER in a [`Zeroizing`] buffer of exactly its length.
fn encode_wiped(value: &impl Encode) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let unwritable = || "its private key cannot be written as PKCS#8";
    let len = value
        .encoded_len()
        .ok()
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(unwritable)?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    value.encode_to_slice(&mut out).map_err(|_| unwritable())?;
    Ok(out)
}

/// A SEC1 ECPrivateKey's curve and the key without its `[0]` curve parameters, which PKCS#8
/// carries in the AlgorithmIdentifier instead (as OpenSSL writes it).
pub(super) fn sec1_to_pkcs8_parts(
    sec1: &[u8],
) -> Result<(ObjectIdentifier, Zeroizing<Vec<u8>>), &'static str> {
    let key = sec1::EcPrivateKey::from_der(sec1)
        .map_err(|_| "its EC PRIVATE KEY is not SEC1 DER kvfetch can read")?;
    let Some(sec1::EcParameters::NamedCurve(curve)) = key.parameters else {
        return Err("its EC PRIVATE KEY names no curve");
    };
    let without = sec1::EcPrivateKey {
        parameters: None,
        ..key
    };
    Ok((curve, encode_wiped(&without)?))
}

/// The public key, as a certificate's subjectPublicKey holds it, of a PKCS#8 private key: an
/// RSA key's `RSAPublicKey { modulus, publicExponent }`, or the point an EC key carries.
pub(super) fn public_key_of(pkcs8: &[u8]) -> Option<Vec<u8>> {
    let info = pkcs8::PrivateKeyInfo::from_der(pkcs8).ok()?;
    match info.algorithm.oid {
        RSA_ALGORITHM => pkcs1::RsaPrivateKey::from_der(info.private_key)
            .ok()?
            .public_key()
            .to_der()
            .ok(),
        EC_ALGORITHM => sec1::EcPrivateKey::from_der(info.private_key)
            .ok()?
            .public_key
            .map(<[u8]>::to_vec),
        _ => None,
    }
}
