//! Volume: a principal's request rate far above its own recent baseline and above
//! its tier's norm.

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
}

/// Per-principal request rates against an EWMA baseline of the principal's own
/// active windows and a per-tier norm.
///
/// The rate is a sliding-window count (two fixed windows, weighted). A rate is
/// tagged when it exceeds both `baseline_factor` times the principal's baseline
/// and its tier's norm. Tagged windows feed the baseline four times more slowly, so
/// an attack does not teach the detector that it is normal within minutes; idle
/// windows do not feed it at all, so the baseline is "how fast this principal goes
/// when it is active".
#[derive(Debug)]
pub(crate) struct VolumeDetector {
    map: BoundedMap<VolumeState>,
    window: u64,
    factor: f64,
    alpha: f32,
    norms: Vec<(Box<str>, u32)>,
    default_norm: u32,
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
                let own = self.factor * f64::from(s.baseline.max(0.0));
                let threshold = own.max(f64::from(norm));
                if rate > threshold {
                    s.tagged = true;
                    Some(excess_score(rate, threshold))
                } else {
                    None
                }
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
    fn two_hundred_requests_in_twenty_seconds_fire() {
        let d = VolumeDetector::new(&VolumeConfig::default());
        let norm = d.norm(Some("free")); // 120 per minute by default
        let mut fired = None;
        for i in 0..200u64 {
            fired = fired.or(d.observe(42, norm, i * 100_000_000));
        }
        assert!(fired.is_some());
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
        // A principal that always runs at 300/min (above the free norm of 120) learns
        // its baseline; only the first minutes, before the baseline exists, fire.
        let early = drive(&d, 7, norm, 0, 300, 5);
        assert!(early > 0);
        let later = drive(&d, 7, norm, 5 * 60 * S, 300, 10);
        assert!(later < early, "{later} >= {early}");
    }

    #[test]
    fn tier_norms_apply() {
        let d = detector();
        assert_eq!(d.norm(Some("pro")), 1200);
        assert_eq!(d.norm(Some("unknown")), 120);
        assert_eq!(d.norm(None), 120);
        // 600/min is fine for pro, not for free.
        assert_eq!(drive(&d, 1, d.norm(Some("pro")), 0, 600, 3), 0);
        assert!(drive(&d, 2, d.norm(Some("free")), 0, 600, 3) > 0);
    }
}
