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
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, SpsPpsStrategy, UsageType, VuiConfig,
};
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

/// The CPU H.264 encoder of the mixed canvas.
pub struct OpenH264Encoder {
    settings: EncoderSettings,
    encoder: Encoder,
    since_idr: Option<u32>,
    last_len: usize,
}

impl OpenH264Encoder {
    pub fn open(settings: EncoderSettings) -> Result<Self, EncodeError> {
        let cfg = EncoderConfig::new()
            .profile(Profile::Baseline)
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(settings.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(settings.fps.max(1) as f32))
            // The output clock sets the frame rate: every tick is a frame.
            .skip_frames(false)
            // IDRs are placed here (GOP and requests) so that segment cuts
            // are predictable.
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .scene_change_detect(false)
            // Background detection and adaptive quantisation cost about a
            // fifth of the encode time for a small gain on static scenes;
            // density matters more here (docs/performance.md).
            .background_detection(false)
            .adaptive_quantization(false)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            // Many tasks encode side by side; threads inside one encoder
            // would only contend with them.
            .num_threads(1)
            .complexity(Complexity::Low)
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
