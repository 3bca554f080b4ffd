//! Enumeration (OWASP API1, broken object level authorization): one session walking
//! many distinct object ids on one route template, or new ids far faster than it
//! and the route's other sessions usually do, or drawing many 403/404s.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Ids new to the window, over the last minute.
    fresh: SlidingCounter,
    /// New ids per active minute (EWMA of minutes with any).
    usual: f32,
    /// Active minutes behind `usual`, up to [`ROUTE_SAMPLES`].
    minutes: u8,
    /// The current minute was tagged: it feeds no usual pace.
    tagged: bool,
}

/// The length of the new-id pace's window.
const MINUTE: u64 = 60_000_000_000;
/// Weight of each active minute in a session's usual pace.
const SESSION_WEIGHT: f32 = 0.2;
/// Active minutes before a session's own pace counts: a walk that starts at once
/// must not become its own norm.
const OWN_HISTORY: u8 = 3;
/// Weight of each session's active minute in its route's usual pace.
const ROUTE_WEIGHT: f32 = 1.0 / 64.0;
/// A session's first active minutes on a route feed the route's usual pace, no
/// more: one long session does not make a population.
const ROUTE_SAMPLES: u8 = 8;
/// Active minutes, over all sessions, before a route's usual pace counts.
const ROUTE_HISTORY: u32 = 32;

/// A route's usual new ids per active minute of its sessions, shared by all threads:
/// the average's `f32` bits and the number of samples in one word, and when it was
/// last fed. A racy read-modify-write; a lost update only delays the average by one
/// sample. An average not fed for a whole window is forgotten and starts afresh.
#[derive(Debug, Default)]
struct RouteAverage {
    word: AtomicU64,
    updated: AtomicU64,
}

impl RouteAverage {
    fn add(&self, sample: f32, now: u64, horizon: u64) {
        let stale = now.saturating_sub(self.updated.swap(now, Ordering::Relaxed)) > horizon;
        let word = if stale {
            0
        } else {
            self.word.load(Ordering::Relaxed)
        };
        let (average, samples) = (f32::from_bits(word as u32), (word >> 32) as u32);
        let average = if samples == 0 {
            sample
        } else {
            average + ROUTE_WEIGHT * (sample - average)
        };
        let samples = samples.saturating_add(1);
        self.word.store(
            u64::from(samples) << 32 | u64::from(average.to_bits()),
            Ordering::Relaxed,
        );
    }

    /// The average, once enough minutes were seen within the horizon; 0 otherwise.
    fn get(&self, now: u64, horizon: u64) -> f64 {
        if now.saturating_sub(self.updated.load(Ordering::Relaxed)) > horizon {
            return 0.0;
        }
        let word = self.word.load(Ordering::Relaxed);
        if ((word >> 32) as u32) < ROUTE_HISTORY {
            return 0.0;
        }
        f64::from(f32::from_bits(word as u32))
    }
}

/// Per session and route template: a distinct-count sketch of the object ids in the
/// path (keyed hashes, one bit each; the ids themselves are never kept), how many
/// of them were new in the last minute, and the share of 403/404 answers, over a
/// sliding window.
///
/// A walk is tagged when its distinct ids pass `max_distinct_ids` (a slow walk, over
/// hours), or when its new ids in the last minute pass `max_new_ids_per_minute` and
/// `new_ids_factor` times both the session's own usual pace and the route's (the
/// average over its sessions' active minutes): a fast walk is tagged within a few
/// dozen ids, while a route whose honest sessions browse many ids quickly (a
/// feed) raises its own bar. A minute that was tagged teaches nothing, each
/// sample is capped at the bar it was judged against, and only a session's first
/// minutes feed the route, so a walker cannot raise its own bar.
#[derive(Debug)]
pub(crate) struct EnumerationDetector {
    map: BoundedMap<EnumerationState>,
    window: u64,
    max_ids: f64,
    max_fresh: f64,
    factor: f64,
    /// Per route index, its usual pace.
    routes: Box<[RouteAverage]>,
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
            max_fresh: f64::from(config.max_new_ids_per_minute),
            factor: config.new_ids_factor,
            routes: (0..=u8::MAX).map(|_| RouteAverage::default()).collect(),
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

    /// The new ids a minute above which a session on `route` is tagged.
    fn pace_bar(&self, s: &EnumerationState, route: u8, now: u64) -> f64 {
        let own = if s.minutes >= OWN_HISTORY {
            f64::from(s.usual)
        } else {
            0.0
        };
        let route = self.routes[usize::from(route)].get(now, self.window);
        self.max_fresh.max(self.factor * own.max(route))
    }

    /// Feeds a closed minute into the session's and the route's usual figures
    /// (minutes without new ids are not activity on this route).
    fn close_minute(&self, s: &mut EnumerationState, route: u8, now: u64) {
        let Some((closed, _)) = s.fresh.roll(now, MINUTE) else {
            return;
        };
        let tagged = std::mem::take(&mut s.tagged);
        if closed == 0 || tagged {
            return;
        }
        let closed = (closed as f32).min(self.pace_bar(s, route, now) as f32);
        s.usual = if s.minutes == 0 {
            closed
        } else {
            s.usual + SESSION_WEIGHT * (closed - s.usual)
        };
        if s.minutes < ROUTE_SAMPLES {
            self.routes[usize::from(route)].add(closed, now, self.window);
            s.minutes += 1;
        }
    }

    /// Counts the object ids (keyed hashes) of one request of `key` (a session on
    /// route index `route`) at `now`, before the handler runs. Returns a score if
    /// the distinct ids, their pace, or the error ratio so far, are anomalous.
    pub(crate) fn observe_request(
        &self,
        key: u64,
        route: u8,
        ids: impl IntoIterator<Item = u64>,
        now: u64,
    ) -> Option<u8> {
        let window = self.window;
        self.map.update(key, now, EnumerationState::default, |s| {
            self.close_minute(s, route, now);
            let (mut any, mut new) = (false, false);
            for id in ids {
                if s.ids.insert(id, now, window) {
                    s.fresh.add(now, MINUTE, 1);
                    new = true;
                }
                any = true;
            }
            let distinct = any.then(|| f64::from(s.ids.estimate(now, window)));
            let by_ids = distinct
                .filter(|d| *d > self.max_ids)
                .map(|d| excess_score(d, self.max_ids));
            // Only a request that brings a new id walks on: re-reading the items just
            // fetched (a page loaded, then used) is not.
            let fresh = new.then(|| s.fresh.estimate(now, MINUTE));
            let bar = self.pace_bar(s, route, now);
            let by_pace = fresh.filter(|f| *f > bar).map(|f| excess_score(f, bar));
            let score = by_ids.max(by_pace).max(self.ratio_score(s, now));
            s.tagged |= score.is_some();
            score
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
            fired |= d.observe_request(0xabc, 0, [id_hash], id * 10 * S).is_some();
        }
        assert!(fired);
    }

    #[test]
    fn browsing_a_few_items_repeatedly_is_quiet() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        for i in 0..2_000u64 {
            assert_eq!(d.observe_request(1, 0, [h(i % 40)], i * 5 * S), None);
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
            .position(|i| d.observe_request(2, 0, [h(i)], i * 30 * S).is_some())
            .unwrap();
        assert!((95..=125).contains(&first), "{first}");
    }

    #[test]
    fn a_fast_walk_fires_within_thirty_ids() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        for (key, per_sec) in [(10u64, 0.5), (11, 2.0), (12, 20.0)] {
            let first = (0..200u64)
                .position(|i| {
                    let t = S + (i as f64 / per_sec * 1e9) as u64;
                    d.observe_request(key, 1, [h(key * 1_000 + i)], t).is_some()
                })
                .unwrap();
            assert!(first < 30, "{per_sec}/s: tagged at id {first}");
        }
    }

    /// A shopper's visit: a page of 6 items every 40 s for `pages` pages, going back
    /// to an item now and then. Returns whether any request was tagged.
    fn browse(d: &EnumerationDetector, key: u64, route: u8, start: u64, pages: u64) -> bool {
        let mut t = start;
        let mut tagged = false;
        for page in 0..pages {
            for j in 0..6u64 {
                t += S;
                let id = if j == 0 && page > 0 {
                    page * 6 - 2
                } else {
                    page * 6 + j
                };
                tagged |= d.observe_request(key, route, [h(key << 20 | id)], t).is_some();
            }
            t += 34 * S;
        }
        tagged
    }

    #[test]
    fn a_working_set_fetched_then_polled_is_tagged_only_while_it_grows() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        // An integration fetches its 25 items, then polls them, six requests a second.
        let tagged: Vec<u64> = (0..600u64)
            .filter(|i| {
                d.observe_request(7, 6, [h(7 << 20 | (i % 25))], S + i * S / 6)
                    .is_some()
            })
            .collect();
        assert!(tagged.iter().all(|&i| (20..25).contains(&i)), "{tagged:?}");
    }

    #[test]
    fn shoppers_browsing_a_catalogue_are_quiet() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        // 80 ids in 15 minutes each.
        for key in 0..20 {
            assert!(!browse(&d, key, 2, key * 600 * S, 16), "shopper {key}");
        }
    }

    /// `n` new ids at `per_minute` of `key` on `route` from `start`; the index of
    /// the first tagged one.
    fn walk(
        d: &EnumerationDetector,
        key: u64,
        route: u8,
        start: u64,
        per_minute: u64,
        n: u64,
    ) -> Option<u64> {
        (0..n).find(|i| {
            let t = start + i * 60 * S / per_minute;
            d.observe_request(key, route, [h(key << 20 | i)], t).is_some()
        })
    }

    #[test]
    fn a_route_whose_sessions_go_fast_raises_its_bar() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        // On route 3 (a feed) sessions see 15 new ids a minute...
        for key in 2..20 {
            assert_eq!(walk(&d, key, 3, key * 300 * S, 15, 60), None);
        }
        // ...so 30 a minute is within its usual pace there, not on a quiet route.
        assert_eq!(walk(&d, 900, 3, 10_000 * S, 30, 90), None);
        assert!(walk(&d, 901, 4, 10_000 * S, 30, 90).is_some_and(|i| i < 30));
        // A walk four times the route's pace is tagged there too.
        assert!(walk(&d, 902, 3, 20_000 * S, 60, 300).is_some_and(|i| i < 45));
    }

    #[test]
    fn a_route_forgets_its_pace_after_a_quiet_window() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        for key in 2..20 {
            walk(&d, key, 3, key * 300 * S, 15, 60);
        }
        assert_eq!(walk(&d, 900, 3, 10_000 * S, 30, 90), None);
        // Five hours later (the window is four) the route's pace is gone.
        assert!(walk(&d, 901, 3, 28_000 * S, 30, 90).is_some_and(|i| i < 30));
    }

    #[test]
    fn walkers_among_shoppers_do_not_raise_the_bar() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        for round in 0..20u64 {
            let start = round * 900 * S;
            for shopper in 0..10 {
                browse(&d, round * 100 + shopper, 5, start + shopper * 30 * S, 12);
            }
            // A walker at an id a second, tagged within 30 ids every time.
            let walker = 10_000 + round;
            let first = walk(&d, walker, 5, start + 100 * S, 60, 600);
            assert!(first.is_some_and(|i| i < 30), "walker {round}: {first:?}");
        }
    }

    #[test]
    fn error_ratio_fires() {
        let d = EnumerationDetector::new(&EnumerationConfig::default());
        let mut fired_at = None;
        for i in 0..40u64 {
            // Few distinct ids (so only the ratio can fire), mostly 404.
            d.observe_request(3, 0, [h(i % 5)], i * S);
            if d.observe_status(3, 404, i * S).is_some() && fired_at.is_none() {
                fired_at = Some(i);
            }
        }
        // Judged from the 10th request on.
        assert_eq!(fired_at, Some(9));
        // And from then on it fires before the handler runs.
        assert!(d.observe_request(3, 0, [], 41 * S).is_some());
    }
}
