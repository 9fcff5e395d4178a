//! `format=`: a certificate secret as the files TLS servers read. Key Vault keeps a
//! certificate's private part as a secret of the same name, either a base64 PFX
//! (`application/x-pkcs12`, empty password) or PEM text (`application/x-pem-file`, key and
//! certificates in any order). nginx, Envoy and Kestrel want the key and the chain apart, the
//! chain ordered leaf → root, so kvfetch finds the leaf by its key and orders the rest by issuer
//! rather than trusting the order stored.
//!
//! Errors name the secret and what is wrong with it, never a byte of the key.
//!
//! A value is taken apart once per fetch (see [`Fetched::parsed`]), holds at most
//! [`MAX_CERTIFICATES`], and its chain is ordered through a map of subjects, so a vault writer
//! cannot make a fetch spin. Every buffer that holds the private key is a [`Zeroizing`] one,
//! sized before it is filled: no copy of the key stays in freed memory.

use std::collections::HashMap;

use zeroize::Zeroizing;

use crate::base::encoding;
use crate::error::Error;
use crate::shape::CertFormat;
use crate::shape::keys;
use crate::shape::pem::{pem_blocks, pem_len, push_pem};
use der::asn1::{AnyRef, BitStringRef, ContextSpecific, IntRef, OctetStringRef};
use der::oid::{AssociatedOid, ObjectIdentifier};
use der::{Decode, TagNumber, Tagged};
use pkcs8::AlgorithmIdentifierRef;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, SubjectKeyIdentifier};
use x509_cert::spki::SubjectPublicKeyInfoRef;

use crate::spec::SecretSpec;
use crate::vault::keyvault::Fetched;

const PKCS12: &str = "application/x-pkcs12";
const PEM: &str = "application/x-pem-file";

/// Certificates beyond this in one value are refused: Key Vault values are at most 25 KB, about
/// 200 certificates, and ordering more would let a vault writer make every fetch spin.
pub const MAX_CERTIFICATES: usize = 256;

/// A private key (PKCS#8 DER, if the secret holds one) and certificates (DER), as stored.
type Parts = (Option<Zeroizing<Vec<u8>>>, Vec<Vec<u8>>);

/// A certificate secret taken apart: the private key (PKCS#8 DER) and the certificates (DER),
/// leaf first, then each one's issuer up to the root as far as the secret holds them. The key
/// is wiped when the bundle is dropped.
pub struct Bundle {
    key: Option<Zeroizing<Vec<u8>>>,
    pub chain: Vec<Vec<u8>>,
    /// The leaf's notAfter (Unix seconds).
    pub not_after: i64,
}

/// Why a value is not a certificate kvfetch can use; made an [`Error`] that names the spec
/// that read it.
#[derive(Clone)]
enum Refusal {
    NotA(&'static str),
    Broken(String),
}

impl Refusal {
    fn error(&self, spec: &SecretSpec, f: &Fetched) -> Error {
        match self {
            Refusal::NotA(why) => not_a(spec, f, why),
            Refusal::Broken(why) => broken(spec, why),
        }
    }
}

/// Whether the value opened (a PFX whose MAC and encryption kvfetch reads, or PEM blocks it
/// reads), and the bundle made of it: made once per fetched value and kept in its
/// [`Fetched::parsed`] slot, so every clone of a [`Fetched`] (each spec that reads the secret,
/// each shaping of one snapshot, the expiry metric) shares one parse and one ordering.
struct Taken {
    opened: Result<(), Refusal>,
    bundle: Result<Bundle, Refusal>,
}

/// Whether `f` is a certificate secret (either content type Key Vault stores certificates as).
pub fn is_certificate(f: &Fetched) -> bool {
    matches!(kind(f), Some(PKCS12 | PEM))
}

/// The content type without parameters, lower-cased.
fn kind(f: &Fetched) -> Option<&'static str> {
    let ct = f.content_type.as_deref()?;
    let base = ct.split(';').next().unwrap_or_default().trim();
    [PKCS12, PEM]
        .into_iter()
        .find(|k| base.eq_ignore_ascii_case(k))
}

/// The bytes `format` asks for from the certificate secret `f`.
pub fn extract(spec: &SecretSpec, f: &Fetched, format: CertFormat) -> Result<Vec<u8>, Error> {
    if format == CertFormat::Pfx {
        if kind(f) != Some(PKCS12) {
            return Err(not_a(
                spec,
                f,
                "format=pfx needs a PFX (application/x-pkcs12)",
            ));
        }
        // Checked, so a secret that is not a PFX is refused rather than written.
        if let Err(r) = &taken(spec, f).opened {
            return Err(r.error(spec, f));
        }
        let mut pfx = pfx_bytes(f).map_err(|r| r.error(spec, f))?;
        return Ok(std::mem::take(&mut *pfx));
    }
    let bundle = bundle(spec, f)?;
    let key = match format {
        CertFormat::Pem | CertFormat::Key => Some(bundle.key.as_deref().ok_or_else(|| {
            broken(
                spec,
                "it holds no private key (an exportable certificate's secret has one)",
            )
        })?),
        _ => None,
    };
    let certs = match format {
        CertFormat::Key => &[][..],
        CertFormat::Cert => &bundle.chain[..1],
        _ => &bundle.chain[..],
    };
    let blocks: Vec<(&str, &[u8])> = key
        .map(|k| ("PRIVATE KEY", k.as_slice()))
        .into_iter()
        .chain(certs.iter().map(|c| ("CERTIFICATE", c.as_slice())))
        .collect();
    // Sized up front: a String that grows leaves copies of the key's text where it was.
    let len = blocks.iter().map(|(l, d)| pem_len(l, d.len())).sum();
    let mut out = String::with_capacity(len);
    for (label, der) in blocks {
        push_pem(&mut out, label, der);
    }
    Ok(out.into_bytes())
}

/// Take apart every certificate value a `format=` spec reads, while `deadline` lasts: what
/// each costs is bounded, and none is begun after the deadline (the outputs then shape the
/// values already taken apart).
pub fn prepare(
    specs: &[SecretSpec],
    values: &[Option<Fetched>],
    deadline: &crate::base::retry::Deadline,
) -> Result<(), Error> {
    let certificates = specs
        .iter()
        .zip(values)
        .filter(|(s, _)| s.shape.format.is_some());
    for (spec, f) in certificates.filter_map(|(s, f)| Some((s, f.as_ref()?))) {
        if !f.parsed.is_made() && deadline.remaining().is_zero() {
            return Err(broken(
                spec,
                "taking it apart would run past --timeout (the run's time went to fetching and to the certificates before it)",
            ));
        }
        taken(spec, f);
    }
    Ok(())
}

/// The certificate secret `f` taken apart (for `format=` and the expiry metric), once per
/// fetched value.
pub fn bundle<'f>(spec: &SecretSpec, f: &'f Fetched) -> Result<&'f Bundle, Error> {
    taken(spec, f).bundle.as_ref().map_err(|r| r.error(spec, f))
}

fn taken<'f>(spec: &SecretSpec, f: &'f Fetched) -> &'f Taken {
    f.parsed.get_or_init(|| take_apart(spec, f))
}

#[cfg(test)]
thread_local! {
    /// How many times this thread took a certificate value apart.
    static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
fn parses() -> usize {
    PARSES.with(std::cell::Cell::get)
}

fn take_apart(spec: &SecretSpec, f: &Fetched) -> Taken {
    #[cfg(test)]
    PARSES.with(|p| p.set(p.get() + 1));
    let parts = match kind(f) {
        Some(PKCS12) => pfx_bytes(f).and_then(|pfx| parse_pfx(&pfx)),
        Some(_) => parse_pem(&f.value),
        None => Err(Refusal::NotA("format= reads certificates only")),
    };
    match parts {
        Ok(parts) => Taken {
            opened: Ok(()),
            bundle: order(spec, parts),
        },
        Err(r) => Taken {
            opened: Err(r.clone()),
            bundle: Err(r),
        },
    }
}

/// The bundle of a value's key and certificates: the leaf, then each one's issuer.
fn order(spec: &SecretSpec, (key, certs): Parts) -> Result<Bundle, Refusal> {
    let broken = |why: &str| Refusal::Broken(why.to_string());
    if certs.is_empty() {
        return Err(broken("it holds no certificate"));
    }
    let parsed = certs
        .iter()
        .map(|c| parse_cert(c))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| broken("a certificate in it is not X.509 DER kvfetch can read"))?;
    let by_subject = by_subject(&parsed);
    let leaf =
        leaf_index(&parsed, &by_subject, key.as_deref().map(Vec::as_slice)).map_err(broken)?;
    let chain = chain_from(&parsed, &by_subject, leaf);
    if chain.len() < parsed.len() {
        crate::base::log::warn(
            "a certificate secret holds certificates outside the leaf's chain; they are left out",
            &[
                ("secret", &spec.reference()),
                ("left_out", &(parsed.len() - chain.len()).to_string()),
            ],
        );
    }
    Ok(Bundle {
        chain: chain.iter().map(|i| certs[*i].clone()).collect(),
        key,
        not_after: parsed[leaf].not_after,
    })
}

/// The certificates by subject name, to find an issuer without scanning them all.
type BySubject<'c> = HashMap<&'c [u8], Vec<usize>>;

fn by_subject(certs: &[Cert]) -> BySubject<'_> {
    let mut map: BySubject = HashMap::new();
    for (i, c) in certs.iter().enumerate() {
        map.entry(c.subject.as_slice()).or_default().push(i);
    }
    map
}

/// The leaf's chain: each certificate's issuer (the latest-expiring unused one), until a
/// self-signed root or no issuer. Each step looks only at the certificates of one name, and
/// each certificate is used once: at most n² steps for n certificates, n log n for distinct
/// names.
fn chain_from(certs: &[Cert], by_subject: &BySubject, leaf: usize) -> Vec<usize> {
    let mut used = vec![false; certs.len()];
    used[leaf] = true;
    let mut chain = vec![leaf];
    let mut last = leaf;
    while certs[last].subject != certs[last].issuer {
        let cert = &certs[last];
        let candidates = by_subject
            .get(cert.issuer.as_slice())
            .map_or(&[][..], Vec::as_slice);
        let next = latest(certs, candidates, |i, c| !used[i] && cert.issued_by(c));
        let Some(next) = next else { break };
        used[next] = true;
        chain.push(next);
        last = next;
    }
    chain
}

/// The leaf: the certificate whose public key is the private key's (the latest-expiring one
/// should a key have been reused). A key whose public half cannot be read is refused rather
/// than paired with a guess. Without a key (a PEM of certificates only): the one certificate
/// that issued none of the others.
fn leaf_index(
    certs: &[Cert],
    by_subject: &BySubject,
    key: Option<&[u8]>,
) -> Result<usize, &'static str> {
    let all: Vec<usize> = (0..certs.len()).collect();
    if let Some(key) = key {
        let public = keys::public_key_of(key).ok_or(
            "its private key does not carry a public key kvfetch can read (an EC key written without its public point, or a type other than RSA and EC), so its certificate cannot be told apart",
        )?;
        return latest(certs, &all, |_, c| c.public_key == public)
            .ok_or("its private key matches none of its certificates");
    }
    let mut issues_another = vec![false; certs.len()];
    for (j, cert) in certs.iter().enumerate() {
        for &i in by_subject
            .get(cert.issuer.as_slice())
            .map_or(&[][..], Vec::as_slice)
        {
            if i != j && cert.issued_by(&certs[i]) {
                issues_another[i] = true;
            }
        }
    }
    let ends: Vec<usize> = all.into_iter().filter(|i| !issues_another[*i]).collect();
    match ends[..] {
        [leaf] => Ok(leaf),
        _ => Err("it holds no private key, and its certificates are not one chain"),
    }
}

/// Of the certificates `among` that `pick` accepts, the one that expires last (a renewed
/// intermediate over an old one of the same name); the first on a tie.
fn latest(certs: &[Cert], among: &[usize], pick: impl Fn(usize, &Cert) -> bool) -> Option<usize> {
    among
        .iter()
        .copied()
        .filter(|i| pick(*i, &certs[*i]))
        .fold(None, |best: Option<usize>, i| match best {
            Some(b) if certs[b].not_after >= certs[i].not_after => Some(b),
            _ => Some(i),
        })
}

/// The fields of an X.509 certificate kvfetch needs: names (compared as DER), the
/// subjectPublicKey bits, and notAfter.
struct Cert {
    issuer: Vec<u8>,
    subject: Vec<u8>,
    public_key: Vec<u8>,
    not_after: i64,
    /// The subjectKeyIdentifier and the authorityKeyIdentifier's keyIdentifier, where present.
    key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
}

impl Cert {
    /// Whether `issuer` issued this certificate: its subject is this one's issuer and, where
    /// both certificates name key identifiers, they agree.
    fn issued_by(&self, issuer: &Cert) -> bool {
        self.issuer == issuer.subject
            && match (&self.authority_key_id, &issuer.key_id) {
                (Some(a), Some(k)) => a == k,
                _ => true,
            }
    }
}

/// Certificate { tbsCertificate, signatureAlgorithm, signature }, read by `der` with
/// `x509-cert`'s types for its parts, except the names: those are kept as their encoding, as
/// they are compared. (`x509-cert`'s `Name` sorts each SET as it reads it, with an insertion
/// sort: a certificate whose name is one SET of 26,000 attributes took minutes.)
#[derive(der::Sequence)]
struct CertificateView<'a> {
    tbs_certificate: TbsView<'a>,
    signature_algorithm: AlgorithmIdentifierRef<'a>,
    signature: BitStringRef<'a>,
}

/// RFC 5280's TBSCertificate, as `x509-cert` declares it, with the names left encoded.
#[derive(der::Sequence)]
struct TbsView<'a> {
    #[asn1(context_specific = "0", default = "Default::default")]
    version: x509_cert::Version,
    serial_number: IntRef<'a>,
    signature: AlgorithmIdentifierRef<'a>,
    issuer: AnyRef<'a>,
    validity: x509_cert::time::Validity,
    subject: AnyRef<'a>,
    subject_public_key_info: SubjectPublicKeyInfoRef<'a>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    issuer_unique_id: Option<BitStringRef<'a>>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    subject_unique_id: Option<BitStringRef<'a>>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<x509_cert::ext::Extensions>,
}

/// An X.509 certificate's DER: the fields [`Cert`] keeps. A key identifier extension that
/// does not decode is taken as absent.
fn parse_cert(der_bytes: &[u8]) -> Option<Cert> {
    let tbs = CertificateView::from_der(der_bytes).ok()?.tbs_certificate;
    let name = |n: AnyRef| (n.tag() == der::Tag::Sequence).then(|| n.value().to_vec());
    let extension = |oid: ObjectIdentifier| {
        let mut all = tbs.extensions.iter().flatten();
        all.find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    };
    let key_id = extension(SubjectKeyIdentifier::OID)
        .and_then(|v| SubjectKeyIdentifier::from_der(v).ok())
        .map(|k| k.0.into_bytes());
    let authority_key_id = extension(AuthorityKeyIdentifier::OID).and_then(authority_key_id);
    let spki = &tbs.subject_public_key_info;
    Some(Cert {
        issuer: name(tbs.issuer)?,
        subject: name(tbs.subject)?,
        public_key: spki.subject_public_key.as_bytes()?.to_vec(),
        not_after: i64::try_from(tbs.validity.not_after.to_unix_duration().as_secs()).ok()?,
        key_id,
        authority_key_id,
    })
}

/// AuthorityKeyIdentifier { keyIdentifier [0] IMPLICIT OCTET STRING OPTIONAL, … }: its
/// keyIdentifier only (the issuer names after it are not read, for the reason above).
fn authority_key_id(value: &[u8]) -> Option<Vec<u8>> {
    let aki = AnyRef::from_der(value)
        .ok()
        .filter(|a| a.tag() == der::Tag::Sequence)?;
    let mut reader = der::SliceReader::new(aki.value()).ok()?;
    let id = ContextSpecific::<OctetStringRef>::decode_implicit(&mut reader, TagNumber::N0);
    Some(id.ok()??.value.as_bytes().to_vec())
}

fn pfx_bytes(f: &Fetched) -> Result<Zeroizing<Vec<u8>>, Refusal> {
    encoding::base64_strict(&f.value, false)
        .map(Zeroizing::new)
        .map_err(|why| Refusal::Broken(format!("its PFX is not base64 ({why})")))
}

/// A PFX as Key Vault stores it (empty password): its first key and every certificate.
fn parse_pfx(pfx: &[u8]) -> Result<Parts, Refusal> {
    let contents = crate::shape::pkcs12::open(pfx).map_err(Refusal::Broken)?;
    Ok((contents.key, contents.certs))
}

/// PEM text: one private key (PKCS#8, or PKCS#1 RSA / SEC1 EC, converted to PKCS#8) and the
/// certificates, in any order; other blocks are refused.
fn parse_pem(text: &str) -> Result<Parts, Refusal> {
    let broken = |why: &str| Refusal::Broken(why.to_string());
    let mut key = None;
    let mut certs = Vec::new();
    for block in pem_blocks(text).map_err(Refusal::Broken)? {
        let (label, mut der) = block;
        let pkcs8 = match label.as_str() {
            "CERTIFICATE" => {
                certs.push(std::mem::take(&mut *der));
                continue;
            }
            "PRIVATE KEY" => der,
            "RSA PRIVATE KEY" => {
                keys::pkcs8_wrap(keys::RSA_ALGORITHM, AnyRef::NULL, &der).map_err(broken)?
            }
            "EC PRIVATE KEY" => {
                let (curve, key) = keys::sec1_to_pkcs8_parts(&der).map_err(broken)?;
                keys::pkcs8_wrap(keys::EC_ALGORITHM, AnyRef::from(&curve), &key).map_err(broken)?
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(broken(
                    "its private key is encrypted; store it unencrypted (Key Vault protects it)",
                ));
            }
            _ => return Err(broken("it holds a PEM block kvfetch does not read")),
        };
        if key.replace(pkcs8).is_some() {
            return Err(broken("it holds more than one private key"));
        }
    }
    Ok((key, certs))
}

fn not_a(spec: &SecretSpec, f: &Fetched, why: &str) -> Error {
    Error::NotFound(format!(
        "secret {} has content type {}, which is not a certificate that {why} (--secret {:?}); point it at a certificate's secret, or drop format=",
        spec.reference(),
        f.content_type
            .as_deref()
            .map_or("(none)".to_string(), |c| format!("{c:?}")),
        spec.text
    ))
}

fn broken(spec: &SecretSpec, why: &str) -> Error {
    Error::NotFound(format!(
        "secret {} is a certificate kvfetch cannot use: {why} (--secret {:?}); re-import the certificate into Key Vault",
        spec.reference(),
        spec.text
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::der::read_tlv;
    use crate::shape::pem::{blocks, pem_block};

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/certs/", $name))
        };
    }

    fn spec(text: &str) -> SecretSpec {
        let vault = crate::spec::parse_vault("https://127.0.0.1:8443", None).unwrap();
        crate::spec::parse_spec(text, Some(&vault)).unwrap()
    }

    fn secret(value: &str, content_type: Option<&str>) -> Fetched {
        let mut f = crate::vault::keyvault::parse_bundle(r#"{"value":"","id":"x/1"}"#).unwrap();
        f.value = value.trim().to_string();
        f.content_type = content_type.map(String::from);
        f
    }

    fn out(text: &str, f: &Fetched) -> Result<String, Error> {
        let s = spec(text);
        let format = s.shape.format.unwrap();
        extract(&s, f, format).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn every_pfx_and_the_mixed_pem_give_the_key_and_the_chain_leaf_to_root() {
        let (root, inter) = (blocks(fixture!("root.pem")), blocks(fixture!("inter.pem")));
        let cases = [
            ("rsa-aes.pfx.b64", PKCS12, "rsa"),
            ("rsa-3des.pfx.b64", PKCS12, "rsa"),
            ("rsa-nomac.pfx.b64", PKCS12, "rsa"),
            ("rsa-sha384-aes128.pfx.b64", PKCS12, "rsa"),
            ("rsa-sha512-keybag-rc2.pfx.b64", PKCS12, "rsa"),
            ("ec-aes.pfx.b64", PKCS12, "ec"),
            ("ec-3des.pfx.b64", PKCS12, "ec"),
            ("mixed.pem", PEM, "rsa"),
        ];
        for (file, ct, kind) in cases {
            let value = match file {
                "rsa-aes.pfx.b64" => fixture!("rsa-aes.pfx.b64"),
                "rsa-3des.pfx.b64" => fixture!("rsa-3des.pfx.b64"),
                "rsa-nomac.pfx.b64" => fixture!("rsa-nomac.pfx.b64"),
                "rsa-sha384-aes128.pfx.b64" => fixture!("rsa-sha384-aes128.pfx.b64"),
                "rsa-sha512-keybag-rc2.pfx.b64" => fixture!("rsa-sha512-keybag-rc2.pfx.b64"),
                "ec-aes.pfx.b64" => fixture!("ec-aes.pfx.b64"),
                "ec-3des.pfx.b64" => fixture!("ec-3des.pfx.b64"),
                _ => fixture!("mixed.pem"),
            };
            let (key, leaf) = match kind {
                "rsa" => (fixture!("leaf-rsa.key"), fixture!("leaf-rsa.pem")),
                _ => (fixture!("leaf-ec.key"), fixture!("leaf-ec.pem")),
            };
            let (key, leaf) = (blocks(key), blocks(leaf));
            let f = secret(value, Some(ct));
            let chain: Vec<_> = [&leaf, &inter, &root]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            assert_eq!(blocks(&out("c?format=key", &f).unwrap()), key, "{file}");
            assert_eq!(blocks(&out("c?format=cert", &f).unwrap()), leaf, "{file}");
            assert_eq!(blocks(&out("c?format=chain", &f).unwrap()), chain, "{file}");
            let pem: Vec<_> = key.iter().chain(&chain).cloned().collect();
            assert_eq!(blocks(&out("c?format=pem", &f).unwrap()), pem, "{file}");
        }
    }

    #[test]
    fn old_key_encodings_are_written_as_pkcs8() {
        let chain = [fixture!("inter.pem"), fixture!("root.pem")].concat();
        for (key, pkcs8, leaf) in [
            (
                fixture!("leaf-rsa.pkcs1.key"),
                fixture!("leaf-rsa.key"),
                fixture!("leaf-rsa.pem"),
            ),
            (
                fixture!("leaf-ec.sec1.key"),
                fixture!("leaf-ec.key"),
                fixture!("leaf-ec.pem"),
            ),
        ] {
            let f = secret(&[chain.as_str(), key, leaf].concat(), Some(PEM));
            assert_eq!(blocks(&out("c?format=key", &f).unwrap()), blocks(pkcs8));
            assert_eq!(blocks(&out("c?format=cert", &f).unwrap()), blocks(leaf));
        }
    }

    #[test]
    fn pfx_is_the_decoded_bytes_and_only_from_a_pfx() {
        let b64 = fixture!("rsa-3des.pfx.b64");
        let f = secret(b64, Some("application/x-pkcs12"));
        let s = spec("c?format=pfx");
        let bytes = extract(&s, &f, CertFormat::Pfx).unwrap();
        assert_eq!(encoding::base64_encode(&bytes), b64.trim());
        let e = extract(
            &s,
            &secret(fixture!("mixed.pem"), Some(PEM)),
            CertFormat::Pfx,
        );
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("format=pfx needs a PFX")
        );
    }

    #[test]
    fn refusals_name_the_secret_and_its_content_type_and_never_key_bytes() {
        let key = fixture!("leaf-rsa.key");
        let key_line = key.lines().nth(1).unwrap();
        let password = fixture!("rsa-password.pfx.b64");
        let cases: [(&str, Fetched, &str); 8] = [
            (
                "c?format=key",
                secret(password, Some(PKCS12)),
                "does not open with the empty password",
            ),
            ("c?format=key", secret("plain", None), "content type (none)"),
            (
                "c?format=chain",
                secret("x", Some("text/plain")),
                "content type \"text/plain\"",
            ),
            (
                "c?format=key",
                secret("AAAA*", Some(PKCS12)),
                "its PFX is not base64",
            ),
            (
                "c?format=key",
                secret("AAAA", Some(PKCS12)),
                "its PFX is malformed (not a PFX)",
            ),
            (
                "c?format=key",
                secret(fixture!("leaf-rsa.pem"), Some(PEM)),
                "holds no private key",
            ),
            (
                "c?format=cert",
                secret(&[key, fixture!("leaf-ec.pem")].concat(), Some(PEM)),
                "matches none of its certificates",
            ),
            (
                "c?format=key",
                secret(&[key, key, fixture!("leaf-rsa.pem")].concat(), Some(PEM)),
                "more than one private key",
            ),
        ];
        for (text, f, says) in cases {
            let e = out(text, &f).unwrap_err();
            let m = e.to_string();
            assert!(matches!(e, Error::NotFound(_)), "{m}");
            assert!(
                m.contains(says) && m.contains("secret c "),
                "{text} {says}: {m}"
            );
            assert!(!m.contains(&key_line[..20]), "{m}");
        }
    }

    #[test]
    fn the_chain_leaves_out_unrelated_certificates_and_reads_content_type_parameters() {
        let text = [fixture!("mixed.pem"), fixture!("other.pem")].concat();
        let f = secret(&text, Some("Application/X-PEM-File; charset=utf-8"));
        let chain = out("c?format=chain", &f).unwrap();
        assert_eq!(blocks(&chain).len(), 3);
        assert!(!blocks(&chain).contains(&blocks(fixture!("other.pem"))[0]));
        // Without a key the leaf is the certificate that issued none of the others.
        let certs = [
            fixture!("root.pem"),
            fixture!("leaf-rsa.pem"),
            fixture!("inter.pem"),
        ]
        .concat();
        let chain = out("c?format=chain", &secret(&certs, Some(PEM))).unwrap();
        assert_eq!(blocks(&chain)[0], blocks(fixture!("leaf-rsa.pem"))[0]);
    }

    #[test]
    fn the_chain_follows_key_identifiers_past_a_renewed_intermediate_of_the_same_name() {
        let f = secret(fixture!("two-intermediates.pem"), Some(PEM));
        let want: Vec<_> = [
            fixture!("leaf-rsa.pem"),
            fixture!("inter.pem"),
            fixture!("root.pem"),
        ]
        .iter()
        .flat_map(|t| blocks(t))
        .collect();
        assert_eq!(blocks(&out("c?format=chain", &f).unwrap()), want);
    }

    #[test]
    fn a_key_whose_public_half_cannot_be_read_is_refused_not_paired_with_a_guess() {
        let f = secret(fixture!("ec-no-public.pem"), Some(PEM));
        let e = out("c?format=pem", &f).unwrap_err().to_string();
        assert!(e.contains("does not carry a public key"), "{e}");
        // Certificates alone that are not one chain: no leaf to choose.
        let certs = [fixture!("leaf-rsa.pem"), fixture!("other.pem")].concat();
        let e = out("c?format=cert", &secret(&certs, Some(PEM)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not one chain"), "{e}");
    }

    #[test]
    fn no_certificate_is_taken_apart_after_the_deadline() {
        let f = secret(fixture!("rsa-3des.pfx.b64"), Some(PKCS12));
        let specs = vec![spec("c?format=key")];
        let values = vec![Some(f.clone())];
        let before = parses();
        let passed = crate::base::retry::Deadline::after(std::time::Duration::ZERO);
        let e = prepare(&specs, &values, &passed).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
        assert!(
            e.to_string().contains("secret c ") && e.to_string().contains("--timeout"),
            "{e}"
        );
        assert_eq!(parses(), before, "not begun");
        let ample = crate::base::retry::Deadline::after(std::time::Duration::from_secs(3600));
        prepare(&specs, &values, &ample).unwrap();
        assert_eq!(parses(), before + 1);
        // Taken apart already: shaping costs nothing more, the deadline passed or not.
        prepare(&specs, &values, &passed).unwrap();
        assert_eq!(parses(), before + 1);
    }

    #[test]
    fn a_secret_read_in_several_shapes_is_taken_apart_once_per_fetch() {
        let f = secret(fixture!("rsa-aes.pfx.b64"), Some(PKCS12));
        let specs: Vec<_> = ["k=c?format=key", "t=c?format=cert", "ch=c?format=chain"]
            .into_iter()
            .map(spec)
            .collect();
        let values: Vec<_> = specs.iter().map(|_| Some(f.clone())).collect();
        let before = parses();
        // watch shapes a snapshot twice (checked, then written) and reads the expiry metric.
        crate::modes::fetch::shaped(&specs, &values).unwrap();
        crate::modes::fetch::shaped(&specs, &values).unwrap();
        bundle(&specs[0], values[0].as_ref().unwrap()).unwrap();
        assert_eq!(
            parses() - before,
            1,
            "one parse and ordering per fetched value"
        );
    }

    /// The bytes that identify a private key, XOR [`MASK`] (so this test holds no copy of its
    /// own): 32 bytes from the middle of an RSA key's private exponent, or an EC key's scalar.
    fn masked_secret_part(pkcs8_pem: &str) -> Vec<u8> {
        let mut der = blocks(pkcs8_pem).remove(0).1;
        let masked = {
            let (_, info, _) = read_tlv(&der).unwrap();
            let (_, _, rest) = read_tlv(info).unwrap();
            let (_, _, rest) = read_tlv(rest).unwrap();
            let (_, key, _) = read_tlv(rest).unwrap();
            let (_, fields, _) = read_tlv(key).unwrap();
            let (_, _, rest) = read_tlv(fields).unwrap(); // version
            let (tag, first, rest) = read_tlv(rest).unwrap();
            let secret = if tag == 0x04 {
                first // EC: privateKey
            } else {
                let (_, _, rest) = read_tlv(rest).unwrap(); // publicExponent
                let (_, d, _) = read_tlv(rest).unwrap();
                &d[d.len() / 2 - 16..d.len() / 2 + 16]
            };
            secret.iter().map(|b| b ^ MASK).collect()
        };
        der.iter_mut()
            .for_each(|b| unsafe { std::ptr::write_volatile(b, 0) });
        masked
    }

    const MASK: u8 = 0xa5;

    /// Where this process's writable memory holds `masked` (unmasked): /proc/self/mem, every
    /// readable and writable mapping (heaps, thread arenas, stacks). `None`: it cannot be read.
    fn find_in_memory(masked: &[u8]) -> Option<Vec<(u64, String)>> {
        use std::io::{Read, Seek, SeekFrom};
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let mut mem = std::fs::File::open("/proc/self/mem").ok()?;
        let mut found = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            if !perms.starts_with("rw") || line.contains("[v") {
                continue;
            }
            let (start, end) = range.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                if mem.seek(SeekFrom::Start(at)).is_err() || mem.read_exact(&mut buf[..n]).is_err()
                {
                    break;
                }
                for (i, w) in buf[..n].windows(masked.len()).enumerate() {
                    if w[0] ^ MASK == masked[0] && w.iter().zip(masked).all(|(a, b)| a ^ MASK == *b)
                    {
                        found.push((at + i as u64, line.to_string()));
                    }
                }
                // Overlap the chunks so a copy across their border is seen.
                at += (n as u64).saturating_sub(masked.len() as u64).max(1);
                if n < buf.len() {
                    break;
                }
            }
        }
        Some(found)
    }

    /// Decrypts the PFX files (3DES and AES, RSA and EC) as `watch --secret k=c?format=key` does,
    /// drops everything, and scans this process's memory for the raw private key. Run alone in
    /// a child process: other tests of this binary hold keys while they run.
    #[test]
    fn no_decrypted_private_key_stays_in_freed_memory() {
        const CHILD: &str = "KVFETCH_TEST_KEY_SCAN";
        // This test's name as the harness knows it (the module path without the crate).
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let name = format!("{module}::no_decrypted_private_key_stays_in_freed_memory");
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            if text.contains("SKIPPED") {
                println!("SKIPPED: this process's memory cannot be read here");
            } else {
                assert!(text.contains("scanned: no copy"), "{text}");
            }
            return;
        }
        // The scan sees a copy left in freed memory (past the 16 bytes malloc reuses).
        let probe: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5c).collect();
        let mut left: Vec<u8> = vec![1; 32];
        left.extend(probe.iter().map(|b| b ^ MASK));
        drop(std::hint::black_box(left));
        match find_in_memory(&probe) {
            None => {
                println!("SKIPPED: /proc/self/mem cannot be read");
                return;
            }
            Some(found) => assert!(!found.is_empty(), "the scan finds a freed copy"),
        }
        let chain = [fixture!("inter.pem"), fixture!("root.pem")].concat();
        let pem_of = |key: &str, leaf: &str| [chain.as_str(), key, leaf].concat();
        let (rsa, ec) = (fixture!("leaf-rsa.pem"), fixture!("leaf-ec.pem"));
        let cases = [
            (
                fixture!("rsa-aes.pfx.b64").to_string(),
                PKCS12,
                fixture!("leaf-rsa.key"),
            ),
            (
                fixture!("rsa-3des.pfx.b64").into(),
                PKCS12,
                fixture!("leaf-rsa.key"),
            ),
            (
                fixture!("ec-aes.pfx.b64").into(),
                PKCS12,
                fixture!("leaf-ec.key"),
            ),
            (
                fixture!("ec-3des.pfx.b64").into(),
                PKCS12,
                fixture!("leaf-ec.key"),
            ),
            (fixture!("mixed.pem").into(), PEM, fixture!("leaf-rsa.key")),
            (
                pem_of(fixture!("leaf-rsa.pkcs1.key"), rsa),
                PEM,
                fixture!("leaf-rsa.key"),
            ),
            (
                pem_of(fixture!("leaf-ec.sec1.key"), ec),
                PEM,
                fixture!("leaf-ec.key"),
            ),
        ];
        for (value, kind, key) in cases {
            let masked = masked_secret_part(key);
            for format in ["key", "pem"] {
                let f = secret(&value, Some(kind));
                let s = spec(&format!("tls.key=c?format={format}"));
                let written = crate::shape::apply(&s, &f).unwrap();
                assert!(!written.is_empty());
            }
            let Some(found) = find_in_memory(&masked) else {
                println!("SKIPPED: /proc/self/mem cannot be read");
                return;
            };
            assert!(found.is_empty(), "raw key bytes left at {found:x?}");
        }
        println!("scanned: no copy of a decrypted key");
    }

    #[test]
    fn the_leaf_not_after_is_read() {
        let s = spec("c?format=cert");
        let f = secret(fixture!("mixed.pem"), Some(PEM));
        let b = bundle(&s, &f).unwrap();
        let leaf = std::process::Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-enddate",
                "-in",
                "tests/fixtures/certs/leaf-rsa.pem",
            ])
            .output();
        match leaf {
            Ok(out) if out.status.success() => {
                // notAfter=Nov  6 05:43:00 2126 GMT
                let text = String::from_utf8(out.stdout).unwrap();
                let date = text.trim().strip_prefix("notAfter=").unwrap().to_string();
                let secs = std::process::Command::new("date")
                    .args(["-u", "-d", &date, "+%s"])
                    .output()
                    .unwrap();
                let secs: i64 = String::from_utf8(secs.stdout)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                assert_eq!(b.not_after, secs, "{date}");
            }
            _ => println!(
                "NOT CHECKED against openssl (not installed): notAfter is only range-checked"
            ),
        }
        assert!(
            b.not_after > 4_000_000_000,
            "valid for a century: {}",
            b.not_after
        );
    }
    #[test]
    fn only_a_pfx_or_pem_content_type_is_a_certificate() {
        for ct in [
            PKCS12,
            PEM,
            "Application/X-PEM-File; charset=utf-8",
            " application/x-pkcs12 ",
        ] {
            assert!(is_certificate(&secret("x", Some(ct))), "{ct}");
        }
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-pkcs12x"),
            Some(""),
        ] {
            assert!(!is_certificate(&secret("x", ct)), "{ct:?}");
        }
    }

    #[test]
    fn an_encrypted_pem_key_is_refused_as_encrypted() {
        let text = [
            pem_block("ENCRYPTED PRIVATE KEY", &[7; 64]).as_str(),
            fixture!("leaf-rsa.pem"),
        ]
        .concat();
        let e = out("c?format=key", &secret(&text, Some(PEM))).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, Error::NotFound(_)), "{m}");
        assert!(
            m.contains("its private key is encrypted; store it unencrypted"),
            "{m}"
        );
    }

    /// A certificate of the chain walk's fields only, expiring at `not_after`.
    fn expiring(not_after: i64) -> Cert {
        Cert {
            issuer: b"i".to_vec(),
            subject: b"s".to_vec(),
            public_key: b"k".to_vec(),
            not_after,
            key_id: None,
            authority_key_id: None,
        }
    }

    #[test]
    fn latest_takes_the_last_to_expire_and_the_first_on_a_tie() {
        let certs: Vec<Cert> = [10, 30, 20, 30, 5].into_iter().map(expiring).collect();
        let all: Vec<usize> = (0..certs.len()).collect();
        assert_eq!(
            latest(&certs, &all, |_, _| true),
            Some(1),
            "30 first seen at 1"
        );
        assert_eq!(
            latest(&certs, &[0, 2, 4], |_, _| true),
            Some(2),
            "20 in the middle"
        );
        assert_eq!(latest(&certs, &[4, 0], |_, _| true), Some(0), "10 after 5");
        assert_eq!(
            latest(&certs, &[3, 1], |_, _| true),
            Some(3),
            "a tie: the first"
        );
        assert_eq!(
            latest(&certs, &all, |i, _| i != 1 && i != 3),
            Some(2),
            "picked only"
        );
        assert_eq!(latest(&certs, &all, |_, _| false), None);
        assert_eq!(latest(&certs, &[], |_, _| true), None);
    }
}
