//! Privacy canaries: well-known identifiers a test sends through a layer, and the check
//! that none of them comes out in logs, span fields, headers, bodies or store keys.
//!
//! Each value is distinctive, so finding it (or one of its [`FRAGMENTS`]) anywhere is a
//! leak and never a coincidence. The addresses are from the documentation ranges of
//! RFC 5737.
//!
//! ```
//! use tollgate_test_support::canary;
//!
//! let logged = r#"{"span":{"client.network":"3f2a9c0b5d7e1f4a6b8c0d2e"}}"#;
//! canary::assert_absent("the log output", logged, canary::FRAGMENTS);
//! canary::assert_absent("the log output", logged, [format!("{}-extra", canary::JTI)]);
//! ```

/// The client's address.
pub const IP: &str = "203.0.113.77";

/// A second network the same client moves to (the session layers notice).
pub const OTHER_IP: &str = "198.51.100.23";

/// The client's user agent.
pub const USER_AGENT: &str = "CanaryBrowser/9.9 (canary-ua-7731; X11)";

/// The authenticated subject (an email address, the worst case).
pub const SUBJECT: &str = "alice.canary@example.com";

/// A token identifier (`jti`).
pub const JTI: &str = "canary-jti-424242";

/// An email address sent in a query string.
pub const EMAIL: &str = "canary.query@example.com";

/// Every value above and the distinctive pieces of each: the address prefixes (a
/// coarsened network written in the clear is still a leak), the user agent's product
/// and comment, the local parts of the addresses.
pub const FRAGMENTS: &[&str] = &[
    IP,
    "203.0.113.",
    OTHER_IP,
    "198.51.100.",
    USER_AGENT,
    "CanaryBrowser",
    "canary-ua-7731",
    SUBJECT,
    "alice.canary",
    JTI,
    EMAIL,
    "canary.query",
];

/// Fails the test if `haystack` contains any of `needles`; `what` names the haystack
/// in the message ("the log output", "the Redis keys and values"). The message names
/// the canary, not the haystack, so a failure does not print a secret twice.
///
/// # Panics
/// On the first needle found.
pub fn assert_absent<I>(what: &str, haystack: &str, needles: I)
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    for needle in needles {
        let needle = needle.as_ref();
        assert!(!haystack.contains(needle), "{what} carries the canary {needle:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_a_fragment() {
        for value in [IP, OTHER_IP, USER_AGENT, SUBJECT, JTI, EMAIL] {
            assert!(FRAGMENTS.contains(&value), "{value}");
        }
    }

    #[test]
    #[should_panic(expected = "the log output carries the canary \"alice.canary\"")]
    fn a_fragment_is_found() {
        assert_absent("the log output", "user=alice.canary", FRAGMENTS);
    }

    #[test]
    fn owned_needles_work_too() {
        assert_absent("the logs", "nothing here", vec![String::from("token-part")]);
    }
}
