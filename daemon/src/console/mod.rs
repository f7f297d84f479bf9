//! The built-in web console (`/console`, docs/console.md): static assets
//! compiled into the binary, and the operator endpoints the page reads
//! beside `GET /v1/rooms`. Every recording action the page takes goes
//! through the REST API itself (`POST /` with the operator's bearer token:
//! `api::http`), so the console can do nothing the API would not, and
//! shows the API's own error codes.
//!
//! - `POST|DELETE /v1/console/session`: sign in (the admin token, shown
//!   as a bearer token, buys an HttpOnly session cookie for the page's
//!   reads: `<video>` and hls.js send no headers of their own) and out.
//! - `GET /v1/console/info`: the apps, whether they need UserSigs, the
//!   box's name and limits.
//! - `POST /v1/console/usersig`: a UserSig for publishing from the browser
//!   (and for the recorder bot), from the app's `user_sig_key`.
//! - `GET /v1/tasks`: live tasks and the newest ended ones, their files
//!   (playable URLs) and the callbacks sent with their delivery state.
//! - `GET /v1/files/<object key>`: a local recording, with ranges.
//! - `GET /v1/status`: load, capacity, health and the alerts firing.

pub mod gate;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::config::Config;
use crate::domain::params::{RecordMode, Storage};
use crate::domain::task::TaskState;
use crate::health::Health;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::notify::log::DeliveryLog;
use crate::output::vod::VodStore;
use crate::task::manager::{Manager, TaskOverview};
use gate::{json_error, OperatorGate};

/// The page's files: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
    (
        "hls.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/hls.min.js"),
    ),
    (
        "hls.js-LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("assets/hls.js-LICENSE.txt"),
    ),
];

pub struct Console {
    pub gate: Arc<OperatorGate>,
    pub config: Arc<Config>,
    pub manager: Manager,
    pub ingest: Arc<Ingest>,
    pub vod: Arc<VodStore>,
    pub callbacks: Arc<DeliveryLog>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub capacity: Arc<crate::capacity::Capacity>,
}

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{file}", get(asset))
        .route("/v1/console/session", post(sign_in).delete(sign_out))
        .route("/v1/console/info", get(info))
        .route("/v1/console/usersig", post(user_sig))
        .route("/v1/tasks", get(tasks))
        .route("/v1/files/{*key}", get(file))
        .route("/v1/status", get(status))
        .with_state(console)
}

fn asset_response(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
                // The page loads only its own scripts and talks only to
                // this box (WHIP included).
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *bytes,
        )
            .into_response(),
        None => json_error(StatusCode::NOT_FOUND, "no such console file"),
    }
}

async fn index() -> Response {
    asset_response("index.html")
}

async fn asset(Path(file): Path<String>) -> Response {
    asset_response(&file)
}

fn json_ok(value: Value) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        value.to_string(),
    )
        .into_response()
}

async fn sign_in(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if !c.gate.bearer_ok(&headers) {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "wrong operator credential: give server.admin_token",
        );
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, c.gate.open_session())],
    )
        .into_response()
}

async fn sign_out(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, c.gate.close_session(&headers))],
    )
        .into_response()
}

async fn info(State(c): State<Arc<Console>>, method: Method, headers: HeaderMap) -> Response {
    if let Some(refused) = c.gate.denied(&method, &headers) {
        return refused;
    }
    let apps: Vec<Value> = c
        .config
        .apps
        .iter()
        .map(|a| json!({ "sdk_app_id": a.sdk_app_id, "user_sig": a.user_sig_key.is_some() }))
        .collect();
    json_ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": c.config.cluster.node_id,
        "public_url": c.config.server.public_url,
        "dev_mode": c.config.dev_mode(),
        "max_tasks": c.config.limits.max_tasks,
        "apps": apps,
    }))
}

/// How long a UserSig minted for the console lasts.
const CONSOLE_USER_SIG_SECONDS: i64 = 24 * 3600;

async fn user_sig(
    State(c): State<Arc<Console>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = c.gate.denied(&method, &headers) {
        return refused;
    }
    let asked: Value = serde_json::from_slice(&body).unwrap_or_default();
    let app = asked
        .get("sdk_app_id")
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok());
    let user = asked.get("user_id").and_then(Value::as_str);
    let (Some(app), Some(user)) = (app, user) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "send {\"sdk_app_id\": <number>, \"user_id\": \"<string>\"}",
        );
    };
    if crate::api::validate::user_id("user_id", user).is_err() {
        return json_error(StatusCode::BAD_REQUEST, "user_id is not a valid UserId");
    }
    let key = c
        .config
        .apps
        .iter()
        .find(|a| a.sdk_app_id == app)
        .and_then(|a| a.user_sig_key.as_deref());
    match key {
        Some(key) => json_ok(json!({
            "user_sig": crate::auth::usersig::generate(
                key,
                app,
                user,
                crate::clock::unix_secs() as i64,
                CONSOLE_USER_SIG_SECONDS,
            )
        })),
        None => json_error(
            StatusCode::NOT_FOUND,
            "this app has no user_sig_key: publishing needs no UserSig, and Create's UserSig is not checked",
        ),
    }
}

async fn tasks(State(c): State<Arc<Console>>, method: Method, headers: HeaderMap) -> Response {
    if let Some(refused) = c.gate.denied(&method, &headers) {
        return refused;
    }
    let overview = c.manager.overview();
    let listed = {
        let c = c.clone();
        tokio::task::spawn_blocking(move || {
            overview
                .iter()
                .map(|t| task_json(&c, t))
                .collect::<Vec<Value>>()
        })
        .await
    };
    match listed {
        Ok(tasks) => json_ok(json!({ "tasks": tasks })),
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "listing the tasks failed",
        ),
    }
}

/// One task for the console (blocking: it lists the task's files).
fn task_json(c: &Console, t: &TaskOverview) -> Value {
    let r = &t.record;
    let status = match (t.ended_ms, r.state) {
        (Some(_), _) => "ended",
        (None, TaskState::Idle) => "idle",
        (None, TaskState::InProgress) => "in_progress",
        (None, TaskState::Exited { .. }) => "exited",
    };
    let storage = match r.spec.storage {
        Storage::Local => "local",
        Storage::Cloud(_) => "cloud",
        Storage::Vod(_) => "vod",
    };
    let files: Vec<Value> = match &r.spec.storage {
        Storage::Local => local_files(c, r),
        Storage::Vod(_) => c
            .vod
            .of_task(&r.task_id)
            .into_iter()
            .map(|e| {
                json!({ "name": e.cache_file, "url": format!("/vod/{}.mp4", e.file_id), "kind": "mp4" })
            })
            .collect(),
        // In the bucket: named, not playable from here.
        Storage::Cloud(_) => r
            .files
            .iter()
            .map(|f| json!({ "name": f.file_name, "url": Value::Null, "kind": "hls" }))
            .collect(),
    };
    json!({
        "task_id": r.task_id,
        "sdk_app_id": r.spec.sdk_app_id,
        "room_id": r.spec.room.to_string(),
        "mode": match r.spec.record.mode { RecordMode::Single => "single", RecordMode::Mixed => "mixed" },
        "status": status,
        "storage": storage,
        "created_at_ms": r.created_ms,
        "ended_at_ms": t.ended_ms,
        "restarts": r.restarts,
        "files": files,
        "callbacks": c.callbacks.of_task(&r.task_id),
    })
}

/// A local task's playlists and packed files, from its folder in
/// `data_dir/storage`.
fn local_files(c: &Console, r: &crate::domain::task::TaskRecord) -> Vec<Value> {
    let folder = crate::task::outputs::task_folder(r.spec.storage.file_name_prefix(), &r.task_id);
    let dir = c.config.data_dir.join("storage").join(&folder);
    let Ok(listing) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = listing
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(".m3u8") || n.ends_with(".mp4") || n.ends_with(".aac"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let kind = match name.rsplit_once('.').map(|(_, e)| e) {
                Some("m3u8") => "hls",
                Some("mp4") => "mp4",
                _ => "aac",
            };
            json!({ "name": name, "url": format!("/v1/files/{folder}/{name}"), "kind": kind })
        })
        .collect()
}

async fn file(
    State(c): State<Arc<Console>>,
    Path(key): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = c.gate.denied(&method, &headers) {
        return refused;
    }
    // The local store refuses keys that leave its folder (`..`, absolute).
    let local = crate::output::local::LocalStore::new(c.config.data_dir.join("storage"));
    let Ok(path) = local.path_of(&key) else {
        return json_error(StatusCode::NOT_FOUND, "no such file");
    };
    crate::output::vod_http::serve_file(
        &path,
        crate::output::s3::content_type(&key),
        &method,
        &headers,
    )
    .await
}

async fn status(State(c): State<Arc<Console>>, method: Method, headers: HeaderMap) -> Response {
    if let Some(refused) = c.gate.denied(&method, &headers) {
        return refused;
    }
    let tasks = c.manager.live_count();
    let rooms = c.ingest.registry.status();
    let publishing = rooms
        .iter()
        .flat_map(|r| &r.users)
        .flat_map(|u| &u.tracks)
        .filter(|t| t.state == "publishing")
        .count();
    let gauge = |name: &str| gauge_value(&c.metrics, name);
    let load = Load {
        tasks,
        max_tasks: c.config.limits.max_tasks,
        spool_used: gauge("kiroku_spool_used_bytes"),
        spool_capacity: gauge("kiroku_spool_capacity_bytes"),
        callbacks_pending: gauge("kiroku_callbacks_pending"),
        stranded: gauge("kiroku_upload_stranded_files"),
        health: c.health.problems(),
    };
    json_ok(json!({
        "tasks": load.tasks,
        "max_tasks": load.max_tasks,
        "capacity_used_units": c.capacity.used(),
        "capacity_admit_units": c.capacity.admit_units(),
        "publishing_tracks": publishing,
        "sessions": c.ingest.sessions.len(),
        "spool_used_bytes": load.spool_used,
        "spool_capacity_bytes": load.spool_capacity,
        "callbacks_pending": load.callbacks_pending,
        "upload_stranded_files": load.stranded,
        "health": load.health.as_deref().map_or("ok".to_owned(), |why| format!("down: {why}")),
        "alerts": alerts(&load),
    }))
}

/// The sum of a gauge's series in the registry (0 if it has none).
fn gauge_value(metrics: &Metrics, name: &str) -> u64 {
    metrics
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_gauge().get_value())
        .sum::<f64>()
        .max(0.0) as u64
}

/// What the status endpoint judges alerts from.
#[derive(Debug, Default)]
struct Load {
    tasks: usize,
    max_tasks: usize,
    spool_used: u64,
    spool_capacity: u64,
    callbacks_pending: u64,
    stranded: u64,
    health: Option<String>,
}

/// The alerts the console shows, judged from the box's own state with the
/// thresholds of `packaging/prometheus/kiroku-alerts.yml` (Prometheus
/// also judges how long a condition lasts; the console shows it now).
fn alerts(load: &Load) -> Vec<Value> {
    let mut out = Vec::new();
    let mut alert = |name: &str, severity: &str, summary: String| {
        out.push(json!({ "name": name, "severity": severity, "summary": summary }));
    };
    if let Some(why) = &load.health {
        alert(
            "KirokuUnhealthy",
            "critical",
            format!("/healthz is down: {why}"),
        );
    }
    if load.max_tasks > 0 && load.tasks * 10 >= load.max_tasks * 9 {
        alert(
            "KirokuCapacityNearFull",
            if load.tasks >= load.max_tasks {
                "critical"
            } else {
                "warning"
            },
            format!(
                "{} of {} task slots in use (limits.max_tasks)",
                load.tasks, load.max_tasks
            ),
        );
    }
    if load.spool_capacity > 0
        && load.spool_used.saturating_mul(10) >= load.spool_capacity.saturating_mul(8)
    {
        alert(
            "KirokuSpoolFilling",
            "warning",
            format!(
                "the upload spool is {}% full: uploads are not keeping up",
                load.spool_used.saturating_mul(100) / load.spool_capacity
            ),
        );
    }
    if load.stranded > 0 {
        alert(
            "KirokuUploadsStranded",
            "critical",
            format!(
                "{} file(s) failed to upload repeatedly and wait in the spool",
                load.stranded
            ),
        );
    }
    if load.callbacks_pending > 100 {
        alert(
            "KirokuCallbacksBackingUp",
            "warning",
            format!(
                "{} callbacks wait for their receiver",
                load.callbacks_pending
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(load: &Load) -> Vec<String> {
        alerts(load)
            .iter()
            .map(|a| a["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn alerts_fire_at_the_rules_thresholds() {
        let calm = Load {
            tasks: 10,
            max_tasks: 100,
            spool_used: 1,
            spool_capacity: 100,
            ..Load::default()
        };
        assert!(names(&calm).is_empty());
        let busy = Load {
            tasks: 18,
            max_tasks: 20,
            spool_used: 80,
            spool_capacity: 100,
            callbacks_pending: 101,
            stranded: 2,
            health: Some("ingest thread died".into()),
        };
        assert_eq!(
            names(&busy),
            [
                "KirokuUnhealthy",
                "KirokuCapacityNearFull",
                "KirokuSpoolFilling",
                "KirokuUploadsStranded",
                "KirokuCallbacksBackingUp"
            ]
        );
        let full = Load {
            tasks: 20,
            max_tasks: 20,
            ..Load::default()
        };
        assert_eq!(alerts(&full)[0]["severity"], "critical");
    }

    #[test]
    fn every_asset_is_served_and_others_are_not() {
        for (name, _, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{name}");
            assert_eq!(asset_response(name).status(), StatusCode::OK);
        }
        assert_eq!(
            asset_response("../Cargo.toml").status(),
            StatusCode::NOT_FOUND
        );
    }
}
