//! The HTTP/1.1 accept loop (hyper directly, so slow clients are bounded):
//! a client must send its headers within `header_timeout` (the handler
//! bounds the body), at most `cap` connections are served at once (a new
//! one waits up to the cap's `wait` for room, then gets `503` and is
//! closed), and on shutdown the listener closes at once while in-flight
//! requests get `shutdown_grace` to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    header_timeout: Duration,
    grace: Duration,
    cap: Option<(ConnectionCap, prometheus_client::metrics::counter::Counter)>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(
                    router
                        .oneshot(req.map(axum::body::Body::new))
                        .await
                        .unwrap_or_else(|e| match e {}),
                )
            }
        });
        let (builder, watcher, cap) = (builder.clone(), graceful.watcher(), cap.clone());
        tokio::spawn(async move {
            // Held for the connection's life.
            let _slot = match &cap {
                None => None,
                Some((cap, busy_count)) => match cap.admit().await {
                    Some(slot) => Some(slot),
                    None => {
                        busy_count.inc();
                        let busy = hyper::service::service_fn(|_req| async {
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(503)
                                    .header("connection", "close")
                                    .header("retry-after", "1")
                                    .body(axum::body::Body::from("busy, retry\n"))
                                    .unwrap_or_default(),
                            )
                        });
                        let _ = watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), busy))
                            .await;
                        return;
                    }
                },
            };
            let _ = watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "Shutdown grace ran out with requests still open.");
        }
    }
}

/// Connections the public listener serves at once.
#[derive(Clone)]
pub struct ConnectionCap {
    slots: Arc<Semaphore>,
    pub wait: Duration,
}

impl ConnectionCap {
    pub fn new(max: usize, wait: Duration) -> Self {
        ConnectionCap {
            slots: Arc::new(Semaphore::new(max)),
            wait,
        }
    }

    /// A slot for a new connection, waiting up to `wait`; `None`: full.
    pub async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }
}
