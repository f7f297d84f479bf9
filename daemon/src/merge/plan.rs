//! What `kiroku merge` makes of a folder of single-stream recordings, as a
//! pure function of the segment files found (spec §8).
//!
//! - **Streams per user** (`-a`): audio always (the `audio` segments and
//!   the audio of merged `av` ones); video: `-a 0` main, `-a 1` main if the
//!   user has any main video else aux, `-a 2` aux.
//! - **Sections**: the chosen segments of a user in start order; a new
//!   section starts where a segment starts more than 15 s after everything
//!   before it ended (streams not chosen, e.g. aux under `-a 0`, do not
//!   bridge or split sections).
//! - **Outputs**: `-m 0` one per section, `-m 1` one per user;
//!   `<UserId>_<timestamp>_av.mp4` with video, `<UserId>_<timestamp>.m4a`
//!   without, `<UserId>` encoded as in the recording's names, `<timestamp>`
//!   the Unix ms start of the output's first segment.
//! - **Timeline**: each section is placed on the output's timeline at its
//!   wall-clock offset from the output's start (`-m 1` fills the gaps), or
//!   right after the previous section (`-m 1 -s` drops them).
//! - **Method**: video is re-encoded only when `-p`/`-r` ask for it or
//!   when a gap must be filled with black; otherwise samples are remuxed
//!   as recorded (an audio-only gap is filled with silent AAC frames,
//!   which needs no re-encoding of the audio around it).

use std::collections::BTreeMap;

use crate::hls::naming::{Media, TrackType};

/// A new section starts after a gap longer than this (spec §8).
pub const SECTION_GAP_MS: u64 = 15_000;

/// One segment file of the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub name: String,
    /// The encoded UserId, as in the name.
    pub user: String,
    pub media: Media,
    /// The `<Type>` of its name.
    pub track: TrackType,
    /// Unix ms, from the `<UTC>` of the name.
    pub start_ms: u64,
    pub duration_ms: u64,
}

impl SegmentFile {
    fn end_ms(&self) -> u64 {
        self.start_ms + self.duration_ms
    }
}

/// `-a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvChoice {
    Main,
    Auto,
    Aux,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// `-m 1`.
    pub merge_user: bool,
    /// `-s`.
    pub drop_gaps: bool,
    pub av: AvChoice,
    /// `-p` or `-r` given: video must be re-encoded.
    pub reencode_video: bool,
}

/// Which streams of a segment an output takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub audio: bool,
    pub video: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSegment {
    /// Index into the input.
    pub index: usize,
    pub take: Take,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Where the section starts on the output's timeline (ms from its start).
    pub output_offset_ms: u64,
    /// In start order.
    pub segments: Vec<PlannedSegment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Samples as recorded (`exact`: the segment files go to the packer
    /// untouched; else they are re-timed, and audio gaps get silence).
    Remux { exact: bool },
    /// Video decoded and encoded again: `-p`/`-r`, or black to fill gaps.
    Reencode { fill: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOutput {
    /// The encoded UserId.
    pub user: String,
    pub file_name: String,
    pub start_ms: u64,
    pub duration_ms: u64,
    pub video: bool,
    pub sections: Vec<Section>,
    pub method: Method,
}

/// The longest gap `kiroku merge` fills with black and silence (6 h): a
/// longer one (two recordings years apart, by name) would take that long to
/// encode and that much disk; `-s` drops gaps instead.
pub const MAX_FILLED_GAP_MS: u64 = 6 * 3600 * 1000;

impl PlannedOutput {
    /// The longest gap between two sections on the output's timeline.
    pub fn longest_gap_ms(&self) -> u64 {
        self.sections
            .windows(2)
            .map(|w| {
                let end = w[0]
                    .output_offset_ms
                    .saturating_add(w[0].end_ms.saturating_sub(w[0].start_ms));
                w[1].output_offset_ms.saturating_sub(end)
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether silence (and black) must be inserted between sections.
    pub fn fills_gaps(&self) -> bool {
        self.sections.len() > 1
            && self.sections.windows(2).any(|w| {
                w[1].output_offset_ms > w[0].output_offset_ms + (w[0].end_ms - w[0].start_ms)
            })
    }
}

/// The outputs for `segments`, users in name order, outputs in time order.
pub fn plan(segments: &[SegmentFile], opts: &PlanOptions) -> Vec<PlannedOutput> {
    let mut by_user: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in segments.iter().enumerate() {
        by_user.entry(s.user.as_str()).or_default().push(i);
    }
    let mut out = Vec::new();
    for (user, indices) in by_user {
        let has_main_video = indices.iter().any(|&i| {
            let s = &segments[i];
            s.media == Media::Main && matches!(s.track, TrackType::Video | TrackType::AudioVideo)
        });
        let video_media = match opts.av {
            AvChoice::Main => Media::Main,
            AvChoice::Aux => Media::Aux,
            AvChoice::Auto if has_main_video => Media::Main,
            AvChoice::Auto => Media::Aux,
        };
        let mut chosen: Vec<PlannedSegment> = indices
            .iter()
            .filter_map(|&i| {
                let s = &segments[i];
                let take = match s.track {
                    TrackType::Audio => Take {
                        audio: true,
                        video: false,
                    },
                    TrackType::Video => Take {
                        audio: false,
                        video: s.media == video_media,
                    },
                    TrackType::AudioVideo => Take {
                        audio: s.media == Media::Main,
                        video: s.media == video_media,
                    },
                };
                (take.audio || take.video).then_some(PlannedSegment { index: i, take })
            })
            .collect();
        chosen.sort_by(|a, b| {
            let (sa, sb) = (&segments[a.index], &segments[b.index]);
            (sa.start_ms, &sa.name).cmp(&(sb.start_ms, &sb.name))
        });
        let sections = sections_of(segments, chosen);
        if sections.is_empty() {
            continue;
        }
        let groups: Vec<Vec<Section>> = if opts.merge_user {
            vec![sections]
        } else {
            sections.into_iter().map(|s| vec![s]).collect()
        };
        for mut group in groups {
            let start_ms = group[0].start_ms;
            let mut cursor = 0;
            for s in &mut group {
                s.output_offset_ms = if opts.drop_gaps {
                    cursor
                } else {
                    s.start_ms - start_ms
                };
                cursor = s.output_offset_ms + (s.end_ms - s.start_ms);
            }
            let duration_ms = cursor;
            let video = group
                .iter()
                .any(|s| s.segments.iter().any(|p| p.take.video));
            let file_name = if video {
                format!("{user}_{start_ms}_av.mp4")
            } else {
                format!("{user}_{start_ms}.m4a")
            };
            let mut output = PlannedOutput {
                user: user.to_owned(),
                file_name,
                start_ms,
                duration_ms,
                video,
                sections: group,
                method: Method::Remux { exact: true },
            };
            let fill = output.fills_gaps();
            output.method = if video && (opts.reencode_video || fill) {
                Method::Reencode { fill }
            } else {
                // Segments go in untouched when there is one timeline to
                // keep as it is and nothing to leave out of them.
                let whole = output.sections.iter().all(|s| {
                    s.segments.iter().all(|p| match segments[p.index].track {
                        TrackType::AudioVideo => p.take.audio && p.take.video,
                        _ => true,
                    })
                });
                let exact = output.sections.len() == 1 && whole;
                Method::Remux { exact }
            };
            out.push(output);
        }
    }
    out
}

fn sections_of(segments: &[SegmentFile], chosen: Vec<PlannedSegment>) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    for p in chosen {
        let s = &segments[p.index];
        match sections.last_mut() {
            Some(cur) if s.start_ms <= cur.end_ms + SECTION_GAP_MS => {
                cur.end_ms = cur.end_ms.max(s.end_ms());
                cur.segments.push(p);
            }
            _ => sections.push(Section {
                start_ms: s.start_ms,
                end_ms: s.end_ms(),
                output_offset_ms: 0,
                segments: vec![p],
            }),
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(user: &str, media: Media, track: TrackType, start_s: u64, dur_s: u64) -> SegmentFile {
        SegmentFile {
            name: format!("{user}_{media:?}_{track:?}_{start_s}"),
            user: user.into(),
            media,
            track,
            start_ms: 1_700_000_000_000 + start_s * 1000,
            duration_ms: dur_s * 1000,
        }
    }

    fn opts(merge_user: bool, drop_gaps: bool, av: AvChoice) -> PlanOptions {
        PlanOptions {
            merge_user,
            drop_gaps,
            av,
            reencode_video: false,
        }
    }

    /// amy: 0–6 s, back at 24 s until 30 s, back at 34 s until 38 s.
    fn amy() -> Vec<SegmentFile> {
        let mut v = Vec::new();
        for (a, b) in [(0, 6), (24, 30), (34, 38)] {
            let mut t = a;
            while t < b {
                let d = (b - t).min(2);
                v.push(seg("YW15", Media::Main, TrackType::Audio, t, d));
                v.push(seg("YW15", Media::Main, TrackType::Video, t, d));
                t += d;
            }
        }
        v
    }

    #[test]
    fn sections_split_after_more_than_15_s_without_media() {
        let out = plan(&amy(), &opts(false, false, AvChoice::Main));
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(out[0].file_name, "YW15_1700000000000_av.mp4");
        assert_eq!(out[0].duration_ms, 6_000);
        // The 4 s gap stays inside the second section.
        assert_eq!(out[1].file_name, "YW15_1700000024000_av.mp4");
        assert_eq!(out[1].duration_ms, 14_000);
        assert_eq!(out[1].sections.len(), 1);
        assert!(out
            .iter()
            .all(|o| o.method == Method::Remux { exact: true }));
        // Exactly 15 s apart is still one section.
        let v = vec![
            seg("u", Media::Main, TrackType::Audio, 0, 2),
            seg("u", Media::Main, TrackType::Audio, 17, 2),
        ];
        assert_eq!(plan(&v, &opts(false, false, AvChoice::Main)).len(), 1);
        let v = vec![
            seg("u", Media::Main, TrackType::Audio, 0, 2),
            seg("u", Media::Main, TrackType::Audio, 18, 2),
        ];
        assert_eq!(plan(&v, &opts(false, false, AvChoice::Main)).len(), 2);
    }

    #[test]
    fn merge_mode_fills_or_drops_the_gaps() {
        let filled = plan(&amy(), &opts(true, false, AvChoice::Main));
        assert_eq!(filled.len(), 1);
        let f = &filled[0];
        assert_eq!(f.duration_ms, 38_000);
        assert_eq!(
            f.sections
                .iter()
                .map(|s| s.output_offset_ms)
                .collect::<Vec<_>>(),
            vec![0, 24_000]
        );
        assert_eq!(f.method, Method::Reencode { fill: true });
        let dropped = plan(&amy(), &opts(true, true, AvChoice::Main));
        let d = &dropped[0];
        assert_eq!(d.duration_ms, 20_000);
        assert_eq!(
            d.sections
                .iter()
                .map(|s| s.output_offset_ms)
                .collect::<Vec<_>>(),
            vec![0, 6_000]
        );
        assert_eq!(d.method, Method::Remux { exact: false });
    }

    #[test]
    fn the_longest_filled_gap_is_measured_on_the_output_timeline() {
        let filled = plan(&amy(), &opts(true, false, AvChoice::Main));
        assert_eq!(filled[0].longest_gap_ms(), 18_000);
        // Two recordings ten years apart, by their names.
        let ten_years_s = 10 * 365 * 86_400;
        let v = vec![
            seg("u", Media::Main, TrackType::Audio, 0, 2),
            seg("u", Media::Main, TrackType::Audio, ten_years_s, 2),
        ];
        let out = plan(&v, &opts(true, false, AvChoice::Main));
        assert_eq!(out.len(), 1);
        assert!(out[0].fills_gaps());
        assert!(out[0].longest_gap_ms() > MAX_FILLED_GAP_MS);
        // Dropping gaps leaves none.
        let out = plan(&v, &opts(true, true, AvChoice::Main));
        assert_eq!(out[0].longest_gap_ms(), 0);
    }

    #[test]
    fn audio_only_users_get_m4a_and_silence_not_reencoding() {
        let v = vec![
            seg("YmVu", Media::Main, TrackType::Audio, 0, 4),
            seg("YmVu", Media::Main, TrackType::Audio, 30, 4),
        ];
        let out = plan(&v, &opts(true, false, AvChoice::Main));
        assert_eq!(out[0].file_name, "YmVu_1700000000000.m4a");
        assert!(!out[0].video);
        assert_eq!(out[0].method, Method::Remux { exact: false });
        assert!(out[0].fills_gaps());
    }

    #[test]
    fn av_choice_picks_the_video() {
        let v = vec![
            seg("c", Media::Main, TrackType::Audio, 0, 4),
            seg("c", Media::Main, TrackType::Video, 0, 4),
            seg("c", Media::Aux, TrackType::Video, 0, 4),
            seg("d", Media::Main, TrackType::Audio, 0, 4),
            seg("d", Media::Aux, TrackType::Video, 0, 4),
        ];
        let videos = |av| -> Vec<(String, Vec<Media>)> {
            plan(&v, &opts(false, false, av))
                .into_iter()
                .map(|o| {
                    let media = o.sections[0]
                        .segments
                        .iter()
                        .filter(|p| p.take.video)
                        .map(|p| v[p.index].media)
                        .collect();
                    (o.user, media)
                })
                .collect()
        };
        assert_eq!(
            videos(AvChoice::Main),
            vec![("c".into(), vec![Media::Main]), ("d".into(), vec![])]
        );
        assert_eq!(
            videos(AvChoice::Auto),
            vec![
                ("c".into(), vec![Media::Main]),
                ("d".into(), vec![Media::Aux])
            ]
        );
        assert_eq!(
            videos(AvChoice::Aux),
            vec![
                ("c".into(), vec![Media::Aux]),
                ("d".into(), vec![Media::Aux])
            ]
        );
        // d under -a 0 has no video: an m4a.
        assert!(plan(&v, &opts(false, false, AvChoice::Main))[1]
            .file_name
            .ends_with(".m4a"));
    }

    #[test]
    fn unchosen_aux_neither_bridges_nor_splits_sections() {
        let v = vec![
            seg("e", Media::Main, TrackType::Audio, 0, 4),
            seg("e", Media::Aux, TrackType::Video, 10, 20),
            seg("e", Media::Main, TrackType::Audio, 30, 4),
        ];
        assert_eq!(plan(&v, &opts(false, false, AvChoice::Main)).len(), 2);
        assert_eq!(plan(&v, &opts(false, false, AvChoice::Aux)).len(), 1);
    }

    #[test]
    fn merged_av_segments_give_audio_to_an_aux_output() {
        let v = vec![
            seg("f", Media::Main, TrackType::AudioVideo, 0, 4),
            seg("f", Media::Aux, TrackType::Video, 0, 4),
        ];
        let out = plan(&v, &opts(false, false, AvChoice::Aux));
        let takes: Vec<(Media, Take)> = out[0].sections[0]
            .segments
            .iter()
            .map(|p| (v[p.index].media, p.take))
            .collect();
        assert_eq!(takes.len(), 2);
        assert!(takes.contains(&(
            Media::Main,
            Take {
                audio: true,
                video: false
            }
        )));
        assert!(takes.contains(&(
            Media::Aux,
            Take {
                audio: false,
                video: true
            }
        )));
        // Part of an av segment is left out: not an exact remux.
        assert_eq!(out[0].method, Method::Remux { exact: false });
        let main = plan(&v, &opts(false, false, AvChoice::Main));
        assert_eq!(main[0].method, Method::Remux { exact: true });
    }

    #[test]
    fn reencoding_is_asked_for_by_fps_or_size() {
        let mut o = opts(false, false, AvChoice::Main);
        o.reencode_video = true;
        let out = plan(&amy(), &o);
        assert!(out
            .iter()
            .all(|p| p.method == Method::Reencode { fill: false }));
        let audio_only = vec![seg("g", Media::Main, TrackType::Audio, 0, 4)];
        assert_eq!(
            plan(&audio_only, &o)[0].method,
            Method::Remux { exact: true }
        );
    }
}
