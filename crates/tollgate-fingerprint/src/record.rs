//! The per-session record and the signals read from it.

use std::time::Duration;

use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use tollgate_core::clock::duration_nanos;
use tollgate_core::{SessionHealth, SessionReason, SessionReasons, Timestamp};

/// How many recent fingerprints a record keeps.
pub const MAX_FINGERPRINTS: usize = 4;
/// How many recent network prefixes a record keeps.
pub const MAX_NETWORKS: usize = 4;

/// A network prefix seen by a session: a 64-bit keyed hash of the coarsened prefix
/// and the second it was last seen.
///
/// Seconds, not minutes, because concurrent use from two prefixes is judged over a
/// window of seconds; this is the one time in the record kept finer than a minute,
/// and it lives no longer than the record (the session TTL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct NetworkSeen {
    /// Keyed hash of the coarsened prefix (never the prefix); 0 marks an empty slot.
    pub hash: u64,
    /// When it was last seen, in whole seconds since the Unix epoch.
    pub last_seen_secs: u64,
}

/// What the layer remembers about one session, under
/// `tollgate:session:{digest of the credential}`.
///
/// Small and fixed-size (no heap): times at minute resolution (except
/// [`NetworkSeen::last_seen_secs`]), the last [`MAX_FINGERPRINTS`] fingerprints and
/// [`MAX_NETWORKS`] prefixes as 64-bit keyed hashes, most recent first. Nothing in it
/// can be turned back into an address, a user agent or a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct SessionRecord {
    /// The first request, to the minute.
    pub first_seen: Timestamp,
    /// The latest request, to the minute.
    pub last_seen: Timestamp,
    /// Requests seen.
    pub requests: u64,
    /// Keyed hashes of recent fingerprints, most recent first; 0 marks an empty slot.
    pub fingerprints: [u64; MAX_FINGERPRINTS],
    /// Recent network prefixes, most recent first.
    pub networks: [NetworkSeen; MAX_NETWORKS],
    /// Fingerprint switches, and returns to a network left moments ago, counted in
    /// the current alternation window.
    pub switches: u16,
    /// When the current alternation window opened, to the minute.
    pub switch_window_start: Timestamp,
    /// When the session took up its current fingerprint and network, in whole
    /// seconds since the Unix epoch: how long it stayed before a switch tells a
    /// move from two clients taking turns. (Records written before it was kept read
    /// 0: every stay looks long, so no switch counts until the next one.)
    #[serde(default)]
    pub stay_start_secs: u64,
    /// Requests since the session took up its current fingerprint and network.
    #[serde(default)]
    pub stay_requests: u16,
    /// Reasons that hold for the whole session (a stale token).
    pub sticky: SessionReasons,
    /// The latest verdict.
    pub health: SessionHealth,
    /// The reasons behind the latest verdict.
    pub reasons: SessionReasons,
}

// Both serialize as sequences, fields in declaration order: a stored record then
// carries no field names (in JSON, half the bytes and less than half the encoding
// work: 8,151 -> about 3,700 instructions per write). The derived `Deserialize` reads
// sequences and the named form alike, so records written either way read back.
impl Serialize for NetworkSeen {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let NetworkSeen { hash, last_seen_secs } = self;
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(hash)?;
        t.serialize_element(last_seen_secs)?;
        t.end()
    }
}

impl Serialize for SessionRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Listed without `..`: a new field does not compile until it is written here.
        let SessionRecord {
            first_seen,
            last_seen,
            requests,
            fingerprints,
            networks,
            switches,
            switch_window_start,
            stay_start_secs,
            stay_requests,
            sticky,
            health,
            reasons,
        } = self;
        let mut t = serializer.serialize_tuple(12)?;
        t.serialize_element(first_seen)?;
        t.serialize_element(last_seen)?;
        t.serialize_element(requests)?;
        t.serialize_element(fingerprints)?;
        t.serialize_element(networks)?;
        t.serialize_element(switches)?;
        t.serialize_element(switch_window_start)?;
        t.serialize_element(stay_start_secs)?;
        t.serialize_element(stay_requests)?;
        t.serialize_element(sticky)?;
        t.serialize_element(health)?;
        t.serialize_element(reasons)?;
        t.end()
    }
}

/// One request, as the record sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Observation {
    pub now: Timestamp,
    /// Keyed hash of the fingerprint (never 0).
    pub fingerprint: u64,
    /// Keyed hash of the network prefix (never 0), when the client's network is known.
    pub network: Option<u64>,
    /// When the credential was issued, when known.
    pub issued_at: Option<Timestamp>,
    /// The request proved possession of the key its token is bound to (DPoP): the
    /// same client, wherever its network, so network changes are no sign of sharing.
    pub key_bound: bool,
}

/// The signal thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Thresholds {
    pub established_after: u64,
    pub concurrency_window: Duration,
    pub interleave_window: Duration,
    pub alternation_window: Duration,
    pub alternation_switches: u16,
    /// `None` disables the stale-token signal.
    pub stale_after: Option<Duration>,
    /// Tokens issued before this moment are not judged stale: nobody was watching.
    pub watching_since: Timestamp,
    pub unhealthy_reasons: u32,
}

/// A hash that cannot be mistaken for an empty slot.
pub(crate) fn nonzero(h: u64) -> u64 {
    if h == 0 { 1 } else { h }
}

impl SessionRecord {
    /// The record after `obs`, given the record before it (if any). The verdict is in
    /// [`SessionRecord::health`] and [`SessionRecord::reasons`].
    pub(crate) fn observe(prev: Option<&SessionRecord>, obs: &Observation, th: &Thresholds) -> SessionRecord {
        let now_min = obs.now.to_minute();
        let now_secs = obs.now.as_secs();
        let mut rec = match prev {
            Some(prev) => *prev,
            None => SessionRecord {
                first_seen: now_min,
                last_seen: now_min,
                requests: 0,
                fingerprints: [0; MAX_FINGERPRINTS],
                networks: [NetworkSeen::default(); MAX_NETWORKS],
                switches: 0,
                switch_window_start: now_min,
                stay_start_secs: now_secs,
                stay_requests: 0,
                sticky: SessionReasons::default(),
                health: SessionHealth::Healthy,
                reasons: SessionReasons::default(),
            },
        };
        let mut reasons = SessionReasons::default();

        if prev.is_none()
            && let (Some(issued), Some(stale_after)) = (obs.issued_at, th.stale_after)
            && issued >= th.watching_since.to_minute()
            && obs.now.saturating_since(issued) > stale_after
        {
            rec.sticky.insert(SessionReason::StaleToken);
        }

        // Leaving a fingerprint or network after a single request moments ago is
        // interleaving: two clients taking turns. A longer stay first, in time or in
        // requests, is a move (a phone at the edge of its Wi-Fi makes a few requests
        // on each side).
        let quick = rec.stay_requests <= 1
            && now_secs.saturating_sub(rec.stay_start_secs) < th.interleave_window.as_secs();
        let count_switch = |rec: &mut SessionRecord| {
            if obs.now.saturating_since(rec.switch_window_start) >= th.alternation_window {
                rec.switches = 0;
                rec.switch_window_start = now_min;
            }
            rec.switches = rec.switches.saturating_add(1);
        };
        let fingerprint_switch = prev.is_some() && rec.fingerprints[0] != obs.fingerprint;
        if prev.is_some() {
            // A fingerprint this session has not shown recently, once it is established.
            if rec.requests >= th.established_after && !rec.fingerprints.contains(&obs.fingerprint) {
                reasons.insert(SessionReason::NewFingerprint);
            }
            if fingerprint_switch && quick {
                count_switch(&mut rec);
            }
            if rec.switches >= th.alternation_switches
                && obs.now.saturating_since(rec.switch_window_start) < th.alternation_window
                && !obs.key_bound
            {
                reasons.insert(SessionReason::FingerprintAlternation);
            }
        }

        // Use from two places at once shows as interleaving: coming back to a prefix
        // left within the concurrency window, another one used in between. A single
        // switch (a phone leaving Wi-Fi for cellular, a traveller) is a move, and a
        // slow alternation (Wi-Fi at home, cellular on the way) leaves each prefix
        // for longer than the window.
        let mut network_switch = false;
        if let Some(net) = obs.network {
            let window = th.concurrency_window.as_secs();
            let latest = rec.networks[0];
            network_switch = latest.hash != 0 && latest.hash != net;
            let concurrent = network_switch
                && now_secs.saturating_sub(latest.last_seen_secs) <= window
                && rec.networks[1..]
                    .iter()
                    .any(|n| n.hash == net && now_secs.saturating_sub(n.last_seen_secs) <= window);
            if concurrent && !obs.key_bound {
                reasons.insert(SessionReason::ConcurrentNetworks);
                // A quick return counts toward alternation like a fingerprint switch:
                // two clients on one token need not differ in anything else.
                if quick && !fingerprint_switch {
                    count_switch(&mut rec);
                }
            }
            move_to_front(
                &mut rec.networks,
                |n| n.hash == net,
                NetworkSeen {
                    hash: net,
                    last_seen_secs: now_secs,
                },
            );
        }
        if fingerprint_switch || network_switch {
            rec.stay_start_secs = now_secs;
            rec.stay_requests = 0;
        }
        rec.stay_requests = rec.stay_requests.saturating_add(1);
        move_to_front(&mut rec.fingerprints, |f| *f == obs.fingerprint, obs.fingerprint);

        rec.requests = rec.requests.saturating_add(1);
        rec.last_seen = rec.last_seen.max(now_min);
        let reasons = reasons.union(rec.sticky);
        rec.reasons = reasons;
        let interleaving = reasons.contains(SessionReason::ConcurrentNetworks)
            && rec.switches >= th.alternation_switches
            && obs.now.saturating_since(rec.switch_window_start) < th.alternation_window;
        rec.health = if reasons.contains(SessionReason::FingerprintAlternation)
            || interleaving
            || reasons.len() >= th.unhealthy_reasons
        {
            SessionHealth::Unhealthy
        } else if reasons.is_empty() {
            SessionHealth::Healthy
        } else {
            SessionHealth::Suspicious
        };
        rec
    }

    /// How long the record may live: the session TTL, from its last update.
    pub(crate) fn ttl(ttl: Duration) -> Duration {
        // At least a second: a zero TTL would drop the record as it is written.
        Duration::from_nanos(duration_nanos(ttl).max(1_000_000_000))
    }
}

/// Puts `item` first, dropping the matching entry or, if none matches, the last one.
fn move_to_front<T: Copy, const N: usize>(slots: &mut [T; N], matches: impl Fn(&T) -> bool, item: T) {
    let at = slots.iter().position(matches).unwrap_or(N - 1);
    slots.copy_within(0..at, 1);
    slots[0] = item;
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0xa;
    const B: u64 = 0xb;
    const NET_A: u64 = 0x1a;
    const NET_B: u64 = 0x1b;

    fn th() -> Thresholds {
        Thresholds {
            established_after: 3,
            concurrency_window: Duration::from_secs(60),
            interleave_window: Duration::from_secs(10),
            alternation_window: Duration::from_secs(300),
            alternation_switches: 3,
            stale_after: Some(Duration::from_secs(3600)),
            watching_since: Timestamp::ZERO,
            unhealthy_reasons: 3,
        }
    }

    fn obs(secs: u64, fp: u64, net: u64) -> Observation {
        Observation {
            now: Timestamp::from_secs(secs),
            fingerprint: fp,
            network: Some(net),
            issued_at: None,
            key_bound: false,
        }
    }

    fn run(steps: &[(u64, u64, u64)]) -> Vec<SessionRecord> {
        let mut rec: Option<SessionRecord> = None;
        steps
            .iter()
            .map(|&(t, fp, net)| {
                let next = SessionRecord::observe(rec.as_ref(), &obs(t, fp, net), &th());
                rec = Some(next);
                next
            })
            .collect()
    }

    #[test]
    fn steady_use_stays_healthy() {
        let steps: Vec<_> = (0..50).map(|i| (1_000 + i * 7, A, NET_A)).collect();
        for r in run(&steps) {
            assert_eq!(r.health, SessionHealth::Healthy, "{r:?}");
        }
    }

    #[test]
    fn a_switch_is_a_move_and_interleaving_is_concurrent_use() {
        let recs = run(&[
            (1_000, A, NET_A),
            (1_001, A, NET_A),
            (1_002, A, NET_A),
            (1_003, B, NET_B),
            (1_004, A, NET_A),
            (1_005, B, NET_B),
            (1_006, A, NET_A),
        ]);
        assert_eq!(recs[2].health, SessionHealth::Healthy);
        // One switch could be a move: only the new fingerprint counts.
        assert_eq!(recs[3].health, SessionHealth::Suspicious);
        assert_eq!(recs[3].reasons.as_str(), "new_fingerprint");
        // Back on A moments after leaving it: two places at once. A is known.
        assert_eq!(recs[4].reasons.as_str(), "concurrent_networks");
        // Taking turns request by request: the third quick switch makes it unhealthy.
        assert_eq!(recs[5].health, SessionHealth::Suspicious);
        assert_eq!(recs[6].health, SessionHealth::Unhealthy);
        assert!(recs[6].reasons.contains(SessionReason::FingerprintAlternation));
    }

    #[test]
    fn a_phone_between_wifi_and_cellular_is_moving_not_shared() {
        // Wi-Fi, then cellular on the way, back on Wi-Fi minutes later, again and again;
        // and a move that stays.
        let mut steps = Vec::new();
        for leg in 0..8u64 {
            let net = if leg % 2 == 0 { NET_A } else { NET_B };
            for i in 0..10 {
                steps.push((1_000 + leg * 240 + i * 12, A, net));
            }
        }
        for r in run(&steps) {
            assert_eq!(r.health, SessionHealth::Healthy, "{r:?}");
        }
    }

    #[test]
    fn a_phone_switching_every_half_minute_is_at_most_suspicious() {
        // Wi-Fi and cellular (the network is part of the fingerprint), a request every
        // 4 s, a new network every 20 s for ten minutes.
        let steps: Vec<_> = (0..150u64)
            .map(|i| {
                let leg = i / 5;
                let (fp, net) = if leg % 2 == 0 { (A, NET_A) } else { (B, NET_B) };
                (1_000 + i * 4, fp, net)
            })
            .collect();
        let recs = run(&steps);
        assert!(recs.iter().all(|r| r.health != SessionHealth::Unhealthy));
        assert!(
            recs.iter()
                .any(|r| r.reasons.contains(SessionReason::ConcurrentNetworks))
        );
    }

    #[test]
    fn a_phone_flapping_at_the_edge_of_its_wifi_is_at_most_suspicious() {
        // Two or three requests on each side, a few seconds apart, for five minutes.
        let mut steps = Vec::new();
        let mut t = 1_000;
        for visit in 0..60u64 {
            let (fp, net) = if visit % 2 == 0 { (A, NET_A) } else { (B, NET_B) };
            for _ in 0..(2 + visit % 2) {
                steps.push((t, fp, net));
                t += 2;
            }
        }
        let recs = run(&steps);
        assert!(recs.iter().all(|r| r.health != SessionHealth::Unhealthy));
    }

    #[test]
    fn a_stolen_token_used_alongside_its_owner_becomes_unhealthy_within_a_few_requests() {
        // The owner alone for ten minutes, then the thief joins: turns every 2 s.
        let mut steps: Vec<_> = (0..60u64).map(|i| (1_000 + i * 10, A, NET_A)).collect();
        steps.extend((0..10u64).map(|i| {
            let (fp, net) = if i % 2 == 0 { (B, NET_B) } else { (A, NET_A) };
            (1_600 + i * 2, fp, net)
        }));
        let recs = run(&steps);
        let first = recs[60..]
            .iter()
            .position(|r| r.health == SessionHealth::Unhealthy);
        assert!(first.is_some_and(|i| i < 6), "{first:?}");
    }

    #[test]
    fn one_token_from_two_places_with_the_same_client_becomes_unhealthy() {
        // An attacker who copies the victim's client exactly: only the networks differ.
        let steps: Vec<_> = (0..10u64)
            .map(|i| (1_000 + i * 3, A, if i % 2 == 0 { NET_A } else { NET_B }))
            .collect();
        let recs = run(&steps);
        let first_unhealthy = recs.iter().position(|r| r.health == SessionHealth::Unhealthy);
        assert!(first_unhealthy.is_some_and(|i| i < 10), "{recs:?}");
        assert!(recs[2].reasons.contains(SessionReason::ConcurrentNetworks));
    }

    #[test]
    fn a_move_settles_after_the_windows() {
        let recs = run(&[
            (1_000, A, NET_A),
            (1_010, A, NET_A),
            (1_020, A, NET_A),
            (1_030, B, NET_B),
            (1_120, B, NET_B),
        ]);
        assert_eq!(recs[3].health, SessionHealth::Suspicious);
        assert_eq!(recs[4].health, SessionHealth::Healthy, "{:?}", recs[4]);
    }

    #[test]
    fn young_sessions_do_not_flag_new_fingerprints() {
        let recs = run(&[(1_000, A, NET_A), (1_100, B, NET_A)]);
        assert_eq!(recs[1].health, SessionHealth::Healthy);
    }

    #[test]
    fn alternation_window_resets() {
        let recs = run(&[
            (1_000, A, NET_A),
            (1_100, B, NET_A),
            (1_200, A, NET_A),
            (1_700, B, NET_A),
            (1_800, A, NET_A),
        ]);
        assert!(
            recs.iter()
                .all(|r| !r.reasons.contains(SessionReason::FingerprintAlternation))
        );
    }

    #[test]
    fn lists_are_bounded_most_recent_first() {
        let steps: Vec<_> = (1..=10u64).map(|i| (1_000 + i * 1_000, i, 100 + i)).collect();
        let last = *run(&steps).last().unwrap();
        assert_eq!(last.fingerprints, [10, 9, 8, 7]);
        assert_eq!(last.networks.map(|n| n.hash), [110, 109, 108, 107]);
        assert_eq!(last.requests, 10);
        assert_eq!(last.first_seen, Timestamp::from_secs(1_980));
        assert_eq!(last.last_seen, Timestamp::from_secs(10_980));
    }

    #[test]
    fn stale_tokens_stay_flagged_but_only_when_watched() {
        let mut o = obs(10_000, A, NET_A);
        o.issued_at = Some(Timestamp::from_secs(1_000));
        let first = SessionRecord::observe(None, &o, &th());
        assert_eq!(first.reasons.as_str(), "stale_token");
        let next = SessionRecord::observe(Some(&first), &obs(10_001, A, NET_A), &th());
        assert_eq!(next.health, SessionHealth::Suspicious);

        let mut late_start = th();
        late_start.watching_since = Timestamp::from_secs(5_000);
        assert_eq!(
            SessionRecord::observe(None, &o, &late_start).health,
            SessionHealth::Healthy
        );
        late_start.stale_after = None;
        o.issued_at = Some(Timestamp::from_secs(6_000));
        assert_eq!(
            SessionRecord::observe(None, &o, &late_start).health,
            SessionHealth::Healthy
        );
    }

    #[test]
    fn a_key_bound_session_moving_between_networks_stays_healthy() {
        // The token-sharing walk that makes an unbound session unhealthy.
        let steps = [
            (0, A, NET_A),
            (10, A, NET_A),
            (20, A, NET_A),
            (30, B, NET_B),
            (35, A, NET_A),
            (40, B, NET_B),
            (45, A, NET_A),
        ];
        let th = th();
        let mut prev: Option<SessionRecord> = None;
        for (secs, fp, net) in steps {
            let o = Observation {
                key_bound: true,
                ..obs(secs, fp, net)
            };
            let rec = SessionRecord::observe(prev.as_ref(), &o, &th);
            assert!(
                !rec.reasons.contains(SessionReason::ConcurrentNetworks)
                    && !rec.reasons.contains(SessionReason::FingerprintAlternation),
                "at {secs}s: {}",
                rec.reasons
            );
            assert_ne!(rec.health, SessionHealth::Unhealthy);
            prev = Some(rec);
        }
        let unbound = run(&steps);
        assert_eq!(unbound.last().unwrap().health, SessionHealth::Unhealthy);
    }

    #[test]
    fn three_reasons_at_once_are_unhealthy() {
        let mut o = obs(10_000, A, NET_A);
        o.issued_at = Some(Timestamp::from_secs(1_000));
        let mut rec = SessionRecord::observe(None, &o, &th());
        for t in 1..3 {
            rec = SessionRecord::observe(Some(&rec), &obs(10_000 + t, A, NET_A), &th());
        }
        rec = SessionRecord::observe(Some(&rec), &obs(10_004, A, NET_B), &th());
        let back = SessionRecord::observe(Some(&rec), &obs(10_005, B, NET_A), &th());
        assert_eq!(back.reasons.len(), 3, "{}", back.reasons);
        assert_eq!(back.health, SessionHealth::Unhealthy);
    }

    #[test]
    fn clock_going_back_does_not_panic_or_flag() {
        let recs = run(&[(2_000, A, NET_A), (1_000, A, NET_A), (0, A, NET_A)]);
        assert!(recs.iter().all(|r| r.health == SessionHealth::Healthy));
    }

    #[test]
    fn record_round_trips_through_serde_as_a_sequence() {
        let rec = run(&[(1_000, A, NET_A), (1_001, B, NET_B), (1_002, A, NET_A)])[2];
        assert!(rec.switches > 0 && rec.stay_start_secs > 0, "{rec:?}");
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.starts_with('[') && !json.contains("first_seen"), "{json}");
        assert_eq!(serde_json::from_str::<SessionRecord>(&json).unwrap(), rec);
    }

    #[test]
    fn records_stored_with_field_names_still_read() {
        let rec = run(&[(1_000, A, NET_A), (1_001, B, NET_B), (1_002, A, NET_A)])[2];
        let n = |i: usize| serde_json::json!({"hash": rec.networks[i].hash, "last_seen_secs": rec.networks[i].last_seen_secs});
        let named = serde_json::json!({
            "first_seen": rec.first_seen,
            "last_seen": rec.last_seen,
            "requests": rec.requests,
            "fingerprints": rec.fingerprints,
            "networks": (0..MAX_NETWORKS).map(n).collect::<Vec<_>>(),
            "switches": rec.switches,
            "switch_window_start": rec.switch_window_start,
            "stay_start_secs": rec.stay_start_secs,
            "stay_requests": rec.stay_requests,
            "sticky": rec.sticky,
            "health": rec.health,
            "reasons": rec.reasons,
        });
        assert_eq!(serde_json::from_value::<SessionRecord>(named).unwrap(), rec);
    }
}
