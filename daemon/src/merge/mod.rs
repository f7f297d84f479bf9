//! `kiroku merge`: the `TRTC_Merge.py` equivalent (spec §8). Turns a folder
//! of single-stream recordings (kiroku's, or any laid out by spec §3a) into
//! one playable file per user and section, written into the same folder.
//!
//! - [`scan`] reads the folder (names, playlists, durations; unusable
//!   files become warnings);
//! - [`plan`] decides the outputs (pure: sections, names, timelines, and
//!   whether video must be re-encoded);
//! - [`build`] makes each output (remux, re-timed remux or re-encode, all
//!   through the MP4 packer);
//! - [`run`] ties them together and writes the files atomically, never
//!   over an existing file unless asked.

pub mod build;
pub mod plan;
pub mod scan;

use std::path::{Path, PathBuf};

use crate::output::Content;

pub use build::VideoSettings;
pub use plan::AvChoice;
use plan::{Method, PlanOptions};

/// `-p` without a value, and its range (spec §8).
pub const DEFAULT_FPS: u32 = 15;
pub const MIN_FPS: u32 = 5;
pub const MAX_FPS: u32 = 120;

/// The command line, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOptions {
    pub dir: PathBuf,
    /// `-m 1`.
    pub merge_user: bool,
    /// `-s`.
    pub drop_gaps: bool,
    pub av: AvChoice,
    /// `-p`, clamped to 5..=120; `None` keeps the recorded rate when no
    /// re-encode is needed (15 when one is).
    pub fps: Option<u32>,
    /// `-r W H`.
    pub size: Option<(u32, u32)>,
    pub overwrite: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    #[error("cannot read the folder {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nothing to merge in {0}: no single-stream recording segments (<SdkAppId>_<RoomId>__UserId_s_<UserId>__UserId_e_<MediaId>_<Type>_<UTC>.ts)")]
    NothingToMerge(PathBuf),
    #[error("{} already exist(s): {}; pass --overwrite to replace", .0.len(), .0.join(", "))]
    Exists(Vec<String>),
    #[error("-r {0} {1}: width and height must be 16..=4096")]
    BadSize(u32, u32),
}

/// One output written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MergedFile {
    pub file: String,
    /// Decoded.
    pub user_id: String,
    pub start_ms: u64,
    pub duration_ms: u64,
    pub video: bool,
    /// `remux` or `re-encode`.
    pub method: &'static str,
    /// Why, in words (what was done to the samples).
    pub detail: &'static str,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct MergeReport {
    pub outputs: Vec<MergedFile>,
    /// (file, why) of outputs that could not be made.
    pub failed: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// What the terminal shows while outputs are made.
pub trait Progress {
    fn start(&mut self, file: &str, user_id: &str, total_ms: u64);
    fn advance(&mut self, done_ms: u64);
    fn finish(&mut self);
}

/// No progress display (tests, non-terminals).
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: &str, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// Merges `options.dir`.
pub fn run(options: &MergeOptions, progress: &mut dyn Progress) -> Result<MergeReport, MergeError> {
    if let Some((w, h)) = options.size {
        if !(16..=4096).contains(&w) || !(16..=4096).contains(&h) {
            return Err(MergeError::BadSize(w, h));
        }
    }
    let scanned = scan::scan(&options.dir).map_err(|source| MergeError::Folder {
        path: options.dir.clone(),
        source,
    })?;
    let plan_options = PlanOptions {
        merge_user: options.merge_user,
        drop_gaps: options.drop_gaps,
        av: options.av,
        reencode_video: options.fps.is_some() || options.size.is_some(),
    };
    let outputs = plan::plan(&scanned.segments, &plan_options);
    if outputs.is_empty() {
        return Err(MergeError::NothingToMerge(options.dir.clone()));
    }
    if !options.overwrite {
        let existing: Vec<String> = outputs
            .iter()
            .filter(|o| options.dir.join(&o.file_name).exists())
            .map(|o| o.file_name.clone())
            .collect();
        if !existing.is_empty() {
            return Err(MergeError::Exists(existing));
        }
    }
    let video = VideoSettings {
        fps: options
            .fps
            .map_or(DEFAULT_FPS, |f| f.clamp(MIN_FPS, MAX_FPS)),
        size: options.size,
    };
    let mut report = MergeReport {
        warnings: scanned.warnings,
        ..MergeReport::default()
    };
    let scratch = Scratch::create(&options.dir).map_err(|source| MergeError::Folder {
        path: options.dir.clone(),
        source,
    })?;
    for output in &outputs {
        let gap = output.longest_gap_ms();
        if output.fills_gaps() && gap > plan::MAX_FILLED_GAP_MS {
            report.failed.push((
                output.file_name.clone(),
                format!(
                    "a gap of {:.1} h between its recordings is longer than the {} h kiroku merge fills with black and silence: pass -s to drop gaps",
                    gap as f64 / 3_600_000.0,
                    plan::MAX_FILLED_GAP_MS / 3_600_000
                ),
            ));
            continue;
        }
        let user_id =
            crate::hls::naming::decode_id(&output.user).unwrap_or_else(|| output.user.clone());
        progress.start(&output.file_name, &user_id, output.duration_ms);
        let built = build::build(
            &options.dir,
            &scratch.0,
            &scanned.segments,
            output,
            &video,
            &mut |done| progress.advance(done),
        );
        progress.finish();
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                report
                    .failed
                    .push((output.file_name.clone(), e.to_string()));
                continue;
            }
        };
        for w in &built.warnings {
            report.warnings.push(format!("{}: {w}", output.file_name));
        }
        if let Err(e) = write_atomically(&options.dir, &output.file_name, built.file.content()) {
            report
                .failed
                .push((output.file_name.clone(), format!("writing: {e}")));
            continue;
        }
        let (method, detail) = match output.method {
            Method::Remux { exact: true } => ("remux", "samples as recorded"),
            Method::Remux { exact: false } if output.fills_gaps() => {
                ("remux", "samples as recorded, silence in the gaps")
            }
            Method::Remux { exact: false } => ("remux", "samples as recorded, re-timed"),
            Method::Reencode { fill: true } => (
                "re-encode",
                "video re-encoded to fill the gaps with black (audio: silence)",
            ),
            Method::Reencode { fill: false } => ("re-encode", "video re-encoded for -p/-r"),
        };
        report.outputs.push(MergedFile {
            file: output.file_name.clone(),
            user_id,
            start_ms: output.start_ms,
            duration_ms: built.duration_ms,
            video: output.video,
            method,
            detail,
        });
    }
    Ok(report)
}

/// A folder of our own inside the output folder (so that spilled payloads
/// are on the same disk as the outputs), removed with what is in it when
/// the merge ends. Created exclusively under a random name: the output
/// folder may be shared, and a link planted there is never followed.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn create(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let path = dir.join(format!(".kiroku-merge-{:016x}", rand::random::<u64>()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `<dir>/.<name>.part`, synced, renamed into place. The output folder may
/// be shared: whatever stands at the temporary name (a link planted to a
/// file of kiroku's user) is removed, not followed, and the file is
/// created exclusively (`O_EXCL`, which refuses to follow a link that
/// appears in between).
fn write_atomically(dir: &Path, name: &str, content: Content<'_>) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.part"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        content.write_to(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link planted at the temporary name is replaced, not written
    /// through: the file it points at is untouched.
    #[test]
    fn a_planted_link_at_the_temporary_name_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("kiroku-merge-part-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join(".out.mp4.part")).expect("link");
        write_atomically(&dir, "out.mp4", Content::bytes(b"merged")).expect("write");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        assert_eq!(std::fs::read(dir.join("out.mp4")).expect("read"), b"merged");
        assert!(!dir.join(".out.mp4.part").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
