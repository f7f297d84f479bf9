//! kiroku's built-in video-on-demand store: finished MP4 files kept under
//! `data_dir/vod/`, each with a stable unique FileId, served over HTTP with
//! range requests (`GET <public_url>/vod/<FileId>.mp4`), deleted when they
//! expire.
//!
//! - **FileId**: 19 decimal digits (a random 63-bit number with the top bit
//!   set, like Tencent VOD's numeric ids), never reused: a collision with an
//!   existing file draws again.
//! - **Layout**: `<FileId>.mp4` and `<FileId>.json` (metadata) side by
//!   side, each written to a temporary name, fsynced and renamed, so a crash
//!   leaves either the whole file or none. The MP4 is renamed into place
//!   before its metadata: a FileId exists once its metadata exists, and an
//!   MP4 without metadata (a crash in between) is removed at open.
//! - **Expiry**: `expire_at_unix_s` (from `TencentVod.ExpireTime`, 0 =
//!   never); [`VodStore::expire`] deletes what is past it.
//! - **In a fleet** ([`FleetIndex`]): each file's record is also kept in
//!   the fleet's state store (`vod_files`, under the box that holds the
//!   MP4), so that a box asked for a FileId it does not hold redirects to
//!   the one that does. The JSON beside the MP4 stays the box's own copy;
//!   a record the database could not take (PostgreSQL away) is retried at
//!   every expiry pass until it can.
//! - **Ranges**: [`parse_range`] implements RFC 9110 §14 for one range
//!   (`bytes=a-b`, `bytes=a-`, `bytes=-n`); several ranges are answered with
//!   the whole file (allowed by the RFC), an unsatisfiable one with 416.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::Content;
use crate::state::{RecordOwner, RecordSet, StateStore};
use crate::sync::lock;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VodError {
    #[error("VOD store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the fleet's VOD records: {0}")]
    Index(String),
    #[error("VOD metadata {path} is unreadable: {source}")]
    Metadata {
        path: String,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VodError + '_ {
    move |source| VodError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What the store knows about a file (the 311 callback's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VodEntry {
    pub file_id: String,
    pub task_id: String,
    /// Empty for mixed-stream recordings.
    pub user_id: String,
    pub track_type: String,
    pub media_id: String,
    /// The MP4's name in the recording (CacheFile).
    pub cache_file: String,
    pub size: u64,
    pub created_unix_s: u64,
    /// 0: never.
    pub expire_at_unix_s: u64,
}

pub struct VodStore {
    dir: PathBuf,
    index: Option<FleetIndex>,
}

/// A file's record in the fleet: its entry and where it is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedFile {
    pub entry: VodEntry,
    /// `<public_url>/vod/<FileId>.mp4` of the box that holds it.
    pub url: String,
}

/// What the fleet's state store has yet to be told.
#[derive(Debug, Clone)]
enum IndexChange {
    Put(VodEntry),
    Remove(String),
}

/// The VOD records of a fleet box in the shared state store.
pub struct FleetIndex {
    store: Arc<StateStore>,
    node_id: String,
    public_url: String,
    /// Changes the database did not take yet, in order.
    pending: Mutex<Vec<IndexChange>>,
}

impl FleetIndex {
    fn url_of(&self, file_id: &str) -> String {
        format!(
            "{}/vod/{file_id}.mp4",
            self.public_url.trim_end_matches('/')
        )
    }

    fn apply(&self, change: &IndexChange) -> Result<(), String> {
        match change {
            IndexChange::Put(entry) => {
                let record = IndexedFile {
                    entry: entry.clone(),
                    url: self.url_of(&entry.file_id),
                };
                let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
                self.store
                    .put_record(
                        RecordSet::VodFiles,
                        RecordOwner::ThisBox,
                        &entry.file_id,
                        &json,
                    )
                    .map_err(|e| e.to_string())
            }
            IndexChange::Remove(file_id) => self
                .store
                .remove_record(RecordSet::VodFiles, RecordOwner::ThisBox, file_id)
                .map_err(|e| e.to_string()),
        }
    }

    /// Applies `change` after what is still pending; keeps it (and what
    /// follows) for the next [`VodStore::sync_index`] if the database
    /// does not take it.
    fn record(&self, change: IndexChange) {
        let mut pending = lock(&self.pending);
        pending.push(change);
        Self::flush(self, &mut pending);
    }

    fn flush(&self, pending: &mut Vec<IndexChange>) {
        while let Some(change) = pending.first() {
            if let Err(e) = self.apply(change) {
                tracing::warn!(error = %e, waiting = pending.len(),
                    "VOD records not in the fleet's database yet; retried at the next expiry pass");
                return;
            }
            pending.remove(0);
        }
    }
}

/// A FileId is exactly 19 ASCII digits (anything else is refused before
/// touching the filesystem).
pub fn valid_file_id(id: &str) -> bool {
    id.len() == 19 && id.bytes().all(|b| b.is_ascii_digit())
}

/// 19 digits from 62 bits: bit 62 set, bit 63 clear.
fn file_id_from(n: u64) -> String {
    format!("{:019}", (n | (1 << 62)) & (u64::MAX >> 1))
}

fn new_file_id() -> String {
    file_id_from(rand::random::<u64>())
}

/// The FileId of a recording file: a function of its task and name, so
/// that committing it again (a daemon that stopped while finishing the
/// task runs the job again) replaces it under the same FileId instead of
/// making a second copy.
fn derived_file_id(task_id: &str, cache_file: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(task_id.as_bytes())
        .chain_update([0u8])
        .chain_update(cache_file.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    file_id_from(u64::from_be_bytes(first))
}

fn write_atomic(path: &Path, content: Content<'_>) -> Result<(), VodError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    content.write_to(&mut f).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl VodStore {
    /// Opens (creates) the store and removes what a crash left half-done.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, VodError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let orphan_mp4 = ext == "mp4" && !path.with_extension("json").exists();
            if ext == "tmp" || orphan_mp4 {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(Self { dir, index: None })
    }

    /// Fleet mode: every record (those already here included) also goes
    /// to the fleet's state store, under `node_id`, served at
    /// `public_url`.
    pub fn with_fleet_index(
        mut self,
        store: Arc<StateStore>,
        node_id: &str,
        public_url: &str,
    ) -> Result<Self, VodError> {
        let mut existing = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"));
            if let Some(Ok(Some(e))) = id.map(|id| self.get(id)) {
                existing.push(IndexChange::Put(e));
            }
        }
        let index = FleetIndex {
            store,
            node_id: node_id.to_owned(),
            public_url: public_url.to_owned(),
            pending: Mutex::new(existing),
        };
        index.flush(&mut lock(&index.pending));
        self.index = Some(index);
        Ok(self)
    }

    /// Retries the records the fleet's database did not take yet.
    pub fn sync_index(&self) {
        if let Some(index) = &self.index {
            index.flush(&mut lock(&index.pending));
        }
    }

    /// Fleet mode: where another box serves `file_id` (`None`: no box of
    /// the fleet has it, this box's record only, or not a fleet).
    pub fn locate_elsewhere(&self, file_id: &str) -> Result<Option<IndexedFile>, VodError> {
        let Some(index) = &self.index else {
            return Ok(None);
        };
        if !valid_file_id(file_id) {
            return Ok(None);
        }
        let found = index
            .store
            .find_record(RecordSet::VodFiles, file_id)
            .map_err(|e| VodError::Index(e.to_string()))?;
        match found {
            Some((node, value)) if node != index.node_id => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|source| VodError::Metadata {
                    path: format!("vod_files/{file_id} of box {node}"),
                    source,
                }),
            _ => Ok(None),
        }
    }

    pub fn mp4_path(&self, file_id: &str) -> PathBuf {
        self.dir.join(format!("{file_id}.mp4"))
    }

    fn meta_path(&self, file_id: &str) -> PathBuf {
        self.dir.join(format!("{file_id}.json"))
    }

    /// Stores one MP4; returns its entry (with its FileId). The same
    /// task's same file committed again keeps its FileId (see
    /// [`derived_file_id`]); another file never takes an existing one.
    pub fn commit(&self, mp4: &[u8], entry: VodEntry) -> Result<VodEntry, VodError> {
        self.commit_content(Content::bytes(mp4), entry)
    }

    /// [`VodStore::commit`] of an MP4 made of bytes and a spilled payload.
    pub fn commit_content(
        &self,
        mp4: Content<'_>,
        mut entry: VodEntry,
    ) -> Result<VodEntry, VodError> {
        let derived = derived_file_id(&entry.task_id, &entry.cache_file);
        let same_file = |id: &str| {
            self.get(id)
                .ok()
                .flatten()
                .is_some_and(|e| e.task_id == entry.task_id && e.cache_file == entry.cache_file)
        };
        let free = |id: &str| !self.meta_path(id).exists() && !self.mp4_path(id).exists();
        let file_id = if free(&derived) || same_file(&derived) {
            derived
        } else {
            loop {
                let id = new_file_id();
                if free(&id) {
                    break id;
                }
            }
        };
        entry.file_id = file_id.clone();
        let mp4_path = self.mp4_path(&file_id);
        write_atomic(&mp4_path, mp4)?;
        entry.size = std::fs::metadata(&mp4_path).map_err(io(&mp4_path))?.len();
        let meta = serde_json::to_vec_pretty(&entry).map_err(|source| VodError::Metadata {
            path: self.meta_path(&file_id).display().to_string(),
            source,
        })?;
        write_atomic(&self.meta_path(&file_id), Content::bytes(&meta))?;
        let dir = std::fs::File::open(&self.dir).map_err(io(&self.dir))?;
        dir.sync_all().map_err(io(&self.dir))?;
        if let Some(index) = &self.index {
            index.record(IndexChange::Put(entry.clone()));
        }
        Ok(entry)
    }

    /// The entry of `file_id`, if it exists.
    pub fn get(&self, file_id: &str) -> Result<Option<VodEntry>, VodError> {
        if !valid_file_id(file_id) {
            return Ok(None);
        }
        let path = self.meta_path(file_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| VodError::Metadata {
                path: path.display().to_string(),
                source,
            })
    }

    /// The files a task made (the console lists them), oldest first.
    pub fn of_task(&self, task_id: &str) -> Vec<VodEntry> {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<VodEntry> = listing
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let id = name.to_str()?.strip_suffix(".json")?.to_owned();
                self.get(&id).ok().flatten()
            })
            .filter(|e| e.task_id == task_id)
            .collect();
        out.sort_by(|a, b| {
            (a.created_unix_s, &a.cache_file).cmp(&(b.created_unix_s, &b.cache_file))
        });
        out
    }

    /// Deletes every file whose expiry is at or before `now_unix_s`;
    /// returns their FileIds.
    pub fn expire(&self, now_unix_s: u64) -> Result<Vec<String>, VodError> {
        let mut gone = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let e = match self.get(id) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(err) => {
                    // One unreadable record must not stop every other
                    // file's expiry: set it aside (its MP4 stays) and go on.
                    let aside = path.with_extension("json.corrupt");
                    tracing::error!(file_id = id, error = %err, aside = %aside.display(),
                        "unreadable VOD record set aside; its file no longer expires");
                    std::fs::rename(&path, &aside).map_err(io(&path))?;
                    continue;
                }
            };
            if e.expire_at_unix_s != 0 && e.expire_at_unix_s <= now_unix_s {
                // Metadata first: once it is gone the file is gone for readers.
                std::fs::remove_file(&path).map_err(io(&path))?;
                let mp4 = self.mp4_path(id);
                match std::fs::remove_file(&mp4) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(io(&mp4)(err)),
                }
                if let Some(index) = &self.index {
                    index.record(IndexChange::Remove(id.to_owned()));
                }
                gone.push(id.to_owned());
            }
        }
        gone.sort();
        Ok(gone)
    }
}

/// The answer to a `Range` header for a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole file (no header, several ranges, or a header we
    /// do not understand: RFC 9110 lets a server ignore Range).
    Full,
    /// 206: bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// Parses one `Range` header value against a file of `len` bytes.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match parse(b) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(n) if len > 0 => RangeAnswer::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Full,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeAnswer::Full;
            };
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                parse(b)
            };
            match end {
                None => RangeAnswer::Full,
                Some(end) if end < start => RangeAnswer::Full,
                Some(_) if start >= len => RangeAnswer::Unsatisfiable,
                Some(end) => RangeAnswer::Partial {
                    start,
                    end: end.min(len - 1),
                },
            }
        }
        (true, true) => RangeAnswer::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> VodEntry {
        VodEntry {
            file_id: String::new(),
            task_id: "t1".into(),
            user_id: "u1".into(),
            track_type: "audio_video".into(),
            media_id: "main".into(),
            cache_file: "x.mp4".into(),
            size: 0,
            created_unix_s: 100,
            expire_at_unix_s: 0,
        }
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAnswer::*;
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-500"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-500"), 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 100), Full);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), Full);
    }

    #[test]
    fn commit_get_and_expire() {
        let dir = std::env::temp_dir().join(format!("kiroku-vod-{}", rand::random::<u64>()));
        let store = VodStore::open(&dir).expect("open");
        let mut later = entry();
        later.expire_at_unix_s = 2_000;
        later.cache_file = "other.mp4".into();
        let a = store.commit(b"first", entry()).expect("commit");
        let b = store.commit(b"second!", later).expect("commit");
        assert!(valid_file_id(&a.file_id) && valid_file_id(&b.file_id));
        assert_ne!(a.file_id, b.file_id);
        assert_eq!(store.get(&b.file_id).expect("get"), Some(b.clone()));
        assert_eq!(b.size, 7);
        assert_eq!(
            std::fs::read(store.mp4_path(&b.file_id)).expect("read"),
            b"second!"
        );
        assert_eq!(store.get("../etc/passwd").expect("get"), None);
        assert_eq!(store.expire(1_999).expect("expire"), Vec::<String>::new());
        assert_eq!(
            store.expire(2_000).expect("expire"),
            vec![b.file_id.clone()]
        );
        assert_eq!(store.get(&b.file_id).expect("get"), None);
        assert!(!store.mp4_path(&b.file_id).exists());
        // Never-expiring files stay.
        assert_eq!(store.get(&a.file_id).expect("get"), Some(a));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_record_is_set_aside_and_the_rest_expire() {
        let dir = std::env::temp_dir().join(format!("kiroku-vod-{}", rand::random::<u64>()));
        let store = VodStore::open(&dir).expect("open");
        let mut soon = entry();
        soon.expire_at_unix_s = 2_000;
        let good = store.commit(b"expires", soon.clone()).expect("commit");
        soon.cache_file = "broken.mp4".into();
        let broken = store.commit(b"broken", soon).expect("commit");
        let meta = dir.join(format!("{}.json", broken.file_id));
        std::fs::write(&meta, b"{ not json").expect("corrupt it");
        assert_eq!(
            store.expire(2_000).expect("expire goes on"),
            vec![good.file_id.clone()]
        );
        assert!(!meta.exists());
        assert!(dir
            .join(format!("{}.json.corrupt", broken.file_id))
            .exists());
        assert_eq!(store.expire(3_000).expect("again"), Vec::<String>::new());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn committing_the_same_file_again_keeps_its_file_id() {
        let dir = std::env::temp_dir().join(format!("kiroku-vod-{}", rand::random::<u64>()));
        let store = VodStore::open(&dir).expect("open");
        let a = store.commit(b"first try", entry()).expect("commit");
        let again = store.commit(b"second try", entry()).expect("commit");
        assert_eq!(a.file_id, again.file_id);
        assert_eq!(
            std::fs::read(store.mp4_path(&a.file_id)).expect("read"),
            b"second try"
        );
        assert_eq!(
            std::fs::read_dir(&dir).expect("dir").count(),
            2,
            "one mp4, one json"
        );
        // Another task's file of the same name gets its own id.
        let mut other = entry();
        other.task_id = "another-task".into();
        let b = store.commit(b"x", other).expect("commit");
        assert_ne!(a.file_id, b.file_id);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_crash_between_the_mp4_and_its_metadata_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("kiroku-vod-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("1234567890123456789.mp4"), b"orphan").expect("write");
        std::fs::write(dir.join("1234567890123456788.tmp"), b"half").expect("write");
        let store = VodStore::open(&dir).expect("open");
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
        assert_eq!(store.get("1234567890123456789").expect("get"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
