//! Prometheus metrics from the request records, with bounded labels.

use std::collections::HashMap;
use std::sync::RwLock;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tollgate_anomaly::AnomalyKind;
use tollgate_core::session::SessionHealth;
use tollgate_privacy::{RequestObserver, RequestRecord};

use super::RecordView;
use super::activity::parse;

/// The most distinct values a label other than a fixed vocabulary takes (route
/// templates, rate-limit policies); later values fold into `other`.
pub const MAX_LABEL_VALUES: usize = 64;

const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// A label whose values come from configuration or the router (route templates,
/// policies): the first [`MAX_LABEL_VALUES`] seen get an index, the rest share
/// [`BoundedLabel::OTHER`], absent values [`BoundedLabel::NONE`].
struct BoundedLabel(RwLock<(HashMap<String, u16>, Vec<String>)>);

impl BoundedLabel {
    const NONE: u16 = u16::MAX;
    const OTHER: u16 = u16::MAX - 1;

    fn new() -> Self {
        BoundedLabel(RwLock::new((HashMap::new(), Vec::new())))
    }

    fn index(&self, seen: Option<&str>) -> u16 {
        let Some(seen) = seen.filter(|v| !v.is_empty()) else {
            return Self::NONE;
        };
        if let Some(i) = self.0.read().unwrap_or_else(|e| e.into_inner()).0.get(seen) {
            return *i;
        }
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        let (map, names) = &mut *guard;
        if let Some(i) = map.get(seen) {
            return *i;
        }
        if names.len() >= MAX_LABEL_VALUES {
            return Self::OTHER;
        }
        let i = names.len() as u16;
        names.push(seen.to_string());
        map.insert(seen.to_string(), i);
        i
    }

    fn name(&self, index: u16) -> String {
        match index {
            Self::NONE => "none".into(),
            Self::OTHER => "other".into(),
            i => self.0.read().unwrap_or_else(|e| e.into_inner()).1[usize::from(i)].clone(),
        }
    }
}

/// A counter, by metric and label indices: `[metric, a, b, c]`.
type CounterKey = [u16; 4];

const REQUESTS: u16 = 0;
const EARLY: u16 = 1;
const DECISIONS: u16 = 2;
const TAGS: u16 = 3;
const VERDICTS: u16 = 4;

const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
const CAUSES: [&str; 5] = ["auth", "rate_limit", "session", "anomaly", "unavailable"];
const OUTCOMES: [&str; 3] = ["allowed", "denied", "would_deny"];
const HEALTHS: [SessionHealth; 3] = [
    SessionHealth::Healthy,
    SessionHealth::Suspicious,
    SessionHealth::Unhealthy,
];

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
    counters: RwLock<HashMap<CounterKey, Counter>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("tiers", &self.tiers)
            .finish_non_exhaustive()
    }
}

fn status_class(status: Option<u64>) -> u16 {
    match status {
        Some(s @ 100..=599) => (s / 100) as u16,
        _ => 0,
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
            counters: RwLock::new(HashMap::new()),
        }
    }

    /// Adds one to the counter `key`, registering it (with its label names) the
    /// first time: after that, a read lock, a lookup and an atomic add.
    fn count(&self, key: CounterKey) {
        if let Some(c) = self.counters.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            c.increment(1);
            return;
        }
        let (name, labels) = self.describe(key);
        let metric = Key::from_parts(
            name,
            labels
                .into_iter()
                .map(|(k, v)| Label::new(k, v))
                .collect::<Vec<_>>(),
        );
        let counter = self.recorder.register_counter(&metric, &METADATA);
        counter.increment(1);
        self.counters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, counter);
    }

    /// The metric name and labels of a counter key.
    fn describe(&self, [metric, a, b, c]: CounterKey) -> (&'static str, Vec<(&'static str, String)>) {
        let tier = |i: u16| super::tier_name(&self.tiers, usize::from(i)).to_string();
        match metric {
            REQUESTS => (
                "tollgate_requests_total",
                vec![
                    ("route", self.routes.name(a)),
                    ("tier", tier(b)),
                    ("status", STATUS_CLASSES[usize::from(c)].into()),
                ],
            ),
            EARLY => (
                "tollgate_early_answers_total",
                vec![
                    ("route", self.routes.name(a)),
                    ("cause", CAUSES[usize::from(b)].into()),
                ],
            ),
            DECISIONS => (
                "tollgate_ratelimit_decisions_total",
                vec![
                    ("tier", tier(a)),
                    ("policy", self.policies.name(b)),
                    ("outcome", OUTCOMES[usize::from(c)].into()),
                ],
            ),
            TAGS => (
                "tollgate_anomaly_tags_total",
                vec![("kind", AnomalyKind::ALL[usize::from(a)].as_str().into())],
            ),
            _ => (
                "tollgate_session_verdicts_total",
                vec![("health", HEALTHS[usize::from(a)].as_str().into())],
            ),
        }
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
        let view = RecordView::of(record);
        let route = self.routes.index(view.route);
        let tier = super::tier_index(&self.tiers, view.tier) as u16;
        self.count([REQUESTS, route, tier, status_class(view.status)]);
        if let Some(outcome) = view.outcome.and_then(|o| OUTCOMES.iter().position(|k| *k == o)) {
            let policy = self.policies.index(view.policy);
            self.count([DECISIONS, tier, policy, outcome as u16]);
        }
        for kind in parse(view.anomaly, &AnomalyKind::ALL, AnomalyKind::as_str).iter() {
            self.count([TAGS, kind as u16, 0, 0]);
        }
        if let Some(h) = view
            .health
            .and_then(|h| HEALTHS.iter().position(|k| k.as_str() == h))
        {
            self.count([VERDICTS, h as u16, 0, 0]);
        }
        let cause = match view.status {
            Some(503) => Some(4),
            Some(429) if view.outcome == Some("denied") => Some(1),
            Some(400..=499) if view.auth_error => Some(0),
            Some(400..=499) if matches!(view.action, Some("reauthenticate" | "freeze")) => Some(2),
            Some(403 | 429) if !view.anomaly.is_empty() => Some(3),
            _ => None,
        };
        if let Some(cause) = cause {
            self.count([EARLY, route, cause, 0]);
        }
    }
}
