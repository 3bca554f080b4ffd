//! [`FailureWatchLayer`]: the part of the anomaly layer that sits outside auth.

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
use tower::{BoxError, Layer, Service};

use crate::engine::{self, Engine};

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
/// let anomaly = AnomalyLayer::new(AnomalyConfig::default(), p).unwrap();
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
    type Service = FailureWatch<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FailureWatch {
            inner,
            engine: Arc::clone(&self.engine),
        }
    }
}

/// The service made by [`FailureWatchLayer`].
#[derive(Clone)]
pub struct FailureWatch<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S: fmt::Debug> fmt::Debug for FailureWatch<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureWatch")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for FailureWatch<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = WatchFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let (problem, watch) = self.engine.on_watch_request(&mut req);
        let state = match problem {
            Some(problem) => WatchState::Early {
                response: Some(self.engine.responder.respond(problem)),
            },
            None => WatchState::Inner {
                fut: self.inner.call(req),
                // Only a 401 needs the engine again.
                watch: watch.map(|state| Watch {
                    engine: Arc::clone(&self.engine),
                    state,
                }),
            },
        };
        WatchFuture { state }
    }
}

struct Watch {
    engine: Arc<Engine>,
    state: engine::WatchState,
}

pin_project! {
    #[project = WatchProj]
    enum WatchState<F> {
        Inner { #[pin] fut: F, watch: Option<Watch> },
        Early { response: Option<Response> },
    }
}

pin_project! {
    /// The response future of [`FailureWatch`].
    pub struct WatchFuture<F> {
        #[pin]
        state: WatchState<F>,
    }
}

impl<F> fmt::Debug for WatchFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for WatchFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            WatchProj::Early { response } => {
                Poll::Ready(Ok(response.take().expect("WatchFuture polled after completion")))
            }
            WatchProj::Inner { fut, watch } => {
                let mut response = ready!(fut.poll(cx))?.map(Body::new);
                if let Some(w) = watch.take() {
                    w.engine.on_watch_response(&w.state, &mut response);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}
