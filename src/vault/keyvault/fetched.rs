//! What a GET of a secret brings back: the value (wiped when dropped, never in `Debug`), its
//! version and attributes, and a slot for what a later stage derives from it once.

use super::*;
use serde_json::Value;
use std::fmt;

/// A fetched secret. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Fetched {
    pub value: String,
    /// The version id (last segment of the bundle's `id`).
    pub version: String,
    pub content_type: Option<String>,
    /// The `exp` attribute (Unix seconds), if set.
    pub expires: Option<u64>,
    /// The `updated` attribute (Unix seconds), if given: a refresh compares it with the list's.
    pub updated: Option<u64>,
    /// When it was fetched (Unix seconds, this machine's clock).
    pub fetched_at: u64,
    /// What a later stage derives from the value once (a certificate taken apart), shared by
    /// its clones.
    pub parsed: Derived,
}

/// A slot for what a later stage derives from a fetched value once: every clone of the
/// [`Fetched`] (each spec that reads the secret, each shaping of one snapshot) shares it. Typed
/// by the stage that fills it (`shape::certificate`), so the vault client needs to know nothing
/// of certificates.
#[derive(Clone, Default)]
pub struct Derived(std::sync::Arc<std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>>);

impl Derived {
    /// The derived value, made by `make` the first time.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> &T {
        self.0
            .get_or_init(|| Box::new(make()))
            .downcast_ref()
            .expect("one stage fills a slot, always with one type")
    }

    /// Whether it was made already.
    pub fn is_made(&self) -> bool {
        self.0.get().is_some()
    }
}

impl PartialEq for Derived {
    /// Derived from the value, which `Fetched` compares itself.
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl Eq for Derived {}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("version", &self.version)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        wipe(&mut self.value);
    }
}

/// A SecretBundle → what kvfetch keeps of it.
pub fn parse_bundle(body: &str) -> Option<Fetched> {
    let v: Value = serde_json::from_str(body).ok()?;
    let value = v.get("value")?.as_str()?.to_string();
    crate::base::redact::value(&value);
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
    Some(Fetched {
        value,
        version: id
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
        content_type: v
            .get("contentType")
            .and_then(Value::as_str)
            .map(String::from),
        expires: v.pointer("/attributes/exp").and_then(Value::as_u64),
        updated: v.pointer("/attributes/updated").and_then(Value::as_u64),
        fetched_at: crate::identity::token::now(),
        parsed: Default::default(),
    })
}
