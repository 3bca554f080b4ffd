//! [`ResponseFuture`]: the response future of the anomaly layer and its failure watch.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::response::Response;
use pin_project_lite::pin_project;
use tollgate_core::future::{BoxResponseFuture, ResponseFuture as Answer};

use crate::engine::{BoxFuture, Post, Watch};

/// The response phase of a request the layer let through.
pub(crate) enum After {
    /// The inner layer's detectors that read the status, and a freeze they may decide.
    Layer(Post),
    /// The failure watch's count of a 401.
    Watch(Watch),
}

pin_project! {
    /// The response future of [`AnomalyService`](crate::AnomalyService) and
    /// [`FailureWatchService`](crate::FailureWatchService): an early answer (403, 429,
    /// or 401 after a freeze), or the inner service's response after the
    /// status-reading detectors have run and the tags are attached.
    pub struct ResponseFuture<F, E> {
        #[pin]
        answer: Answer<F, E>,
        after: Option<After>,
        // A freeze decided on the response, run before the response goes out.
        freezing: Option<(BoxFuture<()>, Response)>,
    }
}

impl<F, E> ResponseFuture<F, E> {
    pub(crate) fn inner(future: F, after: Option<After>) -> Self {
        ResponseFuture {
            answer: Answer::inner(future, ()),
            after,
            freezing: None,
        }
    }

    pub(crate) fn ready(response: Response) -> Self {
        ResponseFuture {
            answer: Answer::ready(response),
            after: None,
            freezing: None,
        }
    }

    pub(crate) fn boxed(future: BoxResponseFuture<E>) -> Self {
        ResponseFuture {
            answer: Answer::boxed(future),
            after: None,
            freezing: None,
        }
    }
}

impl<F, E> fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("answer", &self.answer)
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some((freeze, _)) = this.freezing {
            ready!(freeze.as_mut().poll(cx));
            let (_, response) = this.freezing.take().expect("a freeze in progress");
            return Poll::Ready(Ok(response));
        }
        let mut response = ready!(this.answer.poll(cx))?;
        match this.after.take() {
            Some(After::Layer(post)) => {
                if let Some(mut freeze) = post.finish(&mut response)
                    && freeze.as_mut().poll(cx).is_pending()
                {
                    *this.freezing = Some((freeze, response));
                    return Poll::Pending;
                }
            }
            Some(After::Watch(watch)) => watch.finish(&mut response),
            None => {}
        }
        Poll::Ready(Ok(response))
    }
}
