//! What one fetch found, the value every later stage works from: the specs served and one value
//! each. It lives with the vault client that fills it, low enough for selection, change
//! detection, shaping and the modes to reach it down.

use crate::spec::SecretSpec;
use crate::vault::keyvault::Fetched;

/// What one fetch found: the specs it served (the plan's own, then what a selection chose from
/// the vault's list at that moment) and one value per spec, in the same order; `None` for an
/// `optional` secret that is missing or disabled (skipped: no file, no variable).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub specs: Vec<SecretSpec>,
    pub values: Vec<Option<Fetched>>,
}

impl Snapshot {
    /// The specs that have outputs of their own (not a template's secrets), with their values.
    pub fn shown(&self) -> impl Iterator<Item = (&SecretSpec, &Option<Fetched>)> {
        self.specs
            .iter()
            .zip(&self.values)
            .filter(|(s, _)| !s.hidden)
    }
}
