//! Credential stuffing: many failed logins, or many distinct subjects, from one
//! network prefix.

use tollgate_core::clock::duration_nanos;

use crate::bounded::BoundedMap;
use crate::config::StuffingConfig;
use crate::sketch::{SlidingCounter, WindowedDistinct};

use super::score::excess_score;

#[derive(Clone, Copy, Debug, Default)]
struct StuffingState {
    failures: SlidingCounter,
    subjects: WindowedDistinct,
    held_until: u64,
    score: u8,
}

/// Per network prefix: 401 answers in a sliding window, and a distinct-count sketch
/// of the subjects that authenticated from it. Either above its limit tags the
/// prefix, which then stays tagged for `hold`, so the logins that succeed in
/// the middle of a campaign are tagged too.
#[derive(Debug)]
pub(crate) struct StuffingDetector {
    map: BoundedMap<StuffingState>,
    window: u64,
    hold: u64,
    max_failures: f64,
    max_subjects: f64,
}

impl StuffingDetector {
    /// A detector with this configuration.
    pub(crate) fn new(config: &StuffingConfig) -> Self {
        let window = duration_nanos(config.window).max(1);
        let hold = duration_nanos(config.hold);
        StuffingDetector {
            // An entry lives while it is counting or holding.
            map: BoundedMap::new(config.max_entries, config.window.max(config.hold) * 2),
            window,
            hold,
            max_failures: f64::from(config.max_failures),
            max_subjects: f64::from(config.max_subjects),
        }
    }

    fn judge(&self, s: &mut StuffingState, now: u64, fresh: Option<u8>) -> Option<u8> {
        if let Some(score) = fresh {
            s.held_until = now.saturating_add(self.hold);
            s.score = s.score.max(score);
            return Some(score);
        }
        if now < s.held_until {
            return Some(s.score);
        }
        s.score = 0;
        None
    }

    /// Counts a 401 answer to `network` at `now`.
    pub(crate) fn record_failure(&self, network: u64, now: u64) -> Option<u8> {
        let window = self.window;
        self.map.update(network, now, StuffingState::default, |s| {
            s.failures.add(now, window, 1);
            let failures = s.failures.estimate(now, window);
            let fresh = (failures > self.max_failures).then(|| excess_score(failures, self.max_failures));
            self.judge(s, now, fresh)
        })
    }

    /// Counts a subject (a keyed hash) that authenticated from `network` at `now`.
    pub(crate) fn record_subject(&self, network: u64, subject: u64, now: u64) -> Option<u8> {
        let window = self.window;
        self.map.update(network, now, StuffingState::default, |s| {
            s.subjects.insert(subject, now, window);
            let distinct = f64::from(s.subjects.estimate(now, window));
            let fresh = (distinct > self.max_subjects).then(|| excess_score(distinct, self.max_subjects));
            self.judge(s, now, fresh)
        })
    }

    /// The score of `network` if it is tagged now (read only).
    pub(crate) fn check(&self, network: u64, now: u64) -> Option<u8> {
        self.map
            .get(network, now, |s| (now < s.held_until).then_some(s.score))
            .flatten()
    }

    /// The number of prefixes tracked.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The most prefixes tracked.
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    pub(crate) fn map(&self) -> &BoundedMap<impl Sized> {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn thirty_failures_fire_and_hold() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        let net = 0x1234;
        let fired = (0..30u64).filter_map(|i| d.record_failure(net, i * S)).count();
        assert!(fired > 0);
        assert!(d.check(net, 40 * S).is_some());
    }

    #[test]
    fn a_few_typos_are_quiet() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        // A failed login a minute from one office network, all day.
        for i in 0..(24 * 60) {
            assert_eq!(d.record_failure(9, i * 60 * S), None);
        }
    }

    #[test]
    fn a_campaign_fires_and_holds() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        let fired: Vec<_> = (0..100).map(|i| d.record_failure(5, i * 2 * S)).collect();
        let first = fired.iter().position(Option::is_some).unwrap();
        assert!((20..=22).contains(&first), "{first}");
        // A success in the middle of the campaign is tagged.
        assert!(d.record_subject(5, 777, 210 * S).is_some());
        assert!(d.check(5, 200 * S + 900 * S).is_none());
        assert!(d.check(6, 200 * S).is_none());
    }

    #[test]
    fn many_distinct_subjects_fire() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        let mut fired = false;
        for i in 0..60u64 {
            let subject = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            fired |= d.record_subject(3, subject, i * S).is_some();
        }
        assert!(fired);
        // One subject many times does not.
        for i in 0..1_000u64 {
            assert!(d.record_subject(4, 1, i * S).is_none());
        }
    }
}
