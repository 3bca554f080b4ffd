//! The Redis script decides exactly as the in-process GCRA (`gcra::decide_all`, the
//! function the in-process store uses) on the same arrivals.

mod common;

use std::time::Duration;

use common::TestRedis;
use proptest::prelude::*;
use tollgate_core::{Domain, SystemClock, Timestamp, clock::Clock};
use tollgate_ratelimit::gcra::{self, Cell, Decision, Limit};
use tollgate_ratelimit::{RateLimitKey, RateLimitStore};
use tollgate_redis::{RateLimitClock, RedisRateLimitStore};

/// A decision's observable content; a denied cell's stored TAT at or before `now` is
/// the same state as no state (Redis may have expired the key a moment earlier).
fn observable(d: &Decision) -> (bool, u64, Vec<Cell>) {
    let now = d.now();
    let cells = d
        .cells()
        .iter()
        .map(|c| Cell {
            tat: c.tat.max(now),
            ..*c
        })
        .collect();
    (d.allowed(), now, cells)
}

/// The model: the in-process GCRA over TATs kept here, as the store contract says.
struct Model {
    tats: Vec<u64>,
}

impl Model {
    fn decide(&mut self, now: u64, limits: &[Limit], cost: u64) -> Decision {
        let d = gcra::decide_all(&self.tats, now, limits, cost);
        if d.allowed() {
            self.tats = if d.ttl().is_zero() {
                vec![0; limits.len()]
            } else {
                d.tats().collect()
            };
        }
        d
    }
}

fn key(t: &TestRedis, case: u64) -> RateLimitKey {
    let p = tollgate_test_support::pseudonymizer();
    let mut id = t.namespace.clone().into_bytes();
    id.extend_from_slice(&case.to_be_bytes());
    RateLimitKey::new(p.digest(Domain::SUBJECT, &id))
}

fn limit_strategy() -> impl Strategy<Value = Limit> {
    // Intervals of 10 us to 5 ms with arbitrary nanoseconds, so real arrivals a few
    // hundred microseconds apart refill budgets partly and the two-limb arithmetic
    // carries.
    (10_000u64..5_000_000, 1u64..20)
        .prop_map(|(interval, burst)| Limit::from_interval(interval, burst).unwrap())
}

/// On Redis `TIME` (the production path): each decision is compared with the model at
/// the time the script reports.
#[test]
fn redis_script_matches_in_process_gcra() {
    let Some(t) = TestRedis::new() else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async { RedisRateLimitStore::new(&t.backend()) });
    let raw = std::cell::RefCell::new(t.connection());
    let case = std::cell::Cell::new(0u64);
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        limits in proptest::collection::vec(limit_strategy(), 1..=4),
        arrivals in proptest::collection::vec((0u64..6, prop_oneof![3 => Just(0u64), 1 => 0u64..3_000]), 1..60),
    )| {
        case.set(case.get() + 1);
        let key = key(&t, case.get());
        let mut model = Model { tats: vec![0; limits.len()] };
        let mut last = None;
        for (cost, pause_us) in arrivals {
            if pause_us > 0 {
                std::thread::sleep(Duration::from_micros(pause_us));
            }
            let got = rt
                .block_on(store.check_and_spend(&key, &limits, cost, SystemClock.now()))
                .unwrap();
            let want = model.decide(got.now(), &limits, cost);
            prop_assert_eq!(observable(&got), observable(&want), "cost {}", cost);
            last = Some(got);
        }
        // The key lives exactly until every budget is full again (to the millisecond).
        let last = last.unwrap();
        let far = model.tats.iter().copied().max().unwrap_or(0);
        let pttl: i64 = redis::cmd("PTTL").arg(store.backend().key_of(&key.store_key())).query(&mut *raw.borrow_mut()).unwrap();
        if far <= last.now() {
            prop_assert!(pttl == -2 || !last.allowed(), "pttl {}", pttl);
        } else if last.allowed() {
            let expected = (far - last.now()).div_ceil(1_000_000) as i64;
            prop_assert!(pttl <= expected && pttl >= expected - 50, "pttl {} expected {}", pttl, expected);
        }
    });
    assert_eq!(store.backend().stats().fail_open, 0);
}

/// On the caller's clock: large windows and far timestamps (2023 and 2200), where
/// nanosecond times exceed 2^53 and only the two-limb arithmetic stays exact.
#[test]
fn caller_clock_matches_in_process_gcra_at_far_times() {
    let Some(t) = TestRedis::new() else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store =
        rt.block_on(async { RedisRateLimitStore::new(&t.backend()).with_clock(RateLimitClock::Caller) });
    let limits = [
        Limit::new(10, Duration::from_secs(1), 20).unwrap(),
        Limit::new(1_000, Duration::from_secs(3_600), 1_000).unwrap(),
        Limit::new(7, Duration::from_secs(86_400), 7).unwrap(),
        Limit::from_interval(30 * 86_400_000_000_000 / 1_000 + 123_456_789, 1_000).unwrap(),
    ];
    let day = 86_400_000_000_000u64;
    // Within an instant, jumps of at least every capacity (a full refill), and the
    // clock going back by days (the stored TATs then lie far in the future).
    let mut case = 1_000;
    for start in [1_700_000_000_123_456_789u64, 7_258_118_400_987_654_321] {
        for stack in 1..=limits.len() {
            case += 1;
            let key = key(&t, case);
            let limits = &limits[..stack];
            let mut model = Model { tats: vec![0; stack] };
            let mut now = start;
            for step in 0..40u64 {
                if step % 13 == 12 {
                    now += 40 * day + step;
                }
                if step % 13 == 6 {
                    now -= 3 * day + step;
                }
                let cost = [1, 0, 2, 1, 5, 1, 30][(step % 7) as usize];
                let got = rt
                    .block_on(store.check_and_spend(&key, limits, cost, Timestamp::from_nanos(now)))
                    .unwrap();
                assert_eq!(got.now(), now);
                let want = model.decide(now, limits, cost);
                assert_eq!(
                    observable(&got),
                    observable(&want),
                    "start {start} stack {stack} step {step}"
                );
            }
        }
    }
}
