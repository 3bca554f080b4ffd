//! `tollgate-sim`: drive labelled traffic through the tollgate stack and print how
//! well the anomaly detectors did.
//!
//! ```text
//! cargo run --release -p tollgate-sim                      # default mix, seed 1
//! cargo run --release -p tollgate-sim -- --seeds 1,2,3,4,5 --check
//! cargo run --release -p tollgate-sim -- --flood 1000000   # memory bound
//! cargo build --release --example gateway && \
//!   cargo run --release -p tollgate-sim -- --live --check     # over real HTTP
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tollgate_sim::{Scenario, flood, live, run};

#[derive(Parser, Debug)]
#[command(about = "Labelled traffic through the tollgate stack: per-detector precision, recall and FPR")]
struct Args {
    /// Seeds to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    seeds: Vec<u64>,
    /// `default` (3,000 users, 24 h, 20 attacks per type) or `test` (600 users, 8 h, 10 per type).
    #[arg(long, default_value = "default")]
    scenario: String,
    /// Multiply the number of users and attacks by this factor.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Exit with an error unless every attack type has recall >= 0.9 and the FPR is <= 1%.
    #[arg(long)]
    check: bool,
    /// Add this many stolen-token replays that start after the owner went idle
    /// (reported separately; not part of the default mix or its bounds).
    #[arg(long, default_value_t = 0)]
    idle_replay: u32,
    /// Instead: send this many distinct keys through the anomaly layer and print its state sizes.
    #[arg(long)]
    flood: Option<u64>,
    /// Instead: the evaluation over real HTTP against the demo gateway (see `live`).
    #[arg(long)]
    live: bool,
    /// The demo gateway binary for `--live` (default: `examples/gateway` next to this binary).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// The demo gateway's configuration for `--live`.
    #[arg(long, default_value = "examples/gateway.toml")]
    config: PathBuf,
    /// How long `--live` runs its benign traffic, in seconds.
    #[arg(long, default_value_t = 240)]
    duration: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(keys) = args.flood {
        let r = flood::flood(keys).await;
        println!(
            "{} distinct principals, sessions, /24 networks and object ids in {:.1} s\n",
            r.keys,
            r.elapsed.as_secs_f64()
        );
        println!("| state | entries | cap |\n|---|---:|---:|");
        let mut ok = true;
        for s in &r.state {
            println!("| {} | {} | {} |", s.name, s.len, s.capacity);
            ok &= s.len <= s.capacity;
        }
        if let Some((before, after)) = r.rss {
            println!(
                "\nresident memory: {:.1} MiB before, {:.1} MiB after",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0
            );
        }
        return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    if args.live {
        let gateway = args.gateway.clone().unwrap_or_else(live::default_gateway);
        let mut failed = false;
        for seed in &args.seeds {
            let options = live::LiveOptions {
                gateway: gateway.clone(),
                config: args.config.clone(),
                seed: *seed,
                duration: Duration::from_secs(args.duration),
            };
            match live::run(&options).await {
                Ok(report) => {
                    println!("{}", report.to_markdown());
                    if let Err(e) = report.check() {
                        println!("**bounds not met (seed {seed})**: {e}\n");
                        failed = true;
                    }
                }
                Err(e) => {
                    eprintln!("live evaluation failed: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        return if args.check && failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let mut scenario = match args.scenario.as_str() {
        "default" => Scenario::default_mix(),
        "test" => Scenario::test_mix(),
        other => {
            eprintln!("unknown scenario {other:?}: use `default` or `test`");
            return ExitCode::FAILURE;
        }
    };
    if args.scale != 1.0 {
        let f = |n: u32| ((f64::from(n) * args.scale).round() as u32).max(1);
        scenario.users = f(scenario.users);
        scenario.batch_jobs = f(scenario.batch_jobs);
        scenario.stuffing = f(scenario.stuffing);
        scenario.enumeration = f(scenario.enumeration);
        scenario.token_theft = f(scenario.token_theft);
        scenario.scrape_burst = f(scenario.scrape_burst);
        scenario.slow_scrape = f(scenario.slow_scrape);
    }
    scenario.idle_replay = args.idle_replay;
    println!("scenario: {scenario:?}\n");
    let mut failed = false;
    for seed in args.seeds {
        let report = run(&scenario, seed).await;
        println!("{}", report.to_markdown());
        if let Err(e) = report.check(0.9, 0.01) {
            println!("**bounds not met (seed {seed})**: {e}\n");
            failed = true;
        }
    }
    if args.check && failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
