//! The journal of open segments (`recording.journal_dir`): the IO edge of
//! `Output::Journal`. A segment is held in memory until it is cut (up to
//! the segment target, 10 s by default); a crash would lose all of it. So
//! about once a second of media, what the open segment gained is written
//! to `<journal_dir>/<TaskId>/<segment>.part` and synced, beside a
//! `<segment>.json` that says where the segment and its playlist go. Once
//! the segment is stored, both files go.
//!
//! When the task runs again (this box restarted, or another box took it
//! over and reaches the same journal on a shared filesystem), [`recover`]
//! finishes each journaled segment before the recorder starts: cut to its
//! last whole frame (`hls::recover`), stored, and added to its playlist,
//! which is ended; the new run writes `ha<n>_` files of its own.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hls::recover::{end_playlist, finish_playlist, recover_segment};
use crate::hls::stream::JournalWrite;
use crate::output::Store;

/// `<segment>.json`: how to finish the segment.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    key: String,
    file_name: String,
    playlist_key: String,
    playlist_file_name: String,
    playlist_text: String,
    discontinuity: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal: {0:?} is not a segment file name")]
    BadName(String),
    #[error("journal {path}: unreadable ({why})")]
    Unreadable { path: PathBuf, why: String },
    #[error("storing the recovered {key}: {why}")]
    Store { key: String, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A segment file name as the recorder makes them: one path component.
fn safe_name(name: &str) -> Result<&str, JournalError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && !name.contains(['/', '\0']);
    if ok {
        Ok(name)
    } else {
        Err(JournalError::BadName(name.to_owned()))
    }
}

/// One task's journal, written by its recorder thread.
pub struct SegmentJournal {
    dir: PathBuf,
    /// Open `.part` files by segment key, with their file names.
    open: HashMap<String, (String, File)>,
}

impl SegmentJournal {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            open: HashMap::new(),
        }
    }

    /// Makes a part of an open segment durable.
    pub fn write(&mut self, w: &JournalWrite) -> Result<(), JournalError> {
        let name = safe_name(&w.file_name)?;
        if let Some(opened) = &w.opened {
            std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
            let meta = Meta {
                key: w.key.clone(),
                file_name: w.file_name.clone(),
                playlist_key: opened.playlist_key.clone(),
                playlist_file_name: opened.playlist_file_name.clone(),
                playlist_text: opened.playlist_text.clone(),
                discontinuity: opened.discontinuity,
            };
            let path = self.dir.join(format!("{name}.json"));
            let tmp = self.dir.join(format!(".{name}.json.tmp"));
            let json = serde_json::to_vec(&meta).map_err(|e| JournalError::Unreadable {
                path: path.clone(),
                why: e.to_string(),
            })?;
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&json).map_err(io(&tmp))?;
            f.sync_data().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            let part = self.dir.join(format!("{name}.part"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&part)
                .map_err(io(&part))?;
            // The new names must survive a crash too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
            self.open.insert(w.key.clone(), (name.to_owned(), file));
        }
        let Some((_, file)) = self.open.get(&w.key) else {
            // Its first write failed: the rest cannot make a segment.
            return Ok(());
        };
        let part = self.dir.join(format!("{name}.part"));
        file.write_all_at(&w.bytes, w.offset).map_err(io(&part))?;
        file.sync_data().map_err(io(&part))
    }

    /// The segment was stored: its journal goes.
    pub fn stored(&mut self, key: &str) {
        if let Some((name, file)) = self.open.remove(key) {
            drop(file);
            for ext in ["part", "json"] {
                let _ = std::fs::remove_file(self.dir.join(format!("{name}.{ext}")));
            }
        }
    }
}

impl Drop for SegmentJournal {
    /// A recorder that ended normally stored every segment: the task's
    /// folder is empty and goes (a crash or a panic leaves it, full).
    fn drop(&mut self) {
        if self.open.is_empty() {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// A segment finished from its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredSegment {
    pub file_name: String,
    pub playlist_file_name: String,
    pub seconds: f64,
}

/// Finishes every segment journaled in `dir` (one task's) into `store`
/// and removes the journal; segments with not one whole frame are only
/// removed. Blocking.
pub fn recover(dir: &Path, store: &dyn Store) -> Result<Vec<RecoveredSegment>, JournalError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut metas: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    metas.sort();
    let mut recovered = Vec::new();
    for meta_path in metas {
        let raw = std::fs::read(&meta_path).map_err(io(&meta_path))?;
        let meta: Meta = serde_json::from_slice(&raw).map_err(|e| JournalError::Unreadable {
            path: meta_path.clone(),
            why: e.to_string(),
        })?;
        let name = safe_name(&meta.file_name)?;
        let part_path = dir.join(format!("{name}.part"));
        let part = match std::fs::read(&part_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&part_path)(e)),
        };
        if let Some(segment) = recover_segment(&part) {
            let playlist = finish_playlist(
                &meta.playlist_text,
                &meta.file_name,
                segment.seconds,
                meta.discontinuity,
            )
            .map_err(|e| JournalError::Unreadable {
                path: meta_path.clone(),
                why: e.to_string(),
            })?;
            let put = |key: &str, data: &[u8]| {
                store.put(key, data).map_err(|e| JournalError::Store {
                    key: key.to_owned(),
                    why: e.to_string(),
                })
            };
            put(&meta.key, &segment.ts)?;
            put(&meta.playlist_key, playlist.as_bytes())?;
            recovered.push(RecoveredSegment {
                file_name: meta.file_name.clone(),
                playlist_file_name: meta.playlist_file_name.clone(),
                seconds: segment.seconds,
            });
        } else if !meta.playlist_text.is_empty() {
            // The segment had just opened: nothing to add, but the run
            // ended here and its playlist must say so.
            let ended =
                end_playlist(&meta.playlist_text).map_err(|e| JournalError::Unreadable {
                    path: meta_path.clone(),
                    why: e.to_string(),
                })?;
            store
                .put(&meta.playlist_key, ended.as_bytes())
                .map_err(|e| JournalError::Store {
                    key: meta.playlist_key.clone(),
                    why: e.to_string(),
                })?;
        }
        let _ = std::fs::remove_file(&part_path);
        let _ = std::fs::remove_file(&meta_path);
    }
    let _ = std::fs::remove_dir(dir);
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::stream::JournalOpened;
    use crate::media::ts::TsMuxer;
    use crate::output::local::LocalStore;

    fn ts(frames: u64) -> Vec<u8> {
        let mut mux = TsMuxer::new(true, false);
        let mut out = Vec::new();
        mux.write_tables(&mut out);
        for n in 0..frames {
            let pts = 900_000 + n * 3000;
            let au = [0, 0, 0, 1, if n == 0 { 0x65 } else { 0x41 }, 0x88, 0x84];
            mux.write_video(&mut out, pts, pts, n == 0, &au);
        }
        out
    }

    #[test]
    fn a_journaled_segment_is_finished_into_the_store_and_the_journal_goes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("journal").join("task");
        let mut j = SegmentJournal::new(dir.clone());
        let data = ts(90);
        let half = data.len() / 2;
        let opened = JournalOpened {
            playlist_key: "t/p.m3u8".into(),
            playlist_file_name: "p.m3u8".into(),
            playlist_text: crate::hls::playlist::Playlist::new(7, None).render(),
            discontinuity: false,
        };
        j.write(&JournalWrite {
            file_name: "s1.ts".into(),
            key: "t/s1.ts".into(),
            offset: 0,
            bytes: data[..half].to_vec(),
            opened: Some(opened.clone()),
        })
        .expect("first write");
        j.write(&JournalWrite {
            file_name: "s1.ts".into(),
            key: "t/s1.ts".into(),
            offset: half as u64,
            bytes: data[half..].to_vec(),
            opened: None,
        })
        .expect("second write");
        // A second segment, stored normally: its journal goes at once.
        j.write(&JournalWrite {
            file_name: "s0.ts".into(),
            key: "t/s0.ts".into(),
            offset: 0,
            bytes: data.clone(),
            opened: Some(opened),
        })
        .expect("write");
        j.stored("t/s0.ts");
        assert!(!dir.join("s0.ts.part").exists() && !dir.join("s0.ts.json").exists());
        drop(j); // the crash

        let store = LocalStore::new(tmp.path().join("out"));
        let r = recover(&dir, &store).expect("recover");
        assert_eq!(r.len(), 1);
        assert!(
            (r[0].seconds - 89.0 / 30.0).abs() < 0.05,
            "{}",
            r[0].seconds
        );
        let pl = std::fs::read_to_string(tmp.path().join("out/t/p.m3u8")).expect("playlist");
        let p = crate::hls::playlist::Playlist::parse(&pl).expect("parse");
        assert!(p.ended && p.segments[0].file_name == "s1.ts");
        assert!(tmp.path().join("out/t/s1.ts").exists());
        assert!(!dir.exists(), "the journal is gone");
        assert!(recover(&dir, &store).expect("again").is_empty());
    }

    /// A crash right after a segment opened: not one whole frame to keep,
    /// but the run ended there, so its playlist is ended as it stood.
    #[test]
    fn a_segment_without_a_whole_frame_still_ends_its_playlist() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("journal").join("task");
        let mut before = crate::hls::playlist::Playlist::new(2, None);
        before.push(crate::hls::playlist::Segment {
            file_name: "s0.ts".into(),
            duration_seconds: 2.0,
            discontinuity: false,
        });
        let mut j = SegmentJournal::new(dir.clone());
        j.write(&JournalWrite {
            file_name: "s1.ts".into(),
            key: "t/s1.ts".into(),
            offset: 0,
            bytes: ts(0),
            opened: Some(JournalOpened {
                playlist_key: "t/p.m3u8".into(),
                playlist_file_name: "p.m3u8".into(),
                playlist_text: before.render(),
                discontinuity: false,
            }),
        })
        .expect("write");
        drop(j); // the crash
        let store = LocalStore::new(tmp.path().join("out"));
        assert!(recover(&dir, &store).expect("recover").is_empty());
        let pl = std::fs::read_to_string(tmp.path().join("out/t/p.m3u8")).expect("playlist");
        let p = crate::hls::playlist::Playlist::parse(&pl).expect("parse");
        assert!(p.ended, "{pl}");
        assert_eq!(p.segments.len(), 1);
        assert!(!tmp.path().join("out/t/s1.ts").exists());
        assert!(!dir.exists());
    }

    #[test]
    fn names_that_are_not_one_path_component_are_refused() {
        for bad in ["", "../x.ts", "a/b.ts", ".hidden"] {
            assert!(safe_name(bad).is_err(), "{bad}");
        }
        assert!(safe_name("1400_7__UserId_s_YQ..__UserId_e_main_video_20260101.ts").is_ok());
    }
}
