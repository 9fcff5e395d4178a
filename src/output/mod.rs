//! Output sinks: one file per secret in a directory, and an env file in one of four formats.
//!
//! Everything is staged first (temp files in the target's own directory, created with their final
//! mode and owner, fsynced) and only then renamed into place, so a failure part-way leaves every
//! output as it was and no temp file behind. `atomic` holds the `..data` layout; `memfile` the
//! in-memory files `exec` hands a `?file` secret over in.
//!
//! May use: `error`, `base`.

pub mod atomic;
pub mod envfile;
pub mod files;
pub mod manifest;
pub mod memfile;

pub use envfile::Format;

/// `--dir-layout`: how `--dir` holds the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One regular file per secret, each replaced by its own rename.
    Files,
    /// Kubernetes' AtomicWriter layout: every write is a new hidden directory, `..data` is a
    /// symlink flipped to it with one rename, and each name is a symlink through `..data`.
    Atomic,
}

impl Layout {
    pub fn parse(s: &str) -> Option<Layout> {
        match s {
            "files" => Some(Layout::Files),
            "atomic" => Some(Layout::Atomic),
            _ => None,
        }
    }
}
pub use files::{FileOptions, Staged};

/// `--file-mode` (and a template's MODE): an octal mode with read bits only for group and
/// others, and no setuid, setgid or sticky bit.
pub fn parse_mode(s: &str) -> Result<u32, crate::error::Error> {
    let usage = |msg: String| crate::error::Error::Usage(format!("{msg}; see kvfetch --help"));
    let digits = s.trim_start_matches("0o");
    let mode = (!digits.is_empty() && digits.len() <= 4)
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .ok_or_else(|| usage(format!("--file-mode {s:?} is not an octal mode like 0400")))?;
    if mode & 0o7000 != 0 {
        return Err(usage(format!(
            "--file-mode {s:?} sets setuid, setgid or sticky bits, which secret files never need"
        )));
    }
    if mode & 0o022 != 0 {
        return Err(usage(format!(
            "--file-mode {s:?} lets group or others write the secret files; use read bits only (e.g. 0400, 0440)"
        )));
    }
    Ok(mode)
}
