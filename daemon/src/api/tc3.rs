//! TC3-HMAC-SHA256, the request signature of Tencent Cloud API v3.
//!
//! Pure functions: the caller passes the request's parts and the current
//! time; nothing here reads a clock or a socket. [`sign`] is what Tencent's
//! SDKs compute (also used by `bench/` and tests), [`verify`] is what the
//! server checks:
//!
//! ```text
//! CanonicalRequest = METHOD \n URI \n QUERY \n CanonicalHeaders \n SignedHeaders \n hex(sha256(body))
//! StringToSign     = "TC3-HMAC-SHA256" \n ts \n date/service/tc3_request \n hex(sha256(CanonicalRequest))
//! key              = HMAC(HMAC(HMAC("TC3"+SecretKey, date), service), "tc3_request")
//! Signature        = hex(HMAC(key, StringToSign))
//! ```

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// Largest accepted difference between `X-TC-Timestamp` and the server clock.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;
/// Value of `X-TC-Content-SHA256` that makes the body hash a fixed string.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The parts of an `Authorization: TC3-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub secret_id: String,
    pub date: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Why a signature was refused; each maps to one Tencent error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// `AuthFailure.InvalidAuthorization`
    #[error("{0}")]
    Malformed(String),
    /// `AuthFailure.SignatureExpire`
    #[error("request timestamp {timestamp} is {skew} s away from the server time {now}; at most {MAX_CLOCK_SKEW_SECONDS} s are allowed")]
    Expired { timestamp: i64, now: i64, skew: i64 },
    /// `AuthFailure.SignatureFailure`
    #[error("{0}")]
    Mismatch(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "AuthFailure.InvalidAuthorization",
            AuthError::Expired { .. } => "AuthFailure.SignatureExpire",
            AuthError::Mismatch(_) => "AuthFailure.SignatureFailure",
        }
    }
}

/// Parses `TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request, SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let malformed = |why: &str| {
        AuthError::Malformed(format!(
            "Authorization header is not a TC3-HMAC-SHA256 authorization: {why}"
        ))
    };
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| malformed("it must start with TC3-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| malformed("Credential is missing"))?;
    let signed = signed.ok_or_else(|| malformed("SignedHeaders is missing"))?;
    let signature = signature.ok_or_else(|| malformed("Signature is missing"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [secret_id, date, service, terminator] = scope.as_slice() else {
        return Err(malformed(
            "Credential must be SecretId/YYYY-MM-DD/service/tc3_request",
        ));
    };
    if *terminator != "tc3_request" || secret_id.is_empty() {
        return Err(malformed(
            "Credential must be SecretId/YYYY-MM-DD/service/tc3_request",
        ));
    }
    let signed_headers: Vec<String> = signed
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if signed_headers.iter().any(String::is_empty) {
        return Err(malformed("SignedHeaders has an empty name"));
    }
    Ok(Authorization {
        secret_id: (*secret_id).to_owned(),
        date: (*date).to_owned(),
        service: (*service).to_owned(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// What is signed about one request.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// `(lower-case name, value)` for every signed header, in SignedHeaders order.
    pub headers: &'a [(String, String)],
    /// `sha256(body)` in hex, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn canonical_request(req: &SignedRequest<'_>) -> String {
    let mut canonical_headers = String::new();
    let mut names = Vec::with_capacity(req.headers.len());
    for (name, value) in req.headers {
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(value.trim());
        canonical_headers.push('\n');
        names.push(name.as_str());
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        req.query,
        canonical_headers,
        names.join(";"),
        req.payload_hash
    )
}

/// The hex signature Tencent's SDKs put in `Signature=`.
pub fn sign(
    secret_key: &str,
    service: &str,
    date: &str,
    timestamp: i64,
    req: &SignedRequest<'_>,
) -> String {
    let scope = format!("{date}/{service}/tc3_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{timestamp}\n{scope}\n{}",
        sha256_hex(canonical_request(req).as_bytes())
    );
    let k_date = hmac(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac(&k_date, service.as_bytes());
    let k_signing = hmac(&k_service, b"tc3_request");
    hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
}

/// The full `Authorization` header value for a request (client side).
pub fn authorization_header(
    secret_id: &str,
    secret_key: &str,
    service: &str,
    timestamp: i64,
    req: &SignedRequest<'_>,
) -> String {
    let date = utc_date(timestamp);
    let signature = sign(secret_key, service, &date, timestamp, req);
    let names: Vec<&str> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
    format!(
        "{ALGORITHM} Credential={secret_id}/{date}/{service}/tc3_request, SignedHeaders={}, Signature={signature}",
        names.join(";")
    )
}

/// The `Authorization` of a JSON `POST /` to `host` (client side, as
/// Tencent's SDKs sign an API call: content-type and host signed).
pub fn json_post_authorization(
    secret_id: &str,
    secret_key: &str,
    host: &str,
    body: &[u8],
    timestamp: i64,
) -> String {
    let headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("host".to_owned(), host.to_owned()),
    ];
    let hash = sha256_hex(body);
    authorization_header(
        secret_id,
        secret_key,
        "trtc",
        timestamp,
        &SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: &hash,
        },
    )
}

/// `YYYY-MM-DD` (UTC) of a Unix timestamp, as the credential scope uses.
pub fn utc_date(timestamp: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(timestamp) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        Err(_) => String::from("0000-00-00"),
    }
}

/// Checks a request's signature. `lookup` maps a SecretId to its key;
/// `now` is the server's Unix time in seconds.
///
/// What Tencent's SDKs do differently, and is accepted (docs/api.md):
/// - the credential scope's service is the one the client states (the
///   Node.js and Java SDKs take it from the endpoint's first DNS label, so
///   an SDK pointed at `127.0.0.1:8080` signs for `127`); it is part of the
///   key derivation, so the secret key is required all the same.
///   `services` pins the accepted names when the operator wants that.
/// - the signed `host` may leave out the port of the `Host` header as sent
///   (the Node.js SDK signs the host name alone): the signature is checked
///   against the header as sent, then against it without its port.
pub fn verify(
    auth: &Authorization,
    services: Option<&[String]>,
    timestamp: i64,
    now: i64,
    req: &SignedRequest<'_>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(), AuthError> {
    // An unknown SecretId is answered exactly as a wrong signature, after
    // the same checks and the same work: which ids exist is nobody's
    // business but the operator's (Tencent's own service says
    // SecretIdNotFound; docs/security.md says why kiroku does not).
    let known = lookup(&auth.secret_id);
    let id_known = known.is_some();
    let secret_key = known.unwrap_or_else(|| "\0unknown-secret-id".to_owned());
    // The timestamp is the caller's: `abs_diff` cannot overflow, even for
    // i64::MIN.
    let skew = i64::try_from(now.abs_diff(timestamp)).unwrap_or(i64::MAX);
    if skew > MAX_CLOCK_SKEW_SECONDS {
        return Err(AuthError::Expired {
            timestamp,
            now,
            skew,
        });
    }
    if !is_service_label(&auth.service) {
        return Err(AuthError::Malformed(format!(
            "the credential scope's service `{}` is not a service name (letters, digits and - . : _ [ ], at most 255)",
            auth.service
        )));
    }
    if let Some(allowed) = services {
        if !allowed.contains(&auth.service) {
            return Err(AuthError::Mismatch(format!(
                "the credential scope names service `{}`; this appliance accepts {} (server.signed_services)",
                auth.service,
                allowed.join(", ")
            )));
        }
    }
    if auth.date != utc_date(timestamp) {
        return Err(AuthError::Mismatch(format!(
            "the credential date {} is not the UTC date of X-TC-Timestamp {timestamp} ({})",
            auth.date,
            utc_date(timestamp)
        )));
    }
    let matches = |req: &SignedRequest<'_>| {
        let expected = sign(&secret_key, &auth.service, &auth.date, timestamp, req);
        // Compare in constant time: the signature is a secret-derived MAC.
        expected.len() == auth.signature.len()
            && expected
                .bytes()
                .zip(auth.signature.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    };
    let without_port: Option<Vec<(String, String)>> = req
        .headers
        .iter()
        .any(|(n, v)| n == "host" && strip_port(v).is_some())
        .then(|| {
            req.headers
                .iter()
                .map(|(n, v)| match strip_port(v) {
                    Some(host) if n == "host" => (n.clone(), host.to_owned()),
                    _ => (n.clone(), v.clone()),
                })
                .collect()
        });
    let matched = matches(req)
        || without_port
            .as_ref()
            .is_some_and(|headers| matches(&SignedRequest { headers, ..*req }));
    if matched && id_known {
        Ok(())
    } else {
        Err(AuthError::Mismatch(
            "the request signature does not match: check the SecretKey and that the signed headers and body are sent unmodified".to_owned(),
        ))
    }
}

/// A credential-scope service: Tencent's are lower-case words; an SDK that
/// takes it from the endpoint's first DNS label signs the first octet of
/// an IP address (`127`), or, for an endpoint without a dot, the whole
/// `host:port` (`localhost:8080`, `[::1]:8080`).
fn is_service_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:_[]".contains(&b))
}

/// `host:port` → `host` (`[v6]:port` → `[v6]`); `None` without a port.
fn strip_port(host: &str) -> Option<&str> {
    let (name, port) = host.rsplit_once(':')?;
    let bracketed_v6 = name.starts_with('[') && name.ends_with(']');
    let plain = !name.contains(':');
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && (bracketed_v6 || plain))
        .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_BODY: &str = r#"{"SdkAppId": 1400000000, "RoomId": "1234", "UserId": "recorder_1234", "UserSig": "sig", "RecordParams": {"RecordMode": 1, "MaxIdleTime": 30, "StreamType": 0}, "StorageParams": {"CloudStorage": {"Vendor": 0, "Region": "ap-shanghai", "Bucket": "b", "AccessKey": "a", "SecretKey": "s", "FileNamePrefix": ["p1"]}}}"#;

    fn vector_headers() -> Vec<(String, String)> {
        vec![
            ("content-type".into(), "application/json".into()),
            ("host".into(), "127.0.0.1:18080".into()),
        ]
    }

    #[test]
    fn api_schema_test_vector() {
        let headers = vector_headers();
        let hash = sha256_hex(VECTOR_BODY.as_bytes());
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: &hash,
        };
        assert_eq!(utc_date(1_795_248_959), "2026-11-21");
        assert_eq!(
            sign("secret", "trtc", "2026-11-21", 1_795_248_959, &req),
            "5527c0a2ba3a820f13ff60620cef9fe49385e37c7b1a00333c75bdc5429f3149"
        );
    }

    fn verify_vector(header: &str, now: i64, body: &str) -> Result<(), AuthError> {
        let auth = parse_authorization(header)?;
        let headers = vector_headers();
        let hash = sha256_hex(body.as_bytes());
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: &hash,
        };
        verify(&auth, None, 1_795_248_959, now, &req, |id| {
            (id == "AKIDtest").then(|| "secret".to_owned())
        })
    }

    const GOOD: &str = "TC3-HMAC-SHA256 Credential=AKIDtest/2026-11-21/trtc/tc3_request, SignedHeaders=content-type;host, Signature=5527c0a2ba3a820f13ff60620cef9fe49385e37c7b1a00333c75bdc5429f3149";

    #[test]
    fn verify_accepts_the_vector_and_refuses_changes() {
        assert_eq!(
            verify_vector(GOOD, 1_795_248_959 + 299, VECTOR_BODY),
            Ok(())
        );
        let tampered = VECTOR_BODY.replace("recorder_1234", "recorder_9999");
        assert_eq!(
            verify_vector(GOOD, 1_795_248_959, &tampered).map_err(|e| e.code()),
            Err("AuthFailure.SignatureFailure")
        );
        assert_eq!(
            verify_vector(GOOD, 1_795_248_959 + 301, VECTOR_BODY).map_err(|e| e.code()),
            Err("AuthFailure.SignatureExpire")
        );
        assert_eq!(
            verify_vector(GOOD, 1_795_248_959 - 301, VECTOR_BODY).map_err(|e| e.code()),
            Err("AuthFailure.SignatureExpire")
        );
        // An unknown SecretId is not told apart from a wrong signature.
        let other_id = GOOD.replace("AKIDtest", "AKIDother");
        assert_eq!(
            verify_vector(&other_id, 1_795_248_959, VECTOR_BODY).map_err(|e| e.to_string()),
            verify_vector(GOOD, 1_795_248_959, &tampered).map_err(|e| e.to_string())
        );
        let other_date = GOOD.replace("2026-11-21", "2026-11-20");
        assert_eq!(
            verify_vector(&other_date, 1_795_248_959, VECTOR_BODY).map_err(|e| e.code()),
            Err("AuthFailure.SignatureFailure")
        );
    }

    #[test]
    fn malformed_headers_are_refused_naming_what_is_wrong() {
        for (bad, named) in [
            ("", "must start with TC3-HMAC-SHA256"),
            ("Bearer abc", "must start with TC3-HMAC-SHA256"),
            (
                "TC3-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=00",
                "Credential must be SecretId/YYYY-MM-DD/service/tc3_request",
            ),
            (
                "TC3-HMAC-SHA256 SignedHeaders=host, Signature=00",
                "Credential is missing",
            ),
            (
                "TC3-HMAC-SHA256 Credential=a/2026-01-01/trtc/tc3_request, Signature=00",
                "SignedHeaders is missing",
            ),
            (
                "TC3-HMAC-SHA256 Credential=a/2026-01-01/trtc/tc3_request, SignedHeaders=host",
                "Signature is missing",
            ),
            (
                "TC3-HMAC-SHA256 Credential=a/2026-01-01/trtc/tc3_request, SignedHeaders=host;;x, Signature=00",
                "SignedHeaders has an empty name",
            ),
        ] {
            let e = parse_authorization(bad).expect_err(bad);
            assert_eq!(e.code(), "AuthFailure.InvalidAuthorization", "{bad}");
            assert!(e.to_string().contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn extreme_clock_distances_are_expired_not_a_panic() {
        for ts in [i64::MIN, i64::MAX, 0] {
            assert_eq!(
                verify_vector(GOOD, ts, VECTOR_BODY).map_err(|e| e.code()),
                Err("AuthFailure.SignatureExpire"),
                "{ts}"
            );
        }
    }

    #[test]
    fn authorization_header_round_trips() {
        let headers = vector_headers();
        let hash = sha256_hex(VECTOR_BODY.as_bytes());
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: &hash,
        };
        let h = authorization_header("AKIDtest", "secret", "trtc", 1_795_248_959, &req);
        assert_eq!(h, GOOD);
        // Back through the parser and the verifier: the header we write is
        // one we accept, field by field.
        let auth = parse_authorization(&h).expect("parses");
        assert_eq!(
            (
                auth.secret_id.as_str(),
                auth.date.as_str(),
                auth.service.as_str()
            ),
            ("AKIDtest", "2026-11-21", "trtc")
        );
        assert_eq!(auth.signed_headers, ["content-type", "host"]);
        let lookup = |id: &str| (id == "AKIDtest").then(|| "secret".to_owned());
        assert_eq!(
            verify(&auth, None, 1_795_248_959, 1_795_248_959, &req, lookup),
            Ok(())
        );
        let wrong_key = |_: &str| Some("other".to_owned());
        assert_eq!(
            verify(&auth, None, 1_795_248_959, 1_795_248_959, &req, wrong_key)
                .map_err(|e| e.code()),
            Err("AuthFailure.SignatureFailure")
        );
    }

    /// Signs the vector request as a client would, with `service` in the
    /// scope and `signed_host` as the host it signs.
    fn signed_as(service: &str, signed_host: &str) -> String {
        let headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("host".to_owned(), signed_host.to_owned()),
        ];
        let hash = sha256_hex(VECTOR_BODY.as_bytes());
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: &hash,
        };
        authorization_header("AKIDtest", "secret", service, 1_795_248_959, &req)
    }

    fn verify_as_sent(header: &str, services: Option<&[String]>) -> Result<(), &'static str> {
        let auth = parse_authorization(header).map_err(|e| e.code())?;
        let headers = vector_headers(); // Host: 127.0.0.1:18080, as sent
        let hash = sha256_hex(VECTOR_BODY.as_bytes());
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: &hash,
        };
        verify(&auth, services, 1_795_248_959, 1_795_248_959, &req, |id| {
            (id == "AKIDtest").then(|| "secret".to_owned())
        })
        .map_err(|e| e.code())
    }

    /// Tencent's Node.js SDK pointed at 127.0.0.1:18080: scope service
    /// `127` (the endpoint's first label), host signed without the port.
    #[test]
    fn the_nodejs_sdk_signature_is_accepted_and_still_needs_the_key() {
        let node = signed_as("127", "127.0.0.1");
        assert_eq!(verify_as_sent(&node, None), Ok(()));
        // The same request signed for `trtc` with the port (the Python SDK).
        assert_eq!(
            verify_as_sent(&signed_as("trtc", "127.0.0.1:18080"), None),
            Ok(())
        );
        // An endpoint without a dot: the Node.js, Java, PHP and .NET SDKs
        // sign the whole `host:port` as the service.
        assert_eq!(
            verify_as_sent(&signed_as("localhost:18080", "127.0.0.1"), None),
            Ok(())
        );
        assert_eq!(
            verify_as_sent(&signed_as("[::1]:18080", "127.0.0.1"), None),
            Ok(())
        );
        // A hostname endpoint (`kiroku.example.com` signs `kiroku`).
        assert_eq!(
            verify_as_sent(&signed_as("kiroku", "127.0.0.1"), None),
            Ok(())
        );
        // The scope's service is in the key derivation: changing it in the
        // header without the key breaks the signature.
        let forged = node.replace("/127/", "/trtc/");
        assert_eq!(
            verify_as_sent(&forged, None),
            Err("AuthFailure.SignatureFailure")
        );
        // Another host is not "the same host without its port".
        assert_eq!(
            verify_as_sent(&signed_as("trtc", "10.0.0.1"), None),
            Err("AuthFailure.SignatureFailure")
        );
        assert_eq!(
            verify_as_sent(&signed_as("trtc", "127.0.0.1:9999"), None),
            Err("AuthFailure.SignatureFailure")
        );
    }

    #[test]
    fn pinned_services_refuse_the_others_by_name() {
        let pinned = ["trtc".to_owned()];
        assert_eq!(
            verify_as_sent(&signed_as("trtc", "127.0.0.1"), Some(&pinned)),
            Ok(())
        );
        assert_eq!(
            verify_as_sent(&signed_as("127", "127.0.0.1"), Some(&pinned)),
            Err("AuthFailure.SignatureFailure")
        );
        for bad in ["", "a b", "x/y"] {
            let header = signed_as("trtc", "127.0.0.1").replace("/trtc/", &format!("/{bad}/"));
            assert!(verify_as_sent(&header, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_are_stripped_only_from_host_port_forms() {
        assert_eq!(strip_port("127.0.0.1:8080"), Some("127.0.0.1"));
        assert_eq!(strip_port("box.example:443"), Some("box.example"));
        assert_eq!(strip_port("[::1]:8080"), Some("[::1]"));
        for none in ["127.0.0.1", "::1", "[::1]", "host:", "host:80a", ""] {
            assert_eq!(strip_port(none), None, "{none}");
        }
    }
}
