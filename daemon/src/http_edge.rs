//! The HTTP listener's edge: how many clients may hold a connection and for
//! how long they may dawdle (docs/security.md, "Connections").
//!
//! `axum::serve` has no timer and no limits, so a few thousand half-sent
//! requests (slowloris) starved the API, WHIP, VOD and `/healthz`, which
//! share the one listener. This accept loop serves each connection with
//! hyper's HTTP/1 server under:
//! - a cap on open connections overall and per client address (over it the
//!   connection is closed at once and counted);
//! - a header-read timeout (hyper's timer), which also bounds the idle time
//!   of a kept-alive connection between requests;
//! - a body-read timeout per request (tower-http), so a body sent a byte a
//!   minute cannot hold a connection either.
//!
//! - with TLS ([`crate::tls`]), a handshake bounded by the header-read
//!   timeout, done on the connection's own task (a client that stalls in
//!   its handshake holds only its own slot).
//!
//! Shutdown: stop accepting, then let in-flight connections finish (the
//! caller bounds that by `server.shutdown_grace_seconds`).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGauge};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::config::ConnectionLimits;
use crate::metrics::{self, Metrics};
use crate::tls::TlsServer;

#[derive(Clone)]
pub struct EdgeMetrics {
    open: IntGauge,
    refused: IntCounterVec,
}

impl EdgeMetrics {
    pub fn register(m: &Metrics) -> Self {
        let r = m.registry();
        Self {
            open: metrics::gauge(r, "kiroku_http_connections", "Open HTTP connections"),
            refused: metrics::counter_vec(
                r,
                "kiroku_http_connections_refused_total",
                "HTTP connections closed at once: too many open overall (max) or from one address (per_address)",
                &["reason"],
            ),
        }
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`PerAddress`], given back on drop.
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn take(table: &Arc<PerAddress>, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut t = crate::sync::lock(&table.0);
        let n = t.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut t = crate::sync::lock(&self.table.0);
        if let Some(n) = t.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Declared (Content-Length) or found larger than the limit.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The client stopped sending (`server.body_timeout_seconds`) or left.
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
}

/// The client address of a request served by [`serve`] (unspecified for a
/// request that did not come through it, e.g. a router driven in tests).
pub fn client_ip(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Reads a request body of at most `limit` bytes. A body declared larger
/// (Content-Length) is refused before a byte of it is read; one without a
/// length (chunked) is read up to the limit.
pub async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, BodyError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            BodyError::TooLarge(limit)
        } else {
            BodyError::Unreadable(e.to_string())
        }
    })
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until
/// `shutdown` completes; then waits for the open connections to finish
/// their requests and close.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: EdgeMetrics,
    tls: Option<Arc<TlsServer>>,
    shutdown: impl Future<Output = ()>,
) {
    let app = app.layer(RequestBodyTimeoutLayer::new(limits.body_timeout));
    let open = Arc::new(Semaphore::new(limits.max));
    let per_address = Arc::new(PerAddress::default());
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of fds and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics.refused.with_label_values(&["max"]).inc();
            continue;
        };
        // IPv6 clients count by their /64 (crate::ratelimit::client_key).
        let key = crate::ratelimit::client_key(peer.ip());
        let Some(slot) = PerAddress::take(&per_address, key, limits.per_address) else {
            metrics.refused.with_label_values(&["per_address"]).inc();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let gauge = metrics.open.clone();
        gauge.inc();
        // Handlers see the client's address (rate limits, signature
        // binding) as axum's ConnectInfo.
        let service = app.clone().map_request(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let (http, service, watcher) = (
            http.clone(),
            TowerToHyperService::new(service),
            graceful.watcher(),
        );
        let tls = tls.as_ref().map(|t| (t.acceptor(), t.clone()));
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            // Errors are clients going away or timing out: nothing to report.
            match tls {
                None => {
                    let _ = watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await;
                }
                Some((acceptor, server)) => {
                    // The handshake is bounded like a request's headers.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = watcher
                                .watch(http.serve_connection(TokioIo::new(stream), service))
                                .await;
                        }
                        Ok(Err(_)) | Err(_) => server.handshake_failures.inc(),
                    }
                }
            }
            gauge.dec();
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
