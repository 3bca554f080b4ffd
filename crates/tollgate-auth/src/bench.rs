//! Entry points into the request path for the crate's benchmarks and fuzz targets;
//! not a stable API.

use http::HeaderMap;
use tollgate_core::Principal;

use crate::authenticator::Step;
use crate::cache::Presented;
use crate::jwt::Outcome;
use crate::layer::AuthLayer;

/// Verifies a JWT with no cache involved; true if it verifies.
pub fn verify_jwt(layer: &AuthLayer, token: &str) -> bool {
    let a = layer.authenticator();
    let issuer = a.jwt.first().expect("JWT configured");
    matches!(
        issuer
            .verifier
            .verify(token, false, a.clock.now(), &a.pseudonymizer, &issuer.tiers),
        Outcome::Verified(_)
    )
}

/// The synchronous request path: read the credential from `headers`, consult the
/// cache (or verify), check the freeze list. `None` on any failure.
pub fn authenticate(layer: &AuthLayer, headers: &HeaderMap) -> Option<Principal> {
    let a = layer.authenticator();
    let credential = a.source.read(headers).ok()??;
    match a.authenticate_now(credential) {
        Step::Done(p) => match a.freeze_now(p.principal()) {
            Some(Ok(())) => Some(p.principal().clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Checks the DPoP proof in `headers` for `token` as the layer would, all but the
/// replay cache; true if it passes.
pub fn verify_dpop(
    layer: &AuthLayer,
    method: &http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    token: &[u8],
) -> bool {
    let a = layer.authenticator();
    let verifier = a.dpop.as_ref().expect("DPoP configured");
    verifier
        .verify(headers, method, uri, token, a.clock.now(), &a.pseudonymizer)
        .is_ok()
}

/// The cache key computation alone.
pub fn cache_key(layer: &AuthLayer, token: &[u8]) -> u128 {
    layer.authenticator().cache.key(Presented::Bearer, token)
}

/// Parses `body` as a JWKS document under the first issuer's rules, as a refresh
/// would; the number of usable keys, `None` if the document is refused.
pub fn parse_jwks(layer: &AuthLayer, body: &[u8]) -> Option<usize> {
    let issuer = layer.authenticator().jwt.first()?;
    crate::jwks::parse_document(body, &issuer.verifier.rules)
        .ok()
        .map(|keys| keys.len())
}
