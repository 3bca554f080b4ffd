//! The demo gateway as a process of its own, for the tests that need one (replicas
//! sharing a store, slow clients). `cargo build --example gateway` first (the CI
//! script does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_test_support::{free_port, random_namespace};

use super::PSEUDONYM_SECRET;

/// The demo gateway binary, built next to the test binaries.
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = target.join("examples").join("gateway");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --example gateway` (scripts/test does)",
        binary.display()
    );
    binary
}

/// A running gateway on a free port; killed on drop, its log file removed.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// Where the gateway's standard output (its log lines) goes.
    log: PathBuf,
}

impl Gateway {
    /// Starts the gateway on `config` and waits until it accepts connections.
    pub fn start(config: &Path) -> Gateway {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!("tollgate-gateway-{}.log", random_namespace()));
        let child = Command::new(gateway_binary())
            .args(["--config", config.to_str().unwrap(), "--addr", &addr.to_string()])
            .env("TOLLGATE_PSEUDONYM_SECRET", PSEUDONYM_SECRET)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut gateway = Gateway { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = gateway.child.try_wait().unwrap() {
                panic!("the gateway exited ({status}); its stderr is above");
            }
            assert!(Instant::now() < deadline, "the gateway did not start on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        gateway
    }

    /// Everything the gateway logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A config file removed on drop.
pub struct ConfigFile(PathBuf);

impl ConfigFile {
    pub fn with_contents(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("tollgate-gateway-{}.toml", random_namespace()));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }
}

impl std::ops::Deref for ConfigFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
