//! Output sinks: one file per secret in a directory, and an env file in one of four formats.
//!
//! Everything is staged first (temp files in the target's own directory, created with their final
//! mode and owner, fsynced) and only then renamed into place, so a failure part-way leaves every
//! output as it was and no temp file behind.

pub mod atomic;
pub mod envfile;
pub mod files;

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
