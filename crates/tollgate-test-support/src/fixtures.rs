//! A pseudonymizer under a fixed secret, a fake clock at a fixed instant, unique names.

use std::sync::Arc;
use std::time::Duration;

use tollgate_core::{FakeClock, PseudonymSecret, Pseudonymizer, Timestamp};

/// The pseudonym secret of [`pseudonymizer`] (test-only, never a real key).
pub const PSEUDONYM_SECRET: [u8; 32] = [42; 32];

/// The pseudonym rotation period of [`pseudonymizer`]: one day.
pub const PSEUDONYM_EPOCH: Duration = Duration::from_secs(86_400);

/// Where [`clock`] starts: 2023-11-14T22:13:20Z (Unix second 1 700 000 000).
pub const START: Timestamp = Timestamp::from_secs(1_700_000_000);

/// A fake clock showing [`START`]; tests move it with `advance`.
pub fn clock() -> FakeClock {
    FakeClock::new(START)
}

/// A pseudonymizer under [`PSEUDONYM_SECRET`], rotating every [`PSEUDONYM_EPOCH`] on the
/// system clock.
///
/// ```
/// use tollgate_core::pseudonym::Domain;
///
/// let p = tollgate_test_support::pseudonymizer();
/// let q = tollgate_test_support::pseudonymizer();
/// assert_eq!(p.digest(Domain::SUBJECT, b"alice"), q.digest(Domain::SUBJECT, b"alice"));
/// ```
pub fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(secret(), PSEUDONYM_EPOCH)
}

/// [`pseudonymizer`] on `clock` (sharing its time), so rotation follows the test's clock.
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::pseudonym::Domain;
///
/// let clock = tollgate_test_support::clock();
/// let p = tollgate_test_support::pseudonymizer_with_clock(&clock);
/// let today = p.pseudonym(Domain::SUBJECT, b"alice");
/// clock.advance(Duration::from_secs(86_400));
/// assert_ne!(p.pseudonym(Domain::SUBJECT, b"alice"), today);
/// ```
pub fn pseudonymizer_with_clock(clock: &FakeClock) -> Pseudonymizer {
    Pseudonymizer::with_clock(secret(), PSEUDONYM_EPOCH, Arc::new(clock.clone()))
}

fn secret() -> PseudonymSecret {
    PseudonymSecret::from_bytes(&PSEUDONYM_SECRET).expect("32 bytes")
}

/// A random name for one test's keys or files: `t` and 16 lowercase hex digits, so
/// tests running at once (or against one Redis) never share state.
pub fn random_namespace() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source answers");
    format!("t{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::Clock;

    #[test]
    fn namespaces_are_unique_and_shaped() {
        let a = random_namespace();
        let b = random_namespace();
        assert_ne!(a, b);
        assert_eq!(a.len(), 17);
        assert!(a.starts_with('t'));
        assert!(
            a[1..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn the_clock_starts_at_start() {
        assert_eq!(clock().now(), START);
    }
}
