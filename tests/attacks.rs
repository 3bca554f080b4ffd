//! The attack catalogue of SECURITY.md against the whole stack over real HTTP: JWT
//! attacks (RFC 8725 and its update), header floods, spoofed addresses and log
//! injection. Every hostile request gets a 4xx, never a 5xx or a panic; the stack
//! logs one valid JSON line per request it answered and stays up.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::TollgateConfig;
use tollgate_test_support::jwt;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/tollgate-auth/tests/keys");

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).unwrap()
}

/// The whole stack with an issuer that signs with HS256, RS256 and ES256.
fn attack_config() -> TollgateConfig {
    let mut text = String::new();
    text.push_str(&format!(
        r#"
[pseudonym]
secret = "{PSEUDONYM_SECRET}"
[client]
trusted_proxies = ["127.0.0.0/8"]
[routes.default]
auth = "optional"
[routes."/v1/me"]
auth = "required"
[auth]
default_tier = "free"
[auth.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
algorithms = ["HS256", "RS256", "ES256"]
leeway = "30s"
[[auth.jwt.keys]]
kid = "test"
alg = "HS256"
secret_hex = "{secret}"
[[auth.jwt.keys]]
kid = "rs"
alg = "RS256"
pem_file = "{KEYS}/rsa1.pub"
[[auth.jwt.keys]]
kid = "es"
alg = "ES256"
pem_file = "{KEYS}/p256.pub"
[ratelimit]
default_tier = "free"
anonymous_tier = "free"
[ratelimit.tiers.free]
limits = [{{ name = "burst", quota = 100000, window = "1s" }}]
[fingerprint]
[anomaly]
"#,
        secret = hex::encode(JWT_SECRET),
    ));
    TollgateConfig::from_toml(&text).expect("the attack config parses")
}

fn b64(v: &impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn claims() -> Value {
    jwt::claims(ISSUER, AUDIENCE, "alice")
}

/// `header.payload.signature` with the given raw parts (already JSON text).
fn compact(header: &str, payload: &str, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(&header), b64(&payload), b64(&signature))
}

fn hs256_over(header: &str, payload: &str, secret: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let input = format!("{}.{}", b64(&header), b64(&payload));
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
    format!("{input}.{}", b64(&tag.as_ref()))
}

fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&key_file("rsa1.key")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key_file("p256.key")).unwrap(),
        _ => EncodingKey::from_secret(&JWT_SECRET),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

/// One request over a fresh connection, written byte for byte: the status and the
/// response head and body as text (lossy).
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

fn get_with(path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n").into_bytes();
    for (name, value) in headers {
        r.extend_from_slice(name.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(value);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

fn is_problem(text: &str) -> bool {
    text.to_ascii_lowercase()
        .contains("content-type: application/problem+json")
}

/// Every token attack of RFC 8725 (and its update) the stack must refuse.
fn token_attacks() -> Vec<(&'static str, String, u16)> {
    let good_hs = jwt::hs256(&JWT_SECRET, Some("test"), &claims());
    let parts: Vec<&str> = good_hs.split('.').collect();
    let payload = claims().to_string();
    let mut cases: Vec<(&'static str, String, u16)> = Vec::new();

    for alg in ["none", "None", "NONE", "nOnE", "", "none "] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "test"}).to_string();
        cases.push(("alg none, empty signature", compact(&header, &payload, b""), 401));
        cases.push((
            "alg none, a valid signature kept",
            format!("{}.{}.{}", b64(&header), parts[1], parts[2]),
            401,
        ));
    }
    // HMAC under the public key of an asymmetric key, naming it or not.
    for (pem, kid) in [("rsa1.pub", "rs"), ("p256.pub", "es")] {
        let public = key_file(pem);
        for header in [json!({"alg": "HS256", "kid": kid}), json!({"alg": "HS256"})] {
            cases.push((
                "HMAC keyed with a public key",
                hs256_over(&header.to_string(), &payload, &public),
                401,
            ));
        }
    }
    // kid abuse: traversal, SQL text, huge, not a string.
    for kid in [
        json!("../../../../../../dev/null"),
        json!("' OR '1'='1' --"),
        json!("x".repeat(1500)),
    ] {
        let header = json!({"alg": "HS256", "kid": kid}).to_string();
        cases.push(("hostile kid", hs256_over(&header, &payload, b""), 401));
    }
    for kid in [json!(42), json!({"k": 1}), json!(["test"]), json!(null)] {
        let header = json!({"alg": "HS256", "kid": kid}).to_string();
        cases.push((
            "kid not a string",
            hs256_over(&header, &payload, &JWT_SECRET),
            401,
        ));
    }
    // Keys chosen by the token: jku, x5u, an embedded jwk (never followed).
    let attacker = EncodingKey::from_rsa_pem(&key_file("rsa2.key")).unwrap();
    for extra in [
        json!({"jku": "http://127.0.0.1:1/jwks.json", "kid": "evil"}),
        json!({"x5u": "http://127.0.0.1:1/cert.pem", "kid": "evil"}),
        json!({"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}),
    ] {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = extra["kid"].as_str().map(String::from);
        h.jku = extra["jku"].as_str().map(String::from);
        h.x5u = extra["x5u"].as_str().map(String::from);
        let t = jsonwebtoken::encode(&h, &claims(), &attacker).unwrap();
        cases.push(("token-chosen key", t, 401));
    }
    // A critical extension nobody understands, correctly signed.
    let header = json!({"alg": "HS256", "kid": "test", "crit": ["urn:x"], "urn:x": 1}).to_string();
    cases.push(("unknown crit", hs256_over(&header, &payload, &JWT_SECRET), 401));
    // A nested JWT: the payload is another token, not a claims set.
    let header = json!({"alg": "HS256", "kid": "test", "cty": "JWT"}).to_string();
    cases.push(("nested JWT", hs256_over(&header, &good_hs, &JWT_SECRET), 401));
    // Duplicate claim names, correctly signed.
    let dup = payload.replacen('{', r#"{"sub":"admin","#, 1);
    let header = json!({"alg": "HS256", "kid": "test"}).to_string();
    cases.push(("duplicate sub", hs256_over(&header, &dup, &JWT_SECRET), 401));
    // Duplicate header parameters.
    let header = r#"{"alg":"HS256","kid":"test","alg":"none"}"#;
    cases.push(("duplicate alg", hs256_over(header, &payload, &JWT_SECRET), 401));
    // Time claims that are not NumericDates, or wrong.
    let now = jwt::unix_now();
    for (name, value) in [
        ("exp", json!("9999999999")),
        ("exp", json!(-1)),
        ("exp", json!(now as f64 - 100.5)),
        ("exp", json!(true)),
        ("nbf", json!("0")),
        ("nbf", json!(now + 3600)),
        ("iat", json!("yesterday")),
        ("iat", json!(now + 3600)),
    ] {
        let mut c = claims();
        c[name] = value;
        cases.push(("bad time claim", jwt::hs256(&JWT_SECRET, Some("test"), &c), 401));
    }
    // ECDSA with a DER signature instead of the raw R || S of JWS.
    let pkcs8 = pem_to_der(&key_file("p256.key"));
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8).unwrap();
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "ES256", "kid": "es"}).to_string()),
        b64(&payload)
    );
    let der = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    cases.push((
        "DER ECDSA signature",
        format!("{input}.{}", b64(&der.as_ref())),
        401,
    ));
    // Algorithm named differently from the key it names.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("es".into());
    let t = jsonwebtoken::encode(
        &h,
        &claims(),
        &EncodingKey::from_rsa_pem(&key_file("rsa1.key")).unwrap(),
    )
    .unwrap();
    cases.push(("RS256 naming the ES256 key", t, 401));
    // Garbage and sizes.
    cases.push(("not base64", "###.###.###".into(), 400));
    cases.push(("two parts", format!("{}.{}", parts[0], parts[1]), 401));
    cases.push((
        "64 KiB",
        format!("{}.{}.{}", parts[0], "A".repeat(64 << 10), parts[2]),
        431,
    ));
    cases
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_attack_catalogue_is_refused_over_http() {
    let server = serve(attack_config());
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/me", server.addr);

    // The legitimate tokens of each algorithm pass, so the refusals below mean something.
    for t in [
        jwt::hs256(&JWT_SECRET, Some("test"), &claims()),
        sign(Algorithm::RS256, "rs", &claims()),
        sign(Algorithm::ES256, "es", &claims()),
    ] {
        let r = client.get(&url).bearer_auth(&t).send().await.unwrap();
        assert_eq!(r.status(), 200, "a valid token");
    }
    let mut c = claims();
    c["exp"] = json!(jwt::unix_now() as f64 + 600.25);
    let fractional = jwt::hs256(&JWT_SECRET, Some("test"), &c);
    let r = client.get(&url).bearer_auth(&fractional).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "a fractional NumericDate is a NumericDate (RFC 7519 §2)"
    );

    let cases = token_attacks();
    for (name, token, status) in &cases {
        let request = get_with(
            "/v1/me",
            &[("authorization", format!("Bearer {token}").as_bytes())],
        );
        let (got, text) = raw(server.addr, &request).await;
        assert_eq!(
            got,
            *status,
            "{name} ({}): {}",
            &token[..token.len().min(200)],
            &text[..text.len().min(400)]
        );
        assert!(is_problem(&text), "{name}: problem+json");
    }
    // A megabyte exceeds hyper's buffer: it answers 431 before the stack runs.
    let huge = format!("Bearer {}", "A".repeat(1 << 20));
    let (status, _) = raw(
        server.addr,
        &get_with("/v1/me", &[("authorization", huge.as_bytes())]),
    )
    .await;
    assert_eq!(status, 431, "a 1 MiB token");

    tokio::time::sleep(Duration::from_millis(50)).await;
    let log = server.capture.text();
    assert!(!log.contains("panicked"), "no panic");
    assert!(server.capture.requests().len() >= cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_and_header_floods_get_a_4xx() {
    let server = serve(attack_config());
    let addr = server.addr;
    let token = jwt::hs256(&JWT_SECRET, Some("test"), &claims());

    // Non-UTF-8 and control bytes in credentials and the user agent.
    for (name, value) in [
        (
            "authorization",
            b"Bearer \xff\xfe\xfd.\x80\x81.\xc3\x28".as_slice(),
        ),
        ("authorization", b"Bearer abc\x01def.ghi.jkl".as_slice()),
        ("x-api-key", b"\xff\xff\xff\xff".as_slice()),
        ("x-api-key", b"tgk_\x7f\x1b[31m".as_slice()),
    ] {
        let (status, text) = raw(addr, &get_with("/v1/me", &[(name, value)])).await;
        assert!((400..500).contains(&status), "{name} {value:?}: {status}");
        // hyper answers bytes HTTP forbids (400, empty) before the stack runs; the
        // stack answers everything else with problem+json.
        let by_hyper = status == 400 && text.to_ascii_lowercase().contains("content-length: 0");
        assert!(by_hyper || is_problem(&text), "{name} {value:?}: {text}");
    }

    // Hundreds of headers: hyper refuses before the stack runs (431, no body).
    let many: Vec<(String, Vec<u8>)> = (0..300).map(|i| (format!("x-h{i}"), b"v".to_vec())).collect();
    let refs: Vec<(&str, &[u8])> = many.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    let (status, _) = raw(addr, &get_with("/v1/items/1", &refs)).await;
    assert!((400..500).contains(&status), "300 headers: {status}");

    // Thousands of X-Forwarded-For hops, in one header and in 60.
    let hops: Vec<String> = (0..3000)
        .map(|i| format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256))
        .collect();
    let one = hops.join(", ");
    let (status, text) = raw(
        addr,
        &get_with(
            "/v1/items/1",
            &[
                ("x-forwarded-for", one.as_bytes()),
                ("authorization", format!("Bearer {token}").as_bytes()),
            ],
        ),
    )
    .await;
    assert!(
        status == 200 || ((400..500).contains(&status) && is_problem(&text)),
        "3000 hops: {status}"
    );
    let split: Vec<(&str, &[u8])> = (0..60).map(|i| ("x-forwarded-for", hops[i].as_bytes())).collect();
    let (status, text) = raw(addr, &get_with("/v1/items/1", &split)).await;
    assert!(
        status == 200 || ((400..500).contains(&status) && is_problem(&text)),
        "60 headers of hops: {status}"
    );
    for spoof in ["unknown", "999.1.1.1", "[::1", "1.2.3.4:99999", "\"><script>"] {
        let (status, _) = raw(
            addr,
            &get_with("/v1/items/1", &[("x-forwarded-for", spoof.as_bytes())]),
        )
        .await;
        assert_eq!(status, 200, "an unparsable hop is ignored, not an error: {spoof}");
        let forwarded = format!("for={spoof}");
        let (status, _) = raw(
            addr,
            &get_with("/v1/items/1", &[("forwarded", forwarded.as_bytes())]),
        )
        .await;
        assert_eq!(status, 200, "an unparsable Forwarded is ignored: {spoof}");
    }

    // Still up and answering.
    let (status, _) = raw(addr, &get_with("/health", &[])).await;
    assert_eq!(status, 200);
    assert!(!server.capture.text().contains("panicked"));
}

/// Newlines, ANSI escapes, quotes and JSON in the path, query and user agent stay
/// inside one valid JSON line per request, and nothing raw of them reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_injection_stays_inside_one_json_line() {
    let server = serve(attack_config());
    let addr = server.addr;
    let requests: Vec<Vec<u8>> = vec![
        get_with("/v1/items/1%0A%7B%22forged%22%3A1%7D%0A", &[]),
        get_with("/v1/items/%1B%5B31mred%1B%5B0m", &[]),
        get_with("/v1/items/1?q=%0D%0A%7B%22forged%22%3A2%7D", &[]),
        get_with(
            "/v1/items/1",
            &[("user-agent", b"Mozilla/5.0 \"}\n{\"forged\":3}".as_slice())],
        ),
        get_with(
            "/v1/items/1",
            &[("user-agent", b"curl/8 \x1b[2J\x1b[31m\\\"".as_slice())],
        ),
        get_with(
            "/v1/items/1",
            &[("user-agent", "Mozilla/5.0 \u{202e}evil\u{2028}line".as_bytes())],
        ),
        get_with(
            "/v1/items/1",
            &[("accept", b"text/html\",\"forged\":\"4".as_slice())],
        ),
    ];
    // Requests whose bytes break HTTP (a raw newline or escape in a header) are
    // refused by hyper before the stack runs; the others pass through the stack.
    let mut through_stack = 0;
    for r in &requests {
        let (status, text) = raw(addr, r).await;
        assert!(status < 500, "{status}");
        through_stack += usize::from(text.to_ascii_lowercase().contains("\r\nratelimit:"));
    }
    assert!(through_stack >= 4, "{through_stack} requests reached the stack");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = server.capture.text();
    let mut lines = 0;
    for line in text.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON line ({e}): {line:?}"));
        assert!(
            v.get("forged").is_none() && v["span"].get("forged").is_none(),
            "{line}"
        );
        lines += 1;
    }
    assert_eq!(
        server.capture.requests().len(),
        through_stack,
        "one line per request ({lines} lines in all)"
    );
    // Nothing of the hostile text itself is kept: paths are logged as route
    // templates, user agents as coarse families, and axum's rejection events (which
    // quote the input) are never written.
    for raw_text in ["\u{1b}", "forged", "\u{202e}", "\u{2028}", "\\u001b", "red"] {
        assert!(!text.contains(raw_text), "{raw_text:?} reached the log:\n{text}");
    }
}
