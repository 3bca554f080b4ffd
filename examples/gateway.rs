//! The demo gateway: a small API wrapped in the whole tollgate stack, configured
//! from TOML, JSON request logs on stdout.
//!
//! ```text
//! cargo run --example gateway                       # examples/gateway.toml, 127.0.0.1:3000
//! cargo run --example gateway -- --addr 127.0.0.1:3001 --config examples/gateway.toml
//! cargo run --example gateway -- --print-inventory  # the data inventory as JSON
//! ```
//!
//! Routes, each with its policy in `[routes]` of the config file:
//!
//! | route | policy |
//! |---|---|
//! | `GET /health` | no authentication, fingerprinting, limits or anomaly tagging; minimal log line |
//! | `GET /v1/items/{id}` | anonymous callers welcome; items exist for ids 1 to `[gateway] items` (404 above) |
//! | `GET /v1/me` | credentials required |
//! | `GET /v1/bound` | a DPoP-bound token and a fresh DPoP proof required (RFC 9449) |
//! | `POST /login` | demo users from `[gateway]`, answers an HS256 token (bound to the key of a `DPoP` proof header when one is sent, `token_type: "DPoP"`); its own limit of 5 a minute |
//! | `GET /.well-known/oauth-protected-resource` | RFC 9728 metadata, answered by the auth layer |
//!
//! `cargo run --example dpop_client` logs in with a fresh key and calls the API
//! with DPoP proofs.
//! | `/admin/*` | the freeze admin API; the `tollgate:admin` scope required |
//!
//! Slow clients: a request head must arrive within `[gateway] header_read_timeout`
//! (else the connection is closed; the same limit closes idle keep-alive
//! connections), a body within `[gateway] body_read_timeout` (else 408 problem+json).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, HttpBody};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tollgate::core::problem::{Problem, method_not_allowed, types};
use tollgate::core::{LoginAttempt, Principal, SessionInfo};
use tollgate::operator::{Observers, Operator};
use tollgate::{Tollgate, TollgateConfig};
use tower::ServiceExt;
use tracing_subscriber::prelude::*;

#[derive(Parser, Debug)]
#[command(about = "tollgate demo gateway")]
struct Args {
    /// The TOML config file.
    #[arg(long, default_value = "examples/gateway.toml")]
    config: PathBuf,
    /// The address to listen on (overrides `[gateway] listen`).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Print the data inventory as JSON and exit.
    #[arg(long)]
    print_inventory: bool,
}

/// `[gateway]`: the demo's own settings, outside the tollgate stack.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GatewaySection {
    listen: Option<SocketAddr>,
    /// Demo users `/login` accepts. Demo only: real systems keep password hashes.
    users: Vec<DemoUser>,
    /// The HS256 signing secret (hex) for `/login` tokens; it must match an
    /// `[[auth.jwt.keys]]` entry with `alg = "HS256"` and `kid = "demo-hs256"`.
    login_secret_hex: Option<String>,
    issuer: String,
    audience: String,
    /// Items exist for ids 1 to this; above it `/v1/items/{id}` answers 404.
    items: u64,
    /// How long a client may take to send a request head (request line and
    /// headers); then the connection is closed. hyper starts this timer whenever it
    /// waits for a request, so it is also the idle limit of keep-alive connections.
    #[serde(with = "tollgate::core::config::duration")]
    header_read_timeout: Duration,
    /// How long a client may take to send a request body, counted from when the
    /// request reaches the API; then it answers 408 and closes the connection.
    #[serde(with = "tollgate::core::config::duration")]
    body_read_timeout: Duration,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct DemoUser {
    username: String,
    password: String,
    plan: String,
    #[serde(default)]
    scopes: Vec<String>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            listen: None,
            users: Vec::new(),
            login_secret_hex: None,
            issuer: String::new(),
            audience: String::new(),
            items: 1000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

struct Login {
    users: Vec<DemoUser>,
    key: Option<EncodingKey>,
    issuer: String,
    audience: String,
    /// The auth layer, to check the DPoP proofs of token requests.
    auth: Option<tollgate::auth::AuthLayer>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // With --print-inventory, stdout carries the inventory alone: logs go to stderr.
    let (writer, _flush_on_exit) = if args.print_inventory {
        tollgate::privacy::BatchWriter::stderr()
    } else {
        // Request lines are written to stdout in batches, so no request waits on a write.
        tollgate::privacy::BatchWriter::stdout()
    };
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("cannot read {}: {e}", args.config.display()))?;
    // One parse: the demo's own `[gateway]` section out, the rest is tollgate's.
    let mut document: toml::Table = toml::from_str(&text)?;
    let gateway: GatewaySection = document
        .remove("gateway")
        .map(|v| v.try_into())
        .transpose()?
        .unwrap_or_default();
    // Zero would close every connection (or refuse every body) at once.
    if gateway.header_read_timeout.is_zero() || gateway.body_read_timeout.is_zero() {
        return Err("[gateway] header_read_timeout and body_read_timeout must be above zero".into());
    }
    let config = TollgateConfig::from_table(document)?;

    // The console's and the metrics' observers read the request records the log
    // layer writes from.
    let observers = Observers::new(&config);
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with(observers.attach(tollgate::privacy::json_layer(writer)))
        .init();
    tollgate::redact_panic_messages();
    let tollgate = Tollgate::from_config(&config).await?;

    let operator = Operator::new(&config, &tollgate, observers);
    if args.print_inventory {
        let mut inventory = tollgate.inventory();
        inventory.extend(operator.inventory());
        println!("{}", inventory.to_json());
        return Ok(());
    }

    let login = Arc::new(Login {
        key: gateway
            .login_secret_hex
            .as_deref()
            .map(hex::decode)
            .transpose()?
            .map(|secret| EncodingKey::from_secret(&secret)),
        users: gateway.users,
        issuer: gateway.issuer,
        audience: gateway.audience,
        auth: tollgate.auth().cloned(),
    });
    let api = api(login, gateway.items)
        .nest("/admin", operator.admin_api().merge(operator.console()))
        .merge(operator.well_known())
        .merge(operator.metrics());
    // Inside the stack, so its log and metrics record the 408 the client gets.
    let body_read_timeout = gateway.body_read_timeout;
    let api = api.layer(axum::middleware::from_fn(move |req, next| {
        read_body_within(body_read_timeout, req, next)
    }));
    let app = tollgate.apply(api);

    let addr = args
        .addr
        .or(gateway.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, shared_state = tollgate.is_shared(), "tollgate demo gateway listening");
    serve(listener, app, gateway.header_read_timeout).await;
    Ok(())
}

/// Serves `app` over HTTP/1.1 until ctrl-c, then waits for the open connections to
/// finish their requests. `axum::serve` sets no header read timeout (its hyper
/// builder has no timer), so a client that never finishes its headers would hold a
/// connection forever: this loop is `axum::serve`'s, with the timer and timeout set.
async fn serve(listener: tokio::net::TcpListener, app: Router, header_read_timeout: Duration) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // As `axum::serve`: a connection that failed before it was accepted is
                    // the client's business; anything else (too many open files) is
                    // waited out rather than spun on.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            _ = &mut ctrl_c => break,
        };
        // The stack reads the peer address from `ConnectInfo`, as under
        // `into_make_service_with_connect_info`.
        let service = app
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let connection = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Timeouts and clients that hang up end here; hyper's errors quote no input.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Gives the request body `limit` to arrive whole, however it trickles in (tower-http's
/// `DeadlineBody`, not an idle timer a byte a second would reset). A handler reading a
/// late body gets an error, which it would answer as a bad body; the client gets a 408
/// problem instead, and the connection is closed since the rest of the body is unread.
async fn read_body_within(limit: Duration, req: Request, next: Next) -> Response {
    // No body, no timer.
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&timed_out);
    let req = req.map(|body| {
        use http_body_util::BodyExt;
        Body::new(
            tower_http::timeout::DeadlineBody::new(limit, body).map_err(move |e| {
                if e.is::<tower_http::timeout::TimeoutError>() {
                    flag.store(true, Ordering::Relaxed);
                }
                e
            }),
        )
    });
    let response = next.run(req).await;
    if timed_out.load(Ordering::Relaxed) {
        return Problem::new(types::REQUEST_TIMEOUT)
            .with_detail("the request body did not arrive in time")
            .with_header(header::CONNECTION, HeaderValue::from_static("close"))
            .into_response();
    }
    response
}

/// The demo API.
fn api(login: Arc<Login>, items: u64) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/items/{id}", get(item).with_state(items))
        .route("/v1/me", get(me))
        .route("/v1/bound", get(me))
        .route("/login", post(log_in).with_state(login))
        // Unknown paths and methods answer problem+json too, like every refusal.
        .fallback(|| async { Problem::new(types::NOT_FOUND) })
        .method_not_allowed_fallback(method_not_allowed)
}

async fn item(
    State(items): State<u64>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<Value>, Problem> {
    // A path that is not a number is a problem, without axum's text quoting it.
    let Path(id) = id?;
    if !(1..=items).contains(&id) {
        return Err(Problem::new(types::NOT_FOUND).with_detail("no such item"));
    }
    Ok(Json(json!({ "id": id, "name": format!("item {id}") })))
}

/// What the stack knows about the caller: pseudonyms, never identifiers. The route
/// requires credentials, so a principal is always there.
async fn me(p: Principal, session: Option<SessionInfo>) -> Json<Value> {
    Json(json!({
        "subject": p.subject().to_string(),
        "credential": p.credential().as_str(),
        "tier": p.tier().as_str(),
        "scopes": p.scopes().iter().collect::<Vec<_>>(),
        "dpop_key": p.bound_key().map(|k| k.pseudonym().to_string()),
        "session": session.map(|s| json!({
            "session": s.session.to_string(),
            "health": s.health.as_str(),
            "reasons": s.reasons.to_string(),
        })),
    }))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// The demo token endpoint: a password grant, sender-constrained when the request
/// carries a DPoP proof (RFC 9449 §5): the token's `cnf.jkt` is the proof key's
/// thumbprint and its `token_type` is `DPoP`.
async fn log_in(
    State(login): State<Arc<Login>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Response {
    // A token endpoint answers errors in OAuth's shape (RFC 6749 §5.2), which its
    // clients read: `{"error": code}` as application/json.
    let error = |status: StatusCode, error: &str| (status, Json(json!({ "error": error }))).into_response();
    let Some(key) = &login.key else {
        return Problem::new(types::NOT_FOUND).into_response();
    };
    let Ok(Json(c)) = body else {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    // Constant-time comparisons joined with `&`, so the password is compared even when the
    // username differs (demo only: real systems compare password hashes).
    let user = login.users.iter().find(|u| {
        bool::from(u.username.as_bytes().ct_eq(c.username.as_bytes()))
            & bool::from(u.password.as_bytes().ct_eq(c.password.as_bytes()))
    });
    // The anomaly layer counts failures per account tried (a keyed hash of the name).
    let Some(user) = user else {
        let refused = error(StatusCode::BAD_REQUEST, "invalid_grant");
        return (LoginAttempt::failed(&c.username), refused).into_response();
    };
    let attempt = LoginAttempt::succeeded(&c.username);
    // A proof makes the token DPoP-bound; a bad proof is refused (RFC 9449 §5).
    let jkt = match (&login.auth, headers.contains_key("dpop")) {
        (Some(auth), true) => match auth.verify_token_request_proof(&method, &uri, &headers).await {
            Ok(jkt) => Some(jkt),
            Err(e) => {
                let nonce = e == tollgate::auth::AuthError::DpopNonce;
                let mut response = error(
                    StatusCode::BAD_REQUEST,
                    if nonce {
                        "use_dpop_nonce"
                    } else {
                        "invalid_dpop_proof"
                    },
                );
                if let Some(n) = auth.dpop_nonce().and_then(|n| HeaderValue::from_str(&n).ok()) {
                    response.headers_mut().insert("dpop-nonce", n);
                }
                return response;
            }
        },
        _ => None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = json!({
        "sub": user.username,
        "iss": login.issuer,
        "aud": login.audience,
        "iat": now,
        "exp": now + 3600,
        "jti": format!("{:032x}", rand_u128()),
        "plan": user.plan,
        "scope": user.scopes.join(" "),
    });
    let token_type = match jkt {
        Some(jkt) => {
            claims["cnf"] = json!({ "jkt": jkt });
            "DPoP"
        }
        None => "Bearer",
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("demo-hs256".into());
    match jsonwebtoken::encode(&header, &claims, key) {
        Ok(token) => (
            attempt,
            Json(json!({ "access_token": token, "token_type": token_type, "expires_in": 3600 })),
        )
            .into_response(),
        Err(_) => Problem::new(types::INTERNAL_ERROR).into_response(),
    }
}

fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    u128::from_le_bytes(bytes)
}
