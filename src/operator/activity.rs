//! What the console and the admin API show about the last hour: counts per minute
//! and the flagged sessions, by pseudonym only, from the request records.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tollgate_anomaly::AnomalyKind;
use tollgate_core::clock::{SharedClock, system_clock};
use tollgate_core::session::SessionReason;
use tollgate_core::sharded::ShardedMap;
use tollgate_privacy::{RequestObserver, RequestRecord};

use super::counts::{Counts, Local};
use super::{HEALTHS, RecordView};

/// How far back the activity reaches: one hour, in minutes.
pub const WINDOW_MINUTES: usize = 60;

/// The most flagged sessions remembered at once.
pub const MAX_FLAGGED: usize = 1_000;

/// One minute of counts, summed over the threads' copies. Keys are fixed
/// vocabularies (kinds, reasons, verdicts) or the configured tiers, so a minute's
/// size is bounded.
#[derive(Clone, Debug, Default)]
struct Minute {
    minute: u64,
    requests: u64,
    limited: u64,
    /// Requests and refusals per tier index (see `tier_index`).
    by_tier: Vec<(u64, u64)>,
    verdicts: [u64; 3],
    reasons: [u64; SessionReason::ALL.len()],
    tags: [u64; AnomalyKind::ALL.len()],
}

/// The layout of one minute's slot in a thread's copy of the counters: the minute
/// it holds (plus one; zero for never used), then requests, refusals, verdicts,
/// reasons, kinds, and per tier requests and refusals. A copy holds
/// [`WINDOW_MINUTES`] slots, the one of minute `m` at `m % WINDOW_MINUTES`.
const STAMP: usize = 0;
const REQUESTS: usize = 1;
const LIMITED: usize = 2;
const VERDICTS: usize = 3;
const REASONS: usize = VERDICTS + HEALTHS.len();
const TAGS: usize = REASONS + SessionReason::ALL.len();
const BY_TIER: usize = TAGS + AnomalyKind::ALL.len();

impl Minute {
    /// Adds the counts of a slot at `base` in `copy` to this minute.
    fn add(&mut self, copy: Local<'_>, base: usize) {
        let c = |i: usize| copy.get(base + i);
        self.requests += c(REQUESTS);
        self.limited += c(LIMITED);
        for (t, (requests, limited)) in self.by_tier.iter_mut().enumerate() {
            *requests += c(BY_TIER + 2 * t);
            *limited += c(BY_TIER + 2 * t + 1);
        }
        for (i, n) in self.verdicts.iter_mut().enumerate() {
            *n += c(VERDICTS + i);
        }
        for (i, n) in self.reasons.iter_mut().enumerate() {
            *n += c(REASONS + i);
        }
        for (i, n) in self.tags.iter_mut().enumerate() {
            *n += c(TAGS + i);
        }
    }
}

/// A session the stack judged suspicious or unhealthy in the last hour.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlaggedSession {
    /// The session pseudonym (rotates with the pseudonym epoch).
    pub session: String,
    /// The latest verdict.
    pub health: &'static str,
    /// The reasons behind it.
    pub reasons: Vec<&'static str>,
    /// Anomaly kinds tagged on its requests in the last hour.
    pub anomalies: Vec<&'static str>,
    /// When it was last seen, in Unix minutes.
    pub last_seen_minute: u64,
}

/// What [`Activity`] holds per flagged session: the pseudonym, made once when the
/// session is first flagged, and the rest as indices into fixed vocabularies, so a
/// flagged request updates the entry in place without allocating.
struct Flagged {
    session: Box<str>,
    health: Option<usize>,
    reasons: Named,
    anomalies: Named,
    last_seen_minute: u64,
}

impl Flagged {
    fn public(&self) -> FlaggedSession {
        FlaggedSession {
            session: self.session.to_string(),
            health: self.health.map_or("healthy", |h| HEALTHS[h].as_str()),
            reasons: self
                .reasons
                .iter()
                .map(|r| SessionReason::ALL[r].as_str())
                .collect(),
            anomalies: self
                .anomalies
                .iter()
                .map(|k| AnomalyKind::ALL[k].as_str())
                .collect(),
            last_seen_minute: self.last_seen_minute,
        }
    }
}

thread_local! {
    /// The last flagged-session update this thread made: (activity, session key,
    /// minute, verdict and tags).
    static LAST_FLAGGED: std::cell::Cell<(u64, u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0, 0)) };
}

/// The map key of a session pseudonym. Pseudonyms are keyed digests nobody can aim
/// at a collision; the entry keeps the pseudonym, and a lookup checks it.
fn session_key(session: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(session);
    h.finish()
}

/// The last hour of request outcomes, fed by the privacy layer's request records
/// ([`RequestObserver`]): requests and rate-limit refusals per tier, session
/// verdicts and their reasons, anomaly tags per kind, each per minute; and the
/// flagged sessions by pseudonym (at most [`MAX_FLAGGED`], each kept an hour).
///
/// It keeps nothing a log line does not already hold, and only pseudonyms and fixed
/// vocabularies of that: the data inventory lists it as `operator.activity`.
///
/// ```
/// use tollgate::operator::Activity;
///
/// let activity = Activity::new(&["free", "pro"]);
/// assert_eq!(activity.summary().requests, 0);
/// ```
pub struct Activity {
    /// Tells instances apart in [`LAST_FLAGGED`] (an address could be reused).
    id: u64,
    tiers: Vec<String>,
    /// [`WINDOW_MINUTES`] slots of `stride` counters (see [`STAMP`]), per thread.
    minutes: Counts,
    stride: usize,
    flagged: ShardedMap<u64, Flagged>,
    clock: SharedClock,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("tiers", &self.tiers)
            .field("flagged", &self.flagged.len())
            .finish_non_exhaustive()
    }
}

/// Counts over the window, for the admin API and the console.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Minutes covered.
    pub window_minutes: usize,
    /// Requests seen.
    pub requests: u64,
    /// Requests refused by a rate limit.
    pub limited: u64,
    /// Per tier: requests and rate-limit refusals (unknown tiers count as `other`).
    pub tiers: BTreeMap<String, TierUsage>,
    /// Session verdicts by health.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Reasons behind non-healthy verdicts.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Anomaly tags by kind.
    pub anomalies: BTreeMap<&'static str, u64>,
    /// Anomaly tags per minute, oldest first: `(unix minute, count of each kind)`.
    pub anomalies_per_minute: Vec<(u64, BTreeMap<&'static str, u64>)>,
}

/// One tier's usage over the window.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TierUsage {
    /// Requests of callers in the tier.
    pub requests: u64,
    /// Of which refused by a rate limit.
    pub limited: u64,
}

impl Activity {
    /// An empty activity record for the configured `tiers`, on the system clock.
    pub fn new(tiers: &[&str]) -> Self {
        Self::with_clock(tiers, system_clock())
    }

    /// As [`Activity::new`], on `clock`.
    pub fn with_clock(tiers: &[&str], clock: SharedClock) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let stride = BY_TIER + 2 * (tiers.len() + 2);
        Activity {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tiers: tiers.iter().map(|t| t.to_string()).collect(),
            minutes: Counts::new(WINDOW_MINUTES * stride),
            stride,
            flagged: ShardedMap::new(MAX_FLAGGED),
            clock,
        }
    }

    /// The configured tiers, in index order.
    pub(crate) fn tiers(&self) -> &[String] {
        &self.tiers
    }

    fn now_minute(&self) -> u64 {
        self.clock.now().as_secs() / 60
    }

    /// The counts over the last hour.
    pub fn summary(&self) -> Summary {
        let now = self.now_minute();
        let mut live: BTreeMap<u64, Minute> = BTreeMap::new();
        for copy in self.minutes.copies() {
            for base in (0..self.minutes.len()).step_by(self.stride) {
                let Some(minute) = copy.get(base + STAMP).checked_sub(1) else {
                    continue;
                };
                if minute + (WINDOW_MINUTES as u64) <= now || minute > now {
                    continue;
                }
                live.entry(minute)
                    .or_insert_with(|| Minute {
                        minute,
                        by_tier: vec![(0, 0); self.tiers.len() + 2],
                        ..Minute::default()
                    })
                    .add(copy, base);
            }
        }
        let mut s = Summary {
            window_minutes: WINDOW_MINUTES,
            ..Summary::default()
        };
        for h in HEALTHS {
            s.verdicts.insert(h.as_str(), 0);
        }
        for k in AnomalyKind::ALL {
            s.anomalies.insert(k.as_str(), 0);
        }
        for m in live.into_values().filter(|m| m.requests > 0) {
            s.requests += m.requests;
            s.limited += m.limited;
            for (i, (requests, limited)) in m.by_tier.iter().enumerate() {
                if *requests == 0 {
                    continue;
                }
                let t = s
                    .tiers
                    .entry(super::tier_name(&self.tiers, i).to_string())
                    .or_default();
                t.requests += requests;
                t.limited += limited;
            }
            for (h, n) in HEALTHS.iter().zip(m.verdicts) {
                *s.verdicts.entry(h.as_str()).or_default() += n;
            }
            for (r, n) in SessionReason::ALL.iter().zip(m.reasons) {
                if n > 0 {
                    *s.reasons.entry(r.as_str()).or_default() += n;
                }
            }
            let mut per_kind = BTreeMap::new();
            for (k, n) in AnomalyKind::ALL.iter().zip(m.tags) {
                *s.anomalies.entry(k.as_str()).or_default() += n;
                per_kind.insert(k.as_str(), n);
            }
            s.anomalies_per_minute.push((m.minute, per_kind));
        }
        s
    }

    /// The flagged sessions seen in the last hour, most recent first.
    pub fn flagged(&self) -> Vec<FlaggedSession> {
        let mut out = Vec::new();
        self.flagged
            .for_each(self.clock.now(), |_, f, _| out.push(f.public()));
        out.sort_by(|a, b| {
            b.last_seen_minute
                .cmp(&a.last_seen_minute)
                .then(a.session.cmp(&b.session))
        });
        out
    }

    /// The flagged session `session`, if it was flagged in the last hour.
    pub fn flagged_session(&self, session: &str) -> Option<FlaggedSession> {
        self.flagged
            .get_with(&session_key(session.as_bytes()), self.clock.now(), |f| {
                (*f.session == *session).then(|| f.public())
            })
            .flatten()
    }

    /// How many flagged sessions are held now.
    pub fn flagged_len(&self) -> usize {
        self.flagged.len()
    }
}

/// The items of `all` named in a comma-separated field (`a,b` or `a:9,b:3`), as a
/// set of indices; unknown names are ignored. No allocation.
#[derive(Clone, Copy, Default)]
pub(crate) struct Named(u32);

impl Named {
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn union(self, other: Named) -> Named {
        Named(self.0 | other.0)
    }

    /// The indices, lowest first: one step per item, not per bit.
    pub(crate) fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            let i = (bits != 0).then(|| bits.trailing_zeros() as usize)?;
            bits &= bits - 1;
            Some(i)
        })
    }
}

pub(crate) fn parse<T: Copy>(text: &[u8], all: &[T], name: impl Fn(T) -> &'static str) -> Named {
    let mut bits = 0u32;
    if text.is_empty() {
        return Named(0);
    }
    for part in text.split(|b| *b == b',') {
        let item = part.split(|b| *b == b':').next().unwrap_or(&[]);
        if let Some(i) = all.iter().position(|t| name(*t).as_bytes() == item) {
            bits |= 1 << i;
        }
    }
    Named(bits)
}

impl RequestObserver for Activity {
    fn observe(&self, record: &RequestRecord<'_>) {
        self.observe_view(&RecordView::of(record, &self.tiers));
    }
}

impl Activity {
    pub(crate) fn observe_view(&self, view: &RecordView<'_>) {
        let now = self.clock.now();
        let minute = now.as_secs() / 60;
        let limited = view.outcome == Some(b"denied".as_slice());
        let (tier, health, reasons, kinds) = (view.tier, view.health, view.reasons, view.kinds);
        let copy = self.minutes.local();
        let base = (minute % WINDOW_MINUTES as u64) as usize * self.stride;
        if copy.get(base + STAMP) != minute + 1 {
            // A new minute in this thread's slot: the one an hour ago is forgotten.
            // The stamp goes last, so a reader that sees it sees the zeros too.
            for i in 1..self.stride {
                copy.set(base + i, 0);
            }
            copy.set(base + STAMP, minute + 1);
        }
        let add = |at: usize, n: u64| copy.add(base + at, n);
        add(REQUESTS, 1);
        if limited {
            add(LIMITED, 1);
            add(BY_TIER + 2 * tier + 1, 1);
        }
        add(BY_TIER + 2 * tier, 1);
        if let Some(h) = health {
            add(VERDICTS + h, 1);
        }
        for r in reasons.iter() {
            add(REASONS + r, 1);
        }
        for k in kinds.iter() {
            add(TAGS + k, 1);
        }
        let flagged = health.is_some_and(|h| h > 0) || !kinds.is_empty();
        if let (true, Some(session)) = (flagged, view.session) {
            let key = session_key(session);
            // What this update would write; a session flagged on every request (a
            // flood) then touches the shared map once a minute, not on each request.
            let facts = (
                self.id,
                key,
                minute,
                (health.map_or(0, |h| h as u64 + 1) << 56)
                    | (u64::from(reasons.0) << 24)
                    | u64::from(kinds.0),
            );
            if LAST_FLAGGED.replace(facts) == facts {
                return;
            }
            let until = now.saturating_add(Duration::from_secs(WINDOW_MINUTES as u64 * 60));
            let fresh = || Flagged {
                session: String::from_utf8_lossy(session).into(),
                health: None,
                reasons: Named::default(),
                anomalies: Named::default(),
                last_seen_minute: minute,
            };
            self.flagged
                .update(&session_key(session), now, until, fresh, |f| {
                    if f.session.as_bytes() != session {
                        *f = fresh();
                    }
                    f.health = health;
                    f.reasons = reasons;
                    f.anomalies = f.anomalies.union(kinds);
                    f.last_seen_minute = minute;
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tollgate_core::clock::{FakeClock, Timestamp};

    use super::*;

    fn view<'a>(session: &'a [u8], health: Option<usize>, anomaly: &'a [u8]) -> RecordView<'a> {
        RecordView {
            route: Some(b"/v1/items/{id}"),
            status: Some(200),
            tier: 0,
            auth_error: false,
            session: Some(session),
            health,
            reasons: Named::default(),
            action: None,
            policy: None,
            outcome: None,
            anomaly,
            kinds: parse(anomaly, &AnomalyKind::ALL, AnomalyKind::as_str),
        }
    }

    /// Repeats within a minute are skipped, but a new tag, a new verdict, a new
    /// minute or another `Activity` still reach the flagged entry.
    #[test]
    fn flagged_sessions_take_every_change_and_skip_only_repeats() {
        let clock = FakeClock::new(Timestamp::from_nanos(3_600_000_000_000));
        let activity = Activity::with_clock(&["free"], Arc::new(clock.clone()));
        let s = b"0123456789abcdef01234567".as_slice();
        activity.observe_view(&view(s, None, b"volume:60"));
        activity.observe_view(&view(s, None, b"volume:60"));
        activity.observe_view(&view(s, None, b"enumeration:70"));
        let f = activity.flagged_session("0123456789abcdef01234567").unwrap();
        assert_eq!(f.anomalies, ["volume", "enumeration"]);
        activity.observe_view(&view(s, Some(2), b"enumeration:70"));
        assert_eq!(
            activity
                .flagged_session("0123456789abcdef01234567")
                .unwrap()
                .health,
            "unhealthy"
        );
        clock.advance(Duration::from_secs(60));
        activity.observe_view(&view(s, Some(2), b"enumeration:70"));
        let later = activity.flagged_session("0123456789abcdef01234567").unwrap();
        assert_eq!(later.last_seen_minute, f.last_seen_minute + 1);
        assert_eq!(activity.summary().requests, 5, "every request counted");

        // The same facts on another instance, same thread and minute, are not skipped.
        let other = Activity::with_clock(&["free"], Arc::new(clock));
        other.observe_view(&view(s, Some(2), b"enumeration:70"));
        assert!(other.flagged_session("0123456789abcdef01234567").is_some());
        assert!(activity.flagged_session("another").is_none());
    }
}
