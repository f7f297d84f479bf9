//! OpenH264 on the CPU for the mixed-stream pipeline: one decoder per
//! subscribed video (access units in, [`Picture`]s out) and the encoder of
//! the composited canvas (the CPU implementation of [`VideoEncoder`]).
//!
//! - Decoded pictures are copied once out of OpenH264's strided buffers
//!   into a tightly packed [`Picture`] that is reused while nobody else
//!   holds it, so a steady stream costs no allocation per frame.
//! - A resolution change mid-stream simply yields pictures of the new size
//!   (the decoder follows the new SPS); the layout fits every picture by
//!   its own size.
//! - The encoder makes constrained-baseline H.264 with bitrate rate control
//!   and never skips a frame (the output clock decides the frame rate); an
//!   IDR every `gop_frames` frames and on request. OpenH264 writes SPS and
//!   PPS in front of every IDR, so every segment decodes on its own.

use std::sync::Arc;

use kiroku_gpu::{EncodeError, EncodedFrame, EncoderSettings, Picture, VideoEncoder};
use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile, QpRange,
    SpsPpsStrategy, UsageType, VuiConfig,
};
/// The tuning's enums, so that callers need not depend on `openh264`.
pub use openh264::encoder::{Complexity, RateControlMode};
use openh264::formats::{YUVSlices, YUVSource};
use openh264::OpenH264API;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("H.264 decoder could not start: {0}")]
    Init(String),
    #[error("H.264 access unit could not be decoded: {0}")]
    Corrupt(String),
    #[error("decoded picture of {0}x{1} is outside the supported 2..=4096 range")]
    Size(usize, usize),
}

/// One video's decoder with its latest picture.
pub struct PictureDecoder {
    decoder: Decoder,
    latest: Option<Arc<Picture>>,
}

impl PictureDecoder {
    pub fn new() -> Result<Self, DecodeError> {
        Ok(Self {
            decoder: Decoder::new().map_err(|e| DecodeError::Init(e.to_string()))?,
            latest: None,
        })
    }

    /// Decodes one Annex-B access unit. `Ok(true)` when it produced a new
    /// picture (see [`Self::latest`]).
    pub fn decode(&mut self, au: &[u8]) -> Result<bool, DecodeError> {
        let decoded = self
            .decoder
            .decode(au)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        let Some(yuv) = decoded else {
            return Ok(false);
        };
        let (w, h) = yuv.dimensions();
        if !(2..=4096).contains(&w) || !(2..=4096).contains(&h) {
            return Err(DecodeError::Size(w, h));
        }
        let (sy, su, sv) = yuv.strides();
        let target = reuse_or_new(&mut self.latest, w as u32, h as u32);
        let (cw, ch) = kiroku_gpu::chroma_size(w as u32, h as u32);
        copy_plane(yuv.y(), sy, &mut target.y, w, h);
        copy_plane(yuv.u(), su, &mut target.u, cw as usize, ch as usize);
        copy_plane(yuv.v(), sv, &mut target.v, cw as usize, ch as usize);
        Ok(true)
    }

    /// The most recent picture, shared with the compositor.
    pub fn latest(&self) -> Option<&Arc<Picture>> {
        self.latest.as_ref()
    }

    /// Forgets the latest picture (FillType 1: black once video stops).
    pub fn clear(&mut self) {
        self.latest = None;
    }
}

/// The picture to decode into: the previous one if nobody else holds it
/// and it has the right size, else a new one.
fn reuse_or_new(slot: &mut Option<Arc<Picture>>, w: u32, h: u32) -> &mut Picture {
    let reusable = slot
        .as_mut()
        .and_then(Arc::get_mut)
        .is_some_and(|p| p.width == w && p.height == h);
    if !reusable {
        *slot = Some(Arc::new(Picture::filled(w, h, kiroku_gpu::Yuv::BLACK)));
    }
    // Just made unique above when it was not.
    let arc = slot.get_or_insert_with(|| Arc::new(Picture::filled(w, h, kiroku_gpu::Yuv::BLACK)));
    Arc::make_mut(arc)
}

fn copy_plane(src: &[u8], stride: usize, dst: &mut [u8], w: usize, h: usize) {
    for (row, out) in dst.chunks_exact_mut(w).take(h).enumerate() {
        let start = row * stride;
        if let Some(line) = src.get(start..start + w) {
            out.copy_from_slice(line);
        }
    }
}

/// The OpenH264 settings that trade encoding speed for picture quality.
/// [`Default`] is what kiroku encodes with ([`OpenH264Encoder::open`]);
/// `mix-bench --openh264 …` builds others to measure them against x264.
#[derive(Debug, Clone, Copy)]
pub struct EncoderTuning {
    /// Mode decision effort. `Low` decides macroblock modes on SAD with
    /// OpenH264's fast coding functions; `Medium` and `High` use SATD and
    /// the full mode search (they differ only for screen content).
    pub complexity: Complexity,
    /// How the frame QP follows the bitrate. `Bufferbased` does not follow
    /// the bitrate at all, and `Timestamp` needs frame times (the
    /// `openh264` crate passes 0 for every frame).
    pub rate_control: RateControlMode,
    /// Lower QP for macroblocks that did not change (static backgrounds).
    pub background_detection: bool,
    /// Asked of OpenH264, but its parameter validation (2.x) switches
    /// adaptive quantisation off whatever is asked ("algorithms needs to be
    /// refactored"): the output is identical either way.
    pub adaptive_quantization: bool,
    /// Lets OpenH264 insert IDRs of its own at scene cuts.
    pub scene_change_detect: bool,
    pub long_term_reference: bool,
    /// Lets the rate control drop frames. Never on in kiroku: every output
    /// tick must be a frame (the output clock sets the frame rate and the
    /// playlist durations); the option exists so `mix-bench` can show what
    /// skipping would buy.
    pub skip_frames: bool,
    /// QP range. Either bound at 0 lets OpenH264 use its own, 12..=42.
    pub qp_min: u8,
    pub qp_max: u8,
}

/// kiroku's tuning, measured with `mix-bench --quality` (issue 19; see
/// docs/performance.md): textured, moving canvases, 4×360p→720p15 at
/// 1.5 Mbit/s and 25×360p→1080p15 at 3 Mbit/s, GOP 2 s, mean PSNR-Y
/// against the uncompressed canvas. At the same bitrate OpenH264 is 2.4 dB
/// (720p) and 2.8 dB (1080p) below x264 `veryfast`, and none of the
/// settings the `openh264` crate exposes closes much of that:
/// - `complexity`: Medium (the same as High for camera content) gains
///   0.15–0.22 dB, about 4 % of bitrate, for 12–17 % more encoder CPU.
///   Reaching x264's PSNR takes 1.46× (720p) and 1.90× (1080p) the bitrate
///   at Low, 1.41× and 1.82× at Medium, and there the whole pipeline runs
///   at about 1.6× (720p) and 1.5× (1080p) ffmpeg's throughput per
///   CPU-second with either (medians of 4–5 runs). At the customer's
///   bitrate Medium costs 5–10 % of the pipeline's throughput for those
///   0.2 dB, so Low stays (density first).
/// - rate control: Bitrate held the target to 0.5 % over 20 s without
///   skipping frames (OpenH264 warns it "can't be controlled" without:
///   it raises the QP instead when a window of 8 frames overspends).
///   Quality mode was 0.1 dB worse, Timestamp 0.2–0.4 dB (1–2 dB at the
///   10th percentile).
/// - frame skipping: never on (see the field); on, it skipped no frame and
///   changed nothing here.
/// - background detection: no change on moving pictures, 0.5–1.3 dB worse
///   on kiroku publish's colour bars.
/// - scene change detection: IDRs off the GOP, up to 0.17 dB worse.
/// - adaptive quantisation, long-term reference, the QP range (12–51,
///   20–38 tried): no change.
///
/// What does close part of the gap is not in the crate's `EncoderConfig`
/// (raw `SEncParamExt` fields): CABAC (Main profile) +0.4–0.6 dB for
/// 8–12 % more encoder CPU, and a larger IDR budget (`iIdrBitrateRatio`)
/// +0.4 dB at 720p but −0.3 dB at 1080p.
impl Default for EncoderTuning {
    fn default() -> Self {
        Self {
            complexity: Complexity::Low,
            rate_control: RateControlMode::Bitrate,
            background_detection: false,
            adaptive_quantization: false,
            scene_change_detect: false,
            long_term_reference: false,
            skip_frames: false,
            qp_min: 0,
            qp_max: 51,
        }
    }
}

/// The CPU H.264 encoder of the mixed canvas.
pub struct OpenH264Encoder {
    settings: EncoderSettings,
    encoder: Encoder,
    since_idr: Option<u32>,
    last_len: usize,
}

impl OpenH264Encoder {
    /// An encoder with kiroku's tuning ([`EncoderTuning::default`]).
    pub fn open(settings: EncoderSettings) -> Result<Self, EncodeError> {
        Self::open_tuned(settings, EncoderTuning::default())
    }

    /// An encoder with other OpenH264 settings (benchmarks). Refuses a QP
    /// range outside 0..=51 (the crate would panic on it).
    pub fn open_tuned(
        settings: EncoderSettings,
        tuning: EncoderTuning,
    ) -> Result<Self, EncodeError> {
        if tuning.qp_max > 51 || tuning.qp_min > tuning.qp_max {
            return Err(EncodeError::Unavailable(format!(
                "QP range {}..={} is outside 0..=51",
                tuning.qp_min, tuning.qp_max
            )));
        }
        let cfg = EncoderConfig::new()
            .profile(Profile::Baseline)
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(tuning.rate_control)
            .bitrate(BitRate::from_bps(settings.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(settings.fps.max(1) as f32))
            // The output clock sets the frame rate: every tick is a frame.
            .skip_frames(tuning.skip_frames)
            // IDRs are placed here (GOP and requests) so that segment cuts
            // are predictable.
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .scene_change_detect(tuning.scene_change_detect)
            .background_detection(tuning.background_detection)
            .adaptive_quantization(tuning.adaptive_quantization)
            .long_term_reference(tuning.long_term_reference)
            .qp(QpRange::new(tuning.qp_min, tuning.qp_max))
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            // Many tasks encode side by side; threads inside one encoder
            // would only contend with them.
            .num_threads(1)
            .complexity(tuning.complexity)
            .vui(VuiConfig::bt601());
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), cfg)
            .map_err(|e| EncodeError::Unavailable(e.to_string()))?;
        super::openh264_log::route_encoder_log(&mut encoder);
        Ok(Self {
            settings,
            encoder,
            since_idr: None,
            last_len: 0,
        })
    }
}

impl VideoEncoder for OpenH264Encoder {
    fn name(&self) -> &'static str {
        "openh264"
    }

    fn encode(
        &mut self,
        picture: &Picture,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        let s = &self.settings;
        if picture.width != s.width || picture.height != s.height {
            return Err(EncodeError::Size {
                got_w: picture.width,
                got_h: picture.height,
                want_w: s.width,
                want_h: s.height,
            });
        }
        let gop_due = self
            .since_idr
            .is_some_and(|n| n >= self.settings.gop_frames.max(1));
        if self.since_idr.is_some() && (force_keyframe || gop_due) {
            self.encoder.force_intra_frame();
        }
        let (w, h) = (picture.width as usize, picture.height as usize);
        let cw = w.div_ceil(2);
        let yuv = YUVSlices::new((&picture.y, &picture.u, &picture.v), (w, h), (w, cw, cw));
        let bitstream = self
            .encoder
            .encode(&yuv)
            .map_err(|e| EncodeError::Codec(e.to_string()))?;
        let keyframe = matches!(bitstream.frame_type(), FrameType::IDR | FrameType::I);
        if bitstream.frame_type() == FrameType::Skip {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(self.last_len + self.last_len / 4 + 64);
        bitstream.write_vec(&mut data);
        if data.is_empty() {
            return Ok(None);
        }
        self.last_len = data.len();
        self.since_idr = Some(match self.since_idr {
            Some(n) if !keyframe => n.saturating_add(1),
            _ => 1,
        });
        Ok(Some(EncodedFrame { data, keyframe }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiroku_gpu::Yuv;

    fn settings(w: u32, h: u32) -> EncoderSettings {
        EncoderSettings {
            width: w,
            height: h,
            fps: 15,
            bitrate_bps: 500_000,
            gop_frames: 5,
        }
    }

    #[test]
    fn encoded_frames_decode_back_to_the_same_colour_with_idrs_on_the_gop() {
        let mut enc = OpenH264Encoder::open(settings(320, 180)).expect("encoder");
        let mut dec = PictureDecoder::new().expect("decoder");
        let colour = Yuv {
            y: 81,
            u: 90,
            v: 240,
        };
        let pic = Picture::filled(320, 180, colour);
        let mut keys = Vec::new();
        for i in 0..12 {
            let f = enc.encode(&pic, i == 7).expect("encode").expect("frame");
            keys.push(f.keyframe);
            assert!(dec.decode(&f.data).expect("decode"));
        }
        // Frame 0 (first), 5 (GOP), 7 (forced), 12 would be next.
        let idrs: Vec<usize> = (0..12).filter(|i| keys[*i]).collect();
        assert_eq!(idrs, vec![0, 5, 7]);
        let out = dec.latest().expect("picture");
        assert_eq!((out.width, out.height), (320, 180));
        let mid = out.y[(90 * 320 + 160) as usize];
        assert!((i32::from(mid) - 81).abs() <= 2, "luma {mid}");
        let v = out.v[(45 * 160 + 80) as usize];
        assert!((i32::from(v) - 240).abs() <= 3, "Cr {v}");
    }

    #[test]
    fn a_resolution_change_yields_pictures_of_the_new_size() {
        let mut dec = PictureDecoder::new().expect("decoder");
        for (w, h) in [(320, 180), (160, 120)] {
            let mut enc = OpenH264Encoder::open(settings(w, h)).expect("encoder");
            let f = enc
                .encode(&Picture::filled(w, h, Yuv::BLACK), false)
                .expect("encode")
                .expect("frame");
            assert!(dec.decode(&f.data).expect("decode"));
            let p = dec.latest().expect("picture");
            assert_eq!((p.width, p.height), (w, h));
        }
    }

    #[test]
    fn garbage_is_an_error_or_nothing_never_a_panic() {
        let mut dec = PictureDecoder::new().expect("decoder");
        let junk = [
            0u8, 0, 0, 1, 0x65, 0xff, 0x00, 0x13, 0x37, 0, 0, 1, 0x41, 9, 9,
        ];
        let _ = dec.decode(&junk);
        let _ = dec.decode(&[]);
        assert!(dec.latest().is_none());
    }

    #[test]
    fn a_picture_of_the_wrong_size_is_refused() {
        let mut enc = OpenH264Encoder::open(settings(320, 180)).expect("encoder");
        let err = enc
            .encode(&Picture::filled(160, 90, Yuv::BLACK), false)
            .expect_err("size");
        assert!(matches!(err, EncodeError::Size { .. }));
    }
}
