//! The state the anomaly layers share, and what they do per request.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath};
use axum::response::Response;
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Request, StatusCode};
use tollgate_core::clock::SharedClock;
use tollgate_core::problem::types;
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    ClientConfig, ClientContext, Freeze, FreezeList, FreezeTarget, NetworkPrefix, Principal, Problem,
    ProblemResponder, Pseudonymizer, SessionInfo, StoreError, Timestamp, fields,
};
use tollgate_ratelimit::{Limit, MemoryRateLimitStore, RateLimitKey};

use crate::bounded::BoundedMap;
use crate::config::{Action, AnomalyConfig, CompiledPolicy, RoutePolicy, secs};
use crate::detectors::{
    EnumerationDetector, RouteIndex, SequenceDetector, Step, StuffingDetector, TokenSharingDetector,
    VolumeDetector,
};
use crate::hash::{KeyKind, KeyedHasher};
use crate::tags::{AnomalyKind, AnomalyTags, KIND_COUNT};

/// The debug response header carrying the tags (only when `debug_header` is on).
pub const DEBUG_HEADER: HeaderName = HeaderName::from_static("x-tollgate-anomaly");

/// The rate-limit scope of the throttle tier's cells (store keys `tollgate:rl:anomaly-throttle:{digest}`).
pub const THROTTLE_SCOPE: &str = "anomaly-throttle";

/// The pseudonym domain of network digests used as throttle keys.
const THROTTLE_NETWORK: Domain = Domain::new("anomaly-throttle-network");

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A freeze list behind a trait object: freezing is rare, so its boxed future costs
/// nothing on the common path, and the layer is not generic over the backend.
pub(crate) trait ErasedFreeze: Send + Sync {
    fn freeze(&self, freeze: Freeze) -> BoxFuture<Result<(), StoreError>>;
}

impl<F: FreezeList> ErasedFreeze for F {
    fn freeze(&self, freeze: Freeze) -> BoxFuture<Result<(), StoreError>> {
        let list = self.clone();
        Box::pin(async move { list.freeze(freeze).await })
    }
}

/// A penalty on one caller (a credential or a network).
#[derive(Clone, Copy, Debug, Default)]
struct Penalty {
    action: Action,
    until: u64,
    tags: AnomalyTags,
}

/// The keys of one request, all keyed hashes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Keys {
    pub network: Option<u64>,
    pub credential: Option<u64>,
    pub enumeration: Option<u64>,
}

impl Keys {
    /// Who a penalty lands on: the credential if there is one, else the network.
    fn actor(&self) -> Option<u64> {
        self.credential.or(self.network)
    }
}

/// What the `anomaly` span field and the debug header show: `kind:score` pairs,
/// then `;action=...` when an action was taken (or would be, in report-only mode).
#[derive(Clone, Copy)]
pub(crate) struct Record {
    pub tags: AnomalyTags,
    pub action: Option<&'static str>,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.tags, f)?;
        if let Some(action) = self.action {
            write!(f, ";action={action}")?;
        }
        Ok(())
    }
}

impl Record {
    pub fn emit(&self) {
        if !self.tags.is_empty() || self.action.is_some() {
            tracing::Span::current().record(fields::ANOMALY, tracing::field::display(self));
        }
    }
}

/// An answer given before the handler runs.
pub(crate) enum Early {
    Respond(Problem),
    Freeze {
        freeze: Freeze,
        actor: Option<u64>,
        tags: AnomalyTags,
    },
}

/// What the response phase needs from the request phase.
pub(crate) struct Post {
    engine: Arc<Engine>,
    keys: Keys,
    policy: CompiledPolicy,
    /// The sequence step, to learn if no other detector tags the request.
    transition: Option<Step>,
    record: Record,
    count_failures: bool,
    freeze_target: Option<FreezeTarget>,
}

/// Marks a request whose 401s the outer [`crate::FailureWatchLayer`] counts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FailureWatched;

/// The sizes of the detectors' state, for memory checks and admin views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateSize {
    /// The state's name, as in the data inventory.
    pub name: &'static str,
    /// Entries held now.
    pub len: usize,
    /// The most entries it can hold.
    pub capacity: usize,
}

pub(crate) struct Throttle {
    store: MemoryRateLimitStore,
    limit: Limit,
    key: RateLimitKey,
}

/// The shared state of an [`crate::AnomalyLayer`] and its [`crate::FailureWatchLayer`].
pub(crate) struct Engine {
    pub config: AnomalyConfig,
    actions: [Action; KIND_COUNT],
    hasher: KeyedHasher,
    routes: RouteIndex,
    volume: Option<VolumeDetector>,
    stuffing: Option<StuffingDetector>,
    enumeration: Option<EnumerationDetector>,
    token: Option<TokenSharingDetector>,
    sequence: Option<SequenceDetector>,
    penalties: BoundedMap<Penalty>,
    throttle: Throttle,
    clock: SharedClock,
    pseudonymizer: Pseudonymizer,
    client: ClientConfig,
    pub freeze: Option<Arc<dyn ErasedFreeze>>,
    pub responder: ProblemResponder,
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

impl Engine {
    pub fn new(
        config: AnomalyConfig,
        pseudonymizer: Pseudonymizer,
        clock: SharedClock,
        client: ClientConfig,
        freeze: Option<Arc<dyn ErasedFreeze>>,
        throttle_store: Option<MemoryRateLimitStore>,
        responder: ProblemResponder,
    ) -> Result<Self, crate::ConfigError> {
        config.validate()?;
        if freeze.is_none() && config.uses(Action::Freeze) {
            return Err(crate::ConfigError::new(
                "actions",
                "an action is `freeze` but no freeze list was given (AnomalyLayerBuilder::freeze_list)",
            ));
        }
        let t = &config.throttle;
        let limit = Limit::new(
            u64::from(t.requests),
            secs(t.period_secs),
            u64::from(t.requests) + u64::from(t.burst),
        )
        .map_err(|e| crate::ConfigError::new("throttle", e.to_string()))?;
        let routes = RouteIndex::new(
            config.sequence.max_routes,
            config.routes.iter().map(|(k, v)| (k.clone(), v.compile())),
        );
        let p = &config.penalties;
        Ok(Engine {
            actions: AnomalyKind::ALL.map(|k| config.action(k)),
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
            penalties: BoundedMap::new(p.max_entries, secs(p.block_secs.max(p.throttle_secs))),
            throttle: Throttle {
                store: throttle_store.unwrap_or_default(),
                limit,
                key: RateLimitKey::scoped(THROTTLE_SCOPE, pseudonymizer.digest(THROTTLE_NETWORK, b""))
                    .map_err(|e| crate::ConfigError::new("throttle", e.to_string()))?,
            },
            block_nanos: p.block_secs * 1_000_000_000,
            throttle_nanos: p.throttle_secs * 1_000_000_000,
            clock,
            pseudonymizer,
            client,
            freeze,
            responder,
            config,
        })
    }

    pub fn sizes(&self) -> Vec<StateSize> {
        let mut out = Vec::new();
        let mut push = |name, len, capacity| out.push(StateSize { name, len, capacity });
        if let Some(d) = &self.volume {
            push("anomaly.volume", d.len(), d.capacity());
        }
        if let Some(d) = &self.stuffing {
            push("anomaly.stuffing", d.len(), d.capacity());
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
        push(
            "anomaly.penalties",
            self.penalties.len(),
            self.penalties.capacity(),
        );
        out
    }

    pub fn retention(&self, name: &str) -> Option<Duration> {
        match name {
            "anomaly.volume" => self.volume.as_ref().map(|d| d.map().retention()),
            "anomaly.stuffing" => self.stuffing.as_ref().map(|d| d.map().retention()),
            "anomaly.enumeration" => self.enumeration.as_ref().map(|d| d.map().retention()),
            "anomaly.sequence.sessions" => self.sequence.as_ref().map(|d| d.map().retention()),
            "anomaly.penalties" => Some(self.penalties.retention()),
            _ => None,
        }
    }

    pub fn purge_expired(&self) {
        let now = self.clock.now().as_nanos();
        if let Some(d) = &self.volume {
            d.map().purge_expired(now);
        }
        if let Some(d) = &self.stuffing {
            d.map().purge_expired(now);
        }
        if let Some(d) = &self.enumeration {
            d.map().purge_expired(now);
        }
        if let Some(d) = &self.sequence {
            d.map().purge_expired(now);
        }
        self.penalties.purge_expired(now);
    }

    pub fn transition_share(&self, from: Option<&str>, to: &str) -> Option<f64> {
        let d = self.sequence.as_ref()?;
        let prev = match from {
            Some(f) => self.routes.lookup(Some(f)).0,
            None => d.start(),
        };
        d.transition_share(prev, self.routes.lookup(Some(to)).0)
    }

    fn network_of<B>(&self, req: &Request<B>) -> Option<NetworkPrefix> {
        if let Some(ctx) = req.extensions().get::<ClientContext>() {
            return Some(ctx.network());
        }
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
        Some(
            self.client
                .context(peer, req.headers(), &self.pseudonymizer)
                .network(),
        )
    }

    fn network_key(&self, network: &NetworkPrefix) -> u64 {
        self.hasher.hash(KeyKind::Network, network)
    }

    fn action_for(&self, tags: AnomalyTags, policy: &CompiledPolicy) -> Action {
        tags.iter()
            .map(|(k, _)| policy.actions[k.index()].unwrap_or(self.actions[k.index()]))
            .max()
            .unwrap_or(Action::Record)
    }

    fn active_penalty(&self, key: Option<u64>, now: u64) -> Option<Penalty> {
        let key = key?;
        self.penalties
            .get(key, now, |p| *p)
            .filter(|p| now < p.until && p.action > Action::Record)
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
        let until = now.saturating_add(duration);
        self.penalties.update(actor, now, Penalty::default, |p| {
            if now >= p.until || action >= p.action {
                p.action = action;
                p.until = p.until.max(until);
            }
            p.tags.merge(tags);
        });
    }

    fn blocked() -> Problem {
        Problem::new(types::REQUEST_BLOCKED).with_detail("the anomaly policy blocked this request")
    }

    /// Spends one request of the throttle tier for this caller; the problem to answer
    /// if it is over.
    fn throttle_check(
        &self,
        principal: Option<&Principal>,
        network: Option<&NetworkPrefix>,
        now: Timestamp,
    ) -> Option<Problem> {
        let digest = match (principal, network) {
            (Some(p), _) => p.credential_key(),
            (None, Some(n)) => {
                let (bytes, len) = n.to_bytes();
                self.pseudonymizer.digest(THROTTLE_NETWORK, &bytes[..len])
            }
            (None, None) => return None,
        };
        let key = self.throttle.key.with_digest(digest);
        let decision = self
            .throttle
            .store
            .decide(&key, std::slice::from_ref(&self.throttle.limit), 1, now);
        if decision.allowed() {
            return None;
        }
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
        keys: &Keys,
        principal: Option<&Principal>,
        network: Option<&NetworkPrefix>,
        now: Timestamp,
    ) -> Option<Early> {
        let n = now.as_nanos();
        match action {
            Action::Record => None,
            Action::Throttle => {
                if let Some(actor) = keys.actor() {
                    self.penalize(actor, Action::Throttle, tags, n);
                }
                self.throttle_check(principal, network, now).map(Early::Respond)
            }
            Action::Block => {
                if let Some(actor) = keys.actor() {
                    self.penalize(actor, Action::Block, tags, n);
                }
                Some(Early::Respond(Self::blocked()))
            }
            Action::Freeze => match (principal, &self.freeze) {
                (Some(p), Some(_)) => Some(Early::Freeze {
                    freeze: self.freeze_of(FreezeTarget::Credential(p.credential_key()), tags, now),
                    actor: keys.actor(),
                    tags,
                }),
                // Nothing to freeze without a credential: block the network instead.
                _ => self.enforce(Action::Block, tags, keys, principal, network, now),
            },
        }
    }

    fn freeze_of(&self, target: FreezeTarget, tags: AnomalyTags, now: Timestamp) -> Freeze {
        let secs = self.config.penalties.freeze_secs;
        let mut reason = String::from("anomaly: ");
        reason.push_str(&tags.to_string());
        Freeze {
            target,
            reason,
            frozen_at: now,
            until: (secs > 0).then(|| now.saturating_add(Duration::from_secs(secs))),
        }
    }

    fn policy<B>(&self, req: &Request<B>, configured: Option<CompiledPolicy>) -> CompiledPolicy {
        match req.extensions().get::<RoutePolicy>() {
            Some(p) => p.compile(),
            None => configured.unwrap_or_default(),
        }
    }

    /// The request phase of the inner layer.
    pub fn on_request<B>(self: &Arc<Self>, req: &mut Request<B>) -> (Option<Early>, Option<Post>) {
        let now_ts = self.clock.now();
        let now = now_ts.as_nanos();
        let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let (route_idx, configured) = self.routes.lookup(route);
        let policy = self.policy(req, configured);
        if policy.skip {
            return (None, None);
        }
        let ext = req.extensions();
        let principal = ext.get::<Principal>();
        let session = ext.get::<SessionInfo>();
        let watched = ext.get::<FailureWatched>().is_some();
        let network = self.network_of(req);
        let keys_network = network.as_ref().map(|n| self.network_key(n));
        let credential = principal.map(|p| self.hasher.hash(KeyKind::Credential, &p.credential_key()));
        let session_key = session
            .map(|s| self.hasher.hash(KeyKind::Session, &s.session))
            .or(credential)
            .or(keys_network);
        let mut keys = Keys {
            network: keys_network,
            credential,
            enumeration: None,
        };

        let mut tags = AnomalyTags::default();
        let mut throttled = false;
        // Penalties from earlier requests. The outer watch layer already checked the network.
        if !self.penalties.is_empty() {
            let net = if watched { None } else { keys.network };
            for p in [
                self.active_penalty(credential, now),
                self.active_penalty(net, now),
            ]
            .into_iter()
            .flatten()
            {
                tags.merge(p.tags);
                match p.action {
                    Action::Block | Action::Freeze => {
                        let record = Record {
                            tags,
                            action: Some(Action::Block.as_str()),
                        };
                        record.emit();
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
        if let Some(d) = &self.volume
            && enabled(AnomalyKind::Volume)
        {
            let key = match principal {
                Some(p) => Some(self.hasher.hash(KeyKind::Principal, &p.subject_key())),
                None => keys
                    .network
                    .map(|n| self.hasher.combine(KeyKind::Principal, n, 0)),
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
            let score = match principal {
                Some(p) => d.record_subject(net, self.hasher.hash(KeyKind::Subject, &p.subject_key()), now),
                None => d.check(net, now),
            };
            if let Some(score) = score {
                tags.insert(AnomalyKind::CredentialStuffing, score);
            }
        }
        if let (Some(d), Some(sk)) = (&self.enumeration, session_key)
            && enabled(AnomalyKind::Enumeration)
        {
            let key = self
                .hasher
                .combine(KeyKind::Enumeration, sk, u64::from(route_idx));
            keys.enumeration = Some(key);
            let ids = ParamIds::new(route.unwrap_or(""), req.uri().path(), &self.hasher);
            if let Some(score) = d.observe_request(key, ids, now) {
                tags.insert(AnomalyKind::Enumeration, score);
            }
        }
        let mut transition = None;
        if let Some(d) = &self.sequence
            && enabled(AnomalyKind::UnusualSequence)
            && (principal.is_some() || session.is_some())
            && let Some(sk) = session_key
        {
            let (step, score) = d.observe(sk, route_idx, now);
            transition = Some(step);
            if let Some(score) = score {
                tags.insert(AnomalyKind::UnusualSequence, score);
            }
        }

        let action = self.action_for(tags, &policy);
        let mut record = Record { tags, action: None };
        let mut early = None;
        if action > Action::Record {
            if self.config.report_only {
                record.action = Some(action.would());
            } else {
                record.action = Some(action.as_str());
                early = self.enforce(action, tags, &keys, principal, network.as_ref(), now_ts);
                if action == Action::Throttle {
                    throttled = false; // already spent by `enforce`
                }
            }
        }
        if throttled && early.is_none() {
            early = self
                .throttle_check(principal, network.as_ref(), now_ts)
                .map(Early::Respond);
            if early.is_some() {
                record.action = Some(Action::Throttle.as_str());
            }
        }
        let freeze_target = principal.map(|p| FreezeTarget::Credential(p.credential_key()));
        if !tags.is_empty() {
            insert_tags(req, tags);
        }
        if early.is_some() {
            record.emit();
            return (early, None);
        }
        let post = Post {
            engine: Arc::clone(self),
            keys,
            policy,
            transition,
            record,
            count_failures: !watched,
            freeze_target,
        };
        (None, Some(post))
    }

    /// The request phase of the outer watch layer: blocks or throttles networks under
    /// a penalty, and marks the request so the inner layer leaves 401s to it.
    pub fn on_watch_request<B>(
        &self,
        req: &mut Request<B>,
    ) -> (Option<Problem>, Option<(u64, CompiledPolicy)>) {
        req.extensions_mut().insert(FailureWatched);
        let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let (_, configured) = self.routes.lookup(route);
        let policy = self.policy(req, configured);
        if policy.skip || !policy.enabled(AnomalyKind::CredentialStuffing) {
            return (None, None);
        }
        let Some(network) = self.network_of(req) else {
            return (None, None);
        };
        let key = self.network_key(&network);
        let now = self.clock.now();
        if let Some(p) = self.active_penalty(Some(key), now.as_nanos()) {
            let problem = match p.action {
                Action::Block | Action::Freeze => Some(Self::blocked()),
                Action::Throttle => self.throttle_check(None, Some(&network), now),
                Action::Record => None,
            };
            if let Some(problem) = problem {
                let record = Record {
                    tags: p.tags,
                    action: Some(if problem.status() == StatusCode::FORBIDDEN {
                        Action::Block.as_str()
                    } else {
                        Action::Throttle.as_str()
                    }),
                };
                record.emit();
                return (Some(problem), None);
            }
        }
        (None, Some((key, policy)))
    }

    /// The response phase of the outer watch layer: counts 401s per network.
    pub fn on_watch_response(&self, network: u64, policy: &CompiledPolicy, response: &mut Response) {
        if response.status() != StatusCode::UNAUTHORIZED {
            return;
        }
        let Some(d) = &self.stuffing else { return };
        let now = self.clock.now().as_nanos();
        let Some(score) = d.record_failure(network, now) else {
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
        let action = self.action_for(only, policy);
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
            && let Ok(value) = HeaderValue::from_str(&record.to_string())
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

fn insert_tags<B>(req: &mut Request<B>, tags: AnomalyTags) {
    let ext = req.extensions_mut();
    match ext.get_mut::<AnomalyTags>() {
        Some(existing) => existing.merge(tags),
        None => {
            ext.insert(tags);
        }
    }
}

impl Post {
    /// The response phase of the inner layer. Returns a freeze to run before the
    /// response goes out, if the response phase decided one.
    pub fn finish(self, response: &mut Response) -> Option<BoxFuture<()>> {
        let engine = &*self.engine;
        let now_ts = engine.clock.now();
        let now = now_ts.as_nanos();
        let status = response.status();
        let mut fresh = AnomalyTags::default();
        if self.count_failures
            && status == StatusCode::UNAUTHORIZED
            && let (Some(d), Some(net)) = (&engine.stuffing, self.keys.network)
            && self.policy.enabled(AnomalyKind::CredentialStuffing)
            && let Some(score) = d.record_failure(net, now)
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
            match (action, &engine.freeze, self.freeze_target) {
                (Action::Freeze, Some(list), Some(target)) if !engine.config.report_only => {
                    let pending = list.freeze(engine.freeze_of(target, fresh, now_ts));
                    let engine = Arc::clone(&self.engine);
                    let actor = self.keys.actor();
                    freeze = Some(Box::pin(async move {
                        if let Err(e) = pending.await {
                            freeze_failed(&engine, actor, fresh, &e);
                        }
                    }) as BoxFuture<()>);
                    record.action = Some(Action::Freeze.as_str());
                }
                _ => {
                    if let Some(actor) = self.keys.actor()
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
            d.learn(step, record.tags.contains(AnomalyKind::UnusualSequence), now);
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
    pub fn run_freeze(
        self: &Arc<Self>,
        freeze: Freeze,
        actor: Option<u64>,
        tags: AnomalyTags,
    ) -> BoxFuture<Response> {
        let engine = Arc::clone(self);
        let list = self.freeze.clone();
        Box::pin(async move {
            let result = match list {
                Some(list) => list.freeze(freeze).await,
                None => Err(StoreError::Unavailable("no freeze list".into())),
            };
            match result {
                Ok(()) => engine.responder.respond(frozen()),
                Err(e) => {
                    freeze_failed(&engine, actor, tags, &e);
                    engine.responder.respond(Engine::blocked())
                }
            }
        })
    }
}

/// Keyed hashes of the path segments that the route template marks as parameters
/// (`{id}`, or a segment containing one; `{*rest}` takes the rest of the path).
///
/// Without a wildcard, template and path are aligned from the right, so a router
/// nested under a stripped prefix still lines up. Nothing is allocated and no
/// segment value is kept.
pub(crate) struct ParamIds<'a> {
    template: std::str::RSplit<'a, char>,
    path: std::str::RSplit<'a, char>,
    wildcard: Option<(std::str::Split<'a, char>, &'a str)>,
    hasher: &'a KeyedHasher,
}

impl<'a> ParamIds<'a> {
    pub fn new(template: &'a str, path: &'a str, hasher: &'a KeyedHasher) -> Self {
        let empty = "".rsplit('/');
        if !template.contains('{') {
            return ParamIds {
                template: empty.clone(),
                path: empty,
                wildcard: None,
                hasher,
            };
        }
        if template.contains("{*") {
            return ParamIds {
                template: empty.clone(),
                path: empty,
                wildcard: Some((
                    template.trim_start_matches('/').split('/'),
                    path.trim_start_matches('/'),
                )),
                hasher,
            };
        }
        ParamIds {
            template: template.rsplit('/'),
            path: path.rsplit('/'),
            wildcard: None,
            hasher,
        }
    }
}

impl Iterator for ParamIds<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if let Some((template, rest)) = &mut self.wildcard {
            // Left-aligned walk for templates with a trailing wildcard.
            loop {
                let t = template.next()?;
                if t.starts_with("{*") {
                    let value = *rest;
                    self.wildcard = None;
                    return Some(self.hasher.hash_bytes(KeyKind::ObjectId, value.as_bytes()));
                }
                let (segment, after) = rest.split_once('/').unwrap_or((rest, ""));
                *rest = after;
                if t.contains('{') {
                    return Some(self.hasher.hash_bytes(KeyKind::ObjectId, segment.as_bytes()));
                }
            }
        }
        loop {
            let t = self.template.next()?;
            let p = self.path.next()?;
            if t.contains('{') {
                return Some(self.hasher.hash_bytes(KeyKind::ObjectId, p.as_bytes()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(template: &str, path: &str) -> Vec<u64> {
        let h = KeyedHasher::new([5; 16]);
        ParamIds::new(template, path, &h).collect()
    }

    fn id(value: &str) -> u64 {
        KeyedHasher::new([5; 16]).hash_bytes(KeyKind::ObjectId, value.as_bytes())
    }

    #[test]
    fn param_segments_are_hashed() {
        assert_eq!(ids("/v1/items/{id}", "/v1/items/42"), vec![id("42")]);
        assert_eq!(
            ids("/v1/users/{user}/orders/{order}", "/v1/users/7/orders/9"),
            vec![id("9"), id("7")]
        );
        assert_eq!(ids("/v1/items", "/v1/items"), Vec::<u64>::new());
        // A nested router saw the path without its prefix.
        assert_eq!(ids("/api/v1/items/{id}", "/v1/items/42"), vec![id("42")]);
        assert_eq!(ids("/files/{*path}", "/files/a/b/c.txt"), vec![id("a/b/c.txt")]);
        assert_eq!(
            ids("/o/{org}/files/{*path}", "/o/x/files/a/b"),
            vec![id("x"), id("a/b")]
        );
        assert_eq!(ids("/items/{id}.json", "/items/5.json"), vec![id("5.json")]);
        // Hostile input: more or fewer segments than the template.
        assert_eq!(ids("/items/{id}", "/"), vec![id("")]);
        assert_eq!(ids("/files/{*path}", ""), vec![id("")]);
    }
}
