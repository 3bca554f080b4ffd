//! `loadtest soak`: a bounded load run on loopback mixing valid sessions, hostile
//! requests and a flood of distinct keys, with the server's resident memory sampled
//! every second. It stops by itself and fails on any unexpected status, any 5xx,
//! any error line in the server's log, or memory that keeps growing after warm-up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::token;

/// Deployment-like limits: 200 a second per token, 20 per anonymous network.
pub(crate) const QUOTAS: crate::Quotas = crate::Quotas {
    pro: 200,
    anonymous: 20,
};

/// The kinds of request the soak sends, and the statuses each may get.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// One of the valid tokens, always from its own network.
    Session,
    /// An anonymous caller from a network never seen before.
    NewNetwork,
    /// A JWT-shaped token never seen before, signed by nobody.
    ForgedToken,
    /// An API key never seen before.
    UnknownKey,
    /// A 16 KiB bearer token.
    Oversized,
}

impl Kind {
    fn of(i: u64) -> Kind {
        match i % 10 {
            0..=4 => Kind::Session,
            5 | 6 => Kind::NewNetwork,
            7 => Kind::ForgedToken,
            8 => Kind::UnknownKey,
            _ => Kind::Oversized,
        }
    }

    fn expects(self, status: u16) -> bool {
        match self {
            Kind::Session => matches!(status, 200 | 429),
            Kind::NewNetwork => matches!(status, 200 | 429 | 403),
            Kind::ForgedToken | Kind::UnknownKey => matches!(status, 401 | 429 | 403),
            Kind::Oversized => status == 431,
        }
    }
}

struct Counters {
    sent: AtomicU64,
    unexpected: AtomicU64,
    server_errors: AtomicU64,
    distinct: AtomicU64,
}

/// The resident memory of a process, in MiB (`VmRSS`).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn request(kind: Kind, n: u64, tokens: &[String], addr: SocketAddr) -> Vec<u8> {
    let head = |extra: String| {
        format!(
            "GET /v1/items/{} HTTP/1.1\r\nhost: {addr}\r\n{extra}\
             user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\r\n",
            n % 1000
        )
        .into_bytes()
    };
    // Distinct networks: an IPv6 /48 per request number.
    let network = |n: u64| format!("2001:{:x}:{:x}::1", (n >> 16) & 0xffff, n & 0xffff);
    match kind {
        Kind::Session => {
            let i = (n / 10) as usize % tokens.len();
            head(format!(
                "authorization: Bearer {}\r\nx-forwarded-for: 2001:db8:{i:x}::7\r\n",
                tokens[i]
            ))
        }
        Kind::NewNetwork => head(format!("x-forwarded-for: {}\r\n", network(n))),
        Kind::ForgedToken => head(format!(
            "authorization: Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ7bn0ifQ.{n:x}\r\nx-forwarded-for: {}\r\n",
            network(n)
        )),
        Kind::UnknownKey => head(format!(
            "x-api-key: soak-{n:x}\r\nx-forwarded-for: {}\r\n",
            network(n)
        )),
        Kind::Oversized => head(format!("authorization: Bearer {}\r\n", "A".repeat(16 << 10))),
    }
}

/// The status and total length of a response once its head is complete.
fn parse(bytes: &[u8]) -> Option<(u16, usize)> {
    let total = crate::response_length(bytes)?;
    let status = std::str::from_utf8(bytes.get(9..12)?).ok()?.parse().ok()?;
    Some((status, total))
}

fn worker(
    w: u64,
    workers: u64,
    addr: SocketAddr,
    tokens: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let connect = || TcpStream::connect(addr).map_err(|e| e.to_string());
    let mut conn = connect()?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut n = w;
    while !stop.load(Ordering::Relaxed) {
        let kind = Kind::of(n);
        conn.write_all(&request(kind, n, &tokens, addr))
            .map_err(|e| e.to_string())?;
        let mut filled = 0;
        let status = loop {
            let read = conn.read(&mut buffer[filled..]).map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("the server closed the connection".into());
            }
            filled += read;
            if let Some((status, total)) = parse(&buffer[..filled])
                && filled >= total
            {
                break status;
            }
        };
        counters.sent.fetch_add(1, Ordering::Relaxed);
        if !matches!(kind, Kind::Session) {
            counters.distinct.fetch_add(1, Ordering::Relaxed);
        }
        if status >= 500 {
            counters.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        if !kind.expects(status) && counters.unexpected.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("unexpected {status} for {kind:?}");
        }
        // hyper may close after a refused request: reconnect then.
        if status == 431 {
            conn = connect()?;
        }
        n += workers;
    }
    Ok(())
}

/// Runs the soak for `seconds` with `workers` connections; `cap_mib` is the resident
/// memory the server must stay under, and after `warm_up` seconds (while the bounded
/// maps fill) it must stay within 10 %.
pub(crate) fn soak(
    seconds: u64,
    warm_up: u64,
    workers: u64,
    cap_mib: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    if warm_up + 10 > seconds {
        return Err("the run must last at least 10 s past the warm-up".into());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "soak", "--addr", &addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    // Read the server's log as it comes: count the lines that are not request lines
    // at INFO, and keep the first few for the report.
    let watch = |pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            let mut count = 0u64;
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let suspicious = line.contains("\"level\":\"ERROR\"")
                    || line.contains("\"level\":\"WARN\"")
                    || line.contains("panicked")
                    || !line.starts_with('{');
                if suspicious {
                    count += 1;
                    if bad.len() < 5 {
                        bad.push(line);
                    }
                }
            }
            (count, bad)
        })
    };
    let stdout = watch(Box::new(child.stdout.take().expect("piped")));
    let stderr = watch(Box::new(child.stderr.take().expect("piped")));
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            return Err("the soak server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let tokens: Arc<Vec<String>> = Arc::new((0..2_000).map(token).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters {
        sent: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        server_errors: AtomicU64::new(0),
        distinct: AtomicU64::new(0),
    });
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (tokens, stop, counters) = (tokens.clone(), stop.clone(), counters.clone());
            std::thread::spawn(move || worker(w, workers, addr, tokens, stop, counters))
        })
        .collect();

    let began = Instant::now();
    let mut samples: Vec<(u64, u64, f64)> = Vec::new();
    while began.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let rss = rss_mib(pid).unwrap_or(f64::NAN);
        samples.push((
            began.elapsed().as_secs(),
            counters.sent.load(Ordering::Relaxed),
            rss,
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let mut worker_errors = Vec::new();
    for t in threads {
        if let Err(e) = t
            .join()
            .map_err(|_| "a worker panicked".to_string())
            .and_then(|r| r)
        {
            worker_errors.push(e);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let (log_lines, log_examples) = stdout.join().expect("log reader");
    let (err_lines, err_examples) = stderr.join().expect("stderr reader");

    let sent = counters.sent.load(Ordering::Relaxed);
    let distinct = counters.distinct.load(Ordering::Relaxed);
    let unexpected = counters.unexpected.load(Ordering::Relaxed);
    let server_errors = counters.server_errors.load(Ordering::Relaxed);
    println!(
        "soak: {seconds} s, {workers} connections, {sent} requests, {distinct} distinct keys (networks, tokens, API keys)\n"
    );
    println!("| time | requests | RSS |");
    println!("|---:|---:|---:|");
    let step = (samples.len() / 12).max(1);
    for (i, (t, n, rss)) in samples.iter().enumerate() {
        if i % step == 0 || i + 1 == samples.len() {
            println!("| {t} s | {n} | {rss:.1} MiB |");
        }
    }
    let after: Vec<f64> = samples.iter().filter(|s| s.0 > warm_up).map(|s| s.2).collect();
    let (lo, hi) = after
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let growth = (hi - lo) / lo;
    println!(
        "\nafter {warm_up} s of warm-up: RSS {lo:.1}–{hi:.1} MiB ({:.1} % spread), cap {cap_mib} MiB",
        growth * 100.0
    );
    println!(
        "unexpected statuses {unexpected}, 5xx {server_errors}, worker errors {}, log lines other than requests {}",
        worker_errors.len(),
        log_lines + err_lines
    );
    for line in log_examples.iter().chain(&err_examples) {
        println!("  log: {line}");
    }
    for e in &worker_errors {
        println!("  worker: {e}");
    }
    let ok = unexpected == 0
        && server_errors == 0
        && worker_errors.is_empty()
        && log_lines + err_lines == 0
        && hi <= cap_mib
        && growth <= 0.10;
    if ok {
        println!("soak passed");
        Ok(())
    } else {
        Err("soak failed (see above)".into())
    }
}
