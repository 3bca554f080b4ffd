//! [`LoginAttempt`]: a login handler tells the anomaly layer which account a login
//! tried and whether it worked, without the account name leaving the process.

use std::borrow::Cow;
use std::fmt;

use axum::response::{IntoResponseParts, ResponseParts};
use zeroize::Zeroizing;

/// Whether a login worked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The credentials were right.
    Succeeded,
    /// The credentials were wrong (or the account does not exist).
    Failed,
}

/// The account a login tried, and its outcome, handed from a login handler to the
/// anomaly layer through the response's extensions.
///
/// Failed logins per network tell stuffing from one place; a campaign spread over
/// many networks shows per attempted account instead (one account failing from
/// many places) and API-wide (many distinct accounts failing for each login that
/// works). The anomaly layer takes the attempt out of the response, keeps only a
/// keyed hash of the account, and the name is wiped from memory when the attempt is
/// dropped. It never prints: `Debug` shows the outcome only.
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::IntoResponse;
/// use tollgate_core::{LoginAttempt, LoginOutcome};
///
/// fn refuse(username: &str) -> impl IntoResponse {
///     (StatusCode::UNAUTHORIZED, LoginAttempt::failed(username), "invalid credentials")
/// }
/// let response = refuse("alice@example.com").into_response();
/// let attempt = response.extensions().get::<LoginAttempt>().unwrap();
/// assert_eq!(attempt.outcome(), LoginOutcome::Failed);
/// assert_eq!(format!("{attempt:?}"), "LoginAttempt { outcome: Failed, .. }");
/// ```
#[derive(Clone)]
pub struct LoginAttempt {
    account: Zeroizing<Vec<u8>>,
    outcome: LoginOutcome,
}

impl LoginAttempt {
    /// A login to `account` (the username or email as typed) that worked.
    pub fn succeeded(account: impl AsRef<[u8]>) -> Self {
        Self::new(account.as_ref(), LoginOutcome::Succeeded)
    }

    /// A login to `account` (the username or email as typed) that failed.
    pub fn failed(account: impl AsRef<[u8]>) -> Self {
        Self::new(account.as_ref(), LoginOutcome::Failed)
    }

    fn new(account: &[u8], outcome: LoginOutcome) -> Self {
        // Case and surrounding spaces do not make another account. Invalid UTF-8 is
        // replaced in a copy, wiped as well.
        let text = String::from_utf8_lossy(account);
        let account = text.trim().to_lowercase().into_bytes();
        if let Cow::Owned(copy) = text {
            drop(Zeroizing::new(copy));
        }
        LoginAttempt {
            account: Zeroizing::new(account),
            outcome,
        }
    }

    /// The outcome.
    pub fn outcome(&self) -> LoginOutcome {
        self.outcome
    }

    /// The account as normalized bytes (trimmed, lower case), for a keyed hash only.
    pub fn account_bytes(&self) -> &[u8] {
        &self.account
    }
}

impl fmt::Debug for LoginAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginAttempt")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl IntoResponseParts for LoginAttempt {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_normalized_and_never_printed() {
        let a = LoginAttempt::failed("  Alice@Example.COM ");
        assert_eq!(a.account_bytes(), b"alice@example.com");
        assert!(!format!("{a:?}").to_lowercase().contains("alice"));
        assert_eq!(LoginAttempt::succeeded("bob").outcome(), LoginOutcome::Succeeded);
    }
}
