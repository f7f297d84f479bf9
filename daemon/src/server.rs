//! The daemon: wires the store, the outbox, the task manager and the HTTP
//! listener together, and drains them on shutdown.
//!
//! [`run`] takes an already bound listener and a shutdown future (as
//! mini-redis does), so tests and the binary drive it the same way.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get};
use axum::Router;
use tokio::net::TcpListener;

use crate::api::http::{self as api_http, ApiState};
use crate::config::Config;
use crate::console::gate::OperatorGate;
use crate::health::Health;
use crate::http_edge::{self, EdgeMetrics};
use crate::ingest::whip::{self, WhipState};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::notify::deliver;
use crate::output::uploader::UploadService;
use crate::output::vod::VodStore;
use crate::output::vod_http;
use crate::state::StateStore;
use crate::systemd;
use crate::task::manager::{Manager, Outputs};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot create data_dir {path}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("[secrets]: {0}")]
    Secrets(#[from] crate::sealing::SealError),
    #[error("TLS (server.tls_cert / server.tls_key): {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot bind the metrics listener {addr} (server.metrics_listen)")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the WebRTC UDP socket {addr} (ingest.udp_listen)")]
    Udp {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

struct Probes {
    metrics: Metrics,
    health: Arc<Health>,
}

/// The API (`/`) and `/healthz`, and `/metrics` unless it has a listener
/// of its own (`server.metrics_listen`).
pub fn router(api: Arc<ApiState>, metrics: Metrics, health: Arc<Health>) -> Router {
    let separate_metrics = api.config.server.metrics_listen.is_some();
    let probes = Arc::new(Probes { metrics, health });
    let probes = if separate_metrics {
        Router::new()
            .route("/healthz", get(healthz))
            .with_state(probes)
    } else {
        probes_router(probes)
    };
    probes.merge(
        Router::new()
            .route("/", any(api_http::handle))
            .with_state(api),
    )
}

/// `/healthz` and `/metrics`: what the metrics listener serves.
fn probes_router(probes: Arc<Probes>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(probes)
}

struct Operator {
    gate: Arc<OperatorGate>,
    ingest: Arc<Ingest>,
    drainer: Arc<crate::drain::Drainer>,
    capacity: Arc<crate::capacity::Capacity>,
}

/// The operator's endpoints (`/v1/*`): status and admin, behind
/// `server.admin_token` (docs/security.md).
fn operator_router(
    gate: Arc<OperatorGate>,
    ingest: Arc<Ingest>,
    drainer: Arc<crate::drain::Drainer>,
    capacity: Arc<crate::capacity::Capacity>,
) -> Router {
    let router = Router::new()
        .route("/v1/rooms", get(rooms_status))
        .route("/v1/capacity", get(capacity_status))
        .route("/v1/drain", axum::routing::post(drain_box))
        .route("/v1/sessions/{session_id}", delete(end_session));
    // Only where the supervision tests asked for it (crate::faults).
    let router = if crate::faults::enabled() {
        tracing::warn!(
            "KIROKU_TEST_FAULTS=1: POST /v1/faults can make media threads panic (tests only)"
        );
        router.route("/v1/faults", axum::routing::post(inject_fault))
    } else {
        router
    };
    router.with_state(Arc::new(Operator {
        gate,
        ingest,
        drainer,
        capacity,
    }))
}

/// `POST /v1/drain` (fleet mode): hands this box's rooms to the others and
/// exits once done; answers with what went where (`kiroku drain`).
async fn drain_box(State(op): State<Arc<Operator>>, headers: HeaderMap) -> Response {
    if let Some(refused) = op.gate.denied(&Method::POST, &headers) {
        return refused;
    }
    use crate::drain::DrainError;
    match op.drainer.drain().await {
        Ok(report) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&report).unwrap_or_default(),
        )
            .into_response(),
        Err(
            e @ (DrainError::NotInFleet | DrainError::NoOtherBox | DrainError::AlreadyDraining),
        ) => json_error(StatusCode::CONFLICT, &e.to_string()),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /v1/faults` (tests only, `KIROKU_TEST_FAULTS=1`):
/// `{"ingest": true}` or `{"recorder": "<TaskId>"}` arms a panic,
/// `{"commit_failures": n}` fails the next n state-store commits,
/// `{"slow_encoder_ms": ms}` slows the encoder of mixed tasks started next.
async fn inject_fault(
    State(op): State<Arc<Operator>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = op.gate.denied(&Method::POST, &headers) {
        return refused;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if v.get("ingest").and_then(serde_json::Value::as_bool) == Some(true) {
        crate::faults::arm_ingest_panic();
    } else if let Some(task) = v.get("recorder").and_then(serde_json::Value::as_str) {
        crate::faults::arm_recorder_panic(task);
    } else if let Some(n) = v.get("commit_failures").and_then(serde_json::Value::as_u64) {
        crate::faults::arm_commit_failures(u32::try_from(n).unwrap_or(u32::MAX));
    } else if let Some(ms) = v.get("slow_encoder_ms").and_then(serde_json::Value::as_u64) {
        crate::faults::arm_slow_encoder(u32::try_from(ms).unwrap_or(u32::MAX));
    } else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "send {\"ingest\": true}, {\"recorder\": \"<TaskId>\"}, {\"commit_failures\": <n>} or {\"slow_encoder_ms\": <ms>}",
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// `GET /v1/capacity`: capacity, used, free, each task's cost and load
/// (docs/api.md "Capacity").
async fn capacity_status(State(op): State<Arc<Operator>>, headers: HeaderMap) -> Response {
    if let Some(refused) = op.gate.denied(&Method::GET, &headers) {
        return refused;
    }
    let report = op.capacity.report();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&report).unwrap_or_default(),
    )
        .into_response()
}

/// `GET /v1/rooms`: every room, its users in join order, their tracks.
async fn rooms_status(State(op): State<Arc<Operator>>, headers: HeaderMap) -> Response {
    if let Some(refused) = op.gate.denied(&Method::GET, &headers) {
        return refused;
    }
    let body = serde_json::json!({
        "rooms": op.ingest.registry.status(),
        "sessions": op.ingest.sessions.len(),
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `DELETE /v1/sessions/{session_id}`: the operator ends a publisher's
/// session (the id `GET /v1/rooms` and the logs show; the publisher itself
/// ends it with its WHIP resource URL).
async fn end_session(
    State(op): State<Arc<Operator>>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = op.gate.denied(&Method::DELETE, &headers) {
        return refused;
    }
    if !op.ingest.end_session(&session_id) {
        return json_error(StatusCode::NOT_FOUND, "no such WHIP session");
    }
    tracing::info!(%session_id, "WHIP session ended by the operator");
    StatusCode::NO_CONTENT.into_response()
}

async fn loopback_host_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if crate::config::is_loopback_host(host) {
        next.run(req).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host {host:?} is not this machine's loopback: an open dev-mode box answers only \
                 requests addressed to localhost or 127.0.0.1 (configure [[credentials]] to serve others)\n"
            ),
        )
            .into_response()
    }
}

/// `ok`, or 503 naming every part that is down (docs/operations.md).
async fn healthz(State(p): State<Arc<Probes>>) -> Response {
    match p.health.problems() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("down\n{why}\n")).into_response(),
    }
}

async fn metrics_text(State(s): State<Arc<Probes>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Runs the daemon on `listener` until `shutdown` completes, then drains:
/// stops accepting, lets in-flight requests finish (up to
/// `server.shutdown_grace_seconds`), stops the workers and closes the store.
/// Live tasks stay live in the store and resume at the next start.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // First: the signal's default action would end the daemon, and a bad
    // certificate should stop it before anything is opened.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let metrics = Metrics::new();
    let health = Arc::new(Health::new());
    let tls = match &config.server.tls {
        Some(files) => Some(crate::tls::TlsServer::open(files.clone(), &metrics)?),
        None => None,
    };
    let sealer = Arc::new(sealer_for(&config.secrets)?);
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let store = {
        let sealer = sealer.clone();
        // Fleet mode: the state the fleet shares, in PostgreSQL; else the
        // embedded store in data_dir.
        let postgres_url = config
            .cluster
            .postgres_url
            .as_ref()
            .map(|u| u.expose().to_owned());
        let path = config.data_dir.join("state.redb");
        let node_id = config.cluster.node_id.clone();
        let ca_file = config.cluster.postgres_ca_file.clone();
        tokio::task::spawn_blocking(move || match postgres_url {
            Some(url) => StateStore::with_engine(
                Box::new(crate::state::postgres::Postgres::open(
                    &url,
                    &node_id,
                    ca_file.as_deref(),
                )?),
                sealer,
            ),
            None => StateStore::open(&path, sealer),
        })
        .await
        .map_err(|e| ServerError::Http(std::io::Error::other(e)))??
    };
    let store = Arc::new(store);
    let records = store.load_tasks()?;
    let quarantined = store.quarantined()?;
    crate::metrics::gauge(
        metrics.registry(),
        "kiroku_store_quarantined_records",
        "Task records that could not be read, set aside in the state store's quarantine table",
    )
    .set(i64::try_from(quarantined.len()).unwrap_or(i64::MAX));
    if !quarantined.is_empty() {
        tracing::error!(records = quarantined.len(), task_ids = ?quarantined,
            "task records could not be read and are quarantined; the daemon starts with the rest");
    }
    let backlog = store.load_outbox()?;
    tracing::info!(store = %store.describe(), node_id = %config.cluster.node_id, tasks = records.len(), callbacks_pending = backlog.len(), "state store opened");

    crate::metrics::gauge(
        metrics.registry(),
        "kiroku_limit_max_tasks",
        "limits.max_tasks: the live tasks this box admits (kiroku_tasks against it)",
    )
    .set(i64::try_from(config.limits.max_tasks).unwrap_or(i64::MAX));
    let edge_metrics = EdgeMetrics::register(&metrics);
    let metrics_listener = match config.server.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    // Fleet mode: this box registers in the shared database and heartbeats.
    let fleet = match (&config.cluster.postgres_url, config.cluster.fleet()) {
        (Some(url), true) => {
            let (cluster, url) = (config.cluster.clone(), url.expose().to_owned());
            let capacity = config.limits.max_tasks;
            let fleet = tokio::task::spawn_blocking(move || {
                crate::cluster::Fleet::open(&cluster, &url, capacity)
            })
            .await
            .map_err(|e| ServerError::Http(std::io::Error::other(e)))??;
            tracing::info!(node_id = fleet.node_id(), "registered in the fleet");
            Some(Arc::new(fleet))
        }
        _ => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (outbox, outbox_worker) = deliver::start(
        store.clone(),
        backlog,
        config.callbacks,
        metrics.clone(),
        stop_rx.clone(),
    );

    str0m::crypto::from_feature_flags().install_process_default();
    let ingest = Ingest::start(
        config.ingest.udp_listen,
        &config.ingest.advertised_addresses,
        &metrics,
        health.clone(),
    )
    .map_err(|source| ServerError::Udp {
        addr: config.ingest.udp_listen,
        source,
    })?;
    let vod_dir = config.data_dir.join("vod");
    let vod = {
        let (dir, fleet_store) = (vod_dir.clone(), fleet.as_ref().map(|_| store.clone()));
        let (node_id, public_url) = (
            config.cluster.node_id.clone(),
            config.server.public_url.clone(),
        );
        // Fleet mode: the VOD records also go to PostgreSQL (blocking).
        tokio::task::spawn_blocking(move || {
            let vod = VodStore::open(&dir)?;
            match fleet_store {
                Some(store) => vod.with_fleet_index(store, &node_id, &public_url),
                None => Ok(vod),
            }
        })
        .await
        .map_err(|e| ServerError::Http(std::io::Error::other(e)))?
        .map(Arc::new)
        .map_err(|e| ServerError::DataDir {
            path: vod_dir.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?
    };
    let (notices_tx, notices) = tokio::sync::mpsc::channel(1024);
    let uploads = UploadService::open(
        &config.data_dir,
        &config.storage,
        &metrics,
        notices_tx,
        sealer.clone(),
        crate::output::uploader::TargetBook::this_box(store.clone()),
    )
    .map_err(|e| ServerError::DataDir {
        path: config.data_dir.join("spool").display().to_string(),
        source: std::io::Error::other(match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        }),
    })?;
    let capacity = Arc::new(crate::capacity::Capacity::new(
        crate::capacity::CapacitySettings {
            profile_path: config.limits.capacity_profile.clone(),
            fraction: config.limits.capacity_fraction,
            admit_by_cost: config.limits.admit_by_cost,
        },
        Arc::default(),
        &metrics,
    ));
    // Per-task CPU rates, the capacity gauges and the kernel's count of
    // datagrams dropped at the WebRTC socket, once a second.
    let capacity_refresh = {
        let (capacity, ingest) = (capacity.clone(), ingest.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every.tick().await;
                capacity.refresh(std::time::Instant::now());
                ingest.refresh_socket_drops();
            }
        })
    };
    let heap_trim = tokio::spawn(trim_heap(metrics.clone()));
    let manager = Manager::start(
        config.clone(),
        store.clone(),
        records,
        outbox.clone(),
        metrics.clone(),
        ingest.registry.clone(),
        Outputs {
            uploads,
            notices,
            vod: vod.clone(),
        },
        health.clone(),
        capacity.clone(),
    )
    .await;
    let fleet_heartbeat = fleet.clone().map(|f| {
        tokio::spawn(fleet_heartbeat(
            f,
            manager.clone(),
            store.clone(),
            outbox.clone(),
            metrics.clone(),
        ))
    });
    // ExpireTime: expired VOD files are deleted within 10 s (a scan of
    // the store's metadata files, cheap next to what it stores).
    let expiry = {
        let vod = vod.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                every.tick().await;
                let vod = vod.clone();
                let now = crate::clock::unix_secs();
                let expired = tokio::task::spawn_blocking(move || {
                    vod.sync_index();
                    vod.expire(now)
                });
                match expired.await {
                    Ok(Ok(gone)) if !gone.is_empty() => {
                        tracing::info!(files = gone.len(), "expired VOD files deleted")
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "VOD expiry failed"),
                    _ => {}
                }
            }
        })
    };
    let (drained_tx, mut drained_rx) = tokio::sync::watch::channel(false);
    let drainer = Arc::new(crate::drain::Drainer::new(
        fleet.clone(),
        manager.clone(),
        ingest.clone(),
        config.server.shutdown_grace,
        drained_tx,
    ));
    let api = Arc::new(ApiState::new(
        config.clone(),
        manager.clone(),
        metrics.clone(),
        fleet.clone(),
    ));

    let gate = Arc::new(OperatorGate::new(config.clone()));
    let console = Arc::new(crate::console::Console {
        gate: gate.clone(),
        config: config.clone(),
        manager: manager.clone(),
        ingest: ingest.clone(),
        vod: vod.clone(),
        callbacks: outbox.log(),
        metrics: metrics.clone(),
        health: health.clone(),
        capacity: capacity.clone(),
    });
    let app = router(api, metrics.clone(), health.clone())
        .merge(whip::router(Arc::new(WhipState::new(
            config.clone(),
            ingest.clone(),
            fleet.clone(),
        ))))
        .merge(operator_router(
            gate,
            ingest.clone(),
            drainer.clone(),
            capacity.clone(),
        ))
        .merge(crate::console::router(console))
        .merge(vod_http::router(vod));
    // An open dev-mode box trusts whoever reaches its loopback listener; a
    // web page can reach it too, by DNS rebinding a name of its own to
    // 127.0.0.1. Its requests then carry that name as Host: refuse them.
    let app = if config.dev_mode() {
        app.layer(axum::middleware::from_fn(loopback_host_only))
    } else {
        app
    };

    let addr = listener.local_addr().map_err(ServerError::Http)?;
    tracing::info!(%addr, public_url = %config.server.public_url, tls = tls.is_some(), "listening");
    let reloader = tokio::spawn(reload_on_hangup(hangup, tls.clone()));
    // /metrics and /healthz on their own plain listener, under the same
    // connection limits; it stops with the process.
    let metrics_server = metrics_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "metrics listening");
        }
        tokio::spawn(http_edge::serve(
            l,
            probes_router(Arc::new(Probes {
                metrics: metrics.clone(),
                health: health.clone(),
            })),
            config.server.connections,
            edge_metrics.clone(),
            None,
            std::future::pending(),
        ))
    });
    systemd::ready(&format!("{} tasks", manager.live_count()));
    let heartbeat = tokio::spawn(heartbeat(manager.clone(), health.clone(), stop_rx));

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let grace = config.server.shutdown_grace;
    let serve = http_edge::serve(
        listener,
        app,
        config.server.connections,
        edge_metrics,
        tls,
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = drained_rx.wait_for(|done| *done) => {}
            }
            tracing::info!("shutdown requested: draining in-flight requests");
            systemd::stopping();
            let _ = drain_tx.send(());
        },
    );
    let serve = tokio::spawn(serve);
    let result = tokio::select! {
        r = serve => r.map_err(|e| ServerError::Http(std::io::Error::other(e))),
        _ = async {
            let _ = drain_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_s = grace.as_secs(), "in-flight requests did not finish within the grace period");
            Ok(())
        }
    };
    // Close every recording's files before the outbox stops, so that their
    // callbacks are queued (durably) with the rest.
    manager.shutdown(grace).await;
    let _ = stop_tx.send(true);
    let _ = outbox_worker.await;
    tokio::task::spawn_blocking(move || ingest.shutdown())
        .await
        .ok();
    heartbeat.abort();
    if let Some(h) = fleet_heartbeat {
        h.abort();
    }
    expiry.abort();
    capacity_refresh.abort();
    heap_trim.abort();
    reloader.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    // Let every store handle go before returning so the database closes.
    drop(manager);
    drop(store);
    tracing::info!("stopped");
    result
}

/// Hands the heap's free pages back to the kernel every
/// [`crate::heap::TRIM_EVERY`] (see `heap`), on a blocking thread: the trim
/// takes each malloc arena's lock for a moment.
async fn trim_heap(metrics: Metrics) {
    let trims = crate::metrics::counter(
        metrics.registry(),
        "kiroku_heap_trims_total",
        "Times the daemon handed the heap's free pages back to the kernel (malloc_trim, every 30 s)",
    );
    let seconds = crate::metrics::float_counter(
        metrics.registry(),
        "kiroku_heap_trim_seconds_total",
        "Time spent handing the heap's free pages back to the kernel",
    );
    let in_use = crate::metrics::gauge(
        metrics.registry(),
        "kiroku_heap_in_use_bytes",
        "Bytes the daemon has allocated and not freed (malloc's live heap, after the last trim): \
         what grows here is held by the daemon, what grows only in the RSS is kept by the allocator",
    );
    let free = crate::metrics::gauge(
        metrics.registry(),
        "kiroku_heap_free_bytes",
        "Bytes free inside malloc's arenas after the last trim, resident or already handed back",
    );
    let mut tick = tokio::time::interval(crate::heap::TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let took = tokio::task::spawn_blocking(|| {
            let started = std::time::Instant::now();
            crate::heap::release_free_pages();
            let took = started.elapsed();
            (took, crate::heap::usage())
        })
        .await;
        if let Ok((took, usage)) = took {
            trims.inc();
            seconds.inc_by(took.as_secs_f64());
            if let Some(u) = usage {
                in_use.set(i64::try_from(u.in_use).unwrap_or(i64::MAX));
                free.set(i64::try_from(u.free).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Renews this box's lease in the fleet, five times a lease; failures are
/// counted and logged (the lease lapses on its own: see `cluster::lease`).
/// While it holds its lease, it takes over the rooms of dead boxes and
/// resumes their tasks here (`ha<n>_`, callback 306).
async fn fleet_heartbeat(
    fleet: Arc<crate::cluster::Fleet>,
    manager: Manager,
    store: Arc<StateStore>,
    outbox: deliver::Outbox,
    metrics: Metrics,
) {
    let failures = crate::metrics::counter(
        metrics.registry(),
        "kiroku_fleet_heartbeat_failures_total",
        "Heartbeats to the fleet's database that failed",
    );
    let held = crate::metrics::gauge(
        metrics.registry(),
        "kiroku_fleet_lease_held",
        "1 while this box holds its lease in the fleet",
    );
    let mut tick = tokio::time::interval(fleet.heartbeat_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = fleet.call(|f| f.heartbeat().map_err(Into::into)).await {
            failures.inc();
            tracing::warn!(error = %e, "fleet heartbeat failed");
        }
        held.set(i64::from(fleet.holds_lease()));
        if !fleet.holds_lease() {
            continue;
        }
        // Fencing of the media side: a task this box runs that the
        // database gives to another box (taken over while this box was
        // paused or cut off) stops here within a heartbeat of waking.
        let running = manager.running_task_ids();
        match fleet.call(move |f| f.tasks_lost(&running)).await {
            Ok(lost) => {
                for task_id in lost {
                    tracing::warn!(task_id = %task_id, "the database gives this task to another box: letting it go");
                    manager.let_go(&task_id);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "checking this box's tasks against the fleet failed")
            }
        }
        let s = store.clone();
        match fleet
            .call(move |f| f.take_over_dead_rooms().map(|v| s.open_records(v)))
            .await
        {
            Ok(records) if !records.is_empty() => {
                tracing::warn!(tasks = records.len(), "resuming the tasks of a dead box");
                manager
                    .adopt(records, "task taken over from a dead box")
                    .await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "taking over dead boxes' rooms failed"),
        }
        match fleet.call(|f| f.take_over_dead_outbox()).await {
            Ok(entries) => outbox.queued(entries),
            Err(e) => tracing::warn!(error = %e, "taking over dead boxes' callbacks failed"),
        }
        let s = store.clone();
        match fleet
            .call(move |f| f.take_handed_over().map(|v| s.open_records(v)))
            .await
        {
            Ok(records) if !records.is_empty() => {
                tracing::info!(
                    tasks = records.len(),
                    "resuming the tasks a draining box handed over"
                );
                manager
                    .adopt(records, "task handed over by a draining box")
                    .await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "picking up handed-over tasks failed"),
        }
    }
}

/// The sealer of `[secrets]`: its key files are read (and judged) at start.
pub fn sealer_for(
    secrets: &crate::config::SecretsConfig,
) -> Result<crate::sealing::Sealer, crate::sealing::SealError> {
    match &secrets.key_file {
        Some(key) => crate::sealing::Sealer::from_files(key, &secrets.previous_key_files),
        None => Ok(crate::sealing::Sealer::none()),
    }
}

/// SIGHUP reloads the TLS certificate and key (docs/security.md). Without
/// TLS it is logged and otherwise ignored: the signal's default action
/// would end the daemon and every recording with it.
async fn reload_on_hangup(
    hangup: std::io::Result<tokio::signal::unix::Signal>,
    tls: Option<Arc<crate::tls::TlsServer>>,
) {
    let mut hangup = match hangup {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: certificates reload only on restart");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        match &tls {
            None => tracing::info!("SIGHUP received: nothing to reload (no server.tls_cert)"),
            Some(t) => match t.reload() {
                Ok(()) => tracing::info!("SIGHUP received: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP received: TLS certificate NOT reloaded; the one in use stays")
                }
            },
        }
    }
}

/// How recently the ingest engine must have made a pass for the watchdog
/// to be fed (its loop passes every 20 ms; a restart takes about 1 s).
const ENGINE_STALL_MS: u64 = 5_000;

/// Feeds the systemd watchdog while the media engine makes progress, and
/// keeps the unit's status line current.
async fn heartbeat(
    manager: Manager,
    health: Arc<Health>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let watchdog = systemd::watchdog_interval();
    let period = watchdog
        .map(|w| w / 2)
        .unwrap_or(std::time::Duration::from_secs(10));
    let mut tick = tokio::time::interval(period);
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let alive = health.engine_alive(crate::clock::mono_ms(), ENGINE_STALL_MS);
                if alive && watchdog.is_some() {
                    systemd::watchdog_ping();
                }
                if alive == stalled {
                    stalled = !alive;
                    if stalled {
                        tracing::error!(stall_ms = ENGINE_STALL_MS, "the ingest engine makes no progress: the watchdog is no longer fed");
                        health.down("ingest engine progress", "no pass for 5 s: the media thread is stuck");
                    } else {
                        health.up("ingest engine progress");
                    }
                }
                // Read from the manager's view: no wait behind a commit.
                systemd::status(&format!("{} tasks", manager.live_count()));
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::is_loopback_host;

    #[test]
    fn only_loopback_hosts_pass_in_dev_mode() {
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "127.8.0.1",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "192.168.1.5:8080",
            "",
            "localhost.evil.example",
            "[::2]:80",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
