//! OAuth2 token introspection (RFC 7662) with the `oauth2` crate.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use oauth2::basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenResponse, BasicTokenType};
use oauth2::{
    AccessToken, ClientId, ClientSecret, EndpointNotSet, EndpointSet, ExtraTokenFields, IntrospectionUrl,
    RequestTokenError, StandardRevocableToken, StandardTokenIntrospectionResponse,
    TokenIntrospectionResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::clock::Timestamp;
use tollgate_core::sharded::ShardedMap;
use tollgate_core::{CredentialKind, Principal, Pseudonymizer, Scopes};

use crate::error::AuthError;
use crate::jwt::token_digest_hex;
use crate::policy::TierPolicy;

/// Fields of an introspection response beyond RFC 7662's, kept to read the tier claim.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(crate) struct Extra(HashMap<String, Value>);

impl ExtraTokenFields for Extra {}

type Response = StandardTokenIntrospectionResponse<Extra, BasicTokenType>;

type Client = oauth2::Client<
    BasicErrorResponse,
    BasicTokenResponse,
    Response,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
>;

/// An introspection client.
pub(crate) struct Introspector {
    client: Client,
    http: reqwest::Client,
    /// The longest an answer is cached (shorter when the token expires sooner).
    pub(crate) cache_ttl: Duration,
    /// Tokens the endpoint called inactive, by token cache key, until their deadline.
    refused: ShardedMap<u128, ()>,
    negative_ttl: Duration,
    issuers: Vec<String>,
    audiences: Vec<String>,
}

/// What an introspection answer must name, and how long refusals are remembered.
pub(crate) struct AnswerRules {
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) negative_ttl: Duration,
    pub(crate) negative_max_entries: usize,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("url", &self.client.introspection_url().as_str())
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

/// What introspection concluded about an active token.
pub(crate) struct Introspected {
    pub(crate) principal: Principal,
    pub(crate) expires_at: Option<Timestamp>,
}

impl Introspector {
    pub(crate) fn new(
        url: IntrospectionUrl,
        client_id: String,
        client_secret: Option<String>,
        timeout: Duration,
        cache_ttl: Duration,
        rules: AnswerRules,
    ) -> Result<Self, reqwest::Error> {
        let mut client = oauth2::Client::new(ClientId::new(client_id)).set_introspection_url(url);
        if let Some(secret) = client_secret {
            client = client.set_client_secret(ClientSecret::new(secret));
        }
        // No redirects: an introspection endpoint that redirects is misconfigured,
        // and following one could leak the client secret (SSRF).
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Introspector {
            client,
            http,
            cache_ttl,
            refused: ShardedMap::new(rules.negative_max_entries.max(1)),
            negative_ttl: rules.negative_ttl,
            issuers: rules.issuers,
            audiences: rules.audiences,
        })
    }

    /// Asks the endpoint about `token`.
    ///
    /// `active: false` is [`AuthError::InactiveToken`] (401); an unreachable endpoint,
    /// an error answer or an unreadable one is [`AuthError::IntrospectionUnavailable`]
    /// (503): never a pass.
    /// How long an `active: false` answer is remembered.
    pub(crate) fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    pub(crate) async fn introspect(
        &self,
        token: &str,
        key: u128,
        p: &Pseudonymizer,
        tiers: &TierPolicy,
        now: Timestamp,
    ) -> Result<Introspected, AuthError> {
        if self.refused.get(&key, now).is_some() {
            return Err(AuthError::InactiveToken);
        }
        let answer = self.ask(token, p, tiers, now).await;
        if matches!(answer, Err(AuthError::InactiveToken)) && !self.negative_ttl.is_zero() {
            self.refused
                .insert(key, (), now.saturating_add(self.negative_ttl), now);
        }
        answer
    }

    async fn ask(
        &self,
        token: &str,
        p: &Pseudonymizer,
        tiers: &TierPolicy,
        now: Timestamp,
    ) -> Result<Introspected, AuthError> {
        let token = AccessToken::new(token.to_string());
        let response = self
            .client
            .introspect(&token)
            .set_token_type_hint("access_token")
            .request_async(&self.http)
            .await
            .map_err(|e| {
                // The error kinds only: parse errors carry the response body, which may
                // hold the subject.
                let kind = match &e {
                    RequestTokenError::ServerResponse(_) => "error_response",
                    RequestTokenError::Request(_) => "unreachable",
                    RequestTokenError::Parse(..) => "unreadable_response",
                    RequestTokenError::Other(_) => "unexpected_response",
                };
                tracing::warn!(cause = kind, "token introspection failed");
                AuthError::IntrospectionUnavailable
            })?;
        if !response.active() {
            return Err(AuthError::InactiveToken);
        }
        if !self.issuers.is_empty()
            && !response
                .iss()
                .is_some_and(|i| self.issuers.iter().any(|w| w == i))
        {
            return Err(AuthError::WrongIssuer);
        }
        if !self.audiences.is_empty()
            && !response
                .aud()
                .is_some_and(|auds| auds.iter().any(|a| self.audiences.iter().any(|w| w == a)))
        {
            return Err(AuthError::WrongAudience);
        }
        let expires_at = response
            .exp()
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .map(Timestamp::from_secs);
        if expires_at.is_some_and(|exp| exp <= now) {
            return Err(AuthError::Expired);
        }
        if response
            .nbf()
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .is_some_and(|nbf| Timestamp::from_secs(nbf) > now)
        {
            return Err(AuthError::NotYetValid);
        }
        let subject = response
            .sub()
            .or(response.username())
            .or(response.client_id().map(|c| c.as_str()))
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingClaim)?;
        let scopes = match response.scopes() {
            Some(s) => Scopes::new(s.iter().map(|s| s.as_str())),
            None => Scopes::default(),
        };
        let tier_claim = tiers
            .claim
            .as_deref()
            .and_then(|c| response.extra_fields().0.get(c))
            .and_then(Value::as_str);
        let tier = tiers.resolve(tier_claim, &scopes);
        let principal = match response.jti().filter(|j| !j.is_empty()) {
            Some(jti) => Principal::new(p, CredentialKind::Introspection, subject, jti.as_bytes()),
            None => Principal::new(
                p,
                CredentialKind::Introspection,
                subject,
                token_digest_hex(token.secret()).as_bytes(),
            ),
        };
        let mut principal = principal.with_tier(tier).with_scopes(scopes);
        // RFC 9449 §6.2: a bound token's introspection answer carries `cnf.jkt`.
        if let Some(key) = crate::jwt::bound_key(response.extra_fields().0.get("cnf"), p)? {
            principal = principal.with_bound_key(key);
        }
        if let Some(iat) = response.iat().and_then(|t| u64::try_from(t.timestamp()).ok()) {
            principal = principal.with_issued_at(Timestamp::from_secs(iat));
        }
        Ok(Introspected {
            principal,
            expires_at,
        })
    }
}
