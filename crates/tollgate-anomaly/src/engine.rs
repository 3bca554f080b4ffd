//! The state the anomaly layers share, and what they do per request.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath};
use axum::response::Response;
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Request, StatusCode};
use tollgate_core::clock::SharedClock;
use tollgate_core::problem::types;
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    ClientConfig, ClientContext, Freeze, FreezeList, FreezeTarget, KeyedDigest, NetworkPrefix, Principal,
    Problem, ProblemResponder, Pseudonymizer, SessionInfo, StoreError, Timestamp, fields,
};
use tollgate_ratelimit::{Limit, MemoryRateLimitStore, RateLimitKey};

use crate::bounded::BoundedMap;
use crate::config::{Action, AnomalyConfig, CompiledPolicy, RoutePolicy, secs};
use crate::detectors::{
    EnumerationDetector, RouteEntry, RouteIndex, SequenceDetector, Step, StuffingDetector,
    TokenSharingDetector, VolumeDetector,
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

/// The keys of one request: keyed hashes, and the credential's keyed digest (hashed
/// into a key only when a penalty needs it, which is rare).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Keys {
    pub network: Option<u64>,
    pub credential: Option<KeyedDigest>,
    pub enumeration: Option<u64>,
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
        f.write_str(self.render().as_str())
    }
}

/// The text of a [`Record`], built without the formatting machinery: at most five
/// `kind:score` pairs and an action name fit in 128 bytes.
pub(crate) struct RecordText {
    buf: [u8; 128],
    len: usize,
}

impl RecordText {
    fn push(&mut self, s: &str) {
        let end = (self.len + s.len()).min(self.buf.len());
        self.buf[self.len..end].copy_from_slice(&s.as_bytes()[..end - self.len]);
        self.len = end;
    }

    fn push_score(&mut self, score: u8) {
        let digits = [b'0' + score / 100, b'0' + score / 10 % 10, b'0' + score % 10];
        let skip = if score >= 100 {
            0
        } else if score >= 10 {
            1
        } else {
            2
        };
        for &d in &digits[skip..] {
            if self.len < self.buf.len() {
                self.buf[self.len] = d;
                self.len += 1;
            }
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII kind and action names and digits are pushed, whole.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl Record {
    /// The text, as [`AnomalyTags`]'s `Display` then `;action=...`.
    pub fn render(&self) -> RecordText {
        let mut out = RecordText {
            buf: [0; 128],
            len: 0,
        };
        for (i, (kind, score)) in self.tags.iter().enumerate() {
            if i > 0 {
                out.push(",");
            }
            out.push(kind.as_str());
            out.push(":");
            out.push_score(score);
        }
        if let Some(action) = self.action {
            out.push(";action=");
            out.push(action);
        }
        out
    }

    pub fn emit(&self) {
        // As a string: the JSON log writes it as `display` did, without running the
        // formatting machinery.
        if self.action.is_none()
            && self.tags.len() == 1
            && let Some((kind, score)) = self.tags.iter().next()
        {
            record_current(fields::ANOMALY, &single_tag_text(kind, score));
        } else if !self.tags.is_empty() || self.action.is_some() {
            let text = self.render();
            record_current(fields::ANOMALY, &text.as_str());
        }
    }
}

/// `kind:score` for every kind and score, made once: the text of a request with one
/// tag and no action, the common case, is a lookup.
fn single_tag_text(kind: AnomalyKind, score: u8) -> &'static str {
    static TEXT: OnceLock<Vec<String>> = OnceLock::new();
    let table = TEXT.get_or_init(|| {
        AnomalyKind::ALL
            .iter()
            .flat_map(|k| (0..=100u8).map(move |s| format!("{}:{s}", k.as_str())))
            .collect()
    });
    &table[kind.index() * 101 + usize::from(score.min(100))]
}

/// Records `value` as the field `name` of the current span, as
/// `Span::current().record(name, value)` does, without making (and dropping) a span
/// handle: that takes and releases a reference on the span in the subscriber.
/// Skipped if there is no current span or it does not declare `name`.
fn record_current(name: &str, value: &dyn tracing::field::Value) {
    tracing::dispatcher::get_default(|dispatch| {
        let Some((id, meta)) = dispatch.current_span().into_inner() else {
            return;
        };
        let names = meta.fields();
        let Some(field) = names.field(name) else {
            return;
        };
        dispatch.record(
            &id,
            &tracing::span::Record::new(&names.value_set(&[(&field, Some(value))])),
        );
    });
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
pub(crate) struct FailureWatched {
    /// The engine of the watch: only the same engine reuses the rest.
    engine: usize,
    route: RouteEntry,
    /// The time and the network key, if the watch got as far as reading them.
    seen: Option<(Timestamp, u64)>,
}

/// What the outer watch layer keeps for the response phase.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WatchState {
    pub network: u64,
    pub policy: CompiledPolicy,
    pub now: Timestamp,
}

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
///
/// Aligned so that the reference counts of its `Arc` (written by every request, on
/// every core) do not share a cache line with the settings every request reads.
#[repr(align(128))]
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
            Some(f) => self.routes.lookup(Some(f)).idx,
            None => d.start(),
        };
        d.transition_share(prev, self.routes.lookup(Some(to)).idx)
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
        actor: Option<u64>,
        principal: Option<&Principal>,
        network: Option<&NetworkPrefix>,
        now: Timestamp,
    ) -> Option<Early> {
        let n = now.as_nanos();
        match action {
            Action::Record => None,
            Action::Throttle => {
                if let Some(actor) = actor {
                    self.penalize(actor, Action::Throttle, tags, n);
                }
                self.throttle_check(principal, network, now).map(Early::Respond)
            }
            Action::Block => {
                if let Some(actor) = actor {
                    self.penalize(actor, Action::Block, tags, n);
                }
                Some(Early::Respond(Self::blocked()))
            }
            Action::Freeze => match (principal, &self.freeze) {
                (Some(p), Some(_)) => Some(Early::Freeze {
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
        let ext = req.extensions();
        let marker = ext.get::<FailureWatched>().copied();
        let watched = marker.is_some();
        let shared = marker.filter(|m| m.engine == self.id());
        let route = match &shared {
            Some(m) => m.route,
            None => self
                .routes
                .lookup(ext.get::<MatchedPath>().map(MatchedPath::as_str)),
        };
        let policy = self.policy(req, route.policy);
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
        let principal = ext.get::<Principal>();
        let session = ext.get::<SessionInfo>();
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
        // One keyed hash of the subject serves the stuffing detector's sketch and,
        // mixed with a secret salt, the volume detector's key.
        let subject = principal
            .filter(|_| self.volume.is_some() || self.stuffing.is_some())
            .map(|p| self.hasher.hash(KeyKind::Subject, &p.subject_key()));
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
                .map(|s| self.hasher.hash(KeyKind::Session, &s.session))
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
            let (step, score) = d.observe(sk, route.idx, now);
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
                let network = self.network_of(req);
                early = self.enforce(
                    action,
                    tags,
                    self.actor(&keys),
                    principal,
                    network.as_ref(),
                    now_ts,
                );
                if action == Action::Throttle {
                    throttled = false; // already spent by `enforce`
                }
            }
        }
        if throttled && early.is_none() {
            let network = self.network_of(req);
            early = self
                .throttle_check(principal, network.as_ref(), now_ts)
                .map(Early::Respond);
            if early.is_some() {
                record.action = Some(Action::Throttle.as_str());
            }
        }
        if !tags.is_empty() {
            insert_tags(req, tags);
        }
        if early.is_some() {
            record.emit();
            return (early, None);
        }
        let post = Post {
            engine: Arc::clone(self),
            now: now_ts,
            keys,
            policy,
            transition,
            record,
            count_failures: !watched,
        };
        (None, Some(post))
    }

    /// The request phase of the outer watch layer: blocks or throttles networks under
    /// a penalty, and marks the request so the inner layer leaves 401s to it.
    pub fn on_watch_request<B>(&self, req: &mut Request<B>) -> (Option<Problem>, Option<WatchState>) {
        let route = self
            .routes
            .lookup(req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
        let mut marker = FailureWatched {
            engine: self.id(),
            route,
            seen: None,
        };
        let policy = self.policy(req, route.policy);
        let network = if policy.skip || !policy.enabled(AnomalyKind::CredentialStuffing) {
            None
        } else {
            self.network_of(req)
        };
        let Some(network) = network else {
            req.extensions_mut().insert(marker);
            return (None, None);
        };
        let key = self.network_key(&network);
        let now = self.clock.now();
        marker.seen = Some((now, key));
        req.extensions_mut().insert(marker);
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
        if self.stuffing.is_none() {
            // Nothing to count in the response phase.
            return (None, None);
        }
        let watch = WatchState {
            network: key,
            policy,
            now,
        };
        (None, Some(watch))
    }

    /// The response phase of the outer watch layer: counts 401s per network.
    pub fn on_watch_response(&self, watch: &WatchState, response: &mut Response) {
        if response.status() != StatusCode::UNAUTHORIZED {
            return;
        }
        let Some(d) = &self.stuffing else { return };
        let now = watch.now.as_nanos();
        let network = watch.network;
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
    pub fn finish(self, response: &mut Response) -> Option<BoxFuture<()>> {
        let engine = &*self.engine;
        let now_ts = self.now;
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
            match (action, &engine.freeze, self.keys.credential) {
                (Action::Freeze, Some(list), Some(credential)) if !engine.config.report_only => {
                    let target = FreezeTarget::Credential(credential);
                    let pending = list.freeze(engine.freeze_of(target, fresh, now_ts));
                    let engine = Arc::clone(&self.engine);
                    let actor = engine.actor(&self.keys);
                    freeze = Some(Box::pin(async move {
                        if let Err(e) = pending.await {
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

/// Where a route template's parameters are, worked out once per template (the
/// [`RouteIndex`] keeps it), so the request path only walks the path segments it hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ParamShape {
    /// No parameter: nothing to hash.
    #[default]
    None,
    /// Bit `i` set: the `i`-th segment from the right is (or contains) a parameter.
    Right(u32),
    /// A wildcard, or a parameter further than 32 segments from the right: the
    /// general walk over the template.
    General,
}

impl ParamShape {
    pub fn of(template: &str) -> Self {
        if !template.contains('{') {
            return ParamShape::None;
        }
        if template.contains("{*") {
            return ParamShape::General;
        }
        let mut mask = 0u32;
        for (i, t) in template.rsplit('/').enumerate() {
            if t.contains('{') {
                if i >= 32 {
                    return ParamShape::General;
                }
                mask |= 1 << i;
            }
        }
        ParamShape::Right(mask)
    }
}

/// Keyed hashes of the path segments that the route template marks as parameters
/// (`{id}`, or a segment containing one; `{*rest}` takes the rest of the path).
///
/// Without a wildcard, template and path are aligned from the right, so a router
/// nested under a stripped prefix still lines up. Nothing is allocated and no
/// segment value is kept.
pub(crate) struct ParamIds<'a> {
    walk: Walk<'a>,
    hasher: &'a KeyedHasher,
}

enum Walk<'a> {
    Done,
    /// Right-aligned, by a [`ParamShape::Right`] mask: the path not walked yet.
    Mask {
        path: Option<&'a str>,
        mask: u32,
    },
    /// Right-aligned, template and path side by side.
    Right {
        template: std::str::RSplit<'a, char>,
        path: std::str::RSplit<'a, char>,
    },
    /// Left-aligned, for templates with a trailing wildcard.
    Wildcard {
        template: std::str::Split<'a, char>,
        rest: &'a str,
    },
}

impl<'a> ParamIds<'a> {
    #[cfg(test)]
    pub fn new(template: &'a str, path: &'a str, hasher: &'a KeyedHasher) -> Self {
        Self::with_shape(ParamShape::of(template), template, path, hasher)
    }

    /// The ids of `path` under a template of this shape (`template` is read only
    /// for [`ParamShape::General`]).
    pub fn with_shape(shape: ParamShape, template: &'a str, path: &'a str, hasher: &'a KeyedHasher) -> Self {
        let walk = match shape {
            ParamShape::None => Walk::Done,
            ParamShape::Right(mask) => Walk::Mask {
                path: Some(path),
                mask,
            },
            ParamShape::General if template.contains("{*") => Walk::Wildcard {
                template: template.trim_start_matches('/').split('/'),
                rest: path.trim_start_matches('/'),
            },
            ParamShape::General => Walk::Right {
                template: template.rsplit('/'),
                path: path.rsplit('/'),
            },
        };
        ParamIds { walk, hasher }
    }
}

/// The last `/`-separated segment of `*rest`, as `rsplit('/')` yields them.
fn next_back<'a>(rest: &mut Option<&'a str>) -> Option<&'a str> {
    let r = (*rest)?;
    // Segments are short: a plain scan beats `memrchr`'s setup.
    match r.bytes().rposition(|b| b == b'/') {
        Some(i) => {
            *rest = Some(&r[..i]);
            Some(&r[i + 1..])
        }
        None => {
            *rest = None;
            Some(r)
        }
    }
}

impl Iterator for ParamIds<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let hasher = self.hasher;
        let id = |segment: &str| hasher.hash_bytes(KeyKind::ObjectId, segment.as_bytes());
        match &mut self.walk {
            Walk::Done => None,
            Walk::Mask { path, mask } => loop {
                if *mask == 0 {
                    return None;
                }
                let segment = next_back(path)?;
                let param = *mask & 1 != 0;
                *mask >>= 1;
                if param {
                    return Some(id(segment));
                }
            },
            Walk::Right { template, path } => loop {
                let t = template.next()?;
                let p = path.next()?;
                if t.contains('{') {
                    return Some(id(p));
                }
            },
            Walk::Wildcard { template, rest } => loop {
                let t = template.next()?;
                if t.starts_with("{*") {
                    let value = *rest;
                    self.walk = Walk::Done;
                    return Some(id(value));
                }
                let (segment, after) = rest.split_once('/').unwrap_or((rest, ""));
                *rest = after;
                if t.contains('{') {
                    return Some(id(segment));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(template: &str, path: &str) -> Vec<u64> {
        let h = KeyedHasher::new([5; 16]);
        let fast: Vec<u64> = ParamIds::new(template, path, &h).collect();
        // The general walk over the template gives the same ids.
        let general: Vec<u64> = ParamIds::with_shape(ParamShape::General, template, path, &h).collect();
        assert_eq!(fast, general, "{template} {path}");
        fast
    }

    fn id(value: &str) -> u64 {
        KeyedHasher::new([5; 16]).hash_bytes(KeyKind::ObjectId, value.as_bytes())
    }

    #[test]
    fn record_text_matches_display() {
        let mut tags = AnomalyTags::default();
        let check = |record: Record| {
            let expected = match record.action {
                Some(a) => format!("{};action={a}", record.tags),
                None => record.tags.to_string(),
            };
            assert_eq!(record.render().as_str(), expected);
            assert_eq!(record.to_string(), expected);
        };
        check(Record { tags, action: None });
        check(Record {
            tags,
            action: Some("block"),
        });
        for kind in AnomalyKind::ALL {
            for score in 1..=100 {
                let mut one = AnomalyTags::default();
                one.insert(kind, score);
                assert_eq!(single_tag_text(kind, score), one.to_string());
            }
        }
        for (kind, score) in AnomalyKind::ALL.into_iter().zip([1u8, 9, 10, 99, 100]) {
            tags.insert(kind, score);
            check(Record { tags, action: None });
            check(Record {
                tags,
                action: Some(Action::Throttle.would()),
            });
        }
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
