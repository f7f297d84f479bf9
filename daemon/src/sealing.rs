//! Secrets at rest (docs/security.md, "Secrets at rest"): task records
//! (customer S3 keys, the recorder bot's UserSig) and upload targets (S3
//! keys) are sealed with AES-256-GCM under a key the operator keeps in a
//! file (`[secrets] key_file`), so that a copied `state.redb`, a backup of
//! `data_dir` or a dump of the fleet's database gives nothing away.
//!
//! Format: `KRKS1` ‖ key id (8 bytes: the start of SHA-256 of the key) ‖
//! nonce (12 random bytes) ‖ ciphertext and tag. The associated data binds
//! the value to where it is stored (e.g. `task:<TaskId>`), so a sealed
//! value cannot be moved to another record unnoticed.
//!
//! Rotation: the new key goes in `key_file`, the old one in
//! `previous_key_files`; values sealed with any of them open, and the
//! daemon re-seals every record with the new key when it starts. After one
//! start the old key can go.
//!
//! Values written before a key was configured are plain JSON and still
//! load (they are sealed at the daemon's next start); a sealed value with
//! no key to open it is an error that says so.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const MAGIC: &[u8; 5] = b"KRKS1";
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the key file {path} is readable by group or others (mode {mode:o}): chmod 600 it")]
    Exposed { path: String, mode: u32 },
    #[error("the key file {path} must hold 32 random bytes in base64 (e.g. `head -c 32 /dev/urandom | base64`)")]
    BadKey { path: String },
    #[error("{context} is sealed with a key this daemon does not have (key id {key_id}): configure it in [secrets] key_file or previous_key_files")]
    UnknownKey { context: String, key_id: String },
    #[error("{context} is sealed but no [secrets] key_file is configured")]
    NoKey { context: String },
    #[error("{context} did not open: damaged, or moved from another record")]
    Damaged { context: String },
    #[error("no randomness for a nonce")]
    Random,
}

struct Key {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

impl Key {
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        Some(Self {
            id,
            key: LessSafeKey::new(unbound),
        })
    }

    /// Reads a key file: base64 of 32 bytes, private to its owner.
    fn load(path: &Path) -> Result<Self, SealError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| SealError::Read {
            path: shown.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealError::Exposed { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|source| SealError::Read {
            path: shown.clone(),
            source,
        })?;
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SealError::BadKey {
                path: shown.clone(),
            })?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey { path: shown });
        }
        Self::from_bytes(&bytes).ok_or(SealError::BadKey { path: shown })
    }
}

/// A value read back: its plain bytes, and whether it should be written
/// again (plain, or sealed with a previous key).
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    pub plain: Vec<u8>,
    pub stale: bool,
}

/// Seals with the current key; opens with it or a previous one. Without a
/// key (`Sealer::none()`) values are written plain.
pub struct Sealer {
    current: Option<Key>,
    previous: Vec<Key>,
    random: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("current", &self.current.as_ref().map(|k| hex::encode(k.id)))
            .field("previous", &self.previous.len())
            .finish()
    }
}

fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

impl Sealer {
    /// No key: values are written plain (files stay 0600).
    pub fn none() -> Self {
        Self {
            current: None,
            previous: Vec::new(),
            random: SystemRandom::new(),
        }
    }

    /// The key files of `[secrets]`.
    pub fn from_files(key_file: &Path, previous: &[std::path::PathBuf]) -> Result<Self, SealError> {
        Ok(Self {
            current: Some(Key::load(key_file)?),
            previous: previous
                .iter()
                .map(|p| Key::load(p))
                .collect::<Result<_, _>>()?,
            random: SystemRandom::new(),
        })
    }

    #[cfg(test)]
    pub(crate) fn from_raw(current: &[u8], previous: &[&[u8]]) -> Self {
        Self {
            current: Key::from_bytes(current),
            previous: previous.iter().filter_map(|k| Key::from_bytes(k)).collect(),
            random: SystemRandom::new(),
        }
    }

    pub fn is_sealing(&self) -> bool {
        self.current.is_some()
    }

    /// The stored form of `plain`, kept at `context`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let Some(key) = &self.current else {
            return Ok(plain.to_vec());
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Damaged {
                context: context.to_owned(),
            })?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plain form of a value stored at `context`.
    pub fn open(&self, context: &str, stored: &[u8]) -> Result<Opened, SealError> {
        if !is_sealed(stored) {
            return Ok(Opened {
                plain: stored.to_vec(),
                stale: self.current.is_some(),
            });
        }
        if stored.len() < HEADER_LEN {
            return Err(SealError::Damaged {
                context: context.to_owned(),
            });
        }
        let id = &stored[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
        let (key, stale) = match &self.current {
            None => {
                return Err(SealError::NoKey {
                    context: context.to_owned(),
                })
            }
            Some(k) if k.id == id => (k, false),
            Some(_) => match self.previous.iter().find(|k| k.id == id) {
                Some(k) => (k, true),
                None => {
                    return Err(SealError::UnknownKey {
                        context: context.to_owned(),
                        key_id: hex::encode(id),
                    })
                }
            },
        };
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&stored[MAGIC.len() + KEY_ID_LEN..HEADER_LEN]);
        let mut body = stored[HEADER_LEN..].to_vec();
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Damaged {
                context: context.to_owned(),
            })?;
        Ok(Opened {
            plain: plain.to_vec(),
            stale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];
    const SECRET: &[u8] = br#"{"secret_key":"s3-secret-0123456789"}"#;

    #[test]
    fn sealed_values_hide_the_secret_and_open_where_they_were_stored() {
        let s = Sealer::from_raw(&K1, &[]);
        let a = s.seal("task:1", SECRET).expect("seals");
        let b = s.seal("task:1", SECRET).expect("seals");
        assert!(a.starts_with(b"KRKS1"));
        assert_ne!(a, b, "a fresh nonce each time");
        assert!(!a.windows(9).any(|w| w == b"s3-secret"));
        let opened = s.open("task:1", &a).expect("opens");
        assert_eq!(opened.plain, SECRET);
        assert!(!opened.stale);
        // Moved to another record, or damaged: refused.
        assert!(matches!(
            s.open("task:2", &a),
            Err(SealError::Damaged { .. })
        ));
        let mut bent = a.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert!(matches!(
            s.open("task:1", &bent),
            Err(SealError::Damaged { .. })
        ));
        assert!(matches!(
            s.open("task:1", &a[..10]),
            Err(SealError::Damaged { .. })
        ));
    }

    #[test]
    fn rotation_opens_old_values_and_marks_them_for_resealing() {
        let old = Sealer::from_raw(&K1, &[]);
        let sealed = old.seal("task:1", SECRET).expect("seals");
        let rotated = Sealer::from_raw(&K2, &[&K1]);
        let opened = rotated.open("task:1", &sealed).expect("opens");
        assert_eq!((opened.plain.as_slice(), opened.stale), (SECRET, true));
        // Without the old key it names the key it lacks.
        let e = Sealer::from_raw(&K2, &[])
            .open("task:1", &sealed)
            .expect_err("unknown key");
        assert!(e.to_string().contains("key id"), "{e}");
        // Without any key it says to configure one.
        let e = Sealer::none().open("task:1", &sealed).expect_err("no key");
        assert!(e.to_string().contains("key_file"), "{e}");
    }

    #[test]
    fn plain_values_load_and_are_sealed_once_a_key_exists() {
        let plain = Sealer::none();
        let stored = plain.seal("task:1", SECRET).expect("plain");
        assert_eq!(stored, SECRET);
        assert_eq!(
            plain.open("task:1", &stored).expect("opens"),
            Opened {
                plain: SECRET.to_vec(),
                stale: false
            }
        );
        let keyed = Sealer::from_raw(&K1, &[]);
        assert!(keyed.open("task:1", &stored).expect("opens").stale);
    }

    #[test]
    fn key_files_must_be_private_base64_of_32_bytes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kiroku-seal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            p
        };
        use base64::Engine;
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let ok = write("ok.key", &format!("{good}\n"), 0o600);
        assert!(Sealer::from_files(&ok, &[]).expect("loads").is_sealing());
        let open = write("open.key", &good, 0o644);
        let e = Sealer::from_files(&open, &[]).expect_err("exposed");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let short = write(
            "short.key",
            &base64::engine::general_purpose::STANDARD.encode([7u8; 16]),
            0o600,
        );
        assert!(matches!(
            Sealer::from_files(&short, &[]),
            Err(SealError::BadKey { .. })
        ));
        let junk = write("junk.key", "not base64 at all!", 0o400);
        assert!(matches!(
            Sealer::from_files(&junk, &[]),
            Err(SealError::BadKey { .. })
        ));
        let e = Sealer::from_files(&dir.join("missing.key"), &[]).expect_err("missing");
        assert!(e.to_string().contains("missing.key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
