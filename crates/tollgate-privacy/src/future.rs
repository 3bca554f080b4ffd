//! The response future of the privacy layer: the completion line.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::Response;
use pin_project_lite::pin_project;
use tollgate_core::fields;
use tracing::Span;

use crate::TARGET;

pin_project! {
    /// The response future of [`PrivacyTraceService`](crate::PrivacyTraceService): records status and latency and emits
    /// the completion event when the response head is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        start: Instant,
        emit: bool,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, span: Span, start: Instant, emit: bool) -> Self {
        ResponseFuture {
            inner,
            span,
            start,
            emit,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let span: &Span = this.span;
        let _entered = span.enter();
        let result = ready!(this.inner.poll(cx));
        if *this.emit {
            let latency = u64::try_from(this.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            record_completion(span, status, latency);
            // A `&str` message, not `format_args!`: visitors get it through
            // `record_str`, without the formatting machinery (about 330 instructions).
            tracing::info!(target: TARGET, parent: span, message = "request completed");
        }
        Poll::Ready(result)
    }
}

/// Records status and latency with one call to the subscriber instead of two.
fn record_completion(span: &Span, status: Option<u16>, latency_us: u64) {
    let Some(metadata) = span.metadata() else { return };
    let names = metadata.fields();
    let (Some(status_field), Some(latency_field)) =
        (names.field(fields::STATUS), names.field(fields::LATENCY_US))
    else {
        return;
    };
    let status = status.map(u64::from);
    let values: [(&tracing::field::Field, Option<&dyn tracing::Value>); 2] = [
        (&status_field, status.as_ref().map(|s| s as &dyn tracing::Value)),
        (&latency_field, Some(&latency_us)),
    ];
    span.record_all(&names.value_set(&values));
}
