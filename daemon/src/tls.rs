//! TLS on the HTTP listener (docs/security.md, "TLS"): the certificate
//! chain and private key named by `server.tls_cert` / `server.tls_key`.
//!
//! The pair is loaded at start (a bad pair stops the daemon before it opens
//! its state or serves a request) and again on SIGHUP, so that an operator (or certbot's deploy
//! hook) renews a certificate without dropping a recording. A pair that
//! does not load on SIGHUP leaves the one in use serving: a reload never
//! takes the listener down. New connections get the new pair; open ones
//! keep theirs.
//!
//! rustls with the ring provider: the TLS stack the S3 and callback
//! clients (reqwest) already build. TLS 1.2 and 1.3, HTTP/1.1 by ALPN.

use std::path::Path;
use std::sync::{Arc, RwLock};

use prometheus::IntCounterVec;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;
use crate::metrics::{self, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("{path}: not valid PEM: {reason}")]
    BadPem { path: String, reason: String },
    #[error("{cert} and {key} do not make a TLS server: {source}")]
    Pair {
        cert: String,
        key: String,
        source: rustls::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Builds the server configuration from the PEM files.
pub fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let cert_path = files.cert.display().to_string();
    let key_path = files.key.display().to_string();
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_path.clone(),
        },
        other => TlsError::BadPem {
            path: key_path.clone(),
            reason: other.to_string(),
        },
    })?;
    let pair = |source| TlsError::Pair {
        cert: cert_path.clone(),
        key: key_path.clone(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(pair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration in use, swapped whole on reload.
pub struct TlsServer {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
    reloads: IntCounterVec,
    pub(crate) handshake_failures: prometheus::IntCounter,
}

impl TlsServer {
    /// Loads the pair; the daemon does not start without a good one.
    pub fn open(files: TlsFiles, m: &Metrics) -> Result<Arc<Self>, TlsError> {
        let config = load(&files)?;
        let r = m.registry();
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(config),
            reloads: metrics::counter_vec(
                r,
                "kiroku_tls_reloads_total",
                "TLS certificate reloads on SIGHUP, by result (a failed one keeps the pair in use)",
                &["result"],
            ),
            handshake_failures: metrics::counter(
                r,
                "kiroku_tls_handshake_failures_total",
                "TLS handshakes that did not complete: timed out (server.header_timeout_seconds), refused by the client (e.g. an untrusted certificate) or not TLS at all",
            ),
        }))
    }

    /// Loads the files again; on failure the pair in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match load(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                self.reloads.with_label_values(&["ok"]).inc();
                Ok(())
            }
            Err(e) => {
                self.reloads.with_label_values(&["failed"]).inc();
                Err(e)
            }
        }
    }

    /// An acceptor for the next connection, with the pair now in use.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// A self-signed certificate for `name`: (cert PEM, key PEM).
    fn self_signed(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("certificate");
        (
            pem("CERTIFICATE", c.cert.der()),
            pem("PRIVATE KEY", &c.signing_key.serialize_der()),
        )
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let f = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&f.cert, cert).expect("write cert");
        std::fs::write(&f.key, key).expect("write key");
        f
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kiroku-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn a_good_pair_loads_and_bad_files_say_which_and_why() {
        let dir = tempdir("load");
        let (cert, key) = self_signed("box.example");
        let good = files(&dir, &cert, &key);
        let config = load(&good).expect("loads");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let missing = TlsFiles {
            cert: dir.join("nope.pem"),
            key: good.key.clone(),
        };
        let e = load(&missing).expect_err("missing").to_string();
        assert!(e.contains("nope.pem"), "{e}");

        let e = load(&files(&dir, &key, &key))
            .expect_err("no cert")
            .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = load(&files(&dir, &cert, &cert))
            .expect_err("no key")
            .to_string();
        assert!(e.contains("no PEM private key"), "{e}");

        // A key that is not the certificate's.
        let (_, other_key) = self_signed("other.example");
        let e = load(&files(&dir, &cert, &other_key))
            .expect_err("mismatch")
            .to_string();
        assert!(e.contains("do not make a TLS server"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_reload_keeps_the_pair_in_use() {
        let dir = tempdir("reload");
        let (cert, key) = self_signed("box.example");
        let f = files(&dir, &cert, &key);
        let m = Metrics::new();
        let server = TlsServer::open(f.clone(), &m).expect("opens");
        let before = server.current.read().expect("lock").clone();
        std::fs::write(&f.cert, "garbage").expect("write");
        assert!(server.reload().is_err());
        assert!(Arc::ptr_eq(
            &before,
            &server.current.read().expect("lock").clone()
        ));
        let (cert2, key2) = self_signed("box.example");
        files(&dir, &cert2, &key2);
        server.reload().expect("reloads");
        assert!(!Arc::ptr_eq(
            &before,
            &server.current.read().expect("lock").clone()
        ));
        let text = m.render();
        assert!(
            text.contains("kiroku_tls_reloads_total{result=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kiroku_tls_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
