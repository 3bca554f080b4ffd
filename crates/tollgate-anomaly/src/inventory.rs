//! The anomaly layer's entries in the data inventory.

use tollgate_core::{FieldSpec, Protection, Retention, Sink, fields};

use crate::engine::Engine;

const LAYER: &str = "anomaly";

pub(crate) fn inventory(engine: &Engine) -> Vec<FieldSpec> {
    let c = &engine.config;
    let store = |name: &'static str, derived_from, purpose| {
        engine.retention(name).map(|ttl| FieldSpec {
            name,
            layer: LAYER,
            derived_from,
            protection: Protection::KeyedDigest,
            purpose,
            retention: Retention::ttl(ttl),
            sinks: &[Sink::Store],
        })
    };
    let mut out = vec![
        FieldSpec {
            name: fields::ANOMALY,
            layer: LAYER,
            derived_from: "the detectors' verdicts: tag names with scores 1-100, then `;action=` and the action \
                           taken (or `would_...` in report-only mode); never an identifier or an object id",
            protection: Protection::NotPersonal,
            purpose: "seeing which requests looked anomalous and what was done",
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span],
        },
        FieldSpec {
            name: "AnomalyTags",
            layer: LAYER,
            derived_from: "the detectors' verdicts (tag kinds and scores)",
            protection: Protection::NotPersonal,
            purpose: "letting handlers and outer layers see the verdict",
            retention: Retention::Request,
            sinks: &[Sink::Extension],
        },
    ];
    if c.stuffing.enabled {
        out.push(FieldSpec {
            name: "anomaly.stuffing.global",
            layer: LAYER,
            derived_from: "the API-wide count of failed logins in the current window and an average rate, working \
                           logins per window, and a 256-bit distinct-count sketch of the keyed hashes of accounts \
                           failing (one bit per bucket: no hash or account is kept)",
            protection: Protection::NotPersonal,
            purpose: "catch credential stuffing spread thinly over many networks",
            retention: Retention::ttl(c.stuffing.global_window.max(c.stuffing.window * 2)),
            sinks: &[Sink::Store],
        });
    }
    if c.enumeration.enabled {
        out.push(FieldSpec {
            name: "anomaly.enumeration.routes",
            layer: LAYER,
            derived_from: "per route template, the average new object ids a minute of its sessions: one \
                           running average over all of them, nothing per session or person; forgotten after \
                           `enumeration.window` without a sample",
            protection: Protection::NotPersonal,
            purpose: "judging a session's pace of new ids against its route's",
            retention: Retention::ttl(c.enumeration.window),
            sinks: &[Sink::Store],
        });
    }
    if c.debug_header {
        out.push(FieldSpec {
            name: "x-tollgate-anomaly",
            layer: LAYER,
            derived_from: "the same text as the `anomaly` span field",
            protection: Protection::NotPersonal,
            purpose: "debugging detector settings (off by default)",
            retention: Retention::Request,
            sinks: &[Sink::ResponseHeader],
        });
    }
    out.extend(
        [
            store(
                "anomaly.volume",
                "key: keyed hash of the subject digest (or of the coarsened network when unauthenticated); \
                 value: request counts of the current and previous window and a baseline rate; the time of \
                 the last request and the average gap over the last few and the last hundred or so requests",
                "volume detection against the principal's own baseline",
            ),
            store(
                "anomaly.stuffing",
                "key: keyed hash of the coarsened network prefix; value: failed-login and success counts per \
                 window and a 256-bit distinct-count sketch of subject hashes (no subject is kept), a hold time \
                 and score",
                "credential-stuffing detection per network",
            ),
            store(
                "anomaly.stuffing.accounts",
                "key: keyed hash of the account name a login handler reported as tried (`LoginAttempt`; the \
                 name itself is dropped and wiped at once); value: failed and working login counts per \
                 window, a hold time and score",
                "catching one account attacked from many networks, and the login that then works",
            ),
            store(
                "anomaly.enumeration",
                "key: keyed hash of the session pseudonym (or credential digest) and route template; value: \
                 256-bit distinct-count sketches of object-id hashes (no id is kept), request and 403/404 counts, \
                 new ids in the last minute and the session's usual new ids a minute",
                "enumeration (BOLA) detection per session and route",
            ),

            store(
                "anomaly.sequence.sessions",
                "key: keyed hash of the session pseudonym (or credential digest); value: the index of the \
                 previous route template",
                "unusual-sequence detection",
            ),
            store(
                "anomaly.penalties",
                "key: keyed 64-bit hash of the credential digest (or of the coarsened network); value: the \
                 action, its end time and the tags that caused it (in process, or with the Redis store in the \
                 hash `tollgate:[ns:]penalties` and each replica's copy)",
                "enforcing block and throttle actions on later requests",
            ),
        ]
        .into_iter()
        .flatten(),
    );
    if engine.config.sequence.enabled {
        out.push(FieldSpec {
            name: "anomaly.sequence.model",
            layer: LAYER,
            derived_from: "route templates and aggregate transition counts between them over all untagged \
                           traffic, in two generations of `sequence.model_window`; nothing per person",
            protection: Protection::NotPersonal,
            purpose: "learning which steps normally precede each route",
            retention: Retention::ttl(c.sequence.model_window * 2),
            sinks: &[Sink::Store],
        });
    }
    let throttle_period = c.throttle.period;
    out.push(FieldSpec {
        name: "rl:anomaly-throttle",
        layer: LAYER,
        derived_from: "store key `tollgate:rl:anomaly-throttle:{digest}`: the credential digest (or a keyed digest of the coarsened network) of a \
                       throttled caller; value: GCRA arrival times",
        protection: Protection::KeyedDigest,
        purpose: "holding a throttled caller to the stricter tier",
        retention: Retention::ttl(throttle_period),
        sinks: &[Sink::Store],
    });
    if engine.freeze.is_some() {
        out.push(FieldSpec {
            name: "freeze (anomaly)",
            layer: LAYER,
            derived_from: "the credential digest of a caller whose tags map to `freeze`, with the reason \
                           `anomaly: <tags>` and the time to the second",
            protection: Protection::KeyedDigest,
            purpose: "stopping a credential the detectors judged stolen or abused",
            retention: Retention::ttl(c.penalties.freeze),
            sinks: &[Sink::Store],
        });
    }
    out
}
