//! Reading a recording folder for `kiroku merge`: which files are
//! single-stream segments (spec §3a names, `ha<n>_` generations
//! included), when each starts (its `<UTC>`) and how long it lasts (its
//! playlist's `#EXTINF`, or the segment's own timestamps when no playlist
//! names it). Files that cannot be used are reported, not fatal.

use std::collections::HashMap;
use std::path::Path;

use super::plan::SegmentFile;
use crate::hls::naming::{parse_user_stream, parse_utc17, Media, TrackType};
use crate::hls::playlist::Playlist;
use crate::media::ts_demux::demux_segment;

const TS_PACKET: u64 = 188;

/// What a segment's name says, or `None` for any other file.
pub fn parse_segment_name(name: &str) -> Option<(String, Media, TrackType, u64)> {
    let stem = name.strip_suffix(".ts")?;
    let at = stem.find("__UserId_s_")?;
    let (user, media, track, tail) = parse_user_stream(&stem[at..])?;
    let start_ms = parse_utc17(tail.strip_prefix('_')?)?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_owned(), media, track, start_ms))
}

/// The folder's usable segments and what was wrong with the rest.
#[derive(Debug, Default)]
pub struct Scan {
    pub segments: Vec<SegmentFile>,
    pub warnings: Vec<String>,
}

/// Lists `dir` (not recursive). `Err` only when the folder cannot be read.
pub fn scan(dir: &Path) -> std::io::Result<Scan> {
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    let mut out = Scan::default();
    // Durations from every playlist that names a segment.
    let mut durations: HashMap<String, u64> = HashMap::new();
    for name in names.iter().filter(|n| n.ends_with(".m3u8")) {
        let text = match std::fs::read_to_string(dir.join(name)) {
            Ok(t) => t,
            Err(e) => {
                out.warnings.push(format!("{name}: unreadable playlist ({e}); its segments are timed from their own timestamps"));
                continue;
            }
        };
        match Playlist::parse(&text) {
            Ok(p) => {
                for s in p.segments {
                    durations.insert(s.file_name, (s.duration_seconds * 1000.0).round() as u64);
                }
            }
            Err(e) => out.warnings.push(format!(
                "{name}: not a usable playlist ({e}); its segments are timed from their own timestamps"
            )),
        }
    }
    for name in &names {
        let Some((user, media, track, start_ms)) = parse_segment_name(name) else {
            continue;
        };
        let path = dir.join(name);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) => {
                out.warnings
                    .push(format!("{name}: skipped, unreadable ({e})"));
                continue;
            }
        };
        if len == 0 || len % TS_PACKET != 0 {
            out.warnings.push(format!(
                "{name}: skipped, truncated ({len} bytes is not a whole number of TS packets)"
            ));
            continue;
        }
        let duration_ms = match durations.get(name) {
            Some(&d) => d,
            None => match probe_duration_ms(&path) {
                Ok(d) => d,
                Err(why) => {
                    out.warnings.push(format!("{name}: skipped, {why}"));
                    continue;
                }
            },
        };
        out.segments.push(SegmentFile {
            name: name.clone(),
            user,
            media,
            track,
            start_ms,
            duration_ms,
        });
    }
    Ok(out)
}

/// A segment's duration from its timestamps: first to last, plus one
/// frame (the frame interval seen, or an AAC frame at 48 kHz).
fn probe_duration_ms(path: &Path) -> Result<u64, String> {
    let data = std::fs::read(path).map_err(|e| format!("unreadable ({e})"))?;
    let (units, _) = demux_segment(&data);
    let mut span = 0u64;
    for video in [true, false] {
        let mut pts: Vec<u64> = units
            .iter()
            .filter(|u| u.video == video)
            .map(|u| u.pts)
            .collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_unstable();
        let (first, last) = (pts[0], pts[pts.len() - 1]);
        let frame = if video && pts.len() > 1 {
            (last - first) / (pts.len() as u64 - 1)
        } else {
            1920
        };
        span = span.max(last - first + frame);
    }
    if units.is_empty() {
        return Err("no audio or video in it".into());
    }
    Ok(span / 90)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        let n = "1400000001_12__UserId_s_YW15__UserId_e_main_video_20261121141635031.ts";
        let (user, media, track, start) = parse_segment_name(n).expect("parses");
        assert_eq!(
            (user.as_str(), media, track),
            ("YW15", Media::Main, TrackType::Video)
        );
        assert_eq!(start, parse_utc17("20261121141635031").expect("utc"));
        let ha = "ha2_1400000001_cm9vbQ..__UserId_s_YW15__UserId_e_aux_av_20261121141635031.ts";
        assert_eq!(
            parse_segment_name(ha).map(|p| (p.1, p.2)),
            Some((Media::Aux, TrackType::AudioVideo))
        );
        for bad in [
            "1400000001_12.m3u8",
            "1400000001_12_20261121141635031.ts",
            "x__UserId_s_YW15__UserId_e_main_video.ts",
            "x__UserId_s_YW15__UserId_e_side_video_20261121141635031.ts",
            "x__UserId_s___UserId_e_main_video_20261121141635031.ts",
            "x__UserId_s_YW15__UserId_e_main_video_2026112114163503.ts",
            "x__UserId_s_YW15__UserId_e_main_video_20261121141635031_1.ts",
        ] {
            assert!(parse_segment_name(bad).is_none(), "{bad}");
        }
    }
}
