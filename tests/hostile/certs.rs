//! See main.rs. (area: certs) A vault writer who stores a certificate secret built to cost CPU:
//! thousands of tiny certificates in one PEM value. kvfetch bounds the certificates per value and
//! orders the chain in bounded time, within `--timeout`.

use std::time::{Duration, Instant};

#[allow(unused_imports)]
use crate::common::*;

/// One DER TLV (definite length).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
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
    out.extend_from_slice(content);
    out
}

/// An X.509 Name of one attribute (commonName) whose value is the number `n`: distinct names,
/// compared as encoded.
fn name(n: u32) -> Vec<u8> {
    let mut attribute = tlv(0x06, &[0x55, 0x04, 0x03]);
    attribute.extend(tlv(0x02, &n.to_be_bytes()));
    tlv(0x30, &tlv(0x31, &tlv(0x30, &attribute)))
}

/// The smallest certificate kvfetch reads: serial, algorithm, issuer, validity, subject, a
/// public key and an empty signature (the chain is ordered by names, never verified).
fn tiny_certificate(subject: u32, issuer: u32) -> Vec<u8> {
    certificate(&name(subject), &name(issuer), subject as u8)
}

/// A certificate of these encoded names, with a one-byte public key.
fn certificate(subject: &[u8], issuer: &[u8], key: u8) -> Vec<u8> {
    let algorithm = tlv(
        0x30,
        &tlv(
            0x06,
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
        ),
    );
    let mut tbs = tlv(0x02, &[1]);
    tbs.extend(&algorithm);
    tbs.extend(issuer);
    let mut validity = tlv(0x17, b"200101000000Z");
    validity.extend(tlv(0x17, b"491231235959Z"));
    tbs.extend(tlv(0x30, &validity));
    tbs.extend(subject);
    let mut spki = algorithm.clone();
    spki.extend(tlv(0x03, &[0, key]));
    tbs.extend(tlv(0x30, &spki));
    let mut cert = tlv(0x30, &tbs);
    cert.extend(&algorithm);
    cert.extend(tlv(0x03, &[0]));
    tlv(0x30, &cert)
}

/// PEM CERTIFICATE blocks of `ders`, in order.
fn pem_of(ders: impl Iterator<Item = Vec<u8>>) -> String {
    let mut pem = String::new();
    for der in ders {
        let b64 = kvfetch::base::encoding::base64_encode(&der);
        pem.push_str(&format!(
            "-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"
        ));
    }
    pem
}

/// A PEM value of one chain of `n` certificates, stored root first: certificate `i` is issued by
/// `i + 1`, the last one is self-signed, and the leaf (0) issued none.
fn long_chain(n: u32) -> String {
    pem_of(
        (0..n)
            .rev()
            .map(|i| tiny_certificate(i, (i + 1).min(n - 1))),
    )
}

fn store_pem(emu: &Emulator, name: &str, value: String) {
    emu.set_secret_with(
        name,
        SecretInput {
            value,
            content_type: Some("application/x-pem-file".into()),
            managed: true,
            ..Default::default()
        },
    );
}

/// Run `fetch --secret c?format=chain` with `--timeout 10s`: the run and how long it took.
fn fetch_chain(emu: &Emulator, dir: &std::path::Path) -> (Run, Duration) {
    let started = Instant::now();
    let r = run(
        emu,
        &[
            "fetch",
            "--timeout",
            "10s",
            "--secret",
            "tls.crt=c?format=chain",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    (r, started.elapsed())
}

#[test]
fn a_certificate_value_with_more_certificates_than_the_cap_is_refused_quickly() {
    let emu = Emulator::start().unwrap();
    // Refused before any block is decoded, so the blocks need not be X.509: thousands of tiny
    // distinct ones fit under the body cap.
    let value = pem_of((0..6500u32).map(|i| tlv(0x30, &tlv(0x02, &i.to_be_bytes()))));
    assert!(value.len() < 960_000, "under the body cap: {}", value.len());
    store_pem(&emu, "c", value);
    let s = Scratch::new();
    let dir = s.path("tls");
    let (r, took) = fetch_chain(&emu, &dir);
    assert_eq!(r.code, 5, "refused as a broken certificate: {}", r.stderr);
    assert!(
        r.stderr.contains("secret c ") && r.stderr.contains("more than 256 certificates"),
        "names the secret and the cap: {}",
        r.stderr
    );
    assert!(
        took < Duration::from_secs(13),
        "within the timeout (10 s) and a margin: {took:?}"
    );
    assert!(!dir.join("tls.crt").exists(), "nothing written");
}

#[test]
fn a_chain_of_as_many_certificates_as_the_cap_is_ordered_within_the_timeout() {
    let emu = Emulator::start().unwrap();
    store_pem(&emu, "c", long_chain(256));
    let s = Scratch::new();
    let dir = s.path("tls");
    let (r, took) = fetch_chain(&emu, &dir);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        took < Duration::from_secs(13),
        "within the timeout (10 s) and a margin: {took:?}"
    );
    let chain = read(&dir.join("tls.crt"));
    let want: String = (0..256u32)
        .map(|i| {
            let der = tiny_certificate(i, (i + 1).min(255));
            kvfetch::base::encoding::base64_encode(&der)
        })
        .collect();
    let got: String = chain.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(got.len(), want.len(), "all 256 certificates written");
    assert!(got == want, "ordered leaf → root");
}

/// An X.509 Name of one RDN: a SET of `n` distinct attributes, stored in descending order (a
/// DER reader that sorts a SET on reading, as `der`'s `SetOfVec` does with an insertion sort,
/// does n²/2 comparisons on it).
fn name_of_one_huge_set(n: u32) -> Vec<u8> {
    let mut set = Vec::new();
    for i in (0..n).rev() {
        let mut attribute = tlv(0x06, &[0x55, 0x04, 0x03]);
        attribute.extend(tlv(0x02, &[0x01, (i >> 16) as u8, (i >> 8) as u8, i as u8]));
        set.extend(tlv(0x30, &attribute));
    }
    tlv(0x30, &tlv(0x31, &set))
}

#[test]
fn a_certificate_whose_names_are_one_huge_set_is_read_within_the_timeout() {
    let emu = Emulator::start().unwrap();
    let name = name_of_one_huge_set(26_000);
    let der = certificate(&name, &name, 7);
    let value = pem_of(std::iter::once(der.clone()));
    assert!(value.len() < 960_000, "under the body cap: {}", value.len());
    store_pem(&emu, "c", value);
    let s = Scratch::new();
    let dir = s.path("tls");
    let (r, took) = fetch_chain(&emu, &dir);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        took < Duration::from_secs(13),
        "within the timeout (10 s) and a margin: {took:?}"
    );
    let chain = read(&dir.join("tls.crt"));
    let got: String = chain.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        got == kvfetch::base::encoding::base64_encode(&der),
        "the certificate as stored"
    );
}
