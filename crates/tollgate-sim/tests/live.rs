//! The evaluation over real HTTP (`tollgate_sim::live`): the demo gateway as a
//! child process, labelled traffic on loopback, each request matched to its log
//! line. Fails if detection regresses past the bounds the anomaly layer promises
//! (`LiveReport::check`), with a fixed seed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tollgate_sim::live::{self, LiveOptions, Pattern};

/// The demo gateway beside this test binary, built first if it is missing (as it is
/// when only this test is run).
fn gateway() -> PathBuf {
    let gateway = live::default_gateway();
    if !gateway.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "gateway", "-p", "tollgate"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "the demo gateway builds");
    }
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_over_real_http_does_not_regress() {
    let options = LiveOptions {
        gateway: gateway(),
        config: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/gateway.toml"),
        seed: 1,
        duration: Duration::from_secs(180),
    };
    let report = live::run(&options).await.expect("the evaluation runs");
    println!("{}", report.to_markdown());
    // Not vacuous: every pattern sent traffic, and the benign set is large enough
    // for a 0.1 % bound to mean something.
    for pattern in Pattern::ALL {
        assert!(
            report.requests.iter().any(|r| r.pattern == pattern),
            "{} sent nothing",
            pattern.name()
        );
    }
    let (benign, _) = report.benign_totals();
    assert!(benign > 5_000, "only {benign} legitimate requests");
    report.check().unwrap();
}
