//! Making one planned merge output: segments in, an MP4/M4A file out (its
//! header in memory, its payload spilled to a scratch file as it is
//! packed, so a long output is never held in memory).
//!
//! Every method ends in the project's MP4 packer (`media/mp4/`:
//! faststart, key-frame-aligned, damaged data skipped):
//! - **exact remux**: the segment files go in untouched, in start order;
//! - **re-timed remux**: the segments' samples are re-stamped onto the
//!   output timeline (sections moved together when gaps are dropped, a
//!   merged A/V segment's unwanted stream left out) and written as TS
//!   again; gaps of an audio-only output get silent AAC frames;
//! - **re-encode**: video is decoded (OpenH264), scaled when `-r` asks
//!   (letterboxed, CPU compositor) and encoded again at `-p` fps, showing
//!   each decoded frame until the next and black in the gaps; audio is
//!   remuxed as above with silence in the gaps.
//!
//! Within a section timestamps come from the segments themselves (one
//! recording shares one timeline, so audio and video stay as aligned as
//! they were recorded); each section is anchored at the `<UTC>` of its
//! first segment.

use std::path::Path;
use std::sync::Arc;

use kiroku_gpu::{
    Compositor, CpuCompositor, EncoderSettings, Layer, Picture, Rect, Scene, VideoEncoder, Yuv,
};

use super::plan::{Method, PlannedOutput, SegmentFile};
use crate::media::h264;
use crate::media::h264_codec::{OpenH264Encoder, PictureDecoder};
use crate::media::mp4::{adts_payload_info, Container, Mp4Packer, PackOutput, SplitLimits};
use crate::media::ts::TsMuxer;
use crate::media::ts_demux::{demux_segment, TsUnit};
use crate::output::spill::{Spill, SpilledFile};

const WRAP: u64 = 1 << 33;
/// Output timestamps start here (1 s), so a sample slightly ahead of its
/// section's anchor never needs a negative time.
const BASE: u64 = 90_000;
const AAC_FRAME: u64 = 1024;

/// `-p` and `-r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSettings {
    pub fps: u32,
    pub size: Option<(u32, u32)>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("no media could be read from this output's segments")]
    Empty,
    #[error("the H.264 {0}")]
    Codec(String),
    #[error("the AAC encoder: {0}")]
    Aac(String),
    #[error("spilling the output's payload to {path}: {source}")]
    Spill {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One finished output.
#[derive(Debug)]
pub struct Built {
    /// Header and spilled payload (removed when this is dropped).
    pub file: SpilledFile,
    pub duration_ms: u64,
    pub warnings: Vec<String>,
}

/// Makes `output` from the segment files in `dir`, spilling its payload
/// into `scratch`. `progress` hears the output milliseconds done so far.
pub fn build(
    dir: &Path,
    scratch: &Path,
    segments: &[SegmentFile],
    output: &PlannedOutput,
    video: &VideoSettings,
    progress: &mut dyn FnMut(u64),
) -> Result<Built, BuildError> {
    let container = if output.video {
        Container::Mp4
    } else {
        Container::AudioMp4
    };
    // One file per output, however long (the merge tool does not split).
    let limits = SplitLimits {
        max_duration_ms: u64::MAX / 1000,
        max_bytes: u64::MAX / 2,
    };
    let spill_error = |source| BuildError::Spill {
        path: scratch.display().to_string(),
        source,
    };
    let mut b = Builder {
        packer: Mp4Packer::new(limits, container),
        spill: Spill::new(scratch, "merge").map_err(spill_error)?,
        spill_failed: None,
        files: Vec::new(),
        warnings: Vec::new(),
        mux: TsMuxer::new(output.video, true),
        ts: Vec::new(),
        silence: None,
        audio_format: None,
        encoder: None,
    };
    match output.method {
        Method::Remux { exact: true } => {
            for section in &output.sections {
                for p in &section.segments {
                    let seg = &segments[p.index];
                    if let Some(data) = b.read(dir, seg) {
                        let errors = b.packer.stats().errors;
                        let outputs = b.packer.push_segment(&data, false);
                        b.spill(outputs);
                        let damaged = b.packer.stats().errors - errors;
                        if damaged > 0 {
                            b.warnings.push(format!(
                                "{}: {damaged} damaged or truncated part(s) skipped",
                                seg.name
                            ));
                        }
                    }
                    progress(section.output_offset_ms + seg.end_ms_in(section));
                }
            }
        }
        Method::Remux { exact: false } => b.retimed(dir, segments, output, None, progress)?,
        Method::Reencode { .. } => {
            let enc = Reencoder::new(*video);
            b.retimed(dir, segments, output, Some(enc), progress)?;
        }
    }
    let finished = std::mem::replace(&mut b.packer, Mp4Packer::new(limits, container)).finish();
    b.spill(finished.outputs);
    if let Some(e) = b.spill_failed.take() {
        return Err(spill_error(e));
    }
    if finished.stats.errors > 0 && b.warnings.is_empty() {
        b.warnings.push(format!(
            "{} damaged part(s) of segments skipped (first: {})",
            finished.stats.errors,
            finished
                .stats
                .first_errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_default()
        ));
    }
    let mut files = b.files;
    let Some(file) = files.pop() else {
        return Err(BuildError::Empty);
    };
    // Limits are out of reach: never more than one file.
    debug_assert!(files.is_empty());
    Ok(Built {
        duration_ms: file.facts.duration_ms,
        file,
        warnings: b.warnings,
    })
}

impl SegmentFile {
    /// Where this segment ends, in ms from its section's start.
    fn end_ms_in(&self, section: &super::plan::Section) -> u64 {
        (self.start_ms + self.duration_ms).saturating_sub(section.start_ms)
    }
}

struct Builder {
    packer: Mp4Packer,
    spill: Spill,
    /// The first spill error: the output is lost, the rest is skipped.
    spill_failed: Option<std::io::Error>,
    files: Vec<SpilledFile>,
    warnings: Vec<String>,
    mux: TsMuxer,
    /// TS written since the last push to the packer.
    ts: Vec<u8>,
    /// One silent ADTS frame of the output's audio format.
    silence: Option<Vec<u8>>,
    /// (sample rate, channels) of the first audio frame.
    audio_format: Option<(u32, u8)>,
    encoder: Option<Reencoder>,
}

impl Builder {
    fn read(&mut self, dir: &Path, seg: &SegmentFile) -> Option<Vec<u8>> {
        match std::fs::read(dir.join(&seg.name)) {
            Ok(d) => Some(d),
            Err(e) => {
                self.warnings
                    .push(format!("{}: skipped, unreadable ({e})", seg.name));
                None
            }
        }
    }

    fn push_ts(&mut self) {
        if self.ts.is_empty() {
            return;
        }
        let chunk = std::mem::take(&mut self.ts);
        let outputs = self.packer.push_segment(&chunk, false);
        self.spill(outputs);
    }

    fn spill(&mut self, outputs: Vec<PackOutput>) {
        if self.spill_failed.is_some() {
            return;
        }
        match self.spill.take(outputs) {
            Ok(files) => self.files.extend(files),
            Err(e) => self.spill_failed = Some(e),
        }
    }

    fn retimed(
        &mut self,
        dir: &Path,
        segments: &[SegmentFile],
        output: &PlannedOutput,
        encoder: Option<Reencoder>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BuildError> {
        self.encoder = encoder;
        self.mux.write_tables(&mut self.ts);
        let mut audio_end: Option<u64> = None;
        for section in &output.sections {
            let offset = section.output_offset_ms * 90;
            // The section's anchor: its earliest segment's first timestamp
            // is the section's start.
            let mut origin: Option<u64> = None;
            if output.fills_gaps() {
                if let Some(end) = audio_end {
                    self.silence_until(end, BASE + offset)?;
                }
            }
            for p in &section.segments {
                let seg = &segments[p.index];
                let Some(data) = self.read(dir, seg) else {
                    continue;
                };
                let (units, damage) = demux_segment(&data);
                if !damage.is_empty() {
                    self.warnings.push(format!(
                        "{}: {} damaged part(s) skipped",
                        seg.name,
                        damage.len()
                    ));
                }
                let Some(p0) = units.first().map(|u| u.pts) else {
                    continue;
                };
                let first = units
                    .iter()
                    .map(|u| u.pts)
                    .min_by_key(|&pts| signed_delta(pts, p0))
                    .unwrap_or(p0);
                let origin = *origin.get_or_insert_with(|| {
                    let lead = seg.start_ms.saturating_sub(section.start_ms) * 90;
                    (first + WRAP - lead % WRAP) % WRAP
                });
                let place = |pts: u64| -> u64 {
                    let rel = signed_delta(pts, origin);
                    (BASE + offset).saturating_add_signed(rel)
                };
                for u in units {
                    if u.video && p.take.video {
                        let (pts, dts) = (place(u.pts), place(u.dts));
                        match &mut self.encoder {
                            Some(_) => self.reencode(&u, pts)?,
                            None => {
                                let key = h264::is_keyframe(&u.payload);
                                self.mux
                                    .write_video(&mut self.ts, pts, dts, key, &u.payload);
                            }
                        }
                    } else if !u.video && p.take.audio {
                        let pts = place(u.pts);
                        self.note_audio_format(&u);
                        let frames = adts_payload_info(&u.payload).map_or(1, |i| i.2.max(1));
                        self.mux.write_audio(&mut self.ts, pts, &u.payload);
                        let end = pts + self.frame_ticks() * frames;
                        audio_end = Some(audio_end.map_or(end, |e| e.max(end)));
                    }
                }
                self.push_ts();
                progress(section.output_offset_ms + seg.end_ms_in(section));
            }
            let section_end = BASE + offset + (section.end_ms - section.start_ms) * 90;
            if self.encoder.is_some() {
                // Hold the last frame to the section's end, then black.
                self.emit_video_until(section_end)?;
                if let Some(e) = &mut self.encoder {
                    e.current = None;
                }
                self.push_ts();
            }
        }
        if self.encoder.is_some() {
            self.emit_video_until(BASE + output.duration_ms * 90)?;
            self.push_ts();
        }
        Ok(())
    }

    fn note_audio_format(&mut self, u: &TsUnit) {
        if self.audio_format.is_some() {
            return;
        }
        if let Some((rate, channels, _)) = adts_payload_info(&u.payload) {
            if matches!(channels, 1 | 2) {
                self.audio_format = Some((rate, channels));
            }
        }
    }

    fn frame_ticks(&self) -> u64 {
        let rate = self.audio_format.map_or(48_000, |f| f.0);
        AAC_FRAME * 90_000 / u64::from(rate)
    }

    /// Silent AAC frames from `from` to `to` (90 kHz output time).
    fn silence_until(&mut self, from: u64, to: u64) -> Result<(), BuildError> {
        if to <= from {
            return Ok(());
        }
        let Some((rate, channels)) = self.audio_format else {
            return Ok(());
        };
        if self.silence.is_none() {
            self.silence = Some(silent_frame(rate, channels)?);
        }
        let frame = self.silence.clone().unwrap_or_default();
        let mut n = 0u64;
        loop {
            let pts = from + n * AAC_FRAME * 90_000 / u64::from(rate);
            if pts >= to {
                break;
            }
            self.mux.write_audio(&mut self.ts, pts, &frame);
            n += 1;
        }
        self.push_ts();
        Ok(())
    }

    fn reencode(&mut self, u: &TsUnit, pts: u64) -> Result<(), BuildError> {
        let decoded = match &mut self.encoder {
            Some(e) => e.decoder_decode(&u.payload),
            None => return Ok(()),
        };
        match decoded {
            Ok(Some(picture)) => {
                self.emit_video_until(pts)?;
                if let Some(e) = &mut self.encoder {
                    e.current = Some(picture);
                }
            }
            Ok(None) => {}
            Err(why) => {
                if let Some(e) = &mut self.encoder {
                    e.decode_errors += 1;
                    if e.decode_errors == 1 {
                        self.warnings
                            .push(format!("undecodable video frame(s) skipped ({why})"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Encodes output frames whose time is before `until`.
    fn emit_video_until(&mut self, until: u64) -> Result<(), BuildError> {
        let Some(e) = &mut self.encoder else {
            return Ok(());
        };
        loop {
            let t = BASE + e.next_frame * 90_000 / u64::from(e.settings.fps);
            if t >= until {
                return Ok(());
            }
            if let Some(frame) = e.encode_next()? {
                self.mux
                    .write_video(&mut self.ts, t, t, frame.keyframe, &frame.data);
            }
        }
    }
}

/// The video half of a re-encode.
struct Reencoder {
    settings: VideoSettings,
    decoder: Option<PictureDecoder>,
    encoder: Option<OpenH264Encoder>,
    compositor: CpuCompositor,
    /// Output size, fixed by `-r` or the first decoded picture.
    size: Option<(u32, u32)>,
    current: Option<Arc<Picture>>,
    canvas: Picture,
    next_frame: u64,
    decode_errors: u64,
}

impl Reencoder {
    fn new(settings: VideoSettings) -> Self {
        Self {
            settings,
            decoder: None,
            encoder: None,
            compositor: CpuCompositor::new(),
            size: settings.size.map(|(w, h)| (w & !1, h & !1)),
            current: None,
            canvas: Picture::filled(2, 2, Yuv::BLACK),
            next_frame: 0,
            decode_errors: 0,
        }
    }

    fn decoder_decode(&mut self, au: &[u8]) -> Result<Option<Arc<Picture>>, String> {
        if self.decoder.is_none() {
            self.decoder = Some(PictureDecoder::new().map_err(|e| e.to_string())?);
        }
        let Some(d) = self.decoder.as_mut() else {
            return Ok(None);
        };
        match d.decode(au) {
            Ok(true) => {
                let p = d.latest().cloned();
                if let (None, Some(p)) = (self.size, &p) {
                    self.size = Some((p.width & !1, p.height & !1));
                }
                Ok(p)
            }
            Ok(false) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The next output frame: the current picture fitted to the output
    /// (letterboxed), or black.
    fn encode_next(&mut self) -> Result<Option<kiroku_gpu::EncodedFrame>, BuildError> {
        // Before the first picture the size may be unknown: black at the
        // size a first picture will set is not possible, so wait for -r or
        // a picture (output frames before it are left out; the packer
        // starts the file at the first frame).
        let Some((w, h)) = self.size else {
            self.next_frame += 1;
            return Ok(None);
        };
        if self.encoder.is_none() {
            let fps = self.settings.fps;
            let bitrate =
                (u64::from(w) * u64::from(h) * u64::from(fps) / 8).clamp(150_000, 8_000_000);
            self.encoder = Some(
                OpenH264Encoder::open(EncoderSettings {
                    width: w,
                    height: h,
                    fps,
                    bitrate_bps: bitrate as u32,
                    gop_frames: fps * 2,
                })
                .map_err(|e| BuildError::Codec(format!("encoder: {e}")))?,
            );
        }
        let mut layers = vec![Layer::Fill {
            dst: Rect::new(0, 0, w, h),
            color: Yuv::BLACK,
        }];
        if let Some(src) = &self.current {
            let dst = letterbox(src.width, src.height, w, h);
            layers.push(Layer::Picture {
                source: src.clone(),
                crop: Rect::new(0, 0, src.width & !1, src.height & !1),
                dst,
                opacity: 255,
            });
        }
        let scene = Scene {
            width: w,
            height: h,
            layers,
        };
        self.compositor
            .compose(
                std::slice::from_ref(&scene),
                std::slice::from_mut(&mut self.canvas),
            )
            .map_err(|e| BuildError::Codec(format!("scaling: {e}")))?;
        self.next_frame += 1;
        let Some(enc) = self.encoder.as_mut() else {
            return Ok(None);
        };
        enc.encode(&self.canvas, false)
            .map_err(|e| BuildError::Codec(format!("encoder: {e}")))
    }
}

/// The largest even rectangle of the source's aspect inside `w`×`h`, centred.
fn letterbox(sw: u32, sh: u32, w: u32, h: u32) -> Rect {
    if sw == 0 || sh == 0 {
        return Rect::new(0, 0, w, h);
    }
    let (sw64, sh64, w64, h64) = (u64::from(sw), u64::from(sh), u64::from(w), u64::from(h));
    let (dw, dh) = if sw64 * h64 >= sh64 * w64 {
        (w64, (sh64 * w64 / sw64) & !1)
    } else {
        ((sw64 * h64 / sh64) & !1, h64)
    };
    let (dw, dh) = (dw.max(2) as u32, dh.max(2) as u32);
    Rect::new(((w - dw) / 2) & !1, ((h - dh) / 2) & !1, dw, dh)
}

/// `a − b` on the 33-bit clock, in (−2³², 2³²].
fn signed_delta(a: u64, b: u64) -> i64 {
    let d = (a % WRAP + WRAP - b % WRAP) % WRAP;
    if d > WRAP / 2 {
        d as i64 - WRAP as i64
    } else {
        d as i64
    }
}

/// One ADTS frame of silence in the given format, from the project's AAC
/// encoder (a steady-state frame, past the encoder's start-up).
fn silent_frame(rate: u32, channels: u8) -> Result<Vec<u8>, BuildError> {
    let options = syom::EncodeOptions::default().with_bitrate_bps(32_000 * u32::from(channels));
    let mut encoder = syom::Encoder::new(rate, usize::from(channels), &options)
        .map_err(|e| BuildError::Aac(e.to_string()))?;
    let zeros = vec![0.0f32; 1024 * 4];
    let planes: Vec<&[f32]> = (0..channels).map(|_| zeros.as_slice()).collect();
    let mut last = None;
    encoder
        .feed(&planes, |frame| {
            last = Some(frame.au.to_vec());
            Ok(())
        })
        .map_err(|e| BuildError::Aac(e.to_string()))?;
    last.ok_or_else(|| BuildError::Aac("no frame for 4096 samples of silence".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_keeps_the_aspect() {
        assert_eq!(letterbox(640, 360, 320, 240), Rect::new(0, 30, 320, 180));
        assert_eq!(letterbox(360, 640, 640, 360), Rect::new(218, 0, 202, 360));
        assert_eq!(letterbox(640, 360, 640, 360), Rect::new(0, 0, 640, 360));
    }

    #[test]
    fn deltas_wrap_at_33_bits() {
        assert_eq!(signed_delta(10, 5), 5);
        assert_eq!(signed_delta(5, 10), -5);
        assert_eq!(signed_delta(3, WRAP - 2), 5);
        assert_eq!(signed_delta(WRAP - 2, 3), -5);
    }

    #[test]
    fn silence_is_an_adts_frame_that_decodes_to_silence() {
        for (rate, ch) in [(48_000, 2), (44_100, 1), (16_000, 2)] {
            let f = silent_frame(rate, ch).expect("frame");
            assert_eq!(adts_payload_info(&f), Some((rate, ch, 1)));
            let decoded = syom::decode_with(&f, &syom::DecodeOptions::audio()).expect("decodes");
            assert_eq!(decoded.sample_rate, rate);
            assert_eq!(decoded.channels.len(), usize::from(ch));
            for samples in &decoded.channels {
                assert_eq!(samples.len(), 1024, "one AAC frame per channel");
                assert!(samples.iter().all(|v| *v == 0.0), "silent at {rate} Hz");
            }
        }
    }
}
