//! Serving the router on a listener: HTTPS, a cap on connections, and the
//! timeouts a service on a shared board needs against slow or idle clients.
//!
//! Each accepted connection is served by hyper's HTTP/1 connection
//! (`hyper::server::conn::http1`, through `hyper_util`'s tower adapter) with:
//! - **A connection cap** (`http.max_connections`): a semaphore permit is
//!   taken before `accept`; at the cap the daemon stops accepting and new
//!   connections wait in the kernel's accept queue (TCP backpressure, no
//!   file descriptor spent) until one closes.
//! - **A head timeout** (`http.header_timeout_s`): hyper's
//!   `header_read_timeout`, which runs whenever the connection waits for a
//!   request head: a slowloris head, a connection that never sends a byte,
//!   and an idle keep-alive connection are all closed after it. The TLS
//!   handshake has the same time.
//! - **A body timeout** (`http.body_timeout_s`): tower-http's
//!   `RequestBodyTimeoutLayer` in [`super::app`]; the handler reading the
//!   body gets an error and answers 408.
//! - **Graceful shutdown**: `hyper_util`'s `GracefulShutdown`: once
//!   `shutdown` is cancelled no connection is accepted, requests in progress
//!   finish, idle keep-alive connections close; connections still busy
//!   after [`SHUTDOWN_DRAIN`] (a client sending its head or body slowly)
//!   are closed, so one slow client cannot hold a stop for the body timeout.
//!
//! Every connection's bytes pass through [`super::JsonErrorIo`], which gives
//! hyper's own error answers a JSON body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The connection-level limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time to send a request head (and finish a TLS handshake); idle
    /// connections are closed after it.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Listen backlog of [`bind`]: connections the kernel completes and
/// queues while the daemon is at `http.max_connections` (capped by
/// `net.core.somaxconn`). std's and mio's 128 overflowed under a burst of
/// 400: the kernel then drops the client's final ACK, the client believes
/// it is connected, and an idle one waited until its own timeout.
pub const BACKLOG: u32 = 1024;

/// Longest wait at shutdown for requests in progress. A prediction of
/// 10,000 rows answers well within it, and a training is cancelled by the
/// same shutdown; a half-sent head or body (slowloris, a stalled upload)
/// would otherwise hold the stop for `http.header_timeout_s` or
/// `http.body_timeout_s` (30 s), past `daemon.shutdown_timeout_s`.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// Binds `addr` for [`serve`] with SO_REUSEADDR and a [`BACKLOG`]-deep
/// accept queue.
///
/// # Errors
/// The address is taken or cannot be bound.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `app` on `listener` until `shutdown` is cancelled, over TLS when
/// `tls` is given. Handlers see the peer as `ConnectInfo<SocketAddr>`.
///
/// # Errors
/// None in practice: accept errors (file descriptors exhausted, a
/// connection reset before accept) are logged and retried after 100 ms.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed; retrying in 100 ms.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, peer, app, limits, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, peer, app, limits, watcher).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed.")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
                    }
                }
            }
        });
    }
    drop(listener);
    // Requests in progress finish within SHUTDOWN_DRAIN; the connections
    // still busy then are closed when the runtime stops.
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_s = SHUTDOWN_DRAIN.as_secs(),
            "HTTP: requests still in progress at shutdown after the drain time; closing their connections."
        );
    }
    Ok(())
}

async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    limits: ConnLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move {
                use tower::Service;
                app.call(req.map(axum::body::Body::new)).await
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(super::JsonErrorIo::new(io)), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
    }
}
