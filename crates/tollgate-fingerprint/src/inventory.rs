//! The data inventory of the fingerprinting layer: every field it logs or stores.

use tollgate_core::fields;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};

use crate::config::{FingerprintConfig, SessionPolicy};
use crate::dimensions::USER_AGENT_CACHE_TTL;
use crate::store::SessionStore;

/// The fields a layer with `config` and `store` logs or stores, with their retention.
pub(crate) fn inventory(config: &FingerprintConfig, store: &dyn SessionStore) -> Vec<FieldSpec> {
    let session_ttl = Retention::ttl(config.session_ttl);
    let mut out = vec![
        FieldSpec {
            name: fields::SESSION,
            layer: "fingerprint",
            derived_from: "the credential's keyed digest (token jti, API key id or token digest)",
            protection: Protection::Pseudonym,
            purpose: "link one session's requests within a key epoch",
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span, Sink::Extension],
        },
        FieldSpec {
            name: fields::SESSION_HEALTH,
            layer: "fingerprint",
            derived_from: "the session record's signals",
            protection: Protection::NotPersonal,
            purpose: "healthy, suspicious or unhealthy: what the policy and the anomaly layer act on",
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span, Sink::Extension],
        },
        FieldSpec {
            name: fields::SESSION_REASONS,
            layer: "fingerprint",
            derived_from: "the session record's signals",
            protection: Protection::NotPersonal,
            purpose: "which signals made the verdict",
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span, Sink::Extension],
        },
        FieldSpec {
            name: fields::SESSION_ACTION,
            layer: "fingerprint",
            derived_from: "the verdict and the layer's policy",
            protection: Protection::NotPersonal,
            purpose: "what the session policy did or, report-only, would have done",
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span],
        },
        FieldSpec {
            name: "session.fingerprint",
            layer: "fingerprint",
            derived_from: "the enabled coarsened traits: network prefix, user-agent family and major version, Accept-Language primary tag, client hints",
            protection: Protection::Pseudonym,
            purpose: "tell later layers which fingerprint this request showed",
            retention: Retention::Request,
            sinks: &[Sink::Extension],
        },
        FieldSpec {
            name: "tollgate:session",
            layer: "fingerprint",
            derived_from: "the credential's keyed digest, as the store key",
            protection: Protection::KeyedDigest,
            purpose: "find a session's record",
            retention: session_ttl,
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "session.first_seen, session.last_seen",
            layer: "fingerprint",
            derived_from: "request times, to the minute",
            protection: Protection::Coarsened,
            purpose: "session age, for the stale-token signal",
            retention: session_ttl,
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "session.requests",
            layer: "fingerprint",
            derived_from: "a count of the session's requests",
            protection: Protection::NotPersonal,
            purpose: "tell an established session from a new one",
            retention: session_ttl,
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "session.fingerprints",
            layer: "fingerprint",
            derived_from: "the last 4 fingerprints, as 64-bit keyed hashes",
            protection: Protection::KeyedDigest,
            purpose: "notice a new fingerprint and alternation between fingerprints",
            retention: session_ttl,
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "session.networks",
            layer: "fingerprint",
            derived_from: "the last 4 coarsened network prefixes, as 64-bit keyed hashes, each with the second it was last seen (with `session.stay_start`, the only times kept finer than a minute)",
            protection: Protection::KeyedDigest,
            purpose: "notice one credential used from two networks within the concurrency window",
            retention: session_ttl,
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "session.switches",
            layer: "fingerprint",
            derived_from: "fingerprint switches in the current window, and the window's start to the minute",
            protection: Protection::NotPersonal,
            purpose: "notice rapid alternation between fingerprints",
            retention: session_ttl,
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "session.stay_start",
            layer: "fingerprint",
            derived_from: "the second the session took up its current fingerprint and network, and its requests since",
            protection: Protection::NotPersonal,
            purpose: "tell a move (a long stay, then a switch) from two clients taking turns",
            retention: session_ttl,
            sinks: &[Sink::Store],
        },
        FieldSpec {
            name: "session.verdict",
            layer: "fingerprint",
            derived_from: "the latest health, its reasons, and the reasons that hold for the whole session",
            protection: Protection::NotPersonal,
            purpose: "keep a stale token flagged for the session's life",
            retention: session_ttl,
            sinks: &[Sink::Store],
        },
    ];
    out.extend(store.inventory());
    if config.dimensions.user_agent && config.user_agent_cache > 0 {
        out.push(FieldSpec {
            name: "fingerprint.user_agent_cache",
            layer: "fingerprint",
            derived_from: "the user-agent family and major version, keyed by a hash of the header under a random per-process key",
            protection: Protection::Coarsened,
            purpose: "parse each distinct user agent once",
            retention: Retention::ttl(USER_AGENT_CACHE_TTL),
            sinks: &[Sink::Store],
        });
    }
    if config.policy == SessionPolicy::Freeze {
        out.push(FieldSpec {
            name: "tollgate:freeze-credential",
            layer: "fingerprint",
            derived_from: "the credential's keyed digest, with a reason naming the verdict",
            protection: Protection::KeyedDigest,
            purpose: "lock a credential whose session turned unhealthy",
            retention: Retention::ttl(config.freeze_for),
            sinks: &[Sink::Store],
        });
    }
    out
}
