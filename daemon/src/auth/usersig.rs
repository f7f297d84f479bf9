//! TLS-Sig-API v2 UserSig verification (the algorithm of Tencent's public
//! `tls-sig-api-v2` libraries).
//!
//! A UserSig is `urlsafe_b64(zlib(json))`, where the URL-safe alphabet maps
//! `+ / =` to `* - _`, and the JSON carries `TLS.ver` "2.0",
//! `TLS.identifier`, `TLS.sdkappid`, `TLS.time`, `TLS.expire`, optionally
//! `TLS.userbuf`, and `TLS.sig` = base64(HMAC-SHA256(key, content)) with
//!
//! ```text
//! TLS.identifier:<id>\nTLS.sdkappid:<app>\nTLS.time:<t>\nTLS.expire:<e>\n[TLS.userbuf:<b64>\n]
//! ```
//!
//! Pure: the caller supplies the current Unix time.

use std::io::Read;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Decompressed UserSigs larger than this are refused (a zlib bomb guard).
const MAX_JSON_BYTES: u64 = 16 * 1024;
const MAX_SIG_CHARS: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UserSigError {
    #[error("UserSig is not valid TLS-Sig-API v2 encoding: {0}")]
    Malformed(&'static str),
    #[error("UserSig was issued for UserId `{found}`, not `{expected}`")]
    WrongUser { expected: String, found: String },
    #[error("UserSig was issued for SdkAppId {found}, not {expected}")]
    WrongApp { expected: u32, found: u64 },
    #[error("UserSig expired at Unix time {expired_at} (now {now})")]
    Expired { expired_at: i64, now: i64 },
    #[error("UserSig signature does not match the app's key")]
    BadSignature,
}

#[derive(Debug, serde::Deserialize)]
struct SigDoc {
    #[serde(rename = "TLS.ver")]
    version: String,
    #[serde(rename = "TLS.identifier")]
    identifier: String,
    #[serde(rename = "TLS.sdkappid")]
    sdk_app_id: u64,
    #[serde(rename = "TLS.expire")]
    expire: i64,
    #[serde(rename = "TLS.time")]
    time: i64,
    #[serde(rename = "TLS.userbuf")]
    userbuf: Option<String>,
    #[serde(rename = "TLS.sig")]
    sig: String,
}

fn content(doc: &SigDoc) -> String {
    let mut s = format!(
        "TLS.identifier:{}\nTLS.sdkappid:{}\nTLS.time:{}\nTLS.expire:{}\n",
        doc.identifier, doc.sdk_app_id, doc.time, doc.expire
    );
    if let Some(buf) = &doc.userbuf {
        s.push_str(&format!("TLS.userbuf:{buf}\n"));
    }
    s
}

fn mac(key: &str, data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Verifies `user_sig` for `(sdk_app_id, user_id)` with the app's key at `now`.
pub fn verify(
    user_sig: &str,
    key: &str,
    sdk_app_id: u32,
    user_id: &str,
    now: i64,
) -> Result<(), UserSigError> {
    if user_sig.len() > MAX_SIG_CHARS {
        return Err(UserSigError::Malformed("too long"));
    }
    let standard: String = user_sig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            other => other,
        })
        .collect();
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(standard.as_bytes())
        .map_err(|_| UserSigError::Malformed("not base64"))?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|_| UserSigError::Malformed("not zlib data"))?;
    if json.len() as u64 > MAX_JSON_BYTES {
        return Err(UserSigError::Malformed("too large once decompressed"));
    }
    let doc: SigDoc = serde_json::from_slice(&json)
        .map_err(|_| UserSigError::Malformed("not the expected JSON"))?;
    if doc.version != "2.0" {
        return Err(UserSigError::Malformed("TLS.ver is not 2.0"));
    }
    if doc.identifier != user_id {
        return Err(UserSigError::WrongUser {
            expected: user_id.to_owned(),
            found: doc.identifier,
        });
    }
    if doc.sdk_app_id != u64::from(sdk_app_id) {
        return Err(UserSigError::WrongApp {
            expected: sdk_app_id,
            found: doc.sdk_app_id,
        });
    }
    let expected = base64::engine::general_purpose::STANDARD.encode(mac(key, &content(&doc)));
    if expected.len() != doc.sig.len()
        || expected
            .bytes()
            .zip(doc.sig.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
    {
        return Err(UserSigError::BadSignature);
    }
    let expired_at = doc.time.saturating_add(doc.expire);
    if now > expired_at {
        return Err(UserSigError::Expired { expired_at, now });
    }
    Ok(())
}

/// Issues a UserSig (tests, benchmarks and `kiroku publish`).
pub fn generate(key: &str, sdk_app_id: u32, user_id: &str, now: i64, expire: i64) -> String {
    use std::io::Write;
    let doc = SigDoc {
        version: "2.0".into(),
        identifier: user_id.into(),
        sdk_app_id: u64::from(sdk_app_id),
        expire,
        time: now,
        userbuf: None,
        sig: String::new(),
    };
    let sig = base64::engine::general_purpose::STANDARD.encode(mac(key, &content(&doc)));
    let json = serde_json::json!({
        "TLS.ver": "2.0",
        "TLS.identifier": user_id,
        "TLS.sdkappid": sdk_app_id,
        "TLS.expire": expire,
        "TLS.time": now,
        "TLS.sig": sig,
    });
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(json.to_string().as_bytes());
    let compressed = enc.finish().unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .encode(compressed)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with the PyPI `tls-sig-api-v2` 1.x package:
    /// `TLSSigAPIv2(1400000001, "k3y").gen_sig("alice", 86400)` at time 1795248959.
    const PY_SIG: &str = include_str!("testdata/usersig_py.txt");

    #[test]
    fn verifies_a_sig_from_the_reference_library() {
        let sig = PY_SIG.trim();
        assert_eq!(
            verify(sig, "k3y", 1_400_000_001, "alice", 1_795_248_959 + 10),
            Ok(())
        );
        assert!(matches!(
            verify(sig, "k3y", 1_400_000_001, "alice", 1_795_248_959 + 86_401),
            Err(UserSigError::Expired { .. })
        ));
        assert_eq!(
            verify(sig, "other", 1_400_000_001, "alice", 1_795_248_959),
            Err(UserSigError::BadSignature)
        );
        assert!(matches!(
            verify(sig, "k3y", 1_400_000_001, "bob", 1_795_248_959),
            Err(UserSigError::WrongUser { .. })
        ));
        assert!(matches!(
            verify(sig, "k3y", 1_400_000_002, "alice", 1_795_248_959),
            Err(UserSigError::WrongApp { .. })
        ));
    }

    #[test]
    fn generated_sigs_verify() {
        let sig = generate("k", 7, "u1", 1000, 60);
        assert_eq!(verify(&sig, "k", 7, "u1", 1059), Ok(()));
        assert!(verify(&sig, "k", 7, "u1", 1061).is_err());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bad in ["", "!!!", "eJw_", "aGVsbG8_", &"A".repeat(20_000)] {
            assert!(matches!(
                verify(bad, "k", 1, "u", 0),
                Err(UserSigError::Malformed(_))
            ));
        }
    }
}
