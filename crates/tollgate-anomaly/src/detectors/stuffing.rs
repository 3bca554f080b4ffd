//! Credential stuffing: many failed logins, or many distinct subjects, from one
//! network prefix; or failed logins API-wide well above their own baseline, which
//! catches a campaign spread thinly over many networks.

use std::sync::Mutex;

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
    global: Mutex<Global>,
    global_window: u64,
    global_min_rate: f64,
    global_factor: f64,
}

/// The API-wide failed-login rate: the current window's count, and a baseline rate
/// (failures per second) averaged over past windows without a campaign.
#[derive(Debug, Default)]
struct Global {
    failures: SlidingCounter,
    /// Exponential average of past windows' rates; `None` until one window passed.
    baseline: Option<f64>,
    /// The start of the window being counted for the baseline, and its count.
    window_start: u64,
    window_count: u32,
    /// A campaign is on until then.
    campaign_until: u64,
    score: u8,
}

/// Weight of a finished window in the baseline: about an hour of memory at 30 s.
const BASELINE_ALPHA: f64 = 1.0 / 120.0;

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
            global: Mutex::new(Global::default()),
            global_window: duration_nanos(config.global_window).max(1),
            global_min_rate: config.global_min_rate,
            global_factor: config.global_factor,
        }
    }

    /// Counts one failed login API-wide; the campaign's score while one is on.
    fn record_global(&self, now: u64) -> Option<u8> {
        let mut g = self.global.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.global_window;
        // Close the baseline windows that ended, each at the rate it saw (an empty
        // gap counts as quiet windows), skipping those inside a campaign.
        if g.window_start == 0 {
            g.window_start = now;
        }
        while now >= g.window_start.saturating_add(window) {
            if g.window_start >= g.campaign_until {
                let rate = f64::from(g.window_count) * 1e9 / window as f64;
                g.baseline = Some(match g.baseline {
                    None => rate,
                    Some(b) => b + BASELINE_ALPHA * (rate - b),
                });
            }
            g.window_start = g.window_start.saturating_add(window);
            g.window_count = 0;
            // A long quiet gap: the baseline has decayed to its floor anyway.
            if now.saturating_sub(g.window_start) > 1_000 * window {
                g.window_start = now;
            }
        }
        g.window_count = g.window_count.saturating_add(1);
        g.failures.add(now, window, 1);
        let rate = g.failures.estimate(now, window) * 1e9 / window as f64;
        let threshold = self
            .global_min_rate
            .max(self.global_factor * g.baseline.unwrap_or(0.0));
        if rate > threshold {
            g.campaign_until = now.saturating_add(self.hold);
            g.score = g.score.max(excess_score(rate, threshold));
        }
        if now < g.campaign_until {
            return Some(g.score);
        }
        g.score = 0;
        None
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

    /// Counts a 401 answer to `network` at `now`. While an API-wide campaign is on,
    /// a network failing again takes part in it and is tagged (one typo does not).
    pub(crate) fn record_failure(&self, network: u64, now: u64) -> Option<u8> {
        let window = self.window;
        let campaign = self.record_global(now);
        self.map.update(network, now, StuffingState::default, |s| {
            s.failures.add(now, window, 1);
            let failures = s.failures.estimate(now, window);
            let taking_part = campaign.filter(|_| failures >= 2.0);
            let fresh = (failures > self.max_failures)
                .then(|| excess_score(failures, self.max_failures))
                .max(taking_part);
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
        assert!(first <= 22, "{first}");
        // A success in the middle of the campaign is tagged.
        assert!(d.record_subject(5, 777, 210 * S).is_some());
        assert!(d.check(5, 200 * S + 900 * S).is_none());
        assert!(d.check(6, 200 * S).is_none());
    }

    #[test]
    fn a_campaign_over_many_networks_fires_from_the_sum() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        // An hour of honest failures API-wide: 0.2 a second, spread over 500 networks.
        let mut t = 0u64;
        for i in 0..720u64 {
            t = i * 5 * S;
            assert_eq!(d.record_failure(1_000 + i % 500, t), None, "honest failure {i}");
        }
        // 8 networks, one attempt every 5 s each, on top of the honest failures.
        let mut attempts = 0;
        let mut first = None;
        for step in 0..100u64 {
            let now = t + step * S * 5 / 8;
            attempts += 1;
            if d.record_failure(50 + step % 8, now).is_some() && first.is_none() {
                first = Some(attempts);
            }
        }
        let first = first.expect("the campaign is caught");
        assert!(first <= 40, "first tag after {first} attempts");
    }

    #[test]
    fn carrier_grade_nat_with_steady_honest_failures_is_quiet() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        // Thousands of users behind one /24 fail a login now and then: one every
        // 40 s from the prefix, all day, and the same API-wide.
        for i in 0..(24 * 90u64) {
            assert_eq!(d.record_failure(77, i * 40 * S), None, "at {i}");
        }
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
