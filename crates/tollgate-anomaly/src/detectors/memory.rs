//! Memory stays bounded under 1,000,000 distinct keys, driving the detectors directly.

use super::{EnumerationDetector, SequenceDetector, StuffingDetector, VolumeDetector};
use crate::config::{EnumerationConfig, SequenceConfig, StuffingConfig, VolumeConfig};

const KEYS: u64 = 1_000_000;
const MS: u64 = 1_000_000;

/// A keyed-hash stand-in: distinct, uniform 64-bit keys.
fn key(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[test]
fn a_million_distinct_keys_stay_under_the_caps() {
    let volume = VolumeDetector::new(&VolumeConfig {
        max_entries: 50_000,
        ..VolumeConfig::default()
    });
    let stuffing = StuffingDetector::new(&StuffingConfig {
        max_entries: 20_000,
        max_accounts: 20_000,
        ..StuffingConfig::default()
    });
    let enumeration = EnumerationDetector::new(&EnumerationConfig {
        max_entries: 50_000,
        ..EnumerationConfig::default()
    });
    let sequence = SequenceDetector::new(&SequenceConfig {
        max_entries: 50_000,
        ..SequenceConfig::default()
    });
    // A hot principal that keeps coming back must keep its state through the flood.
    let hot = key(u64::MAX);
    for i in 0..KEYS {
        let now = i * MS; // 1,000 new keys a second, for 1,000 seconds
        let k = key(i);
        volume.observe(k, 120, now);
        stuffing.record_failure(k, Some(k), now);
        enumeration.observe_request(k, 0, [key(i + 1)], now);
        sequence.observe(k, (i % 8) as u8, now);
        if i % 100 == 0 {
            volume.observe(hot, 1_000_000, now);
        }
        if i % 100_000 == 0 {
            assert!(volume.len() <= volume.capacity());
            assert!(enumeration.len() <= enumeration.capacity());
        }
    }
    assert!(
        volume.capacity() <= 50_000 && volume.len() <= volume.capacity(),
        "{}",
        volume.len()
    );
    assert!(stuffing.capacity() <= 20_000 && stuffing.len() <= stuffing.capacity());
    let accounts = stuffing.accounts();
    assert!(accounts.capacity() <= 20_000 && accounts.len() == accounts.capacity());
    assert!(enumeration.capacity() <= 50_000 && enumeration.len() <= enumeration.capacity());
    assert!(sequence.capacity() <= 50_000 && sequence.len() <= sequence.capacity());
    // Full, not leaking: exactly at the cap.
    assert_eq!(volume.len(), volume.capacity());
    // The hot key survived 1,000,000 one-off keys: its baseline is still known.
    assert!(volume.baseline(hot, KEYS * MS).is_some());
}
