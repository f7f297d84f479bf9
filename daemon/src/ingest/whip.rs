//! WHIP endpoints (RFC 9725) on the daemon's HTTP listener.
//!
//! - `POST /whip/{SdkAppId}/{RoomId}/{UserId}` — main stream (camera + mic)
//! - `POST /whip/{SdkAppId}/{RoomId}/{UserId}/aux` — aux stream (screen share)
//!   Rooms are integer rooms; add `?roomType=string` for a string room.
//!   Body `application/sdp` → `201 Created`, the answer, `Location`, `ETag`.
//! - `DELETE /whip/session/{id}` ends the session (`200`).
//! - `PATCH /whip/session/{id}` with `application/trickle-ice-sdpfrag`:
//!   trickled candidates are acknowledged with `204` — kiroku is an ICE-lite
//!   agent and learns the client's addresses from its connectivity checks,
//!   so it needs none; an ICE restart (`If-Match: *`) answers `422` (not
//!   supported: publish again instead), a stale `If-Match` `412`.
//! - `OPTIONS` on all of them, with CORS so pages on other origins publish.
//!
//! In fleet mode a POST for a room another live box owns answers `307
//! Temporary Redirect` to the same path on that box (RFC 9725 §4.5; the
//! client sends its offer again there); a room without a live owner is
//! claimed by this box first (`crate::cluster`).
//!
//! Errors are plain text with the RFC's status codes. Authentication is
//! `Authorization: Bearer <UserSig>` for the UserId in the path, checked
//! with the app's `user_sig_key` (apps without one are open).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{patch, post};
use axum::Router;

use super::{offer, random_token, Command, Ingest, NewPeer, SessionEntry};
use crate::api::validate;
use crate::auth::usersig;
use crate::cluster::{Fleet, Placement};
use crate::config::{Config, OfferLimits};
use crate::ratelimit::RateLimiter;
use crate::room::RoomKey;

const MAX_OFFER_BYTES: usize = 64 * 1024;

pub struct WhipState {
    pub config: Arc<Config>,
    pub ingest: Arc<Ingest>,
    pub offers: Mutex<OfferGate>,
    /// Fleet mode: rooms belong to one box.
    pub fleet: Option<Arc<Fleet>>,
}

impl WhipState {
    pub fn new(config: Arc<Config>, ingest: Arc<Ingest>, fleet: Option<Arc<Fleet>>) -> Self {
        let offers = Mutex::new(OfferGate::new(config.ingest.offer_limits));
        Self {
            config,
            ingest,
            offers,
            fleet,
        }
    }
}

/// The offer rate limits (docs/security.md, "WHIP offers"): per client
/// address before anything is parsed, per app and per room once the
/// publisher is authenticated (so that strangers cannot spend a room's
/// budget where the app checks UserSigs).
pub struct OfferGate {
    per_address: RateLimiter<IpAddr>,
    per_app: RateLimiter<u32>,
    per_room: RateLimiter<RoomKey>,
}

impl OfferGate {
    pub fn new(l: OfferLimits) -> Self {
        // A minute's worth of burst, refilled continuously.
        fn per_minute<K: std::hash::Hash + Eq>(n: u32) -> RateLimiter<K> {
            RateLimiter::new(f64::from(n) / 60.0, f64::from(n))
        }
        Self {
            per_address: per_minute(l.per_address),
            per_app: per_minute(l.per_app),
            per_room: per_minute(l.per_room),
        }
    }
}

pub fn router(state: Arc<WhipState>) -> Router {
    Router::new()
        .route(
            "/whip/session/{id}",
            patch(patch_session).delete(delete_session).options(options),
        )
        .route(
            "/whip/{app}/{room}/{user}",
            post(publish_stream::<false>).options(options),
        )
        .route(
            "/whip/{app}/{room}/{user}/aux",
            post(publish_stream::<true>).options(options),
        )
        // Trickle fragments (PATCH) are small too.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_OFFER_BYTES))
        .with_state(state)
}

fn with_cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Patch, Accept-Post"),
    );
    r
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    let r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(body))
        .unwrap_or_default();
    with_cors(r)
}

async fn options() -> Response {
    let r = Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "POST, PATCH, DELETE, OPTIONS",
        )
        .header(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Content-Type, Authorization, If-Match",
        )
        .header(header::ACCESS_CONTROL_MAX_AGE, "86400")
        .header("Accept-Post", "application/sdp")
        .header("Accept-Patch", "application/trickle-ice-sdpfrag")
        .body(Body::empty())
        .unwrap_or_default();
    with_cors(r)
}

#[derive(Debug, serde::Deserialize)]
pub struct PublishQuery {
    #[serde(rename = "roomType")]
    room_type: Option<String>,
}

/// `POST` for the main stream (`AUX = false`) or the aux stream (`AUX = true`).
async fn publish_stream<const AUX: bool>(
    State(s): State<Arc<WhipState>>,
    Path((app, room, user)): Path<(String, String, String)>,
    Query(q): Query<PublishQuery>,
    uri: axum::http::Uri,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Before a byte of the offer is read or parsed.
    let client = crate::ratelimit::client_key(crate::http_edge::client_ip(&extensions));
    let limits = s.config.ingest.offer_limits;
    let over = crate::sync::lock(&s.offers)
        .per_address
        .try_acquire(client, Instant::now());
    if let Err(wait) = over {
        return refused(&s, WhipError::too_many("address", limits.per_address, wait));
    }
    if let (Some(fleet), Ok(sdk_app_id)) = (&s.fleet, app.parse::<u32>()) {
        // The fleet's name of the room (`RoomId::fleet_key`).
        let key = match q.room_type.as_deref() {
            Some("string") => format!("s:{room}"),
            _ => room.clone(),
        };
        if let Some(r) = to_the_owner(&s, fleet, sdk_app_id, &key, &uri).await {
            return r;
        }
    }
    let body = match crate::http_edge::read_body(&headers, body, MAX_OFFER_BYTES).await {
        Ok(b) => b,
        Err(e @ crate::http_edge::BodyError::TooLarge(_)) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{e}: a WHIP offer is SDP text"),
            )
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match publish_inner(&s, &app, &room, &user, q, AUX, &headers, &body) {
        Ok(r) => {
            s.ingest.metrics.sessions_created.inc();
            r
        }
        Err(e) => refused(&s, e),
    }
}

/// Fleet mode: `None` when this box owns the room (claimed now if it had
/// no live owner), else the answer: 307 to the owner, or 503 while the
/// fleet's database cannot say.
async fn to_the_owner(
    s: &WhipState,
    fleet: &Arc<Fleet>,
    sdk_app_id: u32,
    room: &str,
    uri: &axum::http::Uri,
) -> Option<Response> {
    let r = room.to_owned();
    let placed = fleet.call(move |f| f.place_room(sdk_app_id, &r)).await;
    match placed {
        Ok(Placement::Here) => None,
        Ok(Placement::There { node_id, advertise_url }) if advertise_url.is_empty() => Some(refused(
            s,
            WhipError::from((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("room {room} belongs to box {node_id} of the fleet, which has no address; retry shortly"),
            )),
        )),
        Ok(Placement::There { node_id, advertise_url }) => {
            let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
            let location = format!("{}{path_and_query}", advertise_url.trim_end_matches('/'));
            s.ingest.metrics.offers_redirected.inc();
            tracing::debug!(room, owner = %node_id, %location, "WHIP offer redirected to the room's owner");
            let r = Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, location)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from(format!(
                    "room {room} is recorded by box {node_id} of the fleet: publish there\n"
                )))
                .unwrap_or_default();
            Some(with_cors(r))
        }
        Err(e) => Some(refused(
            s,
            WhipError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("the fleet cannot place room {room} now: {e}; retry shortly"),
                retry_after: Some(Duration::from_secs(2)),
                reason: "fleet",
            },
        )),
    }
}

fn too_many_pending(full: super::TooManyPending, max_pending: usize) -> WhipError {
    WhipError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!(
            "too many sessions waiting to connect ({} of ingest.max_pending_sessions {max_pending}); retry shortly",
            full.0
        ),
        retry_after: Some(Duration::from_secs(5)),
        reason: "pending",
    }
}

fn refused(s: &WhipState, e: WhipError) -> Response {
    let m = &s.ingest.metrics;
    m.sessions_refused
        .with_label_values(&[e.status.as_str()])
        .inc();
    if !e.reason.is_empty() {
        m.offers_limited.with_label_values(&[e.reason]).inc();
    }
    tracing::debug!(status = e.status.as_u16(), msg = %e.message, "WHIP offer refused");
    e.response()
}

/// Why an offer was refused: a status and a message, and for 429 when to
/// come back.
struct WhipError {
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
    /// The metric's reason label (the status unless more precise).
    reason: &'static str,
}

impl From<(StatusCode, String)> for WhipError {
    fn from((status, message): (StatusCode, String)) -> Self {
        Self {
            status,
            message,
            retry_after: None,
            reason: "",
        }
    }
}

impl WhipError {
    fn too_many(what: &'static str, limit: u32, retry_after: Duration) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "more than {limit} WHIP offers a minute {} (ingest.offers_per_minute_{}); retry later",
                match what {
                    "address" => "from this address",
                    "app" => "for this app",
                    _ => "for this room",
                },
                match what {
                    "address" => "per_address",
                    "app" => "per_app",
                    _ => "per_room",
                }
            ),
            retry_after: Some(retry_after),
            reason: what,
        }
    }

    fn response(&self) -> Response {
        let mut r = text(self.status, self.message.clone());
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up (RFC 9110 delay-seconds).
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

#[allow(clippy::too_many_arguments)]
fn publish_inner(
    s: &WhipState,
    app: &str,
    room: &str,
    user: &str,
    q: PublishQuery,
    aux: bool,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, WhipError> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let sdk_app_id: u32 = app
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(format!("`{app}` is not a SdkAppId")))?;
    let app_cfg = s.config.app(sdk_app_id);
    if app_cfg.is_none() && !(s.config.dev_mode() && s.config.apps.is_empty()) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("SdkAppId {sdk_app_id} is not configured on this appliance"),
        )
            .into());
    }
    let room_type = match q.room_type.as_deref() {
        None | Some("integer") | Some("int") => 1,
        Some("string") | Some("str") => 0,
        Some(other) => {
            return Err(bad(format!(
                "roomType={other:?}: use \"integer\" (default) or \"string\""
            ))
            .into())
        }
    };
    let room = validate::room_id(Some(room.to_owned()), Some(room_type)).map_err(|e| {
        if room_type == 1 {
            bad(format!("`{room}` is not an integer room id (1..=4294967294); add ?roomType=string for a string room"))
        } else {
            bad(e.message)
        }
    })?;
    validate::user_id("UserId", user).map_err(|e| bad(e.message))?;

    if let Some(key) = app_cfg.and_then(|a| a.user_sig_key.as_deref()) {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or((
                StatusCode::UNAUTHORIZED,
                "Authorization: Bearer <UserSig> is required for this app".to_owned(),
            ))?;
        let now = i64::try_from(crate::clock::unix_secs()).unwrap_or(i64::MAX);
        usersig::verify(token, key, sdk_app_id, user, now)
            .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    }

    let key = RoomKey { sdk_app_id, room };
    let content_type = header_text(headers, header::CONTENT_TYPE);
    if !content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {content_type:?}: a WHIP offer is application/sdp"),
        )
            .into());
    }
    let sdp = std::str::from_utf8(body).map_err(|_| bad("the offer is not UTF-8 text".into()))?;
    offer::check(sdp, aux).map_err(|e| match e {
        offer::OfferError::Malformed(m) => bad(format!("the body is not an SDP offer: {m}")),
        offer::OfferError::Unusable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
    })?;
    // First the pending bound (an offer refused by it spends no budget),
    let max_pending = s.config.ingest.offer_limits.max_pending;
    let slot = (key.clone(), user.to_owned(), aux);
    s.ingest
        .sessions
        .pending_room(&slot, max_pending)
        .map_err(|full| too_many_pending(full, max_pending))?;
    // then the app's and the room's budgets, spent only by an
    // authenticated, well-formed offer and only when both have room (a
    // room's refusal does not spend the app's token), all before the
    // costly part: a DTLS identity and an ICE agent per offer.
    {
        let limits = s.config.ingest.offer_limits;
        let now = Instant::now();
        let mut gate = crate::sync::lock(&s.offers);
        gate.per_app
            .check(&sdk_app_id, now)
            .map_err(|wait| WhipError::too_many("app", limits.per_app, wait))?;
        gate.per_room
            .try_acquire(key.clone(), now)
            .map_err(|wait| WhipError::too_many("room", limits.per_room, wait))?;
        gate.per_app
            .try_acquire(sdk_app_id, now)
            .map_err(|wait| WhipError::too_many("app", limits.per_app, wait))?;
    }
    let (rtc, creds, answer) = super::accept_offer(sdp, &s.ingest.candidates, Instant::now())
        .map_err(|e| match e {
            super::AcceptError::Sdp(m) => bad(format!("the body is not an SDP offer: {m}")),
            super::AcceptError::Unanswerable(m) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the offer cannot be answered: {m}"),
            ),
        })?;

    let session_id = random_token(24);
    // The resource URL is the publisher's capability to end or patch its
    // session: a separate 190-bit secret, never logged (the session id is).
    let resource = random_token(32);
    let etag = format!("\"{}\"", random_token(12));
    s.ingest
        .sessions
        .insert_pending(
            session_id.clone(),
            SessionEntry {
                key: key.clone(),
                user_id: user.to_owned(),
                aux,
                etag: etag.clone(),
                resource: resource.clone(),
            },
            max_pending,
        )
        .map_err(|full| too_many_pending(full, max_pending))?;
    let peer = NewPeer {
        session_id: session_id.clone(),
        rtc,
        local_ufrag: creds.ufrag,
        local_pass: creds.pass,
        key,
        user_id: user.to_owned(),
        aux,
    };
    if s.ingest
        .commands
        .try_send(Command::AddPeer(Box::new(peer)))
        .is_err()
    {
        s.ingest.sessions.remove(&session_id);
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the media engine is overloaded; retry shortly".to_owned(),
        )
            .into());
    }
    tracing::info!(%session_id, sdk_app_id, user_id = user, aux, "WHIP session created");
    let location = format!("/whip/session/{resource}");
    let r = Response::builder()
        .status(StatusCode::CREATED)
        .header(header::CONTENT_TYPE, "application/sdp")
        .header(header::LOCATION, location)
        .header(header::ETAG, etag)
        .header("Accept-Patch", "application/trickle-ice-sdpfrag")
        .body(Body::from(answer))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(with_cors(r))
}

async fn delete_session(State(s): State<Arc<WhipState>>, Path(resource): Path<String>) -> Response {
    let Some((id, _)) = s.ingest.sessions.by_resource(&resource) else {
        return text(StatusCode::NOT_FOUND, "no such WHIP session");
    };
    s.ingest.end_session(&id);
    with_cors(
        Response::builder()
            .status(StatusCode::OK)
            .body(Body::empty())
            .unwrap_or_default(),
    )
}

async fn patch_session(
    State(s): State<Arc<WhipState>>,
    Path(resource): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((_, entry)) = s.ingest.sessions.by_resource(&resource) else {
        return text(StatusCode::NOT_FOUND, "no such WHIP session");
    };
    let content_type = header_text(&headers, header::CONTENT_TYPE);
    if !content_type
        .trim()
        .eq_ignore_ascii_case("application/trickle-ice-sdpfrag")
    {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {content_type:?}: PATCH takes application/trickle-ice-sdpfrag"),
        );
    }
    match headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        Some("*") => {
            return text(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ICE restarts are not supported: end this session and publish again",
            )
        }
        Some(tag) if tag != entry.etag => {
            return text(
                StatusCode::PRECONDITION_FAILED,
                "If-Match does not match the session's ETag",
            )
        }
        _ => {}
    }
    if std::str::from_utf8(&body).is_err() {
        return text(StatusCode::BAD_REQUEST, "the fragment is not UTF-8 text");
    }
    with_cors(
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::empty())
            .unwrap_or_default(),
    )
}

/// A header's value as text ("" when absent or not visible ASCII).
fn header_text(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
