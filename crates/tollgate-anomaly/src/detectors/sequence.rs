//! Unusual sequence: a small learned per-route transition model.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tollgate_core::clock::duration_nanos;

use crate::bounded::BoundedMap;
use crate::config::SequenceConfig;

use super::score::rarity_score;

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
pub(crate) struct Step {
    session: u64,
    /// The previous route (or the start of the session).
    pub(crate) prev: u8,
    /// The route.
    pub(crate) route: u8,
    /// The session's learning counts when the step was observed (they only grow).
    learned: u8,
    taught: u8,
}

impl Step {
    /// The same session's step `prev -> route` (for tests and replays).
    #[cfg(test)]
    pub(crate) fn with(self, prev: u8, route: u8) -> Step {
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
/// `model_window`: counts older than two windows are gone, so the model follows
/// change. Per session it keeps three bytes, forgotten after `session_gap`.
#[derive(Debug)]
pub(crate) struct SequenceDetector {
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
    pub(crate) fn new(config: &SequenceConfig) -> Self {
        let n = config.max_routes + 2;
        SequenceDetector {
            n,
            start: (config.max_routes + 1) as u8,
            other: config.max_routes as u8,
            counts: [Counts::new(n), Counts::new(n)],
            generation: AtomicU64::new(0),
            window: duration_nanos(config.model_window).max(1),
            sessions: BoundedMap::new(config.max_entries, config.session_gap),
            min_observations: config.min_observations,
            rare_transition: config.rare_transition,
            min_total: config.min_total_observations,
            rare_route: config.rare_route,
        }
    }

    /// Records that `session` called `route` at `now`. Returns the step (for
    /// [`SequenceDetector::learn`]) and a score if it is unusual.
    pub(crate) fn observe(&self, session: u64, route: u8, now: u64) -> (Step, Option<u8>) {
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
    pub(crate) fn learn(&self, step: Step, self_tagged: bool, now: u64) {
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
    pub(crate) fn transition_share(&self, prev: u8, route: u8) -> Option<f64> {
        let p = usize::from(prev).min(self.n - 1);
        let r = usize::from(route.min(self.other));
        let departures = self.sum(|c| &c.departures[p]);
        (departures > 0).then(|| f64::from(self.sum(|c| &c.trans[p * self.n + r])) / f64::from(departures))
    }

    /// The pseudo-route before a session's first request.
    pub(crate) fn start(&self) -> u8 {
        self.start
    }

    /// The number of sessions tracked.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// The most sessions tracked.
    pub(crate) fn capacity(&self) -> usize {
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
    fn a_never_seen_step_fires() {
        let config = SequenceConfig {
            min_observations: 10,
            ..SequenceConfig::default()
        };
        let d = SequenceDetector::new(&config);
        let (search, item, export) = (0u8, 1u8, 2u8);
        for s in 0..100u64 {
            for route in [search, item] {
                let (step, score) = d.observe(s, route, 0);
                assert!(score.is_none() || s < 10);
                d.learn(step, score.is_some(), 0);
            }
        }
        // Straight from `search` to `export`: never seen.
        d.observe(1_000, search, 0);
        let (_, score) = d.observe(1_000, export, 0);
        assert!(score.is_some());
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
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn the_model_forgets_after_two_windows() {
        let config = SequenceConfig {
            min_observations: 5,
            model_window: std::time::Duration::from_secs(100),
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
