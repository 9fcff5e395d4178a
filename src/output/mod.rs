//! Output sinks: one file per secret in a directory, and an env file in one of four formats.
//!
//! Everything is staged first (temp files in the target's own directory, created with their final
//! mode and owner, fsynced) and only then renamed into place, so a failure part-way leaves every
//! output as it was and no temp file behind.

pub mod envfile;
pub mod files;

pub use envfile::Format;
pub use files::{FileOptions, Staged};
