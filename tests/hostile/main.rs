//! Trust, third pass: a hostile or compromised vault, a vault writer who is not the operator, and
//! a careless operator, against the surfaces added last (selection, certificates, identity
//! sources, templates, the atomic layout). Every test here failed on the build before its fix and
//! asserts what `docs/security.md` promises: exit codes, request counts, bytes on disk, time
//! bounds with wide margins, and that no value or credential reaches a message.

#[path = "../common/mod.rs"]
mod common;

mod certs;
mod cli;
mod identity;
mod vault;
