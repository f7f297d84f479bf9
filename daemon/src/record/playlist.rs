//! HLS media playlists with the TRTC tags of spec §3a.
//!
//! Written here rather than with `m3u8-rs`: the format we emit is a dozen
//! fixed lines whose exact spelling is the contract (`#EXT-X-TRTC-*` tags,
//! tag order, `%.3f` durations), and a generic writer would have to be
//! bent into producing them anyway. Pure: the caller writes the text out.
//!
//! ```text
//! #EXTM3U
//! #EXT-X-VERSION:3
//! #EXT-X-ALLOW-CACHE:NO
//! #EXT-X-MEDIA-SEQUENCE:0
//! #EXT-X-TARGETDURATION:70
//! #EXT-X-TRTC-START-REC-TIME:1622425551884
//! #EXT-X-TRTC-VIDEO-METADATA:WIDTH:1920 HEIGHT:1080
//! #EXTINF:12.074
//! <segment>.ts
//! #EXT-X-ENDLIST
//! ```
//!
//! `#EXT-X-TARGETDURATION` is the longest segment rounded up, so every
//! `#EXTINF` rounded to the nearest integer is ≤ it (RFC 8216 §4.3.3.1).
//! A publisher who leaves and returns continues after
//! `#EXT-X-DISCONTINUITY`.

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub file_name: String,
    pub duration_seconds: f64,
    /// A `#EXT-X-DISCONTINUITY` precedes this segment.
    pub discontinuity: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Playlist {
    /// `#EXT-X-TRTC-START-REC-TIME`: server Unix ms of the first media.
    pub start_rec_time_ms: u64,
    /// `#EXT-X-TRTC-VIDEO-METADATA`, for video playlists.
    pub video_size: Option<(u32, u32)>,
    pub segments: Vec<Segment>,
    /// `#EXT-X-ENDLIST`: the stream ended.
    pub ended: bool,
}

impl Playlist {
    pub fn new(start_rec_time_ms: u64, video_size: Option<(u32, u32)>) -> Self {
        Self {
            start_rec_time_ms,
            video_size,
            segments: Vec::new(),
            ended: false,
        }
    }

    pub fn push(&mut self, segment: Segment) {
        self.segments.push(segment);
    }

    pub fn target_duration(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.duration_seconds.max(0.0).ceil() as u64)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    pub fn total_seconds(&self) -> f64 {
        self.segments.iter().map(|s| s.duration_seconds).sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(256 + self.segments.len() * 96);
        let _ = writeln!(out, "#EXTM3U");
        let _ = writeln!(out, "#EXT-X-VERSION:3");
        let _ = writeln!(out, "#EXT-X-ALLOW-CACHE:NO");
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:0");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_duration());
        let _ = writeln!(out, "#EXT-X-TRTC-START-REC-TIME:{}", self.start_rec_time_ms);
        if let Some((w, h)) = self.video_size {
            let _ = writeln!(out, "#EXT-X-TRTC-VIDEO-METADATA:WIDTH:{w} HEIGHT:{h}");
        }
        for s in &self.segments {
            if s.discontinuity {
                let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
            }
            let _ = writeln!(out, "#EXTINF:{:.3}", s.duration_seconds);
            let _ = writeln!(out, "{}", s.file_name);
        }
        if self.ended {
            let _ = writeln!(out, "#EXT-X-ENDLIST");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_byte_for_byte() {
        let mut p = Playlist::new(1_622_425_551_884, Some((1920, 1080)));
        p.push(Segment {
            file_name:
                "1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_video_20330531094551825.ts"
                    .into(),
            duration_seconds: 12.074,
            discontinuity: false,
        });
        p.push(Segment {
            file_name:
                "1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_video_20330531094603825.ts"
                    .into(),
            duration_seconds: 11.901,
            discontinuity: false,
        });
        p.ended = true;
        let expected = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-ALLOW-CACHE:NO\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:13\n\
#EXT-X-TRTC-START-REC-TIME:1622425551884\n#EXT-X-TRTC-VIDEO-METADATA:WIDTH:1920 HEIGHT:1080\n\
#EXTINF:12.074\n1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_video_20330531094551825.ts\n\
#EXTINF:11.901\n1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_video_20330531094603825.ts\n#EXT-X-ENDLIST\n";
        assert_eq!(p.render(), expected);
    }

    #[test]
    fn target_duration_covers_every_rounded_extinf_and_audio_has_no_video_tag() {
        let mut p = Playlist::new(1, None);
        assert_eq!(p.target_duration(), 1);
        for d in [4.0, 6.5, 5.999] {
            p.push(Segment {
                file_name: "a.ts".into(),
                duration_seconds: d,
                discontinuity: false,
            });
        }
        p.push(Segment {
            file_name: "b.ts".into(),
            duration_seconds: 2.0,
            discontinuity: true,
        });
        assert_eq!(p.target_duration(), 7);
        assert!(p
            .segments
            .iter()
            .all(|s| (s.duration_seconds.round() as u64) <= p.target_duration()));
        let text = p.render();
        assert!(!text.contains("VIDEO-METADATA"));
        assert!(text.contains("#EXT-X-DISCONTINUITY\n#EXTINF:2.000\nb.ts\n"));
        assert!(!text.contains("ENDLIST"), "open playlists have no end");
        assert!((p.total_seconds() - 18.499).abs() < 1e-9);
    }
}
