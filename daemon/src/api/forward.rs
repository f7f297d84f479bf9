//! Fleet mode: an API request for a task or room that another box runs is
//! relayed to that box, so that every box answers for the whole fleet.
//!
//! The request goes on as the client signed it (same headers, `Host`
//! included, same body): the owner verifies the client's TC3 signature
//! itself, so a box of the fleet holds no credential a peer could misuse.
//! Each relay adds one to `X-Kiroku-Fleet-Hops`; a request that has been
//! relayed [`MAX_HOPS`] times is answered where it is (a room that changes
//! owner between two looks cannot bounce it around). The owner's answer is
//! passed back unchanged.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::Response;

use super::error::ApiError;

/// How many times this request has been relayed between boxes.
pub const HOPS_HEADER: &str = "x-kiroku-fleet-hops";
/// A request relayed this often is answered where it arrived.
pub const MAX_HOPS: u8 = 2;
/// An owner's answer is an envelope of a few KB (StorageFileList of a long
/// task included); more is not an answer.
const MAX_ANSWER_BYTES: usize = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(15);

/// Headers that belong to one connection, not to the request (RFC 9110
/// §7.6.1), and the ones this relay sets itself.
const NOT_RELAYED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    HOPS_HEADER,
];

/// Times the request has been relayed; a value that is not a small number
/// counts as the most (it is then answered here).
pub fn hops(headers: &HeaderMap) -> u8 {
    match headers.get(HOPS_HEADER) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u8>().ok())
            .map_or(MAX_HOPS, |h| h.min(MAX_HOPS)),
    }
}

/// Whether a request that arrived after `hops` relays may be relayed again.
pub fn may_relay(hops: u8) -> bool {
    hops < MAX_HOPS
}

/// The headers sent on to the owner.
fn relayed_headers(headers: &HeaderMap, hops: u8) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 1);
    for (name, value) in headers {
        if !NOT_RELAYED.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(
        HeaderName::from_static(HOPS_HEADER),
        axum::http::HeaderValue::from(u16::from(hops.saturating_add(1))),
    );
    out
}

pub struct Relay {
    http: reqwest::Client,
}

impl Relay {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Self { http })
    }

    /// Sends the request to the box at `advertise_url` and returns its
    /// answer.
    pub async fn relay(
        &self,
        node_id: &str,
        advertise_url: &str,
        headers: &HeaderMap,
        body: Bytes,
        hops: u8,
    ) -> Result<Response, ApiError> {
        let url = format!("{}/", advertise_url.trim_end_matches('/'));
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::internal(format!(
                "box {node_id} of the fleet ({url}), which runs this task's room, did not answer: {e}; retry shortly"
            ))
        };
        let answer = self
            .http
            .post(&url)
            .headers(relayed_headers(headers, hops))
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        if answer.status() != StatusCode::OK {
            return Err(unreachable(&format!("HTTP {}", answer.status())));
        }
        let too_long = answer
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64);
        if too_long {
            return Err(unreachable(&"an answer over 4 MiB"));
        }
        let bytes = answer.bytes().await.map_err(|e| unreachable(&e))?;
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err(unreachable(&"an answer over 4 MiB"));
        }
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .map_err(|e| unreachable(&e))
    }
}

/// The error code in a relayed envelope, for the request metrics.
pub fn answer_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/Response/Error/Code")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Success".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_count_up_and_garbage_counts_as_the_most() {
        let mut h = HeaderMap::new();
        assert_eq!(hops(&h), 0);
        h.insert(HOPS_HEADER, "1".parse().expect("value"));
        assert_eq!(hops(&h), 1);
        assert!(may_relay(hops(&h)));
        h.insert(HOPS_HEADER, "x".parse().expect("value"));
        assert_eq!(hops(&h), MAX_HOPS);
        assert!(!may_relay(hops(&h)));
        h.insert(HOPS_HEADER, "250".parse().expect("value"));
        assert_eq!(hops(&h), MAX_HOPS);
    }

    #[test]
    fn the_signed_headers_go_on_and_the_connection_ones_do_not() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "lb.example:8080".parse().expect("value"));
        h.insert(
            header::AUTHORIZATION,
            "TC3-HMAC-SHA256 x".parse().expect("value"),
        );
        h.insert(header::CONTENT_LENGTH, "12".parse().expect("value"));
        h.insert(header::CONNECTION, "close".parse().expect("value"));
        h.insert(HOPS_HEADER, "1".parse().expect("value"));
        let out = relayed_headers(&h, 1);
        assert_eq!(
            out.get(header::HOST).map(|v| v.as_bytes()),
            Some(&b"lb.example:8080"[..])
        );
        assert!(out.contains_key(header::AUTHORIZATION));
        assert!(!out.contains_key(header::CONTENT_LENGTH));
        assert!(!out.contains_key(header::CONNECTION));
        assert_eq!(out.get(HOPS_HEADER).map(|v| v.as_bytes()), Some(&b"2"[..]));
    }

    #[test]
    fn answer_codes_are_read_from_the_envelope() {
        assert_eq!(
            answer_code(br#"{"Response":{"TaskId":"x","RequestId":"r"}}"#),
            "Success"
        );
        assert_eq!(
            answer_code(
                br#"{"Response":{"Error":{"Code":"InvalidParameter.TaskId","Message":"m"}}}"#
            ),
            "InvalidParameter.TaskId"
        );
    }
}
