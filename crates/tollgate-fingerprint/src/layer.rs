//! `FingerprintLayer`, its service and its response future.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::Response;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderValue, Request};
use pin_project_lite::pin_project;
use tollgate_core::clock::duration_nanos;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};
use tollgate_core::problem::types;
use tollgate_core::{
    ClientConfig, ClientContext, Domain, FailurePolicy, Freeze, FreezeList, FreezeTarget, KeyedDigest,
    MemoryFreezeList, NetworkPrefix, Principal, Problem, ProblemResponder, Pseudonym, Pseudonymizer,
    SessionInfo, SharedClock, StateStore, StoreKey, SystemClock, Timestamp, fields,
};
use tower::{Layer, Service};
use tracing::Span;

use crate::config::{ActOn, ConfigError, FingerprintConfig, SessionPolicy};
use crate::dimensions::{
    FingerprintInput, USER_AGENT_CACHE_TTL, UserAgentCache, fingerprint_input, input_key,
};
use crate::memory::{Cell, LocalHasher, MemorySessionStore, SeenInput};
use crate::record::{Observation, SessionRecord, Thresholds, nonzero};
use crate::span::record_current;

/// The store namespace of session records: keys are `tollgate:session:{digest}`.
pub const SESSION_NAMESPACE: &str = "session";

/// The domain of the keyed hashes of network prefixes kept in session records.
const SESSION_NETWORK: Domain = Domain::new("session-network");

/// The store key of the session of a credential ([`Principal::credential_key`]).
pub fn session_key(credential: &KeyedDigest) -> StoreKey {
    StoreKey::new(SESSION_NAMESPACE, credential)
}

/// A per-route override, read from request extensions when the layer runs.
///
/// Insert it from a layer outside [`FingerprintLayer`] (for example one keyed on the
/// path), or give a route its own `FingerprintLayer` with `route_layer`: a second
/// layer on a request reuses the first one's verdict and applies its own policy.
///
/// ```
/// use tollgate_fingerprint::{FingerprintOverride, SessionPolicy};
///
/// let strict = FingerprintOverride::policy(SessionPolicy::Reauthenticate);
/// assert_eq!(strict.policy, Some(SessionPolicy::Reauthenticate));
/// assert!(FingerprintOverride::SKIP.skip);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FingerprintOverride {
    /// Replaces the layer's policy.
    pub policy: Option<SessionPolicy>,
    /// Replaces the health at which the policy acts.
    pub act_on: Option<ActOn>,
    /// Replaces report-only mode.
    pub report_only: Option<bool>,
    /// Leaves the request alone: no record, no verdict (for `/health` and the like).
    pub skip: bool,
}

impl FingerprintOverride {
    /// An override that skips fingerprinting.
    pub const SKIP: FingerprintOverride = FingerprintOverride {
        policy: None,
        act_on: None,
        report_only: None,
        skip: true,
    };

    /// An override of the policy only.
    pub const fn policy(policy: SessionPolicy) -> Self {
        FingerprintOverride {
            policy: Some(policy),
            act_on: None,
            report_only: None,
            skip: false,
        }
    }
}

#[derive(Clone)]
struct Shared {
    config: FingerprintConfig,
    thresholds: Thresholds,
    pseudonymizer: Pseudonymizer,
    clock: SharedClock,
    client: ClientConfig,
    responder: ProblemResponder,
    user_agents: UserAgentCache,
    local: LocalHasher,
}

/// A tower layer that fingerprints each authenticated request's session and judges
/// its health.
///
/// For each request carrying a [`Principal`] (inserted by the authentication layer),
/// it hashes the enabled coarsened traits (network prefix, user-agent family, …) into
/// a fingerprint, updates the session record keyed by the credential, and derives a
/// [`SessionInfo`]: the session pseudonym, the fingerprint pseudonym, a
/// [`SessionHealth`](tollgate_core::SessionHealth) and its reasons. It records `session`, `session.health` and
/// `session.reasons` in the current span, inserts the `SessionInfo` into request
/// extensions, and applies the [`SessionPolicy`]. Requests without a `Principal` pass
/// untouched.
///
/// `St` stores session records. With the default in-process [`MemorySessionStore`]
/// the read-modify-write of a record is atomic per session, and a steady session
/// costs no HMAC (its pseudonyms are cached with the record, in memory). With another
/// [`StateStore`] (such as Redis) it is a `get` then an `insert`: two replicas
/// serving one session at the same instant each write their own view, and the
/// last writer wins (one request's fingerprint may be missing from the record).
///
/// # Per route
///
/// Mount it with `Router::layer` for every route, or with `route_layer` /
/// `MethodRouter::layer` for some. A second `FingerprintLayer` on a request (say a
/// stricter one on `/admin`) reuses the first one's verdict, without counting the
/// request twice, and applies its own policy. A [`FingerprintOverride`] in request
/// extensions replaces the policy, or skips the request.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use tollgate_core::{MemoryFreezeList, Pseudonymizer, PseudonymSecret};
/// use tollgate_fingerprint::{FingerprintConfig, FingerprintLayer, SessionInfo};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[7; 32]).unwrap(), Duration::from_secs(86_400));
/// let freeze_list = MemoryFreezeList::new(10_000); // share it with the AuthLayer
/// let layer = FingerprintLayer::from_config(&FingerprintConfig::default(), p, freeze_list).unwrap();
/// let app: Router = Router::new()
///     .route("/me", get(|s: Option<SessionInfo>| async move { format!("{:?}", s.map(|s| s.health)) }))
///     .layer(layer); // inside the AuthLayer, outside the rate limiter
/// ```
pub struct FingerprintLayer<St = MemorySessionStore, F = MemoryFreezeList> {
    /// Everything behind one `Arc`: axum may clone the layer and make its service for
    /// every request, and each `Arc` is an atomic increment and decrement.
    inner: Arc<Parts<St, F>>,
}

struct Parts<St, F> {
    shared: Arc<Shared>,
    backends: Arc<Backends<St, F>>,
}

impl<St, F> Clone for Parts<St, F> {
    fn clone(&self) -> Self {
        Parts {
            shared: self.shared.clone(),
            backends: self.backends.clone(),
        }
    }
}

struct Backends<St, F> {
    store: St,
    freeze_list: F,
}

impl<St, F> Clone for FingerprintLayer<St, F> {
    fn clone(&self) -> Self {
        FingerprintLayer {
            inner: self.inner.clone(),
        }
    }
}

impl<St, F> FingerprintLayer<St, F> {
    fn from_parts(shared: Arc<Shared>, backends: Backends<St, F>) -> Self {
        FingerprintLayer {
            inner: Arc::new(Parts {
                shared,
                backends: Arc::new(backends),
            }),
        }
    }
}

impl<St, F> fmt::Debug for FingerprintLayer<St, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<St, F> fmt::Debug for Parts<St, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn thresholds(config: &FingerprintConfig, watching_since: tollgate_core::Timestamp) -> Thresholds {
    Thresholds {
        established_after: config.established_after,
        concurrency_window: Duration::from_secs(config.concurrency_window_secs),
        alternation_window: Duration::from_secs(config.alternation_window_secs),
        alternation_switches: config.alternation_switches,
        stale_after: (config.stale_after_secs > 0).then(|| Duration::from_secs(config.stale_after_secs)),
        watching_since,
        unhealthy_reasons: config.unhealthy_reasons,
    }
}

impl FingerprintLayer {
    /// A layer with the default configuration: tag only, in-process store, and a
    /// freeze list of its own (give it the authentication layer's with
    /// [`FingerprintLayer::freeze_list`] before using the `freeze` policy).
    pub fn new(pseudonymizer: Pseudonymizer) -> Self {
        Self::from_config(
            &FingerprintConfig::default(),
            pseudonymizer,
            MemoryFreezeList::new(10_000),
        )
        .expect("the default configuration is valid")
    }
}

impl<F: FreezeList> FingerprintLayer<MemorySessionStore, F> {
    /// A layer from its configuration, with the freeze list shared with the
    /// authentication layer. Fails on an invalid setting, naming it.
    pub fn from_config(
        config: &FingerprintConfig,
        pseudonymizer: Pseudonymizer,
        freeze_list: F,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let clock: SharedClock = Arc::new(SystemClock);
        let shared = Shared {
            thresholds: thresholds(config, clock.now()),
            config: config.clone(),
            pseudonymizer,
            clock,
            client: ClientConfig::default(),
            responder: ProblemResponder::default(),
            user_agents: UserAgentCache::new(config.user_agent_cache),
            local: LocalHasher::default(),
        };
        Ok(FingerprintLayer::from_parts(
            Arc::new(shared),
            Backends {
                store: MemorySessionStore::new(config.max_sessions, config.session_ttl()),
                freeze_list,
            },
        ))
    }
}

impl<St, F> FingerprintLayer<St, F> {
    fn shared_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut Arc::make_mut(&mut self.inner).shared)
    }

    /// Sets the policy.
    pub fn policy(mut self, policy: SessionPolicy) -> Self {
        self.shared_mut().config.policy = policy;
        self
    }

    /// Sets the health at which the policy acts.
    pub fn act_on(mut self, act_on: ActOn) -> Self {
        self.shared_mut().config.act_on = act_on;
        self
    }

    /// Records what the policy would do without doing it.
    pub fn report_only(mut self, report_only: bool) -> Self {
        self.shared_mut().config.report_only = report_only;
        self
    }

    /// Reads time from `clock` (tests use a [`FakeClock`](tollgate_core::FakeClock)).
    /// Tokens issued before this call are never judged stale.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        let shared = self.shared_mut();
        shared.thresholds.watching_since = clock.now();
        shared.clock = clock;
        self
    }

    /// How to find the client's network when no
    /// [`PrivacyTraceLayer`](https://docs.rs/tollgate-privacy) put a [`ClientContext`]
    /// in the request: from `ConnectInfo<SocketAddr>` and, behind trusted proxies,
    /// the forwarding header.
    pub fn client_config(mut self, client: ClientConfig) -> Self {
        self.shared_mut().client = client;
        self
    }

    /// Writes early answers with `responder` instead of problem+json.
    pub fn problem_responder(mut self, responder: ProblemResponder) -> Self {
        self.shared_mut().responder = responder;
        self
    }

    /// Freezes through `freeze_list`: give it the authentication layer's, so that a
    /// frozen credential is refused from the next request on.
    pub fn freeze_list<F2: FreezeList>(self, freeze_list: F2) -> FingerprintLayer<St, F2>
    where
        St: Clone,
    {
        FingerprintLayer::from_parts(
            self.inner.shared.clone(),
            Backends {
                store: self.inner.backends.store.clone(),
                freeze_list,
            },
        )
    }

    /// Keeps session records in `store` (a shared store for several replicas).
    pub fn store<St2>(self, store: St2) -> FingerprintLayer<St2, F>
    where
        St2: StateStore<SessionRecord>,
        F: Clone,
    {
        FingerprintLayer::from_parts(
            self.inner.shared.clone(),
            Backends {
                store,
                freeze_list: self.inner.backends.freeze_list.clone(),
            },
        )
    }

    /// The session store.
    pub fn session_store(&self) -> &St {
        &self.inner.backends.store
    }

    /// The configuration in force.
    pub fn config(&self) -> &FingerprintConfig {
        &self.inner.shared.config
    }

    /// Every field this layer logs or stores, with its retention.
    pub fn inventory(&self) -> Vec<FieldSpec>
    where
        St: 'static,
    {
        let config = &self.inner.shared.config;
        let session_ttl = Retention::ttl(config.session_ttl());
        let mut out = vec![
            FieldSpec {
                name: fields::SESSION,
                layer: "fingerprint",
                derived_from: "the credential's keyed digest (token jti, API key id or token digest)",
                protection: Protection::Pseudonym,
                purpose: "link one session's requests within a key epoch",
                retention: Retention::LogPipeline,
                sinks: &[Sink::Span, Sink::Extension],
            },
            FieldSpec {
                name: fields::SESSION_HEALTH,
                layer: "fingerprint",
                derived_from: "the session record's signals",
                protection: Protection::NotPersonal,
                purpose: "healthy, suspicious or unhealthy: what the policy and the anomaly layer act on",
                retention: Retention::LogPipeline,
                sinks: &[Sink::Span, Sink::Extension],
            },
            FieldSpec {
                name: fields::SESSION_REASONS,
                layer: "fingerprint",
                derived_from: "the session record's signals",
                protection: Protection::NotPersonal,
                purpose: "which signals made the verdict",
                retention: Retention::LogPipeline,
                sinks: &[Sink::Span, Sink::Extension],
            },
            FieldSpec {
                name: fields::SESSION_ACTION,
                layer: "fingerprint",
                derived_from: "the verdict and the route's policy",
                protection: Protection::NotPersonal,
                purpose: "what the session policy did or, report-only, would have done",
                retention: Retention::LogPipeline,
                sinks: &[Sink::Span],
            },
            FieldSpec {
                name: "session.fingerprint",
                layer: "fingerprint",
                derived_from: "the enabled coarsened traits: network prefix, user-agent family and major version, Accept-Language primary tag, client hints",
                protection: Protection::Pseudonym,
                purpose: "tell later layers which fingerprint this request showed",
                retention: Retention::Request,
                sinks: &[Sink::Extension],
            },
            FieldSpec {
                name: "tollgate:session",
                layer: "fingerprint",
                derived_from: "the credential's keyed digest, as the store key",
                protection: Protection::KeyedDigest,
                purpose: "find a session's record",
                retention: session_ttl,
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "session.first_seen, session.last_seen",
                layer: "fingerprint",
                derived_from: "request times, to the minute",
                protection: Protection::Coarsened,
                purpose: "session age, for the stale-token signal",
                retention: session_ttl,
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "session.requests",
                layer: "fingerprint",
                derived_from: "a count of the session's requests",
                protection: Protection::NotPersonal,
                purpose: "tell an established session from a new one",
                retention: session_ttl,
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "session.fingerprints",
                layer: "fingerprint",
                derived_from: "the last 4 fingerprints, as 64-bit keyed hashes",
                protection: Protection::KeyedDigest,
                purpose: "notice a new fingerprint and alternation between fingerprints",
                retention: session_ttl,
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "session.networks",
                layer: "fingerprint",
                derived_from: "the last 4 coarsened network prefixes, as 64-bit keyed hashes, each with the second it was last seen (the only time kept finer than a minute)",
                protection: Protection::KeyedDigest,
                purpose: "notice one credential used from two networks within the concurrency window",
                retention: session_ttl,
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "session.switches",
                layer: "fingerprint",
                derived_from: "fingerprint switches in the current window, and the window's start to the minute",
                protection: Protection::NotPersonal,
                purpose: "notice rapid alternation between fingerprints",
                retention: session_ttl,
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "session.verdict",
                layer: "fingerprint",
                derived_from: "the latest health, its reasons, and the reasons that hold for the whole session",
                protection: Protection::NotPersonal,
                purpose: "keep a stale token flagged for the session's life",
                retention: session_ttl,
                sinks: &[Sink::Store],
            },
        ];
        if (&self.inner.backends.store as &dyn Any).is::<MemorySessionStore>() {
            out.push(FieldSpec {
                name: "session.cache",
                layer: "fingerprint",
                derived_from: "the session's and latest fingerprint's pseudonyms, and the keyed hashes of its latest fingerprint and prefix, tagged with hashes under a random per-process key",
                protection: Protection::Pseudonym,
                purpose: "spare a steady session's requests every HMAC; in process memory only, never stored elsewhere",
                retention: session_ttl,
                sinks: &[Sink::Store],
            });
        }
        if config.dimensions.user_agent && config.user_agent_cache > 0 {
            out.push(FieldSpec {
                name: "fingerprint.user_agent_cache",
                layer: "fingerprint",
                derived_from: "the user-agent family and major version, keyed by a hash of the header under a random per-process key",
                protection: Protection::Coarsened,
                purpose: "parse each distinct user agent once",
                retention: Retention::ttl(USER_AGENT_CACHE_TTL),
                sinks: &[Sink::Store],
            });
        }
        if config.policy == SessionPolicy::Freeze {
            out.push(FieldSpec {
                name: "tollgate:freeze-credential",
                layer: "fingerprint",
                derived_from: "the credential's keyed digest, with a reason naming the verdict",
                protection: Protection::KeyedDigest,
                purpose: "lock a credential whose session turned unhealthy",
                retention: Retention::ttl(config.freeze_for()),
                sinks: &[Sink::Store],
            });
        }
        out
    }
}

impl<S, St, F> Layer<S> for FingerprintLayer<St, F> {
    type Service = FingerprintService<S, St, F>;

    fn layer(&self, inner: S) -> Self::Service {
        FingerprintService {
            inner,
            layer: self.inner.clone(),
        }
    }
}

/// The service made by [`FingerprintLayer`].
pub struct FingerprintService<S, St = MemorySessionStore, F = MemoryFreezeList> {
    inner: S,
    /// The layer's parts behind one `Arc`: the service is cloned for every request.
    layer: Arc<Parts<St, F>>,
}

impl<S: Clone, St, F> Clone for FingerprintService<S, St, F> {
    fn clone(&self) -> Self {
        FingerprintService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, St, F> fmt::Debug for FingerprintService<S, St, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

pin_project! {
    /// The response future of [`FingerprintService`].
    pub struct ResponseFuture<Fut, E> {
        #[pin]
        kind: Kind<Fut, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<Fut, E> {
        Inner { #[pin] future: Fut },
        Ready { response: Option<Response> },
        Boxed { future: BoxFuture<E> },
    }
}

impl<Fut, E> ResponseFuture<Fut, E> {
    fn inner(future: Fut) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future },
        }
    }

    fn ready(response: Response) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    fn boxed(future: BoxFuture<E>) -> Self {
        ResponseFuture {
            kind: Kind::Boxed { future },
        }
    }
}

impl<Fut, E> Future for ResponseFuture<Fut, E>
where
    Fut: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

/// The policy in force for one request.
#[derive(Clone, Copy)]
struct Settings {
    policy: SessionPolicy,
    act_on: ActOn,
    report_only: bool,
}

/// What the policy decided.
enum Decision {
    Pass,
    Respond(Response),
    Freeze(Freeze),
}

/// One request's time and network, before any keyed hash.
struct Traits {
    now: Timestamp,
    network: Option<NetworkPrefix>,
}

fn first_u64(d: KeyedDigest) -> u64 {
    let hex = d.to_hex();
    // 16 hex digits always parse as a u64.
    nonzero(u64::from_str_radix(&hex.as_str()[..16], 16).unwrap_or(1))
}

impl Shared {
    fn settings(&self, route: FingerprintOverride) -> Settings {
        Settings {
            policy: route.policy.unwrap_or(self.config.policy),
            act_on: route.act_on.unwrap_or(self.config.act_on),
            report_only: route.report_only.unwrap_or(self.config.report_only),
        }
    }

    /// The request's time and network; computes and inserts the [`ClientContext`]
    /// when no outer layer did.
    fn traits<B>(&self, req: &mut Request<B>) -> Traits {
        let dims = self.config.dimensions;
        let network = if dims.network {
            match req.extensions().get::<ClientContext>() {
                Some(ctx) => Some(ctx.network()),
                None => match req.extensions().get::<ConnectInfo<SocketAddr>>() {
                    Some(ConnectInfo(peer)) => {
                        let ctx = self.client.context(peer.ip(), req.headers(), &self.pseudonymizer);
                        req.extensions_mut().insert(ctx);
                        Some(ctx.network())
                    }
                    None => None,
                },
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

    fn session_pseudonym(&self, credential: &KeyedDigest, now: Timestamp) -> Pseudonym {
        self.pseudonymizer
            .pseudonym_at(Domain::SESSION, credential.to_hex().as_str().as_bytes(), now)
    }

    /// The pseudonym epoch `now` falls in.
    fn epoch(&self, now: Timestamp) -> u64 {
        now.as_nanos() / duration_nanos(self.pseudonymizer.epoch_length()).max(1)
    }

    /// Every keyed hash of the request, computed afresh (the remote-store path).
    fn observation(
        &self,
        traits: &Traits,
        headers: &HeaderMap,
        issued_at: Option<Timestamp>,
    ) -> (Observation, Pseudonym) {
        let input = self.input(traits, headers);
        let (fingerprint, fingerprint_pseudonym) = self.fingerprint_hash(input.as_bytes(), traits.now);
        let observation = Observation {
            now: traits.now,
            fingerprint,
            network: traits.network.map(|n| self.network_hash(n)),
            issued_at,
        };
        (observation, fingerprint_pseudonym)
    }

    /// Judges the request through the in-process store, in one short locked update of
    /// the session's cell; keyed hashes are reused while the session's traits and
    /// the pseudonym epoch stay the same, and the fingerprint input itself (user
    /// agent parsing included) is only made when the traits changed. Missing hashes
    /// are computed outside the lock, then the update runs.
    fn observe_local(
        &self,
        store: &MemorySessionStore,
        credential: KeyedDigest,
        traits: &Traits,
        headers: &HeaderMap,
        issued_at: Option<Timestamp>,
    ) -> SessionInfo {
        let now = traits.now;
        let epoch = self.epoch(now);
        let input_key = input_key(self.config.dimensions, traits.network, headers, &self.local);
        let observe = |cell: &mut Cell, session: Pseudonym, seen: SeenInput| {
            cell.session = Some(session);
            cell.fingerprint = Some(seen);
            let observation = Observation {
                now,
                fingerprint: seen.hash,
                network: seen.network,
                issued_at,
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
        // A steady session: every keyed hash is cached, one short locked update.
        let cached = store.with_cell(credential, |cell| {
            let session = cell.session.filter(|s| s.epoch() == epoch);
            // The same input as last time: the same fingerprint and the same network.
            let seen = cell.fingerprint.filter(|f| f.key == input_key);
            match (session, seen) {
                (Some(session), Some(seen)) if seen.pseudonym.epoch() == epoch => {
                    Ok(observe(cell, session, seen))
                }
                _ => Err((session, seen, cell.network)),
            }
        });
        let (session, seen, networks) = match cached {
            Ok(info) => return info,
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
        store.with_cell(credential, |cell| {
            if new_network.is_some() {
                cell.network = new_network;
            }
            observe(cell, session, seen)
        })
    }

    /// Applies `settings` to the verdict; records the outcome in `span`, or in the
    /// current span when `None`.
    fn decide(
        &self,
        info: &SessionInfo,
        credential: Option<KeyedDigest>,
        settings: Settings,
        span: Option<&Span>,
    ) -> Decision {
        if settings.policy == SessionPolicy::Tag || info.health < settings.act_on.health() {
            return Decision::Pass;
        }
        let action = match (settings.policy, settings.report_only) {
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
        if settings.report_only {
            return Decision::Pass;
        }
        match (settings.policy, credential) {
            (SessionPolicy::Freeze, Some(credential)) => {
                let now = self.clock.now();
                Decision::Freeze(Freeze {
                    target: FreezeTarget::Credential(credential),
                    reason: format!("session {}: {}", info.health, info.reasons),
                    frozen_at: now,
                    until: Some(now.saturating_add(self.config.freeze_for())),
                })
            }
            _ => Decision::Respond(self.responder.respond(session_changed())),
        }
    }
}

fn session_changed() -> Problem {
    Problem::new(types::SESSION_CHANGED)
        .with_detail("the session changed; authenticate again")
        .with_header(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer error=\"invalid_token\", error_description=\"the session changed; authenticate again\"",
            ),
        )
}

fn credential_frozen() -> Problem {
    Problem::new(types::CREDENTIAL_FROZEN)
        .with_detail("the session changed; the credential is frozen")
        .with_header(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer error=\"invalid_token\", error_description=\"the session changed; the credential is frozen\"",
            ),
        )
}

fn record_verdict(span: &Span, info: &SessionInfo) {
    span.record(fields::SESSION, info.session.to_hex().as_str());
    span.record(fields::SESSION_HEALTH, info.health.as_str());
    if !info.reasons.is_empty() {
        span.record(fields::SESSION_REASONS, info.reasons.as_str());
    }
}

/// [`record_verdict`] on the current span, in one call to the subscriber.
fn record_verdict_here(info: &SessionInfo) {
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

async fn freeze_and_respond<F: FreezeList>(shared: Arc<Shared>, list: F, freeze: Freeze) -> Response {
    match list.freeze(freeze).await {
        Ok(()) => shared.responder.respond(credential_frozen()),
        Err(error) => {
            tracing::warn!(
                target: "tollgate::fingerprint",
                %error,
                "could not freeze the credential; answering 401 session-changed instead"
            );
            shared.responder.respond(session_changed())
        }
    }
}

impl<S, B, St, F> Service<Request<B>> for FingerprintService<S, St, F>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    St: StateStore<SessionRecord>,
    F: FreezeList,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = req
            .extensions()
            .get::<FingerprintOverride>()
            .copied()
            .unwrap_or_default();
        if route.skip {
            return ResponseFuture::inner(self.inner.call(req));
        }
        let shared = &self.layer.shared;
        let settings = shared.settings(route);
        let credential = req
            .extensions()
            .get::<Principal>()
            .map(|p| (p.credential_key(), p.issued_at()));

        // An outer FingerprintLayer already judged this request: apply this layer's policy.
        if let Some(info) = req.extensions().get::<SessionInfo>().copied() {
            let decision = shared.decide(&info, credential.map(|c| c.0), settings, None);
            return self.finish(req, decision);
        }
        let Some((credential, issued_at)) = credential else {
            return ResponseFuture::inner(self.inner.call(req));
        };

        let traits = shared.traits(&mut req);
        let backends = &self.layer.backends;
        if let Some(memory) = (&backends.store as &dyn Any).downcast_ref::<MemorySessionStore>() {
            let info = shared.observe_local(memory, credential, &traits, req.headers(), issued_at);
            record_verdict_here(&info);
            req.extensions_mut().insert(info);
            let decision = shared.decide(&info, Some(credential), settings, None);
            return self.finish(req, decision);
        }

        // A remote store: get, then insert (last writer wins).
        let (observation, fingerprint) = shared.observation(&traits, req.headers(), issued_at);
        let session = shared.session_pseudonym(&credential, traits.now);
        let key = session_key(&credential);
        let ttl = SessionRecord::ttl(shared.config.session_ttl());
        let thresholds = shared.thresholds;
        let shared = shared.clone();
        let backends = backends.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = Span::current();
        ResponseFuture::boxed(Box::pin(async move {
            span.record(fields::SESSION, session.to_hex().as_str());
            let store = &backends.store;
            let prev = match store.get(&key).await {
                Ok(prev) => prev,
                Err(error) => {
                    tracing::warn!(target: "tollgate::fingerprint", %error, "session store unavailable");
                    return match shared.config.store_failure {
                        FailurePolicy::Open => inner.call(req).await,
                        FailurePolicy::Closed => Ok(shared.responder.respond(
                            Problem::new(types::UNAVAILABLE).with_detail("the session store is unavailable"),
                        )),
                    };
                }
            };
            let record = SessionRecord::observe(prev.as_ref(), &observation, &thresholds);
            if let Err(error) = store.insert(&key, record, ttl).await {
                tracing::warn!(target: "tollgate::fingerprint", %error, "could not save the session record");
            }
            let info = SessionInfo {
                session,
                fingerprint,
                health: record.health,
                reasons: record.reasons,
            };
            record_verdict(&span, &info);
            req.extensions_mut().insert(info);
            match shared.decide(&info, Some(credential), settings, Some(&span)) {
                Decision::Pass => inner.call(req).await,
                Decision::Respond(response) => Ok(response),
                Decision::Freeze(freeze) => {
                    Ok(freeze_and_respond(shared, backends.freeze_list.clone(), freeze).await)
                }
            }
        }))
    }
}

impl<S, St, F> FingerprintService<S, St, F>
where
    F: FreezeList,
{
    fn finish<B, E>(&mut self, req: Request<B>, decision: Decision) -> ResponseFuture<S::Future, E>
    where
        S: Service<Request<B>, Response = Response, Error = E>,
        E: Send + 'static,
    {
        match decision {
            Decision::Pass => ResponseFuture::inner(self.inner.call(req)),
            Decision::Respond(response) => ResponseFuture::ready(response),
            Decision::Freeze(freeze) => {
                let shared = self.layer.shared.clone();
                let list = self.layer.backends.freeze_list.clone();
                ResponseFuture::boxed(Box::pin(async move {
                    Ok(freeze_and_respond(shared, list, freeze).await)
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
