//! Several trusted issuers (`[[auth.issuers]]`): each token is verified by the
//! issuer its `iss` names, with that issuer's keys, audiences and claims.

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate_auth::{AuthConfig, AuthLayer};

use crate::common::*;

const ISS_A: &str = "https://a.test";
const ISS_B: &str = "https://b.test";

fn issuers_config(legacy: bool) -> AuthConfig {
    let legacy = if legacy {
        format!(
            r#"
[jwt]
issuer = "{ISS}"
audience = "{AUD}"
algorithms = ["HS256"]
[[jwt.keys]]
alg = "HS256"
secret_hex = "{HMAC_HEX}"
"#
        )
    } else {
        String::new()
    };
    toml::from_str(&format!(
        r#"
{legacy}
[[issuers]]
issuer = "{ISS_A}"
audience = "api-a"
algorithms = ["HS256"]
tier_claim = "plan"
[[issuers.keys]]
alg = "HS256"
secret_hex = "{HMAC_HEX}"

[[issuers]]
issuer = "{ISS_B}"
audience = ["api-b", "api-b2"]
algorithms = ["ES256"]
tier_claim = "tier"
required_claims = ["exp", "email"]
[[issuers.keys]]
alg = "ES256"
pem_file = "{dir}/tests/keys/p256.pub"
"#,
        dir = env!("CARGO_MANIFEST_DIR"),
    ))
    .unwrap()
}

fn token(alg: Algorithm, iss: &str, aud: &str, extra: Value) -> String {
    let now = now();
    let mut c = json!({"sub": "alice", "iss": iss, "aud": aud, "iat": now, "exp": now + 600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    if c["iss"].is_null() {
        c.as_object_mut().unwrap().remove("iss");
    }
    sign(alg, None, &c)
}

#[tokio::test]
async fn each_issuer_accepts_its_own_tokens_and_refuses_crossed_ones() {
    for legacy in [false, true] {
        let layer = AuthLayer::from_config(&issuers_config(legacy), pseudonymizer())
            .await
            .unwrap();
        let app = run(app(layer)).await;

        let a = token(Algorithm::HS256, ISS_A, "api-a", json!({"plan": "pro"}));
        let r = app.bearer("/me", &a).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["tier"], "pro", "issuer A's tier claim");

        let b = token(
            Algorithm::ES256,
            ISS_B,
            "api-b2",
            json!({"tier": "gold", "plan": "pro", "email": "a@b.test"}),
        );
        let r = app.bearer("/me", &b).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["tier"], "gold", "issuer B's tier claim");

        let crossed = [
            (
                "A's iss, B's key",
                token(Algorithm::ES256, ISS_A, "api-a", json!({})),
            ),
            (
                "A's iss, B's audience",
                token(Algorithm::HS256, ISS_A, "api-b", json!({})),
            ),
            (
                "B's iss, A's key",
                token(Algorithm::HS256, ISS_B, "api-b", json!({"email": "a@b.test"})),
            ),
            (
                "B's iss, A's audience",
                token(Algorithm::ES256, ISS_B, "api-a", json!({"email": "a@b.test"})),
            ),
            (
                "B without its required claim",
                token(Algorithm::ES256, ISS_B, "api-b", json!({})),
            ),
            (
                "unknown issuer",
                token(Algorithm::HS256, "https://c.test", "api-a", json!({})),
            ),
            (
                "no issuer",
                token(Algorithm::HS256, "", "api-a", json!({"iss": null})),
            ),
        ];
        for (name, t) in crossed {
            let (status, code, _) = outcome(app.bearer("/me", &t).await).await;
            assert_eq!(
                (status, code.as_deref()),
                (401, Some("invalid_token")),
                "{name} (legacy: {legacy})"
            );
        }

        // The single-issuer section keeps working next to the list.
        let legacy_token = token(Algorithm::HS256, ISS, AUD, json!({}));
        let status = app.bearer("/me", &legacy_token).await.status();
        assert_eq!(status, if legacy { 200 } else { 401 }, "legacy: {legacy}");
    }
}

#[tokio::test]
async fn issuer_settings_are_checked() {
    let mut cfg = issuers_config(false);
    cfg.issuers[1].issuer = tollgate_auth::OneOrMany(Vec::new());
    let err = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap_err();
    assert_eq!(err.setting, "auth.issuers[1].issuer");

    let mut cfg = issuers_config(false);
    cfg.issuers[1].issuer = tollgate_auth::OneOrMany(vec![ISS_A.into()]);
    let err = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap_err();
    assert_eq!(err.setting, "auth.issuers[1].issuer", "listed twice");

    let mut cfg = issuers_config(false);
    cfg.issuers[0].algorithms = vec!["XS1".into()];
    let err = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap_err();
    assert_eq!(err.setting, "auth.issuers[0].algorithms");

    let mut cfg = issuers_config(false);
    cfg.issuers[1].keys.clear();
    let err = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap_err();
    assert_eq!(err.setting, "auth.issuers[1]");
}
