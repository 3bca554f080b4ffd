//! Prometheus metrics from the request records, with bounded labels.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tollgate_anomaly::AnomalyKind;
use tollgate_core::fields;
use tollgate_core::session::SessionHealth;
use tollgate_privacy::{RequestObserver, RequestRecord};

/// The most distinct values a label other than a fixed vocabulary takes (route
/// templates, rate-limit policies); later values fold into `other`.
pub const MAX_LABEL_VALUES: usize = 64;

const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// A label whose values come from configuration or the router (route templates,
/// policies): the first [`MAX_LABEL_VALUES`] seen are kept, the rest are `other`.
struct BoundedLabel(RwLock<Vec<String>>);

impl BoundedLabel {
    fn new() -> Self {
        BoundedLabel(RwLock::new(Vec::new()))
    }

    fn value(&self, seen: Option<&str>) -> String {
        let Some(seen) = seen.filter(|v| !v.is_empty()) else {
            return "none".into();
        };
        if self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|v| v == seen)
        {
            return seen.to_string();
        }
        let mut values = self.0.write().unwrap_or_else(|e| e.into_inner());
        if values.iter().any(|v| v == seen) {
            return seen.to_string();
        }
        if values.len() < MAX_LABEL_VALUES {
            values.push(seen.to_string());
            return seen.to_string();
        }
        "other".into()
    }
}

/// A counter's name and label values.
type CounterKey = (&'static str, Vec<(&'static str, String)>);

/// Prometheus metrics of the stack, derived from the privacy layer's request
/// records ([`RequestObserver`]) through the [`metrics`] facade and
/// `metrics-exporter-prometheus`, into a recorder of its own (not the process-wide
/// one, so several stacks and tests do not mix):
///
/// | metric | labels |
/// |---|---|
/// | `tollgate_requests_total` | `route`, `tier`, `status` (`2xx` … `5xx`) |
/// | `tollgate_early_answers_total` | `route`, `cause` (`auth`, `rate_limit`, `session`, `anomaly`, `unavailable`) |
/// | `tollgate_ratelimit_decisions_total` | `tier`, `policy`, `outcome` |
/// | `tollgate_anomaly_tags_total` | `kind` |
/// | `tollgate_session_verdicts_total` | `health` |
/// | `tollgate_freeze_list_entries` (gauge) | — |
/// | `tollgate_store_faults_total` (Redis: uses that followed a failure policy) | `policy` |
///
/// Labels hold route templates, tiers, outcomes, causes and kinds only, never an
/// identifier or a pseudonym; route templates and policies are capped at
/// [`MAX_LABEL_VALUES`] values (then `other`), tiers to the configured ones.
///
/// ```
/// use tollgate::operator::Metrics;
///
/// let metrics = Metrics::new(&["free", "pro"]);
/// assert!(metrics.render().is_empty() || metrics.render().contains("tollgate_"));
/// ```
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    tiers: Vec<String>,
    routes: BoundedLabel,
    policies: BoundedLabel,
    counters: Mutex<HashMap<CounterKey, Counter>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("tiers", &self.tiers)
            .finish_non_exhaustive()
    }
}

fn status_class(status: Option<u64>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

impl Metrics {
    /// Metrics for a stack whose tiers are `tiers`.
    pub fn new(tiers: &[&str]) -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Metrics {
            recorder,
            handle,
            tiers: tiers.iter().map(|t| t.to_string()).collect(),
            routes: BoundedLabel::new(),
            policies: BoundedLabel::new(),
            counters: Mutex::new(HashMap::new()),
        }
    }

    fn tier(&self, seen: Option<&str>) -> String {
        match seen {
            Some(t) if self.tiers.iter().any(|k| k == t) => t.to_string(),
            Some(_) => "other".into(),
            None => "anonymous".into(),
        }
    }

    fn count(&self, name: &'static str, labels: Vec<(&'static str, String)>) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name, labels);
        if let Some(c) = counters.get(&key) {
            c.increment(1);
            return;
        }
        let metric = Key::from_parts(
            name,
            key.1
                .iter()
                .map(|(k, v)| Label::new(*k, v.clone()))
                .collect::<Vec<_>>(),
        );
        let counter = self.recorder.register_counter(&metric, &METADATA);
        counter.increment(1);
        counters.insert(key, counter);
    }

    fn gauge(&self, name: &'static str) -> Gauge {
        self.recorder.register_gauge(&Key::from_name(name), &METADATA)
    }

    /// Sets the freeze list's size, read at scrape time.
    pub fn set_freeze_list_entries(&self, n: usize) {
        self.gauge("tollgate_freeze_list_entries").set(n as f64);
    }

    /// Sets the store fault counts (uses that followed their failure policy), read
    /// at scrape time from the Redis backend's counters.
    pub fn set_store_faults(&self, open: u64, closed: u64) {
        for (policy, n) in [("open", open), ("closed", closed)] {
            let key = Key::from_parts("tollgate_store_faults_total", vec![Label::new("policy", policy)]);
            self.recorder.register_counter(&key, &METADATA).absolute(n);
        }
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, record: &RequestRecord<'_>) {
        let route = self.routes.value(record.str(fields::ROUTE));
        let tier = self.tier(record.str(fields::TIER));
        let status = record.u64(fields::STATUS);
        self.count(
            "tollgate_requests_total",
            vec![
                ("route", route.clone()),
                ("tier", tier.clone()),
                ("status", status_class(status).into()),
            ],
        );
        let outcome = record.str(fields::RATELIMIT_OUTCOME);
        if let Some(outcome) = outcome.filter(|o| ["allowed", "denied", "would_deny"].contains(o)) {
            let policy = self.policies.value(record.str(fields::RATELIMIT_POLICY));
            self.count(
                "tollgate_ratelimit_decisions_total",
                vec![("tier", tier), ("policy", policy), ("outcome", outcome.into())],
            );
        }
        let anomaly = record.str(fields::ANOMALY).unwrap_or("");
        for kind in AnomalyKind::ALL {
            if anomaly
                .split(',')
                .any(|t| t.split(':').next() == Some(kind.as_str()))
            {
                self.count(
                    "tollgate_anomaly_tags_total",
                    vec![("kind", kind.as_str().into())],
                );
            }
        }
        if let Some(health) = record.str(fields::SESSION_HEALTH).and_then(|h| {
            [
                SessionHealth::Healthy,
                SessionHealth::Suspicious,
                SessionHealth::Unhealthy,
            ]
            .into_iter()
            .find(|k| k.as_str() == h)
        }) {
            self.count(
                "tollgate_session_verdicts_total",
                vec![("health", health.as_str().into())],
            );
        }
        let cause = match status {
            Some(503) => Some("unavailable"),
            Some(429) if outcome == Some("denied") => Some("rate_limit"),
            Some(400..=499) if record.str(fields::AUTH_ERROR).is_some() => Some("auth"),
            Some(400..=499)
                if record
                    .str(fields::SESSION_ACTION)
                    .is_some_and(|a| a == "reauthenticate" || a == "freeze") =>
            {
                Some("session")
            }
            Some(403 | 429) if !anomaly.is_empty() => Some("anomaly"),
            _ => None,
        };
        if let Some(cause) = cause {
            self.count(
                "tollgate_early_answers_total",
                vec![("route", route), ("cause", cause.into())],
            );
        }
    }
}
