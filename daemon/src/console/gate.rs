//! Who may use the operator endpoints (`/v1/*`) and the console: the
//! holder of `server.admin_token`, shown as `Authorization: Bearer`, or a
//! browser signed in with it (`POST /v1/console/session`: an HttpOnly,
//! SameSite=Strict session cookie, so that `<video>` and hls.js requests
//! are authorized too). A cookie authorizes reads only: whatever changes
//! something needs the bearer token, which a page of another site cannot
//! send (no cross-site request can change the box).
//!
//! A box with no `admin_token` answers only in dev mode (no API
//! credentials, loopback listener): there the token is not checked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::config::Config;
use crate::sync::lock;

/// The session cookie's name.
pub const COOKIE: &str = "kiroku_console";
/// How long a console session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 64;

pub struct OperatorGate {
    config: Arc<Config>,
    sessions: Mutex<HashMap<String, Instant>>,
}

pub fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

impl OperatorGate {
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            config,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// `None` when the request may go on; otherwise the refusal to send.
    pub fn denied(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        let Some(token) = &self.config.server.admin_token else {
            return if self.config.dev_mode() {
                None
            } else {
                Some(json_error(
                    StatusCode::FORBIDDEN,
                    "the operator endpoints are off: set server.admin_token to use them (docs/security.md)",
                ))
            };
        };
        if token.matches(bearer(headers).unwrap_or("")) {
            return None;
        }
        let reads = matches!(*method, Method::GET | Method::HEAD);
        if reads && self.session_valid(headers) {
            return None;
        }
        let mut r = json_error(
            StatusCode::UNAUTHORIZED,
            "the operator endpoints need Authorization: Bearer <server.admin_token>",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"kiroku\""),
        );
        Some(r)
    }

    /// Whether `headers` carry the operator's bearer token (or none is
    /// needed: dev mode without a token).
    pub fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        match &self.config.server.admin_token {
            Some(token) => token.matches(bearer(headers).unwrap_or("")),
            None => self.config.dev_mode(),
        }
    }

    fn session_valid(&self, headers: &HeaderMap) -> bool {
        let Some(id) = cookie(headers, COOKIE) else {
            return false;
        };
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, expires| *expires > now);
        sessions.contains_key(id)
    }

    /// A new session for a request that showed the token: the
    /// `Set-Cookie` value.
    pub fn open_session(&self) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), Instant::now() + SESSION_LIFETIME);
        let secure = if self.config.server.tls.is_some() {
            "; Secure"
        } else {
            ""
        };
        format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            SESSION_LIFETIME.as_secs()
        )
    }

    /// Ends the session the request's cookie names; the `Set-Cookie`
    /// value that clears it.
    pub fn close_session(&self, headers: &HeaderMap) -> String {
        if let Some(id) = cookie(headers, COOKIE) {
            lock(&self.sessions).remove(id);
        }
        format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> OperatorGate {
        let config =
            Config::parse("[server]\nadmin_token = \"0123456789abcdef0123\"\n").expect("config");
        OperatorGate::new(Arc::new(config))
    }

    fn with(header: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header, HeaderValue::from_str(value).expect("value"));
        h
    }

    #[test]
    fn the_token_opens_everything_and_a_session_opens_reads_only() {
        let g = gate();
        let bearer = with(header::AUTHORIZATION, "Bearer 0123456789abcdef0123");
        assert!(g.denied(&Method::POST, &bearer).is_none());
        assert!(g.denied(&Method::GET, &HeaderMap::new()).is_some());
        let set = g.open_session();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let id = set
            .split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .map(|(_, v)| v.to_owned())
            .expect("id");
        let cookie = with(header::COOKIE, &format!("other=1; {COOKIE}={id}"));
        assert!(g.denied(&Method::GET, &cookie).is_none());
        assert!(
            g.denied(&Method::POST, &cookie).is_some(),
            "a cookie never changes anything"
        );
        let forged = with(header::COOKIE, &format!("{COOKIE}=deadbeef"));
        assert!(g.denied(&Method::GET, &forged).is_some());
        g.close_session(&cookie);
        assert!(g.denied(&Method::GET, &cookie).is_some(), "signed out");
    }

    #[test]
    fn sessions_are_bounded() {
        let g = gate();
        for _ in 0..(MAX_SESSIONS + 10) {
            g.open_session();
        }
        assert_eq!(lock(&g.sessions).len(), MAX_SESSIONS);
    }
}
