//! The token cache: one token request per audience per fetch, renewal before expiry timed on
//! the monotonic clock, and the old token kept in use while a renewal fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Identity, Token, now};
use crate::base::log;
use crate::base::retry::Deadline;
use crate::error::Error;

/// A cached token and how long it may be used, measured on the monotonic clock from when it
/// arrived: a wall clock that is off (a skewed VM, a container started with a wrong time) can
/// neither make a fresh token look expired nor an expired one look fresh.
#[derive(Clone)]
struct Cached {
    token: Arc<Token>,
    arrived: Instant,
    /// From `expires_in` where given, else `expires_on` minus the local clock; None when even
    /// that says it has expired: then it is used until the vault answers 401.
    valid_for: Option<Duration>,
    /// When a renewal last failed while this token was still valid.
    renewal_failed: Option<Instant>,
}

impl Cached {
    fn new(token: Token) -> Cached {
        let now = now();
        // `expires_in` counts from issuance, and an endpoint may hand out a cached token: the
        // absolute `expires_on` wins when it is sooner. When this machine's clock puts
        // `expires_on` in the past, `expires_in` alone is believed (a skewed clock).
        let by_clock = token.expires_on.checked_sub(now).filter(|s| *s > 0);
        let valid_for = match (token.lifetime, by_clock) {
            (Some(life), Some(left)) => Some(life.min(left)),
            (life, left) => life.or(left),
        }
        .map(Duration::from_secs);
        if token.expires_on <= now {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                log::warn(
                    "the token's expires_on is already past by this machine's clock; kvfetch times tokens by expires_in, or uses them until Key Vault refuses them: check the clock (NTP)",
                    &[("expires_on", &token.expires_on.to_string()), ("now", &now.to_string())],
                );
            });
        }
        Cached {
            token: Arc::new(token),
            arrived: Instant::now(),
            valid_for,
            renewal_failed: None,
        }
    }

    /// Usable without renewal: more than five minutes (or half its life, for short-lived
    /// tokens) before it ends; a token of unknown life until the vault says 401.
    fn fresh(&self) -> bool {
        self.valid_for.is_none_or(|life| {
            let margin = Duration::from_secs(300).min(life / 2);
            self.arrived.elapsed() + margin < life
        })
    }

    /// Still valid at all.
    fn valid(&self) -> bool {
        self.valid_for
            .is_none_or(|life| self.arrived.elapsed() < life)
    }
}

/// The run's tokens, one request per audience, shared by the parallel fetchers.
pub struct Tokens {
    pub identity: Identity,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Tokens {
    pub fn new(identity: Identity) -> Tokens {
        Tokens {
            identity,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh token for `resource`, from the cache when it is still fresh or arrived during
    /// this fetch (`deadline` marks one fetch: never more than one token request per fetch and
    /// audience, whatever the token's times say). When renewal fails while the cached token is
    /// still valid, the cached one keeps working.
    pub fn get(&self, resource: &str, deadline: &Deadline) -> Result<Arc<Token>, Error> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cached = cache.get(resource).cloned();
        let this_fetch = |t: Instant| t >= deadline.started();
        if let Some(c) = &cached
            && (c.fresh() || this_fetch(c.arrived) || c.renewal_failed.is_some_and(this_fetch))
        {
            return Ok(c.token.clone());
        }
        let token = match (self.identity.request(resource, deadline), cached) {
            (Ok(t), _) => t,
            (Err(e), Some(old)) if old.valid() => {
                log::warn(
                    "token renewal failed; the current token is still valid and stays in use",
                    &[("error", &e.to_string())],
                );
                // Not asked again in this fetch: the next fetch tries again.
                if let Some(c) = cache.get_mut(resource) {
                    c.renewal_failed = Some(Instant::now());
                }
                return Ok(old.token);
            }
            (Err(e), _) => return Err(e),
        };
        log::debug(
            "got a token",
            &[("resource", resource), ("identity", &token.who())],
        );
        let entry = Cached::new(token);
        let token = entry.token.clone();
        cache.insert(resource.to_string(), entry);
        Ok(token)
    }

    /// Replace `stale` (rejected by the vault) with a new token, unless another fetcher already did.
    pub fn refresh(
        &self,
        resource: &str,
        stale: &Token,
        deadline: &Deadline,
    ) -> Result<Arc<Token>, Error> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(resource).filter(|c| !c.token.same_as(stale)) {
            return Ok(c.token.clone());
        }
        let entry = Cached::new(self.identity.request(resource, deadline)?);
        let token = entry.token.clone();
        cache.insert(resource.to_string(), entry);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(lifetime: Option<u64>, expires_on: u64) -> Token {
        let body = match lifetime {
            Some(l) => format!(
                r#"{{"access_token":"abc","expires_in":"{l}","expires_on":"{expires_on}"}}"#
            ),
            None => format!(r#"{{"access_token":"abc","expires_on":"{expires_on}"}}"#),
        };
        super::super::parse_token(&body, "x").unwrap()
    }

    #[test]
    fn the_sooner_of_expires_in_and_expires_on_wins() {
        let now = now();
        // A cached answer: issued long ago, so expires_on is sooner than expires_in says.
        let c = Cached::new(token(Some(3600), now + 60));
        assert!(c.valid_for.unwrap() <= Duration::from_secs(60));
        // A clock that puts expires_on in the past: expires_in alone.
        let c = Cached::new(token(Some(3600), 1));
        assert_eq!(c.valid_for, Some(Duration::from_secs(3600)));
        let c = Cached::new(token(None, now + 120));
        assert!(c.valid_for.unwrap() <= Duration::from_secs(120));
    }
}
