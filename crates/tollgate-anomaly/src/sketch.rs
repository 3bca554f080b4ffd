//! Small fixed-size streaming summaries: sliding-window counters and distinct-count
//! sketches. None of them keeps an input value.

use std::sync::OnceLock;

/// `now / window_nanos`, without a division when `now` is in window `hint` (as it
/// is for all but the first request of each window).
#[inline]
fn window_of(now: u64, window_nanos: u64, hint: u64) -> u64 {
    match hint.checked_mul(window_nanos) {
        Some(start) if now >= start && now - start < window_nanos => hint,
        _ => now / window_nanos,
    }
}

/// `now % window_nanos`, without a division when `now` is in window `hint`.
#[inline]
fn offset_in(now: u64, window_nanos: u64, hint: u64) -> u64 {
    match hint.checked_mul(window_nanos) {
        Some(start) if now >= start && now - start < window_nanos => now - start,
        _ => now % window_nanos,
    }
}

/// A request count over a sliding window, estimated from two fixed windows: the
/// previous window's count weighted by how much of it still overlaps, plus the
/// current window's count. 12 bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SlidingCounter {
    window: u64,
    current: u32,
    previous: u32,
}

impl SlidingCounter {
    /// Moves to the window containing `now`. Returns the count of the window that
    /// just closed and the number of whole windows skipped, when the window changed.
    pub(crate) fn roll(&mut self, now: u64, window_nanos: u64) -> Option<(u32, u64)> {
        let w = window_of(now, window_nanos, self.window);
        if w == self.window {
            return None;
        }
        if w < self.window {
            // The clock went back: count into the current window.
            return None;
        }
        let closed = self.current;
        let skipped = w - self.window - 1;
        self.previous = if skipped == 0 { closed } else { 0 };
        self.current = 0;
        self.window = w;
        Some((closed, skipped))
    }

    /// Adds `n` at `now`.
    pub(crate) fn add(&mut self, now: u64, window_nanos: u64, n: u32) {
        self.roll(now, window_nanos);
        self.current = self.current.saturating_add(n);
    }

    /// The estimated count over the last `window_nanos` at `now` (after [`SlidingCounter::roll`]).
    pub(crate) fn estimate(&self, now: u64, window_nanos: u64) -> f64 {
        let elapsed = offset_in(now, window_nanos, self.window) as f64 / window_nanos as f64;
        f64::from(self.previous) * (1.0 - elapsed) + f64::from(self.current)
    }
}

/// Bits in a [`DistinctSketch`].
const BITS: usize = 256;

/// A linear-counting distinct-count sketch of 256 bits (32 bytes): estimates how
/// many distinct 64-bit hashes were inserted, to within a few percent up to a few
/// hundred, saturating near 1,400. Stores one bit per hash bucket, never a hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DistinctSketch([u64; BITS / 64]);

impl DistinctSketch {
    /// Adds a hash; true if its bucket was empty (a new value, unless two collide).
    pub(crate) fn insert(&mut self, hash: u64) -> bool {
        // The low bits pick the bucket; the hash is a keyed SipHash, so all bits are uniform.
        let bit = (hash % BITS as u64) as usize;
        let word = &mut self.0[bit / 64];
        let mask = 1 << (bit % 64);
        let new = *word & mask == 0;
        *word |= mask;
        new
    }

    fn contains(&self, hash: u64) -> bool {
        let bit = (hash % BITS as u64) as usize;
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// The union of two sketches.
    pub(crate) fn union(&self, other: &DistinctSketch) -> DistinctSketch {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
        out
    }

    /// The estimated number of distinct hashes inserted.
    pub(crate) fn estimate(&self) -> u32 {
        let set: u32 = self.0.iter().map(|w| w.count_ones()).sum();
        ESTIMATES.get_or_init(estimates)[set as usize]
    }
}

/// The estimate for each count of set bits, computed once (a logarithm per request
/// otherwise).
static ESTIMATES: OnceLock<[u32; BITS + 1]> = OnceLock::new();

fn estimates() -> [u32; BITS + 1] {
    std::array::from_fn(|set| estimate_of(set as u32))
}

/// Linear counting: `-m * ln(zeros / m)`, rounded.
fn estimate_of(set: u32) -> u32 {
    let zeros = BITS as u32 - set;
    if zeros == 0 {
        // Saturated: m * ln(m).
        return (BITS as f64 * (BITS as f64).ln()) as u32;
    }
    let m = BITS as f64;
    (-m * (f64::from(zeros) / m).ln()).round() as u32
}

/// Distinct hashes over a sliding window: the union of the current and previous
/// fixed windows' sketches (so between one and two windows of history). 72 bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WindowedDistinct {
    window: u64,
    current: DistinctSketch,
    previous: DistinctSketch,
}

impl WindowedDistinct {
    fn roll(&mut self, now: u64, window_nanos: u64) {
        let w = window_of(now, window_nanos, self.window);
        if w <= self.window {
            return;
        }
        self.previous = if w == self.window + 1 {
            self.current
        } else {
            DistinctSketch::default()
        };
        self.current = DistinctSketch::default();
        self.window = w;
    }

    /// Adds a hash at `now`; true if the window had not seen it (unless two collide).
    pub(crate) fn insert(&mut self, hash: u64, now: u64, window_nanos: u64) -> bool {
        self.roll(now, window_nanos);
        self.current.insert(hash) && !self.previous.contains(hash)
    }

    /// The estimated distinct count over the last one to two windows.
    pub(crate) fn estimate(&mut self, now: u64, window_nanos: u64) -> u32 {
        self.roll(now, window_nanos);
        self.current.union(&self.previous).estimate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
        x ^ (x >> 33)
    }

    #[test]
    fn distinct_estimates_are_close() {
        for n in [1u64, 10, 50, 100, 200, 400] {
            let mut s = DistinctSketch::default();
            for i in 0..n {
                s.insert(mix(i));
                s.insert(mix(i)); // duplicates do not count
            }
            let e = f64::from(s.estimate());
            let err = (e - n as f64).abs() / n as f64;
            assert!(err < 0.2, "n={n} estimate={e}");
        }
        let mut full = DistinctSketch::default();
        for i in 0..100_000 {
            full.insert(mix(i));
        }
        assert_eq!(full.estimate(), 1419);
    }

    #[test]
    fn sliding_counter_weights_previous_window() {
        let w = 60;
        let mut c = SlidingCounter::default();
        for t in 0..60 {
            c.add(t, w, 1);
        }
        c.roll(90, w);
        // Half of the previous window still overlaps.
        assert!((c.estimate(90, w) - 30.0).abs() < 1e-9);
        assert_eq!(c.roll(300, w), Some((0, 3)));
        assert_eq!(c.estimate(300, w), 0.0);
    }

    #[test]
    fn window_arithmetic_without_division() {
        for (now, w, hint) in [
            (0u64, 60u64, 0u64),
            (59, 60, 0),
            (60, 60, 0),
            (60, 60, 1),
            (119, 60, 1),
            (120, 60, 1),
            (5, 60, 1),
            (u64::MAX, 7, u64::MAX / 7),
            (u64::MAX, 7, u64::MAX / 7 - 1),
            (u64::MAX, 7, u64::MAX),
            (1_700_000_000_123_456_789, 60_000_000_000, 28_333_333),
            (1_700_000_000_123_456_789, 60_000_000_000, 28_333_334),
        ] {
            assert_eq!(window_of(now, w, hint), now / w, "{now} {w} {hint}");
            assert_eq!(offset_in(now, w, hint), now % w, "{now} {w} {hint}");
        }
    }

    #[test]
    fn windowed_distinct_forgets_after_two_windows() {
        let w = 100;
        let mut d = WindowedDistinct::default();
        for i in 0..50 {
            d.insert(mix(i), 10, w);
        }
        assert!(d.estimate(150, w) >= 45);
        assert_eq!(d.estimate(250, w), 0);
    }
}
