//! The Key Vault client and what it decides about a vault: get and the paged list (bounded),
//! selections from the list, change detection, per-vault throttling, and the [`snapshot`] of
//! fetched values every later stage works from.
//!
//! May use: `error`, `base`, `net`, `spec`, `output` (names and formats), `identity` (tokens).

pub mod detect;
pub mod keyvault;
pub mod select;
pub mod snapshot;
pub mod throttle;
