//! A labelled traffic simulator for tollgate's anomaly layer.
//!
//! It generates a day of shop-API traffic from a seed (ordinary users with a
//! diurnal rhythm, mobile users moving between networks, offices sharing a /24,
//! honest batch integrations, and five kinds of attack), drives every request
//! through the full tollgate stack in process (`tower::ServiceExt::oneshot` on the
//! axum router, with `ConnectInfo` inserted) on a fake clock, reads the
//! [`AnomalyTags`] of each response, and scores the detectors against the ground
//! truth: per-detector precision, recall and false-positive rate, per-attack recall.
//!
//! [`live`] is the same idea over real HTTP: labelled traffic sent to the demo
//! gateway's binary on loopback, on its real clock (EVALUATION.md).
//!
//! ```no_run
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let report = tollgate_sim::run(&tollgate_sim::Scenario::test_mix(), 1).await;
//! println!("{}", report.to_markdown());
//! report.check(0.9, 0.01).unwrap();
//! # });
//! ```
#![warn(missing_docs)]
#![deny(unreachable_pub)]

pub mod app;
pub mod eval;
pub mod flood;
pub mod live;
pub mod scenario;
pub mod traffic;

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::header::{CONTENT_TYPE, USER_AGENT};
use tollgate_anomaly::{AnomalyConfig, AnomalyTags};
use tollgate_core::Timestamp;
use tower::ServiceExt;

pub use eval::{Outcome, Report};
pub use scenario::{Label, Scenario};

/// The simulation starts at this Unix time (a midnight UTC).
pub const START_SECS: u64 = 1_700_006_400;

/// Runs `scenario` from `seed` with the simulator's anomaly configuration.
pub async fn run(scenario: &Scenario, seed: u64) -> Report {
    run_with(scenario, seed, app::anomaly_config()).await
}

/// Runs `scenario` from `seed` with the given anomaly configuration.
///
/// With the environment variable `SIM_DEBUG` set, it also prints to stderr every
/// tagged request of a normal actor, every attack actor no detector tagged, and the
/// learned route-transition matrix.
pub async fn run_with(scenario: &Scenario, seed: u64, anomaly: AnomalyConfig) -> Report {
    let debug = std::env::var_os("SIM_DEBUG").is_some();
    let world = traffic::generate(scenario, seed);
    let stack = app::stack(
        &world.accounts,
        &world.credentials,
        scenario.catalogue,
        START_SECS,
        anomaly,
    )
    .await;
    let started = Instant::now();
    let mut outcomes = vec![Outcome::default(); world.actors.len()];
    let mut statuses = [0u64; 6];
    let start = Timestamp::from_secs(START_SECS).as_nanos();
    for event in &world.events {
        stack.clock.set(Timestamp::from_nanos(start + event.t));
        let response = stack
            .router
            .clone()
            .oneshot(build(&event.req))
            .await
            .expect("the router is infallible");
        statuses[match response.status().as_u16() {
            200..=299 => 0,
            401 => 1,
            403 => 2,
            404 => 3,
            429 => 4,
            _ => 5,
        }] += 1;
        let o = &mut outcomes[event.actor as usize];
        o.requests += 1;
        let Some(tags) = response.extensions().get::<AnomalyTags>() else {
            continue;
        };
        for (kind, _) in tags.iter() {
            o.kinds |= 1 << kind.index();
        }
        if o.first_tag.is_none() && !tags.is_empty() {
            o.first_tag = Some(o.requests);
        }
        let actor = &world.actors[event.actor as usize];
        if debug && !actor.label.is_attack() {
            eprintln!(
                "tagged {:?} actor {} (stolen token: {}) at {} s: {} {tags}",
                actor.label,
                event.actor,
                world.compromised[event.actor as usize],
                event.t / 1_000_000_000,
                event.req.path
            );
        }
    }
    let elapsed = started.elapsed();
    if debug {
        debug_dump(&world, &outcomes, &stack.anomaly);
    }
    let labels: Vec<Label> = world.actors.iter().map(|a| a.label).collect();
    let (normal, compromised, false_positives, detectors, attacks) =
        eval::score(&labels, &world.compromised, &outcomes);
    Report {
        seed,
        requests: world.events.len() as u64,
        normal,
        compromised,
        false_positives,
        fpr: if normal == 0 {
            0.0
        } else {
            f64::from(false_positives) / f64::from(normal)
        },
        detectors,
        attacks,
        elapsed,
        state: stack.anomaly.state_sizes(),
        statuses,
    }
}

fn debug_dump(world: &traffic::World, outcomes: &[Outcome], anomaly: &tollgate_anomaly::AnomalyLayer) {
    for (i, a) in world.actors.iter().enumerate() {
        if a.label.is_attack() && !outcomes[i].flagged() {
            let requests: Vec<String> = world
                .events
                .iter()
                .filter(|e| e.actor == i as u32)
                .take(12)
                .map(|e| format!("{}@{}", e.req.path, e.t / 1_000_000_000))
                .collect();
            eprintln!("missed {:?} actor {i}: {requests:?}", a.label);
        }
    }
    let routes = [
        "/v1/search",
        "/v1/items/{id}",
        "/v1/items/{id}/reviews",
        "/v1/cart/items",
        "/v1/checkout",
        "/v1/account",
        "/v1/account/export",
        "/v1/orders",
        "/v1/orders/{id}",
    ];
    eprintln!("learned transitions (row: from, column: to, in the order of the rows)");
    for from in std::iter::once(None).chain(routes.iter().map(|r| Some(*r))) {
        let row: Vec<String> = routes
            .iter()
            .map(|to| {
                anomaly
                    .transition_share(from, to)
                    .map_or("-".into(), |s| format!("{s:.3}"))
            })
            .collect();
        eprintln!("{:>24} {}", from.unwrap_or("(start)"), row.join(" "));
    }
}

fn build(r: &traffic::Req) -> http::Request<Body> {
    let mut b = http::Request::builder()
        .method(match r.method {
            traffic::Method::Get => http::Method::GET,
            traffic::Method::Post => http::Method::POST,
        })
        .uri(r.path.as_str())
        .header(USER_AGENT, r.ua);
    if let Some(key) = &r.key {
        b = b.header("x-api-key", &**key);
    }
    let body = match &r.login {
        Some((user, password)) => {
            b = b.header(CONTENT_TYPE, "application/json");
            Body::from(serde_json::json!({ "user": &**user, "password": &**password }).to_string())
        }
        None => Body::empty(),
    };
    let mut req = b.body(body).expect("valid request");
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(r.ip.into(), 40_000)));
    req
}
