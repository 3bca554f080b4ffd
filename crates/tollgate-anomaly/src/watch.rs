//! [`FailureWatchLayer`]: the part of the anomaly layer that sits outside auth.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::Response;
use http::Request;
use tower::{Layer, Service};

use crate::engine::{Engine, WatchStart};
use crate::future::{After, ResponseFuture};

/// Counts 401 answers per network prefix for the credential-stuffing detector, and
/// stops networks under a `block` or `throttle` penalty before authentication runs.
///
/// The auth layer answers 401 before the inner [`crate::AnomalyLayer`] runs, so that
/// layer never sees failed logins against the auth layer itself. This one is made by
/// [`crate::AnomalyLayer::failure_watch`], shares its state, and goes between the
/// privacy layer and the auth layer. It reads only the [`tollgate_core::ClientContext`]
/// and the response status. When it is installed, the inner layer leaves 401
/// counting to it, so nothing is counted twice.
///
/// ```
/// use axum::{Router, routing::get};
/// use tollgate_anomaly::{AnomalyConfig, AnomalyLayer};
/// use tollgate_core::{Pseudonymizer, PseudonymSecret};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[3; 32]).unwrap(), std::time::Duration::from_secs(86_400));
/// let anomaly = AnomalyLayer::from_config(&AnomalyConfig::default(), p).unwrap();
/// let app: Router = Router::new()
///     .route("/v1/items/{id}", get(|| async { "item" }))
///     .layer(anomaly.clone())
///     // .layer(auth) would go here
///     .layer(anomaly.failure_watch());
/// ```
#[derive(Clone)]
pub struct FailureWatchLayer {
    engine: Arc<Engine>,
}

impl fmt::Debug for FailureWatchLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FailureWatchLayer").field(&self.engine).finish()
    }
}

impl FailureWatchLayer {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        FailureWatchLayer { engine }
    }
}

impl<S> Layer<S> for FailureWatchLayer {
    type Service = FailureWatchService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FailureWatchService {
            inner,
            engine: Arc::clone(&self.engine),
        }
    }
}

/// The service made by [`FailureWatchLayer`].
#[derive(Clone)]
pub struct FailureWatchService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S: fmt::Debug> fmt::Debug for FailureWatchService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureWatchService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for FailureWatchService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.engine.on_watch_request(&mut req) {
            WatchStart::Respond(problem) => ResponseFuture::ready(self.engine.responder.respond(problem)),
            // Only a 401 needs the engine again.
            WatchStart::Pass(watch) => ResponseFuture::inner(self.inner.call(req), watch.map(After::Watch)),
            WatchStart::Throttle(pending, tags, watch) => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let engine = Arc::clone(&self.engine);
                ResponseFuture::boxed(Box::pin(async move {
                    if let Some(problem) = engine.watch_throttle(pending, tags).await {
                        return Ok(engine.responder.respond(problem));
                    }
                    let mut response = inner.call(req).await?;
                    if let Some(watch) = watch {
                        watch.finish(&mut response);
                    }
                    Ok(response)
                }))
            }
        }
    }
}
