//! Enumeration (OWASP API1, broken object level authorization): one session walking
//! many distinct object ids on one route template, or drawing many 403/404s.

use tollgate_core::clock::duration_nanos;

use crate::bounded::BoundedMap;
use crate::config::EnumerationConfig;
use crate::sketch::{SlidingCounter, WindowedDistinct};

use super::score::excess_score;

#[derive(Clone, Copy, Debug, Default)]
struct EnumerationState {
    ids: WindowedDistinct,
    total: SlidingCounter,
    errors: SlidingCounter,
}

/// Per session and route template: a distinct-count sketch of the object ids in the
/// path (keyed hashes, one bit each; the ids themselves are never kept) and the
/// share of 403/404 answers, over a sliding window.
#[derive(Debug)]
pub(crate) struct EnumerationDetector {
    map: BoundedMap<EnumerationState>,
    window: u64,
    max_ids: f64,
    min_requests: f64,
    max_ratio: f64,
}

impl EnumerationDetector {
    /// A detector with this configuration.
    pub(crate) fn new(config: &EnumerationConfig) -> Self {
        EnumerationDetector {
            map: BoundedMap::new(config.max_entries, config.window * 2),
            window: duration_nanos(config.window).max(1),
            max_ids: f64::from(config.max_distinct_ids),
            min_requests: f64::from(config.ratio_min_requests),
            max_ratio: config.max_error_ratio,
        }
    }

    fn ratio_score(&self, s: &mut EnumerationState, now: u64) -> Option<u8> {
        s.total.roll(now, self.window);
        s.errors.roll(now, self.window);
        let total = s.total.estimate(now, self.window);
        if total < self.min_requests {
            return None;
        }
        let ratio = s.errors.estimate(now, self.window) / total;
        (ratio > self.max_ratio).then(|| excess_score(ratio, self.max_ratio))
    }

    /// Counts the object ids (keyed hashes) of one request of `key` (a session and
    /// route) at `now`, before the handler runs. Returns a score if the distinct
    /// ids, or the error ratio so far, are anomalous.
    pub(crate) fn observe_request(
        &self,
        key: u64,
        ids: impl IntoIterator<Item = u64>,
        now: u64,
    ) -> Option<u8> {
        let window = self.window;
        self.map.update(key, now, EnumerationState::default, |s| {
            let mut any = false;
            for id in ids {
                s.ids.insert(id, now, window);
                any = true;
            }
            let by_ids = if any {
                let distinct = f64::from(s.ids.estimate(now, window));
                (distinct > self.max_ids).then(|| excess_score(distinct, self.max_ids))
            } else {
                None
            };
            let by_ratio = self.ratio_score(s, now);
            by_ids.max(by_ratio)
        })
    }

    /// Counts the answer status of one request of `key` at `now`. Returns a score if
    /// the 403/404 ratio is anomalous.
    pub(crate) fn observe_status(&self, key: u64, status: u16, now: u64) -> Option<u8> {
        let window = self.window;
        self.map.update(key, now, EnumerationState::default, |s| {
            s.total.add(now, window, 1);
            if status == 403 || status == 404 {
                s.errors.add(now, window, 1);
            }
            self.ratio_score(s, now)
        })
    }

    /// The number of session-and-route pairs tracked.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The most pairs tracked.
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

    fn h(i: u64) -> u64 {
        let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    #[test]
    fn a_walk_over_many_ids_fires() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        let mut fired = false;
        for id in 0..200u64 {
            let id_hash = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            fired |= d.observe_request(0xabc, [id_hash], id * 10 * S).is_some();
        }
        assert!(fired);
    }

    #[test]
    fn browsing_a_few_items_repeatedly_is_quiet() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        for i in 0..2_000u64 {
            assert_eq!(d.observe_request(1, [h(i % 40)], i * 5 * S), None);
            assert_eq!(
                d.observe_status(1, if i % 10 == 0 { 404 } else { 200 }, i * 5 * S),
                None
            );
        }
    }

    #[test]
    fn slow_walks_fire_within_the_window() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        // One new id every 30 seconds: 120 an hour.
        let first = (0..400u64)
            .position(|i| d.observe_request(2, [h(i)], i * 30 * S).is_some())
            .unwrap();
        assert!((95..=125).contains(&first), "{first}");
    }

    #[test]
    fn error_ratio_fires() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        let mut fired_at = None;
        for i in 0..40u64 {
            // Few distinct ids (so only the ratio can fire), mostly 404.
            d.observe_request(3, [h(i % 5)], i * S);
            if d.observe_status(3, 404, i * S).is_some() && fired_at.is_none() {
                fired_at = Some(i);
            }
        }
        // Judged from the 10th request on.
        assert_eq!(fired_at, Some(9));
        // And from then on it fires before the handler runs.
        assert!(d.observe_request(3, [], 41 * S).is_some());
    }
}
