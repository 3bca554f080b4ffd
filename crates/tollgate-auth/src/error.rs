//! Why a request was refused, and the answer it gets.

use std::fmt;

use http::HeaderValue;
use http::header::WWW_AUTHENTICATE;
use tollgate_core::problem::{Problem, ProblemType, types};

/// Why authentication failed. Each cause has a stable slug (recorded in the span's
/// `auth.error` field), an RFC 6750 error code and a problem type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials were sent and the route requires them.
    MissingCredentials,
    /// The `Authorization` header uses a scheme this layer does not accept.
    UnsupportedScheme,
    /// The credentials cannot be read: empty, bad characters, or two kinds at once.
    MalformedRequest,
    /// An authentication header was sent more than once.
    RepeatedHeader,
    /// An authentication header is longer than the configured limit.
    OversizedCredentials,
    /// The token is not a well-formed JWT (shape, base64, JSON, `crit`).
    MalformedToken,
    /// The token's `alg` is `none`, unknown, not allowed, or not the key's algorithm.
    UnsupportedAlgorithm,
    /// No key matches the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// The token has expired.
    Expired,
    /// The token is not valid yet (`nbf`).
    NotYetValid,
    /// The `iss` claim is not the configured issuer.
    WrongIssuer,
    /// The `aud` claim does not name a configured audience.
    WrongAudience,
    /// A required claim is missing or has the wrong format.
    MissingClaim,
    /// The token's `typ` header is not `at+jwt` (RFC 9068 profile).
    WrongType,
    /// A bearer token that no configured verifier accepts (opaque token without
    /// introspection, or a JWT without JWT verification).
    UnsupportedToken,
    /// The API key is unknown.
    UnknownApiKey,
    /// The introspection endpoint answered `active: false`.
    InactiveToken,
    /// The credential or its subject is on the freeze list.
    Frozen,
    /// The introspection endpoint could not be reached or answered garbage.
    IntrospectionUnavailable,
    /// The freeze list could not be read and its failure policy is closed.
    FreezeListUnavailable,
    /// The credential lacks a scope the route requires.
    InsufficientScope,
    /// `Authorization: DPoP` without a `DPoP` proof header.
    DpopMissing,
    /// The DPoP proof is malformed: shape, base64, JSON, `typ`, `crit`, a missing
    /// claim, or the header sent twice.
    DpopInvalid,
    /// The DPoP proof's `alg` is `none`, symmetric or not allowed.
    DpopAlgorithm,
    /// The DPoP proof's `jwk` is missing, holds private parts or does not fit `alg`.
    DpopKey,
    /// The DPoP proof's signature does not verify with its `jwk`.
    DpopSignature,
    /// The DPoP proof's `htm` is not the request method.
    DpopMethod,
    /// The DPoP proof's `htu` is not the request URI.
    DpopUri,
    /// The DPoP proof's `iat` is too old or in the future.
    DpopTime,
    /// The DPoP proof's `ath` is missing or not the hash of the access token.
    DpopTokenHash,
    /// The DPoP proof's `jti` was already used.
    DpopReplay,
    /// The DPoP proof lacks a current server nonce (`use_dpop_nonce`).
    DpopNonce,
    /// The token is bound (`cnf.jkt`) to another key than the proof's.
    DpopKeyMismatch,
    /// A DPoP-bound token was presented as a bearer token.
    DpopBoundBearer,
    /// A token without `cnf.jkt` was presented with the DPoP scheme.
    DpopUnboundToken,
    /// The route requires a DPoP-bound token with a proof.
    DpopRequired,
    /// The DPoP replay cache could not be read and its failure policy is closed.
    ReplayCacheUnavailable,
}

impl AuthError {
    /// The stable slug recorded in spans (`auth.error`): never contains the credential.
    pub const fn slug(self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "missing_credentials",
            AuthError::UnsupportedScheme => "unsupported_scheme",
            AuthError::MalformedRequest => "malformed_request",
            AuthError::RepeatedHeader => "repeated_header",
            AuthError::OversizedCredentials => "oversized_credentials",
            AuthError::MalformedToken => "malformed_token",
            AuthError::UnsupportedAlgorithm => "unsupported_alg",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim => "missing_claim",
            AuthError::WrongType => "wrong_typ",
            AuthError::UnsupportedToken => "unsupported_token",
            AuthError::UnknownApiKey => "unknown_api_key",
            AuthError::InactiveToken => "inactive_token",
            AuthError::Frozen => "frozen",
            AuthError::IntrospectionUnavailable => "introspection_unavailable",
            AuthError::FreezeListUnavailable => "freeze_list_unavailable",
            AuthError::InsufficientScope => "insufficient_scope",
            AuthError::DpopMissing => "dpop_missing",
            AuthError::DpopInvalid => "dpop_invalid",
            AuthError::DpopAlgorithm => "dpop_alg",
            AuthError::DpopKey => "dpop_jwk",
            AuthError::DpopSignature => "dpop_signature",
            AuthError::DpopMethod => "dpop_htm",
            AuthError::DpopUri => "dpop_htu",
            AuthError::DpopTime => "dpop_iat",
            AuthError::DpopTokenHash => "dpop_ath",
            AuthError::DpopReplay => "dpop_replay",
            AuthError::DpopNonce => "dpop_nonce",
            AuthError::DpopKeyMismatch => "dpop_key_mismatch",
            AuthError::DpopBoundBearer => "dpop_bound_bearer",
            AuthError::DpopUnboundToken => "dpop_unbound_token",
            AuthError::DpopRequired => "dpop_required",
            AuthError::ReplayCacheUnavailable => "replay_cache_unavailable",
        }
    }

    /// The RFC 6750 (or RFC 9449 §7.1) error code, if the answer carries one. A
    /// request without any credentials gets none (RFC 6750 §3.1).
    pub const fn rfc6750_code(self) -> Option<&'static str> {
        if self.is_dpop_proof() {
            return Some("invalid_dpop_proof");
        }
        match self {
            AuthError::DpopNonce => Some("use_dpop_nonce"),
            AuthError::ReplayCacheUnavailable => None,
            AuthError::MissingCredentials | AuthError::UnsupportedScheme => None,
            AuthError::MalformedRequest | AuthError::RepeatedHeader | AuthError::OversizedCredentials => {
                Some("invalid_request")
            }
            AuthError::InsufficientScope => Some("insufficient_scope"),
            AuthError::IntrospectionUnavailable | AuthError::FreezeListUnavailable => None,
            _ => Some("invalid_token"),
        }
    }

    /// The problem type of the answer.
    pub const fn problem_type(self) -> ProblemType {
        match self {
            AuthError::MissingCredentials | AuthError::UnsupportedScheme => types::MISSING_CREDENTIALS,
            // A second header is a malformed request (RFC 6750 `invalid_request`, 400),
            // not a large one.
            AuthError::MalformedRequest | AuthError::RepeatedHeader => types::MALFORMED_CREDENTIALS,
            AuthError::OversizedCredentials => types::HEADER_REJECTED,
            AuthError::Frozen => types::CREDENTIAL_FROZEN,
            AuthError::InsufficientScope => types::INSUFFICIENT_SCOPE,
            AuthError::IntrospectionUnavailable
            | AuthError::FreezeListUnavailable
            | AuthError::ReplayCacheUnavailable => types::UNAVAILABLE,
            AuthError::DpopNonce => types::USE_DPOP_NONCE,
            e if e.is_dpop_proof() => types::INVALID_DPOP_PROOF,
            _ => types::INVALID_TOKEN,
        }
    }

    /// A short, fixed, human-readable detail (no identifiers).
    pub const fn detail(self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "this resource requires credentials",
            AuthError::UnsupportedScheme => "the Authorization scheme is not accepted here",
            AuthError::MalformedRequest => "the credentials could not be read",
            AuthError::RepeatedHeader => "an authentication header was sent more than once",
            AuthError::OversizedCredentials => "an authentication header is too long",
            AuthError::MalformedToken => "the token is malformed",
            AuthError::UnsupportedAlgorithm => "the token's algorithm is not accepted",
            AuthError::UnknownKey => "the token was signed by an unknown key",
            AuthError::BadSignature => "the token's signature does not verify",
            AuthError::Expired => "the token has expired",
            AuthError::NotYetValid => "the token is not valid yet",
            AuthError::WrongIssuer => "the token was issued by another issuer",
            AuthError::WrongAudience => "the token is meant for another audience",
            AuthError::MissingClaim => "the token lacks a required claim",
            AuthError::WrongType => "the token is not an access token (typ)",
            AuthError::UnsupportedToken => "this kind of token is not accepted here",
            AuthError::UnknownApiKey => "the API key is not known",
            AuthError::InactiveToken => "the token is not active",
            AuthError::Frozen => "the credentials are frozen",
            AuthError::IntrospectionUnavailable => "the token could not be checked; try again later",
            AuthError::FreezeListUnavailable => "the credentials could not be checked; try again later",
            AuthError::InsufficientScope => "the credentials lack a scope this resource requires",
            AuthError::DpopMissing => "the DPoP scheme needs a DPoP proof header",
            AuthError::DpopInvalid => "the DPoP proof is malformed",
            AuthError::DpopAlgorithm => "the DPoP proof's algorithm is not accepted",
            AuthError::DpopKey => "the DPoP proof's key is not an acceptable public key",
            AuthError::DpopSignature => "the DPoP proof's signature does not verify",
            AuthError::DpopMethod => "the DPoP proof is for another method",
            AuthError::DpopUri => "the DPoP proof is for another URI",
            AuthError::DpopTime => "the DPoP proof is too old or from the future",
            AuthError::DpopTokenHash => "the DPoP proof is for another access token",
            AuthError::DpopReplay => "the DPoP proof was already used",
            AuthError::DpopNonce => "the DPoP proof must carry the nonce in DPoP-Nonce",
            AuthError::DpopKeyMismatch => "the token is bound to another key than the DPoP proof's",
            AuthError::DpopBoundBearer => "a DPoP-bound token must be presented with the DPoP scheme",
            AuthError::DpopUnboundToken => "the DPoP scheme needs a DPoP-bound token",
            AuthError::DpopRequired => "this resource requires a DPoP-bound token and a DPoP proof",
            AuthError::ReplayCacheUnavailable => "the DPoP proof could not be checked; try again later",
        }
    }

    /// True for the errors about the proof itself (`invalid_dpop_proof`).
    pub const fn is_dpop_proof(self) -> bool {
        matches!(
            self,
            AuthError::DpopMissing
                | AuthError::DpopInvalid
                | AuthError::DpopAlgorithm
                | AuthError::DpopKey
                | AuthError::DpopSignature
                | AuthError::DpopMethod
                | AuthError::DpopUri
                | AuthError::DpopTime
                | AuthError::DpopTokenHash
                | AuthError::DpopReplay
        )
    }

    /// True for the errors answered with a `DPoP` challenge whatever the request.
    pub const fn is_dpop(self) -> bool {
        matches!(
            self,
            AuthError::DpopMissing
                | AuthError::DpopInvalid
                | AuthError::DpopAlgorithm
                | AuthError::DpopKey
                | AuthError::DpopSignature
                | AuthError::DpopMethod
                | AuthError::DpopUri
                | AuthError::DpopTime
                | AuthError::DpopTokenHash
                | AuthError::DpopReplay
                | AuthError::DpopNonce
                | AuthError::DpopKeyMismatch
                | AuthError::DpopBoundBearer
                | AuthError::DpopUnboundToken
                | AuthError::DpopRequired
        )
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

impl std::error::Error for AuthError {}

/// Precomputed `WWW-Authenticate` values, so an error answer formats nothing.
#[derive(Clone, Debug)]
pub(crate) struct Challenges {
    plain: HeaderValue,
    invalid_request: HeaderValue,
    invalid_token: HeaderValue,
    dpop: Option<DpopChallenges>,
}

/// The `DPoP` challenges (RFC 9449 §7.1), with the accepted algorithms.
#[derive(Clone, Debug)]
struct DpopChallenges {
    plain: HeaderValue,
    invalid_request: HeaderValue,
    invalid_token: HeaderValue,
    invalid_dpop_proof: HeaderValue,
    use_dpop_nonce: HeaderValue,
}

impl Challenges {
    pub(crate) fn new(realm: Option<&str>) -> Self {
        Self::with_dpop(realm, None, None)
    }

    /// Challenges naming `realm`; with `dpop_algs`, `DPoP` challenges too; with
    /// `resource_metadata`, its URL (RFC 9728 §5.1) in every challenge.
    pub(crate) fn with_dpop(
        realm: Option<&str>,
        dpop_algs: Option<&str>,
        resource_metadata: Option<&str>,
    ) -> Self {
        let metadata =
            resource_metadata.map(|u| format!("resource_metadata=\"{}\"", u.replace(['"', '\\'], "")));
        let realm = realm
            .filter(|r| !r.is_empty())
            .map(|r| format!("realm=\"{}\"", r.replace(['"', '\\'], "")));
        let dpop = dpop_algs.map(|algs| {
            let value = |code: Option<&str>| {
                let mut params: Vec<String> = Vec::new();
                params.extend(realm.clone());
                if let Some(c) = code {
                    params.push(format!("error=\"{c}\""));
                }
                params.push(format!("algs=\"{algs}\""));
                params.extend(metadata.clone());
                HeaderValue::from_str(&format!("DPoP {}", params.join(", ")))
                    .unwrap_or_else(|_| HeaderValue::from_static("DPoP"))
            };
            DpopChallenges {
                plain: value(None),
                invalid_request: value(Some("invalid_request")),
                invalid_token: value(Some("invalid_token")),
                invalid_dpop_proof: value(Some("invalid_dpop_proof")),
                use_dpop_nonce: value(Some("use_dpop_nonce")),
            }
        });
        let value = |code: Option<&str>| {
            let mut params: Vec<String> = Vec::new();
            params.extend(realm.clone());
            if let Some(c) = code {
                params.push(format!("error=\"{c}\""));
            }
            params.extend(metadata.clone());
            let text = if params.is_empty() {
                "Bearer".to_string()
            } else {
                format!("Bearer {}", params.join(", "))
            };
            HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
        };
        Challenges {
            plain: value(None),
            invalid_request: value(Some("invalid_request")),
            invalid_token: value(Some("invalid_token")),
            dpop,
        }
    }

    /// The problem for `error`, with its challenge on 401s.
    pub(crate) fn problem(&self, error: AuthError) -> Problem {
        self.problem_for(error, false)
    }

    /// The problem for `error`, with a `DPoP` challenge when `dpop` is true or the
    /// error is about DPoP (and DPoP is configured), a `Bearer` one otherwise.
    pub(crate) fn problem_for(&self, error: AuthError, dpop: bool) -> Problem {
        if let Some(d) = &self.dpop
            && (dpop || error.is_dpop())
        {
            let problem = Problem::new(error.problem_type()).with_detail(error.detail());
            let challenge = match (error.problem_type().status.as_u16(), error.rfc6750_code()) {
                (401, None) => &d.plain,
                (_, Some("invalid_request")) => &d.invalid_request,
                (401, Some("invalid_dpop_proof")) => &d.invalid_dpop_proof,
                (401, Some("use_dpop_nonce")) => &d.use_dpop_nonce,
                (401, Some(_)) => &d.invalid_token,
                _ => return problem,
            };
            return problem.with_header(WWW_AUTHENTICATE, challenge.clone());
        }
        let problem = Problem::new(error.problem_type()).with_detail(error.detail());
        // 401s carry a challenge (RFC 6750 §3); so do 400/431 `invalid_request`
        // answers, to name the error code. 503s and 403s (see `scope.rs`) do not.
        let challenge = match (error.problem_type().status.as_u16(), error.rfc6750_code()) {
            (401, None) => &self.plain,
            (_, Some("invalid_request")) => &self.invalid_request,
            (401, Some(_)) => &self.invalid_token,
            _ => return problem,
        };
        problem.with_header(WWW_AUTHENTICATE, challenge.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = Challenges::new(Some("api"));
        let p = c.problem(AuthError::Expired);
        assert_eq!(p.status(), 401);
        assert_eq!(
            p.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"api\", error=\"invalid_token\""
        );
        let p = c.problem(AuthError::MissingCredentials);
        assert_eq!(p.headers()[WWW_AUTHENTICATE], "Bearer realm=\"api\"");
        let p = c.problem(AuthError::OversizedCredentials);
        assert_eq!(p.status(), 431);
        assert_eq!(
            p.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"api\", error=\"invalid_request\""
        );
        let p = c.problem(AuthError::RepeatedHeader);
        assert_eq!(p.status(), 400);
        assert_eq!(
            p.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"api\", error=\"invalid_request\""
        );
        let p = c.problem(AuthError::IntrospectionUnavailable);
        assert_eq!(p.status(), 503);
        assert!(p.headers().get(WWW_AUTHENTICATE).is_none());
    }
}
