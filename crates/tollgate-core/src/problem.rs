//! RFC 9457 `application/problem+json` answers, with a stable `type` URI per cause.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde::Serialize;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One cause of an early answer: a stable `type` URI, a short title and a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ProblemType {
    /// The stable `type` URI. Clients may match on it.
    pub uri: &'static str,
    /// A short summary that does not change between occurrences.
    pub title: &'static str,
    /// The HTTP status.
    #[serde(serialize_with = "status_code")]
    pub status: StatusCode,
}

fn status_code<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

/// Every problem type tollgate answers with.
pub mod types {
    use super::ProblemType;
    use http::StatusCode;

    macro_rules! problem_type {
        ($(#[$doc:meta])* $name:ident, $slug:literal, $title:literal, $status:ident) => {
            $(#[$doc])*
            pub const $name: ProblemType = ProblemType {
                uri: concat!("urn:tollgate:problem:", $slug),
                title: $title,
                status: StatusCode::$status,
            };
        };
    }

    problem_type!(
        /// No usable credentials were sent, or they are malformed (401, `invalid_request`).
        MISSING_CREDENTIALS, "missing-credentials", "Authentication required", UNAUTHORIZED);
    problem_type!(
        /// The credentials are malformed beyond reading (400, `invalid_request`).
        MALFORMED_CREDENTIALS, "malformed-credentials", "Malformed credentials", BAD_REQUEST);
    problem_type!(
        /// The token or key is invalid, expired or unknown (401, `invalid_token`).
        INVALID_TOKEN, "invalid-token", "Invalid credentials", UNAUTHORIZED);
    problem_type!(
        /// The DPoP proof (RFC 9449) is missing, malformed, replayed or does not match
        /// the request or the token (401, `invalid_dpop_proof`).
        INVALID_DPOP_PROOF, "invalid-dpop-proof", "Invalid DPoP proof", UNAUTHORIZED);
    problem_type!(
        /// The DPoP proof must carry the server nonce given in `DPoP-Nonce` (401,
        /// `use_dpop_nonce`): retry with it.
        USE_DPOP_NONCE, "use-dpop-nonce", "DPoP nonce required", UNAUTHORIZED);
    problem_type!(
        /// The credential is on the freeze list (401, `invalid_token`).
        CREDENTIAL_FROZEN, "credential-frozen", "Credentials frozen", UNAUTHORIZED);
    problem_type!(
        /// The credential lacks a scope this route needs (403, `insufficient_scope`).
        INSUFFICIENT_SCOPE, "insufficient-scope", "Insufficient scope", FORBIDDEN);
    problem_type!(
        /// The session changed enough that the client must authenticate again (401).
        SESSION_CHANGED, "session-changed", "Session changed", UNAUTHORIZED);
    problem_type!(
        /// A rate limit was reached (429).
        RATE_LIMITED, "rate-limited", "Too many requests", TOO_MANY_REQUESTS);
    problem_type!(
        /// The anomaly layer's policy blocked the request (403).
        REQUEST_BLOCKED, "request-blocked", "Request blocked", FORBIDDEN);
    problem_type!(
        /// The request body did not arrive in time (408).
        REQUEST_TIMEOUT, "request-timeout", "Request timeout", REQUEST_TIMEOUT);
    problem_type!(
        /// A request header is too large (431).
        HEADER_REJECTED, "header-rejected", "Request header rejected", REQUEST_HEADER_FIELDS_TOO_LARGE);
    problem_type!(
        /// The request's path, query or body does not parse as the route expects (400).
        INVALID_REQUEST, "invalid-request", "Invalid request", BAD_REQUEST);
    problem_type!(
        /// No route matches the path (404).
        NOT_FOUND, "not-found", "Not found", NOT_FOUND);
    problem_type!(
        /// The route exists but not for this method (405).
        METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", METHOD_NOT_ALLOWED);
    problem_type!(
        /// The body is larger than the route accepts (413).
        PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large", PAYLOAD_TOO_LARGE);
    problem_type!(
        /// The body's media type is not one the route reads (415).
        UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type", UNSUPPORTED_MEDIA_TYPE);
    problem_type!(
        /// The body parses but does not hold what the route expects (422).
        UNPROCESSABLE_CONTENT, "unprocessable-content", "Unprocessable content", UNPROCESSABLE_ENTITY);
    problem_type!(
        /// A backend the decision depends on (introspection, a store) is unreachable (503).
        UNAVAILABLE, "unavailable", "Temporarily unavailable", SERVICE_UNAVAILABLE);
    problem_type!(
        /// The handler failed (panicked): the stack answered for it (500).
        INTERNAL_ERROR, "internal-error", "Internal server error", INTERNAL_SERVER_ERROR);
    problem_type!(
        /// The stack is assembled wrongly, for example an extractor without its layer (500).
        MISCONFIGURED, "misconfigured", "Server misconfigured", INTERNAL_SERVER_ERROR);
}

/// An early answer: a problem type, an optional detail and extra headers.
///
/// ```
/// use axum::response::IntoResponse;
/// use tollgate_core::problem::{Problem, types};
///
/// let response = Problem::new(types::RATE_LIMITED)
///     .with_detail("the free plan allows 10 requests per second")
///     .with_header(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"))
///     .into_response();
/// assert_eq!(response.status(), 429);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// ```
#[derive(Clone, Debug)]
pub struct Problem {
    ty: ProblemType,
    detail: Option<Cow<'static, str>>,
    headers: HeaderMap,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl Problem {
    /// A problem of this type, with no detail.
    pub fn new(ty: ProblemType) -> Self {
        Problem {
            ty,
            detail: None,
            headers: HeaderMap::new(),
        }
    }

    /// A 500 that names the setting or layer at fault.
    pub fn misconfigured(detail: &'static str) -> Self {
        Problem::new(types::MISCONFIGURED).with_detail(detail)
    }

    /// Adds a human-readable detail. It must not contain the caller's identifiers.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a response header (`WWW-Authenticate`, `Retry-After`, ...).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The problem type.
    pub fn problem_type(&self) -> ProblemType {
        self.ty
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.ty.status
    }

    /// The detail, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The extra headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The problem+json body.
    pub fn body(&self) -> String {
        serde_json::to_string(&Body {
            ty: self.ty.uri,
            title: self.ty.title,
            status: self.ty.status.as_u16(),
            detail: self.detail.as_deref(),
        })
        .expect("problem body serializes")
    }
}

impl Problem {
    /// The problem for an extractor's rejection of the request, by its status, with
    /// no detail: axum's rejection texts quote the input (`Cannot parse
    /// \`alice@example.com\` to a \`u64\``), which a problem never echoes.
    ///
    /// ```
    /// use axum::extract::Path;
    /// use axum::extract::rejection::PathRejection;
    /// use tollgate_core::problem::{Problem, types};
    ///
    /// async fn item(id: Result<Path<u64>, PathRejection>) -> Result<String, Problem> {
    ///     let Path(id) = id?; // a path that is not a number answers 400 problem+json
    ///     Ok(format!("item {id}"))
    /// }
    /// assert_eq!(Problem::for_rejection(http::StatusCode::UNSUPPORTED_MEDIA_TYPE).problem_type(),
    ///            types::UNSUPPORTED_MEDIA_TYPE);
    /// ```
    pub fn for_rejection(status: StatusCode) -> Problem {
        Problem::new(match status {
            StatusCode::NOT_FOUND => types::NOT_FOUND,
            StatusCode::METHOD_NOT_ALLOWED => types::METHOD_NOT_ALLOWED,
            StatusCode::PAYLOAD_TOO_LARGE => types::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => types::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::UNPROCESSABLE_ENTITY => types::UNPROCESSABLE_CONTENT,
            s if s.is_server_error() => types::MISCONFIGURED,
            _ => types::INVALID_REQUEST,
        })
    }
}

/// A handler for [`axum::Router::method_not_allowed_fallback`]: 405 as problem+json
/// (axum's own 405 has no body; the `Allow` header is still added).
///
/// ```
/// use axum::{Router, routing::get};
/// use tollgate_core::problem::method_not_allowed;
///
/// let app: Router = Router::new()
///     .route("/items", get(|| async { "items" }))
///     .method_not_allowed_fallback(method_not_allowed);
/// ```
pub async fn method_not_allowed() -> Problem {
    Problem::new(types::METHOD_NOT_ALLOWED)
}

macro_rules! from_rejection {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for Problem {
            fn from(rejection: $rejection) -> Self {
                Problem::for_rejection(rejection.status())
            }
        }
    )*};
}

from_rejection!(
    axum::extract::rejection::PathRejection,
    axum::extract::rejection::QueryRejection,
    axum::extract::rejection::JsonRejection,
    axum::extract::rejection::FormRejection,
    axum::extract::rejection::BytesRejection,
    axum::extract::rejection::StringRejection
);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {d}", self.ty.title),
            None => f.write_str(self.ty.title),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.ty.status, self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        // Early answers describe this request only; no cache should keep them.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.extend(self.headers);
        response
    }
}

/// Turns problems into responses; the default writes problem+json. Users who need
/// another error shape give their own function.
///
/// ```
/// use axum::response::{IntoResponse, Response};
/// use tollgate_core::problem::{Problem, ProblemResponder, types};
///
/// let plain = ProblemResponder::new(|p: Problem| (p.status(), p.to_string()).into_response());
/// let response = plain.respond(Problem::new(types::INVALID_TOKEN));
/// assert_eq!(response.status(), 401);
/// ```
#[derive(Clone, Default)]
pub struct ProblemResponder(Option<Arc<dyn Fn(Problem) -> Response + Send + Sync>>);

impl ProblemResponder {
    /// A responder that calls `f`.
    pub fn new(f: impl Fn(Problem) -> Response + Send + Sync + 'static) -> Self {
        ProblemResponder(Some(Arc::new(f)))
    }

    /// The response for `problem`.
    pub fn respond(&self, problem: Problem) -> Response {
        match &self.0 {
            Some(f) => f(problem),
            None => problem.into_response(),
        }
    }
}

impl fmt::Debug for ProblemResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ProblemResponder(custom)"
        } else {
            "ProblemResponder(problem+json)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let p = Problem::new(types::INVALID_TOKEN).with_detail("token expired");
        let v: serde_json::Value = serde_json::from_str(&p.body()).unwrap();
        assert_eq!(v["type"], "urn:tollgate:problem:invalid-token");
        assert_eq!(v["status"], 401);
        assert_eq!(v["detail"], "token expired");
    }

    #[test]
    fn response_headers() {
        let r = Problem::new(types::RATE_LIMITED)
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("3"))
            .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "3");
    }

    #[tokio::test]
    async fn extractor_rejections_answer_problems_that_do_not_echo_the_input() {
        use axum::extract::rejection::{JsonRejection, PathRejection};
        use axum::extract::{Json, Path};
        use axum::routing::{get, post};
        use tower::ServiceExt;

        async fn item(id: Result<Path<u64>, PathRejection>) -> Result<String, Problem> {
            Ok(id?.0.to_string())
        }
        async fn create(body: Result<Json<Vec<u64>>, JsonRejection>) -> Result<String, Problem> {
            Ok(body?.0.len().to_string())
        }
        let app = axum::Router::new()
            .route("/items/{id}", get(item))
            .route("/items", post(create));
        let send = |method: &str, uri: &str, content_type: &str, body: &'static str| {
            let request = http::Request::builder()
                .method(method)
                .uri(uri)
                .header(CONTENT_TYPE, content_type)
                .body(axum::body::Body::from(body))
                .unwrap();
            app.clone().oneshot(request)
        };
        for (method, uri, content_type, body, expected) in [
            (
                "GET",
                "/items/alice@example.com",
                "text/plain",
                "",
                types::INVALID_REQUEST,
            ),
            (
                "POST",
                "/items",
                "text/plain",
                "[1]",
                types::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "POST",
                "/items",
                "application/json",
                "[alice@example.com",
                types::INVALID_REQUEST,
            ),
            (
                "POST",
                "/items",
                "application/json",
                r#"{"alice":"example.com"}"#,
                types::UNPROCESSABLE_CONTENT,
            ),
        ] {
            let response = send(method, uri, content_type, body).await.unwrap();
            assert_eq!(response.status(), expected.status, "{uri} {body}");
            assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
            let bytes = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            assert!(text.contains(expected.uri), "{text}");
            assert!(!text.contains("alice"), "{text}");
        }
        let ok = send("POST", "/items", "application/json", "[1,2]").await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
