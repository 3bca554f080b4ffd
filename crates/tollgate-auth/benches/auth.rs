//! Verification per algorithm, the verified-token cache hit, API key lookup, and the
//! whole service on a cache hit against a bare inner service.
//!
//! `cargo bench -p tollgate-auth --bench auth -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::Digest;
use tollgate_auth::{AuthConfig, AuthLayer, JwtKey, bench};
use tollgate_core::{PseudonymSecret, Pseudonymizer};
use tower::{Layer, Service, ServiceExt};

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn keys(alg: Algorithm) -> (EncodingKey, JwtKey) {
    let ours: tollgate_auth::Algorithm = format!("{alg:?}").parse().unwrap();
    let pem = |name: &str| JwtKey::from_pem(ours, &key(name)).unwrap();
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => (
            EncodingKey::from_secret(SECRET),
            JwtKey::from_secret(ours, SECRET).unwrap(),
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&key("p256.key")).unwrap(),
            pem("p256.pub"),
        ),
        Algorithm::ES384 => (
            EncodingKey::from_ec_pem(&key("p384.key")).unwrap(),
            pem("p384.pub"),
        ),
        Algorithm::EdDSA => (
            EncodingKey::from_ed_pem(&key("ed25519.key")).unwrap(),
            pem("ed25519.pub"),
        ),
        _ => (
            EncodingKey::from_rsa_pem(&key("rsa1.key")).unwrap(),
            pem("rsa1.pub"),
        ),
    }
}

const ALGS: &[Algorithm] = &[
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn token(alg: Algorithm, sub: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "sub": sub, "iss": "https://issuer.test", "aud": "api", "iat": now, "exp": now + 3600,
        "jti": format!("jti-{sub}"), "scope": "read:items write:items", "plan": "pro",
    });
    let mut h = Header::new(alg);
    h.kid = Some(format!("{alg:?}"));
    jsonwebtoken::encode(&h, &claims, &keys(alg).0).unwrap()
}

fn layer(rt: &tokio::runtime::Runtime) -> AuthLayer {
    let algs: Vec<String> = ALGS.iter().map(|a| format!("\"{a:?}\"")).collect();
    let config: AuthConfig = toml::from_str(&format!(
        r#"
[jwt]
issuer = "https://issuer.test"
audience = "api"
algorithms = [{}]
keys = []
tier_claim = "plan"
[[api_keys]]
id = "key-1"
sha256 = "{}"
tier = "pro"
scopes = ["read:items"]
"#,
        algs.join(", "),
        hex::encode(sha2::Sha256::digest(b"tg_bench_key_0123456789abcdef"))
    ))
    .unwrap();
    let p = Pseudonymizer::new(
        PseudonymSecret::from_bytes(&[5; 32]).unwrap(),
        Duration::from_secs(86_400),
    );
    let mut builder = AuthLayer::builder(config, p);
    for alg in ALGS {
        builder = builder.jwt_key(Some(&format!("{alg:?}")), keys(*alg).1);
    }
    rt.block_on(builder.build()).unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

/// A layer checking DPoP proofs (window of an hour, so a proof made once stays
/// valid for the whole run).
fn dpop_layer(rt: &tokio::runtime::Runtime) -> AuthLayer {
    let config: AuthConfig = toml::from_str(
        r#"
[dpop]
max_age = "1h"
[[api_keys]]
id = "key-1"
sha256 = "6f7aa9b3b51bdd2c3c1b0d0f0f2f6a5ecb1d5c1d1c7b8b4d2b0f8c1b1c3c2b1a"
"#,
    )
    .unwrap();
    let p = Pseudonymizer::new(
        PseudonymSecret::from_bytes(&[5; 32]).unwrap(),
        Duration::from_secs(86_400),
    );
    rt.block_on(AuthLayer::builder(config, p).build()).unwrap()
}

/// A request's headers with a DPoP proof by `alg`'s test key for `GET
/// http://api.test/v1/me` and `token`.
fn dpop_headers(alg: Algorithm, token: &str) -> HeaderMap {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let key = keys(alg).0;
    let mut jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
    jwk.as_object_mut()
        .unwrap()
        .retain(|k, _| ["kty", "crv", "x", "y", "n", "e"].contains(&k.as_str()));
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": format!("{alg:?}"), "jwk": jwk});
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let ath = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(token.as_bytes()));
    let claims = serde_json::json!({
        "jti": "bench-jti", "htm": "GET", "htu": "http://api.test/v1/me", "iat": now, "ath": ath,
    });
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).unwrap();
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.test"));
    h.insert(
        "dpop",
        HeaderValue::from_str(&format!("{message}.{sig}")).unwrap(),
    );
    h
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = layer(&rt);

    let dpop = dpop_layer(&rt);
    let access_token = token(Algorithm::ES256, "erin");
    let uri: http::Uri = "/v1/me".parse().unwrap();
    let mut proofs = c.benchmark_group("dpop_proof");
    for alg in [
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::RS256,
        Algorithm::PS256,
    ] {
        let headers = dpop_headers(alg, &access_token);
        assert!(
            bench::verify_dpop(&dpop, &http::Method::GET, &uri, &headers, access_token.as_bytes()),
            "{alg:?} proof verifies"
        );
        proofs.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| {
                bench::verify_dpop(
                    &dpop,
                    &http::Method::GET,
                    black_box(&uri),
                    black_box(&headers),
                    access_token.as_bytes(),
                )
            })
        });
    }
    proofs.finish();

    let mut verify = c.benchmark_group("verify");
    for alg in ALGS {
        let t = token(*alg, "alice");
        assert!(bench::verify_jwt(&auth, &t), "{alg:?} verifies");
        verify.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| bench::verify_jwt(&auth, black_box(&t)))
        });
    }
    verify.finish();

    let mut hit = c.benchmark_group("cache_hit");
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let t = token(alg, "bob");
        let headers = bearer(&t);
        assert!(bench::authenticate(&auth, &headers).is_some());
        hit.bench_function(format!("{alg:?} ({} byte token)", t.len()), |b| {
            b.iter(|| bench::authenticate(&auth, black_box(&headers)))
        });
    }
    hit.finish();

    let mut hashes = c.benchmark_group("cache_key");
    let t = token(Algorithm::RS256, "carol");
    hashes.bench_function(format!("siphash13-128, the cache key ({} bytes)", t.len()), |b| {
        b.iter(|| bench::cache_key(&auth, black_box(t.as_bytes())))
    });
    hashes.bench_function(
        format!("siphash24-128 ({} bytes, for comparison)", t.len()),
        |b| {
            b.iter(|| {
                use siphasher::sip128::Hasher128;
                use std::hash::Hasher;
                let mut h = siphasher::sip128::SipHasher24::new_with_keys(1, 2);
                h.write(black_box(t.as_bytes()));
                h.finish128().as_u128()
            })
        },
    );
    hashes.bench_function(format!("sha256 ({} bytes, for comparison)", t.len()), |b| {
        b.iter(|| sha2::Sha256::digest(black_box(t.as_bytes())))
    });
    hashes.finish();

    let mut api = c.benchmark_group("api_key");
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-api-key",
        HeaderValue::from_static("tg_bench_key_0123456789abcdef"),
    );
    assert!(bench::authenticate(&auth, &headers).is_some());
    api.bench_function("lookup (sha256 + constant-time compare)", |b| {
        b.iter(|| bench::authenticate(&auth, black_box(&headers)))
    });
    api.finish();

    // The whole service on a cache hit, against the bare inner service.
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
    });
    let mut service = auth.layer(inner);
    let t = token(Algorithm::RS256, "dave");
    let value = HeaderValue::from_str(&format!("Bearer {t}")).unwrap();
    let mut svc = c.benchmark_group("service");
    svc.bench_function("bare inner service", |b| {
        let mut bare = inner;
        b.iter(|| {
            let req = Request::builder()
                .header("authorization", value.clone())
                .body(Body::empty())
                .unwrap();
            rt.block_on(async { bare.ready().await.unwrap().call(req).await.unwrap() })
        })
    });
    svc.bench_function("AuthService, cache hit", |b| {
        b.iter(|| {
            let req = Request::builder()
                .header("authorization", value.clone())
                .body(Body::empty())
                .unwrap();
            let r = rt.block_on(async { service.ready().await.unwrap().call(req).await.unwrap() });
            assert_eq!(r.status(), 200);
            r
        })
    });
    svc.finish();
}

criterion_group!(auth_benches, benches);
criterion_main!(auth_benches);
