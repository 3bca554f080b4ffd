//! Reading the credential a request presents: `Authorization: Bearer`,
//! `Authorization: ApiKey` or the API key header.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::AuthError;

/// A presented credential, borrowed from the request headers.
pub(crate) enum Credential<'a> {
    /// The raw bearer token: validated only on a cache miss (a hit means these exact
    /// bytes were validated before).
    Bearer(&'a [u8]),
    /// An access token presented with `Authorization: DPoP` (RFC 9449 §7.1): valid
    /// only with a proof in the `DPoP` header and bound to its key.
    Dpop(&'a [u8]),
    ApiKey(&'a [u8]),
}

/// Where credentials are read from.
#[derive(Debug)]
pub(crate) struct CredentialSource {
    /// The API key header; `None` disables it.
    pub(crate) api_key_header: Option<HeaderName>,
    /// Accept `Authorization: ApiKey <key>`.
    pub(crate) api_key_scheme: bool,
    /// The longest authentication header accepted.
    pub(crate) max_bytes: usize,
}

impl CredentialSource {
    /// The request's credential, `None` if it sends none.
    pub(crate) fn read<'a>(&self, headers: &'a HeaderMap) -> Result<Option<Credential<'a>>, AuthError> {
        let authorization = match single(headers, &AUTHORIZATION, self.max_bytes)? {
            None => None,
            Some(v) => Some(self.parse_authorization(v.as_bytes())?),
        };
        let header = match &self.api_key_header {
            None => None,
            Some(name) => match single(headers, name, self.max_bytes)? {
                None => None,
                Some(v) => Some(Credential::ApiKey(api_key_bytes(v.as_bytes())?)),
            },
        };
        match (authorization, header) {
            // RFC 6750 §2: at most one way of sending credentials per request.
            (Some(_), Some(_)) => Err(AuthError::MalformedRequest),
            (a, b) => Ok(a.or(b)),
        }
    }

    fn parse_authorization<'a>(&self, value: &'a [u8]) -> Result<Credential<'a>, AuthError> {
        let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, &value[value.len()..]),
        };
        let rest = rest.trim_ascii();
        if scheme.eq_ignore_ascii_case(b"bearer") {
            if rest.is_empty() {
                return Err(AuthError::MalformedRequest);
            }
            Ok(Credential::Bearer(rest))
        } else if scheme.eq_ignore_ascii_case(b"dpop") {
            if rest.is_empty() {
                return Err(AuthError::MalformedRequest);
            }
            Ok(Credential::Dpop(rest))
        } else if self.api_key_scheme && scheme.eq_ignore_ascii_case(b"apikey") {
            Ok(Credential::ApiKey(api_key_bytes(rest)?))
        } else {
            Err(AuthError::UnsupportedScheme)
        }
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    max: usize,
) -> Result<Option<&'a HeaderValue>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(AuthError::RepeatedHeader);
    }
    match first {
        Some(v) if v.len() > max => Err(AuthError::OversizedCredentials),
        other => Ok(other),
    }
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub(crate) fn is_b64token(t: &[u8]) -> bool {
    let body = t.iter().position(|b| *b == b'=').map_or(t, |i| &t[..i]);
    !body.is_empty()
        && body
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
        && t[body.len()..].iter().all(|b| *b == b'=')
}

fn api_key_bytes(v: &[u8]) -> Result<&[u8], AuthError> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(AuthError::MalformedRequest);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64token() {
        assert!(is_b64token(b"abc.DEF-_~+/=="));
        assert!(!is_b64token(b""));
        assert!(!is_b64token(b"=="));
        assert!(!is_b64token(b"ab=c"));
        assert!(!is_b64token(b"a b"));
        assert!(!is_b64token("é".as_bytes()));
    }
}
