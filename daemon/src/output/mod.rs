//! Where recorded files go: one interface, [`Store`], so that recorders do
//! not care whether a file lands on local disk (the embedded default, under
//! `data_dir/storage/<object key>`), in S3-compatible storage or in the VOD
//! store (both behind a crash-safe spool, later).
//!
//! Object keys are the spec's `<Prefix>/<TaskId>/<file>` (see
//! `hls::naming`); they never contain `..` or absolute paths, which
//! [`check_key`] enforces before anything touches the filesystem.

pub mod convert;
pub mod durable;
pub mod local;
pub mod queue;
pub mod s3;
pub mod spill;
pub mod spool;
pub mod uploader;
mod uring;
pub mod vod;
pub mod vod_http;

use std::path::PathBuf;

pub use durable::Content;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("object key {0:?} is not a relative path of plain names")]
    BadKey(String),
    /// The spool or its disk is full: the task cannot go on recording.
    #[error("storage full: {0}")]
    Full(String),
    #[error("spooling the file")]
    Spool(#[source] spool::SpoolError),
    #[error("writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A destination for recorded files. Writes are whole-object and atomic:
/// a reader sees the old object or the new one, never a partial file.
pub trait Store: Send + Sync {
    /// Writes (or replaces) an object made of `content` (bytes, or bytes
    /// and a file's contents: a long MP4 is never held in memory).
    fn put_content(&self, key: &str, content: Content<'_>) -> Result<(), StoreError>;

    /// Writes (or replaces) an object.
    fn put(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        self.put_content(key, Content::bytes(data))
    }
}

/// Writes every object to several stores (a task's storage and the
/// staging copy its end-of-task packing reads), in order; the first
/// failure is the result.
pub struct TeeStore {
    stores: Vec<std::sync::Arc<dyn Store>>,
}

impl TeeStore {
    pub fn new(stores: Vec<std::sync::Arc<dyn Store>>) -> Self {
        Self { stores }
    }
}

impl Store for TeeStore {
    fn put_content(&self, key: &str, content: Content<'_>) -> Result<(), StoreError> {
        for s in &self.stores {
            s.put_content(key, content)?;
        }
        Ok(())
    }
}

/// Refuses keys that could escape the store's root.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.contains('\0')
        || key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        Err(StoreError::BadKey(key.to_owned()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "a\0b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        for good in [
            "t/1_2.m3u8",
            "p1/p2/t/ha1_1_2_20330531094551825.ts",
            "a.b..c",
        ] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
    }
}
