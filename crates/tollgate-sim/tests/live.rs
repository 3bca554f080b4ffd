//! The evaluation over real HTTP (`tollgate_sim::live`): the demo gateway as a
//! child process, labelled traffic on loopback, each request matched to its log
//! line. Fails if detection regresses past the bounds the anomaly layer promises
//! (`LiveReport::check`), with a fixed seed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tollgate_sim::live::{self, LiveOptions};

/// The demo gateway beside this test binary (`cargo test --workspace` builds the
/// examples), else built into a target directory of its own (the running `cargo
/// test` may hold the lock on this one).
fn gateway() -> PathBuf {
    let gateway = live::default_gateway();
    if gateway.exists() {
        return gateway;
    }
    // target/debug/examples/gateway -> target/live-eval
    let target = gateway
        .ancestors()
        .nth(3)
        .expect("the gateway's path is inside a target directory")
        .join("live-eval");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--example", "gateway", "-p", "tollgate", "--target-dir"])
        .arg(&target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the demo gateway builds");
    target.join("debug").join("examples").join("gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_over_real_http_does_not_regress() {
    let options = LiveOptions {
        gateway: gateway(),
        config: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/gateway.toml"),
        seed: 1,
        duration: Duration::from_secs(240),
    };
    let report = live::run(&options).await.expect("the evaluation runs");
    println!("{}", report.to_markdown());
    // Not vacuous: every attack had actors, every benign pattern sent traffic, and
    // the benign set is large enough for a 0.1 % bound to mean something.
    for attack in report.attacks() {
        assert!(attack.actors > 0, "{} had no actor", attack.pattern.name());
    }
    for benign in report.benign() {
        assert!(benign.requests > 0, "{} sent nothing", benign.pattern.name());
    }
    let (benign, _) = report.benign_totals();
    assert!(benign > 8_000, "only {benign} legitimate requests");
    report.check().unwrap();
}
