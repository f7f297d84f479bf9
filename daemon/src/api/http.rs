//! The axum edge of the REST API: `POST /` with `X-TC-Action` routing.
//!
//! Order of checks: body size → content type → signature (unless dev
//! mode) → action → version → JSON shape → SdkAppId known → rate limit →
//! validation → the task manager. Every answer is HTTP 200 with
//! `Content-Type: application/json` exactly, because Tencent's SDKs only
//! look for `Response.Error` under those two conditions.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::error::{codes, ApiError};
use super::forward::{self, Relay};
use super::replay::SignatureBindings;
use super::{model, tc3, validate, Action, API_VERSION};
use crate::auth::usersig;
use crate::cluster::{Placement, TaskHome};
use crate::config::Config;
use crate::http_edge::BodyError;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::task::manager::Manager;

pub struct ApiState {
    pub config: Arc<Config>,
    pub manager: Manager,
    pub metrics: Metrics,
    pub limiter: Mutex<RateLimiter<(u32, &'static str)>>,
    pub signatures: Mutex<SignatureBindings>,
    /// Fleet mode: a task runs on the box that owns its room.
    pub fleet: Option<Arc<crate::cluster::Fleet>>,
    /// Fleet mode: requests for other boxes' tasks are relayed to them.
    relay: Option<Relay>,
}

impl ApiState {
    pub fn new(
        config: Arc<Config>,
        manager: Manager,
        metrics: Metrics,
        fleet: Option<Arc<crate::cluster::Fleet>>,
    ) -> Self {
        let limiter = Mutex::new(RateLimiter::per_second(config.limits.api_rate_per_second));
        let relay = fleet.as_ref().and_then(|_| match Relay::new() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "no HTTP client to relay API requests to other boxes");
                None
            }
        });
        Self {
            config,
            manager,
            metrics,
            limiter,
            signatures: Mutex::new(SignatureBindings::new()),
            fleet,
            relay,
        }
    }
}

/// What an action does with a request: answers it here, or relays it to
/// the box of the fleet that runs its task or room.
enum Reply {
    Here(Map<String, Value>),
    There {
        node_id: String,
        advertise_url: String,
    },
}

/// What the edge sends back.
enum Outcome {
    Answered(Map<String, Value>),
    Relayed(Response, String),
}

/// A fleet call, its failure as the API's error.
async fn fleet_call<T: Send + 'static>(
    fleet: &Arc<crate::cluster::Fleet>,
    call: impl FnOnce(&crate::cluster::Fleet) -> Result<T, crate::cluster::FleetError> + Send + 'static,
) -> Result<T, ApiError> {
    fleet.call(call).await.map_err(|e| match e {
        crate::cluster::FleetError::Full => ApiError::new(
            codes::RESTRICTED_CONCURRENCY,
            format!("{e}: stop a task or add a box"),
        ),
        e => ApiError::internal(format!(
            "the fleet cannot answer now ({e}); retry with the same parameters"
        )),
    })
}

/// Fleet mode: where a Create goes: this box (its room claimed), or the
/// room's owner, or, for a room nobody owns, the box with the most room.
async fn place_create(
    fleet: &Arc<crate::cluster::Fleet>,
    spec: &crate::domain::params::RecordingSpec,
    hops: u8,
) -> Result<Option<Reply>, ApiError> {
    let (app, room) = (spec.sdk_app_id, spec.room.fleet_key());
    match fleet_call(fleet, move |f| f.place_room(app, &room)).await? {
        Placement::Here => Ok(None),
        Placement::There {
            node_id,
            advertise_url,
        } if forward::may_relay(hops) && !advertise_url.is_empty() => Ok(Some(Reply::There {
            node_id,
            advertise_url,
        })),
        Placement::There { node_id, advertise_url } => Err(ApiError::new(
            codes::ROOM_ON_ANOTHER_BOX,
            format!(
                "room {} is recorded by box {node_id} of the fleet: send this request to {advertise_url}",
                spec.room
            ),
        )),
    }
}

/// Fleet mode: whether a task is another live box's (the request goes
/// there). A task live here is answered here without asking the database
/// (so reads go on while it is away; a write to a task another box took
/// over is refused by the database, `StoreError::Fenced`). A task of a
/// dead box is about to be taken over: retry.
async fn task_elsewhere(
    api: &ApiState,
    task_id: &str,
    hops: u8,
) -> Result<Option<Reply>, ApiError> {
    let Some(fleet) = &api.fleet else {
        return Ok(None);
    };
    if api.manager.runs(task_id) {
        return Ok(None);
    }
    let id = task_id.to_owned();
    match fleet_call(fleet, move |f| f.task_home(&id)).await? {
        None | Some(TaskHome::Here) => Ok(None),
        Some(TaskHome::There {
            node_id,
            advertise_url,
        }) if forward::may_relay(hops) && !advertise_url.is_empty() => Ok(Some(Reply::There {
            node_id,
            advertise_url,
        })),
        Some(TaskHome::There { .. }) => Ok(None),
        Some(TaskHome::Dead { node_id }) => Err(ApiError::internal(format!(
            "task {task_id} ran on box {node_id} of the fleet, which stopped answering; \
             another box resumes it within the lease (cluster.lease_seconds): retry shortly"
        ))),
    }
}

/// The wall clock in the signed seconds that TC3 and UserSig times use.
fn unix_secs_signed() -> i64 {
    i64::try_from(crate::clock::unix_secs()).unwrap_or(i64::MAX)
}

fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A header's value as text; empty when absent or not visible ASCII.
pub fn header_text(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Builds the Tencent envelope. Always 200 + `application/json`.
pub fn envelope(request_id: &str, result: Result<Map<String, Value>, ApiError>) -> Response {
    let response = match result {
        Ok(mut fields) => {
            fields.insert("RequestId".into(), Value::from(request_id));
            Value::Object(fields)
        }
        Err(e) => json!({
            "Error": {"Code": e.code, "Message": e.message},
            "RequestId": request_id,
        }),
    };
    let body = json!({ "Response": response }).to_string();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// `POST /` (and any other method on `/`, answered with an error envelope).
pub async fn handle(State(api): State<Arc<ApiState>>, req: Request) -> Response {
    let started = Instant::now();
    let rid = request_id();
    let action = req
        .headers()
        .get("x-tc-action")
        .and_then(|v| v.to_str().ok())
        .and_then(Action::parse);
    let label = action.map_or("unknown", Action::name);
    let result = dispatch(&api, req, action).await;
    let code: &str = match &result {
        Ok(Outcome::Answered(_)) => "Success",
        Ok(Outcome::Relayed(_, code)) => code,
        Err(e) => &e.code,
    };
    api.metrics
        .api_requests
        .with_label_values(&[label, code])
        .inc();
    api.metrics
        .api_request_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Outcome::Relayed(answer, _)) => answer,
        Ok(Outcome::Answered(fields)) => envelope(&rid, Ok(fields)),
        Err(e) => {
            tracing::debug!(request_id = %rid, action = label, code = %e.code, message = %e.message, "API error");
            envelope(&rid, Err(e))
        }
    }
}

async fn dispatch(
    api: &ApiState,
    req: Request,
    action: Option<Action>,
) -> Result<Outcome, ApiError> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        return Err(ApiError::new(
            codes::UNSUPPORTED_PROTOCOL,
            format!(
                "{} is not supported: send POST / with a TC3-HMAC-SHA256-signed JSON body",
                parts.method
            ),
        ));
    }
    let limit = api.config.server.max_body_bytes;
    let body = crate::http_edge::read_body(&parts.headers, body, limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => ApiError::new(
                codes::REQUEST_SIZE_LIMIT,
                format!("{e} (server.max_body_bytes)"),
            ),
            BodyError::Unreadable(_) => ApiError::new(codes::UNSUPPORTED_PROTOCOL, e.to_string()),
        })?;
    let content_type = header_text(&parts.headers, header::CONTENT_TYPE);
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(ApiError::new(
            codes::UNSUPPORTED_PROTOCOL,
            format!(
                "Content-Type {content_type:?} is not supported: kiroku takes TC3-HMAC-SHA256-signed JSON \
                 (application/json); the legacy HmacSHA1/HmacSHA256 form signatures are not supported"
            ),
        ));
    }
    // The operator (the console) acts with the admin token instead of a
    // TC3 signature: for every app, through the same validation.
    let signed = if api.config.dev_mode() || operator_bearer(&api.config, &parts.headers) {
        None
    } else {
        let signed = authenticate(
            api,
            &parts.headers,
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            &body,
        )?;
        authorize(api, &signed.secret_id, &body)?;
        Some(signed)
    };
    let action = action.ok_or_else(|| {
        let given = header_text(&parts.headers, "x-tc-action");
        ApiError::new(
            codes::INVALID_ACTION,
            format!(
                "X-TC-Action {given:?} is not an action of this service: use CreateCloudRecording, \
                 DescribeCloudRecording, ModifyCloudRecording or DeleteCloudRecording"
            ),
        )
    })?;
    if let Some(signed) = signed {
        let client = crate::http_edge::client_ip(&parts.extensions);
        let valid_until = signed.timestamp.saturating_add(tc3::MAX_CLOCK_SKEW_SECONDS);
        let admitted = crate::sync::lock(&api.signatures).admit(
            &signed.signature,
            action,
            client,
            valid_until,
            unix_secs_signed(),
        );
        if let Err(e) = admitted {
            api.metrics.replays_refused.inc();
            tracing::warn!(%client, action = action.name(), first = e.first, "signed request replayed for another action: refused");
            return Err(ApiError::new("AuthFailure.SignatureFailure", e.to_string()));
        }
    }
    let version = header_text(&parts.headers, "x-tc-version");
    if version != API_VERSION {
        return Err(ApiError::new(
            codes::NO_SUCH_VERSION,
            format!("X-TC-Version {version:?} is not supported: use {API_VERSION}"),
        ));
    }
    let hops = forward::hops(&parts.headers);
    let reply = match action {
        Action::Create => create(api, parse(&body, action)?, hops).await?,
        Action::Describe => describe(api, parse(&body, action)?, hops).await?,
        Action::Modify => modify(api, parse(&body, action)?, hops).await?,
        Action::Delete => delete(api, parse(&body, action)?, hops).await?,
    };
    match reply {
        Reply::Here(fields) => Ok(Outcome::Answered(fields)),
        Reply::There {
            node_id,
            advertise_url,
        } => {
            let relay = api.relay.as_ref().ok_or_else(|| {
                ApiError::internal("this box cannot relay requests to the fleet (see its log)")
            })?;
            let answer = relay
                .relay(&node_id, &advertise_url, &parts.headers, body, hops)
                .await?;
            api.metrics
                .api_relayed
                .with_label_values(&[action.name()])
                .inc();
            let (head, answer_body) = answer.into_parts();
            let bytes = axum::body::to_bytes(answer_body, usize::MAX)
                .await
                .unwrap_or_default();
            let code = forward::answer_code(&bytes);
            tracing::debug!(action = action.name(), to = %node_id, code = %code, "API request relayed to the box that runs it");
            Ok(Outcome::Relayed(
                Response::from_parts(head, Body::from(bytes)),
                code,
            ))
        }
    }
}

/// `Authorization: Bearer <server.admin_token>`: the operator (a TC3
/// signature's header starts `TC3-HMAC-SHA256`, never `Bearer`).
fn operator_bearer(config: &Config, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&config.server.admin_token, given) {
        (Some(token), Some(given)) => token.matches(given.trim()),
        _ => false,
    }
}

/// A credential bound to some apps (`credentials.apps`) acts only for
/// them. The body's SdkAppId is read here, before validation; a body
/// without a usable one is left to validation to name.
fn authorize(api: &ApiState, secret_id: &str, body: &[u8]) -> Result<(), ApiError> {
    let Some(credential) = api
        .config
        .credentials
        .iter()
        .find(|c| c.secret_id == secret_id)
    else {
        return Ok(());
    };
    let app = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("SdkAppId").and_then(Value::as_u64))
        .and_then(|v| u32::try_from(v).ok());
    match app {
        Some(app) if !credential.may_act_for(app) => Err(ApiError::new(
            "AuthFailure.UnauthorizedOperation",
            format!("the SecretId {secret_id} may not act for SdkAppId {app} (credentials.apps)"),
        )),
        _ => Ok(()),
    }
}

/// A request whose signature verified.
struct Signed {
    secret_id: String,
    signature: String,
    timestamp: i64,
}

/// Checks the request's signature.
fn authenticate(
    api: &ApiState,
    headers: &HeaderMap,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<Signed, ApiError> {
    let auth_err = |e: tc3::AuthError| ApiError::new(e.code(), e.to_string());
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            auth_err(tc3::AuthError::Malformed(
                "the Authorization header is missing".into(),
            ))
        })?;
    let auth = tc3::parse_authorization(value).map_err(auth_err)?;
    let timestamp: i64 = headers
        .get("x-tc-timestamp")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            auth_err(tc3::AuthError::Malformed(
                "X-TC-Timestamp is missing or not a Unix time".into(),
            ))
        })?;
    let mut signed = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let v = headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                auth_err(tc3::AuthError::Mismatch(format!(
                    "the signed header `{name}` is not in the request"
                )))
            })?;
        signed.push((name.clone(), v.to_owned()));
    }
    let unsigned = headers
        .get("x-tc-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == tc3::UNSIGNED_PAYLOAD);
    let payload_hash = if unsigned {
        tc3::UNSIGNED_PAYLOAD.to_owned()
    } else {
        tc3::sha256_hex(body)
    };
    let req = tc3::SignedRequest {
        method: "POST",
        path,
        query,
        headers: &signed,
        payload_hash: &payload_hash,
    };
    let services = api.config.server.signed_services.as_deref();
    tc3::verify(&auth, services, timestamp, unix_secs_signed(), &req, |id| {
        api.config
            .credentials
            .iter()
            .find(|c| c.secret_id == id)
            .map(|c| c.secret_key.clone())
    })
    .map_err(auth_err)?;
    Ok(Signed {
        secret_id: auth.secret_id,
        signature: auth.signature,
        timestamp,
    })
}

/// JSON → raw request, with errors that name the offending field.
fn parse<T: DeserializeOwned>(body: &[u8], action: Action) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner, action)
    })?;
    de.end().map_err(|e| json_error(".", &e, action))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error, action: Action) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            codes::BODY_PARAMS,
            format!("the request body is not valid JSON: {e}"),
        ),
        Category::Data => {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg);
            if let Some(rest) = msg.strip_prefix("unknown field `") {
                let field = rest.split('`').next().unwrap_or(rest);
                let full = if path == "." || path.is_empty() {
                    field.to_owned()
                } else if path.ends_with(field) {
                    path.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                ApiError::new(
                    codes::UNKNOWN_PARAMETER,
                    format!("`{full}` is not a parameter of {}", action.name()),
                )
            } else if path == "." || path.is_empty() {
                ApiError::new(
                    codes::BODY_PARAMS,
                    format!("the request body must be a JSON object: {msg}"),
                )
            } else {
                ApiError::new(
                    codes::BODY_PARAMS,
                    format!("`{path}` has the wrong type: {msg}"),
                )
            }
        }
    }
}

/// The app's configuration, or `None` in open dev mode without `[[apps]]`.
fn check_app(
    api: &ApiState,
    sdk_app_id: u32,
) -> Result<Option<&crate::config::AppConfig>, ApiError> {
    match api.config.app(sdk_app_id) {
        Some(app) => Ok(Some(app)),
        None if api.config.dev_mode() && api.config.apps.is_empty() => Ok(None),
        None => Err(ApiError::new(
            codes::SDK_APP_ID_NOT_EXIST,
            format!(
                "SdkAppId {sdk_app_id} is not configured on this appliance (add it under [[apps]])"
            ),
        )),
    }
}

fn rate_limit(api: &ApiState, sdk_app_id: u32, action: Action) -> Result<(), ApiError> {
    let granted = crate::sync::lock(&api.limiter)
        .try_acquire((sdk_app_id, action.name()), Instant::now())
        .is_ok();
    if granted {
        Ok(())
    } else {
        Err(ApiError::new(
            codes::REQUEST_LIMIT_EXCEEDED,
            format!(
                "more than {} {} requests per second for SdkAppId {sdk_app_id}; back off and retry",
                api.config.limits.api_rate_per_second,
                action.name()
            ),
        ))
    }
}

/// SdkAppId → known app → rate limit: the common prefix of every action.
fn admit(
    api: &ApiState,
    sdk_app_id: Option<i64>,
    action: Action,
) -> Result<(u32, Option<&crate::config::AppConfig>), ApiError> {
    let id = validate::sdk_app_id(sdk_app_id)?;
    let app = check_app(api, id)?;
    rate_limit(api, id, action)?;
    Ok((id, app))
}

fn fields(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

async fn create(
    api: &ApiState,
    req: model::CreateCloudRecordingRequest,
    hops: u8,
) -> Result<Reply, ApiError> {
    let (_, app) = admit(api, req.sdk_app_id, Action::Create)?;
    let spec = validate::create(req)?;
    if let Some(key) = app.and_then(|a| a.user_sig_key.as_deref()) {
        usersig::verify(
            &spec.bot_user_sig,
            key,
            spec.sdk_app_id,
            &spec.bot_user_id,
            unix_secs_signed(),
        )
        .map_err(|e| ApiError::new(codes::INVALID_USER_SIG, format!("`UserSig`: {e}")))?;
    }
    if let Some(fleet) = &api.fleet {
        if let Some(elsewhere) = place_create(fleet, &spec, hops).await? {
            return Ok(elsewhere);
        }
    }
    let task_id = api.manager.create(spec).await?;
    Ok(Reply::Here(fields(vec![("TaskId", Value::from(task_id))])))
}

async fn describe(
    api: &ApiState,
    req: model::DescribeCloudRecordingRequest,
    hops: u8,
) -> Result<Reply, ApiError> {
    let (id, _) = admit(api, req.sdk_app_id, Action::Describe)?;
    let task_id = validate::task_id(req.task_id)?;
    if let Some(elsewhere) = task_elsewhere(api, &task_id, hops).await? {
        return Ok(elsewhere);
    }
    let status = api.manager.describe(id, &task_id)?;
    let files = serde_json::to_value(&status.files).unwrap_or_else(|_| Value::Array(Vec::new()));
    Ok(Reply::Here(fields(vec![
        ("TaskId", Value::from(status.task_id)),
        ("Status", Value::from(status.status)),
        ("StorageFileList", files),
    ])))
}

async fn modify(
    api: &ApiState,
    req: model::ModifyCloudRecordingRequest,
    hops: u8,
) -> Result<Reply, ApiError> {
    let (id, _) = admit(api, req.sdk_app_id, Action::Modify)?;
    let task_id = validate::task_id(req.task_id)?;
    if let Some(elsewhere) = task_elsewhere(api, &task_id, hops).await? {
        return Ok(elsewhere);
    }
    let (layout, subscription) = (req.mix_layout_params, req.subscribe_stream_user_ids);
    api.manager
        .modify(id, &task_id, move |spec| {
            validate::modification(layout, subscription, spec)
        })
        .await?;
    Ok(Reply::Here(fields(vec![("TaskId", Value::from(task_id))])))
}

async fn delete(
    api: &ApiState,
    req: model::DeleteCloudRecordingRequest,
    hops: u8,
) -> Result<Reply, ApiError> {
    let (id, _) = admit(api, req.sdk_app_id, Action::Delete)?;
    let task_id = validate::task_id(req.task_id)?;
    if let Some(elsewhere) = task_elsewhere(api, &task_id, hops).await? {
        return Ok(elsewhere);
    }
    api.manager.delete(id, &task_id).await?;
    Ok(Reply::Here(fields(vec![("TaskId", Value::from(task_id))])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        let e = parse::<model::CreateCloudRecordingRequest>(
            br#"{"RecordParams": {"Foo": 1}}"#,
            Action::Create,
        )
        .expect_err("unknown");
        assert_eq!(e.code, codes::UNKNOWN_PARAMETER);
        assert!(e.message.contains("`RecordParams.Foo`"), "{}", e.message);
        let e = parse::<model::CreateCloudRecordingRequest>(br#"{"Bar": 1}"#, Action::Create)
            .expect_err("unknown");
        assert!(e.message.contains("`Bar`"), "{}", e.message);
        let e = parse::<model::CreateCloudRecordingRequest>(
            br#"{"RecordParams": {"MaxIdleTime": "30"}}"#,
            Action::Create,
        )
        .expect_err("type");
        assert_eq!(e.code, codes::BODY_PARAMS);
        assert!(
            e.message.contains("`RecordParams.MaxIdleTime`"),
            "{}",
            e.message
        );
        let e = parse::<model::CreateCloudRecordingRequest>(br#"{"SdkAppId": 1"#, Action::Create)
            .expect_err("syntax");
        assert_eq!(e.code, codes::BODY_PARAMS);
        let e =
            parse::<model::CreateCloudRecordingRequest>(b"[1]", Action::Create).expect_err("array");
        assert_eq!(e.code, codes::BODY_PARAMS);
        let e = parse::<model::DeleteCloudRecordingRequest>(br#"{} {}"#, Action::Delete)
            .expect_err("trailing");
        assert_eq!(e.code, codes::BODY_PARAMS);
        assert!(parse::<model::DeleteCloudRecordingRequest>(b"", Action::Delete).is_ok());
    }

    #[test]
    fn envelope_is_200_json_exactly() {
        let r = envelope("rid", Err(ApiError::new(codes::INVALID_ACTION, "x")));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
}
