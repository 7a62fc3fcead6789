//! The accept loop: hyper with a timer, so that a client that sends its
//! headers too slowly, or leaves a keep-alive connection idle, is cut off
//! after the request timeout; graceful shutdown lets requests in flight finish.
//!
//! HTTP/1.1 only: telling HTTP/2 apart would need a first read that no timer
//! covers, and a silent client could hold a connection forever.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::http::App;

/// Serves `app` on `listener` until `shutdown` completes, then waits for the
/// connections' requests in flight. With `peer_info`, each request carries
/// the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: App,
    header_timeout: Duration,
    peer_info: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Runs while hyper waits for a request head: slow headers and idle
        // keep-alive connections alike.
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause, keep serving.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            if peer_info {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
            }
            app.clone().oneshot(request.map(Body::new))
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
