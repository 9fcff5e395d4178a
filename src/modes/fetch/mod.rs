//! `kvfetch fetch`: the init step. Plan (validate everything that needs no network), get one
//! token per audience, fetch every secret in parallel, then write all outputs or none.
//!
//! Three parts, in the order a value passes through them: `plan.rs` (every input checked and
//! parsed once, offline: [`plan`]), `session.rs` (the token and the parallel fetch: [`Session`],
//! fetched again and again with one token cache by `watch` and supervised `exec`) and `write.rs`
//! (the outputs, all or none: [`write_outputs`], [`sync_outputs`]).

use std::collections::HashMap;

use crate::base::log;
use crate::base::retry::human;
use crate::cli::Options;
use crate::error::Error;
pub use crate::vault::snapshot::Snapshot;

mod plan;
mod session;
mod stale;
mod write;

pub use plan::{
    Plan, check_no_file, check_outputs, check_outputs_with, default_vault, has_outputs, plan,
    plan_with, selects, sweep_outputs, template_dests,
};
pub use session::{Session, check_values, fetch_all, skipped};
pub use stale::{check_stale_ok, keep_stale, manifest_path, record_manifest, stale_verdict};
use write::*;
pub use write::{log_written, remove_gone, shaped, sync_outputs, write_outputs};

/// Run `fetch`.
pub fn run(opts: &Options, env: &HashMap<String, String>) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let session = Session::new(opts, env, plan(opts)?)?;
    let snap = match session.fetch() {
        Ok(snap) => snap,
        // --stale-ok: through an outage, the outputs written before (checked) are kept.
        Err(e) => return keep_stale(opts, &session.plan, e).map(drop),
    };
    write_outputs(opts, &session.plan, &snap)?;
    record_manifest(opts, &session.plan, &snap);
    log_written(opts, &snap, opts.env_file.is_some());
    let (written, skipped) = written_counts(&snap);
    let mut fields = vec![("count", written.to_string())];
    if skipped > 0 {
        fields.push(("skipped", skipped.to_string()));
    }
    if !session.plan.templates.is_empty() {
        fields.push(("templates", session.plan.templates.len().to_string()));
    }
    fields.push(("elapsed", human(started.elapsed())));
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    log::info("fetched and wrote secrets", &fields);
    Ok(())
}

/// (secrets whose value reached an output — a file, a variable or a template — and secrets
/// skipped as absent and optional).
fn written_counts(snap: &Snapshot) -> (usize, usize) {
    let present = snap.values.iter().filter(|v| v.is_some()).count();
    (present, snap.values.len() - present)
}
