//! What the fuzz targets share: one authentication layer, built once, with the key
//! kinds a deployment uses (HS256, RS256 and ES256 issuer keys, an API key, DPoP).

use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_auth::{AuthConfig, AuthLayer};
use tollgate_core::{PseudonymSecret, Pseudonymizer};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/tollgate-auth/tests/keys");

/// A pseudonymizer under a fixed secret.
pub fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(PseudonymSecret::from_bytes(&[7; 32]).unwrap(), Duration::from_secs(86_400))
}

/// The layer every authentication target drives.
pub fn auth_layer() -> &'static AuthLayer {
    static LAYER: OnceLock<AuthLayer> = OnceLock::new();
    LAYER.get_or_init(|| {
        let config: AuthConfig = toml::from_str(&format!(
            r#"
realm = "fuzz"
[jwt]
issuer = "https://issuer.fuzz"
audience = "fuzz"
algorithms = ["HS256", "RS256", "ES256"]
[[jwt.keys]]
kid = "hs"
alg = "HS256"
secret_hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
[[jwt.keys]]
kid = "rs"
alg = "RS256"
pem_file = "{KEYS}/rsa1.pub"
[[jwt.keys]]
kid = "es"
alg = "ES256"
pem_file = "{KEYS}/p256.pub"
[[api_keys]]
id = "key-1"
sha256 = "{digest}"
[dpop]
"#,
            digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ))
        .expect("the fuzz config parses");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(AuthLayer::from_config(&config, pseudonymizer()))
            .expect("the fuzz layer builds")
    })
}

/// Headers holding `name: value`, or `None` when HTTP forbids those bytes (hyper
/// would refuse the request before the stack sees it).
pub fn header(name: &'static str, value: &[u8]) -> Option<HeaderMap> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static(name), value);
    Some(headers)
}
