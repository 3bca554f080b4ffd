//! The demo gateway against slow clients (slowloris): a request head that never
//! ends closes the connection, a body that never ends gets a 408 problem, an idle
//! keep-alive connection is closed, and a prompt client is served as before.
//!
//! Each test starts the gateway binary (`cargo build --example gateway` first) with
//! 1 s timeouts; every bound below is a generous upper one.

mod common;

use common::gateway::{ConfigFile, Gateway};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longer than any timeout the test config sets, far shorter than none at all.
const PATIENCE: Duration = Duration::from_secs(10);

/// The test config: 1 s to send a head, 1 s to send a body, one demo user.
const CONFIG: &str = r#"
[gateway]
issuer = "https://issuer.test.invalid"
audience = "tollgate-tests"
login_secret_hex = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
users = [{ username = "carol", password = "slow-clients", plan = "free" }]
header_read_timeout = "1s"
body_read_timeout = "1s"
"#;

/// A gateway on the test config (it and its config file go on drop).
fn start() -> (Gateway, ConfigFile) {
    let config = ConfigFile::with_contents(CONFIG);
    (Gateway::start(&config), config)
}

fn connect(gateway: &Gateway) -> TcpStream {
    let stream = TcpStream::connect(gateway.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Reads until the server closes the connection, failing if it is still open after
/// [`PATIENCE`]. Returns what was read.
fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return received,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "{what}: the connection is still open after {:?}; received {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&received)
            ),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// One response read off `stream`: status, lowercase headers, body (by
/// `Content-Length`). Fails if none is complete within [`PATIENCE`].
fn read_response(stream: &mut TcpStream, what: &str) -> (u16, Vec<(String, String)>, String) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "{what}: closed before a response: {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "{what}: no response within {PATIENCE:?} ({e}); received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    };
    let head = String::from_utf8(received[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = header(&headers, "content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = received[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) => panic!("{what}: closed mid-body"),
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{what}: body incomplete within {PATIENCE:?} ({e})"),
        }
    }
    (status, headers, String::from_utf8(body).unwrap())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// (a) A head that never ends: hyper answers nothing (no request to answer yet) and
/// closes the connection.
#[test]
fn an_unfinished_request_head_is_closed() {
    let (gateway, _config) = start();
    let mut stream = connect(&gateway);
    stream
        .write_all(b"GET /v1/items/5 HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let received = read_until_closed(&mut stream, "unfinished head");
    // Should a response come first, it refuses the request.
    if !received.is_empty() {
        assert!(
            received.starts_with(b"HTTP/1.1 4"),
            "{}",
            String::from_utf8_lossy(&received)
        );
    }
}

/// (b) A body shorter than its `Content-Length`, sent at once or a byte at a time:
/// 408 problem+json, then the connection is closed.
#[test]
fn an_unfinished_body_gets_a_408_problem() {
    let (gateway, _config) = start();
    for trickle in [false, true] {
        let what = if trickle { "trickled body" } else { "stalled body" };
        let mut stream = connect(&gateway);
        stream
            .write_all(
                b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            )
            .unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let dripper = {
            let mut stream = stream.try_clone().unwrap();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                if !trickle {
                    let _ = stream.write_all(b"{\"us");
                    return;
                }
                // A byte every 200 ms: an idle timer would never fire; the deadline must.
                for byte in b"{\"username\":\"carol\",\"password\":\"slow-clients\""
                    .iter()
                    .cycle()
                {
                    if done.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let (status, headers, body) = read_response(&mut stream, what);
        done.store(true, Ordering::Relaxed);
        assert_eq!(status, 408, "{what}: {body}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/problem+json"),
            "{what}"
        );
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["type"], "urn:tollgate:problem:request-timeout", "{what}");
        assert_eq!(problem["status"], 408, "{what}");
        // The rest of the body was never read: the connection cannot carry another request.
        read_until_closed(&mut stream, what);
        dripper.join().unwrap();
    }
}

/// (c) A prompt client is served as before, bodies included, and keep-alive works;
/// once the connection sits idle past the header read timeout, it is closed.
#[test]
fn a_prompt_client_is_served_and_an_idle_connection_closed() {
    let (gateway, _config) = start();
    let mut stream = connect(&gateway);
    stream
        .write_all(b"GET /v1/items/5 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut stream, "item");
    assert_eq!(status, 200, "{body}");
    let item: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(item["id"], 5);

    // The same connection, kept alive, with a body read to the end.
    let credentials = r#"{"username":"carol","password":"slow-clients"}"#;
    write!(
        stream,
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{credentials}",
        credentials.len()
    )
    .unwrap();
    let (status, _, body) = read_response(&mut stream, "login");
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(token["token_type"], "Bearer");

    let received = read_until_closed(&mut stream, "idle keep-alive connection");
    assert!(received.is_empty(), "{}", String::from_utf8_lossy(&received));
}
