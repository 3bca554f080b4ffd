//! A DPoP client (RFC 9449) for the demo gateway: makes a P-256 key, logs in with a
//! proof (so the token is bound to the key), then calls the API with a fresh proof
//! per request, and shows what a thief holding only the token gets.
//!
//! ```text
//! cargo run --example gateway &           # the demo gateway on 127.0.0.1:3000
//! cargo run --example dpop_client         # alice / wonderland
//! cargo run --example dpop_client -- --base http://127.0.0.1:3001 --username bob --password builder
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(about = "DPoP client for the tollgate demo gateway")]
struct Args {
    /// The gateway's base URL (what `htu` names).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    base: String,
    #[arg(long, default_value = "alice")]
    username: String,
    #[arg(long, default_value = "wonderland")]
    password: String,
}

/// The client's key pair: the private key signs proofs, the public JWK travels in them.
struct DpopKey {
    key: EncodingKey,
    jwk: Jwk,
    nonce: Option<String>,
}

impl DpopKey {
    fn generate() -> Result<Self, Box<dyn std::error::Error>> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?;
        let pkcs8 = pair.to_pkcs8v1()?;
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
        Ok(DpopKey {
            key,
            jwk,
            nonce: None,
        })
    }

    /// A proof for one request: `htm`, `htu` (no query or fragment), a fresh `jti`,
    /// `iat` now, and `ath` when an access token goes with it.
    fn proof(&self, htm: &str, htu: &str, token: Option<&str>) -> Result<String, Box<dyn std::error::Error>> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(self.jwk.clone());
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|e| format!("no randomness: {e}"))?;
        let iat = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut claims = json!({ "jti": hex::encode(jti), "htm": htm, "htu": htu, "iat": iat });
        if let Some(t) = token {
            claims["ath"] = json!(URL_SAFE_NO_PAD.encode(Sha256::digest(t.as_bytes())));
        }
        if let Some(n) = &self.nonce {
            claims["nonce"] = json!(n);
        }
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let mut key = DpopKey::generate()?;
    let login_url = format!("{}/login", args.base);
    let credentials = json!({ "username": args.username, "password": args.password });

    // Log in with a proof: the token comes back bound to the key (cnf.jkt).
    let mut login = None;
    for _ in 0..2 {
        let r = http
            .post(&login_url)
            .header("dpop", key.proof("POST", &login_url, None)?)
            .json(&credentials)
            .send()
            .await?;
        // A server that wants nonces answers use_dpop_nonce once with one to use.
        if let Some(n) = r.headers().get("dpop-nonce").and_then(|v| v.to_str().ok()) {
            key.nonce = Some(n.to_string());
        }
        let status = r.status();
        let body: Value = r.json().await?;
        if status.is_success() {
            login = Some(body);
            break;
        }
        if body["error"] != "use_dpop_nonce" {
            return Err(format!("login failed: {status} {body}").into());
        }
    }
    let login = login.ok_or("login failed twice")?;
    let token = login["access_token"]
        .as_str()
        .ok_or("no access_token")?
        .to_string();
    println!("login: token_type = {}", login["token_type"]);

    // Call the API: a fresh proof per request, the token with the DPoP scheme.
    for path in ["/v1/me", "/v1/bound", "/v1/bound"] {
        let url = format!("{}{path}", args.base);
        let r = http
            .get(&url)
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", key.proof("GET", &url, Some(&token))?)
            .send()
            .await?;
        println!("GET {path} -> {} {}", r.status(), r.text().await?);
    }

    // What a thief with the token alone gets: as a bearer token, and with a
    // replayed proof.
    let url = format!("{}/v1/bound", args.base);
    let r = http.get(&url).bearer_auth(&token).send().await?;
    println!(
        "stolen token as Bearer -> {} {}",
        r.status(),
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    );
    let proof = key.proof("GET", &url, Some(&token))?;
    for attempt in ["first use", "replay"] {
        let r = http
            .get(&url)
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", &proof)
            .send()
            .await?;
        println!("proof {attempt} -> {}", r.status());
    }
    Ok(())
}
