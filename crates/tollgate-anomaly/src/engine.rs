//! The state the anomaly layers share, and what they do per request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::response::Response;
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Request, StatusCode};
use tollgate_core::clock::{SharedClock, duration_nanos};
use tollgate_core::future::BoxResponseFuture;
use tollgate_core::inventory::StateSize;
use tollgate_core::problem::types;
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    CarryExt, ClientConfig, ConfigError, Freeze, FreezeTarget, KeyedDigest, LoginAttempt, LoginOutcome,
    NetworkPrefix, Principal, Problem, ProblemResponder, Pseudonymizer, RouteMap, SessionInfo,
    SharedFreezeList, StoreError, Timestamp,
};
use tollgate_ratelimit::{Decision, Limit, MemoryRateLimitStore, RateLimitKey, SharedRateLimitStore};

use crate::config::{Action, AnomalyConfig, SECTION};
use crate::detectors::{
    EnumerationDetector, SequenceDetector, Step, StuffingDetector, TokenSharingDetector, VolumeDetector,
};
use crate::hash::{KeyKind, KeyedHasher};
use crate::params::{ParamIds, ParamShape, next_back};
use crate::penalty::{MemoryPenaltyBoard, Penalty, PenaltyKey, SharedPenaltyBoard};
use crate::record::Record;
use crate::route::{AnomalyRoute, CompiledPolicy};
use crate::route_index::{RouteEntry, RouteIndex};
use crate::tags::{AnomalyKind, AnomalyTags, KIND_COUNT};

/// The debug response header carrying the tags (only when `debug_header` is on).
pub const DEBUG_HEADER: HeaderName = HeaderName::from_static("x-tollgate-anomaly");

/// The rate-limit scope of the throttle tier's cells (store keys `tollgate:rl:anomaly-throttle:{digest}`).
pub const THROTTLE_SCOPE: &str = "anomaly-throttle";

/// The pseudonym domain of network digests used as throttle keys.
const THROTTLE_NETWORK: Domain = Domain::new("anomaly-throttle-network");

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The keys of one request: keyed hashes, and the credential's keyed digest (hashed
/// into a key only when a penalty needs it, which is rare).
#[derive(Clone, Copy, Debug, Default)]
struct Keys {
    network: Option<u64>,
    credential: Option<KeyedDigest>,
    enumeration: Option<u64>,
}

/// An answer given before the handler runs.
pub(crate) enum Early {
    Respond(Problem),
    Freeze {
        freeze: Freeze,
        actor: Option<u64>,
        tags: AnomalyTags,
    },
    /// The throttle tier must be asked of a remote store first: 429, or on to the
    /// handler and then `Post`.
    Throttle(PendingThrottle, Post),
}

/// A throttle-tier decision that waits on the store (Redis).
pub(crate) struct PendingThrottle {
    key: RateLimitKey,
    now: Timestamp,
}

/// What the throttle tier says about one request.
enum ThrottleCheck {
    Within,
    Over(Problem),
    Pending(PendingThrottle),
}

/// What enforcing an action leaves to do.
enum Enforced {
    /// Nothing: on to the handler.
    Go,
    Early(Early),
    Throttle(ThrottleCheck),
}

/// What the outer watch layer does with a request.
pub(crate) enum WatchStart {
    /// Answer now.
    Respond(Problem),
    /// Ask the throttle tier's store first (the network is under a throttle penalty).
    Throttle(PendingThrottle, AnomalyTags, Option<Watch>),
    /// Go on; count the response if there is a watch.
    Pass(Option<Watch>),
}

/// What the response phase needs from the request phase.
pub(crate) struct Post {
    engine: Arc<Engine>,
    /// The request's time: the response phase does not read the clock again.
    now: Timestamp,
    keys: Keys,
    policy: CompiledPolicy,
    /// The sequence step, to learn if no other detector tags the request.
    transition: Option<Step>,
    record: Record,
    count_failures: bool,
}

/// Marks a request whose 401s the outer [`crate::FailureWatchLayer`] counts, and
/// hands the inner layer what the watch already worked out, so that the request
/// reads the clock, looks its route up and hashes its network once.
#[derive(Clone, Copy, Debug)]
struct FailureWatched {
    /// The engine of the watch: only the same engine reuses the rest.
    engine: usize,
    route: RouteEntry,
    policy: CompiledPolicy,
    /// The time and the network key, if the watch got as far as reading them.
    seen: Option<(Timestamp, u64)>,
}

/// What the outer watch layer keeps for the response phase.
#[derive(Clone, Copy, Debug)]
struct WatchState {
    network: u64,
    policy: CompiledPolicy,
    now: Timestamp,
}

/// The response phase of the outer watch layer, for a request whose 401 it counts.
pub(crate) struct Watch {
    engine: Arc<Engine>,
    state: WatchState,
}

impl Watch {
    /// Counts the response if it is a 401.
    pub(crate) fn finish(self, response: &mut Response) {
        self.engine.on_watch_response(&self.state, response);
    }
}

struct Throttle {
    store: SharedRateLimitStore,
    limit: Limit,
    key: RateLimitKey,
}

/// The shared state of an [`crate::AnomalyLayer`] and its [`crate::FailureWatchLayer`].
///
/// Aligned so that the reference counts of its `Arc` (written by every request, on
/// every core) do not share a cache line with the settings every request reads.
#[repr(align(128))]
pub(crate) struct Engine {
    pub(crate) config: AnomalyConfig,
    actions: [Action; KIND_COUNT],
    /// The per-route policies, read with `RouteMap::get_for`.
    policies: RouteMap<CompiledPolicy>,
    hasher: KeyedHasher,
    /// The templates the sequence model and the enumeration detector have seen
    /// (learned as requests come, unlike the configured `policies`).
    routes: RouteIndex,
    volume: Option<VolumeDetector>,
    stuffing: Option<StuffingDetector>,
    enumeration: Option<EnumerationDetector>,
    token: Option<TokenSharingDetector>,
    sequence: Option<SequenceDetector>,
    penalties: SharedPenaltyBoard,
    throttle: Throttle,
    clock: SharedClock,
    pseudonymizer: Pseudonymizer,
    client: ClientConfig,
    pub(crate) freeze: Option<SharedFreezeList>,
    pub(crate) responder: ProblemResponder,
    block_nanos: u64,
    throttle_nanos: u64,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnomalyEngine")
            .field("report_only", &self.config.report_only)
            .field("actions", &self.actions)
            .field("freeze_list", &self.freeze.is_some())
            .finish_non_exhaustive()
    }
}

/// What an [`Engine`] is made of: the builder's settings.
pub(crate) struct Settings {
    pub(crate) config: AnomalyConfig,
    pub(crate) pseudonymizer: Pseudonymizer,
    pub(crate) clock: SharedClock,
    pub(crate) client: ClientConfig,
    pub(crate) freeze: Option<SharedFreezeList>,
    pub(crate) throttle_store: Option<SharedRateLimitStore>,
    pub(crate) penalties: Option<SharedPenaltyBoard>,
    pub(crate) responder: ProblemResponder,
    pub(crate) routes: RouteMap<AnomalyRoute>,
}

/// Refuses a `freeze` action when there is no freeze list to write to: a private
/// list nobody reads would let the credential through on the next request.
fn check_freeze(settings: &Settings) -> Result<(), ConfigError> {
    if settings.freeze.is_some() {
        return Ok(());
    }
    const HINT: &str = "is `freeze` but no freeze list was given (AnomalyBuilder::freeze_list)";
    let global = settings.config.actions;
    if let Some(kind) = AnomalyKind::ALL
        .into_iter()
        .find(|k| global.get(*k) == Some(Action::Freeze))
    {
        return Err(ConfigError::new(format!("{SECTION}.actions.{kind}"), HINT));
    }
    for (pattern, route) in settings.routes.iter() {
        if let Some(kind) = AnomalyKind::ALL
            .into_iter()
            .find(|k| route.actions.get(*k) == Some(Action::Freeze))
        {
            let route = match pattern {
                "default" => pattern.to_string(),
                _ => format!("\"{pattern}\""),
            };
            return Err(ConfigError::new(
                format!("routes.{route}.{SECTION}.actions.{kind}"),
                HINT,
            ));
        }
    }
    Ok(())
}

impl Engine {
    pub(crate) fn new(settings: Settings) -> Result<Self, ConfigError> {
        settings.config.validate()?;
        check_freeze(&settings)?;
        let Settings {
            config,
            pseudonymizer,
            clock,
            client,
            freeze,
            throttle_store,
            penalties,
            responder,
            routes: policies,
        } = settings;
        let t = &config.throttle;
        let limit = Limit::new(
            u64::from(t.requests),
            t.period,
            u64::from(t.requests) + u64::from(t.burst),
        )
        .map_err(|e| ConfigError::new(format!("{SECTION}.throttle"), e))?;
        // The configured templates get the first indices of the sequence model.
        let templates = policies
            .table()
            .patterns()
            .map(|(_, pattern)| pattern)
            .filter(|p| p.starts_with('/') && !p.ends_with("/*"));
        let routes = RouteIndex::new(config.sequence.max_routes, templates);
        let p = &config.penalties;
        Ok(Engine {
            actions: AnomalyKind::ALL.map(|k| config.action(k)),
            policies: policies.map(AnomalyRoute::compile),
            hasher: KeyedHasher::from_pseudonymizer(&pseudonymizer),
            routes,
            volume: config.volume.enabled.then(|| VolumeDetector::new(&config.volume)),
            stuffing: config
                .stuffing
                .enabled
                .then(|| StuffingDetector::new(&config.stuffing)),
            enumeration: config
                .enumeration
                .enabled
                .then(|| EnumerationDetector::new(&config.enumeration)),
            token: config
                .token_sharing
                .enabled
                .then(|| TokenSharingDetector::new(&config.token_sharing)),
            sequence: config
                .sequence
                .enabled
                .then(|| SequenceDetector::new(&config.sequence)),
            penalties: penalties
                .unwrap_or_else(|| Arc::new(MemoryPenaltyBoard::new(p.max_entries, p.block.max(p.throttle)))),
            throttle: Throttle {
                store: throttle_store.unwrap_or_else(|| Arc::new(MemoryRateLimitStore::default())),
                limit,
                key: RateLimitKey::scoped(THROTTLE_SCOPE, pseudonymizer.digest(THROTTLE_NETWORK, b""))
                    .map_err(|e| ConfigError::new(format!("{SECTION}.throttle"), e))?,
            },
            block_nanos: duration_nanos(p.block),
            throttle_nanos: duration_nanos(p.throttle),
            clock,
            pseudonymizer,
            client,
            freeze,
            responder,
            config,
        })
    }

    pub(crate) fn sizes(&self) -> Vec<StateSize> {
        let mut out = Vec::new();
        let mut push = |name, len, capacity| out.push(StateSize { name, len, capacity });
        if let Some(d) = &self.volume {
            push("anomaly.volume", d.len(), d.capacity());
        }
        if let Some(d) = &self.stuffing {
            push("anomaly.stuffing", d.len(), d.capacity());
            push(
                "anomaly.stuffing.accounts",
                d.accounts().len(),
                d.accounts().capacity(),
            );
        }
        if let Some(d) = &self.enumeration {
            push("anomaly.enumeration", d.len(), d.capacity());
        }
        if let Some(d) = &self.sequence {
            push("anomaly.sequence.sessions", d.len(), d.capacity());
        }
        push(
            "anomaly.sequence.routes",
            self.routes.routes(),
            self.config.sequence.max_routes,
        );
        let (held, capacity) = self.penalties.size();
        push("anomaly.penalties", held, capacity);
        out
    }

    pub(crate) fn retention(&self, name: &str) -> Option<Duration> {
        match name {
            "anomaly.volume" => self.volume.as_ref().map(|d| d.map().retention()),
            "anomaly.stuffing" => self.stuffing.as_ref().map(|d| d.map().retention()),
            "anomaly.stuffing.accounts" => self.stuffing.as_ref().map(|d| d.accounts().retention()),
            "anomaly.enumeration" => self.enumeration.as_ref().map(|d| d.map().retention()),
            "anomaly.sequence.sessions" => self.sequence.as_ref().map(|d| d.map().retention()),
            "anomaly.penalties" => Some(self.penalties.retention()),
            _ => None,
        }
    }

    pub(crate) fn purge_expired(&self) {
        let now = self.clock.now().as_nanos();
        if let Some(d) = &self.volume {
            d.map().purge_expired(now);
        }
        if let Some(d) = &self.stuffing {
            d.map().purge_expired(now);
            d.accounts().purge_expired(now);
        }
        if let Some(d) = &self.enumeration {
            d.map().purge_expired(now);
        }
        if let Some(d) = &self.sequence {
            d.map().purge_expired(now);
        }
        self.penalties.purge_expired(Timestamp::from_nanos(now));
    }

    pub(crate) fn transition_share(&self, from: Option<&str>, to: &str) -> Option<f64> {
        let d = self.sequence.as_ref()?;
        let prev = match from {
            Some(f) => self.routes.lookup(Some(f)).idx,
            None => d.start(),
        };
        d.transition_share(prev, self.routes.lookup(Some(to)).idx)
    }

    /// The client's network, as every layer of the stack resolves it.
    fn network_of<B>(&self, req: &Request<B>) -> Option<NetworkPrefix> {
        self.client
            .resolve(req.extensions(), req.headers(), &self.pseudonymizer)
            .map(|client| client.network())
    }

    fn network_key(&self, network: &NetworkPrefix) -> u64 {
        // The compact byte form: one write into the hasher.
        let (bytes, len) = network.to_bytes();
        self.hasher.hash_bytes(KeyKind::Network, &bytes[..len])
    }

    fn action_for(&self, tags: AnomalyTags, policy: &CompiledPolicy) -> Action {
        tags.iter()
            .map(|(k, _)| policy.actions[k.index()].unwrap_or(self.actions[k.index()]))
            .max()
            .unwrap_or(Action::Record)
    }

    fn active_penalty(&self, key: Option<u64>, now: u64) -> Option<Penalty> {
        self.penalties
            .get(PenaltyKey::from_u64(key?), Timestamp::from_nanos(now))
    }

    fn penalize(&self, actor: u64, action: Action, tags: AnomalyTags, now: u64) {
        let duration = match action {
            Action::Block | Action::Freeze => self.block_nanos,
            Action::Throttle => self.throttle_nanos,
            Action::Record => return,
        };
        let action = if action == Action::Freeze {
            Action::Block
        } else {
            action
        };
        let penalty = Penalty {
            action,
            until: Timestamp::from_nanos(now.saturating_add(duration)),
            tags,
        };
        self.penalties
            .impose(PenaltyKey::from_u64(actor), penalty, Timestamp::from_nanos(now));
    }

    fn blocked() -> Problem {
        Problem::new(types::REQUEST_BLOCKED).with_detail("the anomaly policy blocked this request")
    }

    /// Spends one request of the throttle tier for this caller, at once if the store
    /// can answer without waiting.
    fn throttle_check(
        &self,
        principal: Option<&Principal>,
        network: Option<&NetworkPrefix>,
        now: Timestamp,
    ) -> ThrottleCheck {
        let digest = match (principal, network) {
            (Some(p), _) => p.credential_key(),
            (None, Some(n)) => {
                let (bytes, len) = n.to_bytes();
                self.pseudonymizer.digest(THROTTLE_NETWORK, &bytes[..len])
            }
            (None, None) => return ThrottleCheck::Within,
        };
        let key = self.throttle.key.with_digest(digest);
        let limits = std::slice::from_ref(&self.throttle.limit);
        match self.throttle.store.check_and_spend_now(&key, limits, 1, now) {
            Some(result) => match Self::throttle_answer(result) {
                Some(problem) => ThrottleCheck::Over(problem),
                None => ThrottleCheck::Within,
            },
            None => ThrottleCheck::Pending(PendingThrottle { key, now }),
        }
    }

    /// Asks the store a throttle decision that [`Engine::throttle_check`] left pending.
    pub(crate) async fn throttle_wait(&self, pending: PendingThrottle) -> Option<Problem> {
        let limits = std::slice::from_ref(&self.throttle.limit);
        let result = self
            .throttle
            .store
            .check_and_spend(&pending.key, limits, 1, pending.now)
            .await;
        Self::throttle_answer(result)
    }

    /// The 429 to answer, if the tier is spent. A store that cannot decide lets the
    /// request through: the throttle is added protection on top of the caller's own
    /// rate limit, and the store counts and logs its failures.
    fn throttle_answer(result: Result<Decision, StoreError>) -> Option<Problem> {
        let decision = result.ok().filter(|d| !d.allowed())?;
        let retry = decision.retry_after().div_ceil(1_000_000_000).max(1);
        Some(
            Problem::new(types::RATE_LIMITED)
                .with_detail("this caller is held to a stricter tier after an anomaly")
                .with_header(RETRY_AFTER, HeaderValue::from(retry)),
        )
    }

    /// Enforces `action` decided on this request (not in report-only mode).
    fn enforce(
        &self,
        action: Action,
        tags: AnomalyTags,
        actor: Option<u64>,
        principal: Option<&Principal>,
        network: Option<&NetworkPrefix>,
        now: Timestamp,
    ) -> Enforced {
        let n = now.as_nanos();
        match action {
            Action::Record => Enforced::Go,
            Action::Throttle => {
                if let Some(actor) = actor {
                    self.penalize(actor, Action::Throttle, tags, n);
                }
                Enforced::Throttle(self.throttle_check(principal, network, now))
            }
            Action::Block => {
                if let Some(actor) = actor {
                    self.penalize(actor, Action::Block, tags, n);
                }
                Enforced::Early(Early::Respond(Self::blocked()))
            }
            Action::Freeze => match (principal, &self.freeze) {
                (Some(p), Some(_)) => Enforced::Early(Early::Freeze {
                    freeze: self.freeze_of(FreezeTarget::Credential(p.credential_key()), tags, now),
                    actor,
                    tags,
                }),
                // Nothing to freeze without a credential: block the network instead.
                _ => self.enforce(Action::Block, tags, actor, principal, network, now),
            },
        }
    }

    /// This engine, as an identity to compare.
    fn id(&self) -> usize {
        self as *const Engine as usize
    }

    /// The penalty key of a credential.
    fn credential_hash(&self, credential: &KeyedDigest) -> u64 {
        self.hasher.hash(KeyKind::Credential, credential)
    }

    /// Who a penalty lands on: the credential if there is one, else the network.
    fn actor(&self, keys: &Keys) -> Option<u64> {
        match &keys.credential {
            Some(c) => Some(self.credential_hash(c)),
            None => keys.network,
        }
    }

    fn freeze_of(&self, target: FreezeTarget, tags: AnomalyTags, now: Timestamp) -> Freeze {
        let length = self.config.penalties.freeze;
        let mut reason = String::from("anomaly: ");
        reason.push_str(&tags.to_string());
        Freeze {
            target,
            reason,
            frozen_at: now,
            until: (!length.is_zero()).then(|| now.saturating_add(length)),
        }
    }

    /// The request phase of the inner layer.
    pub(crate) fn on_request<B>(self: &Arc<Self>, req: &mut Request<B>) -> (Option<Early>, Option<Post>) {
        let ext = req.extensions();
        let marker = ext.get::<FailureWatched>().copied();
        let watched = marker.is_some();
        let shared = marker.filter(|m| m.engine == self.id());
        let (route, policy) = match &shared {
            Some(m) => (m.route, m.policy),
            None => (
                self.routes
                    .lookup(ext.get::<MatchedPath>().map(MatchedPath::as_str)),
                *self.policies.get_for(req),
            ),
        };
        if policy.skip {
            return (None, None);
        }
        let (now_ts, network_key) = match shared.and_then(|m| m.seen) {
            Some((now, key)) => (now, Some(key)),
            None => (
                self.clock.now(),
                self.network_of(req).map(|n| self.network_key(&n)),
            ),
        };
        let now = now_ts.as_nanos();
        let ext = req.extensions();
        let principal = ext.carried::<Principal>();
        let session = ext.carried::<SessionInfo>();
        let credential = principal.map(Principal::credential_key);
        let mut keys = Keys {
            network: network_key,
            credential,
            enumeration: None,
        };

        let mut tags = AnomalyTags::default();
        let mut throttled = false;
        // Penalties from earlier requests. The outer watch layer already checked the network.
        if !self.penalties.is_empty() {
            let net = if watched { None } else { keys.network };
            for p in [
                self.active_penalty(credential.map(|c| self.credential_hash(&c)), now),
                self.active_penalty(net, now),
            ]
            .into_iter()
            .flatten()
            {
                tags.merge(p.tags);
                match p.action {
                    Action::Block | Action::Freeze => {
                        Record::refusal(tags, Action::Block).emit();
                        insert_tags(req, tags);
                        return (Some(Early::Respond(Self::blocked())), None);
                    }
                    Action::Throttle => throttled = true,
                    Action::Record => {}
                }
            }
        }

        let enabled = |k: AnomalyKind| policy.enabled(k);
        if let (Some(d), Some(s)) = (&self.token, session)
            && enabled(AnomalyKind::TokenSharing)
            && let Some(score) = d.score(s)
        {
            tags.insert(AnomalyKind::TokenSharing, score);
        }
        // One keyed hash of the subject serves the stuffing detector's sketch and,
        // mixed with a secret salt, the volume detector's key.
        let subject = principal
            .filter(|_| self.volume.is_some() || self.stuffing.is_some())
            .map(|p| self.hasher.rekey(KeyKind::Subject, p.subject_key().leading_u64()));
        if let Some(d) = &self.volume
            && enabled(AnomalyKind::Volume)
        {
            let key = match subject {
                Some(s) => Some(self.hasher.derive(KeyKind::Principal, s, 1)),
                None => keys.network.map(|n| self.hasher.derive(KeyKind::Principal, n, 0)),
            };
            if let Some(key) = key {
                let norm = d.norm(principal.map(|p| p.tier().as_str()));
                if let Some(score) = d.observe(key, norm, now) {
                    tags.insert(AnomalyKind::Volume, score);
                }
            }
        }
        if let (Some(d), Some(net)) = (&self.stuffing, keys.network)
            && enabled(AnomalyKind::CredentialStuffing)
        {
            let score = match subject {
                Some(s) => d.record_subject(net, s, now),
                None => d.check(net, now),
            };
            if let Some(score) = score {
                tags.insert(AnomalyKind::CredentialStuffing, score);
            }
        }
        let session_key = if self.enumeration.is_some() || self.sequence.is_some() {
            session
                .map(|s| self.hasher.rekey(KeyKind::Session, s.session.leading_u64()))
                .or_else(|| credential.map(|c| self.credential_hash(&c)))
                .or(keys.network)
        } else {
            None
        };
        if let (Some(d), Some(sk)) = (&self.enumeration, session_key)
            && enabled(AnomalyKind::Enumeration)
        {
            let key = self.hasher.derive(KeyKind::Enumeration, sk, u64::from(route.idx));
            keys.enumeration = Some(key);
            let template = match route.params {
                ParamShape::General => ext.get::<MatchedPath>().map_or("", MatchedPath::as_str),
                _ => "",
            };
            // Hashed before the detector takes its lock.
            let mut inline = [0u64; 4];
            let mut n = 0;
            let mut spill = Vec::new();
            let mut push = |id| match inline.get_mut(n) {
                Some(slot) => {
                    *slot = id;
                    n += 1;
                }
                None => spill.push(id),
            };
            match route.params {
                ParamShape::None => {}
                // The common shapes, walked here rather than through the iterator.
                ParamShape::Right(mut mask) => {
                    let mut rest = Some(req.uri().path());
                    while mask != 0
                        && let Some(segment) = next_back(&mut rest)
                    {
                        if mask & 1 != 0 {
                            push(self.hasher.hash_bytes(KeyKind::ObjectId, segment.as_bytes()));
                        }
                        mask >>= 1;
                    }
                }
                ParamShape::General => {
                    let path = req.uri().path();
                    ParamIds::with_shape(route.params, template, path, &self.hasher).for_each(push);
                }
            }
            let ids = inline[..n].iter().chain(&spill).copied();
            if let Some(score) = d.observe_request(key, route.idx, ids, now) {
                tags.insert(AnomalyKind::Enumeration, score);
            }
        }
        let mut transition = None;
        if let Some(d) = &self.sequence
            && enabled(AnomalyKind::UnusualSequence)
            && (principal.is_some() || session.is_some())
            && let Some(sk) = session_key
        {
            let (step, score) = d.observe(sk, route.idx, now);
            transition = Some(step);
            if let Some(score) = score {
                tags.insert(AnomalyKind::UnusualSequence, score);
            }
        }

        let action = self.action_for(tags, &policy);
        let mut record = Record { tags, action: None };
        let mut enforced = Enforced::Go;
        if action > Action::Record {
            if self.config.report_only {
                record.action = Some(action.would());
            } else {
                record.action = Some(action.as_str());
                let network = self.network_of(req);
                enforced = self.enforce(
                    action,
                    tags,
                    self.actor(&keys),
                    principal,
                    network.as_ref(),
                    now_ts,
                );
            }
        }
        if throttled && matches!(enforced, Enforced::Go) {
            let network = self.network_of(req);
            enforced = Enforced::Throttle(self.throttle_check(principal, network.as_ref(), now_ts));
        }
        if !tags.is_empty() {
            insert_tags(req, tags);
        }
        let early = match enforced {
            Enforced::Early(early) => early,
            Enforced::Throttle(ThrottleCheck::Over(problem)) => {
                record.action = Some(Action::Throttle.as_str());
                Early::Respond(problem)
            }
            Enforced::Go | Enforced::Throttle(ThrottleCheck::Within) => {
                let post = self.post(now_ts, keys, policy, transition, record, watched);
                return (None, Some(post));
            }
            Enforced::Throttle(ThrottleCheck::Pending(pending)) => {
                let post = self.post(now_ts, keys, policy, transition, record, watched);
                return (Some(Early::Throttle(pending, post)), None);
            }
        };
        record.emit();
        (Some(early), None)
    }

    fn post(
        self: &Arc<Self>,
        now: Timestamp,
        keys: Keys,
        policy: CompiledPolicy,
        transition: Option<Step>,
        record: Record,
        watched: bool,
    ) -> Post {
        Post {
            engine: Arc::clone(self),
            now,
            keys,
            policy,
            transition,
            record,
            count_failures: !watched,
        }
    }

    /// Finishes a request whose throttle decision waited on the store: the 429 to
    /// answer (recorded), or the response phase to run after the handler.
    pub(crate) async fn throttle_then(
        &self,
        pending: PendingThrottle,
        mut post: Post,
    ) -> Result<Post, Problem> {
        match self.throttle_wait(pending).await {
            None => Ok(post),
            Some(problem) => {
                post.record.action = Some(Action::Throttle.as_str());
                post.record.emit();
                Err(problem)
            }
        }
    }

    /// The request phase of the outer watch layer: blocks or throttles networks under
    /// a penalty, and marks the request so the inner layer leaves 401s to it.
    pub(crate) fn on_watch_request<B>(self: &Arc<Self>, req: &mut Request<B>) -> WatchStart {
        let route = self
            .routes
            .lookup(req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
        let policy = *self.policies.get_for(req);
        let mut marker = FailureWatched {
            engine: self.id(),
            route,
            policy,
            seen: None,
        };
        let network = if policy.skip || !policy.enabled(AnomalyKind::CredentialStuffing) {
            None
        } else {
            self.network_of(req)
        };
        let Some(network) = network else {
            req.extensions_mut().insert(marker);
            return WatchStart::Pass(None);
        };
        let key = self.network_key(&network);
        let now = self.clock.now();
        marker.seen = Some((now, key));
        req.extensions_mut().insert(marker);
        // Nothing to count in the response phase without the stuffing detector.
        let watch = self.stuffing.is_some().then(|| Watch {
            engine: Arc::clone(self),
            state: WatchState {
                network: key,
                policy,
                now,
            },
        });
        let Some(p) = self.active_penalty(Some(key), now.as_nanos()) else {
            return WatchStart::Pass(watch);
        };
        let (action, problem) = match p.action {
            Action::Block | Action::Freeze => (Action::Block, Self::blocked()),
            Action::Throttle => match self.throttle_check(None, Some(&network), now) {
                ThrottleCheck::Over(problem) => (Action::Throttle, problem),
                ThrottleCheck::Within => return WatchStart::Pass(watch),
                ThrottleCheck::Pending(pending) => return WatchStart::Throttle(pending, p.tags, watch),
            },
            Action::Record => return WatchStart::Pass(watch),
        };
        Record::refusal(p.tags, action).emit();
        WatchStart::Respond(problem)
    }

    /// Finishes the outer watch's throttle decision that waited on the store: the 429
    /// to answer (recorded), if the network's tier is spent.
    pub(crate) async fn watch_throttle(
        &self,
        pending: PendingThrottle,
        tags: AnomalyTags,
    ) -> Option<Problem> {
        let problem = self.throttle_wait(pending).await?;
        Record::refusal(tags, Action::Throttle).emit();
        Some(problem)
    }

    /// Counts the login outcome of a response from `network`: a 401, or what a
    /// login handler reported with a [`LoginAttempt`] (taken out of the response,
    /// so the account name goes no further). The stuffing score, if tagged.
    fn count_login(&self, network: u64, response: &mut Response, now: u64) -> Option<u8> {
        let d = self.stuffing.as_ref()?;
        let attempt = response.extensions_mut().remove::<LoginAttempt>();
        let account = attempt
            .as_ref()
            .map(|a| self.hasher.hash_bytes(KeyKind::Account, a.account_bytes()));
        match (attempt.map(|a| a.outcome()), account) {
            (Some(LoginOutcome::Succeeded), Some(account)) => d.record_login(network, account, now),
            (Some(LoginOutcome::Failed), _) => d.record_failure(network, account, now),
            _ if response.status() == StatusCode::UNAUTHORIZED => d.record_failure(network, None, now),
            _ => None,
        }
    }

    /// The response phase of the outer watch layer: counts failed logins.
    fn on_watch_response(&self, watch: &WatchState, response: &mut Response) {
        let now = watch.now.as_nanos();
        let network = watch.network;
        let Some(score) = self.count_login(network, response, now) else {
            return;
        };
        let mut tags = response
            .extensions()
            .get::<AnomalyTags>()
            .copied()
            .unwrap_or_default();
        tags.insert(AnomalyKind::CredentialStuffing, score);
        let mut only = AnomalyTags::default();
        only.insert(AnomalyKind::CredentialStuffing, score);
        let action = self.action_for(only, &watch.policy);
        let record = Record {
            tags,
            action: self.response_action(action, only, network, now),
        };
        self.finish_response(response, record);
    }

    /// Penalizes the caller for an action decided in the response phase; the name to record.
    fn response_action(
        &self,
        action: Action,
        tags: AnomalyTags,
        actor: u64,
        now: u64,
    ) -> Option<&'static str> {
        if action == Action::Record {
            return None;
        }
        if self.config.report_only {
            return Some(action.would());
        }
        self.penalize(actor, action, tags, now);
        Some(action.as_str())
    }

    fn finish_response(&self, response: &mut Response, record: Record) {
        if record.tags.is_empty() {
            return;
        }
        response.extensions_mut().insert(record.tags);
        record.emit();
        if self.config.debug_header
            && let Ok(value) = HeaderValue::from_str(record.render().as_str())
        {
            response.headers_mut().insert(DEBUG_HEADER, value);
        }
    }
}

fn frozen() -> Problem {
    Problem::new(types::CREDENTIAL_FROZEN)
        .with_detail("the anomaly policy froze this credential")
        .with_header(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        )
}

/// Adds `tags` to the request's (one map lookup when there were none).
fn insert_tags<B>(req: &mut Request<B>, tags: AnomalyTags) {
    let ext = req.extensions_mut();
    if let Some(mut existing) = ext.insert(tags) {
        existing.merge(tags);
        ext.insert(existing);
    }
}

impl Post {
    /// The response phase of the inner layer. Returns a freeze to run before the
    /// response goes out, if the response phase decided one.
    pub(crate) fn finish(self, response: &mut Response) -> Option<BoxFuture<()>> {
        let engine = &*self.engine;
        let now_ts = self.now;
        let now = now_ts.as_nanos();
        let status = response.status();
        let mut fresh = AnomalyTags::default();
        if self.count_failures
            && let Some(net) = self.keys.network
            && self.policy.enabled(AnomalyKind::CredentialStuffing)
            && let Some(score) = engine.count_login(net, response, now)
        {
            fresh.insert(AnomalyKind::CredentialStuffing, score);
        }
        if let (Some(d), Some(key)) = (&engine.enumeration, self.keys.enumeration)
            && let Some(score) = d.observe_status(key, status.as_u16(), now)
        {
            fresh.insert(AnomalyKind::Enumeration, score);
        }
        // Tags the request phase already acted on are not acted on twice.
        for (kind, _) in self.record.tags.iter() {
            fresh.remove(kind);
        }
        let mut record = self.record;
        record.tags.merge(fresh);
        let mut freeze = None;
        if !fresh.is_empty() {
            let action = engine.action_for(fresh, &self.policy);
            match (action, &engine.freeze, self.keys.credential) {
                (Action::Freeze, Some(list), Some(credential)) if !engine.config.report_only => {
                    let target = FreezeTarget::Credential(credential);
                    let entry = engine.freeze_of(target, fresh, now_ts);
                    let list = Arc::clone(list);
                    let engine = Arc::clone(&self.engine);
                    let actor = engine.actor(&self.keys);
                    freeze = Some(Box::pin(async move {
                        if let Err(e) = list.freeze(entry).await {
                            freeze_failed(&engine, actor, fresh, &e);
                        }
                    }) as BoxFuture<()>);
                    record.action = Some(Action::Freeze.as_str());
                }
                _ => {
                    if let Some(actor) = engine.actor(&self.keys)
                        && let Some(name) = engine.response_action(action, fresh, actor, now)
                    {
                        record.action = Some(name);
                    }
                }
            }
        }
        let mut others = record.tags;
        others.remove(AnomalyKind::UnusualSequence);
        if others.is_empty()
            && let (Some(d), Some(step)) = (&engine.sequence, self.transition)
        {
            let self_tagged = record.tags.contains(AnomalyKind::UnusualSequence);
            if SequenceDetector::may_learn(&step, self_tagged) {
                d.learn(step, self_tagged, now);
            }
        }
        engine.finish_response(response, record);
        if record.tags.is_empty() && record.action.is_some() {
            record.emit();
        }
        freeze
    }
}

/// Records a freeze failure: the freeze list refused (full or unreachable), so the
/// caller is blocked in process instead.
fn freeze_failed(engine: &Engine, actor: Option<u64>, tags: AnomalyTags, error: &StoreError) {
    tracing::warn!(error = %error, "anomaly: freeze failed; blocking in process instead");
    if let Some(actor) = actor {
        engine.penalize(actor, Action::Block, tags, engine.clock.now().as_nanos());
    }
}

impl Engine {
    /// Runs a freeze decided before the handler, then answers 401 `credential-frozen`
    /// (or 403 `request-blocked` if the freeze list refused).
    pub(crate) fn run_freeze<E: 'static>(
        self: &Arc<Self>,
        freeze: Freeze,
        actor: Option<u64>,
        tags: AnomalyTags,
    ) -> BoxResponseFuture<E> {
        let engine = Arc::clone(self);
        Box::pin(async move {
            let result = match &engine.freeze {
                Some(list) => list.freeze(freeze).await,
                None => Err(StoreError::Unavailable("no freeze list".into())),
            };
            Ok(match result {
                Ok(()) => engine.responder.respond(frozen()),
                Err(e) => {
                    freeze_failed(&engine, actor, tags, &e);
                    engine.responder.respond(Engine::blocked())
                }
            })
        })
    }
}
