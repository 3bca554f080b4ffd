//! A small gateway for the tests: a stand-in authentication layer, the
//! fingerprinting layer, and a handler that reports the verdict; served on 127.0.0.1
//! behind a "trusted proxy" so tests choose client addresses with X-Forwarded-For.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tollgate_core::problem::types;
use tollgate_core::{
    ClientConfig, Clock, CredentialKind, FakeClock, MemoryFreezeList, Principal, Problem, Pseudonymizer,
    SessionInfo, Timestamp,
};
use tollgate_fingerprint::{FingerprintBuilder, FingerprintConfig, FingerprintLayer, MemorySessionStore};

pub const FIREFOX: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
pub const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";

pub struct Env {
    pub clock: FakeClock,
    pub p: Pseudonymizer,
    pub freeze_list: MemoryFreezeList,
}

impl Env {
    pub fn new() -> Self {
        let clock = tollgate_test_support::clock();
        let p = tollgate_test_support::pseudonymizer_with_clock(&clock);
        let freeze_list = MemoryFreezeList::with_clock(1_000, Arc::new(clock.clone()));
        Env {
            clock,
            p,
            freeze_list,
        }
    }

    /// The principal the stand-in auth layer makes for a bearer token `jti`.
    pub fn principal(&self, jti: &str) -> Principal {
        Principal::new(
            &self.p,
            CredentialKind::Jwt,
            &format!("subject-of-{jti}"),
            jti.as_bytes(),
        )
    }

    /// A builder from `config` on this environment's clock and freeze list, trusting
    /// 127.0.0.0/8 as a proxy.
    pub fn builder(&self, config: &FingerprintConfig) -> FingerprintBuilder {
        FingerprintLayer::builder(config.clone(), self.p.clone())
            .clock(Arc::new(self.clock.clone()))
            .freeze_list(Arc::new(self.freeze_list.clone()))
            .client(ClientConfig::default().trust_proxies(["127.0.0.0/8".parse().unwrap()]))
    }

    /// A layer from `config`, as [`Env::builder`] makes it.
    pub fn layer(&self, config: &FingerprintConfig) -> FingerprintLayer {
        self.builder(config).build().unwrap()
    }

    /// The in-process session store the layer would make from `config`, on this
    /// environment's clock, for tests that read it.
    pub fn store(&self, config: &FingerprintConfig) -> MemorySessionStore {
        MemorySessionStore::with_clock(
            config.max_sessions,
            config.session_ttl,
            Arc::new(self.clock.clone()),
        )
    }

    /// A layer from `config` over `store`.
    pub fn layer_on(&self, config: &FingerprintConfig, store: &MemorySessionStore) -> FingerprintLayer {
        self.builder(config)
            .store(Arc::new(store.clone()))
            .build()
            .unwrap()
    }
}

#[derive(Clone)]
struct AuthState {
    p: Pseudonymizer,
    clock: FakeClock,
    freeze_list: MemoryFreezeList,
    issued_at: Option<Timestamp>,
}

/// Stands in for the AuthLayer: `Authorization: Bearer <jti>` becomes a Principal,
/// and a frozen credential gets 401, as the real layer does with the shared list.
async fn fake_auth(State(s): State<AuthState>, mut req: Request, next: Next) -> Response {
    let jti = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if let Some(jti) = jti {
        let principal = Principal::new(
            &s.p,
            CredentialKind::Jwt,
            &format!("subject-of-{jti}"),
            jti.as_bytes(),
        )
        .with_issued_at(s.issued_at.unwrap_or_else(|| s.clock.now()));
        if s.freeze_list.check_now(&principal).is_some() {
            return Problem::new(types::CREDENTIAL_FROZEN).into_response();
        }
        req.extensions_mut().insert(principal);
    }
    next.run(req).await
}

async fn me(info: Option<SessionInfo>) -> String {
    match info {
        Some(info) => format!("{} {}", info.health, info.reasons),
        None => "none".into(),
    }
}

/// The app: `/me` under `layer`, with the stand-in auth outside it.
pub fn app(env: &Env, layer: FingerprintLayer, issued_at: Option<Timestamp>) -> Router {
    app_with_routes(env, Router::new().route("/me", get(me)), layer, issued_at)
}

pub fn app_with_routes(
    env: &Env,
    routes: Router,
    layer: FingerprintLayer,
    issued_at: Option<Timestamp>,
) -> Router {
    let state = AuthState {
        p: env.p.clone(),
        clock: env.clock.clone(),
        freeze_list: env.freeze_list.clone(),
        issued_at,
    };
    routes.layer(layer).layer(from_fn_with_state(state, fake_auth))
}

pub fn me_route() -> axum::routing::MethodRouter {
    get(me)
}

/// One client: an address (sent as X-Forwarded-For) and a user agent.
#[derive(Clone, Copy)]
pub struct Client {
    pub ip: &'static str,
    pub user_agent: &'static str,
}

pub struct Answer {
    pub status: u16,
    pub body: String,
    pub www_authenticate: Option<String>,
}

pub async fn call(addr: SocketAddr, path: &str, token: &str, client: Client) -> Answer {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-forwarded-for", client.ip)
        .header("user-agent", client.user_agent)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    Answer {
        status,
        body: response.text().await.unwrap(),
        www_authenticate,
    }
}
