//! A flood of 1,000,000 distinct keys against the bounded in-process store.

use std::time::{Duration, Instant};

use tollgate_core::{KeyedDigest, Timestamp};
use tollgate_ratelimit::gcra;
use tollgate_ratelimit::{Limit, MemoryRateLimitStore, RateLimitKey};
use tollgate_test_support::START;

fn key(i: u64, salt: u64) -> RateLimitKey {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 32];
    for (n, word) in [salt, i].into_iter().enumerate() {
        for d in 0..16 {
            hex[n * 16 + d] = DIGITS[((word >> (60 - 4 * d)) & 0xf) as usize];
        }
    }
    RateLimitKey::new(KeyedDigest::from_hex(std::str::from_utf8(&hex).unwrap()).unwrap())
}

#[test]
fn a_million_distinct_keys_stay_under_the_cap_and_legitimate_keys_keep_their_state() {
    const CAP: u64 = 50_000;
    const LEGIT: u64 = 500;
    const FLOOD: u64 = 1_000_000;
    let store = MemoryRateLimitStore::new(CAP);
    let limits = [Limit::new(10, Duration::from_secs(1), 20).unwrap()];
    let t0 = START;

    // Legitimate keys spend 10 of their 20 each.
    for i in 0..LEGIT {
        for _ in 0..10 {
            assert!(store.decide(&key(i, 1), &limits, 1, t0).allowed());
        }
    }
    let expected_tat = t0.as_nanos() + 1_000_000_000;

    // The flood: a million one-request keys, all at the same instant, so no flood
    // entry has expired when the next arrives (the hardest case for the cap).
    let started = Instant::now();
    for i in 0..FLOOD {
        store.decide(&key(i, 2), &limits, 1, t0);
    }
    let took = started.elapsed();
    assert!(store.entry_count() <= CAP, "{} entries", store.entry_count());
    assert!(
        store.entry_count() > CAP * 9 / 10,
        "the store was used: {}",
        store.entry_count()
    );

    let mut kept = 0;
    for i in 0..LEGIT {
        if store.tats(&key(i, 1), t0).map(|t| t[0]) == Some(expected_tat) {
            kept += 1;
        }
    }
    assert_eq!(
        kept, LEGIT,
        "legitimate keys lost their state (flood took {took:?})"
    );

    // And the state still limits: each legitimate key has exactly 10 left.
    for i in 0..LEGIT {
        let d = store.decide(&key(i, 1), &limits, 0, t0);
        assert_eq!(d.cells()[0].remaining, 10);
        let next = gcra::decide(d.cells()[0].tat, t0.as_nanos(), &limits[0], 11);
        assert!(!next.allowed);
    }

    // Later, as time passes, expired flood entries are swept on writes.
    let later = Timestamp::from_nanos(t0.as_nanos() + 5_000_000_000);
    for i in 0..CAP * 2 {
        store.decide(&key(i, 3), &limits, 1, later);
    }
    store.purge_expired(Timestamp::from_nanos(later.as_nanos() + 1_000_000_000));
    assert_eq!(
        store.entry_count(),
        0,
        "everything expired one interval after the last request"
    );
}
