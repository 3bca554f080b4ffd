//! Test servers on 127.0.0.1 over real HTTP.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};

use crate::LogCapture;

/// Serves `app` on an ephemeral port of 127.0.0.1, on the current Tokio runtime, with
/// `ConnectInfo<SocketAddr>` (as a deployment has it); returns the address.
///
/// The server runs until the runtime shuts down (the end of the test).
///
/// ```
/// use axum::{Router, routing::get};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let addr = tollgate_test_support::serve(Router::new().route("/health", get(|| async { "ok" }))).await;
/// assert!(addr.ip().is_loopback());
/// # }
/// ```
pub async fn serve(app: Router) -> SocketAddr {
    let listener = bind().await;
    let addr = listener.local_addr().expect("a bound listener has an address");
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .expect("the test server runs");
    });
    addr
}

/// A server started by [`serve_captured`].
#[derive(Clone, Debug)]
pub struct CapturedServer {
    /// Where it listens, on 127.0.0.1.
    pub addr: SocketAddr,
    /// Every byte its thread logged.
    pub capture: LogCapture,
}

/// Serves the app that `app` builds on a thread of its own (a current-thread runtime)
/// whose default subscriber is `log_layer(capture)`, every level enabled; served as
/// [`serve`] does.
///
/// Every event the server emits (the layers', axum's, hyper's) reaches the capture,
/// and nothing the test's own client logs does: the capture holds exactly what a
/// deployment would write. `app` runs on the server's runtime, so it may be async
/// (`Tollgate::from_config(..).await`).
///
/// ```
/// use axum::{Router, routing::get};
/// use tollgate_test_support::serve_captured;
///
/// let server = serve_captured(
///     |capture| tracing_subscriber::fmt::layer().json().with_writer(capture),
///     || async {
///         tracing::info!("building the app");
///         Router::new().route("/health", get(|| async { "ok" }))
///     },
/// );
/// assert!(server.capture.text().contains("building the app"));
/// ```
///
/// # Panics
/// If the server has not bound its port within 30 s (for instance because `app`
/// panicked: its message is printed first).
pub fn serve_captured<L, A, F>(
    log_layer: impl FnOnce(LogCapture) -> L + Send + 'static,
    app: A,
) -> CapturedServer
where
    L: Layer<Registry> + Send + Sync + 'static,
    A: FnOnce() -> F + Send + 'static,
    F: Future<Output = Router>,
{
    let capture = LogCapture::new();
    let writer = capture.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let subscriber = tracing_subscriber::registry()
            .with(log_layer(writer))
            .with(LevelFilter::TRACE);
        let _guard = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime starts");
        runtime.block_on(async move {
            let app = app().await;
            let listener = bind().await;
            tx.send(listener.local_addr().expect("a bound listener has an address"))
                .expect("the test waits for the address");
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .expect("the test server runs");
        });
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the test server starts");
    CapturedServer { addr, capture }
}

/// A port on 127.0.0.1 where nothing listens: bound, then released. For "the
/// server is down" tests, and for a child process told which port to take (another
/// process could take it first; on a test machine that does not happen in practice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral port on 127.0.0.1")
        .port()
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("an ephemeral port on 127.0.0.1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_body(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response.split("\r\n\r\n").nth(1).unwrap().to_string()
    }

    fn peer_app() -> Router {
        Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
    }

    #[tokio::test]
    async fn serve_answers_with_connect_info() {
        let addr = serve(peer_app()).await;
        assert_eq!(get_body(addr, "/peer").await, "127.0.0.1");
    }

    #[tokio::test]
    async fn serve_captured_captures_the_server_thread_only() {
        let server = serve_captured(
            |capture| tracing_subscriber::fmt::layer().json().with_writer(capture),
            || async {
                peer_app().route(
                    "/log",
                    get(|| async {
                        tracing::info!(target: "server", "handled");
                        "logged"
                    }),
                )
            },
        );
        tracing::info!(target: "client", "not the server's");
        assert_eq!(get_body(server.addr, "/peer").await, "127.0.0.1");
        assert_eq!(get_body(server.addr, "/log").await, "logged");
        assert_eq!(server.capture.lines_with_target("server").len(), 1);
        assert!(server.capture.lines_with_target("client").is_empty());
    }

    #[test]
    fn nothing_listens_on_a_free_port() {
        let port = free_port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
