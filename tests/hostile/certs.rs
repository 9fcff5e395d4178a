//! See main.rs. (area: certs) A vault writer who stores a certificate secret built to cost CPU:
//! thousands of tiny certificates in one PEM value. kvfetch bounds the certificates per value and
//! orders the chain in bounded time, within `--timeout`.

use std::time::{Duration, Instant};

use kvfetch::shape::der::tlv;

#[allow(unused_imports)]
use crate::common::*;

/// An X.509 Name that is just the number `n` (distinct names, compared as encoded).
fn name(n: u32) -> Vec<u8> {
    tlv(0x30, &tlv(0x02, &n.to_be_bytes()))
}

/// The smallest certificate kvfetch reads: serial, algorithm, issuer, validity, subject and a
/// public key, no signature (the chain is ordered by names, never verified).
fn tiny_certificate(subject: u32, issuer: u32) -> Vec<u8> {
    let mut tbs = tlv(0x02, &[1]);
    tbs.extend(tlv(0x30, &[]));
    tbs.extend(name(issuer));
    let mut validity = tlv(0x17, b"200101000000Z");
    validity.extend(tlv(0x17, b"491231235959Z"));
    tbs.extend(tlv(0x30, &validity));
    tbs.extend(name(subject));
    let mut spki = tlv(0x30, &[]);
    spki.extend(tlv(0x03, &[0, subject as u8]));
    tbs.extend(tlv(0x30, &spki));
    tlv(0x30, &tlv(0x30, &tbs))
}

/// A PEM value of one chain of `n` certificates, stored root first: certificate `i` is issued by
/// `i + 1`, the last one is self-signed, and the leaf (0) issued none.
fn long_chain(n: u32) -> String {
    let mut pem = String::new();
    for i in (0..n).rev() {
        let der = tiny_certificate(i, (i + 1).min(n - 1));
        let b64 = kvfetch::base::encoding::base64_encode(&der);
        pem.push_str(&format!(
            "-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"
        ));
    }
    pem
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
    let value = long_chain(6500);
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
