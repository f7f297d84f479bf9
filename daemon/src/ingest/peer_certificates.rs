//! The DTLS peer certificates kiroku verifies (docs/ingest.md "WHIP
//! clients", vendor/README.md): signatures made by OpenSSL, the independent
//! judge, checked by the crypto provider str0m hands the handshake. RSA
//! (2048+ bits) and ECDSA on P-224, P-256 and P-384 verify; a changed byte
//! fails; P-521 and RSA-1024 are refused. The e2e suite drives the same
//! paths with real GStreamer (RSA) and FFmpeg (P-224) publishers.

use std::path::{Path, PathBuf};
use std::process::Command;

use dimpl::crypto::aws_lc_rs::default_provider;
use dimpl::crypto::{HashAlgorithm, SignatureAlgorithm};

use crate::media::ts::tests::tool;

/// A fresh scratch directory (removed by the caller's `Scratch` guard).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        // Tests run in parallel threads of one process: a counter keeps
        // their directories apart.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("kiroku-peer-cert-{name}-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(openssl: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate (DER) for `key` ("rsa:2048" or a curve name)
/// and OpenSSL's signature of `data` with its key under `digest`.
fn signed(bin: &Path, key: &str, digest: &str, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let scratch = Scratch::new(&format!("{}-{digest}", key.replace(':', "")));
    let dir = &scratch.0;
    let subject = ["-subj", "/CN=kiroku-test", "-days", "1"];
    if let Some(bits) = key.strip_prefix("rsa:") {
        let newkey = format!("rsa:{bits}");
        let mut args = vec![
            "req", "-x509", "-newkey", &newkey, "-nodes", "-keyout", "k.pem",
        ];
        args.extend(["-outform", "DER", "-out", "c.der"]);
        args.extend(subject);
        openssl(bin, dir, &args);
    } else {
        openssl(
            bin,
            dir,
            &[
                "ecparam", "-name", key, "-genkey", "-noout", "-out", "k.pem",
            ],
        );
        let mut args = vec!["req", "-new", "-x509", "-key", "k.pem"];
        args.extend(["-outform", "DER", "-out", "c.der"]);
        args.extend(subject);
        openssl(bin, dir, &args);
    }
    std::fs::write(dir.join("data"), data).expect("write data");
    let flag = format!("-{digest}");
    openssl(
        bin,
        dir,
        &["dgst", &flag, "-sign", "k.pem", "-out", "sig", "data"],
    );
    let cert = std::fs::read(dir.join("c.der")).expect("cert");
    let sig = std::fs::read(dir.join("sig")).expect("sig");
    (cert, sig)
}

fn verify(
    cert: &[u8],
    data: &[u8],
    sig: &[u8],
    hash: HashAlgorithm,
    alg: SignatureAlgorithm,
) -> Result<(), String> {
    default_provider()
        .signature_verification
        .verify_signature(cert, data, sig, hash, alg)
        .map_err(|e| e.to_string())
}

const DATA: &[u8] = b"client_random || server_random || ServerECDHParams";

#[test]
fn rsa_and_p224_peers_verify_beside_p256_and_p384() {
    let Some(bin) = tool("openssl") else {
        eprintln!("skipped: openssl not installed");
        return;
    };
    let cases = [
        (
            "rsa:2048",
            "sha256",
            HashAlgorithm::SHA256,
            SignatureAlgorithm::RSA,
        ),
        (
            "rsa:2048",
            "sha384",
            HashAlgorithm::SHA384,
            SignatureAlgorithm::RSA,
        ),
        (
            "secp224r1",
            "sha256",
            HashAlgorithm::SHA256,
            SignatureAlgorithm::ECDSA,
        ),
        (
            "secp224r1",
            "sha384",
            HashAlgorithm::SHA384,
            SignatureAlgorithm::ECDSA,
        ),
        (
            "prime256v1",
            "sha256",
            HashAlgorithm::SHA256,
            SignatureAlgorithm::ECDSA,
        ),
        (
            "secp384r1",
            "sha384",
            HashAlgorithm::SHA384,
            SignatureAlgorithm::ECDSA,
        ),
    ];
    for (key, digest, hash, alg) in cases {
        let (cert, sig) = signed(&bin, key, digest, DATA);
        verify(&cert, DATA, &sig, hash, alg).unwrap_or_else(|e| panic!("{key} {digest}: {e}"));
        // The same signature over other bytes, or claimed with another
        // hash, must not verify.
        let mut other = DATA.to_vec();
        other[0] ^= 1;
        assert!(
            verify(&cert, &other, &sig, hash, alg).is_err(),
            "{key} {digest}: changed data verified"
        );
        let wrong_hash = if hash == HashAlgorithm::SHA256 {
            HashAlgorithm::SHA384
        } else {
            HashAlgorithm::SHA256
        };
        assert!(
            verify(&cert, DATA, &sig, wrong_hash, alg).is_err(),
            "{key} {digest}: wrong hash verified"
        );
    }
}

#[test]
fn unverifiable_peers_are_refused() {
    let Some(bin) = tool("openssl") else {
        eprintln!("skipped: openssl not installed");
        return;
    };
    // P-521 is not verified; an RSA key under 2048 bits is too weak.
    let (cert, sig) = signed(&bin, "secp521r1", "sha256", DATA);
    let err = verify(
        &cert,
        DATA,
        &sig,
        HashAlgorithm::SHA256,
        SignatureAlgorithm::ECDSA,
    )
    .expect_err("a P-521 signature verified");
    assert!(err.contains("unsupported EC curve"), "{err}");
    let (cert, sig) = signed(&bin, "rsa:1024", "sha256", DATA);
    assert!(verify(
        &cert,
        DATA,
        &sig,
        HashAlgorithm::SHA256,
        SignatureAlgorithm::RSA
    )
    .is_err());
    // An RSA certificate cannot vouch for an ECDSA signature, nor P-224 for RSA.
    let (cert, sig) = signed(&bin, "rsa:2048", "sha256", DATA);
    assert!(verify(
        &cert,
        DATA,
        &sig,
        HashAlgorithm::SHA256,
        SignatureAlgorithm::ECDSA
    )
    .is_err());
    let (cert, sig) = signed(&bin, "secp224r1", "sha256", DATA);
    assert!(verify(
        &cert,
        DATA,
        &sig,
        HashAlgorithm::SHA256,
        SignatureAlgorithm::RSA
    )
    .is_err());
}
