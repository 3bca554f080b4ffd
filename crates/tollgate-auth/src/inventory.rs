//! The data inventory of the authentication layer: every field it logs or stores.

use std::time::Duration;

use tollgate_core::fields;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};

const LAYER: &str = "auth";

/// The fields, with the token cache's and the freeze list's retention.
pub(crate) fn fields(
    cache_max_ttl: Duration,
    max_freeze_ttl: Duration,
    dpop_replay_ttl: Option<Duration>,
    introspection_refusal_ttl: Option<Duration>,
) -> Vec<FieldSpec> {
    let mut fields = vec![
        FieldSpec {
            name: fields::PRINCIPAL,
            layer: LAYER,
            derived_from: "the JWT `sub` (or `client_id`), the introspected `sub`/`username`/`client_id`, or the API key's owner",
            protection: Protection::Pseudonym,
            purpose: "link one caller's requests within a pseudonym epoch",
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span, Sink::Extension],
        },
        FieldSpec {
            name: fields::CREDENTIAL,
            layer: LAYER,
            derived_from: "how the caller authenticated (jwt, api_key, introspection)",
            protection: Protection::NotPersonal,
            purpose: "tell credential kinds apart in logs",
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span, Sink::Extension],
        },
        FieldSpec {
            name: fields::TIER,
            layer: LAYER,
            derived_from: "the tier claim, a tier scope, or the API key record",
            protection: Protection::NotPersonal,
            purpose: "rate-limit tiers and usage per plan",
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span, Sink::Extension],
        },
        FieldSpec {
            name: fields::AUTH_ERROR,
            layer: LAYER,
            derived_from: "the cause of a refusal, as a fixed slug (never the credential)",
            protection: Protection::NotPersonal,
            purpose: "diagnose authentication failures",
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span],
        },
        FieldSpec {
            name: "auth.token_cache",
            layer: LAYER,
            derived_from: "SipHash-1-3-128 of the token under a per-process random key, mapped to the principal's pseudonyms, keyed digests, tier and scopes",
            protection: Protection::KeyedDigest,
            purpose: "skip signature verification or introspection for a token already verified",
            retention: Retention::ttl(cache_max_ttl),
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "freeze-credential",
            layer: LAYER,
            derived_from: "an API key id or token jti (or token SHA-256), as a keyed digest",
            protection: Protection::KeyedDigest,
            purpose: "refuse a frozen credential at once",
            retention: Retention::ttl(max_freeze_ttl),
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "freeze-subject",
            layer: LAYER,
            derived_from: "a subject, as a keyed digest",
            protection: Protection::KeyedDigest,
            purpose: "refuse every credential of a frozen subject at once",
            retention: Retention::ttl(max_freeze_ttl),
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "dpop.key",
            layer: LAYER,
            derived_from: "the RFC 7638 thumbprint of the DPoP key a token is bound to (`cnf.jkt`), proven by the request's proof",
            protection: Protection::Pseudonym,
            purpose: "key continuity of a sender-constrained session (the principal's bound key)",
            retention: Retention::Request,
            sinks: &[Sink::Extension],
        },
    ];
    if let Some(ttl) = dpop_replay_ttl {
        fields.push(FieldSpec {
            name: "auth.dpop_replay",
            layer: LAYER,
            derived_from: "the DPoP proof key's thumbprint and the proof's `jti`, as a keyed digest",
            protection: Protection::KeyedDigest,
            purpose: "refuse a DPoP proof used twice",
            retention: Retention::ttl(ttl),
            sinks: &[Sink::Store],
        });
    }
    if let Some(ttl) = introspection_refusal_ttl.filter(|t| !t.is_zero()) {
        fields.push(FieldSpec {
            name: "auth.introspection_refusals",
            layer: LAYER,
            derived_from: "SipHash-1-3-128 of a token the introspection endpoint called inactive, under a per-process random key",
            protection: Protection::KeyedDigest,
            purpose: "answer a dead or made-up token without asking the endpoint again",
            retention: Retention::ttl(ttl),
            sinks: &[Sink::Store],
        });
    }
    fields
}
