//! W3C Trace Context trace ids: accepted from a valid `traceparent`, else made fresh.

use std::cell::Cell;
use std::fmt;

use http::{HeaderMap, HeaderName};

use crate::pseudonym::HexBuf;

/// The W3C Trace Context request header (a constant: a name given as text is
/// parsed on every lookup).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A W3C trace id (16 bytes, not all zero). Carried in the request (read it with
/// [`CarryExt::carried`](crate::CarryExt::carried)) so handlers can correlate their
/// own events with the request's log line.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// The trace id of a valid `traceparent` header (version `00`-`fe`, lowercase
    /// hex, non-zero trace and parent ids), or a fresh random one.
    pub fn from_headers_or_new(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(TRACEPARENT).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Self::from_traceparent(v.as_bytes()).unwrap_or_else(TraceId::random),
            _ => TraceId::random(),
        }
    }

    /// The trace id of a valid `traceparent` value,
    /// `version-traceid-parentid-flags`, e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    pub fn from_traceparent(v: &[u8]) -> Option<TraceId> {
        if v.len() < 55 {
            return None;
        }
        let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let lower_hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !(lower_hex(version) && lower_hex(trace) && lower_hex(parent) && lower_hex(flags)) {
            return None;
        }
        // Version ff is forbidden; version 00 has exactly 55 bytes, later ones may extend.
        if version == b"ff" || (version == b"00" && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        if parent.iter().all(|b| *b == b'0') {
            return None;
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(trace, &mut bytes).ok()?;
        (bytes != [0; 16]).then_some(TraceId(bytes))
    }

    /// A fresh random trace id.
    pub fn random() -> Self {
        let hi = next_random();
        let lo = next_random();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&hi.to_be_bytes());
        bytes[8..].copy_from_slice(&lo.to_be_bytes());
        // All-zero is invalid; the chance is 2^-128, but the spec is absolute.
        if bytes == [0; 16] {
            bytes[15] = 1;
        }
        TraceId(bytes)
    }

    /// The id as 32 lowercase hex digits, on the stack.
    pub fn to_hex(&self) -> TraceIdHex {
        HexBuf::encode(&self.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_hex().as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// A trace id's hex text.
pub type TraceIdHex = HexBuf<32>;

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // A failed OS random source still yields distinct per-thread streams from the
    // thread's stack address; trace ids need uniqueness, not secrecy.
    if getrandom::fill(&mut bytes).is_err() {
        let local = 0u8;
        return &local as *const u8 as u64 ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_le_bytes(bytes)
}

/// SplitMix64: fast, per-thread, good enough for unique ids (not for secrets).
fn next_random() -> u64 {
    RNG.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", v.parse().unwrap());
        h
    }

    #[test]
    fn accepts_a_valid_traceparent() {
        let h = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            TraceId::from_headers_or_new(&h).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn replaces_invalid_ones() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let id = TraceId::from_headers_or_new(&headers(bad));
            assert_ne!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_ne!(id.to_string(), "0".repeat(32));
        }
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(TraceId::random(), TraceId::random());
    }
}
