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
//!
//! [`Playlist::parse`] reads this back (the MP4 conversion, the merge
//! tool), and also plain HLS media playlists from elsewhere: unknown tags
//! and comments are ignored, a missing or malformed TRTC tag reads as
//! absent (start time 0, no video size), CRLF line ends are fine. What is
//! refused: text without `#EXTM3U`, an `#EXTINF` that is not a duration,
//! a segment URI without `#EXTINF` (a master playlist's variant URIs, for
//! one) and an `#EXTINF` followed by another one. An `#EXTINF` on the last
//! line without its URI (a cut-off file) is dropped.

use std::fmt::Write;

use crate::hls::naming::{segment_name, Utc17};

/// Why a text is not a media playlist [`Playlist::parse`] can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaylistParseError {
    #[error("not an HLS playlist: the first line is not #EXTM3U")]
    NotAPlaylist,
    #[error("line {line}: #EXTINF is not a duration: {text:?}")]
    BadExtinf { line: usize, text: String },
    #[error("line {line}: segment {uri:?} has no #EXTINF")]
    MissingExtinf { line: usize, uri: String },
    #[error("line {line}: #EXTINF without a segment URI")]
    DanglingExtinf { line: usize },
}

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

    /// Reads a media playlist: what [`Playlist::render`] writes, or HLS
    /// from elsewhere (see the module doc for what is tolerated).
    pub fn parse(text: &str) -> Result<Playlist, PlaylistParseError> {
        let mut lines = text
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty());
        match lines.next() {
            Some((_, first)) if first.trim_start_matches('\u{feff}') == "#EXTM3U" => {}
            _ => return Err(PlaylistParseError::NotAPlaylist),
        }
        let mut playlist = Playlist::new(0, None);
        // The pending #EXTINF (its line and duration) and discontinuity.
        let mut extinf: Option<(usize, f64)> = None;
        let mut discontinuity = false;
        for (line, l) in lines {
            if let Some(tag) = l.strip_prefix('#') {
                let (name, value) = tag.split_once(':').unwrap_or((tag, ""));
                match name {
                    "EXTINF" => {
                        if let Some((line, _)) = extinf {
                            return Err(PlaylistParseError::DanglingExtinf { line });
                        }
                        let seconds = value.split(',').next().unwrap_or("").trim();
                        match seconds.parse::<f64>() {
                            Ok(d) if d.is_finite() && d >= 0.0 => extinf = Some((line, d)),
                            _ => {
                                return Err(PlaylistParseError::BadExtinf {
                                    line,
                                    text: value.to_owned(),
                                })
                            }
                        }
                    }
                    "EXT-X-DISCONTINUITY" => discontinuity = true,
                    "EXT-X-ENDLIST" => {
                        if let Some((line, _)) = extinf {
                            return Err(PlaylistParseError::DanglingExtinf { line });
                        }
                        playlist.ended = true;
                    }
                    "EXT-X-TRTC-START-REC-TIME" => {
                        playlist.start_rec_time_ms = value.trim().parse().unwrap_or(0);
                    }
                    "EXT-X-TRTC-VIDEO-METADATA" => playlist.video_size = parse_video_size(value),
                    // Other tags (and `#` comments) say nothing we use.
                    _ => {}
                }
                continue;
            }
            let Some((_, duration_seconds)) = extinf.take() else {
                return Err(PlaylistParseError::MissingExtinf {
                    line,
                    uri: l.to_owned(),
                });
            };
            playlist.push(Segment {
                file_name: l.to_owned(),
                duration_seconds,
                discontinuity: std::mem::take(&mut discontinuity),
            });
        }
        Ok(playlist)
    }

    pub fn render(&self) -> String {
        self.render_as(self.ended)
    }

    /// The text as if the playlist had (or had not) ended, without copying
    /// its segments.
    pub fn render_as(&self, ended: bool) -> String {
        write_playlist(
            Header {
                start_rec_time_ms: self.start_rec_time_ms,
                video_size: self.video_size,
                target_duration: self.target_duration(),
                segments: self.segments.len(),
            },
            self.segments
                .iter()
                .map(|s| (&s.file_name, s.duration_seconds, s.discontinuity)),
            ended,
        )
    }
}

/// The playlist a recorder writes while it records.
///
/// Its segments are named `<playlist name without .m3u8>_<UTC17>.ts`
/// (naming.rs), so each entry keeps its start instead of its name: 24
/// bytes a segment where a [`Playlist`] entry with its name takes about
/// 150. The entries live as long as the stream does (the whole playlist is
/// rewritten at every cut), which made them most of what a long recording's
/// memory grew by.
#[derive(Debug, Clone, PartialEq)]
pub struct StampedPlaylist {
    /// `#EXT-X-TRTC-START-REC-TIME`: server Unix ms of the first media.
    pub start_rec_time_ms: u64,
    /// `#EXT-X-TRTC-VIDEO-METADATA`, for video playlists.
    pub video_size: Option<(u32, u32)>,
    /// `#EXT-X-ENDLIST`: the stream ended.
    pub ended: bool,
    base: String,
    segments: Vec<StampedSegment>,
    target_duration: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct StampedSegment {
    start_ms: u64,
    duration_seconds: f64,
    discontinuity: bool,
}

impl StampedPlaylist {
    /// `playlist_name` is the `.m3u8` file's name; its segments' names
    /// start with it, less the extension.
    pub fn new(
        playlist_name: &str,
        start_rec_time_ms: u64,
        video_size: Option<(u32, u32)>,
    ) -> Self {
        Self {
            start_rec_time_ms,
            video_size,
            ended: false,
            base: playlist_name
                .strip_suffix(".m3u8")
                .unwrap_or(playlist_name)
                .to_owned(),
            segments: Vec::new(),
            target_duration: 1,
        }
    }

    /// The name of this playlist's segment that starts at `start_ms`.
    pub fn segment_name(&self, start_ms: u64) -> String {
        segment_name(&self.base, start_ms)
    }

    pub fn push(&mut self, start_ms: u64, duration_seconds: f64, discontinuity: bool) {
        self.target_duration = self
            .target_duration
            .max(duration_seconds.max(0.0).ceil() as u64);
        self.segments.push(StampedSegment {
            start_ms,
            duration_seconds,
            discontinuity,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn render(&self) -> String {
        self.render_as(self.ended)
    }

    /// As [`Playlist::render_as`]: the journal records the open playlist
    /// at every segment's first frame.
    pub fn render_as(&self, ended: bool) -> String {
        write_playlist(
            Header {
                start_rec_time_ms: self.start_rec_time_ms,
                video_size: self.video_size,
                target_duration: self.target_duration,
                segments: self.segments.len(),
            },
            self.segments.iter().map(|s| {
                (
                    SegmentName(&self.base, s.start_ms),
                    s.duration_seconds,
                    s.discontinuity,
                )
            }),
            ended,
        )
    }
}

/// `<base>_<UTC17>.ts`, written without an intermediate string.
struct SegmentName<'a>(&'a str, u64);

impl std::fmt::Display for SegmentName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}.ts", self.0, Utc17(self.1))
    }
}

struct Header {
    start_rec_time_ms: u64,
    video_size: Option<(u32, u32)>,
    target_duration: u64,
    segments: usize,
}

/// The one writer of the playlist text, for both representations.
fn write_playlist<N: std::fmt::Display>(
    header: Header,
    segments: impl Iterator<Item = (N, f64, bool)>,
    ended: bool,
) -> String {
    let mut out = String::with_capacity(256 + header.segments.saturating_mul(96));
    let _ = writeln!(out, "#EXTM3U");
    let _ = writeln!(out, "#EXT-X-VERSION:3");
    let _ = writeln!(out, "#EXT-X-ALLOW-CACHE:NO");
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:0");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", header.target_duration);
    let _ = writeln!(
        out,
        "#EXT-X-TRTC-START-REC-TIME:{}",
        header.start_rec_time_ms
    );
    if let Some((w, h)) = header.video_size {
        let _ = writeln!(out, "#EXT-X-TRTC-VIDEO-METADATA:WIDTH:{w} HEIGHT:{h}");
    }
    for (name, duration_seconds, discontinuity) in segments {
        if discontinuity {
            let _ = writeln!(out, "#EXT-X-DISCONTINUITY");
        }
        let _ = writeln!(out, "#EXTINF:{duration_seconds:.3}");
        let _ = writeln!(out, "{name}");
    }
    if ended {
        let _ = writeln!(out, "#EXT-X-ENDLIST");
    }
    out
}

/// `WIDTH:1920 HEIGHT:1080`.
fn parse_video_size(value: &str) -> Option<(u32, u32)> {
    let (mut w, mut h) = (None, None);
    for field in value.split_whitespace() {
        match field.split_once(':') {
            Some(("WIDTH", v)) => w = v.parse().ok(),
            Some(("HEIGHT", v)) => h = v.parse().ok(),
            _ => {}
        }
    }
    Some((w?, h?))
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
        let open = expected.strip_suffix("#EXT-X-ENDLIST\n").expect("ended");
        assert_eq!(p.render_as(false), open);
        p.ended = false;
        assert_eq!(p.render(), open);
        assert_eq!(p.render_as(true), expected);
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

    fn seg(name: &str, d: f64, discontinuity: bool) -> Segment {
        Segment {
            file_name: name.into(),
            duration_seconds: d,
            discontinuity,
        }
    }

    #[test]
    fn parse_reads_back_what_render_writes() {
        let mut p = Playlist::new(1_622_425_551_884, Some((1920, 1080)));
        p.push(seg("a_20330531094551825.ts", 12.074, false));
        p.push(seg("a_20330531094603825.ts", 11.901, false));
        p.push(seg("a_20330531094703825.ts", 4.0, true));
        p.ended = true;
        assert_eq!(Playlist::parse(&p.render()), Ok(p.clone()));
        // Open (no ENDLIST), audio (no video size), a discontinuity first.
        let mut open = Playlist::new(7, None);
        open.push(seg("b.ts", 0.021, true));
        open.push(seg("c.ts", 2.0, false));
        let back = Playlist::parse(&open.render()).expect("parses");
        assert_eq!(back, open);
        assert!(!back.ended);
        // An empty playlist is still a playlist.
        assert_eq!(
            Playlist::parse(&Playlist::new(1, None).render()),
            Ok(Playlist::new(1, None))
        );
    }

    #[test]
    fn parse_tolerates_hls_from_elsewhere() {
        let text = "\u{feff}#EXTM3U\r\n#EXT-X-VERSION:3\r\n#EXT-X-TARGETDURATION:6\r\n\r\n\
# a comment\r\n#EXT-X-PROGRAM-DATE-TIME:2033-05-31T09:45:51Z\r\n#EXTINF:5.5,\r\nseg0.ts\r\n\
#EXT-X-DISCONTINUITY\r\n#EXTINF:6,title here\r\n  seg1.ts  \r\n#EXT-X-ENDLIST\r\n";
        let p = Playlist::parse(text).expect("parses");
        assert_eq!(p.start_rec_time_ms, 0);
        assert_eq!(p.video_size, None);
        assert!(p.ended);
        assert_eq!(
            p.segments,
            [seg("seg0.ts", 5.5, false), seg("seg1.ts", 6.0, true)]
        );
        // Malformed TRTC tags read as absent; a dangling last EXTINF is dropped.
        let p = Playlist::parse(
            "#EXTM3U\n#EXT-X-TRTC-START-REC-TIME:soon\n#EXT-X-TRTC-VIDEO-METADATA:WIDTH:x HEIGHT:2\n\
#EXTINF:1.000\na.ts\n#EXTINF:2.000\n",
        )
        .expect("parses");
        assert_eq!((p.start_rec_time_ms, p.video_size), (0, None));
        assert_eq!(p.segments, [seg("a.ts", 1.0, false)]);
    }

    #[test]
    fn parse_refuses_garbage() {
        use PlaylistParseError as E;
        for text in ["", "\n\n", "hello", "a.ts\n#EXTM3U\n", "\u{0}\u{1}binary"] {
            assert_eq!(Playlist::parse(text), Err(E::NotAPlaylist), "{text:?}");
        }
        assert_eq!(
            Playlist::parse("#EXTM3U\n#EXTINF:abc\na.ts\n"),
            Err(E::BadExtinf {
                line: 2,
                text: "abc".into()
            })
        );
        assert!(matches!(
            Playlist::parse("#EXTM3U\n#EXTINF:-1\na.ts\n"),
            Err(E::BadExtinf { line: 2, .. })
        ));
        assert!(matches!(
            Playlist::parse("#EXTM3U\n#EXTINF:NaN\na.ts\n"),
            Err(E::BadExtinf { .. })
        ));
        // A master playlist: variant URIs have no EXTINF.
        assert_eq!(
            Playlist::parse("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n"),
            Err(E::MissingExtinf {
                line: 3,
                uri: "v.m3u8".into()
            })
        );
        assert_eq!(
            Playlist::parse("#EXTM3U\n#EXTINF:1\n#EXTINF:2\nb.ts\n"),
            Err(E::DanglingExtinf { line: 2 })
        );
        assert_eq!(
            Playlist::parse("#EXTM3U\n#EXTINF:1\n#EXT-X-ENDLIST\n"),
            Err(E::DanglingExtinf { line: 2 })
        );
    }

    #[test]
    fn a_stamped_playlist_writes_what_a_named_one_does() {
        use crate::domain::params::RoomId;
        use crate::hls::naming::{Media, Naming, TrackType};
        use std::time::{Duration, UNIX_EPOCH};

        let naming = Naming::new(
            &["p".into()],
            "task",
            1400000001,
            &RoomId::Str("r 1".into()),
            1,
        );
        for (playlist_name, name_of) in [
            (
                naming.single_playlist("alice", Media::Main, TrackType::AudioVideo),
                Box::new(|ms: u64| {
                    let t = UNIX_EPOCH + Duration::from_millis(ms);
                    naming.single_segment("alice", Media::Main, TrackType::AudioVideo, t)
                }) as Box<dyn Fn(u64) -> String>,
            ),
            (
                naming.mixed_playlist(),
                Box::new(|ms: u64| naming.mixed_segment(UNIX_EPOCH + Duration::from_millis(ms))),
            ),
        ] {
            let starts = [1_622_425_551_884u64, 1_622_425_561_884, 1_622_425_599_001];
            let mut named = Playlist::new(starts[0], Some((640, 360)));
            let mut stamped = StampedPlaylist::new(&playlist_name, starts[0], Some((640, 360)));
            for (i, (&start, seconds)) in starts.iter().zip([10.0, 12.074, 0.5]).enumerate() {
                assert_eq!(stamped.segment_name(start), name_of(start));
                named.push(seg(&name_of(start), seconds, i == 2));
                stamped.push(start, seconds, i == 2);
            }
            assert_eq!(stamped.len(), 3);
            assert_eq!(stamped.render_as(false), named.render_as(false));
            named.ended = true;
            stamped.ended = true;
            assert_eq!(stamped.render(), named.render());
            assert!(stamped.render().contains("#EXT-X-TARGETDURATION:13\n"));
            assert_eq!(Playlist::parse(&stamped.render()).expect("parses"), named);
        }
        // The point of it: an entry is a fixed 24 bytes, with no name on the heap.
        assert!(std::mem::size_of::<StampedSegment>() <= 24);
    }
}
