//! Interop: proofs and keys made by an independent implementation (Python with
//! joserfc, `tests/interop/dpop_client.py`) against the layer over real HTTP.
//! Skipped (with a message) when python3 or joserfc is missing, unless `CI` is set.

use std::process::Command;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate_auth::{AuthLayer, AuthRoute};
use tollgate_core::RouteMap;

use crate::common::*;

/// A token endpoint: a token bound to the key of the request's proof.
async fn token(State(layer): State<AuthLayer>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    match layer.verify_token_request_proof(&method, &uri, &headers).await {
        Ok(jkt) => {
            let mut c = claims("interop");
            c["cnf"] = json!({ "jkt": jkt });
            let t = sign(Algorithm::HS256, Some("hs256"), &c);
            axum::Json(json!({ "access_token": t, "token_type": "DPoP" })).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.slug()).into_response(),
    }
}

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import joserfc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but python3 with joserfc is missing"
        );
        eprintln!("skipped: python3 with joserfc not found (pip install joserfc)");
    }
    ok
}

#[tokio::test]
async fn proofs_from_an_independent_implementation_are_accepted() {
    if !python_ready() {
        return;
    }
    let cfg: tollgate_auth::AuthConfig = toml::from_str(&format!(
        r#"
[jwt]
issuer = "{ISS}"
audience = "{AUD}"
algorithms = ["HS256"]
[[jwt.keys]]
kid = "hs256"
alg = "HS256"
secret_hex = "{HMAC_HEX}"
[dpop]
"#
    ))
    .unwrap();
    let routes = RouteMap::new([("/token", AuthRoute::skip())], AuthRoute::required()).unwrap();
    let layer = AuthLayer::builder(cfg, pseudonymizer())
        .routes(routes)
        .build()
        .await
        .unwrap();
    let router = Router::new()
        .route("/me", get(me))
        .route("/token", post(token).with_state(layer.clone()))
        .layer(layer);
    let app = run(router).await;
    let script = format!("{}/tests/interop/dpop_client.py", env!("CARGO_MANIFEST_DIR"));
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || Command::new("python3").arg(script).arg(base).output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for line in lines {
        assert_eq!(line["token_status"], 200, "{line}");
        assert_eq!(line["jkt_matches"], true, "RFC 7638 thumbprints agree: {line}");
        assert_eq!(line["me_status"], 200, "{line}");
        assert_eq!(line["replay_status"], 401, "{line}");
    }
}
