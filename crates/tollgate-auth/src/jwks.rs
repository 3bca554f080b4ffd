//! Keys from a JWKS URL: fetched at start, refreshed in the background honouring
//! `Cache-Control: max-age`, refetched on an unknown `kid` at most once per interval,
//! and kept when the endpoint fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use http::header::CACHE_CONTROL;
use serde_json::Value;
use tollgate_core::clock::{SharedClock, duration_nanos};

use crate::keys::{JwtRules, KeySet, PinnedKey, jwk_algorithm, key_from_jwk};

/// How the JWKS is fetched and refreshed.
#[derive(Clone, Debug)]
pub(crate) struct JwksSettings {
    pub(crate) url: reqwest::Url,
    pub(crate) timeout: Duration,
    /// Refresh after this long when the response names no `max-age`.
    pub(crate) default_refresh: Duration,
    /// Never refresh more often than this, whatever `max-age` says; also the retry
    /// delay after a failed fetch.
    pub(crate) min_refresh: Duration,
    /// Never keep keys longer than this without trying a refresh.
    pub(crate) max_refresh: Duration,
    /// At most one refetch per this interval for tokens with an unknown `kid`.
    pub(crate) unknown_kid_interval: Duration,
    /// The largest JWKS document accepted.
    pub(crate) max_bytes: usize,
}

/// Why a JWKS fetch failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("endpoint answered HTTP {0}")]
    Status(u16),
    #[error("document larger than {0} bytes")]
    TooLarge(usize),
    #[error("document is not a JWK set: {0}")]
    Json(#[from] serde_json::Error),
    #[error("document holds no usable key ({0} skipped)")]
    NoUsableKeys(usize),
}

pub(crate) struct Jwks {
    settings: JwksSettings,
    rules: JwtRules,
    client: reqwest::Client,
    keys: ArcSwap<KeySet>,
    clock: SharedClock,
    /// When the last unknown-`kid` refetch started (ns since the epoch; 0 = never).
    last_unknown_kid_fetch: AtomicU64,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.settings.url.as_str())
            .field("keys", &self.keys.load().len())
            .finish()
    }
}

impl Jwks {
    pub(crate) fn new(
        settings: JwksSettings,
        rules: JwtRules,
        clock: SharedClock,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Jwks {
            settings,
            rules,
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            clock,
            last_unknown_kid_fetch: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The current keys.
    pub(crate) fn keys(&self) -> Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// How many fetches were attempted.
    pub(crate) fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// How many fetches failed (the last good keys stayed in use).
    pub(crate) fn failure_count(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Fetches now; on success replaces the keys and returns the `max-age`, if any.
    pub(crate) async fn fetch(&self) -> Result<Option<Duration>, JwksError> {
        let _guard = self.fetch_lock.lock().await;
        let outcome = self.fetch_locked().await;
        if outcome.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    async fn fetch_locked(&self) -> Result<Option<Duration>, JwksError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let mut response = self
            .client
            .get(self.settings.url.clone())
            .header(http::header::ACCEPT, "application/jwk-set+json, application/json")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let max_age = response
            .headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let limit = self.settings.max_bytes;
        if response.content_length().is_some_and(|l| l > limit as u64) {
            return Err(JwksError::TooLarge(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(JwksError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        let set = self.parse(&body)?;
        tracing::debug!(keys = set.len(), "JWKS fetched");
        self.keys.store(Arc::new(set));
        Ok(max_age)
    }

    fn parse(&self, body: &[u8]) -> Result<KeySet, JwksError> {
        parse_document(body, &self.rules)
    }

    /// A token named a `kid` we do not know: refetch, unless a refetch started less
    /// than the interval ago, in which case wait for any fetch in flight and return.
    /// A burst of forged `kid`s thus causes at most one fetch per interval.
    pub(crate) async fn refetch_for_unknown_kid(&self) {
        let now = self.clock.now().as_nanos().max(1);
        let interval = duration_nanos(self.settings.unknown_kid_interval);
        let last = self.last_unknown_kid_fetch.load(Ordering::Acquire);
        let due = last == 0 || now.saturating_sub(last) >= interval;
        if !due
            || self
                .last_unknown_kid_fetch
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            // Someone else refetched recently or is refetching: wait for a fetch in flight.
            drop(self.fetch_lock.lock().await);
            return;
        }
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, cause = "unknown_kid", "JWKS refetch failed; keeping the last good keys");
        }
    }

    /// The delay before the next background refresh after a fetch that gave `max_age`.
    fn next_refresh(&self, outcome: &Result<Option<Duration>, JwksError>) -> Duration {
        let s = &self.settings;
        match outcome {
            Ok(max_age) => max_age
                .unwrap_or(s.default_refresh)
                .clamp(s.min_refresh, s.max_refresh.max(s.min_refresh)),
            Err(_) => s.min_refresh,
        }
    }

    /// Spawns the background refresh, which ends when the last strong reference to
    /// `this` is dropped.
    pub(crate) fn spawn_refresh(this: &Arc<Jwks>, first: Duration) {
        let weak: Weak<Jwks> = Arc::downgrade(this);
        tokio::spawn(async move {
            let mut delay = first;
            loop {
                tokio::time::sleep(delay).await;
                let Some(jwks) = weak.upgrade() else { break };
                let outcome = jwks.fetch().await;
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, cause = "refresh", "JWKS refresh failed; keeping the last good keys");
                }
                delay = jwks.next_refresh(&outcome);
            }
        });
    }

    /// The delay after the fetch at start.
    pub(crate) fn first_refresh(&self, outcome: &Result<Option<Duration>, JwksError>) -> Duration {
        self.next_refresh(outcome)
    }
}

/// The usable keys of a JWKS document; an error if it does not parse or holds none.
pub(crate) fn parse_document(body: &[u8], rules: &JwtRules) -> Result<KeySet, JwksError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc = serde_json::from_slice(body)?;
    let mut skipped = 0;
    let mut keys = Vec::new();
    for (i, v) in doc.keys.iter().enumerate() {
        match pinned_from_jwk(v, rules) {
            Ok(k) => keys.push(k),
            Err(why) => {
                skipped += 1;
                tracing::warn!(index = i, reason = why, "JWKS key skipped");
            }
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys(skipped));
    }
    Ok(KeySet::new(keys))
}

fn pinned_from_jwk(v: &Value, rules: &JwtRules) -> Result<PinnedKey, &'static str> {
    if let Some(u) = v.get("use").and_then(Value::as_str)
        && u != "sig"
    {
        return Err("use is not sig");
    }
    if let Some(ops) = v.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|o| o.as_str() == Some("verify"))
    {
        return Err("key_ops lacks verify");
    }
    let alg = jwk_algorithm(v, &rules.algorithms)?;
    let key = key_from_jwk(v, alg)?;
    let kid = v.get("kid").and_then(Value::as_str).map(str::to_string);
    Ok(PinnedKey::new(kid, key, rules))
}

/// `max-age` from a `Cache-Control` value; `no-cache`/`no-store` count as zero.
pub(crate) fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',') {
        let d = directive.trim();
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        if let Some((name, secs)) = d.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
        {
            max_age = secs
                .trim()
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age() {
        assert_eq!(
            parse_max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }
}
