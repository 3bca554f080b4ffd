//! [`AnomalyService`]: runs the detectors on each request and its response.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::Response;
use http::Request;
use tower::Service;

use crate::engine::{Early, Engine};
use crate::future::{After, ResponseFuture};

/// The service made by [`AnomalyLayer`](crate::AnomalyLayer).
#[derive(Clone)]
pub struct AnomalyService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S> AnomalyService<S> {
    pub(crate) fn new(inner: S, engine: Arc<Engine>) -> Self {
        AnomalyService { inner, engine }
    }
}

impl<S: fmt::Debug> fmt::Debug for AnomalyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnomalyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for AnomalyService<S>
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
        let (early, post) = self.engine.on_request(&mut req);
        match early {
            Some(Early::Respond(problem)) => ResponseFuture::ready(self.engine.responder.respond(problem)),
            Some(Early::Freeze { freeze, actor, tags }) => {
                ResponseFuture::boxed(self.engine.run_freeze(freeze, actor, tags))
            }
            Some(Early::Throttle(pending, post)) => {
                // A remote throttle store: one boxed future, as the rate-limit layer's.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let engine = Arc::clone(&self.engine);
                ResponseFuture::boxed(Box::pin(async move {
                    match engine.throttle_then(pending, post).await {
                        Err(problem) => Ok(engine.responder.respond(problem)),
                        Ok(post) => {
                            let mut response = inner.call(req).await?;
                            if let Some(freeze) = post.finish(&mut response) {
                                freeze.await;
                            }
                            Ok(response)
                        }
                    }
                }))
            }
            None => ResponseFuture::inner(self.inner.call(req), post.map(After::Layer)),
        }
    }
}
