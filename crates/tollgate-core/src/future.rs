//! The response future every layer that may answer early shares.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::response::Response;
use pin_project_lite::pin_project;

/// A boxed response future, for a request that must wait on a store or a network call.
pub type BoxResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

/// Work done on the inner service's response as it passes back out (adding headers,
/// recording the status). `()` does nothing.
pub trait OnResponse {
    /// Adjusts the response.
    fn on_response(self, response: &mut Response);
}

impl OnResponse for () {
    fn on_response(self, _: &mut Response) {}
}

impl<T: OnResponse> OnResponse for Option<T> {
    fn on_response(self, response: &mut Response) {
        if let Some(t) = self {
            t.on_response(response);
        }
    }
}

pin_project! {
    /// The response future of a layer that may answer early: the inner service's
    /// future on the fast path (then `A` adjusts its response), a ready answer when
    /// the layer refuses the request, or a boxed future when the decision must wait.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use axum::response::{IntoResponse, Response};
    /// use tollgate_core::future::ResponseFuture;
    ///
    /// let refused: ResponseFuture<std::future::Ready<Result<Response, ()>>, ()> =
    ///     ResponseFuture::ready(http::StatusCode::TOO_MANY_REQUESTS.into_response());
    /// assert_eq!(refused.await.unwrap().status(), 429);
    /// # });
    /// ```
    pub struct ResponseFuture<F, E, A = ()> {
        #[pin]
        kind: Kind<F, E, A>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, E, A> {
        Inner { #[pin] future: F, after: Option<A> },
        Ready { response: Option<Response> },
        Boxed { future: BoxResponseFuture<E> },
    }
}

impl<F, E, A> ResponseFuture<F, E, A> {
    /// The inner service's future; `after` adjusts its response.
    pub fn inner(future: F, after: A) -> Self {
        ResponseFuture {
            kind: Kind::Inner {
                future,
                after: Some(after),
            },
        }
    }

    /// An answer given now, without calling the inner service.
    pub fn ready(response: Response) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    /// A decision that must wait.
    pub fn boxed(future: BoxResponseFuture<E>) -> Self {
        ResponseFuture {
            kind: Kind::Boxed { future },
        }
    }
}

impl<F, E, A> fmt::Debug for ResponseFuture<F, E, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Ready { .. } => "ready",
            Kind::Boxed { .. } => "boxed",
        };
        f.debug_tuple("ResponseFuture").field(&kind).finish()
    }
}

impl<F, E, A> Future for ResponseFuture<F, E, A>
where
    F: Future<Output = Result<Response, E>>,
    A: OnResponse,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, after } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(after) = after.take() {
                    after.on_response(&mut response);
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}
