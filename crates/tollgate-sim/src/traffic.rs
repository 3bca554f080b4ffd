//! Labelled traffic: users, sessions, batch jobs and attacks as timed requests.
//!
//! Everything is drawn from one seeded `StdRng`, so a seed gives the same traffic.

use std::net::Ipv4Addr;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::scenario::{Label, Scenario};

const SEC: u64 = 1_000_000_000;

/// Browser user agents of ordinary users.
pub const BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
];
/// Mobile user agents.
pub const MOBILE: &[&str] = &[
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
];
const BATCH_UA: &str = "acme-sync/2.1 (python-requests/2.31)";
const SCRIPT_UAS: &[&str] = &["python-requests/2.31.0", "curl/8.5.0", "Go-http-client/1.1"];

/// An HTTP method the simulator uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
}

/// One request, before it becomes an `http::Request`.
#[derive(Clone, Debug)]
pub struct Req {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// The client address.
    pub ip: Ipv4Addr,
    /// The user agent.
    pub ua: &'static str,
    /// The API key sent in `x-api-key`.
    pub key: Option<Arc<str>>,
    /// A login form: user name and password.
    pub login: Option<(Arc<str>, Arc<str>)>,
}

/// A request at a time, from an actor.
#[derive(Clone, Debug)]
pub struct Event {
    /// Nanoseconds since the start of the run.
    pub t: u64,
    /// The actor's index in [`World::actors`].
    pub actor: u32,
    /// The request.
    pub req: Req,
}

/// One actor with its ground truth.
#[derive(Clone, Debug)]
pub struct Actor {
    /// What it is.
    pub label: Label,
    /// For normal sessions: the user, whose credential may have been stolen.
    pub user: Option<u32>,
}

/// A registered account.
#[derive(Clone, Debug)]
pub struct Account {
    /// The login name (also the API key's subject).
    pub name: Arc<str>,
    /// The password.
    pub password: Arc<str>,
    /// `free` or `pro`.
    pub tier: &'static str,
    /// Order ids this account owns.
    pub orders: [u32; 3],
}

/// A credential: an API key issued to an account (one per login for ordinary users,
/// one per integration or attacker account).
#[derive(Clone, Debug)]
pub struct Credential {
    /// The key's id.
    pub id: String,
    /// The key.
    pub key: Arc<str>,
    /// The account it belongs to.
    pub account: u32,
}

/// The generated world.
#[derive(Debug)]
pub struct World {
    /// Every account (ordinary users first, then integrations and attackers' own accounts).
    pub accounts: Vec<Account>,
    /// Every credential issued.
    pub credentials: Vec<Credential>,
    /// Actors with their labels.
    pub actors: Vec<Actor>,
    /// Per actor: a normal session whose token an attacker replayed (not counted as
    /// normal: tagging it is right).
    pub compromised: Vec<bool>,
    /// Requests, sorted by time.
    pub events: Vec<Event>,
    /// The simulated span in nanoseconds.
    pub span: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Start,
    Search,
    Item,
    Reviews,
    Cart,
    Checkout,
    Account,
    Export,
    Orders,
    Order,
    End,
}

/// The ordinary user's next step: a small Markov chain with realistic variety.
fn next_route(rng: &mut StdRng, r: Route) -> Route {
    use Route::*;
    let table: &[(Route, f64)] = match r {
        Start => &[(Search, 0.55), (Item, 0.25), (Account, 0.1), (Orders, 0.1)],
        Search => &[
            (Item, 0.65),
            (Search, 0.2),
            (Cart, 0.03),
            (Account, 0.04),
            (End, 0.08),
        ],
        Item => &[
            (Reviews, 0.2),
            (Item, 0.25),
            (Search, 0.3),
            (Cart, 0.15),
            (End, 0.1),
        ],
        Reviews => &[(Item, 0.5), (Search, 0.35), (Cart, 0.1), (End, 0.05)],
        Cart => &[(Checkout, 0.45), (Search, 0.3), (Item, 0.2), (End, 0.05)],
        Checkout => &[(Orders, 0.5), (Search, 0.2), (Account, 0.1), (End, 0.2)],
        Account => &[(Export, 0.04), (Orders, 0.4), (Search, 0.4), (End, 0.16)],
        Export => &[(Account, 0.5), (Search, 0.2), (End, 0.3)],
        Orders => &[(Order, 0.6), (Search, 0.25), (End, 0.15)],
        Order => &[
            (Orders, 0.3),
            (Search, 0.3),
            (Account, 0.2),
            (Order, 0.05),
            (End, 0.15),
        ],
        End => &[(End, 1.0)],
    };
    let mut u: f64 = rng.random();
    for (route, p) in table {
        if u < *p {
            return *route;
        }
        u -= p;
    }
    table[table.len() - 1].0
}

fn exp(rng: &mut StdRng, mean: f64) -> f64 {
    let u: f64 = rng.random();
    -mean * (1.0 - u).ln()
}

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn lognormal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

fn secs(s: f64) -> u64 {
    (s.max(0.0) * SEC as f64) as u64
}

/// Traffic intensity by hour of day: lowest at 04:00, highest at 16:00.
fn diurnal(hour: f64) -> f64 {
    let x = (std::f64::consts::PI * (hour - 4.0) / 24.0).sin();
    0.15 + 0.85 * x * x
}

fn diurnal_time(rng: &mut StdRng, span: u64) -> u64 {
    loop {
        let t = rng.random_range(0..span);
        let hour = (t / SEC) as f64 / 3600.0 % 24.0;
        if rng.random::<f64>() < diurnal(hour) {
            return t;
        }
    }
}

fn ip(prefix: u32, host: u8) -> Ipv4Addr {
    Ipv4Addr::from((prefix << 8) | u32::from(host))
}

/// /24 prefixes, as the top 24 bits of an address, by kind of network.
fn residential(i: u32) -> u32 {
    (1 << 16) | i // 1.x.y.0/24
}
fn corporate(i: u32) -> u32 {
    (20 << 16) | i
}
fn carrier(i: u32) -> u32 {
    (30 << 16) | i
}
fn datacenter(i: u32) -> u32 {
    (40 << 16) | i
}
fn hostile(i: u32) -> u32 {
    (45 << 16) | i
}

const CARRIER_PREFIXES: u32 = 24;

struct Session {
    actor: u32,
    times: Vec<u64>,
    key: Arc<str>,
}

struct UserProfile {
    home: u32,
    home_host: u8,
    mobile: bool,
    ua: &'static str,
}

struct Gen<'a> {
    rng: StdRng,
    s: &'a Scenario,
    span: u64,
    accounts: Vec<Account>,
    credentials: Vec<Credential>,
    actors: Vec<Actor>,
    events: Vec<Event>,
    compromised: Vec<u32>,
    hostile_next: u32,
}

impl Gen<'_> {
    fn actor(&mut self, label: Label, user: Option<u32>) -> u32 {
        self.actors.push(Actor { label, user });
        (self.actors.len() - 1) as u32
    }

    fn push(&mut self, t: u64, actor: u32, req: Req) {
        if t < self.span {
            self.events.push(Event { t, actor, req });
        }
    }

    /// Issues a new API key to `account` (what a successful login hands out).
    fn issue(&mut self, account: u32) -> Arc<str> {
        let secret: u128 = self.rng.random();
        let key: Arc<str> = format!("tgk_{secret:032x}").into();
        self.credentials.push(Credential {
            id: format!("key-{}", self.credentials.len()),
            key: key.clone(),
            account,
        });
        key
    }

    fn account(&mut self, name: String, tier: &'static str) -> u32 {
        let i = self.accounts.len() as u32;
        let pw: u64 = self.rng.random();
        self.accounts.push(Account {
            name: name.into(),
            password: format!("pw-{pw:016x}").into(),
            tier,
            orders: [100_000 + i * 8, 100_000 + i * 8 + 1, 100_000 + i * 8 + 2],
        });
        i
    }

    fn hostile_prefix(&mut self) -> u32 {
        self.hostile_next += 1;
        hostile(self.hostile_next)
    }

    fn item_id(&mut self) -> u32 {
        // Popular items first: a steep power law over the catalogue.
        let u: f64 = self.rng.random();
        ((self.s.catalogue as f64) * u.powi(3)) as u32
    }

    fn get(&self, path: String, ip: Ipv4Addr, ua: &'static str, key: &Arc<str>) -> Req {
        Req {
            method: Method::Get,
            path,
            ip,
            ua,
            key: Some(key.clone()),
            login: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn route_req(
        &mut self,
        route: Route,
        user: u32,
        key: &Arc<str>,
        last_item: &mut u32,
        ip: Ipv4Addr,
        ua: &'static str,
    ) -> Req {
        let key = key.clone();
        let orders = self.accounts[user as usize].orders;
        let (method, path) = match route {
            Route::Search => (
                Method::Get,
                format!("/v1/search?q=t{}", self.rng.random_range(0..500)),
            ),
            Route::Item => {
                *last_item = if self.rng.random::<f64>() < 0.25 {
                    *last_item
                } else {
                    self.item_id()
                };
                (Method::Get, format!("/v1/items/{last_item}"))
            }
            Route::Reviews => (Method::Get, format!("/v1/items/{last_item}/reviews")),
            Route::Cart => (Method::Post, "/v1/cart/items".to_string()),
            Route::Checkout => (Method::Post, "/v1/checkout".to_string()),
            Route::Account => (Method::Get, "/v1/account".to_string()),
            Route::Export => (Method::Get, "/v1/account/export".to_string()),
            Route::Orders => (Method::Get, "/v1/orders?page=1".to_string()),
            Route::Order => (
                Method::Get,
                format!("/v1/orders/{}", orders[self.rng.random_range(0..3)]),
            ),
            Route::Start | Route::End => unreachable!("not a request"),
        };
        Req {
            method,
            path,
            ip,
            ua,
            key: Some(key),
            login: None,
        }
    }

    fn login(&self, user: u32, good: bool, ip: Ipv4Addr, ua: &'static str) -> Req {
        let a = &self.accounts[user as usize];
        Req {
            method: Method::Post,
            path: "/v1/login".into(),
            ip,
            ua,
            key: None,
            login: Some((
                a.name.clone(),
                if good {
                    a.password.clone()
                } else {
                    "wrong-password".into()
                },
            )),
        }
    }

    /// One session of an ordinary user; returns the times of its requests and its key.
    fn session(&mut self, user: u32, profile: &UserProfile, start: u64) -> (Vec<u64>, Arc<str>) {
        let actor = self.actor(Label::Normal, Some(user));
        let mut t = start;
        let carrier_prefix = carrier(self.rng.random_range(0..CARRIER_PREFIXES));
        let on_carrier = profile.mobile && self.rng.random::<f64>() < 0.5;
        let mut net = if on_carrier { carrier_prefix } else { profile.home };
        let host = |rng: &mut StdRng, net: u32| {
            if net == profile.home {
                profile.home_host
            } else {
                rng.random_range(1..255)
            }
        };
        let h = host(&mut self.rng, net);
        if self.rng.random::<f64>() < 0.04 {
            let req = self.login(user, false, ip(net, h), profile.ua);
            self.push(t, actor, req);
            t += secs(lognormal(&mut self.rng, 6.0, 0.5));
        }
        let req = self.login(user, true, ip(net, h), profile.ua);
        self.push(t, actor, req);
        let key = self.issue(user);
        let mut times = vec![t];
        t += secs(lognormal(&mut self.rng, 2.0, 0.5));
        let mut route = Route::Start;
        let mut last_item = self.item_id();
        // Mobile users may move between their home network and the carrier, once or
        // twice, minutes apart.
        let mut switches_left = if profile.mobile {
            self.rng.random_range(0..3u32)
        } else {
            0
        };
        let mut next_switch = t + secs(exp(&mut self.rng, 240.0));
        for _ in 0..200 {
            route = next_route(&mut self.rng, route);
            if route == Route::End {
                break;
            }
            if switches_left > 0 && t >= next_switch {
                net = if net == profile.home {
                    carrier_prefix
                } else {
                    profile.home
                };
                switches_left -= 1;
                next_switch = t + secs(120.0 + exp(&mut self.rng, 300.0));
            }
            let h = host(&mut self.rng, net);
            let req = self.route_req(route, user, &key, &mut last_item, ip(net, h), profile.ua);
            self.push(t, actor, req);
            times.push(t);
            t += secs(lognormal(&mut self.rng, 5.0, 0.9).min(600.0));
        }
        (times, key)
    }

    fn users(&mut self) -> Vec<Session> {
        let s = self.s.clone();
        let corporate_prefixes = (s.users / 15).max(1);
        let mut sessions = Vec::new();
        for i in 0..s.users {
            let tier = if self.rng.random::<f64>() < 0.15 {
                "pro"
            } else {
                "free"
            };
            let user = self.account(format!("user{i}@example.com"), tier);
            let mobile = self.rng.random::<f64>() < 0.35;
            let home = if self.rng.random::<f64>() < 0.15 {
                corporate(self.rng.random_range(0..corporate_prefixes))
            } else {
                residential(i)
            };
            let profile = UserProfile {
                home,
                home_host: self.rng.random_range(1..255),
                mobile,
                ua: if mobile {
                    MOBILE[self.rng.random_range(0..MOBILE.len())]
                } else {
                    BROWSERS[self.rng.random_range(0..BROWSERS.len())]
                },
            };
            let per_day =
                1.0 + f64::from(self.rng.random::<f64>() < 0.4) + f64::from(self.rng.random::<f64>() < 0.15);
            let n = (per_day * f64::from(s.hours) / 24.0).round().max(1.0) as u32;
            for _ in 0..n {
                let start = diurnal_time(&mut self.rng, self.span);
                let actor = self.actors.len() as u32;
                let (times, key) = self.session(user, &profile, start);
                sessions.push(Session { actor, times, key });
            }
        }
        sessions
    }

    fn batch_jobs(&mut self) {
        for j in 0..self.s.batch_jobs {
            let acct = self.account(format!("svc-sync-{j}"), "pro");
            let actor = self.actor(Label::Batch, None);
            let key = self.issue(acct);
            let net = datacenter(j);
            let rate = self.rng.random_range(2.0..8.0);
            let duration = self.rng.random_range(120.0..600.0);
            let start = self
                .rng
                .random_range(0..self.span.saturating_sub(secs(duration)).max(1));
            let n = (rate * duration) as u64;
            for k in 0..n {
                let t = start + secs(k as f64 / rate);
                let path = if k % 5 == 4 {
                    format!("/v1/search?q=sku-{k}")
                } else {
                    format!("/v1/orders?page={}", k + 1)
                };
                let req = self.get(path, ip(net, 10), BATCH_UA, &key);
                self.push(t, actor, req);
            }
        }
    }

    fn stuffing(&mut self) {
        let users = self.s.users;
        for _ in 0..self.s.stuffing {
            let actor = self.actor(Label::Stuffing, None);
            let net = self.hostile_prefix();
            let hosts: Vec<u8> = (0..self.rng.random_range(1..4))
                .map(|_| self.rng.random_range(1..255))
                .collect();
            let n = self.rng.random_range(60..400u32);
            let mean_gap = self.rng.random_range(0.5..3.0);
            let api_keys = self.rng.random::<f64>() < 0.3;
            let mut t = self
                .rng
                .random_range(0..self.span.saturating_sub(secs(n as f64 * mean_gap)).max(1));
            for _ in 0..n {
                let ua = BROWSERS[self.rng.random_range(0..BROWSERS.len())];
                let addr = ip(net, hosts[self.rng.random_range(0..hosts.len())]);
                if api_keys {
                    let guess: u128 = self.rng.random();
                    let key: Arc<str> = format!("tgk_{guess:032x}").into();
                    let req = self.get("/v1/account".into(), addr, ua, &key);
                    self.push(t, actor, req);
                } else {
                    let victim = self.rng.random_range(0..users);
                    let hit = self.rng.random::<f64>() < 0.01;
                    let req = if self.rng.random::<f64>() < 0.4 && !hit {
                        Req {
                            method: Method::Post,
                            path: "/v1/login".into(),
                            ip: addr,
                            ua,
                            key: None,
                            login: Some((
                                format!("nobody{}@example.com", self.rng.random::<u32>()).into(),
                                "123456".into(),
                            )),
                        }
                    } else {
                        self.login(victim, hit, addr, ua)
                    };
                    self.push(t, actor, req);
                    if hit {
                        // The reused password worked: log in and take what the account holds.
                        let key = self.issue(victim);
                        for path in ["/v1/account", "/v1/orders?page=1", "/v1/account/export"] {
                            t += secs(self.rng.random_range(1.0..4.0));
                            let req = self.get(path.into(), addr, ua, &key);
                            self.push(t, actor, req);
                        }
                    }
                }
                t += secs(exp(&mut self.rng, mean_gap));
            }
        }
    }

    fn enumeration(&mut self) {
        let orders_space = 100_000 + self.accounts.len() as u32 * 8;
        for j in 0..self.s.enumeration {
            let acct = self.account(format!("enum{j}@mail.example"), "free");
            let actor = self.actor(Label::Enumeration, None);
            let key = self.issue(acct);
            let net = self.hostile_prefix();
            let ua = BROWSERS[self.rng.random_range(0..BROWSERS.len())];
            let n = self.rng.random_range(60..300u32);
            let gap = self.rng.random_range(0.5..4.0);
            let mut t = self
                .rng
                .random_range(0..self.span.saturating_sub(secs(f64::from(n) * gap)).max(1));
            let req = self.get("/v1/orders?page=1".into(), ip(net, 7), ua, &key);
            self.push(t, actor, req);
            let mut id = self.rng.random_range(100_000..orders_space);
            let step = if self.rng.random::<f64>() < 0.5 { 1 } else { 8 };
            for _ in 0..n {
                t += secs(gap * self.rng.random_range(0.5..1.5));
                let req = self.get(format!("/v1/orders/{id}"), ip(net, 7), ua, &key);
                self.push(t, actor, req);
                id += step;
            }
        }
    }

    /// Stolen API keys replayed from another network. `while_active`: the owner makes
    /// at least four more requests after the replay starts (concurrent use); otherwise
    /// the replay starts 2 to 20 minutes after the owner's last request.
    fn token_theft(&mut self, sessions: &[Session], count: u32, label: Label, while_active: bool) {
        let candidates: Vec<_> = sessions.iter().filter(|s| s.times.len() >= 12).collect();
        for _ in 0..count {
            if candidates.is_empty() {
                break;
            }
            let victim = candidates[self.rng.random_range(0..candidates.len())];
            let times = &victim.times;
            let user = self.actors[victim.actor as usize].user.expect("a user session");
            self.compromised.push(victim.actor);
            let actor = self.actor(label, None);
            let key = victim.key.clone();
            let orders = self.accounts[user as usize].orders;
            let net = self.hostile_prefix();
            let ua = if self.rng.random::<f64>() < 0.5 {
                SCRIPT_UAS[self.rng.random_range(0..SCRIPT_UAS.len())]
            } else {
                BROWSERS[self.rng.random_range(0..BROWSERS.len())]
            };
            let mut t = if while_active {
                self.rng.random_range(times[1]..times[times.len() - 5])
            } else {
                times[times.len() - 1] + secs(self.rng.random_range(120.0..1200.0))
            };
            let n = self.rng.random_range(8..30u32);
            for k in 0..n {
                let path = match k % 5 {
                    0 => "/v1/account".to_string(),
                    1 => "/v1/account/export".to_string(),
                    2 => "/v1/orders?page=1".to_string(),
                    3 => format!("/v1/orders/{}", orders[self.rng.random_range(0..3)]),
                    _ => format!("/v1/search?q=t{}", self.rng.random_range(0..500)),
                };
                let req = self.get(path, ip(net, 99), ua, &key);
                self.push(t, actor, req);
                t += secs(self.rng.random_range(2.0..15.0));
            }
        }
    }

    fn scrape_burst(&mut self) {
        for j in 0..self.s.scrape_burst {
            let tier = if self.rng.random::<f64>() < 0.2 {
                "pro"
            } else {
                "free"
            };
            let acct = self.account(format!("scraper{j}@mail.example"), tier);
            let actor = self.actor(Label::ScrapeBurst, None);
            let key = self.issue(acct);
            let net = self.hostile_prefix();
            let ua = SCRIPT_UAS[self.rng.random_range(0..SCRIPT_UAS.len())];
            let rate = self.rng.random_range(5.0..25.0);
            let duration = self.rng.random_range(60.0..300.0);
            let start = self
                .rng
                .random_range(0..self.span.saturating_sub(secs(duration)).max(1));
            let sequential = self.rng.random::<f64>() < 0.5;
            let mut id = self.rng.random_range(0..self.s.catalogue);
            for k in 0..(rate * duration) as u64 {
                let t = start + secs(k as f64 / rate);
                let path = if self.rng.random::<f64>() < 0.05 {
                    format!("/v1/search?q=t{}", self.rng.random_range(0..500))
                } else {
                    id = if sequential {
                        (id + 1) % self.s.catalogue
                    } else {
                        self.rng.random_range(0..self.s.catalogue)
                    };
                    format!("/v1/items/{id}")
                };
                let req = self.get(path, ip(net, 3), ua, &key);
                self.push(t, actor, req);
            }
        }
    }

    fn slow_scrape(&mut self) {
        for j in 0..self.s.slow_scrape {
            let acct = self.account(format!("slow{j}@mail.example"), "free");
            let actor = self.actor(Label::SlowScrape, None);
            let key = self.issue(acct);
            let net = self.hostile_prefix();
            let ua = BROWSERS[self.rng.random_range(0..BROWSERS.len())];
            let gap = self.rng.random_range(15.0..60.0);
            let duration = self
                .rng
                .random_range(2.0..6.0f64)
                .min(f64::from(self.s.hours) * 0.9)
                * 3600.0;
            let mut t = self
                .rng
                .random_range(0..self.span.saturating_sub(secs(duration)).max(1));
            let end = t + secs(duration);
            while t < end {
                let path = if self.rng.random::<f64>() < 0.1 {
                    format!("/v1/search?q=t{}", self.rng.random_range(0..500))
                } else {
                    format!("/v1/items/{}", self.rng.random_range(0..self.s.catalogue))
                };
                let req = self.get(path, ip(net, 200), ua, &key);
                self.push(t, actor, req);
                t += secs(gap * self.rng.random_range(0.6..1.4));
            }
        }
    }
}

/// Generates the world of `scenario` from `seed`.
pub fn generate(scenario: &Scenario, seed: u64) -> World {
    let span = u64::from(scenario.hours) * 3600 * SEC;
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        s: scenario,
        span,
        accounts: Vec::new(),
        credentials: Vec::new(),
        actors: Vec::new(),
        events: Vec::new(),
        compromised: Vec::new(),
        hostile_next: 0,
    };
    let sessions = g.users();
    g.batch_jobs();
    g.stuffing();
    g.enumeration();
    g.token_theft(&sessions, scenario.token_theft, Label::TokenTheft, true);
    g.scrape_burst();
    g.slow_scrape();
    g.token_theft(&sessions, scenario.idle_replay, Label::IdleReplay, false);
    let mut compromised = vec![false; g.actors.len()];
    for a in &g.compromised {
        compromised[*a as usize] = true;
    }
    let mut events = g.events;
    events.sort_by_key(|e| (e.t, e.actor));
    World {
        accounts: g.accounts,
        credentials: g.credentials,
        actors: g.actors,
        compromised,
        events,
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_by_seed() {
        let s = Scenario {
            users: 50,
            hours: 2,
            ..Scenario::test_mix()
        };
        let a = generate(&s, 7);
        let b = generate(&s, 7);
        let c = generate(&s, 8);
        assert_eq!(a.events.len(), b.events.len());
        assert!(
            a.events
                .iter()
                .zip(&b.events)
                .all(|(x, y)| x.t == y.t && x.req.path == y.req.path)
        );
        assert_ne!(
            a.events.iter().map(|e| e.t).sum::<u64>(),
            c.events.iter().map(|e| e.t).sum::<u64>()
        );
        for label in Label::ATTACKS {
            assert_eq!(
                a.actors.iter().filter(|x| x.label == label).count() as u32,
                s.count(label),
                "{label}"
            );
        }
    }
}
