//! The DPoP replay cache shared by two replicas over real HTTP: a proof accepted
//! by one `AuthLayer` is a replay on the other (`REDIS_URL`).

mod common;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::TestRedis;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_auth::{AuthConfig, AuthLayer, jwk_thumbprint};
use tollgate_redis::RedisReplayCache;
use tollgate_test_support::{pseudonymizer, serve};

const SECRET_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn replica(t: &TestRedis) -> String {
    let config: AuthConfig = toml::from_str(&format!(
        r#"
[jwt]
issuer = "https://issuer.test"
algorithms = ["HS256"]
[[jwt.keys]]
alg = "HS256"
secret_hex = "{SECRET_HEX}"
[dpop]
external_origin = "https://api.example"
"#
    ))
    .unwrap();
    let layer = AuthLayer::builder(config, pseudonymizer())
        .replay_cache(Arc::new(RedisReplayCache::new(&t.backend())))
        .build()
        .await
        .unwrap();
    let app = Router::new().route("/me", get(|| async { "ok" })).layer(layer);
    format!("http://{}", serve(app).await)
}

#[tokio::test]
async fn a_proof_used_on_one_replica_is_a_replay_on_the_other() {
    let Some(t) = TestRedis::new() else { return };
    let (a, b) = (replica(&t).await, replica(&t).await);

    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tollgate-auth/tests/keys/p256.key"
    ))
    .unwrap();
    let key = EncodingKey::from_ec_pem(&pem).unwrap();
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap()).unwrap();
    jwk.as_object_mut()
        .unwrap()
        .retain(|k, _| ["kty", "crv", "x", "y"].contains(&k.as_str()));
    let jkt = jwk_thumbprint(&jwk).unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "iss": "https://issuer.test", "exp": now() + 600, "cnf": {"jkt": jkt}}),
        &EncodingKey::from_secret(&hex_decode(SECRET_HEX)),
    )
    .unwrap();
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let claims = json!({
        "jti": format!("jti-{}", now()), "htm": "GET", "htu": "https://api.example/me", "iat": now(),
        "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
    });
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let proof = format!(
        "{message}.{}",
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap()
    );

    let client = reqwest::Client::new();
    let call = |base: &str| {
        client
            .get(format!("{base}/me"))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", &proof)
            .send()
    };
    assert_eq!(call(&a).await.unwrap().status(), 200, "first use, replica A");
    let r = call(&b).await.unwrap();
    assert_eq!(r.status(), 401, "the same proof on replica B");
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.contains("invalid_dpop_proof"), "{challenge}");
    // Redis holds one digest key for it, nothing raw.
    let keys = t.keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains("jti-") && !keys[0].contains(&jkt));
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
