//! A small server behind `RateLimitLayer`: anonymous callers are limited per /24
//! network, `/login` has a limit of its own and `/health` none.
//!
//! ```text
//! cargo run -p tollgate-ratelimit --example ratelimit
//! curl -i http://127.0.0.1:3005/items   # three times: the third answers 429
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tollgate_core::{PseudonymSecret, Pseudonymizer, RouteMap};
use tollgate_ratelimit::{LimitConfig, RateLimitConfig, RateLimitLayer, RateLimitRoute};

#[tokio::main]
async fn main() {
    let pseudonymizer = Pseudonymizer::new(PseudonymSecret::random().unwrap(), Duration::from_secs(86_400));
    let config = RateLimitConfig::default().tier(
        "anonymous",
        [
            LimitConfig::new("burst", 2, Duration::from_secs(10)),
            LimitConfig::new("daily", 1000, Duration::from_secs(86_400)),
        ],
    );
    let routes = RouteMap::new(
        [
            ("/health", RateLimitRoute::exempt()),
            (
                "/login",
                RateLimitRoute::limits([LimitConfig::new("login", 5, Duration::from_secs(60))]),
            ),
        ],
        RateLimitRoute::default(),
    )
    .expect("valid route patterns");
    let layer = RateLimitLayer::builder(config, pseudonymizer)
        .routes(routes)
        .build()
        .expect("valid rate-limit config");
    let app = Router::new()
        .route("/items", get(|| async { "items\n" }))
        .route("/login", get(|| async { "login\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .layer(layer);
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3005".into())
        .parse()
        .expect("ADDR is host:port");
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    println!("listening on http://{addr}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .unwrap();
}
