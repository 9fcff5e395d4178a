//! The endpoint's token: read from `--serve-token-file`, or made (random, 0400, `--owner`) when
//! the file does not exist; compared in constant time through digests.

use super::*;
use crate::base::log;
use crate::error::Error;
use crate::output::files::FileOptions;
use std::io::ErrorKind;

/// The token file must not be another output: a secret written over it would replace the token
/// (and hand its value to whoever reads the token file).
pub fn check_token_file(
    config: &Config,
    opts: &crate::cli::Options,
    plan: &crate::modes::fetch::Plan,
) -> Result<(), Error> {
    let t = &config.token_file;
    let dir_files = opts.dir.iter().flat_map(|d| {
        plan.specs
            .iter()
            .filter(|s| !s.hidden)
            .map(move |s| d.join(s.file_name()))
    });
    let mut others = dir_files
        .chain(opts.env_file.clone())
        .chain(opts.ready_file.clone())
        .chain(crate::modes::fetch::template_dests(plan).map(|p| p.to_path_buf()));
    match others.find(|p| p == t) {
        Some(p) => Err(Error::Usage(format!(
            "--serve-token-file {} is also an output of this kvfetch; give the token its own file",
            p.display()
        ))),
        None => Ok(()),
    }
}

/// The token in `--serve-token-file`; a new random one written there when the file does not
/// exist. What the file holds is never shown, not even when it is refused.
pub(super) fn load_token(config: &Config, files: FileOptions) -> Result<Vec<u8>, Error> {
    let path = &config.token_file;
    match std::fs::read(path) {
        Ok(bytes) => usable_token(&bytes).ok_or_else(|| {
            Error::Usage(format!(
                "--serve-token-file {} holds no usable token: it must be one line of 16 to 1024 visible ASCII characters (remove the file to have kvfetch create one)",
                path.display()
            ))
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let token = new_token()?;
            crate::output::files::write_all(&[(path.clone(), token.clone(), files)])?;
            log::info(
                "created the --serve token file",
                &[("path", &path.display().to_string())],
            );
            Ok(token)
        }
        Err(e) => {
            let msg = format!("cannot read --serve-token-file {}: {e}", path.display());
            Err(Error::from_io(&e, Error::Usage, msg))
        }
    }
}

/// The token a file holds: its text without trailing white space, 16 to 1024 visible ASCII
/// characters (a header value can carry exactly those).
pub(super) fn usable_token(bytes: &[u8]) -> Option<Vec<u8>> {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let token = &bytes[..end];
    let visible = token.iter().all(|b| (0x21..=0x7e).contains(b));
    (visible && (16..=1024).contains(&token.len())).then(|| token.to_vec())
}

/// 32 bytes from the system's random source, as 64 hex characters.
pub(super) fn new_token() -> Result<Vec<u8>, Error> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| Error::Resource("no random bytes for the --serve token".into()))?;
    Ok(raw
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect())
}

pub(super) fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether `given` is the token, in time that depends on neither (both are hashed first, so
/// not even the length shows).
pub(super) fn token_matches(ep: &Endpoint, given: &[u8]) -> bool {
    let d = digest(given);
    let diff = d
        .iter()
        .zip(&ep.token)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}
