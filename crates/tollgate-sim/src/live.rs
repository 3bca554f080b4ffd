//! The evaluation over real HTTP: labelled traffic from behaviour (offices, phones,
//! travellers, integrations, attackers) sent on loopback to the demo gateway, a
//! child process with its own clock, each request matched to its log line by its
//! `traceparent`.
//!
//! Every actor is a task with its own seeded random source; networks are set with
//! `X-Forwarded-For` (the demo trusts loopback as a proxy), user agents per device.
//! Benign users hold tokens they got earlier (HS256, signed with the demo's login
//! secret) and log in again now and then through `/login`, mistyping sometimes;
//! attackers log in through `/login` with a list of leaked names, walk object ids
//! with their own token, burst, or use a stolen token from elsewhere. The traffic
//! is designed from how each behaves, not from the detectors' settings.
//!
//! The report gives, per attack, recall and how many of its requests (and seconds)
//! went by before the first tag; per benign pattern, the share of requests tagged
//! and judged unhealthy; per action and tag kind, how many legitimate requests it
//! would have refused. The gateway runs with `record` and `tag` (nothing refused),
//! so a policy's refusals are replayed from the tags: `block` and `throttle` hold
//! the caller for `[anomaly.penalties]`'s default 10 minutes, `freeze` for the rest
//! of the run, `reauthenticate` refuses each request of an unhealthy session.
//!
//! Four gateways run at once: one for most of the mix, and one for each stuffing
//! attack with an office and a carrier NAT beside it, so that the API-wide
//! signals of one attack do not flatter the next. EVALUATION.md has the tables.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// What the evaluation runs.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// The demo gateway's binary (`target/<profile>/examples/gateway`).
    pub gateway: PathBuf,
    /// The demo's configuration (`examples/gateway.toml`); the evaluation adds its
    /// users to `[gateway] users` and runs on a free loopback port.
    pub config: PathBuf,
    /// The seed of every actor's random choices.
    pub seed: u64,
    /// How long the benign traffic runs; attacks start within its first minute.
    pub duration: Duration,
}

/// A benign pattern or an attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// Colleagues behind one office NAT, each with their own token.
    OfficeNat,
    /// Many phone users behind one carrier-grade NAT /24.
    CarrierNat,
    /// A phone moving between home Wi-Fi and cellular, back and forth.
    WifiCellularPhone,
    /// A traveller: airport, then hotel, then café, one after the other.
    Traveller,
    /// One user with a laptop and a phone, both in use, each with its own token.
    TwoDevices,
    /// An integration polling at a steady, heavy rate.
    HeavyClient,
    /// A shopper opening catalogue items one after the other.
    CatalogueScroller,
    /// A user who later bursts or has a token stolen, before that happens.
    BeforeTheAttack,
    /// Credential stuffing from one /24, backing off when rate limited.
    StuffingOneNetwork,
    /// Credential stuffing spread over 8 or 16 /24s, an attempt per 5 s from each.
    StuffingSpread,
    /// A logged-in user walking object ids within the existing range.
    Enumeration,
    /// A walk that runs past the last existing id (404s).
    EnumerationPastRange,
    /// A user jumping to 20 times their own rate.
    Burst,
    /// A stolen token used from a second network while its owner still uses it.
    TokenSharing,
    /// A stolen token used from five networks at once.
    TokenSharingFive,
}

impl Pattern {
    /// Every pattern, benign ones first.
    pub const ALL: [Pattern; 15] = [
        Pattern::OfficeNat,
        Pattern::CarrierNat,
        Pattern::WifiCellularPhone,
        Pattern::Traveller,
        Pattern::TwoDevices,
        Pattern::HeavyClient,
        Pattern::CatalogueScroller,
        Pattern::BeforeTheAttack,
        Pattern::StuffingOneNetwork,
        Pattern::StuffingSpread,
        Pattern::Enumeration,
        Pattern::EnumerationPastRange,
        Pattern::Burst,
        Pattern::TokenSharing,
        Pattern::TokenSharingFive,
    ];

    /// True for attacks.
    pub fn is_attack(self) -> bool {
        self >= Pattern::StuffingOneNetwork
    }

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::OfficeNat => "office NAT",
            Pattern::CarrierNat => "carrier-grade NAT",
            Pattern::WifiCellularPhone => "phone on Wi-Fi and cellular",
            Pattern::Traveller => "traveller",
            Pattern::TwoDevices => "two devices per user",
            Pattern::HeavyClient => "heavy steady API client",
            Pattern::CatalogueScroller => "catalogue scroller",
            Pattern::BeforeTheAttack => "users before a burst or theft",
            Pattern::StuffingOneNetwork => "stuffing from one /24",
            Pattern::StuffingSpread => "stuffing over 8 and 16 /24s, 1 per 5 s each",
            Pattern::Enumeration => "enumeration within the id range",
            Pattern::EnumerationPastRange => "enumeration past the id range (404s)",
            Pattern::Burst => "burst to 20x own rate",
            Pattern::TokenSharing => "token shared from 2 networks",
            Pattern::TokenSharingFive => "token shared from 5 networks",
        }
    }
}

/// How one request came out, from its log line.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The tag kinds (`volume`, `credential_stuffing`, ...).
    pub tags: Vec<String>,
    /// `session.health`, when the request had a session.
    pub health: Option<String>,
    /// The answer's status.
    pub status: u16,
}

/// One request sent.
#[derive(Clone, Debug)]
struct Sent {
    actor: u32,
    pattern: Pattern,
    /// Part of the attack (counted for time to first tag) rather than before it.
    attack: bool,
    /// Seconds since the run started.
    at: f64,
    trace: String,
}

/// A request with its outcome.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The actor.
    pub actor: u32,
    /// Its pattern.
    pub pattern: Pattern,
    /// Part of the attack rather than before it.
    pub attack: bool,
    /// Seconds since the run started.
    pub at: f64,
    /// The log line's verdict; `None` if no line was found.
    pub seen: Option<Seen>,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct LiveReport {
    /// Every request, in the order sent.
    pub requests: Vec<Observed>,
    /// The seed.
    pub seed: u64,
    /// Log lines that matched no request (should be none but the gateway's own).
    pub unmatched_lines: usize,
}

/// One attack type's row.
#[derive(Clone, Debug)]
pub struct AttackRow {
    /// The attack.
    pub pattern: Pattern,
    /// Its actors.
    pub actors: usize,
    /// Actors with a tagged attack request.
    pub detected: usize,
    /// The most attack requests any detected actor sent up to and including its first tag.
    pub worst_requests_to_tag: Option<usize>,
    /// The median of the same.
    pub median_requests_to_tag: Option<usize>,
    /// The median seconds from an actor's first attack request to its first tag.
    pub median_seconds_to_tag: Option<f64>,
    /// The tag kinds seen on its requests.
    pub kinds: Vec<String>,
}

/// One benign pattern's row.
#[derive(Clone, Debug)]
pub struct BenignRow {
    /// The pattern.
    pub pattern: Pattern,
    /// Its actors.
    pub actors: usize,
    /// Requests matched to a log line.
    pub requests: usize,
    /// Requests tagged.
    pub tagged: usize,
    /// Requests whose session was judged unhealthy.
    pub unhealthy: usize,
    /// Requests answered 429 (the rate limits, not the anomaly layer).
    pub rate_limited: usize,
    /// The tag kinds seen.
    pub kinds: Vec<String>,
}

/// How many legitimate requests each action policy would have refused.
#[derive(Clone, Debug)]
pub struct PolicyRow {
    /// The policy.
    pub policy: String,
    /// Legitimate requests it would have refused.
    pub refused: usize,
}

impl LiveReport {
    fn by_actor(&self) -> BTreeMap<u32, Vec<&Observed>> {
        let mut out: BTreeMap<u32, Vec<&Observed>> = BTreeMap::new();
        for r in &self.requests {
            out.entry(r.actor).or_default().push(r);
        }
        out
    }

    /// Requests sent that no log line matched.
    pub fn unmatched_requests(&self) -> usize {
        self.requests.iter().filter(|r| r.seen.is_none()).count()
    }

    /// The attack rows.
    pub fn attacks(&self) -> Vec<AttackRow> {
        let actors = self.by_actor();
        Pattern::ALL
            .into_iter()
            .filter(|p| p.is_attack())
            .map(|pattern| {
                let mut firsts = Vec::new();
                let mut seconds = Vec::new();
                let mut count = 0;
                let mut kinds = Vec::new();
                for requests in actors.values().filter(|r| r[0].pattern == pattern) {
                    count += 1;
                    let attack: Vec<_> = requests.iter().filter(|r| r.attack).collect();
                    for r in &attack {
                        for k in r.seen.iter().flat_map(|s| &s.tags) {
                            if !kinds.contains(k) {
                                kinds.push(k.clone());
                            }
                        }
                    }
                    if let Some(i) = attack
                        .iter()
                        .position(|r| r.seen.as_ref().is_some_and(|s| !s.tags.is_empty()))
                    {
                        firsts.push(i + 1);
                        seconds.push(attack[i].at - attack[0].at);
                    }
                }
                firsts.sort_unstable();
                seconds.sort_by(f64::total_cmp);
                kinds.sort();
                AttackRow {
                    pattern,
                    actors: count,
                    detected: firsts.len(),
                    worst_requests_to_tag: firsts.last().copied(),
                    median_requests_to_tag: firsts.get(firsts.len() / 2).copied(),
                    median_seconds_to_tag: seconds.get(seconds.len() / 2).copied(),
                    kinds,
                }
            })
            .collect()
    }

    /// The benign rows (legitimate requests only).
    pub fn benign(&self) -> Vec<BenignRow> {
        let actors = self.by_actor();
        Pattern::ALL
            .into_iter()
            .filter(|p| !p.is_attack())
            .map(|pattern| {
                let mut row = BenignRow {
                    pattern,
                    actors: 0,
                    requests: 0,
                    tagged: 0,
                    unhealthy: 0,
                    rate_limited: 0,
                    kinds: Vec::new(),
                };
                for requests in actors.values() {
                    let legit: Vec<_> = requests
                        .iter()
                        .filter(|r| {
                            r.pattern == pattern
                                || (pattern == Pattern::BeforeTheAttack
                                    && r.pattern.is_attack()
                                    && !r.attack
                                    && is_owner_pattern(r.pattern))
                        })
                        .collect();
                    if legit.is_empty() {
                        continue;
                    }
                    row.actors += 1;
                    for s in legit.iter().filter_map(|r| r.seen.as_ref()) {
                        row.requests += 1;
                        row.tagged += usize::from(!s.tags.is_empty());
                        row.unhealthy += usize::from(s.health.as_deref() == Some("unhealthy"));
                        row.rate_limited += usize::from(s.status == 429);
                        for k in &s.tags {
                            if !row.kinds.contains(k) {
                                row.kinds.push(k.clone());
                            }
                        }
                    }
                }
                row.kinds.sort();
                row
            })
            .collect()
    }

    /// All legitimate requests matched to a log line, and those tagged.
    pub fn benign_totals(&self) -> (usize, usize) {
        self.benign()
            .iter()
            .fold((0, 0), |(n, t), r| (n + r.requests, t + r.tagged))
    }

    /// How many legitimate requests each action policy would have refused: the
    /// anomaly actions for each tag kind, then the fingerprinting policies.
    pub fn policies(&self) -> Vec<PolicyRow> {
        let runs: Vec<Vec<&Observed>> = self
            .by_actor()
            .into_values()
            .map(|r| r.into_iter().filter(|r| !r.attack && r.seen.is_some()).collect())
            .collect();
        let kinds = [
            "volume",
            "credential_stuffing",
            "enumeration",
            "token_sharing",
            "unusual_sequence",
        ];
        let mut out = Vec::new();
        for kind in kinds {
            let tagged = |r: &Observed| r.seen.as_ref().is_some_and(|s| s.tags.iter().any(|t| t == kind));
            let mut refused = [0; 3];
            for run in &runs {
                refused[0] += replay_throttle(run, tagged);
                refused[1] += replay_block(run, tagged);
                refused[2] += run.iter().skip_while(|r| !tagged(r)).count();
            }
            for (action, refused) in ["throttle", "block", "freeze"].into_iter().zip(refused) {
                out.push(PolicyRow {
                    policy: format!("anomaly `{action}` on `{kind}`"),
                    refused,
                });
            }
        }
        let unhealthy = |r: &Observed| {
            r.seen
                .as_ref()
                .is_some_and(|s| s.health.as_deref() == Some("unhealthy"))
        };
        out.push(PolicyRow {
            policy: "fingerprint `reauthenticate` on `unhealthy`".into(),
            refused: runs
                .iter()
                .map(|run| run.iter().filter(|r| unhealthy(r)).count())
                .sum(),
        });
        out.push(PolicyRow {
            policy: "fingerprint `freeze` on `unhealthy`".into(),
            refused: runs
                .iter()
                .map(|run| run.iter().skip_while(|r| !unhealthy(r)).count())
                .sum(),
        });
        out
    }

    /// Checks the bounds the evaluation must show: every attack caught, within (in
    /// requests of the attack) 20 for stuffing from one network, 60 for stuffing
    /// spread over networks, 30 for enumeration, 20 for a burst, 10 for token
    /// sharing; at most 0.1 % of legitimate requests tagged, the Wi-Fi/cellular
    /// phone never unhealthy, nothing refused under `reauthenticate`; and at most
    /// 0.5 % of requests without a log line.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for a in self.attacks() {
            let bound = match a.pattern {
                Pattern::StuffingOneNetwork | Pattern::Burst => 20,
                Pattern::StuffingSpread => 60,
                Pattern::Enumeration | Pattern::EnumerationPastRange => 30,
                _ => 10,
            };
            if a.detected < a.actors {
                problems.push(format!(
                    "{}: {} of {} caught",
                    a.pattern.name(),
                    a.detected,
                    a.actors
                ));
            }
            if a.worst_requests_to_tag.is_some_and(|w| w > bound) {
                problems.push(format!(
                    "{}: first tag after {} requests (bound {bound})",
                    a.pattern.name(),
                    opt(a.worst_requests_to_tag)
                ));
            }
        }
        let (n, tagged) = self.benign_totals();
        if tagged as f64 > 0.001 * n as f64 {
            problems.push(format!(
                "{tagged} of {n} legitimate requests tagged (more than 0.1 %)"
            ));
        }
        for b in self.benign() {
            if b.pattern == Pattern::WifiCellularPhone && b.unhealthy > 0 {
                problems.push(format!(
                    "the Wi-Fi/cellular phone was unhealthy on {} requests",
                    b.unhealthy
                ));
            }
        }
        for p in self.policies() {
            if p.policy.contains("reauthenticate") && p.refused > 0 {
                problems.push(format!("{}: {} legitimate requests refused", p.policy, p.refused));
            }
        }
        let unmatched = self.unmatched_requests();
        if unmatched as f64 > 0.005 * self.requests.len() as f64 {
            problems.push(format!(
                "{unmatched} of {} requests without a log line",
                self.requests.len()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The report as Markdown tables.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Seed {}: {} requests, {} without a log line, {} log lines of no request.\n",
            self.seed,
            self.requests.len(),
            self.unmatched_requests(),
            self.unmatched_lines
        );
        out.push_str("| attack | actors | detected | recall | requests to first tag (median / worst) | seconds to first tag (median) | tags |\n|---|---:|---:|---:|---:|---:|---|\n");
        for a in self.attacks() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {} / {} | {} | {} |",
                a.pattern.name(),
                a.actors,
                a.detected,
                a.detected as f64 / a.actors.max(1) as f64,
                opt(a.median_requests_to_tag),
                opt(a.worst_requests_to_tag),
                a.median_seconds_to_tag.map_or("-".into(), |s| format!("{s:.1}")),
                a.kinds.join(", "),
            );
        }
        out.push_str("\n| benign pattern | actors | requests | tagged | false-positive rate | unhealthy | 429 (rate limits) | tags |\n|---|---:|---:|---:|---:|---:|---:|---|\n");
        for b in self.benign() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.3} % | {} | {} | {} |",
                b.pattern.name(),
                b.actors,
                b.requests,
                b.tagged,
                100.0 * b.tagged as f64 / b.requests.max(1) as f64,
                b.unhealthy,
                b.rate_limited,
                b.kinds.join(", "),
            );
        }
        let (n, t) = self.benign_totals();
        let _ = writeln!(
            out,
            "| **all benign** | | {n} | {t} | {:.3} % | | | |",
            100.0 * t as f64 / n.max(1) as f64
        );
        out.push_str("\nLegitimate requests each action policy would have refused:\n\n");
        out.push_str(
            "| anomaly action on the tag | `throttle` | `block` | `freeze` |\n|---|---:|---:|---:|\n",
        );
        let policies = self.policies();
        let (anomaly, fingerprint) = policies.split_at(policies.len() - 2);
        for row in anomaly.chunks(3) {
            let kind = row[0].policy.rsplit(' ').next().unwrap_or_default();
            let _ = writeln!(
                out,
                "| {kind} | {} | {} | {} |",
                row[0].refused, row[1].refused, row[2].refused
            );
        }
        out.push_str("\n| fingerprint policy | refused |\n|---|---:|\n");
        for p in fingerprint {
            let _ = writeln!(
                out,
                "| {} | {} |",
                p.policy.trim_start_matches("fingerprint "),
                p.refused
            );
        }
        out
    }
}

/// How long `block` and `throttle` hold a caller: `[anomaly.penalties]`'s default.
const HOLD: f64 = 600.0;

/// Requests of `run` a block on `tagged` refuses: the tagged one and the caller's
/// requests for [`HOLD`] after it.
fn replay_block(run: &[&Observed], tagged: impl Fn(&Observed) -> bool) -> usize {
    let mut until = f64::MIN;
    run.iter()
        .filter(|r| {
            if r.at < until {
                return true;
            }
            let hit = tagged(r);
            if hit {
                until = r.at + HOLD;
            }
            hit
        })
        .count()
}

/// Requests of `run` a throttle on `tagged` refuses: for [`HOLD`] after a tag the
/// caller gets the throttle tier's 10 requests a minute.
fn replay_throttle(run: &[&Observed], tagged: impl Fn(&Observed) -> bool) -> usize {
    let mut until = f64::MIN;
    let mut spent: Vec<f64> = Vec::new();
    run.iter()
        .filter(|r| {
            if tagged(r) {
                until = r.at + HOLD;
            }
            if r.at >= until {
                return false;
            }
            spent.retain(|t| r.at - t < 60.0);
            if spent.len() >= 10 {
                return true;
            }
            spent.push(r.at);
            false
        })
        .count()
}

/// The attacks whose actors are users before the attack starts (a burst, a theft).
fn is_owner_pattern(p: Pattern) -> bool {
    matches!(
        p,
        Pattern::Burst | Pattern::TokenSharing | Pattern::TokenSharingFive
    )
}

fn opt(v: Option<usize>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

const DESKTOP: [&str; 3] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
];
const MOBILE: [&str; 2] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
];
const TOOLS: [&str; 3] = ["python-requests/2.32.3", "curl/8.5.0", "Go-http-client/1.1"];

/// A /24 for each purpose: `n` numbers distinct networks.
fn network(n: u32) -> [u8; 3] {
    [
        81 + (n / 65_536 % 100) as u8,
        (n / 256 % 256) as u8,
        (n % 256) as u8,
    ]
}

fn host(net: [u8; 3], rng: &mut StdRng) -> Ipv4Addr {
    Ipv4Addr::new(net[0], net[1], net[2], rng.random_range(2..250))
}

/// Seconds from an exponential distribution with this mean.
fn exp(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

struct Shared {
    base: String,
    http: reqwest::Client,
    sent: Mutex<Vec<Sent>>,
    start: Instant,
    key: EncodingKey,
    issuer: String,
    audience: String,
    /// Users `/login` knows, as `(name, password)`.
    users: Vec<(String, String)>,
}

/// One actor's handle on the run.
struct Actor {
    shared: Arc<Shared>,
    id: u32,
    pattern: Pattern,
    rng: StdRng,
    seq: u32,
    attack: bool,
}

struct Call<'a> {
    method: reqwest::Method,
    path: String,
    ip: Ipv4Addr,
    ua: &'a str,
    token: Option<&'a str>,
    body: Option<Value>,
}

impl Actor {
    fn get<'a>(path: String, ip: Ipv4Addr, ua: &'a str, token: Option<&'a str>) -> Call<'a> {
        Call {
            method: reqwest::Method::GET,
            path,
            ip,
            ua,
            token,
            body: None,
        }
    }

    async fn send(&mut self, call: Call<'_>) -> u16 {
        self.seq += 1;
        let trace = format!("{:08x}{:08x}{:016x}", self.id, self.seq, self.rng.random::<u64>());
        let span: u64 = self.rng.random::<u64>() | 1;
        let mut req = self
            .shared
            .http
            .request(call.method, format!("{}{}", self.shared.base, call.path))
            .header("traceparent", format!("00-{trace}-{span:016x}-01"))
            .header("x-forwarded-for", call.ip.to_string())
            .header("user-agent", call.ua);
        if let Some(token) = call.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = call.body {
            req = req.json(&body);
        }
        let at = self.shared.start.elapsed().as_secs_f64();
        self.shared
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Sent {
                actor: self.id,
                pattern: self.pattern,
                attack: self.attack,
                at,
                trace,
            });
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                status
            }
            Err(_) => 0,
        }
    }

    async fn login(&mut self, ip: Ipv4Addr, ua: &str, name: &str, password: &str) -> u16 {
        self.send(Call {
            method: reqwest::Method::POST,
            path: "/login".into(),
            ip,
            ua,
            token: None,
            body: Some(json!({ "username": name, "password": password })),
        })
        .await
    }

    async fn pause(&mut self, mean: f64) {
        let s = exp(&mut self.rng, mean).min(mean * 6.0);
        tokio::time::sleep(Duration::from_secs_f64(s)).await;
    }

    fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// A token for `subject` on `plan`, as `/login` would have issued it earlier.
    fn token(&mut self, subject: &str, plan: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = json!({
            "sub": subject,
            "iss": self.shared.issuer,
            "aud": self.shared.audience,
            "iat": now - 600,
            "exp": now + 3_600,
            "jti": format!("{:032x}", self.rng.random::<u128>()),
            "plan": plan,
            "scope": "read:items",
        });
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("demo-hs256".into());
        jsonwebtoken::encode(&header, &claims, &self.shared.key).unwrap_or_default()
    }

    /// An ordinary user's next request: their profile, or one of their favourite items.
    fn ordinary_path(&mut self, favourites: &[u64]) -> String {
        if self.rng.random_bool(0.2) {
            "/v1/me".into()
        } else {
            // Favourites are seen again and again; now and then a new one.
            let id = if self.rng.random_bool(0.9) {
                favourites[self.rng.random_range(0..favourites.len())]
            } else {
                self.rng.random_range(1..=1_000)
            };
            format!("/v1/items/{id}")
        }
    }

    fn favourites(&mut self) -> Vec<u64> {
        (0..12).map(|_| self.rng.random_range(1..=1_000)).collect()
    }
}

/// A user behind a shared NAT (office or carrier): browses, and logs in again now
/// and then, mistyping sometimes.
async fn nat_user(mut a: Actor, net: [u8; 3], ua: &'static str, think: f64, until: Duration, user: usize) {
    let name = a.shared.users[user].0.clone();
    let password = a.shared.users[user].1.clone();
    let plan = if a.rng.random_bool(0.3) { "pro" } else { "free" };
    let token = a.token(&name, plan);
    let favourites = a.favourites();
    let relogin_at = a
        .rng
        .random_bool(0.25)
        .then(|| until.mul_f64(a.rng.random::<f64>()));
    let mut relogged = false;
    a.pause(think).await;
    while a.elapsed() < until {
        let ip = host(net, &mut a.rng);
        if !relogged && relogin_at.is_some_and(|t| a.elapsed() >= t) {
            relogged = true;
            if a.rng.random_bool(0.4) {
                let typo = format!("{password}x");
                a.login(ip, ua, &name, &typo).await;
                a.pause(4.0).await;
            }
            a.login(ip, ua, &name, &password).await;
        } else {
            let path = a.ordinary_path(&favourites);
            a.send(Actor::get(path, ip, ua, Some(&token))).await;
        }
        a.pause(think).await;
    }
}

/// A phone moving between home Wi-Fi and cellular: stays a while on each.
async fn phone(mut a: Actor, home: [u8; 3], carrier: [u8; 3], until: Duration) {
    let ua = MOBILE[a.rng.random_range(0..MOBILE.len())];
    let token = a.token(&format!("phone-{}@example.com", a.id), "free");
    let favourites = a.favourites();
    let mut on_wifi = a.rng.random_bool(0.5);
    let mut leave_at = exp(&mut a.rng, 40.0).max(8.0);
    let mut cellular_ip = host(carrier, &mut a.rng);
    while a.elapsed() < until {
        if a.elapsed().as_secs_f64() >= leave_at {
            on_wifi = !on_wifi;
            leave_at = a.elapsed().as_secs_f64() + exp(&mut a.rng, 40.0).max(8.0);
            cellular_ip = host(carrier, &mut a.rng);
        }
        let ip = if on_wifi {
            Ipv4Addr::new(home[0], home[1], home[2], 23)
        } else {
            cellular_ip
        };
        let path = a.ordinary_path(&favourites);
        a.send(Actor::get(path, ip, ua, Some(&token))).await;
        a.pause(4.0).await;
    }
}

/// A traveller: three places one after the other, a quiet trip between.
async fn traveller(mut a: Actor, places: [[u8; 3]; 3], until: Duration) {
    let ua = if a.rng.random_bool(0.5) {
        DESKTOP[0]
    } else {
        MOBILE[0]
    };
    let token = a.token(&format!("traveller-{}@example.com", a.id), "pro");
    let favourites = a.favourites();
    let leg = until / 3;
    for (i, place) in places.into_iter().enumerate() {
        let ip = host(place, &mut a.rng);
        let end = leg * (i as u32 + 1);
        while a.elapsed() < end.saturating_sub(Duration::from_secs(15)) {
            let path = a.ordinary_path(&favourites);
            a.send(Actor::get(path, ip, ua, Some(&token))).await;
            a.pause(5.0).await;
        }
        tokio::time::sleep(end.saturating_sub(a.elapsed())).await;
    }
}

/// One device of a user who has two (each with its own token).
async fn device(mut a: Actor, subject: String, net: [u8; 3], ua: &'static str, until: Duration) {
    let token = a.token(&subject, "free");
    let favourites = a.favourites();
    let ip = host(net, &mut a.rng);
    a.pause(5.0).await;
    while a.elapsed() < until {
        let path = a.ordinary_path(&favourites);
        a.send(Actor::get(path, ip, ua, Some(&token))).await;
        a.pause(7.0).await;
    }
}

/// An integration: polls its working set at a steady rate all run long.
async fn heavy_client(mut a: Actor, net: [u8; 3], per_second: f64, until: Duration) {
    let token = a.token(&format!("integration-{}@partner.example", a.id), "pro");
    let ip = host(net, &mut a.rng);
    let ua = "acme-sync/2.3 (+https://partner.example)";
    let set: Vec<u64> = (0..25).map(|_| a.rng.random_range(1..=1_000)).collect();
    let mut i = 0;
    while a.elapsed() < until {
        let path = if i % 10 == 0 {
            "/v1/me".to_string()
        } else {
            format!("/v1/items/{}", set[i % set.len()])
        };
        i += 1;
        a.send(Actor::get(path, ip, ua, Some(&token))).await;
        a.pause(1.0 / per_second).await;
    }
}

/// A shopper opening items in catalogue order, reading each, sometimes going back.
async fn scroller(mut a: Actor, net: [u8; 3], until: Duration) {
    let ua = DESKTOP[a.rng.random_range(0..DESKTOP.len())];
    let token = a.token(&format!("shopper-{}@example.com", a.id), "free");
    let ip = host(net, &mut a.rng);
    let mut id = a.rng.random_range(1..=900u64);
    while a.elapsed() < until {
        a.send(Actor::get(format!("/v1/items/{id}"), ip, ua, Some(&token)))
            .await;
        // Reading takes a few seconds, a long look now and then.
        let read: f64 = 5.0 * (0.6 * (a.rng.random::<f64>() * 2.0 - 1.0) * 1.7).exp();
        tokio::time::sleep(Duration::from_secs_f64(read.max(1.5))).await;
        id = if a.rng.random_bool(0.15) {
            id.saturating_sub(1).max(1)
        } else {
            id % 1_000 + 1
        };
    }
}

/// Credential stuffing from one /24: leaked names, one after another; backs off
/// for `Retry-After` when rate limited.
async fn stuffing_one(mut a: Actor, net: [u8; 3], attempts: u32) {
    a.attack = true;
    for i in 0..attempts {
        let ip = host(net, &mut a.rng);
        let ua = TOOLS[i as usize % TOOLS.len()];
        let name = format!("leak{}-{}@mail.example", a.id, i);
        let password: String = format!("{:x}", a.rng.random::<u64>());
        let status = a.login(ip, ua, &name, &password).await;
        let wait = if status == 429 {
            12.0
        } else {
            1.0 + a.rng.random::<f64>()
        };
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

/// Credential stuffing spread over `nets`, an attempt every 5 s from each, each
/// network backing off for 12 s when rate limited.
async fn stuffing_spread(mut a: Actor, nets: Vec<[u8; 3]>, attempts: u32) {
    a.attack = true;
    let mut next: Vec<f64> = (0..nets.len())
        .map(|i| 5.0 * i as f64 / nets.len() as f64)
        .collect();
    let start = a.elapsed().as_secs_f64();
    for i in 0..attempts {
        let (n, at) = next
            .iter()
            .copied()
            .enumerate()
            .min_by(|x, y| x.1.total_cmp(&y.1))
            .unwrap_or((0, 0.0));
        let now = a.elapsed().as_secs_f64() - start;
        if at > now {
            tokio::time::sleep(Duration::from_secs_f64(at - now)).await;
        }
        let ip = host(nets[n], &mut a.rng);
        let name = format!("spray{}-{}@mail.example", a.id, i);
        let status = a.login(ip, TOOLS[n % TOOLS.len()], &name, "Summer2026!").await;
        next[n] = at + if status == 429 { 12.0 } else { 5.0 };
    }
}

/// A logged-in user walking object ids from `from`, `per_second`.
async fn walker(mut a: Actor, net: [u8; 3], from: u64, per_second: f64, ids: u64) {
    let token = a.token(&format!("walker-{}@example.com", a.id), "free");
    let ip = host(net, &mut a.rng);
    a.attack = true;
    for id in from..from + ids {
        a.send(Actor::get(format!("/v1/items/{id}"), ip, TOOLS[0], Some(&token)))
            .await;
        tokio::time::sleep(Duration::from_secs_f64(1.0 / per_second)).await;
    }
}

/// A user at their own steady pace who then goes 20 times faster.
async fn burst(mut a: Actor, net: [u8; 3], pace: f64, steady: Duration, requests: u32) {
    let token = a.token(&format!("burst-{}@example.com", a.id), "free");
    let ua = DESKTOP[0];
    let ip = host(net, &mut a.rng);
    let favourites = a.favourites();
    let start = a.elapsed();
    while a.elapsed() < start + steady {
        let path = a.ordinary_path(&favourites);
        a.send(Actor::get(path, ip, ua, Some(&token))).await;
        a.pause(1.0 / pace).await;
    }
    a.attack = true;
    for _ in 0..requests {
        let path = a.ordinary_path(&favourites);
        a.send(Actor::get(path, ip, ua, Some(&token))).await;
        a.pause(1.0 / (20.0 * pace)).await;
    }
}

/// A token used by its owner, then also by thieves from `thieves` networks.
async fn shared_token(mut a: Actor, home: [u8; 3], thieves: Vec<[u8; 3]>, alone: Duration, requests: u32) {
    let token = a.token(&format!("victim-{}@example.com", a.id), "free");
    let owner_ua = MOBILE[0];
    let owner_ip = host(home, &mut a.rng);
    let favourites = a.favourites();
    let start = a.elapsed();
    while a.elapsed() < start + alone {
        let path = a.ordinary_path(&favourites);
        a.send(Actor::get(path, owner_ip, owner_ua, Some(&token))).await;
        a.pause(3.0).await;
    }
    // From now on the owner and the thieves take turns as their requests come.
    a.attack = true;
    let thief_ips: Vec<Ipv4Addr> = thieves.iter().map(|n| host(*n, &mut a.rng)).collect();
    for i in 0..requests {
        let k = i as usize % (thief_ips.len() + 1);
        let (ip, ua) = if k == 0 {
            (owner_ip, owner_ua)
        } else {
            (thief_ips[k - 1], DESKTOP[1])
        };
        let path = a.ordinary_path(&favourites);
        a.send(Actor::get(path, ip, ua, Some(&token))).await;
        a.pause(1.5).await;
    }
}

/// The demo gateway built beside the running binary (`target/<profile>/examples/gateway`).
pub fn default_gateway() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // A test binary sits in `deps/`, a bin in the profile directory.
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("examples").join("gateway")
}

/// A free loopback port.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The gateway's configuration for the run: the demo's, with the evaluation's users.
fn write_config(
    options: &LiveOptions,
    users: &[(String, String)],
    dir: &Path,
) -> Result<(PathBuf, toml::Table), String> {
    let text =
        std::fs::read_to_string(&options.config).map_err(|e| format!("{}: {e}", options.config.display()))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
    let gateway = table
        .get_mut("gateway")
        .and_then(|g| g.as_table_mut())
        .ok_or("the config has no [gateway] section")?;
    let list = gateway
        .entry("users")
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or("[gateway] users is not a list")?;
    for (name, password) in users {
        let mut u = toml::Table::new();
        u.insert("username".into(), name.clone().into());
        u.insert("password".into(), password.clone().into());
        u.insert("plan".into(), "free".into());
        list.push(u.into());
    }
    let path = dir.join("live-gateway.toml");
    std::fs::write(&path, toml::to_string(&table).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok((path, table))
}

struct Gateway {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    fn start(binary: &Path, config: &Path, addr: SocketAddr) -> Result<Self, String> {
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .arg("--addr")
            .arg(addr.to_string())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Ok(Gateway {
            child,
            lines,
            reader: Some(reader),
        })
    }

    /// Stops the gateway with SIGINT (it flushes its log batches) and returns every line.
    fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// What the log lines say, by trace id.
fn parse_lines(lines: &[String]) -> HashMap<String, Seen> {
    let mut out = HashMap::new();
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let span = &v["span"];
        let Some(trace) = span["trace_id"].as_str() else {
            continue;
        };
        let tags = span["anomaly"]
            .as_str()
            .map(|a| {
                a.split(';')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|t| t.split(':').next())
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            trace.to_string(),
            Seen {
                tags,
                health: span["session.health"].as_str().map(str::to_string),
                status: span["http.status"].as_u64().unwrap_or(0) as u16,
            },
        );
    }
    out
}

/// The gateways of one run. Each stuffing attack gets a gateway of its own: its
/// API-wide signals (the failed-login rate, the accounts failing) would otherwise
/// see the other attacks, and a campaign already on would flatter the next one.
#[derive(Clone, Copy, Debug)]
enum World {
    /// The whole benign mix, stuffing from one /24, enumeration, bursts, theft.
    Main,
    /// Offices and carrier NATs (where honest failed logins come from), and one
    /// stuffing attack: from one /24, or spread over this many /24s.
    Stuffing(Option<usize>),
}

/// Runs the evaluation once.
pub async fn run(options: &LiveOptions) -> Result<LiveReport, String> {
    let worlds = [
        World::Main,
        World::Stuffing(None),
        World::Stuffing(Some(8)),
        World::Stuffing(Some(16)),
    ];
    let runs = worlds
        .into_iter()
        .enumerate()
        .map(|(i, world)| run_world(options, i as u32, world));
    let mut requests = Vec::new();
    let mut unmatched_lines = 0;
    for result in futures_util::future::join_all(runs).await {
        let (r, u) = result?;
        requests.extend(r);
        unmatched_lines += u;
    }
    requests.sort_by(|a: &Observed, b: &Observed| a.at.total_cmp(&b.at));
    Ok(LiveReport {
        requests,
        seed: options.seed,
        unmatched_lines,
    })
}

/// Runs one gateway and its actors.
async fn run_world(
    options: &LiveOptions,
    index: u32,
    world: World,
) -> Result<(Vec<Observed>, usize), String> {
    let mut rng = StdRng::seed_from_u64(options.seed ^ u64::from(index) << 32);
    let users: Vec<(String, String)> = (0..60)
        .map(|i| {
            (
                format!("user{i}@example.com"),
                format!("pw-{:x}", rng.random::<u64>()),
            )
        })
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "tollgate-live-{}-{}-{index}",
        std::process::id(),
        options.seed
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (config, table) = write_config(options, &users, &dir)?;
    let gateway_section = table
        .get("gateway")
        .and_then(|g| g.as_table())
        .ok_or("no [gateway]")?;
    let secret = gateway_section
        .get("login_secret_hex")
        .and_then(|s| s.as_str())
        .ok_or("[gateway] login_secret_hex is needed to issue the users' tokens")?;
    let secret = hex::decode(secret).map_err(|e| e.to_string())?;
    let text = |k: &str| {
        gateway_section
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().map_err(|e| e.to_string())?));
    let gateway = Gateway::start(&options.gateway, &config, addr)?;
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err("the gateway did not answer /health within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let shared = Arc::new(Shared {
        base,
        http,
        sent: Mutex::new(Vec::new()),
        start: Instant::now(),
        key: EncodingKey::from_secret(&secret),
        issuer: text("issuer"),
        audience: text("audience"),
        users,
    });
    let until = options.duration;
    let mut next_id = index * 100_000;
    let mut actor = |pattern: Pattern| {
        next_id += 1;
        Actor {
            shared: Arc::clone(&shared),
            id: next_id,
            pattern,
            rng: StdRng::seed_from_u64(
                options
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(u64::from(next_id)),
            ),
            seq: 0,
            attack: false,
        }
    };
    let mut nets = index * 1_000;
    let mut net = || {
        nets += 1;
        network(nets)
    };
    let mut tasks = tokio::task::JoinSet::new();
    let office = net();
    for u in 0..12 {
        let a = actor(Pattern::OfficeNat);
        tasks.spawn(nat_user(a, office, DESKTOP[u % DESKTOP.len()], 6.0, until, u));
    }
    let carrier = net();
    for u in 12..48 {
        let a = actor(Pattern::CarrierNat);
        tasks.spawn(nat_user(a, carrier, MOBILE[u % MOBILE.len()], 8.0, until, u));
    }
    let later = |secs: u64, f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        f.await;
    };
    match world {
        World::Stuffing(None) => {
            let a = actor(Pattern::StuffingOneNetwork);
            tasks.spawn(later(30, Box::pin(stuffing_one(a, net(), 25))));
        }
        World::Stuffing(Some(networks)) => {
            let a = actor(Pattern::StuffingSpread);
            let spread: Vec<_> = (0..networks).map(|_| net()).collect();
            tasks.spawn(later(60, Box::pin(stuffing_spread(a, spread, 80))));
        }
        World::Main => {
            let cellular = net();
            for _ in 0..8 {
                let a = actor(Pattern::WifiCellularPhone);
                let home = net();
                tasks.spawn(phone(a, home, cellular, until));
            }
            for _ in 0..4 {
                let a = actor(Pattern::Traveller);
                let places = [net(), net(), net()];
                tasks.spawn(traveller(a, places, until));
            }
            for u in 0..6 {
                let subject = format!("two-devices-{u}@example.com");
                let (home, mobile) = (net(), net());
                let a = actor(Pattern::TwoDevices);
                tasks.spawn(device(a, subject.clone(), home, DESKTOP[1], until));
                let a = actor(Pattern::TwoDevices);
                tasks.spawn(device(a, subject, mobile, MOBILE[1], until));
            }
            let datacenter = net();
            for _ in 0..2 {
                let a = actor(Pattern::HeavyClient);
                tasks.spawn(heavy_client(a, datacenter, 6.0, until));
            }
            for _ in 0..6 {
                let a = actor(Pattern::CatalogueScroller);
                let home = net();
                tasks.spawn(scroller(a, home, until));
            }
            // Attacks, starting once the benign traffic is under way.
            let a = actor(Pattern::StuffingOneNetwork);
            tasks.spawn(later(20, Box::pin(stuffing_one(a, net(), 25))));
            for i in 0..3u64 {
                let a = actor(Pattern::Enumeration);
                let walk = walker(a, net(), 100 + 250 * i, 1.0 + i as f64, 60);
                tasks.spawn(later(25 + 20 * i, Box::pin(walk)));
            }
            let a = actor(Pattern::EnumerationPastRange);
            tasks.spawn(later(40, Box::pin(walker(a, net(), 985, 1.0, 60))));
            for (i, pace) in [0.3, 0.5, 1.0].into_iter().enumerate() {
                let a = actor(Pattern::Burst);
                let jump = burst(a, net(), pace, Duration::from_secs(70), 60);
                tasks.spawn(later(10 + 15 * i as u64, Box::pin(jump)));
            }
            for i in 0..3u64 {
                let a = actor(Pattern::TokenSharing);
                let theft = shared_token(a, net(), vec![net()], Duration::from_secs(40), 30);
                tasks.spawn(later(10 + 15 * i, Box::pin(theft)));
            }
            let a = actor(Pattern::TokenSharingFive);
            let thieves: Vec<_> = (0..4).map(|_| net()).collect();
            tasks.spawn(later(
                30,
                Box::pin(shared_token(a, net(), thieves, Duration::from_secs(30), 30)),
            ));
        }
    }
    while tasks.join_next().await.is_some() {}

    // The gateway writes its log lines in batches: let the last one go out.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let lines = gateway.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let seen = parse_lines(&lines);
    let sent = std::mem::take(&mut *shared.sent.lock().unwrap_or_else(|e| e.into_inner()));
    let matched: std::collections::HashSet<&str> = sent.iter().map(|s| s.trace.as_str()).collect();
    let unmatched_lines = seen.keys().filter(|t| !matched.contains(t.as_str())).count();
    let requests = sent
        .into_iter()
        .map(|s| Observed {
            actor: s.actor,
            pattern: s.pattern,
            attack: s.attack,
            at: s.at,
            seen: seen.get(&s.trace).cloned(),
        })
        .collect();
    Ok((requests, unmatched_lines))
}
