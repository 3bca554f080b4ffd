//! The response future of [`RateLimitService`](crate::RateLimitService).

use crate::status::RateLimitStatus;

/// The response future of [`RateLimitService`](crate::RateLimitService): the inner
/// service's future, whose response gets the rate-limit header fields and the
/// [`RateLimitStatus`]; a ready 429 when a limit refuses; or a boxed future when the
/// store must be awaited (a shared store).
pub type ResponseFuture<F, E> = tollgate_core::future::ResponseFuture<F, E, Option<RateLimitStatus>>;
