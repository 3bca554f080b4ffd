//! Volume: a principal's request rate far above its own recent baseline and above
//! its tier's norm, or a sudden burst far above its own pace.

use tollgate_core::clock::duration_nanos;

use crate::bounded::BoundedMap;
use crate::config::VolumeConfig;
use crate::sketch::SlidingCounter;

use super::score::excess_score;

#[derive(Clone, Copy, Debug, Default)]
struct VolumeState {
    counter: SlidingCounter,
    /// Requests per window in active, untagged windows (EWMA); negative when unknown.
    baseline: f32,
    /// The current window was tagged: it will not feed the baseline.
    tagged: bool,
    pace: Pace,
}

/// The gaps between a principal's requests, averaged over its last few requests
/// (`fast`) and over many (`slow`), in seconds. Counted in requests rather than
/// time, a jump to many times its own pace shows within a fixed number of requests
/// whatever the pace was, and a baseline exists after a few dozen requests instead
/// of after a full window.
#[derive(Clone, Copy, Debug, Default)]
struct Pace {
    last: u64,
    fast: f32,
    slow: f32,
    /// Gaps seen, up to [`PACE_HISTORY`].
    gaps: u8,
}

/// Weight of each gap in the fast average: about the last six requests.
const FAST_WEIGHT: f32 = 1.0 / 6.0;
/// Weight of each gap in the slow average: about the last hundred requests, slow
/// enough that a tenfold burst is past `baseline_factor` before the baseline follows.
const SLOW_WEIGHT: f32 = 1.0 / 128.0;
/// Gaps needed before the slow average is a baseline to judge against.
const PACE_HISTORY: u8 = 16;
/// A gap counts as at most this many slow gaps: a pause (lunch, a night) is not a
/// new pace, so returning to work afterwards is not a burst.
const PAUSE_CAP: f32 = 4.0;

impl Pace {
    /// Counts a request at `now` and returns `(fast_rate, slow_rate)` in requests per
    /// second once the slow average is a baseline.
    fn observe(&mut self, now: u64, learning: f32) -> Option<(f64, f64)> {
        let last = std::mem::replace(&mut self.last, now);
        if last == 0 || now < last {
            return None;
        }
        let mut gap = (now - last) as f32 * 1e-9;
        let seen = f32::from(self.gaps) + 1.0;
        if self.gaps < PACE_HISTORY {
            // Until there is a baseline, both are plain means of the gaps so far.
            self.fast += (gap - self.fast) / seen.min(1.0 / FAST_WEIGHT);
            self.slow += (gap - self.slow) / seen;
        } else {
            gap = gap.min(PAUSE_CAP * self.slow.max(1e-3));
            self.fast += FAST_WEIGHT * (gap - self.fast);
            self.slow += SLOW_WEIGHT * learning * (gap - self.slow);
        }
        self.gaps = self.gaps.saturating_add(1).min(PACE_HISTORY);
        // A gap of zero (requests sent together) is counted as a millisecond.
        (self.gaps >= PACE_HISTORY).then(|| {
            (
                1.0 / f64::from(self.fast.max(1e-3)),
                1.0 / f64::from(self.slow.max(1e-3)),
            )
        })
    }
}

/// Per-principal request rates against an EWMA baseline of the principal's own
/// active windows and a per-tier norm, and the principal's recent pace against its
/// longer pace.
///
/// The rate is a sliding-window count (two fixed windows, weighted). A rate is
/// tagged when it exceeds both `baseline_factor` times the principal's baseline
/// and its tier's norm. Tagged windows feed the baseline four times more slowly, so
/// an attack does not teach the detector that it is normal within minutes; idle
/// windows do not feed it at all, so the baseline is "how fast this principal goes
/// when it is active".
///
/// The slow pace ([`Pace`]) counts as a baseline too, and exists before a whole
/// window has passed, so a client steady from its first request is not tagged
/// however heavy it is (its rate limits bound it). A burst is seen sooner from the
/// pace: the last six or so requests coming `baseline_factor` times faster than the
/// last hundred or so, and faster than a quarter of `default_norm` (so a principal
/// idling at a request a minute is not tagged for a handful of clicks; the same
/// floor for every tier, since a burst is judged against the principal's own pace,
/// not its allowance). A steady client, however heavy, keeps both averages alike.
#[derive(Debug)]
pub(crate) struct VolumeDetector {
    map: BoundedMap<VolumeState>,
    window: u64,
    factor: f64,
    alpha: f32,
    norms: Vec<(Box<str>, u32)>,
    default_norm: u32,
    /// Requests per second a burst must exceed, whatever the principal's pace.
    burst_floor: f64,
}

impl VolumeDetector {
    /// A detector with this configuration (validated by the layer).
    pub(crate) fn new(config: &VolumeConfig) -> Self {
        VolumeDetector {
            map: BoundedMap::new(config.max_entries, config.ttl),
            window: duration_nanos(config.window).max(1),
            factor: config.baseline_factor,
            alpha: config.baseline_alpha as f32,
            norms: config
                .tier_norms
                .iter()
                .map(|(k, v)| (k.as_str().into(), *v))
                .collect(),
            default_norm: config.default_norm,
            burst_floor: f64::from(config.default_norm) / (4.0 * config.window.as_secs_f64().max(1e-9)),
        }
    }

    /// The norm (requests per window) of `tier`; the default norm for unknown tiers
    /// and for `None` (unauthenticated callers).
    pub(crate) fn norm(&self, tier: Option<&str>) -> u32 {
        tier.and_then(|t| self.norms.iter().find(|(name, _)| &**name == t))
            .map_or(self.default_norm, |(_, n)| *n)
    }

    /// Counts one request of `key` at `now`; returns a score if the rate is anomalous.
    pub(crate) fn observe(&self, key: u64, norm: u32, now: u64) -> Option<u8> {
        let window = self.window;
        self.map.update(
            key,
            now,
            || VolumeState {
                baseline: -1.0,
                ..VolumeState::default()
            },
            |s| {
                if let Some((closed, _skipped)) = s.counter.roll(now, window) {
                    if closed > 0 {
                        // Tagged windows teach the baseline four times more slowly, so an
                        // attack is not learned as normal within its first minutes, while a
                        // principal that really has grown is not tagged for ever.
                        let alpha = if s.tagged { self.alpha / 4.0 } else { 1.0 };
                        let closed = closed as f32;
                        s.baseline = if s.baseline < 0.0 {
                            closed * alpha
                        } else {
                            let alpha = if s.tagged { alpha } else { self.alpha };
                            s.baseline + alpha * (closed - s.baseline)
                        };
                    }
                    s.tagged = false;
                }
                s.counter.add(now, window, 1);
                let rate = s.counter.estimate(now, window);
                // A burst teaches the slow pace more slowly, as tagged windows do.
                let learning = if s.tagged { 1.0 / 4.0 } else { 1.0 };
                let pace = s.pace.observe(now, learning);
                let burst = pace.and_then(|(fast, slow)| {
                    let threshold = (self.factor * slow).max(self.burst_floor);
                    (fast > threshold).then(|| excess_score(fast, threshold))
                });
                // The slow pace is a baseline too, one that exists before a whole window.
                let paced = pace.map_or(0.0, |(_, slow)| slow * window as f64 * 1e-9);
                let own = self.factor * f64::from(s.baseline.max(0.0)).max(paced);
                let threshold = own.max(f64::from(norm));
                let by_rate = (rate > threshold).then(|| excess_score(rate, threshold));
                let score = by_rate.max(burst);
                s.tagged |= score.is_some();
                score
            },
        )
    }

    /// The baseline (requests per active window) of `key`, if known.
    #[cfg(test)]
    pub(crate) fn baseline(&self, key: u64, now: u64) -> Option<f32> {
        self.map.get(key, now, |s| s.baseline).filter(|b| *b >= 0.0)
    }

    /// The number of keys tracked.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The most keys tracked.
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

    fn detector() -> VolumeDetector {
        let mut c = VolumeConfig::default();
        c.tier_norms.insert("pro".into(), 1200);
        VolumeDetector::new(&c)
    }

    /// Sends `per_min` evenly spaced requests per minute for `minutes`, from `start`.
    fn drive(d: &VolumeDetector, key: u64, norm: u32, start: u64, per_min: u64, minutes: u64) -> usize {
        let step = 60 * S / per_min;
        (0..per_min * minutes)
            .filter(|i| d.observe(key, norm, start + i * step).is_some())
            .count()
    }

    #[test]
    fn a_quiet_start_then_two_hundred_requests_in_twenty_seconds_fire() {
        let d = VolumeDetector::new(&VolumeConfig::default());
        let norm = d.norm(Some("free")); // 120 per minute by default
        assert_eq!(drive(&d, 42, norm, 0, 6, 3), 0);
        let start = 3 * 60 * S;
        let fired = (0..200u64).filter(|i| d.observe(42, norm, start + i * 100_000_000).is_some());
        assert!(fired.count() > 100);
    }

    #[test]
    fn a_heavy_client_steady_from_its_first_request_is_quiet() {
        let d = VolumeDetector::new(&VolumeConfig::default());
        let norm = d.norm(Some("free"));
        // 8 a second, five times the norm, from the start.
        assert_eq!(drive(&d, 43, norm, 0, 480, 10), 0);
    }

    #[test]
    fn steady_traffic_under_the_norm_is_quiet() {
        let d = detector();
        assert_eq!(drive(&d, 1, d.norm(Some("free")), 0, 100, 30), 0);
        let b = d.baseline(1, 30 * 60 * S).unwrap();
        assert!((b - 100.0).abs() < 5.0, "{b}");
    }

    #[test]
    fn a_burst_above_the_norm_fires_within_seconds() {
        let d = detector();
        let norm = d.norm(Some("free"));
        drive(&d, 1, norm, 0, 10, 30);
        let start = 30 * 60 * S;
        // 20 requests per second.
        let first = (0..2_000u64)
            .position(|i| d.observe(1, norm, start + i * 50_000_000).is_some())
            .unwrap();
        assert!(first < 200, "fired after {first} requests");
    }

    #[test]
    fn above_the_norm_but_near_its_own_baseline_is_quiet() {
        let d = detector();
        let norm = d.norm(Some("free"));
        // A principal that always runs at 300/min (above the free norm of 120).
        assert_eq!(drive(&d, 7, norm, 0, 300, 15), 0);
    }

    /// Requests at `per_sec` with exponential gaps (a seeded LCG), from `start`;
    /// returns the time after the last and the indices of tagged requests.
    fn poisson(
        d: &VolumeDetector,
        key: u64,
        norm: u32,
        start: u64,
        per_sec: f64,
        n: u64,
        seed: &mut u64,
    ) -> (u64, Vec<u64>) {
        let mut t = start;
        let mut tagged = Vec::new();
        for i in 0..n {
            *seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = ((*seed >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            t += (-u.ln() / per_sec * 1e9) as u64;
            if d.observe(key, norm, t).is_some() {
                tagged.push(i);
            }
        }
        (t, tagged)
    }

    #[test]
    fn a_twenty_fold_burst_fires_within_twenty_requests() {
        let d = detector();
        let norm = d.norm(Some("pro"));
        let mut seed = 7;
        for (key, pace) in [(1, 0.2), (2, 1.0), (3, 5.0)] {
            // Two minutes at its own pace (no full window's baseline yet), then 20 times faster.
            let (t, quiet) = poisson(&d, key, norm, S, pace, (120.0 * pace) as u64, &mut seed);
            assert!(quiet.is_empty(), "pace {pace}: {quiet:?}");
            let (_, burst) = poisson(&d, key, norm, t, 10.0 * pace, 100, &mut seed);
            let first = burst.first().copied().unwrap_or(u64::MAX);
            assert!(
                first < 20,
                "pace {pace}: first tag at request {first} of the burst"
            );
        }
    }

    #[test]
    fn steady_clients_are_quiet_whatever_their_pace() {
        let d = detector();
        let mut seed = 11;
        for (key, pace) in [(1, 0.05), (2, 0.5), (3, 3.0), (4, 15.0)] {
            let (_, tagged) = poisson(&d, key, d.norm(Some("pro")), S, pace, 5_000, &mut seed);
            assert!(tagged.is_empty(), "pace {pace}: {} tagged", tagged.len());
        }
    }

    #[test]
    fn returning_from_a_pause_is_not_a_burst() {
        let d = detector();
        let norm = d.norm(Some("pro"));
        let mut seed = 3;
        let (t, _) = poisson(&d, 1, norm, S, 1.0, 300, &mut seed);
        // A night off, then the same pace again.
        let (_, tagged) = poisson(&d, 1, norm, t + 8 * 3600 * S, 1.0, 300, &mut seed);
        assert!(tagged.is_empty(), "{tagged:?}");
    }

    #[test]
    fn tier_norms_apply() {
        let d = detector();
        assert_eq!(d.norm(Some("pro")), 1200);
        assert_eq!(d.norm(Some("unknown")), 120);
        assert_eq!(d.norm(None), 120);
        // A jump to 3 times its own rate: within the factor, so only a rate past
        // the norm and the window baseline could tag it, and neither is passed.
        for (key, tier) in [(1, "pro"), (2, "free")] {
            let norm = d.norm(Some(tier));
            drive(&d, key, norm, 0, 100, 5);
            assert_eq!(drive(&d, key, norm, 5 * 60 * S, 300, 3), 0, "{tier}");
        }
    }
}
