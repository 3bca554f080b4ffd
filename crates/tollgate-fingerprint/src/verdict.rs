//! How one request's session is judged: its coarsened traits, their keyed hashes,
//! the record update and the policy's decision.

use axum::response::Response;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderValue, Request};
use tollgate_core::problem::types;
use tollgate_core::sharded::ShardedMap;
use tollgate_core::span::record_current;
use tollgate_core::{
    CarryExt, ClientConfig, ClientContext, Domain, Freeze, FreezeTarget, KeyedDigest, NetworkPrefix, Problem,
    ProblemResponder, Pseudonym, Pseudonymizer, SessionInfo, SharedClock, Timestamp, fields,
};
use tracing::Span;

use crate::config::{FingerprintConfig, SessionPolicy};
use crate::dimensions::{FingerprintInput, UserAgentCache, fingerprint_input, input_key};
use crate::local_hash::LocalHasher;
use crate::record::{Observation, SessionRecord, Thresholds, nonzero};
use crate::store::{SeenInput, SessionCell, SessionStore};

/// The domain of the keyed hashes of network prefixes kept in session records.
const SESSION_NETWORK: Domain = Domain::new("session-network");

/// Everything the layer needs to judge a request, apart from its stores.
pub(crate) struct Judge {
    pub(crate) config: FingerprintConfig,
    pub(crate) thresholds: Thresholds,
    pub(crate) pseudonymizer: Pseudonymizer,
    pub(crate) clock: SharedClock,
    pub(crate) client: ClientConfig,
    pub(crate) responder: ProblemResponder,
    pub(crate) user_agents: UserAgentCache,
    pub(crate) local: LocalHasher,
    /// The asynchronous path's keyed hashes of a (credential, input), until the
    /// epoch ends (see [`Judge::observation`]).
    pub(crate) hashes: ShardedMap<(KeyedDigest, u64), Hashes>,
}

/// The keyed hashes a request to a session store that must be waited on needs:
/// four HMAC-SHA256 (about 28,000 instructions), the same for every request of a
/// steady session within an epoch.
#[derive(Clone, Copy)]
pub(crate) struct Hashes {
    fingerprint: u64,
    fingerprint_pseudonym: Pseudonym,
    network: Option<u64>,
    session: Pseudonym,
}

/// Most (credential, input) pairs whose [`Hashes`] are kept (about 1.5 MiB).
pub(crate) const MAX_HASHES: usize = 16_384;

/// The signal thresholds of `config`; tokens issued before `watching_since` are
/// never judged stale.
pub(crate) fn thresholds(config: &FingerprintConfig, watching_since: Timestamp) -> Thresholds {
    Thresholds {
        established_after: config.established_after,
        concurrency_window: config.concurrency_window,
        interleave_window: config.interleave_window,
        alternation_window: config.alternation_window,
        alternation_switches: config.alternation_switches,
        stale_after: (!config.stale_after.is_zero()).then_some(config.stale_after),
        watching_since,
        unhealthy_reasons: config.unhealthy_reasons,
    }
}

/// What the policy decided.
pub(crate) enum Decision {
    Pass,
    Respond(Response),
    Freeze(Freeze),
}

/// One request's time and network, before any keyed hash.
pub(crate) struct Traits {
    pub(crate) now: Timestamp,
    network: Option<NetworkPrefix>,
}

fn first_u64(d: KeyedDigest) -> u64 {
    let hex = d.to_hex();
    // 16 hex digits always parse as a u64.
    nonzero(u64::from_str_radix(&hex.as_str()[..16], 16).unwrap_or(1))
}

impl Judge {
    /// The request's time and network. The network comes from the
    /// [`ClientContext`] an outer layer resolved, else from
    /// [`ClientConfig::resolve`], whose answer is inserted for the layers inside.
    pub(crate) fn traits<B>(&self, req: &mut Request<B>) -> Traits {
        let network = if self.config.dimensions.network {
            match req.extensions().carried::<ClientContext>() {
                Some(client) => Some(client.network()),
                None => {
                    let client = self
                        .client
                        .resolve(req.extensions(), req.headers(), &self.pseudonymizer);
                    if let Some(client) = client {
                        req.extensions_mut().carry(client);
                    }
                    client.map(|c| c.network())
                }
            }
        } else {
            None
        };
        Traits {
            now: self.clock.now(),
            network,
        }
    }

    /// The request's fingerprint input: its coarsened traits.
    fn input(&self, traits: &Traits, headers: &HeaderMap) -> FingerprintInput {
        fingerprint_input(
            self.config.dimensions,
            traits.network,
            headers,
            &self.user_agents,
            traits.now,
        )
    }

    fn network_hash(&self, network: NetworkPrefix) -> u64 {
        let (bytes, len) = network.to_bytes();
        first_u64(self.pseudonymizer.digest(SESSION_NETWORK, &bytes[..len]))
    }

    fn fingerprint_hash(&self, input: &[u8], now: Timestamp) -> (u64, Pseudonym) {
        let p = &self.pseudonymizer;
        (
            first_u64(p.digest(Domain::FINGERPRINT, input)),
            p.pseudonym_at(Domain::FINGERPRINT, input, now),
        )
    }

    pub(crate) fn session_pseudonym(&self, credential: &KeyedDigest, now: Timestamp) -> Pseudonym {
        self.pseudonymizer
            .pseudonym_at(Domain::SESSION, credential.to_hex().as_str().as_bytes(), now)
    }

    /// The pseudonym epoch `now` falls in.
    fn epoch(&self, now: Timestamp) -> u64 {
        self.pseudonymizer.epoch_at(now)
    }

    /// The observation of a request for the asynchronous path, with its fingerprint
    /// and session pseudonyms. The keyed hashes are kept per (credential, input)
    /// until the pseudonym epoch ends, so a steady session costs the input's local
    /// hash and one lookup, not four HMACs.
    pub(crate) fn observation(
        &self,
        credential: KeyedDigest,
        traits: &Traits,
        headers: &HeaderMap,
        issued_at: Option<Timestamp>,
        key_bound: bool,
    ) -> (Observation, Pseudonym, Pseudonym) {
        let now = traits.now;
        let epoch = self.epoch(now);
        let key = (
            credential,
            input_key(self.config.dimensions, traits.network, headers, &self.local),
        );
        let kept = self.hashes.get(&key, now).filter(|h| h.session.epoch() == epoch);
        let hashes = kept.unwrap_or_else(|| {
            let input = self.input(traits, headers);
            let (fingerprint, fingerprint_pseudonym) = self.fingerprint_hash(input.as_bytes(), now);
            let hashes = Hashes {
                fingerprint,
                fingerprint_pseudonym,
                network: traits.network.map(|n| self.network_hash(n)),
                session: self.session_pseudonym(&credential, now),
            };
            self.hashes
                .insert(key, hashes, self.pseudonymizer.epoch_end(epoch), now);
            hashes
        });
        let observation = Observation {
            now,
            fingerprint: hashes.fingerprint,
            network: hashes.network,
            issued_at,
            key_bound,
        };
        (observation, hashes.fingerprint_pseudonym, hashes.session)
    }

    /// Judges the request through the store's synchronous path, if it has one
    /// (`None` otherwise): one short update of the session's cell. Keyed hashes are
    /// reused while the session's traits and the pseudonym epoch stay the same, and
    /// the fingerprint input itself (user agent parsing included) is only made when
    /// the traits changed. Missing hashes are computed between two updates, outside
    /// the store's lock.
    pub(crate) fn observe_immediate(
        &self,
        store: &dyn SessionStore,
        credential: KeyedDigest,
        traits: &Traits,
        headers: &HeaderMap,
        issued_at: Option<Timestamp>,
        key_bound: bool,
    ) -> Option<SessionInfo> {
        let now = traits.now;
        let epoch = self.epoch(now);
        let input_key = input_key(self.config.dimensions, traits.network, headers, &self.local);
        let observe = |cell: &mut SessionCell, session: Pseudonym, seen: SeenInput| {
            cell.session = Some(session);
            cell.fingerprint = Some(seen);
            let observation = Observation {
                now,
                fingerprint: seen.hash,
                network: seen.network,
                issued_at,
                key_bound,
            };
            let record = SessionRecord::observe(cell.record.as_ref(), &observation, &self.thresholds);
            cell.record = Some(record);
            SessionInfo {
                session,
                fingerprint: seen.pseudonym,
                health: record.health,
                reasons: record.reasons,
            }
        };
        // A steady session: every keyed hash is cached, one short update.
        let mut cached = None;
        store.observe_immediate(credential, now, &mut |cell| {
            let session = cell.session.filter(|s| s.epoch() == epoch);
            // The same input as last time: the same fingerprint and the same network.
            let seen = cell.fingerprint.filter(|f| f.key == input_key);
            cached = Some(match (session, seen) {
                (Some(session), Some(seen)) if seen.pseudonym.epoch() == epoch => {
                    Ok(observe(cell, session, seen))
                }
                _ => Err((session, seen, cell.network)),
            });
        })?;
        let (session, seen, networks) = match cached? {
            Ok(info) => return Some(info),
            Err(missing) => missing,
        };
        // A new session, epoch or input: the missing keyed hashes, outside the lock
        // (they depend on the request only, so a concurrent request computes the same).
        let session = session.unwrap_or_else(|| self.session_pseudonym(&credential, now));
        let mut new_network = None;
        let seen = match seen {
            Some(seen) if seen.pseudonym.epoch() == epoch => seen,
            Some(seen) => {
                let (hash, pseudonym) = self.fingerprint_hash(self.input(traits, headers).as_bytes(), now);
                SeenInput {
                    hash,
                    pseudonym,
                    ..seen
                }
            }
            None => {
                let (hash, pseudonym) = self.fingerprint_hash(self.input(traits, headers).as_bytes(), now);
                let network = traits.network.map(|prefix| {
                    let (bytes, len) = prefix.to_bytes();
                    let key = self.local.hash(&bytes[..len]);
                    match networks {
                        Some((k, hash)) if k == key => hash,
                        _ => {
                            let hash = self.network_hash(prefix);
                            new_network = Some((key, hash));
                            hash
                        }
                    }
                });
                SeenInput {
                    key: input_key,
                    hash,
                    pseudonym,
                    network,
                }
            }
        };
        let mut info = None;
        store.observe_immediate(credential, now, &mut |cell| {
            if new_network.is_some() {
                cell.network = new_network;
            }
            info = Some(observe(cell, session, seen));
        })?;
        info
    }

    /// Applies the policy to the verdict; records the outcome in `span`, or in the
    /// current span when `None`.
    pub(crate) fn decide(
        &self,
        info: &SessionInfo,
        credential: Option<KeyedDigest>,
        span: Option<&Span>,
    ) -> Decision {
        let config = &self.config;
        if config.policy == SessionPolicy::Tag || info.health < config.act_on.health() {
            return Decision::Pass;
        }
        let action = match (config.policy, config.report_only) {
            (SessionPolicy::Freeze, false) => "freeze",
            (SessionPolicy::Freeze, true) => "would_freeze",
            (_, false) => "reauthenticate",
            (_, true) => "would_reauthenticate",
        };
        match span {
            Some(span) => {
                span.record(fields::SESSION_ACTION, action);
            }
            None => record_current([(fields::SESSION_ACTION, &action)]),
        }
        tracing::warn!(
            target: "tollgate::fingerprint",
            session = %info.session,
            health = info.health.as_str(),
            reasons = info.reasons.as_str(),
            action,
            "session policy"
        );
        if config.report_only {
            return Decision::Pass;
        }
        match (config.policy, credential) {
            (SessionPolicy::Freeze, Some(credential)) => {
                let now = self.clock.now();
                Decision::Freeze(Freeze {
                    target: FreezeTarget::Credential(credential),
                    reason: format!("session {}: {}", info.health, info.reasons),
                    frozen_at: now,
                    until: Some(now.saturating_add(config.freeze_for)),
                })
            }
            _ => Decision::Respond(self.responder.respond(session_changed())),
        }
    }
}

pub(crate) fn session_changed() -> Problem {
    Problem::new(types::SESSION_CHANGED)
        .with_detail("the session changed; authenticate again")
        .with_header(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer error=\"invalid_token\", error_description=\"the session changed; authenticate again\"",
            ),
        )
}

pub(crate) fn credential_frozen() -> Problem {
    Problem::new(types::CREDENTIAL_FROZEN)
        .with_detail("the session changed; the credential is frozen")
        .with_header(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer error=\"invalid_token\", error_description=\"the session changed; the credential is frozen\"",
            ),
        )
}

/// Records the verdict in `span` (the asynchronous path, off the request's thread).
pub(crate) fn record_verdict(span: &Span, info: &SessionInfo) {
    span.record(fields::SESSION, info.session.to_hex().as_str());
    span.record(fields::SESSION_HEALTH, info.health.as_str());
    if !info.reasons.is_empty() {
        span.record(fields::SESSION_REASONS, info.reasons.as_str());
    }
}

/// [`record_verdict`] on the current span, in one call to the subscriber.
pub(crate) fn record_verdict_here(info: &SessionInfo) {
    let session = info.session.to_hex();
    let session = (fields::SESSION, &session.as_str() as &dyn tracing::Value);
    let health = (
        fields::SESSION_HEALTH,
        &info.health.as_str() as &dyn tracing::Value,
    );
    if info.reasons.is_empty() {
        record_current([session, health]);
    } else {
        record_current([session, health, (fields::SESSION_REASONS, &info.reasons.as_str())]);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The asynchronous path's hashes are those computed afresh, kept per credential
    /// and input, and made again in a new epoch.
    #[test]
    fn observation_hashes_are_kept_per_credential_and_input_within_an_epoch() {
        use std::sync::Arc;
        use tollgate_core::clock::Clock;

        let clock = tollgate_test_support::clock();
        let p = tollgate_test_support::pseudonymizer_with_clock(&clock);
        let layer = crate::FingerprintLayer::builder(crate::FingerprintConfig::default(), p.clone())
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        let judge = &layer.shared.judge;
        let network = tollgate_core::coarsen::Coarsening::default().network("198.51.100.7".parse().unwrap());
        let headers = |ua: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::USER_AGENT, HeaderValue::from_static(ua));
            h
        };
        let firefox = headers("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0");
        let credential = p.digest(Domain::SUBJECT, b"token-1");
        let fresh = |headers: &HeaderMap| {
            let traits = Traits {
                now: clock.now(),
                network: Some(network),
            };
            let input = judge.input(&traits, headers);
            let (fingerprint, pseudonym) = judge.fingerprint_hash(input.as_bytes(), traits.now);
            (
                fingerprint,
                pseudonym,
                judge.network_hash(network),
                judge.session_pseudonym(&credential, traits.now),
            )
        };
        let observe = |headers: &HeaderMap| {
            let traits = Traits {
                now: clock.now(),
                network: Some(network),
            };
            let (o, fingerprint, session) = judge.observation(credential, &traits, headers, None, false);
            (o.fingerprint, fingerprint, o.network.unwrap(), session)
        };
        let first = observe(&firefox);
        assert_eq!(first, fresh(&firefox));
        assert_eq!(observe(&firefox), first);
        assert_eq!(judge.hashes.len(), 1, "kept once");
        let curl = headers("curl/8.5.0");
        assert_ne!(observe(&curl).0, first.0, "another input, another fingerprint");
        assert_eq!(judge.hashes.len(), 2);
        clock.advance(tollgate_test_support::PSEUDONYM_EPOCH);
        let next = observe(&firefox);
        assert_eq!(next, fresh(&firefox), "made again in the new epoch");
        assert_ne!(next.3, first.3, "the session pseudonym rotated");
    }

    #[test]
    fn first_u64_is_never_zero_and_reads_the_digest() {
        let p = Pseudonymizer::new(
            tollgate_core::PseudonymSecret::from_bytes(&[1; 32]).unwrap(),
            Duration::from_secs(60),
        );
        let d = p.digest(Domain::FINGERPRINT, b"x");
        let want = u64::from_str_radix(&d.to_hex().as_str()[..16], 16).unwrap();
        assert_eq!(first_u64(d), nonzero(want));
    }
}
