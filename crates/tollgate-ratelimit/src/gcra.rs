//! The generic cell rate algorithm (GCRA), as pure functions on integer nanoseconds.
//!
//! No store and no clock here: a decision is a function of the key's stored state,
//! the time and the limits, so the in-process store, the Redis script and the tests
//! all compute the same answer.
//!
//! # The model
//!
//! A [`Limit`] admits one unit of cost every [`Limit::interval`] nanoseconds, with
//! bursts of up to [`Limit::burst`] units: `10/s burst 20` has an interval of
//! 100 ms and lets 20 requests through at once, then 10 a second.
//!
//! Each key keeps, per limit, one *theoretical arrival time* (TAT, nanoseconds since
//! the Unix epoch): the time at which the key's budget under that limit would be
//! full again if nothing more were spent. A key with no state (TAT `0`, or any TAT
//! at or before now) has a full budget.
//!
//! A request of `cost` units at `now`:
//! ```text
//! base    = max(tat, now)
//! new_tat = base + cost * interval
//! allowed = new_tat - now <= burst * interval        (the limit's capacity)
//! ```
//! If allowed, the stored TAT becomes `new_tat`; if not, it stays as it was.
//!
//! Several limits on one key are *stacked*: every limit is checked, and the TATs are
//! advanced only when all of them allow ([`decide_all`]). A request denied by a daily
//! limit costs nothing under the per-second one.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_ratelimit::gcra::{self, Limit};
//!
//! let limit = Limit::new(10, Duration::from_secs(1), 20).unwrap(); // 10/s burst 20
//! let now = 1_000_000_000_000;
//! let first = gcra::decide(0, now, &limit, 1);
//! assert!(first.allowed);
//! assert_eq!(first.remaining, 19);
//! assert_eq!(first.tat, now + 100_000_000);
//!
//! // 20 at once pass, the 21st waits one interval.
//! let mut tat = 0;
//! for _ in 0..20 {
//!     tat = gcra::decide(tat, now, &limit, 1).tat;
//! }
//! let denied = gcra::decide(tat, now, &limit, 1);
//! assert!(!denied.allowed);
//! assert_eq!(denied.retry_after, 100_000_000);
//! ```

use std::time::Duration;

/// The most limits one key can stack (for example per second, per hour, per day, per month).
pub const MAX_LIMITS: usize = 4;

/// The largest capacity (`burst * interval`) a limit may have: 2^62 ns, about 146 years,
/// so that `now + capacity` cannot overflow for any time before 2262.
pub const MAX_CAPACITY_NANOS: u64 = 1 << 62;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Why a limit cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The quota is zero.
    #[error("quota must be at least 1")]
    ZeroQuota,
    /// The burst is zero.
    #[error("burst must be at least 1")]
    ZeroBurst,
    /// The window divided by the quota is less than one nanosecond.
    #[error("window / quota must be at least 1 ns")]
    TooFast,
    /// `burst * interval` exceeds [`MAX_CAPACITY_NANOS`].
    #[error("burst * (window / quota) must be at most 2^62 ns")]
    TooLarge,
}

/// One GCRA limit: one unit every `interval` nanoseconds, bursts of up to `burst` units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    interval: u64,
    burst: u64,
}

impl Limit {
    /// `quota` units per `window`, with bursts of up to `burst` units.
    ///
    /// The interval is `window / quota` rounded down to whole nanoseconds (so at most
    /// one nanosecond per unit more permissive than exact).
    pub fn new(quota: u64, window: Duration, burst: u64) -> Result<Self, LimitError> {
        if quota == 0 {
            return Err(LimitError::ZeroQuota);
        }
        let window = u64::try_from(window.as_nanos()).map_err(|_| LimitError::TooLarge)?;
        Self::from_interval(window / quota, burst)
    }

    /// A limit from its interval (nanoseconds per unit) and burst (units).
    pub fn from_interval(interval_nanos: u64, burst: u64) -> Result<Self, LimitError> {
        if burst == 0 {
            return Err(LimitError::ZeroBurst);
        }
        if interval_nanos == 0 {
            return Err(LimitError::TooFast);
        }
        match interval_nanos.checked_mul(burst) {
            Some(c) if c <= MAX_CAPACITY_NANOS => Ok(Limit {
                interval: interval_nanos,
                burst,
            }),
            _ => Err(LimitError::TooLarge),
        }
    }

    /// Nanoseconds per unit of cost (the emission interval).
    pub const fn interval(&self) -> u64 {
        self.interval
    }

    /// The most units admitted at once from a full budget.
    pub const fn burst(&self) -> u64 {
        self.burst
    }

    /// `burst * interval`: how far ahead of now a TAT may be for a request to pass,
    /// and the time an empty budget takes to fill completely.
    pub const fn capacity(&self) -> u64 {
        self.interval * self.burst
    }

    /// The capacity in whole seconds, rounded up (at least 1): the window `w` of the
    /// `RateLimit-Policy` header, whose quota `q` is [`Limit::burst`].
    pub const fn capacity_secs(&self) -> u64 {
        let s = self.capacity().div_ceil(NANOS_PER_SEC);
        if s == 0 { 1 } else { s }
    }
}

/// The verdict of one limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// Whether this limit alone admits the request.
    pub allowed: bool,
    /// The TAT to store afterwards (nanoseconds since the epoch): the advanced TAT if
    /// the request was admitted, else the TAT as it was.
    pub tat: u64,
    /// Units still available right after this decision.
    pub remaining: u64,
    /// Nanoseconds until this limit would admit the request; 0 if it does now.
    pub retry_after: u64,
    /// Nanoseconds until the budget under this limit is full again.
    pub reset: u64,
}

/// One limit's decision for a request of `cost` units at `now`, given the stored TAT
/// (`0` when the key has no state). Pure; all times in nanoseconds since the epoch.
///
/// A `cost` of 0 reports the state without spending. A `cost` above the limit's burst
/// is never admitted.
///
/// A TAT beyond `now + capacity` can only come from a clock that went back (an
/// admitted request never sets one): the key starts again from a full budget, so a
/// backwards jump never blocks a key for the size of the jump, and grants it at most
/// one burst.
pub fn decide(tat: u64, now: u64, limit: &Limit, cost: u64) -> Cell {
    let capacity = limit.capacity();
    let tat = if tat > now.saturating_add(capacity) {
        0
    } else {
        tat
    };
    let base = tat.max(now);
    let new_tat = base.saturating_add(cost.saturating_mul(limit.interval));
    let allow_at = new_tat.saturating_sub(capacity);
    let horizon = now.saturating_add(capacity);
    if allow_at <= now {
        Cell {
            allowed: true,
            tat: new_tat,
            remaining: (horizon - new_tat) / limit.interval,
            retry_after: 0,
            reset: new_tat - now,
        }
    } else {
        Cell {
            allowed: false,
            tat,
            remaining: horizon.saturating_sub(base) / limit.interval,
            retry_after: allow_at - now,
            reset: base - now,
        }
    }
}

/// The decision for a request over a stack of limits: admitted only if every limit
/// admits it, and then spent in all of them; otherwise spent in none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    now: u64,
    len: u8,
    cells: [Cell; MAX_LIMITS],
}

impl Decision {
    /// Whether every limit admitted the request (and so it was spent).
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The time the decision was made at, in nanoseconds since the epoch (the store's
    /// clock if it uses its own).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Each limit's verdict, in the order the limits were given. When the request was
    /// denied, every cell's `tat` is the unchanged stored TAT.
    pub fn cells(&self) -> &[Cell] {
        &self.cells[..self.len as usize]
    }

    /// The TATs to store afterwards, in limit order.
    pub fn tats(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.cells().iter().map(|c| c.tat)
    }

    /// The index of the limit with the lowest remaining units: the one the headers
    /// report. On a tie, the one that takes longer to reset. `None` for no limits.
    pub fn tightest(&self) -> Option<usize> {
        self.cells()
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset)))
            .map(|(i, _)| i)
    }

    /// Nanoseconds until the request would be admitted by every limit (0 if admitted).
    pub fn retry_after(&self) -> u64 {
        self.cells().iter().map(|c| c.retry_after).max().unwrap_or(0)
    }

    /// How long the key's state matters: the time until every limit's budget is full
    /// again, after which the state equals no state and may expire. Zero when it
    /// already is full.
    pub fn ttl(&self) -> Duration {
        let far = self
            .cells()
            .iter()
            .map(|c| c.tat.saturating_sub(self.now))
            .max()
            .unwrap_or(0);
        Duration::from_nanos(far)
    }
}

/// Decides a request of `cost` units at `now` over stacked `limits`, given the stored
/// TATs in the same order (missing or `0` TATs mean no state).
///
/// The request is admitted only if every limit admits it; then each cell's `tat` is
/// the advanced TAT. If any limit denies, no TAT changes.
///
/// # Panics
/// If more than [`MAX_LIMITS`] limits are given (the layer refuses such tiers when it
/// is built).
///
/// ```
/// use std::time::Duration;
/// use tollgate_ratelimit::gcra::{self, Limit};
///
/// let per_sec = Limit::new(10, Duration::from_secs(1), 10).unwrap();
/// let per_day = Limit::new(2, Duration::from_secs(86_400), 2).unwrap();
/// let now = 5_000_000_000;
/// let mut tats = [0, 0];
/// for _ in 0..2 {
///     let d = gcra::decide_all(&tats, now, &[per_sec, per_day], 1);
///     assert!(d.allowed());
///     for (t, new) in tats.iter_mut().zip(d.tats()) { *t = new; }
/// }
/// let denied = gcra::decide_all(&tats, now, &[per_sec, per_day], 1);
/// assert!(!denied.allowed());
/// // The daily limit denied, so the per-second budget was not spent:
/// assert_eq!(denied.cells()[0].remaining, 8);
/// assert_eq!(denied.tightest(), Some(1));
/// ```
pub fn decide_all(tats: &[u64], now: u64, limits: &[Limit], cost: u64) -> Decision {
    assert!(limits.len() <= MAX_LIMITS, "at most {MAX_LIMITS} stacked limits");
    let mut cells = [Cell::default(); MAX_LIMITS];
    let mut allowed = true;
    for (i, limit) in limits.iter().enumerate() {
        let cell = decide(tats.get(i).copied().unwrap_or(0), now, limit, cost);
        allowed &= cell.allowed;
        cells[i] = cell;
    }
    if !allowed {
        // Spend nowhere: report each limit as it stands, without this request.
        for (i, cell) in cells.iter_mut().take(limits.len()).enumerate() {
            if cell.allowed {
                let stored = tats.get(i).copied().unwrap_or(0);
                let current = if stored > now.saturating_add(limits[i].capacity()) {
                    0
                } else {
                    stored
                };
                let base = current.max(now);
                cell.tat = stored;
                cell.reset = base - now;
                cell.remaining =
                    now.saturating_add(limits[i].capacity()).saturating_sub(base) / limits[i].interval;
            }
        }
    }
    Decision {
        allowed,
        now,
        len: limits.len() as u8,
        cells,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = NANOS_PER_SEC;

    /// The textbook virtual-scheduling form of GCRA (ITU-T I.371), written separately:
    /// with increment T and limit tau = (burst - 1) * T, a cell arriving at `t` conforms
    /// iff `t >= TAT - tau`; then `TAT = max(TAT, t) + T`. A request of cost n is n
    /// cells that must all conform at the same instant.
    fn reference(arrivals: &[(u64, u64)], t_inc: u64, burst: u64) -> Vec<bool> {
        let tau = (burst - 1) as i128 * t_inc as i128;
        let mut tat: i128 = i128::MIN / 2;
        arrivals
            .iter()
            .map(|&(t, n)| {
                let t = t as i128;
                // the last of the n cells arrives with TAT advanced by (n - 1) increments
                let last_tat = tat.max(t) + (n as i128 - 1) * t_inc as i128;
                if n == 0 || t >= last_tat - tau {
                    if n > 0 {
                        tat = last_tat + t_inc as i128;
                    }
                    true
                } else {
                    false
                }
            })
            .collect()
    }

    #[test]
    fn burst_then_rate() {
        let limit = Limit::new(10, Duration::from_secs(1), 20).unwrap();
        let now = 100 * SEC;
        let mut tat = 0;
        for i in 0..20 {
            let c = decide(tat, now, &limit, 1);
            assert!(c.allowed, "request {i}");
            assert_eq!(c.remaining, 19 - i);
            tat = c.tat;
        }
        let c = decide(tat, now, &limit, 1);
        assert!(!c.allowed);
        assert_eq!(c.tat, tat);
        assert_eq!(c.remaining, 0);
        assert_eq!(c.retry_after, SEC / 10);
        assert_eq!(c.reset, 2 * SEC);
        // One interval later exactly one more passes.
        let c = decide(tat, now + SEC / 10, &limit, 1);
        assert!(c.allowed);
        assert!(!decide(c.tat, now + SEC / 10, &limit, 1).allowed);
    }

    #[test]
    fn cost_above_burst_never_passes_and_zero_cost_peeks() {
        let limit = Limit::new(5, Duration::from_secs(1), 5).unwrap();
        assert!(!decide(0, SEC, &limit, 6).allowed);
        assert!(decide(0, SEC, &limit, 5).allowed);
        let peek = decide(0, SEC, &limit, 0);
        assert!(peek.allowed);
        assert_eq!(peek.remaining, 5);
        assert_eq!(peek.reset, 0);
    }

    #[test]
    fn limit_validation() {
        assert_eq!(
            Limit::new(0, Duration::from_secs(1), 1),
            Err(LimitError::ZeroQuota)
        );
        assert_eq!(
            Limit::new(1, Duration::from_secs(1), 0),
            Err(LimitError::ZeroBurst)
        );
        assert_eq!(
            Limit::new(10, Duration::from_nanos(5), 1),
            Err(LimitError::TooFast)
        );
        assert_eq!(
            Limit::new(1, Duration::from_secs(u64::MAX), 1),
            Err(LimitError::TooLarge)
        );
        let l = Limit::new(10_000, Duration::from_secs(86_400), 10_000).unwrap();
        assert_eq!(l.capacity_secs(), 86_400);
        assert_eq!(
            Limit::new(7, Duration::from_secs(1), 7).unwrap().capacity_secs(),
            1
        );
    }

    #[test]
    fn stacked_denial_spends_nothing() {
        let fast = Limit::new(10, Duration::from_secs(1), 10).unwrap();
        let daily = Limit::new(3, Duration::from_secs(86_400), 3).unwrap();
        let now = 10 * SEC;
        let mut tats = [0u64; 2];
        for _ in 0..3 {
            let d = decide_all(&tats, now, &[fast, daily], 1);
            assert!(d.allowed());
            tats = [d.cells()[0].tat, d.cells()[1].tat];
        }
        let before = tats;
        for _ in 0..100 {
            let d = decide_all(&tats, now, &[fast, daily], 1);
            assert!(!d.allowed());
            assert!(d.cells()[0].allowed);
            assert!(!d.cells()[1].allowed);
            assert_eq!(d.cells()[0].remaining, 7);
            assert_eq!(d.tats().collect::<Vec<_>>(), before.to_vec());
            assert_eq!(d.tightest(), Some(1));
            assert_eq!(d.retry_after(), 86_400 * SEC / 3);
        }
        assert_eq!(tats, before);
    }

    proptest! {
        /// Any quota, burst and sequence of arrivals: admitted exactly as the textbook
        /// formula says, and remaining/retry_after agree with what happens next.
        #[test]
        fn matches_reference(
            interval in 1u64..5_000_000_000,
            burst in 1u64..50,
            gaps in proptest::collection::vec((0u64..3_000_000_000, 0u64..6), 1..200),
        ) {
            let limit = Limit::from_interval(interval, burst).unwrap();
            let mut now = 1_700_000_000 * SEC;
            let mut arrivals = Vec::new();
            for (gap, cost) in &gaps {
                now += gap;
                arrivals.push((now, *cost));
            }
            let expected = reference(&arrivals, interval, burst);
            let mut tat = 0;
            for (i, &(t, cost)) in arrivals.iter().enumerate() {
                let c = decide(tat, t, &limit, cost);
                prop_assert_eq!(c.allowed, expected[i], "arrival {} at {} cost {}", i, t, cost);
                if c.allowed {
                    prop_assert_eq!(c.retry_after, 0);
                    // `remaining` more single units pass now, and no more.
                    let mut probe = c.tat;
                    for _ in 0..c.remaining.min(60) {
                        let p = decide(probe, t, &limit, 1);
                        prop_assert!(p.allowed);
                        probe = p.tat;
                    }
                    if c.remaining < 60 {
                        prop_assert!(!decide(probe, t, &limit, 1).allowed);
                    }
                } else {
                    prop_assert_eq!(c.tat, tat);
                    // Exactly at retry_after it passes; one nanosecond earlier it does not.
                    prop_assert!(decide(tat, t + c.retry_after, &limit, cost).allowed || cost > burst);
                    prop_assert!(!decide(tat, t + c.retry_after - 1, &limit, cost).allowed);
                }
                tat = c.tat;
            }
        }

        /// A clock that goes back by any amount: the key waits at most one window,
        /// and never gets more than one full burst.
        #[test]
        fn clock_going_back_is_bounded(
            interval in 1u64..5_000_000_000,
            burst in 1u64..50,
            spent in 1u64..50,
            back in 0u64..(10 * 86_400 * SEC),
        ) {
            let limit = Limit::from_interval(interval, burst).unwrap();
            let t0 = 1_700_000_000 * SEC;
            let mut tat = 0;
            for _ in 0..spent.min(burst) {
                tat = decide(tat, t0, &limit, 1).tat;
            }
            let then = t0 - back;
            let c = decide(tat, then, &limit, 1);
            if tat > then + limit.capacity() {
                prop_assert_eq!(c, decide(0, then, &limit, 1));
            } else {
                prop_assert_eq!(c, decide(tat, then, &limit, 1));
            }
            prop_assert!(c.retry_after <= limit.capacity());
            prop_assert!(c.reset <= limit.capacity());
            // Admitted at `then` only if it would be with the same budget state.
            let mut admitted = 0;
            let mut t = tat;
            while admitted <= burst {
                let c = decide(t, then, &limit, 1);
                if !c.allowed { break; }
                t = c.tat;
                admitted += 1;
            }
            prop_assert!(admitted <= burst);
        }

        /// Stacked: admitted iff every single limit admits; a denial changes no TAT.
        #[test]
        fn stacked_is_conjunction(
            a in 1u64..1_000_000_000, ba in 1u64..20,
            b in 1u64..1_000_000_000, bb in 1u64..20,
            gaps in proptest::collection::vec((0u64..500_000_000, 1u64..4), 1..100),
        ) {
            let limits = [Limit::from_interval(a, ba).unwrap(), Limit::from_interval(b, bb).unwrap()];
            let mut now = 1_700_000_000 * SEC;
            let mut tats = [0u64; 2];
            for (gap, cost) in gaps {
                now += gap;
                let d = decide_all(&tats, now, &limits, cost);
                let singles = [decide(tats[0], now, &limits[0], cost), decide(tats[1], now, &limits[1], cost)];
                prop_assert_eq!(d.allowed(), singles[0].allowed && singles[1].allowed);
                if d.allowed() {
                    prop_assert_eq!(d.cells(), &singles[..]);
                } else {
                    prop_assert_eq!(d.tats().collect::<Vec<_>>(), tats.to_vec());
                    prop_assert!(d.retry_after() > 0);
                }
                for (t, new) in tats.iter_mut().zip(d.tats()) {
                    *t = new;
                }
                prop_assert!(d.ttl().as_nanos() as u64 <= limits[0].capacity().max(limits[1].capacity()));
            }
        }
    }
}
