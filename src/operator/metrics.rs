//! Prometheus metrics from the request records, with bounded labels.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tollgate_anomaly::AnomalyKind;
use tollgate_privacy::{RequestObserver, RequestRecord};

use super::counts::{Counts, Local};
use super::{HEALTHS, RecordView};

/// The most distinct values a label other than a fixed vocabulary takes (route
/// templates, rate-limit policies); later values fold into `other`.
pub const MAX_LABEL_VALUES: usize = 64;

const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// A label whose values come from configuration or the router (route templates,
/// policies): the first [`MAX_LABEL_VALUES`] seen get an index, the rest share
/// [`BoundedLabel::OTHER`], absent values [`BoundedLabel::NONE`]. Reads take no lock
/// (values are only ever appended, each published before the count that shows it);
/// a linear scan, since an application has tens of routes and comparing lengths
/// first rules most out.
struct BoundedLabel {
    values: [OnceLock<(Box<[u8]>, String)>; MAX_LABEL_VALUES],
    len: AtomicUsize,
    append: Mutex<()>,
}

/// Label slots of a [`BoundedLabel`]: the values, `other` and `none`.
const LABEL_SLOTS: usize = MAX_LABEL_VALUES + 2;

impl BoundedLabel {
    const OTHER: usize = MAX_LABEL_VALUES;
    const NONE: usize = MAX_LABEL_VALUES + 1;

    fn new() -> Self {
        BoundedLabel {
            values: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
            append: Mutex::new(()),
        }
    }

    fn find(&self, seen: &[u8]) -> Option<usize> {
        let len = self.len.load(Ordering::Acquire);
        self.values[..len]
            .iter()
            .position(|v| v.get().is_some_and(|(bytes, _)| **bytes == *seen))
    }

    fn index(&self, seen: Option<&[u8]>) -> usize {
        let Some(seen) = seen.filter(|v| !v.is_empty()) else {
            return Self::NONE;
        };
        if let Some(i) = self.find(seen) {
            return i;
        }
        let _append = self.append.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.find(seen) {
            return i;
        }
        let len = self.len.load(Ordering::Acquire);
        if len >= MAX_LABEL_VALUES {
            return Self::OTHER;
        }
        let _ = self.values[len].set((seen.into(), String::from_utf8_lossy(seen).into_owned()));
        self.len.store(len + 1, Ordering::Release);
        len
    }

    fn name(&self, index: usize) -> String {
        match index {
            Self::NONE => "none".into(),
            Self::OTHER => "other".into(),
            i => self.values[i]
                .get()
                .map_or_else(String::new, |(_, name)| name.clone()),
        }
    }
}

/// The metrics, each a block of counters indexed by its label values' indices.
#[derive(Clone, Copy)]
enum Family {
    Requests,
    Early,
    Decisions,
    Tags,
    Verdicts,
}

const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
const CAUSES: [&str; 5] = ["auth", "rate_limit", "session", "anomaly", "unavailable"];
const OUTCOMES: [&str; 3] = ["allowed", "denied", "would_deny"];

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
/// | `tollgate_jwks_fetches_total` (with a JWKS URL) | `outcome` (`ok`, `failed`) |
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
    /// Every count, in one flat table indexed by label indices: counting a request
    /// is an index computation and an add to the thread's copy (no hashing, no lock,
    /// no call through the recorder).
    counts: Counts,
    /// Where each family's counts start in `counts`.
    bases: [usize; 5],
    /// The recorder's counter of each count, registered when a scrape first finds it
    /// above zero and set to the count at each scrape.
    counters: Box<[OnceLock<Counter>]>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("tiers", &self.tiers)
            .finish_non_exhaustive()
    }
}

fn status_class(status: Option<u64>) -> usize {
    match status {
        Some(s @ 100..=599) => (s / 100) as usize,
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
            counts: Counts::new(Self::slots(tiers.len() + 2)),
            bases: {
                let sizes = Self::sizes(tiers.len() + 2);
                std::array::from_fn(|f| sizes[..f].iter().sum())
            },
            counters: (0..Self::slots(tiers.len() + 2))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The counters of each family, for `tiers` tier slots.
    fn sizes(tiers: usize) -> [usize; 5] {
        [
            LABEL_SLOTS * tiers * STATUS_CLASSES.len(),
            LABEL_SLOTS * CAUSES.len(),
            tiers * LABEL_SLOTS * OUTCOMES.len(),
            AnomalyKind::ALL.len(),
            HEALTHS.len(),
        ]
    }

    fn slots(tiers: usize) -> usize {
        Self::sizes(tiers).iter().sum()
    }

    fn tier_slots(&self) -> usize {
        self.tiers.len() + 2
    }

    /// Adds one to the count of `family` with label indices `(a, b, c)` in `copy`.
    fn count(&self, copy: Local<'_>, family: Family, a: usize, b: usize, c: usize) {
        copy.add(self.index_of(family, a, b, c), 1);
    }

    /// Where the count of `family` with label indices `(a, b, c)` sits in the table.
    fn index_of(&self, family: Family, a: usize, b: usize, c: usize) -> usize {
        let t = self.tier_slots();
        let base = self.bases[family as usize];
        let offset = match family {
            Family::Requests => (a * t + b) * STATUS_CLASSES.len() + c,
            Family::Early => a * CAUSES.len() + b,
            Family::Decisions => (a * LABEL_SLOTS + b) * OUTCOMES.len() + c,
            Family::Tags | Family::Verdicts => a,
        };
        base + offset
    }

    /// The family and label indices of the count at `index` (the inverse of `count`).
    fn locate(&self, index: usize) -> (Family, usize, usize, usize) {
        let t = self.tier_slots();
        let mut offset = index;
        let families = [
            Family::Requests,
            Family::Early,
            Family::Decisions,
            Family::Tags,
            Family::Verdicts,
        ];
        for (family, size) in families.into_iter().zip(Self::sizes(t)) {
            if offset >= size {
                offset -= size;
                continue;
            }
            return match family {
                Family::Requests => {
                    let (ab, c) = (offset / STATUS_CLASSES.len(), offset % STATUS_CLASSES.len());
                    (family, ab / t, ab % t, c)
                }
                Family::Early => (family, offset / CAUSES.len(), offset % CAUSES.len(), 0),
                Family::Decisions => {
                    let (ab, c) = (offset / OUTCOMES.len(), offset % OUTCOMES.len());
                    (family, ab / LABEL_SLOTS, ab % LABEL_SLOTS, c)
                }
                Family::Tags | Family::Verdicts => (family, offset, 0, 0),
            };
        }
        unreachable!("count index {index} beyond the table")
    }

    /// Hands every count above zero to the recorder, registering its counter (with
    /// its label names) the first time.
    fn publish(&self) {
        let mut sums = vec![0u64; self.counts.len()];
        for copy in self.counts.copies() {
            for (index, sum) in sums.iter_mut().enumerate() {
                *sum = sum.wrapping_add(copy.get(index));
            }
        }
        for (index, n) in sums.into_iter().enumerate() {
            if n == 0 {
                continue;
            }
            self.counters[index]
                .get_or_init(|| {
                    let (family, a, b, c) = self.locate(index);
                    let (name, labels) = self.describe(family, a, b, c);
                    let labels: Vec<Label> = labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
                    self.recorder
                        .register_counter(&Key::from_parts(name, labels), &METADATA)
                })
                .absolute(n);
        }
    }

    /// The metric name and labels of a counter.
    fn describe(
        &self,
        family: Family,
        a: usize,
        b: usize,
        c: usize,
    ) -> (&'static str, Vec<(&'static str, String)>) {
        let tier = |i: usize| super::tier_name(&self.tiers, i).to_string();
        match family {
            Family::Requests => (
                "tollgate_requests_total",
                vec![
                    ("route", self.routes.name(a)),
                    ("tier", tier(b)),
                    ("status", STATUS_CLASSES[c].into()),
                ],
            ),
            Family::Early => (
                "tollgate_early_answers_total",
                vec![("route", self.routes.name(a)), ("cause", CAUSES[b].into())],
            ),
            Family::Decisions => (
                "tollgate_ratelimit_decisions_total",
                vec![
                    ("tier", tier(a)),
                    ("policy", self.policies.name(b)),
                    ("outcome", OUTCOMES[c].into()),
                ],
            ),
            Family::Tags => (
                "tollgate_anomaly_tags_total",
                vec![("kind", AnomalyKind::ALL[a].as_str().into())],
            ),
            Family::Verdicts => (
                "tollgate_session_verdicts_total",
                vec![("health", HEALTHS[a].as_str().into())],
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

    /// Sets the JWKS fetch counts (at start, on schedule and for unknown `kid`s), read
    /// at scrape time from the authentication layer.
    pub fn set_jwks_fetches(&self, attempted: u64, failed: u64) {
        let ok = attempted.saturating_sub(failed);
        for (outcome, n) in [("ok", ok), ("failed", failed)] {
            let key = Key::from_parts(
                "tollgate_jwks_fetches_total",
                vec![Label::new("outcome", outcome)],
            );
            self.recorder.register_counter(&key, &METADATA).absolute(n);
        }
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.publish();
        self.handle.render()
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, record: &RequestRecord<'_>) {
        self.observe_view(&RecordView::of(record, &self.tiers));
    }
}

impl Metrics {
    pub(crate) fn observe_view(&self, view: &RecordView<'_>) {
        let copy = self.counts.local();
        let route = self.routes.index(view.route);
        let tier = view.tier;
        self.count(copy, Family::Requests, route, tier, status_class(view.status));
        if let Some(outcome) = view
            .outcome
            .and_then(|o| OUTCOMES.iter().position(|k| k.as_bytes() == o))
        {
            let policy = self.policies.index(view.policy);
            self.count(copy, Family::Decisions, tier, policy, outcome);
        }
        for kind in view.kinds.iter() {
            self.count(copy, Family::Tags, kind, 0, 0);
        }
        if let Some(h) = view.health {
            self.count(copy, Family::Verdicts, h, 0, 0);
        }
        let cause = match view.status {
            Some(503) => Some(4),
            Some(429) if view.outcome == Some(b"denied".as_slice()) => Some(1),
            Some(400..=499) if view.auth_error => Some(0),
            Some(400..=499) if matches!(view.action, Some(b"reauthenticate" | b"freeze")) => Some(2),
            Some(403 | 429) if !view.anomaly.is_empty() => Some(3),
            _ => None,
        };
        if let Some(cause) = cause {
            self.count(copy, Family::Early, route, cause, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_count_locates_back_to_its_labels() {
        let metrics = Metrics::new(&["free", "pro"]);
        for index in 0..metrics.counts.len() {
            let (family, a, b, c) = metrics.locate(index);
            assert_eq!(metrics.index_of(family, a, b, c), index);
        }
    }

    #[test]
    fn scrape_time_counters_render_with_their_outcomes() {
        let metrics = Metrics::new(&["free"]);
        metrics.set_jwks_fetches(5, 2);
        metrics.set_store_faults(7, 0);
        metrics.set_freeze_list_entries(3);
        let text = metrics.render();
        for line in [
            "tollgate_jwks_fetches_total{outcome=\"ok\"} 3",
            "tollgate_jwks_fetches_total{outcome=\"failed\"} 2",
            "tollgate_store_faults_total{policy=\"open\"} 7",
            "tollgate_freeze_list_entries 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
