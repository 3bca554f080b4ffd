//! Credential stuffing and password spraying: failed logins from one network
//! prefix, against one account from anywhere, or API-wide well above their own
//! baseline or far more distinct accounts failing than logins working.

use std::sync::Mutex;

use tollgate_core::clock::duration_nanos;

use crate::bounded::BoundedMap;
use crate::config::StuffingConfig;
use crate::sketch::{SlidingCounter, WindowedDistinct};

use super::score::excess_score;

#[derive(Clone, Copy, Debug, Default)]
struct NetworkState {
    failures: SlidingCounter,
    /// Authenticated requests and working logins: what makes a network's failures
    /// a small share when many honest users share it (carrier-grade NAT, an office).
    successes: SlidingCounter,
    subjects: WindowedDistinct,
    held_until: u64,
    score: u8,
}

#[derive(Clone, Copy, Debug, Default)]
struct AccountState {
    failures: SlidingCounter,
    /// Logins that worked: many people sharing one account name (a demo account,
    /// a team login) mistype now and then among many logins that work.
    successes: SlidingCounter,
    held_until: u64,
    score: u8,
}

/// Per network prefix: 401 answers and successes in a sliding window, and a
/// distinct-count sketch of the subjects that authenticated from it. Many
/// failures, or many subjects, while failures are most of what the prefix does,
/// tag the prefix, which then stays tagged for `hold`, so the logins that succeed
/// in the middle of a campaign are tagged too.
///
/// Per attempted account (a keyed hash of the name a login handler reported with
/// [`tollgate_core::LoginAttempt`]): failures from any network, while they are most
/// of its logins, so an account attacked from many networks at a low rate each is
/// seen.
///
/// API-wide: the failed-login rate against its own baseline, and the distinct
/// accounts failing against the logins that work; either one past its bar starts a
/// campaign, during which every network failing again takes part and is tagged.
#[derive(Debug)]
pub(crate) struct StuffingDetector {
    map: BoundedMap<NetworkState>,
    accounts: BoundedMap<AccountState>,
    window: u64,
    hold: u64,
    max_failures: f64,
    max_subjects: f64,
    max_share: f64,
    max_account_failures: f64,
    global: Mutex<Global>,
    global_window: u64,
    global_min_rate: f64,
    global_factor: f64,
    min_failed_accounts: f64,
    accounts_per_login: f64,
}

/// The API-wide picture: the failed-login rate in the current window, a baseline
/// rate (failures per second) averaged over past windows without a campaign, and
/// the distinct accounts failing against the logins working.
#[derive(Debug, Default)]
struct Global {
    failures: SlidingCounter,
    /// Exponential average of past windows' rates; `None` until one window passed.
    baseline: Option<f64>,
    /// The start of the window being counted for the baseline, and its count.
    window_start: u64,
    window_count: u32,
    failed_accounts: WindowedDistinct,
    logins: SlidingCounter,
    /// A campaign is on until then.
    campaign_until: u64,
    score: u8,
}

/// Weight of a finished window in the baseline: about an hour of memory at 30 s.
const BASELINE_ALPHA: f64 = 1.0 / 120.0;

impl StuffingDetector {
    /// A detector with this configuration.
    pub(crate) fn new(config: &StuffingConfig) -> Self {
        let window = duration_nanos(config.window).max(1);
        let hold = duration_nanos(config.hold);
        // An entry lives while it is counting or holding.
        let ttl = config.window.max(config.hold) * 2;
        StuffingDetector {
            map: BoundedMap::new(config.max_entries, ttl),
            accounts: BoundedMap::new(config.max_accounts, ttl),
            window,
            hold,
            max_failures: f64::from(config.max_failures),
            max_subjects: f64::from(config.max_subjects),
            max_share: config.max_failure_share,
            max_account_failures: f64::from(config.max_account_failures),
            global: Mutex::new(Global::default()),
            global_window: duration_nanos(config.global_window).max(1),
            global_min_rate: config.global_min_rate,
            global_factor: config.global_factor,
            min_failed_accounts: f64::from(config.min_failed_accounts),
            accounts_per_login: config.failed_accounts_per_login,
        }
    }

    /// Counts one failed login API-wide (of `account` if known); the campaign's
    /// score while one is on.
    fn record_global(&self, account: Option<u64>, now: u64) -> Option<u8> {
        let mut g = self.global.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.global_window;
        // Close the baseline windows that ended, each at the rate it saw (an empty
        // gap counts as quiet windows), skipping those inside a campaign.
        if g.window_start == 0 {
            g.window_start = now;
        }
        while now >= g.window_start.saturating_add(window) {
            if g.window_start >= g.campaign_until {
                let rate = f64::from(g.window_count) * 1e9 / window as f64;
                g.baseline = Some(match g.baseline {
                    None => rate,
                    Some(b) => b + BASELINE_ALPHA * (rate - b),
                });
            }
            g.window_start = g.window_start.saturating_add(window);
            g.window_count = 0;
            // A long quiet gap: the baseline has decayed to its floor anyway.
            if now.saturating_sub(g.window_start) > 1_000 * window {
                g.window_start = now;
            }
        }
        g.window_count = g.window_count.saturating_add(1);
        g.failures.add(now, window, 1);
        let rate = g.failures.estimate(now, window) * 1e9 / window as f64;
        let threshold = self
            .global_min_rate
            .max(self.global_factor * g.baseline.unwrap_or(0.0));
        let mut fresh = (rate > threshold).then(|| excess_score(rate, threshold));
        if let Some(account) = account {
            g.failed_accounts.insert(account, now, self.window);
            g.logins.roll(now, self.window);
            let failed = f64::from(g.failed_accounts.estimate(now, self.window));
            let logins = g.logins.estimate(now, self.window);
            let bar = self.min_failed_accounts.max(self.accounts_per_login * logins);
            fresh = fresh.max((failed > bar).then(|| excess_score(failed, bar)));
        }
        if let Some(score) = fresh {
            g.campaign_until = now.saturating_add(self.hold);
            g.score = g.score.max(score);
        }
        if now < g.campaign_until {
            return Some(g.score);
        }
        g.score = 0;
        None
    }

    fn judge(&self, held_until: &mut u64, held_score: &mut u8, now: u64, fresh: Option<u8>) -> Option<u8> {
        if let Some(score) = fresh {
            *held_until = now.saturating_add(self.hold);
            *held_score = (*held_score).max(score);
            return Some(score);
        }
        if now < *held_until {
            return Some(*held_score);
        }
        *held_score = 0;
        None
    }

    /// Whether failures are most of what the prefix does.
    fn mostly_failing(&self, s: &NetworkState, now: u64) -> bool {
        let failures = s.failures.estimate(now, self.window);
        let successes = s.successes.estimate(now, self.window);
        failures > self.max_share * (failures + successes)
    }

    /// Counts a failed login (a 401 answer, or a login handler's failed
    /// [`tollgate_core::LoginAttempt`] of `account`) from `network` at `now`.
    ///
    /// While an API-wide campaign is on, a network failing again takes part in it
    /// and is tagged (one typo does not); a network failing against an account under
    /// attack takes part in that attack.
    pub(crate) fn record_failure(&self, network: u64, account: Option<u64>, now: u64) -> Option<u8> {
        let window = self.window;
        let campaign = self.record_global(account, now);
        let attacked = account.and_then(|account| {
            self.accounts.update(account, now, AccountState::default, |a| {
                a.failures.add(now, window, 1);
                a.successes.roll(now, window);
                let failures = a.failures.estimate(now, window);
                let successes = a.successes.estimate(now, window);
                let fresh = (failures > self.max_account_failures
                    && failures > self.max_share * (failures + successes))
                    .then(|| excess_score(failures, self.max_account_failures));
                self.judge(&mut a.held_until, &mut a.score, now, fresh)
            })
        });
        self.map.update(network, now, NetworkState::default, |s| {
            s.failures.add(now, window, 1);
            s.successes.roll(now, window);
            let failures = s.failures.estimate(now, window);
            let fresh = if self.mostly_failing(s, now) {
                let taking_part = campaign.filter(|_| failures >= 2.0);
                (failures > self.max_failures)
                    .then(|| excess_score(failures, self.max_failures))
                    .max(taking_part)
            } else {
                None
            };
            self.judge(&mut s.held_until, &mut s.score, now, fresh.max(attacked))
        })
    }

    /// Counts a login that worked, to `account` from `network` at `now`. Tagged if
    /// the account or the network is under attack: a login that works in the middle
    /// of a campaign is the one that matters.
    pub(crate) fn record_login(&self, network: u64, account: u64, now: u64) -> Option<u8> {
        {
            let mut g = self.global.lock().unwrap_or_else(|e| e.into_inner());
            g.logins.add(now, self.window, 1);
        }
        let attacked = self.accounts.update(account, now, AccountState::default, |a| {
            a.successes.add(now, self.window, 1);
            (now < a.held_until).then_some(a.score)
        });
        let network = self.map.update(network, now, NetworkState::default, |s| {
            s.successes.add(now, self.window, 1);
            self.judge(&mut s.held_until, &mut s.score, now, None)
        });
        attacked.max(network)
    }

    /// Counts a subject (a keyed hash) that authenticated from `network` at `now`.
    pub(crate) fn record_subject(&self, network: u64, subject: u64, now: u64) -> Option<u8> {
        let window = self.window;
        self.map.update(network, now, NetworkState::default, |s| {
            s.successes.add(now, window, 1);
            s.failures.roll(now, window);
            s.subjects.insert(subject, now, window);
            let distinct = f64::from(s.subjects.estimate(now, window));
            let fresh = (distinct > self.max_subjects && self.mostly_failing(s, now))
                .then(|| excess_score(distinct, self.max_subjects));
            self.judge(&mut s.held_until, &mut s.score, now, fresh)
        })
    }

    /// The score of `network` if it is tagged now (read only).
    pub(crate) fn check(&self, network: u64, now: u64) -> Option<u8> {
        self.map
            .get(network, now, |s| (now < s.held_until).then_some(s.score))
            .flatten()
    }

    /// The number of prefixes tracked.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The most prefixes tracked.
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    pub(crate) fn map(&self) -> &BoundedMap<impl Sized> {
        &self.map
    }

    /// The attempted accounts tracked (keyed hashes).
    pub(crate) fn accounts(&self) -> &BoundedMap<impl Sized> {
        &self.accounts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn account(i: u64) -> u64 {
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555
    }

    #[test]
    fn ten_failures_from_one_network_fire_and_hold() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        let net = 0x1234;
        let first = (0..30u64).position(|i| d.record_failure(net, None, i * S).is_some());
        assert_eq!(first, Some(10), "the 11th failure is tagged");
        assert!(d.check(net, 40 * S).is_some());
    }

    #[test]
    fn a_few_typos_are_quiet() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        // A failed login a minute from one office network, all day, each retried,
        // among the office's ordinary use of the API.
        for i in 0..(24 * 60) {
            assert_eq!(d.record_failure(9, Some(account(i % 7)), i * 60 * S), None);
            assert_eq!(d.record_login(9, account(i % 7), i * 60 * S + S), None);
            for j in 0..3 {
                assert_eq!(d.record_subject(9, account(j), i * 60 * S + (2 + j) * S), None);
            }
        }
    }

    #[test]
    fn a_campaign_fires_and_holds() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        let fired: Vec<_> = (0..100).map(|i| d.record_failure(5, None, i * 2 * S)).collect();
        let first = fired.iter().position(Option::is_some).unwrap();
        assert!(first <= 12, "{first}");
        // A success in the middle of the campaign is tagged.
        assert!(d.record_subject(5, 777, 210 * S).is_some());
        assert!(d.check(5, 200 * S + 900 * S).is_none());
        assert!(d.check(6, 200 * S).is_none());
    }

    /// An hour of honest traffic API-wide: a failed login every 5 s over 500
    /// networks, each failure retried successfully, and authenticated use.
    fn honest_hour(d: &StuffingDetector) -> u64 {
        let mut t = 0;
        for i in 0..720u64 {
            t = i * 5 * S;
            let net = 1_000 + i % 500;
            assert_eq!(
                d.record_failure(net, Some(account(i)), t),
                None,
                "honest failure {i}"
            );
            assert_eq!(d.record_login(net, account(i), t + S), None);
            d.record_subject(net, account(i), t + 2 * S);
        }
        t + 3 * S
    }

    #[test]
    fn a_campaign_over_many_networks_fires_from_the_sum() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        let t = honest_hour(&d);
        // 8 networks, one attempt every 5 s each, distinct accounts, without the
        // login handler's report (401s only).
        let first = (0..100u64)
            .position(|step| {
                d.record_failure(50 + step % 8, None, t + step * S * 5 / 8)
                    .is_some()
            })
            .expect("the campaign is caught");
        assert!(first < 40, "first tag after {} attempts", first + 1);
    }

    #[test]
    fn a_slow_spray_over_many_networks_fires_from_the_accounts_tried() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        let t = honest_hour(&d);
        // 20 networks, one attempt a minute each (well under the failed-login rate's
        // bar), each on an account nobody tried before.
        let first = (0..400u64)
            .position(|step| {
                let now = t + step * 3 * S;
                d.record_failure(70 + step % 20, Some(account(1_000_000 + step)), now)
                    .is_some()
            })
            .expect("the spray is caught");
        assert!(first < 60, "first tag after {} attempts", first + 1);
    }

    #[test]
    fn one_account_attacked_from_many_networks_fires() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        let t = honest_hour(&d);
        let victim = account(4_242);
        let first = (0..50u64)
            .position(|step| {
                d.record_failure(3_000 + step, Some(victim), t + step * 30 * S)
                    .is_some()
            })
            .expect("the attack on one account is caught");
        assert_eq!(first, 10);
        // The login that finally works is tagged.
        assert!(d.record_login(4_000, victim, t + 11 * 30 * S).is_some());
    }

    #[test]
    fn many_people_on_one_account_name_mistyping_now_and_then_are_quiet() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        // A shared demo account: 40 logins a minute from many networks, one in five
        // mistyped first.
        for i in 0..(60 * 40u64) {
            let t = i * 1_500_000_000;
            let net = 5_000 + i % 300;
            if i % 5 == 0 {
                assert_eq!(d.record_failure(net, Some(account(1)), t), None, "at {i}");
            }
            assert_eq!(d.record_login(net, account(1), t + 500_000_000), None);
        }
    }

    #[test]
    fn carrier_grade_nat_is_quiet() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        // Thousands of users behind one /24: a failed login every 20 s (30 per 10
        // minutes, each on its own account and retried), and their ordinary traffic.
        for i in 0..(24 * 180u64) {
            let t = i * 20 * S;
            assert_eq!(d.record_failure(77, Some(account(i)), t), None, "at {i}");
            assert_eq!(d.record_login(77, account(i), t + S), None);
            for j in 0..10 {
                assert_eq!(d.record_subject(77, account(i * 10 + j), t + 2 * S + j), None);
            }
        }
    }

    #[test]
    fn many_distinct_subjects_fire_only_among_failures() {
        let d = StuffingDetector::new(&StuffingConfig::default());
        let mut fired = false;
        for i in 0..60u64 {
            d.record_failure(3, None, i * S);
            d.record_failure(3, None, i * S + 1);
            fired |= d.record_subject(3, account(i), i * S + 2).is_some();
        }
        assert!(fired);
        // Many subjects with no failures (an office) do not; one subject many times does not.
        for i in 0..1_000u64 {
            assert!(d.record_subject(4, account(i), i * S).is_none());
            assert!(d.record_subject(5, 1, i * S).is_none());
        }
    }
}
