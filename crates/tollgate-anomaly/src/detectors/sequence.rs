//! Unusual sequence: a small learned per-route transition model.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::bounded::BoundedMap;
use crate::config::{CompiledPolicy, SequenceConfig, secs};
use crate::engine::ParamShape;

use super::rarity_score;

/// What the request path needs to know about a route template, found with one lookup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RouteEntry {
    /// The index in the transition model.
    pub idx: u8,
    /// The policy configured for the template, if any.
    pub policy: Option<CompiledPolicy>,
    /// Where the template's parameters are, for the enumeration detector.
    pub params: ParamShape,
}

/// The hash of a route template in the [`RouteIndex`]. Templates are few, come from
/// the router (not from clients) and are short: a multiplicative hash is enough,
/// and much cheaper than SipHash.
fn template_hash(template: &str) -> u64 {
    let mut h = template.len() as u64;
    for chunk in template.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (h >> 32)
}

/// A template and its entry, in a [`RouteIndex`] slot.
type Indexed = (Box<str>, RouteEntry);

/// Maps route templates to small indices (for the transition model), their
/// configured policy and parameter shape. Bounded: past `max_routes` templates, new
/// ones share the `other` index.
///
/// An append-only open-addressing table that is never more than half full: a
/// lookup is a hash and a probe or two without any lock or reference count; adding
/// a template takes a mutex (once per template).
#[derive(Debug)]
pub struct RouteIndex {
    slots: Box<[OnceLock<Indexed>]>,
    mask: usize,
    len: AtomicUsize,
    adding: Mutex<()>,
    max_routes: usize,
}

impl RouteIndex {
    pub(crate) fn new(
        max_routes: usize,
        policies: impl IntoIterator<Item = (String, CompiledPolicy)>,
    ) -> Self {
        let policies: Vec<_> = policies.into_iter().collect();
        // Configured templates, then at most `max_routes` learned ones.
        let capacity = (2 * (policies.len() + max_routes)).next_power_of_two().max(8);
        let index = RouteIndex {
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            mask: capacity - 1,
            len: AtomicUsize::new(0),
            adding: Mutex::new(()),
            max_routes,
        };
        for (route, policy) in policies {
            let next = index.len.load(Ordering::Relaxed);
            let idx = if next < max_routes {
                next as u8
            } else {
                max_routes as u8
            };
            let entry = RouteEntry {
                idx,
                policy: Some(policy),
                params: ParamShape::of(&route),
            };
            if let Err(i) = index.find(&route) {
                index.put(i, &route, entry);
            }
        }
        index
    }

    /// The slot holding `template`, or the free slot where it would go.
    fn find(&self, template: &str) -> Result<RouteEntry, usize> {
        let mut i = template_hash(template) as usize & self.mask;
        loop {
            match self.slots[i].get() {
                None => return Err(i),
                Some((t, entry)) if **t == *template => return Ok(*entry),
                Some(_) => i = (i + 1) & self.mask,
            }
        }
    }

    fn put(&self, slot: usize, template: &str, entry: RouteEntry) {
        if self.slots[slot].set((template.into(), entry)).is_ok() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The index shared by unmatched requests and templates past the cap.
    pub fn other(&self) -> u8 {
        self.max_routes as u8
    }

    /// The pseudo-route before a session's first request.
    pub fn start(&self) -> u8 {
        self.max_routes as u8 + 1
    }

    /// The number of indices (routes, `other`, `start`).
    pub fn len(&self) -> usize {
        self.max_routes + 2
    }

    /// Never empty: `other` and `start` always exist.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The entry of `template` (`None`: unmatched).
    pub(crate) fn lookup(&self, template: Option<&str>) -> RouteEntry {
        let Some(template) = template else {
            return RouteEntry {
                idx: self.other(),
                policy: None,
                params: ParamShape::None,
            };
        };
        if let Ok(found) = self.find(template) {
            return found;
        }
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        match self.find(template) {
            Ok(found) => found,
            Err(_) if self.len.load(Ordering::Relaxed) >= self.max_routes => RouteEntry {
                idx: self.other(),
                policy: None,
                params: ParamShape::of(template),
            },
            Err(slot) => {
                let entry = RouteEntry {
                    idx: self.len.load(Ordering::Relaxed) as u8,
                    policy: None,
                    params: ParamShape::of(template),
                };
                self.put(slot, template, entry);
                entry
            }
        }
    }

    /// The number of templates indexed.
    pub fn routes(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

/// One generation of the transition model.
#[derive(Debug)]
struct Counts {
    trans: Box<[AtomicU32]>,
    departures: Box<[AtomicU32]>,
    arrivals: Box<[AtomicU32]>,
    total: AtomicU64,
}

impl Counts {
    fn new(n: usize) -> Self {
        Counts {
            trans: (0..n * n).map(|_| AtomicU32::new(0)).collect(),
            departures: (0..n).map(|_| AtomicU32::new(0)).collect(),
            arrivals: (0..n).map(|_| AtomicU32::new(0)).collect(),
            total: AtomicU64::new(0),
        }
    }

    fn clear(&self) {
        for c in self
            .trans
            .iter()
            .chain(self.departures.iter())
            .chain(self.arrivals.iter())
        {
            c.store(0, Ordering::Relaxed);
        }
        self.total.store(0, Ordering::Relaxed);
    }
}

/// What a session's sequence state holds: the previous route, and how many of its
/// own tagged steps it has taught the model.
#[derive(Clone, Copy, Debug)]
struct SessionSeq {
    last: u8,
    taught: u8,
    learned: u8,
}

/// Tagged steps one session may teach the model (so a novel but honest transition
/// is learned once enough sessions make it, while one attacker cannot teach it).
const MAX_TAUGHT_PER_SESSION: u8 = 2;

/// Steps one session may teach the model in all, so that a few very busy clients
/// (a batch job paging one list thousands of times) do not drown everyone else.
const MAX_LEARNED_PER_SESSION: u8 = 64;

/// One observed step, to hand back to [`SequenceDetector::learn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    session: u64,
    /// The previous route (or the start of the session).
    pub prev: u8,
    /// The route.
    pub route: u8,
    /// The session's learning counts when the step was observed (they only grow).
    learned: u8,
    taught: u8,
}

impl Step {
    /// The same session's step `prev -> route` (for tests and replays).
    pub fn with(self, prev: u8, route: u8) -> Step {
        Step { prev, route, ..self }
    }
}

/// A first-order transition model over route templates: for each route, how often
/// sessions went from it to each route next. A step is tagged when it is rarer than
/// `rare_transition` of the departures from the previous route (a skipped step, or a
/// session starting where sessions do not start), or when the route itself gets less
/// than `rare_route` of all traffic (a route sessions never call).
///
/// The model learns from steps no other detector tagged, at most 64 per session so
/// that a few very busy clients do not drown everyone else; a step only this
/// detector tagged is learned too, but at most twice per session, so honest
/// novelties fade as many sessions make them while one attacker cannot teach the model.
///
/// It is two generations of `(max_routes + 2)²` aggregate counters, each covering
/// `model_window_secs`: counts older than two windows are gone, so the model follows
/// change. Per session it keeps three bytes, forgotten after `session_gap_secs`.
///
/// ```
/// use tollgate_anomaly::SequenceConfig;
/// use tollgate_anomaly::detectors::SequenceDetector;
///
/// let config = SequenceConfig { min_observations: 10, ..SequenceConfig::default() };
/// let d = SequenceDetector::new(&config);
/// let (search, item, export) = (0u8, 1u8, 2u8);
/// for s in 0..100u64 {
///     for route in [search, item] {
///         let (step, score) = d.observe(s, route, 0);
///         assert!(score.is_none() || s < 10);
///         d.learn(step, score.is_some(), 0);
///     }
/// }
/// // Straight from `search` to `export`: never seen.
/// d.observe(1_000, search, 0);
/// let (_, score) = d.observe(1_000, export, 0);
/// assert!(score.is_some());
/// ```
#[derive(Debug)]
pub struct SequenceDetector {
    n: usize,
    start: u8,
    other: u8,
    counts: [Counts; 2],
    generation: AtomicU64,
    window: u64,
    sessions: BoundedMap<SessionSeq>,
    min_observations: u32,
    rare_transition: f64,
    min_total: u64,
    rare_route: f64,
}

impl SequenceDetector {
    /// A detector with this configuration.
    pub fn new(config: &SequenceConfig) -> Self {
        let n = config.max_routes + 2;
        SequenceDetector {
            n,
            start: (config.max_routes + 1) as u8,
            other: config.max_routes as u8,
            counts: [Counts::new(n), Counts::new(n)],
            generation: AtomicU64::new(0),
            window: config.model_window_secs.max(1) * 1_000_000_000,
            sessions: BoundedMap::new(config.max_entries, secs(config.session_gap_secs)),
            min_observations: config.min_observations,
            rare_transition: config.rare_transition,
            min_total: config.min_total_observations,
            rare_route: config.rare_route,
        }
    }

    /// Records that `session` called `route` at `now`. Returns the step (for
    /// [`SequenceDetector::learn`]) and a score if it is unusual.
    pub fn observe(&self, session: u64, route: u8, now: u64) -> (Step, Option<u8>) {
        let route = route.min(self.other);
        let start = self.start;
        let (prev, learned, taught) = self.sessions.update(
            session,
            now,
            || SessionSeq {
                last: start,
                taught: 0,
                learned: 0,
            },
            |s| (std::mem::replace(&mut s.last, route), s.learned, s.taught),
        );
        let step = Step {
            session,
            prev,
            route,
            learned,
            taught,
        };
        (step, self.judge(prev, route))
    }

    /// False if [`SequenceDetector::learn`] would surely refuse `step`: its session
    /// had used up its learning allowance when the step was observed (the counts only
    /// grow while the session lasts). Spares the request path a second lock.
    pub(crate) fn may_learn(step: &Step, self_tagged: bool) -> bool {
        step.learned < MAX_LEARNED_PER_SESSION && (!self_tagged || step.taught < MAX_TAUGHT_PER_SESSION)
    }

    fn sum(&self, f: impl Fn(&Counts) -> &AtomicU32) -> u32 {
        self.counts
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .fold(0, u32::saturating_add)
    }

    fn judge(&self, prev: u8, route: u8) -> Option<u8> {
        if route == self.other || prev == self.other {
            return None;
        }
        let (p, r) = (usize::from(prev), usize::from(route));
        let departures = self.sum(|c| &c.departures[p]);
        let mut score = None;
        if departures >= self.min_observations {
            let seen = self.sum(|c| &c.trans[p * self.n + r]);
            let share = f64::from(seen) / f64::from(departures);
            if share < self.rare_transition {
                score = Some(rarity_score(share, self.rare_transition));
            }
        }
        let total: u64 = self.counts.iter().map(|c| c.total.load(Ordering::Relaxed)).sum();
        if total >= self.min_total {
            let share = f64::from(self.sum(|c| &c.arrivals[r])) / total as f64;
            if share < self.rare_route {
                let s = rarity_score(share, self.rare_route);
                score = Some(score.map_or(s, |x: u8| x.max(s)));
            }
        }
        score
    }

    /// Learns `step` at `now`. Call it for steps no other detector tagged;
    /// `self_tagged` says whether this detector tagged it (such steps are learned at
    /// most twice per session).
    pub fn learn(&self, step: Step, self_tagged: bool, now: u64) {
        let allowed = self.sessions.update(
            step.session,
            now,
            || SessionSeq {
                last: step.route,
                taught: 0,
                learned: 0,
            },
            |s| {
                let ok = s.learned < MAX_LEARNED_PER_SESSION
                    && (!self_tagged || s.taught < MAX_TAUGHT_PER_SESSION);
                if ok {
                    s.learned += 1;
                    s.taught += u8::from(self_tagged);
                }
                ok
            },
        );
        if !allowed {
            return;
        }
        let generation = now / self.window;
        let seen = self.generation.load(Ordering::Relaxed);
        if generation > seen
            && self
                .generation
                .compare_exchange(seen, generation, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // The slot of this generation held generation - 2: drop it (and the other
            // one too if a whole window passed without traffic).
            self.counts[(generation % 2) as usize].clear();
            if generation > seen + 1 {
                self.counts[((generation + 1) % 2) as usize].clear();
            }
        }
        let counts = &self.counts[(generation.max(seen) % 2) as usize];
        let route = usize::from(step.route.min(self.other));
        let prev = usize::from(step.prev).min(self.n - 1);
        counts.trans[prev * self.n + route].fetch_add(1, Ordering::Relaxed);
        counts.departures[prev].fetch_add(1, Ordering::Relaxed);
        counts.arrivals[route].fetch_add(1, Ordering::Relaxed);
        counts.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The share of departures from `prev` that went to `route`, if any were observed.
    pub fn transition_share(&self, prev: u8, route: u8) -> Option<f64> {
        let p = usize::from(prev).min(self.n - 1);
        let r = usize::from(route.min(self.other));
        let departures = self.sum(|c| &c.departures[p]);
        (departures > 0).then(|| f64::from(self.sum(|c| &c.trans[p * self.n + r])) / f64::from(departures))
    }

    /// The pseudo-route before a session's first request.
    pub fn start(&self) -> u8 {
        self.start
    }

    /// The number of sessions tracked.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True if no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The most sessions tracked.
    pub fn capacity(&self) -> usize {
        self.sessions.capacity()
    }

    pub(crate) fn map(&self) -> &BoundedMap<impl Sized> {
        &self.sessions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn trained() -> SequenceDetector {
        let config = SequenceConfig {
            min_observations: 20,
            min_total_observations: 1_000,
            ..SequenceConfig::default()
        };
        let d = SequenceDetector::new(&config);
        // login(0) -> account(1) -> export(2), or login -> items(3) -> items ...
        for s in 0..2_000u64 {
            let path: &[u8] = if s % 50 == 0 { &[0, 1, 2] } else { &[0, 3, 3, 3, 1] };
            for (i, r) in path.iter().enumerate() {
                let (step, score) = d.observe(s, *r, i as u64 * S);
                d.learn(step, score.is_some(), i as u64 * S);
            }
        }
        d
    }

    #[test]
    fn normal_paths_are_quiet() {
        let d = trained();
        for (i, r) in [0u8, 3, 3, 1, 2].iter().enumerate() {
            assert_eq!(d.observe(99_999, *r, i as u64 * S).1, None, "step {i}");
        }
    }

    #[test]
    fn skipped_steps_fire() {
        let d = trained();
        // Straight from login to export without account: never seen.
        assert!(d.observe(77_777, 0, 0).1.is_none());
        assert!(d.observe(77_777, 2, S).1.is_some());
        // A session that starts at export.
        assert!(d.observe(88_888, 2, 0).1.is_some());
        // One attacker repeating the skip cannot teach it.
        for i in 0..1_000 {
            let (step, score) = d.observe(77_777, if i % 2 == 0 { 0 } else { 2 }, (2 + i) * S);
            d.learn(step, score.is_some(), (2 + i) * S);
        }
        assert!(d.observe(99_000, 0, 0).1.is_none());
        assert!(d.observe(99_000, 2, S).1.is_some());
    }

    #[test]
    fn a_session_starts_over_after_a_gap() {
        let d = trained();
        d.observe(5, 0, 0);
        d.observe(5, 1, S);
        let (step, _) = d.observe(5, 3, 10_000 * S);
        assert_eq!(step.prev, d.start());
    }

    #[test]
    fn route_index_is_bounded() {
        let idx = RouteIndex::new(3, []);
        assert_eq!(idx.lookup(Some("/a")).idx, 0);
        assert_eq!(idx.lookup(Some("/b")).idx, 1);
        assert_eq!(idx.lookup(Some("/a")).idx, 0);
        assert_eq!(idx.lookup(Some("/c")).idx, 2);
        assert_eq!(idx.lookup(Some("/d")).idx, idx.other());
        assert_eq!(idx.lookup(None).idx, idx.other());
        assert_eq!(idx.routes(), 3);

        // Configured templates come first, and count towards the cap.
        let policies = (0..5).map(|i| (format!("/c{i}/{{id}}"), CompiledPolicy::default()));
        let idx = RouteIndex::new(3, policies);
        assert_eq!(idx.routes(), 5);
        for i in 0..5 {
            let e = idx.lookup(Some(&format!("/c{i}/{{id}}")));
            assert_eq!(e.idx, (i as u8).min(3));
            assert!(e.policy.is_some());
            assert_eq!(e.params, ParamShape::Right(1));
        }
        assert_eq!(idx.lookup(Some("/new")).idx, idx.other());
        assert_eq!(idx.routes(), 5);

        // Many templates from many threads: each gets one index, the first `max` distinct.
        let idx = RouteIndex::new(200, []);
        std::thread::scope(|s| {
            for t in 0..4 {
                let idx = &idx;
                s.spawn(move || {
                    for i in 0..300 {
                        idx.lookup(Some(&format!("/r{}", (i * 7 + t * 13) % 300)));
                    }
                });
            }
        });
        assert_eq!(idx.routes(), 200);
        let mut seen: Vec<u8> = (0..300)
            .map(|i| idx.lookup(Some(&format!("/r{i}"))).idx)
            .filter(|&i| i != idx.other())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).map(|i| i as u8).collect::<Vec<_>>());
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn the_model_forgets_after_two_windows() {
        let config = SequenceConfig {
            min_observations: 5,
            model_window_secs: 100,
            ..SequenceConfig::default()
        };
        let d = SequenceDetector::new(&config);
        let s = 1_000_000_000u64;
        let step = |prev, route| d.observe(7, prev, 0).0.with(prev, route);
        for i in 0..10 {
            d.learn(step(d.start(), 0), false, i * s);
        }
        assert_eq!(d.transition_share(d.start(), 0), Some(1.0));
        d.learn(step(0, 1), false, 150 * s);
        assert_eq!(d.transition_share(d.start(), 0), Some(1.0));
        d.learn(step(0, 1), false, 250 * s);
        assert_eq!(d.transition_share(d.start(), 0), None);
    }
}
