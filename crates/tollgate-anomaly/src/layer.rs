//! [`AnomalyLayer`], its service and response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::Request;
use pin_project_lite::pin_project;
use tollgate_core::clock::{SharedClock, system_clock};
use tollgate_core::{ClientConfig, FieldSpec, FreezeList, ProblemResponder, Pseudonymizer};
use tollgate_ratelimit::MemoryRateLimitStore;
use tower::{BoxError, Layer, Service};

use crate::config::{AnomalyConfig, ConfigError};
use crate::engine::{BoxFuture, Early, Engine, ErasedFreeze, Post, StateSize};
use crate::watch::FailureWatchLayer;

/// Tags anomalous requests and sessions, and acts on them by policy.
///
/// Place it innermost (after auth, fingerprinting and rate limiting), so it reads
/// [`tollgate_core::Principal`], [`tollgate_core::SessionInfo`], the
/// [`tollgate_core::ClientContext`] and `MatchedPath` from request extensions, and the
/// status from the response. For credential stuffing against the auth layer's own
/// 401s, also install [`AnomalyLayer::failure_watch`] outside the auth layer.
///
/// ```
/// use axum::{Router, routing::get};
/// use tollgate_anomaly::{AnomalyConfig, AnomalyLayer, AnomalyTags};
/// use tollgate_core::{Pseudonymizer, PseudonymSecret};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[3; 32]).unwrap(), std::time::Duration::from_secs(86_400));
/// let anomaly = AnomalyLayer::new(AnomalyConfig::default(), p).unwrap();
/// let app: Router = Router::new()
///     .route("/v1/items/{id}", get(|tags: AnomalyTags| async move { tags.to_string() }))
///     .layer(anomaly.clone());
/// assert!(anomaly.inventory().iter().any(|f| f.name == "anomaly"));
/// ```
#[derive(Clone)]
pub struct AnomalyLayer {
    engine: Arc<Engine>,
}

impl fmt::Debug for AnomalyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AnomalyLayer").field(&self.engine).finish()
    }
}

/// Builds an [`AnomalyLayer`].
pub struct AnomalyLayerBuilder {
    config: AnomalyConfig,
    pseudonymizer: Pseudonymizer,
    clock: Option<SharedClock>,
    client: ClientConfig,
    freeze: Option<Arc<dyn ErasedFreeze>>,
    throttle_store: Option<MemoryRateLimitStore>,
    responder: ProblemResponder,
}

impl fmt::Debug for AnomalyLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnomalyLayerBuilder")
            .field("config", &self.config)
            .field("freeze_list", &self.freeze.is_some())
            .finish_non_exhaustive()
    }
}

impl AnomalyLayerBuilder {
    /// Reads time from `clock` (a [`tollgate_core::FakeClock`] in tests and the simulator).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Resolves client networks this way when no [`tollgate_core::ClientContext`] is in
    /// the request (that is, when the privacy layer is not installed).
    pub fn client_config(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// The freeze list the `freeze` action writes to: give the one the auth layer reads.
    pub fn freeze_list(mut self, list: impl FreezeList) -> Self {
        self.freeze = Some(Arc::new(list));
        self
    }

    /// The store of the throttle tier's rate-limit cells (default: a private in-process store).
    pub fn throttle_store(mut self, store: MemoryRateLimitStore) -> Self {
        self.throttle_store = Some(store);
        self
    }

    /// Renders early answers (403, 429, 401) this way instead of problem+json.
    pub fn problem_responder(mut self, responder: ProblemResponder) -> Self {
        self.responder = responder;
        self
    }

    /// Decides actions without enforcing them.
    pub fn report_only(mut self, on: bool) -> Self {
        self.config.report_only = on;
        self
    }

    /// Sends the tags in an `x-tollgate-anomaly` response header.
    pub fn debug_header(mut self, on: bool) -> Self {
        self.config.debug_header = on;
        self
    }

    /// The layer, or the first setting that cannot work.
    pub fn build(self) -> Result<AnomalyLayer, ConfigError> {
        let engine = Engine::new(
            self.config,
            self.pseudonymizer,
            self.clock.unwrap_or_else(system_clock),
            self.client,
            self.freeze,
            self.throttle_store,
            self.responder,
        )?;
        Ok(AnomalyLayer {
            engine: Arc::new(engine),
        })
    }
}

impl AnomalyLayer {
    /// A builder from the configuration and the stack's pseudonymizer.
    pub fn builder(config: AnomalyConfig, pseudonymizer: Pseudonymizer) -> AnomalyLayerBuilder {
        AnomalyLayerBuilder {
            config,
            pseudonymizer,
            clock: None,
            client: ClientConfig::default(),
            freeze: None,
            throttle_store: None,
            responder: ProblemResponder::default(),
        }
    }

    /// A layer from its configuration, on the system clock, without a freeze list
    /// (so a `freeze` action in `config` is refused: use [`AnomalyLayer::builder`]).
    pub fn new(config: AnomalyConfig, pseudonymizer: Pseudonymizer) -> Result<Self, ConfigError> {
        Self::builder(config, pseudonymizer).build()
    }

    /// The companion layer to place outside the auth layer: it sees the auth layer's
    /// 401s (which never reach this layer) and feeds them to the credential-stuffing
    /// detector, and it blocks networks under a penalty before auth runs. It shares
    /// this layer's state.
    pub fn failure_watch(&self) -> FailureWatchLayer {
        FailureWatchLayer::new(Arc::clone(&self.engine))
    }

    /// The configuration in force.
    pub fn config(&self) -> &AnomalyConfig {
        &self.engine.config
    }

    /// Entry counts and caps of every piece of detector state.
    pub fn state_sizes(&self) -> Vec<StateSize> {
        self.engine.sizes()
    }

    /// Drops expired detector state now (the request path also does it as it goes).
    pub fn purge_expired(&self) {
        self.engine.purge_expired();
    }

    /// What the sequence model learned: the share of steps from `from` (a route
    /// template, or `None` for the start of a session) that went to `to`. `None` if the
    /// detector is off or nothing left `from` yet. For admin views and tuning.
    pub fn transition_share(&self, from: Option<&str>, to: &str) -> Option<f64> {
        self.engine.transition_share(from, to)
    }

    /// Every field this layer stores or emits, for the data inventory.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        crate::inventory::inventory(&self.engine)
    }
}

impl<S> Layer<S> for AnomalyLayer {
    type Service = AnomalyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AnomalyService {
            inner,
            engine: Arc::clone(&self.engine),
        }
    }
}

/// The service made by [`AnomalyLayer`].
#[derive(Clone)]
pub struct AnomalyService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S: fmt::Debug> fmt::Debug for AnomalyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnomalyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AnomalyService<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let (early, post) = self.engine.on_request(&mut req);
        let state = match early {
            Some(Early::Respond(problem)) => State::Ready {
                response: Some(self.engine.responder.respond(problem)),
            },
            Some(Early::Freeze { freeze, actor, tags }) => State::Freezing {
                fut: self.engine.run_freeze(freeze, actor, tags),
            },
            None => State::Inner {
                fut: self.inner.call(req),
            },
        };
        ResponseFuture { state, post }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] fut: F },
        Ready { response: Option<Response> },
        Freezing { fut: BoxFuture<Response> },
        AfterFreeze { fut: BoxFuture<()>, response: Option<Response> },
    }
}

pin_project! {
    /// The response future of [`AnomalyService`]: runs the response-phase detectors
    /// (status-based) and attaches the tags to the response.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        post: Option<Post>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut } => {
                    let mut response = ready!(fut.poll(cx))?.map(Body::new);
                    let Some(post) = this.post.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    match post.finish(&mut response) {
                        Some(fut) => this.state.set(State::AfterFreeze {
                            fut,
                            response: Some(response),
                        }),
                        None => return Poll::Ready(Ok(response)),
                    }
                }
                StateProj::Ready { response } => {
                    return Poll::Ready(Ok(response
                        .take()
                        .expect("ResponseFuture polled after completion")));
                }
                StateProj::Freezing { fut } => {
                    return Poll::Ready(Ok(ready!(fut.as_mut().poll(cx))));
                }
                StateProj::AfterFreeze { fut, response } => {
                    ready!(fut.as_mut().poll(cx));
                    return Poll::Ready(Ok(response
                        .take()
                        .expect("ResponseFuture polled after completion")));
                }
            }
        }
    }
}
