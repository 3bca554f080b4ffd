//! The coarsened request traits a fingerprint is made of.
//!
//! Each trait is reduced to a low-entropy value and written, tagged, into a small stack
//! buffer that only ever goes into a keyed hash. Nothing here is kept or logged.

use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderMap;
use http::header::{ACCEPT_LANGUAGE, USER_AGENT};
use tollgate_core::{NetworkPrefix, Timestamp, UserAgentFamily};

use crate::config::Dimensions;
use crate::local_hash::LocalHasher;

/// The bytes a fingerprint is hashed from: tagged, length-prefixed fields on the stack.
pub(crate) struct FingerprintInput {
    buf: [u8; 160],
    len: usize,
}

impl FingerprintInput {
    fn new() -> Self {
        FingerprintInput {
            buf: [0; 160],
            len: 0,
        }
    }

    /// Appends `tag`, the length and the bytes, truncated to 64 bytes (the
    /// buffer holds four full fields).
    fn push(&mut self, tag: u8, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(64)];
        let end = self.len + 2 + bytes.len();
        if end > self.buf.len() {
            return;
        }
        self.buf[self.len] = tag;
        self.buf[self.len + 1] = bytes.len() as u8;
        self.buf[self.len + 2..end].copy_from_slice(bytes);
        self.len = end;
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Parsed user-agent families in a fixed array of slots, indexed and tagged by a
/// hash of the header under a random per-process key (the raw header is never kept).
/// Reads are lock-free; a slot is overwritten by the next user agent that hashes to
/// it, and an entry older than [`USER_AGENT_CACHE_TTL`] is parsed again.
#[derive(Clone)]
pub(crate) struct UserAgentCache {
    slots: Arc<[ArcSwapOption<UaEntry>]>,
    hasher: LocalHasher,
}

struct UaEntry {
    key: u64,
    inserted: Timestamp,
    family: UserAgentFamily,
}

/// How long a parsed user-agent family is cached.
pub(crate) const USER_AGENT_CACHE_TTL: Duration = Duration::from_secs(3_600);

/// The most slots the cache has, whatever the configuration asks.
const MAX_UA_SLOTS: u64 = 1 << 16;

impl UserAgentCache {
    /// A cache of about `entries` slots (rounded up to a power of two, at most 65 536);
    /// 0 parses every request.
    pub(crate) fn new(entries: u64) -> Self {
        let n = if entries == 0 {
            0
        } else {
            entries.min(MAX_UA_SLOTS).next_power_of_two() as usize
        };
        UserAgentCache {
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
            hasher: LocalHasher::default(),
        }
    }

    /// Calls `f` with the family of the request's user agent: `other` unless there is
    /// exactly one `User-Agent` header and it is text (as [`UserAgentFamily::from_headers`]).
    pub(crate) fn with_family<R>(
        &self,
        headers: &HeaderMap,
        now: Timestamp,
        f: impl FnOnce(&UserAgentFamily) -> R,
    ) -> R {
        let mut values = headers.get_all(USER_AGENT).iter();
        let text = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        };
        let Some(text) = text else {
            return f(&UserAgentFamily::other());
        };
        if self.slots.is_empty() {
            return f(&UserAgentFamily::parse(text));
        }
        let key = self.hasher.hash(text.as_bytes());
        let slot = &self.slots[key as usize & (self.slots.len() - 1)];
        {
            let current = slot.load();
            if let Some(entry) = current.as_deref()
                && entry.key == key
                && now.saturating_since(entry.inserted) < USER_AGENT_CACHE_TTL
            {
                return f(&entry.family);
            }
        }
        let entry = Arc::new(UaEntry {
            key,
            inserted: now,
            family: UserAgentFamily::parse(text),
        });
        slot.store(Some(entry.clone()));
        f(&entry.family)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.load().is_some()).count()
    }
}

const TAG_NETWORK: u8 = 1;
const TAG_USER_AGENT: u8 = 2;
const TAG_LANGUAGE: u8 = 3;
const TAG_MOBILE: u8 = 4;
const TAG_PLATFORM: u8 = 5;

/// The fingerprint input of a request over the enabled dimensions.
pub(crate) fn fingerprint_input(
    dims: Dimensions,
    network: Option<NetworkPrefix>,
    headers: &HeaderMap,
    user_agents: &UserAgentCache,
    now: Timestamp,
) -> FingerprintInput {
    let mut input = FingerprintInput::new();
    push_traits(&mut input, dims, network, headers, |input| {
        user_agents.with_family(headers, now, |family| {
            let mut ua = [0u8; 69];
            let name = family.family().as_bytes();
            let name = &name[..name.len().min(64)];
            ua[..name.len()].copy_from_slice(name);
            ua[name.len()] = b'/';
            let major = family.major().unwrap_or(u32::MAX).to_be_bytes();
            ua[name.len() + 1..name.len() + 5].copy_from_slice(&major);
            input.push(TAG_USER_AGENT, &ua[..name.len() + 5]);
        });
    });
    input
}

/// Pushes the enabled traits in input order; `user_agent` pushes the user agent's.
fn push_traits(
    input: &mut FingerprintInput,
    dims: Dimensions,
    network: Option<NetworkPrefix>,
    headers: &HeaderMap,
    user_agent: impl FnOnce(&mut FingerprintInput),
) {
    if dims.network {
        match network {
            Some(net) => {
                let (bytes, len) = net.to_bytes();
                input.push(TAG_NETWORK, &bytes[..len]);
            }
            None => input.push(TAG_NETWORK, b""),
        }
    }
    if dims.user_agent {
        user_agent(input);
    }
    if dims.accept_language {
        let mut tag = [0u8; 8];
        let len = primary_language(headers, &mut tag);
        input.push(TAG_LANGUAGE, &tag[..len]);
    }
    if dims.client_hints {
        input.push(TAG_MOBILE, mobile_hint(headers));
        let mut platform = [0u8; 32];
        let len = platform_hint(headers, &mut platform);
        input.push(TAG_PLATFORM, &platform[..len]);
    }
}

/// A local hash that tells fingerprint inputs apart without computing them: the
/// input's traits other than the user agent, then the raw `User-Agent` text (when
/// there is exactly one, as text) instead of its parsed family. Equal keys mean equal
/// inputs (the family is a function of the text), so a session whose key has not
/// changed reuses its fingerprint without parsing or looking up its user agent.
/// Only ever compared in memory, never kept past the process.
pub(crate) fn input_key(
    dims: Dimensions,
    network: Option<NetworkPrefix>,
    headers: &HeaderMap,
    hasher: &LocalHasher,
) -> u64 {
    let others = Dimensions {
        user_agent: false,
        ..dims
    };
    let mut input = FingerprintInput::new();
    push_traits(&mut input, others, network, headers, |_| {});
    let mut h = hasher.hasher();
    h.write(input.as_bytes());
    if dims.user_agent {
        let mut values = headers.get_all(USER_AGENT).iter();
        match (values.next(), values.next()) {
            (Some(v), None) if v.to_str().is_ok() => {
                h.write_u8(1);
                h.write(v.as_bytes());
            }
            _ => h.write_u8(0),
        }
    }
    h.finish()
}

/// The header's value: `None` when absent, `Some(None)` when repeated.
fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<Option<&'a [u8]>> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => Some(Some(v.as_bytes())),
        (Some(_), Some(_)) => Some(None),
    }
}

/// The primary subtag of the first `Accept-Language` range, lowercased (`en` from
/// `en-GB;q=0.9`), `*`, or `?` when absent or malformed. Returns the length written.
fn primary_language(headers: &HeaderMap, out: &mut [u8; 8]) -> usize {
    let Some(value) = headers.get(ACCEPT_LANGUAGE).map(|v| v.as_bytes()) else {
        out[0] = b'-';
        return 1;
    };
    let first = value.split(|&b| b == b',' || b == b';').next().unwrap_or(b"");
    let first = first.trim_ascii();
    let primary = first.split(|&b| b == b'-' || b == b'_').next().unwrap_or(b"");
    if primary == b"*" {
        out[0] = b'*';
        return 1;
    }
    if primary.is_empty() || primary.len() > 8 || !primary.iter().all(u8::is_ascii_alphabetic) {
        out[0] = b'?';
        return 1;
    }
    for (o, b) in out.iter_mut().zip(primary) {
        *o = b.to_ascii_lowercase();
    }
    primary.len()
}

/// `Sec-CH-UA-Mobile`: `1`, `0`, `-` when absent, `?` when malformed.
fn mobile_hint(headers: &HeaderMap) -> &'static [u8] {
    match single_header(headers, "sec-ch-ua-mobile").map(|v| v.map(<[u8]>::trim_ascii)) {
        None => b"-",
        Some(Some(b"?1")) => b"1",
        Some(Some(b"?0")) => b"0",
        Some(_) => b"?",
    }
}

/// `Sec-CH-UA-Platform` (`"Windows"`), unquoted and lowercased; `-` when absent, `?`
/// when long or not a plain name. Returns the length written.
fn platform_hint(headers: &HeaderMap, out: &mut [u8; 32]) -> usize {
    let value = match single_header(headers, "sec-ch-ua-platform") {
        None => {
            out[0] = b'-';
            return 1;
        }
        Some(value) => value.unwrap_or(b"").trim_ascii(),
    };
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    let plain = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b' ' | b'-' | b'_' | b'.');
    if value.is_empty() || value.len() > out.len() || !value.iter().all(plain) {
        out[0] = b'?';
        return 1;
    }
    for (o, b) in out.iter_mut().zip(value) {
        *o = b.to_ascii_lowercase();
    }
    value.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.parse::<http::HeaderName>().unwrap(), v.parse().unwrap());
        }
        h
    }

    const ALL: Dimensions = Dimensions {
        network: true,
        user_agent: true,
        accept_language: true,
        client_hints: true,
    };

    fn input(pairs: &[(&str, &str)]) -> Vec<u8> {
        fingerprint_input(
            ALL,
            None,
            &headers(pairs),
            &UserAgentCache::new(10),
            Timestamp::ZERO,
        )
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn languages_coarsen_to_the_primary_subtag() {
        let mut out = [0u8; 8];
        let cases = [
            ("en-GB,en;q=0.9", "en"),
            ("DE-de", "de"),
            ("  fr ; q=0.5", "fr"),
            ("*", "*"),
            ("x-klingon-1234", "x"),
            ("12-34", "?"),
            ("averyveryverylongtag", "?"),
            ("", "?"),
        ];
        for (header, want) in cases {
            let len = primary_language(&headers(&[("accept-language", header)]), &mut out);
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), want, "{header:?}");
        }
        assert_eq!(primary_language(&HeaderMap::new(), &mut out), 1);
        assert_eq!(out[0], b'-');
    }

    #[test]
    fn client_hints_are_low_entropy() {
        let mut out = [0u8; 32];
        let len = platform_hint(&headers(&[("sec-ch-ua-platform", "\"Windows\"")]), &mut out);
        assert_eq!(&out[..len], b"windows");
        let len = platform_hint(&headers(&[("sec-ch-ua-platform", "\"<script>\"")]), &mut out);
        assert_eq!(&out[..len], b"?");
        let long = "\"".to_string() + &"a".repeat(40) + "\"";
        let len = platform_hint(&headers(&[("sec-ch-ua-platform", &long)]), &mut out);
        assert_eq!(&out[..len], b"?");
        assert_eq!(mobile_hint(&headers(&[("sec-ch-ua-mobile", "?1")])), b"1");
        assert_eq!(mobile_hint(&headers(&[("sec-ch-ua-mobile", "yes")])), b"?");
        assert_eq!(
            mobile_hint(&headers(&[
                ("sec-ch-ua-mobile", "?1"),
                ("sec-ch-ua-mobile", "?0")
            ])),
            b"?"
        );
    }

    #[test]
    fn equal_input_keys_mean_equal_inputs() {
        let hasher = LocalHasher::default();
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";
        let chrome_next = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/132.0.6778.85 Safari/537.36";
        let net = |ip: &str| Some(tollgate_core::Coarsening::default().network(ip.parse().unwrap()));
        type Headers<'a> = Vec<(&'a str, &'a str)>;
        let requests: Vec<(Option<NetworkPrefix>, Headers)> = vec![
            (net("198.51.100.7"), vec![("user-agent", chrome)]),
            (net("198.51.100.8"), vec![("user-agent", chrome)]),
            (net("203.0.113.9"), vec![("user-agent", chrome)]),
            (None, vec![("user-agent", chrome)]),
            (net("198.51.100.7"), vec![("user-agent", chrome_next)]),
            (net("198.51.100.7"), vec![]),
            (
                net("198.51.100.7"),
                vec![("user-agent", chrome), ("user-agent", chrome)],
            ),
            (
                net("198.51.100.7"),
                vec![("user-agent", chrome), ("accept-language", "de")],
            ),
            (
                net("198.51.100.7"),
                vec![("user-agent", chrome), ("sec-ch-ua-mobile", "?1")],
            ),
        ];
        for dims in [ALL, Dimensions::default()] {
            let cache = UserAgentCache::new(10);
            let seen: Vec<(u64, Vec<u8>)> = requests
                .iter()
                .map(|(network, pairs)| {
                    let h = headers(pairs);
                    let key = input_key(dims, *network, &h, &hasher);
                    assert_eq!(key, input_key(dims, *network, &h, &hasher), "stable");
                    let input = fingerprint_input(dims, *network, &h, &cache, Timestamp::ZERO);
                    (key, input.as_bytes().to_vec())
                })
                .collect();
            for (i, a) in seen.iter().enumerate() {
                for b in &seen[i + 1..] {
                    if a.0 == b.0 {
                        assert_eq!(a.1, b.1, "equal keys, different inputs");
                    }
                    if a.1 != b.1 {
                        assert_ne!(a.0, b.0);
                    }
                }
            }
            // Only the coarsened, enabled traits count: one /24, and no user agent
            // like two of them; language and hints only when enabled.
            let distinct = seen
                .iter()
                .map(|s| s.0)
                .collect::<std::collections::HashSet<_>>()
                .len();
            assert_eq!(distinct, if dims.accept_language { 7 } else { 5 }, "{dims:?}");
        }
    }

    #[test]
    fn same_coarse_traits_same_input() {
        let chrome_a = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";
        let chrome_b = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.1.2 Safari/537.36";
        let chrome_next = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/132.0.1.2 Safari/537.36";
        let a = input(&[("user-agent", chrome_a), ("accept-language", "en-US")]);
        let b = input(&[("user-agent", chrome_b), ("accept-language", "en-GB;q=0.8")]);
        let c = input(&[("user-agent", chrome_next), ("accept-language", "en-US")]);
        let d = input(&[("user-agent", chrome_a), ("accept-language", "de")]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        // The raw header is not in the input.
        assert!(!a.windows(6).any(|w| w == b"Mozill"));
    }

    #[test]
    fn hostile_headers_fit_the_buffer() {
        let long = "A".repeat(8_000);
        let bytes = input(&[
            ("user-agent", &long),
            ("accept-language", &long),
            ("sec-ch-ua-platform", &long),
            ("sec-ch-ua-mobile", &long),
        ]);
        assert!(bytes.len() <= 160);
        let mut input = FingerprintInput::new();
        for _ in 0..10 {
            input.push(9, &[7; 200]);
        }
        assert!(input.as_bytes().len() <= 160);
    }

    #[test]
    fn user_agent_cache_is_bounded_and_keyed() {
        let cache = UserAgentCache::new(50);
        let t = Timestamp::from_secs(10_000);
        let name = |h: &HeaderMap, t| cache.with_family(h, t, |f| f.to_string());
        for i in 0..2_000 {
            name(&headers(&[("user-agent", &format!("Client/{i}"))]), t);
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        let firefox = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";
        let (ff, ch) = (
            headers(&[("user-agent", firefox)]),
            headers(&[("user-agent", chrome)]),
        );
        for _ in 0..3 {
            assert_eq!(name(&ff, t), "Firefox 133");
            assert_eq!(name(&ch, t), "Chrome 131");
        }
        // Stale entries are parsed again, with the same answer.
        assert_eq!(name(&ff, Timestamp::from_secs(20_000)), "Firefox 133");
        let uncached = UserAgentCache::new(0);
        assert_eq!(uncached.with_family(&ff, t, |f| f.to_string()), "Firefox 133");
        assert_eq!(uncached.len(), 0);
        // A single slot: two user agents take turns, answers stay right.
        let tiny = UserAgentCache::new(1);
        for _ in 0..3 {
            assert_eq!(tiny.with_family(&ff, t, |f| f.to_string()), "Firefox 133");
            assert_eq!(tiny.with_family(&ch, t, |f| f.to_string()), "Chrome 131");
        }
    }
}
