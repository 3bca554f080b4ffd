//! Required scopes and the 403 `insufficient_scope` answer (RFC 6750 §3.1).

use http::HeaderValue;
use http::header::WWW_AUTHENTICATE;
use tollgate_core::Principal;
use tollgate_core::problem::{Problem, types};

use crate::error::AuthError;

/// Scopes a principal must all hold, with the challenge of the refusal made once.
#[derive(Debug)]
pub(crate) struct RequiredScopes {
    scopes: Box<[Box<str>]>,
    challenge: HeaderValue,
}

impl RequiredScopes {
    /// The requirement for `scopes`, naming `realm` in its challenge; `None` when
    /// `scopes` is empty. Every scope must be a [`scope token`](is_scope_token).
    pub(crate) fn new<S: AsRef<str>>(scopes: &[S], realm: Option<&str>) -> Option<Self> {
        if scopes.is_empty() {
            return None;
        }
        let scopes: Box<[Box<str>]> = scopes.iter().map(|s| Box::from(s.as_ref())).collect();
        let list = scopes.iter().map(|s| &**s).collect::<Vec<_>>().join(" ");
        let text = match realm.filter(|r| !r.is_empty()) {
            Some(r) => format!(
                "Bearer realm=\"{}\", error=\"insufficient_scope\", scope=\"{list}\"",
                r.replace(['"', '\\'], "")
            ),
            None => format!("Bearer error=\"insufficient_scope\", scope=\"{list}\""),
        };
        let challenge = HeaderValue::from_str(&text)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"insufficient_scope\""));
        Some(RequiredScopes { scopes, challenge })
    }

    /// True if `principal` holds every scope.
    pub(crate) fn held_by(&self, principal: &Principal) -> bool {
        let held = principal.scopes();
        self.scopes.iter().all(|s| held.contains(s))
    }

    /// The 403 for a principal that lacks one of the scopes.
    pub(crate) fn problem(&self) -> Problem {
        let error = AuthError::InsufficientScope;
        Problem::new(types::INSUFFICIENT_SCOPE)
            .with_detail(error.detail())
            .with_header(WWW_AUTHENTICATE, self.challenge.clone())
    }
}

/// True if `s` is an OAuth2 scope token (RFC 6749 §3.3: one or more of `%x21`,
/// `%x23-5B`, `%x5D-7E`), so it can be named in a challenge as is.
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_names_every_scope() {
        let r = RequiredScopes::new(&["read:items", "write:items"], Some("api")).unwrap();
        let p = r.problem();
        assert_eq!(p.status(), 403);
        assert_eq!(
            p.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"read:items write:items\""
        );
        assert!(RequiredScopes::new::<&str>(&[], None).is_none());
    }

    #[test]
    fn scope_tokens() {
        assert!(is_scope_token("tollgate:admin"));
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            assert!(!is_scope_token(bad), "{bad:?}");
        }
    }
}
