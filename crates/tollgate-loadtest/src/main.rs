//! Whole-stack load test: the same small API served bare, behind the tollgate
//! stack, and behind the usual peer composition (jwt-authorizer ES256 +
//! tower_governor + tower-http `TraceLayer` with JSON logs), each in its own
//! process, loaded in turn by `wrk` on loopback, reported as ratios of bare axum.
//!
//! ```text
//! cargo run --release -p tollgate-loadtest -- run --duration 10
//! cargo run --release -p tollgate-loadtest -- run --callers 2000 --redis
//! cargo run --release -p tollgate-loadtest -- callgrind     # instructions per request
//! ```
//!
//! `run` reports, per variant, requests/s and its ratio to bare axum, the spread
//! over rounds, wrk's p50 and p99 latency and the server's peak resident memory.
//! `--callers N` spreads the load over N callers (own token, own network);
//! `--redis` adds the stack with its state in Redis, `--operator` the stack with the
//! operator observers (metrics, console activity) reading every request record,
//! `--layers` the stack built up one layer at a time (each layer's own cost).
//!
//! `soak` (see `soak.rs`) runs the stack for minutes under mixed, partly hostile
//! traffic and a flood of distinct keys, sampling its resident memory.
//!
//! `callgrind` counts the server's instructions per request, a figure that repeats
//! to a fraction of a percent where wall-clock throughput on a shared machine moves
//! by tens of percent: each variant runs under `valgrind --tool=callgrind`, takes
//! one warm-up request per caller (at least 100), then N and then M more GETs over one keep-alive connection
//! (the counters dumped after each batch), and the difference between the two
//! batches' counts divided by M - N is the cost of one request, start-up excluded.

mod soak;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{Router, routing::get};
use clap::{Parser, Subcommand, ValueEnum};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tower::ServiceBuilder;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;
use tracing_subscriber::prelude::*;

const PRIVATE_KEY: &str = include_str!("../keys/p256.key");
const PUBLIC_KEY: &str = include_str!("../keys/p256.pub");
const ISSUER: &str = "https://issuer.loadtest.invalid";
const AUDIENCE: &str = "loadtest-api";

#[derive(Parser)]
#[command(about = "tollgate whole-stack load test")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve one variant (used by `run`; logs go to stdout).
    Serve {
        #[arg(value_enum)]
        variant: Variant,
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Load every variant in turn with wrk and print the table.
    Run {
        /// Seconds of load per variant.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Open connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// wrk threads.
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Rounds over all variants (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[command(flatten)]
        load: Load,
    },
    /// Count instructions per request of every variant under callgrind.
    Callgrind {
        /// Requests in the first batch.
        #[arg(long, default_value_t = 500)]
        first: u32,
        /// Requests in the second batch (larger than the first).
        #[arg(long, default_value_t = 2_500)]
        second: u32,
        /// Serve with this loadtest binary instead of this one (another revision's
        /// build), so two revisions are measured with the same client.
        #[arg(long)]
        server: Option<std::path::PathBuf>,
        /// Keep callgrind's dumps in this directory (for `callgrind_annotate`: the
        /// difference between a variant's last two dumps is where a request's
        /// instructions go) instead of deleting them.
        #[arg(long)]
        keep: Option<std::path::PathBuf>,
        #[command(flatten)]
        load: Load,
    },
    /// A bounded soak: valid sessions, hostile requests and a flood of distinct keys
    /// for SECONDS, the server's resident memory sampled every second; fails on an
    /// unexpected status, a 5xx, an error or warning in the server's log, memory above
    /// the cap, or memory moving more than 10 % after the warm-up.
    Soak {
        /// Seconds of load.
        #[arg(long, default_value_t = 240)]
        seconds: u64,
        /// Seconds after which memory must stay flat (the bounded maps fill first).
        #[arg(long, default_value_t = 60)]
        warm_up: u64,
        /// Connections (one thread each).
        #[arg(long, default_value_t = 8)]
        connections: u64,
        /// The resident memory the server must stay under, in MiB.
        #[arg(long, default_value_t = 256.0)]
        cap_mib: f64,
    },
    /// Print a valid ES256 token for the test API.
    Token,
}

/// What the clients look like, for `run` and `callgrind`.
#[derive(clap::Args, Clone, Copy)]
struct Load {
    /// Distinct callers: each has its own ES256 token (its own subject) and, through
    /// `X-Forwarded-For` (the tollgate variants trust loopback), its own IPv6 /48.
    /// Requests go round-robin over them. 1: one token, no forwarding header.
    #[arg(long, default_value_t = 1)]
    callers: u32,
    /// Also measure the tollgate stack with its state in Redis (`REDIS_URL`, else
    /// redis://127.0.0.1:6379), under a namespace of its own.
    #[arg(long)]
    redis: bool,
    /// Also measure the stack with the operator observers (Prometheus metrics and the
    /// console's activity) reading every request record.
    #[arg(long)]
    operator: bool,
    /// Also measure the stack built up one layer at a time, in its order: the privacy
    /// layer (its span and JSON line) alone, then with authentication, fingerprinting
    /// and rate limiting added in turn; the full stack adds anomaly tagging. Each row
    /// less the one before is that layer's cost. With them, tower-http's `TraceLayer`
    /// logging JSON alone, the usual way to log every request, as a yardstick.
    #[arg(long)]
    layers: bool,
}

impl Load {
    fn variants(self) -> Vec<Variant> {
        let mut variants = vec![Variant::Bare];
        if self.layers {
            variants.extend([
                Variant::TraceOnly,
                Variant::PrivacyOnly,
                Variant::UpToAuth,
                Variant::UpToFingerprint,
                Variant::UpToRateLimit,
            ]);
        }
        variants.push(Variant::Tollgate);
        if self.operator {
            variants.push(Variant::TollgateOperator);
        }
        if self.redis {
            variants.push(Variant::TollgateRedis);
        }
        variants.push(Variant::Peers);
        variants
    }

    /// One `(token, forwarded-for)` per caller.
    fn callers(self) -> Vec<(String, Option<String>)> {
        let n = self.callers.max(1);
        (0..n)
            .map(|i| {
                let network = (n > 1).then(|| format!("2001:db8:{i:x}::7"));
                (token(i), network)
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Variant {
    /// axum alone.
    Bare,
    /// tower-http's `TraceLayer` with JSON logs alone: the usual request logging.
    TraceOnly,
    /// tollgate's privacy layer alone: the request span and its JSON line.
    PrivacyOnly,
    /// The privacy and authentication layers.
    UpToAuth,
    /// The privacy, authentication and fingerprinting layers.
    UpToFingerprint,
    /// Every layer but anomaly tagging.
    UpToRateLimit,
    /// The whole tollgate stack, logging every request.
    Tollgate,
    /// The same stack with the operator observers (metrics, console activity).
    TollgateOperator,
    /// The same stack with its shared state (rate limits, freezes, sessions) in Redis.
    TollgateRedis,
    /// jwt-authorizer ES256 + tower_governor + tower-http TraceLayer (JSON).
    Peers,
    /// The stack with deployment-like limits, for `soak`.
    Soak,
}

impl Variant {
    /// How many of tollgate's layers the variant runs, in the stack's order (privacy,
    /// authentication, fingerprinting, rate limiting, anomaly tagging).
    fn layers(self) -> u8 {
        match self {
            Variant::Bare | Variant::TraceOnly | Variant::Peers => 0,
            Variant::PrivacyOnly => 1,
            Variant::UpToAuth => 2,
            Variant::UpToFingerprint => 3,
            Variant::UpToRateLimit => 4,
            Variant::Tollgate | Variant::TollgateOperator | Variant::TollgateRedis | Variant::Soak => 5,
        }
    }

    /// The variant as `serve` takes it.
    fn arg(self) -> &'static str {
        match self {
            Variant::Bare => "bare",
            Variant::TraceOnly => "trace-only",
            Variant::PrivacyOnly => "privacy-only",
            Variant::UpToAuth => "up-to-auth",
            Variant::UpToFingerprint => "up-to-fingerprint",
            Variant::UpToRateLimit => "up-to-rate-limit",
            Variant::Tollgate => "tollgate",
            Variant::TollgateOperator => "tollgate-operator",
            Variant::TollgateRedis => "tollgate-redis",
            Variant::Peers => "peers",
            Variant::Soak => "soak",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Bare => "bare axum",
            Variant::TraceOnly => "tower-http TraceLayer JSON only (no auth, no limits)",
            Variant::PrivacyOnly => "tollgate privacy layer only (span + JSON line)",
            Variant::UpToAuth => "  + authentication",
            Variant::UpToFingerprint => "  + session fingerprinting",
            Variant::UpToRateLimit => "  + rate limiting",
            Variant::Tollgate => "tollgate (all six layers, JSON log per request)",
            Variant::TollgateOperator => "tollgate + metrics and console observers",
            Variant::TollgateRedis => "tollgate, state in Redis",
            Variant::Peers => "jwt-authorizer ES256 + tower_governor + TraceLayer JSON",
            Variant::Soak => "tollgate with deployment-like limits",
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Args::parse().command {
        Cmd::Serve { variant, addr } => serve(variant, addr),
        Cmd::Run {
            duration,
            connections,
            threads,
            rounds,
            load,
        } => run(duration, connections, threads, rounds, load),
        Cmd::Callgrind {
            first,
            second,
            server,
            keep,
            load,
        } => callgrind(first, second, server, keep, load),
        Cmd::Soak {
            seconds,
            warm_up,
            connections,
            cap_mib,
        } => soak::soak(seconds, warm_up, connections, cap_mib),
        Cmd::Token => {
            println!("{}", token(0));
            Ok(())
        }
    }
}

/// The ES256 token of caller `i`.
fn token(i: u32) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "sub": format!("loadtest-user-{i}"),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "jti": format!("loadtest-token-{i}"),
        "tier": "pro",
    });
    let key = EncodingKey::from_ec_pem(PRIVATE_KEY.as_bytes()).expect("test key parses");
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).expect("token signs")
}

fn api() -> Router {
    Router::new().route("/health", get(|| async { "ok" })).route(
        "/v1/items/{id}",
        get(|| async { r#"{"id":42,"name":"item 42"}"# }),
    )
}

/// Per-second quotas of the `pro` tier (the tokens') and the anonymous tier.
#[derive(Clone, Copy)]
struct Quotas {
    pro: u64,
    anonymous: u64,
}

/// Limits far above any load: the figure is the cost of deciding, not of refusing.
const UNLIMITED: Quotas = Quotas {
    pro: 100_000_000,
    anonymous: 100_000_000,
};

/// The tollgate stack's configuration: the layers up to `upto` on, an API key record
/// (whose key no client holds), loopback trusted as a proxy so callers can come from
/// many networks. `store` is appended.
fn tollgate_config(quotas: Quotas, store: &str, upto: Variant) -> String {
    let on = |layer: Variant| upto.layers() >= layer.layers();
    let mut config = format!(
        r#"
[pseudonym]
secret = "{secret}"

[client]
trusted_proxies = ["127.0.0.0/8"]
"#,
        secret = "ab".repeat(32)
    );
    if on(Variant::UpToAuth) {
        config += &format!(
            r#"
[routes.default]
auth = "optional"

[auth]
[auth.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
algorithms = ["ES256"]
tier_claim = "tier"
[[auth.jwt.keys]]
alg = "ES256"
pem = """{PUBLIC_KEY}"""
[[auth.api_keys]]
id = "loadtest-key"
sha256 = "{key_digest}"
"#,
            key_digest = "0".repeat(64),
        );
    }
    if on(Variant::UpToFingerprint) {
        config += "\n[fingerprint]\n";
    }
    if on(Variant::UpToRateLimit) {
        config += &format!(
            r#"
[ratelimit]
default_tier = "pro"
[ratelimit.tiers.pro]
limits = [{{ name = "burst", quota = {pro}, window = "1s" }}]
[ratelimit.tiers.anonymous]
limits = [{{ name = "burst", quota = {anonymous}, window = "1s" }}]
"#,
            pro = quotas.pro,
            anonymous = quotas.anonymous,
        );
    }
    if on(Variant::Tollgate) {
        config += "\n[anomaly]\n";
    }
    config + store
}

/// The `[store]` section of the Redis variant.
fn redis_store() -> String {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    format!("[store]\nbackend = \"redis\"\nurl = \"{url}\"\nnamespace = \"loadtest\"\n")
}

fn serve(variant: Variant, addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Both logging variants write through the same batching stdout writer.
    let (writer, _flush_guard) = tollgate::privacy::BatchWriter::stdout();
    rt.block_on(async move {
        let app: Router = match variant {
            Variant::Bare => api(),
            Variant::PrivacyOnly
            | Variant::UpToAuth
            | Variant::UpToFingerprint
            | Variant::UpToRateLimit
            | Variant::Tollgate
            | Variant::TollgateOperator
            | Variant::TollgateRedis
            | Variant::Soak => {
                let store = match variant {
                    Variant::TollgateRedis => redis_store(),
                    _ => String::new(),
                };
                let quotas = match variant {
                    Variant::Soak => soak::QUOTAS,
                    _ => UNLIMITED,
                };
                let config = tollgate::TollgateConfig::from_toml(&tollgate_config(quotas, &store, variant))?;
                let log = tollgate::privacy::json_layer(writer);
                let log = match variant {
                    Variant::TollgateOperator => tollgate::operator::Observers::new(&config).attach(log),
                    _ => log,
                };
                tracing_subscriber::registry()
                    .with(log)
                    .with(tracing_subscriber::filter::LevelFilter::INFO)
                    .init();
                let tollgate = tollgate::Tollgate::from_config(&config).await?;
                tollgate.apply(api())
            }
            Variant::TraceOnly | Variant::Peers => {
                tracing_subscriber::registry()
                    .with(
                        tracing_subscriber::fmt::layer()
                            .json()
                            .with_current_span(true)
                            .with_span_list(false)
                            .with_writer(writer),
                    )
                    .with(tracing_subscriber::filter::LevelFilter::INFO)
                    .init();
                match variant {
                    Variant::Peers => peers(api()).await?,
                    _ => api().layer(trace_layer()),
                }
            }
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// jwt-authorizer (built on axum 0.7) around the axum 0.8 API, converting response
/// bodies at the seam, then tower_governor and tower-http's TraceLayer.
async fn peers(api: Router) -> Result<Router, Box<dyn std::error::Error>> {
    use jwt_authorizer::{Authorizer, IntoLayer, JwtAuthorizer, Validation};
    use tower_governor::GovernorLayer;
    use tower_governor::governor::GovernorConfigBuilder;

    let authorizer: Authorizer<serde_json::Value> = JwtAuthorizer::from_ec_pem_text(PUBLIC_KEY)
        // No algs given: the EC key's own (ES256, ES384), pinned by jwt-authorizer.
        .validation(Validation::new().iss(&[ISSUER]).aud(&[AUDIENCE]))
        .build()
        .await?;
    let authorized = ServiceBuilder::new()
        .map_response(|r: http::Response<axum07::body::Body>| r.map(axum::body::Body::new))
        .layer(authorizer.into_layer())
        .map_response(|r: axum::response::Response| r.map(axum07::body::Body::new))
        .service(api);
    let governor = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .finish()
        .ok_or("governor config")?;
    Ok(Router::new().fallback_service(authorized).layer(
        ServiceBuilder::new()
            .layer(trace_layer())
            .layer(GovernorLayer::new(governor)),
    ))
}

/// tower-http's request logging as the peers use it: a span and a response event at INFO.
fn trace_layer() -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    DefaultMakeSpan,
    tower_http::trace::DefaultOnRequest,
    DefaultOnResponse,
> {
    TraceLayer::new_for_http()
        .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
        .on_response(DefaultOnResponse::new().level(Level::INFO))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(variant: Variant, addr: SocketAddr) -> Result<Server, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["serve", variant.arg(), "--addr", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let server = Server(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{} did not start on {addr}", variant.name()).into())
}

/// What one wrk run measured.
#[derive(Clone, Copy)]
struct Measured {
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// One wrk run with the `callers` round-robin (a Lua script in `script`), after
/// checking every answer was a 200.
fn wrk(
    addr: SocketAddr,
    script: &std::path::Path,
    duration: u64,
    connections: u32,
    threads: u32,
) -> Result<Measured, String> {
    let out = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{duration}s"),
            "-s",
            &script.display().to_string(),
            &format!("http://{addr}/v1/items/42"),
        ])
        .output()
        .map_err(|e| format!("cannot run wrk (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx or 3xx responses") {
        return Err(format!("non-2xx answers under load:\n{text}"));
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let parsed = (|| {
        Some(Measured {
            requests_per_s: field("Requests/sec:")?.parse().ok()?,
            p50_us: micros(field("50%")?)?,
            p99_us: micros(field("99%")?)?,
        })
    })();
    parsed.ok_or_else(|| format!("unexpected wrk output:\n{text}"))
}

/// A wrk latency (`812.00us`, `1.23ms`, `2.01s`) in microseconds.
fn micros(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    match unit {
        "us" => Some(value),
        "ms" => Some(value * 1e3),
        "s" => Some(value * 1e6),
        _ => None,
    }
}

/// The wrk script sending each caller's request in turn.
fn wrk_script(
    callers: &[(String, Option<String>)],
    dir: &std::path::Path,
) -> std::io::Result<std::path::PathBuf> {
    let mut lua = String::from("local callers = {\n");
    for (token, network) in callers {
        let forwarded = network
            .as_ref()
            .map(|n| format!(", [\"X-Forwarded-For\"] = \"{n}\""))
            .unwrap_or_default();
        lua.push_str(&format!(
            "  {{ [\"Authorization\"] = \"Bearer {token}\"{forwarded} }},\n"
        ));
    }
    lua.push_str(
        "}\nlocal requests = {}\nlocal i = 0\n\
         function init(args)\n  for k, headers in ipairs(callers) do\n    \
         requests[k] = wrk.format(\"GET\", nil, headers)\n  end\nend\n\
         function request()\n  i = i % #requests + 1\n  return requests[i]\nend\n",
    );
    let path = dir.join("callers.lua");
    std::fs::write(&path, lua)?;
    Ok(path)
}

/// The peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn run(
    duration: u64,
    connections: u32,
    threads: u32,
    rounds: u32,
    load: Load,
) -> Result<(), Box<dyn std::error::Error>> {
    let variants = load.variants();
    let callers = load.callers();
    let dir = std::env::temp_dir().join(format!("tollgate-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = wrk_script(&callers, &dir)?;
    let mut results: Vec<Vec<(Measured, f64)>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for (i, variant) in variants.iter().copied().enumerate() {
            let addr: SocketAddr = format!("127.0.0.1:{}", 18_080 + i as u16).parse()?;
            let server = start(variant, addr)?;
            // Warm caches and connections before measuring.
            wrk(addr, &script, 1, connections, threads)?;
            let m = wrk(addr, &script, duration, connections, threads)?;
            let rss = peak_rss_mib(server.0.id()).unwrap_or(f64::NAN);
            eprintln!(
                "round {}: {:<58} {:>10.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  {:>6.1} MiB",
                round + 1,
                variant.name(),
                m.requests_per_s,
                m.p50_us,
                m.p99_us,
                rss
            );
            results[i].push((m, rss));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The round with the median throughput stands for each variant.
    let medians: Vec<(Measured, f64)> = results
        .iter_mut()
        .map(|v| {
            v.sort_by(|a, b| a.0.requests_per_s.total_cmp(&b.0.requests_per_s));
            v[v.len() / 2]
        })
        .collect();
    let spread: Vec<f64> = results
        .iter()
        .map(|v| {
            let lo = v.first().map_or(0.0, |r| r.0.requests_per_s);
            let hi = v.last().map_or(0.0, |r| r.0.requests_per_s);
            if lo > 0.0 { (hi - lo) / lo * 100.0 } else { 0.0 }
        })
        .collect();
    println!(
        "wrk --latency -t{threads} -c{connections} -d{duration}s, median of {rounds} rounds, GET /v1/items/42, \
         {} caller(s) with ES256 bearer tokens\n",
        callers.len()
    );
    println!("| variant | requests/s | ratio to bare axum | spread over rounds | p50 | p99 | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let bare = medians[0].0.requests_per_s;
    for ((variant, (m, rss)), spread) in variants.iter().zip(&medians).zip(&spread) {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} % | {:.0} µs | {:.0} µs | {:.1} MiB |",
            variant.name(),
            m.requests_per_s,
            m.requests_per_s / bare,
            spread,
            m.p50_us,
            m.p99_us,
            rss
        );
    }
    Ok(())
}

/// Instructions per request of every variant, measured as the module doc says.
fn callgrind(
    first: u32,
    second: u32,
    server: Option<std::path::PathBuf>,
    keep: Option<std::path::PathBuf>,
    load: Load,
) -> Result<(), Box<dyn std::error::Error>> {
    if second <= first {
        return Err("--second must be larger than --first".into());
    }
    let callers = load.callers();
    let exe = match server {
        Some(path) => path,
        None => std::env::current_exe()?,
    };
    let dir = keep
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("tollgate-callgrind-{}", std::process::id())));
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    for (i, variant) in load.variants().into_iter().enumerate() {
        let addr: SocketAddr = format!("127.0.0.1:{}", 18_180 + i as u16).parse()?;
        let out = dir.join(format!("{variant:?}"));
        let mut valgrind = Command::new("valgrind");
        valgrind.arg("--tool=callgrind");
        if keep.is_some() {
            // Each dump names its functions in full, so `callgrind_annotate` reads
            // one batch's dump on its own.
            valgrind.arg("--compress-strings=no");
        }
        let child = valgrind
            .arg(format!("--callgrind-out-file={}.%p", out.display()))
            .arg(&exe)
            .args(["serve", variant.arg(), "--addr", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run valgrind (apt-get install valgrind): {e}"))?;
        let pid = child.id();
        let server = Server(child);
        let mut conn = connect_within(addr, Duration::from_secs(120))?;
        let mut request = Requests::new(&callers, addr);
        // Warm-up: every caller once (its token verified and cached, its session
        // made), so both batches measure the steady state.
        let warm_up = u32::try_from(callers.len()).unwrap_or(u32::MAX).max(100);
        request.send_many(&mut conn, warm_up)?;
        let base = dump(pid, &out)?;
        request.send_many(&mut conn, first)?;
        let after_first = dump(pid, &out)?;
        request.send_many(&mut conn, second)?;
        let after_second = dump(pid, &out)?;
        drop(server);
        let per_request =
            ((after_second - after_first) - (after_first - base)) as f64 / f64::from(second - first);
        eprintln!("{:<58} {per_request:>10.0} instructions/request", variant.name());
        rows.push((variant, per_request));
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "valgrind --tool=callgrind, GET /v1/items/42 from {} caller(s) with ES256 bearer tokens over one \
         keep-alive connection, (count after {second} - count after {first}) / {}\n",
        callers.len(),
        second - first
    );
    println!("| variant | instructions per request | ratio to bare axum |");
    println!("|---|---:|---:|");
    for (variant, n) in &rows {
        println!("| {} | {:.0} | {:.2} |", variant.name(), n, n / rows[0].1);
    }
    Ok(())
}

fn connect_within(
    addr: SocketAddr,
    limit: Duration,
) -> Result<std::net::TcpStream, Box<dyn std::error::Error>> {
    let start = std::time::Instant::now();
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(conn) => return Ok(conn),
            Err(_) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("the server under valgrind did not start on {addr}: {e}").into()),
        }
    }
}

/// Each caller's GET, sent in turn over a keep-alive connection.
struct Requests {
    each: Vec<Vec<u8>>,
    next: usize,
    buffer: Vec<u8>,
}

impl Requests {
    fn new(callers: &[(String, Option<String>)], addr: SocketAddr) -> Self {
        let each = callers
            .iter()
            .map(|(token, network)| {
                let forwarded = network
                    .as_ref()
                    .map(|n| format!("x-forwarded-for: {n}\r\n"))
                    .unwrap_or_default();
                format!(
                    "GET /v1/items/42 HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n{forwarded}\
                     user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\
                     accept: */*\r\n\r\n"
                )
                .into_bytes()
            })
            .collect();
        Requests {
            each,
            next: 0,
            buffer: vec![0; 64 * 1024],
        }
    }

    /// Sends `n` requests, the callers in turn, reading each response whole (the
    /// answers are small, with a content-length).
    fn send_many(
        &mut self,
        conn: &mut std::net::TcpStream,
        n: u32,
    ) -> Result<(), Box<dyn std::error::Error>> {
        use std::io::{Read, Write};
        for _ in 0..n {
            conn.write_all(&self.each[self.next])?;
            self.next = (self.next + 1) % self.each.len();
            let mut filled = 0;
            loop {
                let read = conn.read(&mut self.buffer[filled..])?;
                if read == 0 {
                    return Err("the server closed the connection".into());
                }
                filled += read;
                if let Some(total) = response_length(&self.buffer[..filled]) {
                    if !self.buffer.starts_with(b"HTTP/1.1 200") {
                        let head = String::from_utf8_lossy(&self.buffer[..filled.min(200)]).into_owned();
                        return Err(format!("unexpected answer: {head}").into());
                    }
                    if filled >= total {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The length of a response (head and body) once its head is complete.
fn response_length(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let body = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    Some(head_end + body)
}

/// Dumps the server's counters and returns the instructions counted since it started.
fn dump(pid: u32, out: &std::path::Path) -> Result<u64, Box<dyn std::error::Error>> {
    let before = dumps(pid, out)?.len();
    let status = Command::new("callgrind_control")
        .args(["--dump", &pid.to_string()])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err("callgrind_control --dump failed".into());
    }
    // The dump is written by the server in its own time: wait until it is complete.
    for _ in 0..600 {
        let files = dumps(pid, out)?;
        let totals: Option<Vec<u64>> = files.iter().map(|f| totals(f)).collect();
        if files.len() > before
            && let Some(totals) = totals
        {
            // Each dump holds the counts since the one before: the total is their sum.
            return Ok(totals.iter().sum());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("callgrind wrote no dump within 30 s".into())
}

/// The dump files of `pid` so far.
fn dumps(pid: u32, out: &std::path::Path) -> Result<Vec<std::path::PathBuf>, Box<dyn std::error::Error>> {
    let prefix = format!(
        "{}.{pid}.",
        out.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    );
    let dir = out.parent().ok_or("no output directory")?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix))
        {
            files.push(path);
        }
    }
    Ok(files)
}

/// The instruction total of a complete dump file (`None` while it is being written).
fn totals(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
