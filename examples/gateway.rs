//! The demo gateway: a small API wrapped in the tollgate stack, configured from TOML.
//!
//! ```text
//! cargo run --example gateway -- --config examples/gateway.toml
//! cargo run --example gateway -- --config examples/gateway.toml --print-inventory
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{Value, json};
use tollgate::{Tollgate, TollgateConfig};
use tracing_subscriber::prelude::*;

#[derive(Parser, Debug)]
#[command(about = "tollgate demo gateway")]
struct Args {
    /// The TOML config file.
    #[arg(long, default_value = "examples/gateway.toml")]
    config: PathBuf,
    /// The address to listen on (overrides the config file's `listen`).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Print the data inventory as JSON and exit.
    #[arg(long)]
    print_inventory: bool,
}

#[derive(serde::Deserialize, Default)]
struct GatewaySection {
    listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with(tollgate::privacy::json_layer(std::io::stdout))
        .init();

    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("cannot read {}: {e}", args.config.display()))?;
    let mut document: toml::Table = toml::from_str(&text)?;
    let gateway: GatewaySection = document
        .remove("gateway")
        .map(|v| v.try_into())
        .transpose()?
        .unwrap_or_default();
    let config: TollgateConfig = toml::Value::Table(document).try_into()?;
    let tollgate = Tollgate::from_config(&config)?;

    if args.print_inventory {
        println!("{}", tollgate.inventory().to_json());
        return Ok(());
    }

    let app = tollgate.apply(api());
    let addr = args
        .addr
        .or(gateway.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "tollgate demo gateway listening");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The demo API.
fn api() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/items/{id}", get(item))
        .route("/v1/me", get(me))
        .route("/login", post(login))
}

async fn item(Path(id): Path<u64>) -> Json<Value> {
    Json(json!({ "id": id, "name": format!("item {id}") }))
}

async fn me() -> Json<Value> {
    Json(json!({ "anonymous": true }))
}

async fn login() -> (http::StatusCode, Json<Value>) {
    (
        http::StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "invalid credentials" })),
    )
}
