//! Synthetic media for the WHIP test publisher: a moving, labelled test
//! pattern encoded as H.264 and a sine tone encoded as Opus.
//!
//! # Contract
//!
//! - **Sans-IO and clock-free.** Neither source sends anything or reads a
//!   clock. [`VideoSource::next_frame`] renders and encodes the picture for
//!   the media time it is given; the caller paces frames in real time (or
//!   not at all, in tests and benchmarks). [`AudioSource::next_frame`]
//!   produces the next 20 ms of tone; its timestamp is the count of samples
//!   produced so far.
//! - **Encode once, send many.** Outputs are plain owned byte buffers with
//!   RTP-clock timestamps, so one source can feed any number of peers.
//! - **Identifiable picture.** Every frame carries the publisher's label and
//!   an `HH:MM:SS.mmm` clock of the media time in a small corner plate, plus
//!   motion derived from the media time (see [`Pattern`]), so a recording
//!   shows who published it, when each frame was captured, and where frames
//!   were dropped.
//! - **Decodable from any keyframe.** Every IDR access unit carries SPS and
//!   PPS in-band, so a peer that joins late (or asks for a keyframe with a
//!   PLI, see [`VideoSource::force_keyframe`]) can start decoding there.
//!
//! The picture buffer is allocated once per [`VideoSource`] and repainted in
//! place; steady-state cost per frame is one render (a few row copies and
//! fills) and one encode.

mod font;
mod pattern;
#[cfg(test)]
mod tests;

use std::f64::consts::TAU;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, SpsPpsStrategy, UsageType, VuiConfig,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;
use openh264::Timestamp;

pub use crate::domain::params::Rgb;
pub use kiroku_gpu::Yuv;

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// Parses `#rrggbb` or `rrggbb` (hex, either case).
impl FromStr for Rgb {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix('#').unwrap_or(s);
        let bad = || SourceError::InvalidColor(s.to_owned());
        if hex.len() != 6 || !hex.is_ascii() {
            return Err(bad());
        }
        let channel = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
        Ok(Self(channel(0)?, channel(2)?, channel(4)?))
    }
}

/// What the picture shows besides the label/clock plate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Pattern {
    /// Colour bars scrolling sideways, a bottom quarter in the base colour,
    /// and a box bouncing over the whole picture.
    #[default]
    Bars,
    /// The whole frame in the base colour except the small corner plate,
    /// whose clock and sliding marker still move every frame. Made for
    /// tests that locate each publisher's tile in a mixed recording by
    /// colour.
    Solid,
}

/// Parses `bars` or `solid` (case-insensitive).
impl FromStr for Pattern {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "bars" => Ok(Self::Bars),
            "solid" => Ok(Self::Solid),
            _ => Err(SourceError::UnknownPattern(s.to_owned())),
        }
    }
}

/// Video source settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoConfig {
    /// Picture width in pixels: even, 16..=3840.
    pub width: u32,
    /// Picture height in pixels: even, 16..=3840 (and at most 3840x2160 or
    /// 2160x3840 overall, the OpenH264 limit).
    pub height: u32,
    /// Frame rate the encoder budgets bits for, 1..=120. The caller is
    /// expected to call [`VideoSource::next_frame`] at this rate.
    pub fps: u32,
    /// Target bitrate, 10 kbit/s..=100 Mbit/s.
    pub bitrate_bps: u32,
    /// Publisher name drawn in the picture. Characters outside the built-in
    /// font show as boxes; what does not fit the width is cut off.
    pub label: String,
    /// Base colour identifying this publisher.
    pub color: Rgb,
    /// Picture content.
    pub pattern: Pattern,
    /// Distance between periodic IDR frames, in frames (1 = all IDR).
    pub keyframe_interval_frames: u32,
    /// A/V sync marks: every frame whose media time falls in the first
    /// frame interval of each period is painted white (the flash that goes
    /// with [`AudioConfig::sync_marks`]' beep).
    pub sync_marks: Option<Duration>,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            width: 640,
            height: 360,
            fps: 15,
            bitrate_bps: 600_000,
            label: "kiroku".to_owned(),
            color: Rgb(0x20, 0x60, 0xc0),
            pattern: Pattern::Bars,
            keyframe_interval_frames: 30,
            sync_marks: None,
        }
    }
}

impl VideoConfig {
    /// Checks every field; [`VideoSource::new`] calls this first.
    pub fn validate(&self) -> Result<(), SourceError> {
        let (w, h) = (self.width, self.height);
        let side_ok = |n: u32| n % 2 == 0 && (16..=3840).contains(&n);
        // OpenH264 refuses frames above level 5.2 sizes (3840x2160 either
        // way round); catching it here gives the error at configuration
        // time instead of on the first frame.
        if !side_ok(w) || !side_ok(h) || w.min(h) > 2160 {
            return Err(SourceError::InvalidDimensions {
                width: w,
                height: h,
            });
        }
        if !(1..=120).contains(&self.fps) {
            return Err(SourceError::InvalidFrameRate { fps: self.fps });
        }
        if !(10_000..=100_000_000).contains(&self.bitrate_bps) {
            return Err(SourceError::InvalidVideoBitrate {
                bps: self.bitrate_bps,
            });
        }
        if self.keyframe_interval_frames == 0 {
            return Err(SourceError::InvalidKeyframeInterval);
        }
        Ok(())
    }
}

/// Audio source settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioConfig {
    /// Sample rate; only 48000 (the Opus RTP clock) is supported.
    pub sample_rate: u32,
    /// 1 (mono) or 2 (stereo, the same tone in both channels).
    pub channels: u8,
    /// Tone frequency, above 0 and below the Nyquist frequency.
    pub frequency_hz: f32,
    /// Opus target bitrate, 6..=510 kbit/s.
    pub bitrate_bps: u32,
    /// A/V sync marks: the first [`BEEP`] of every period is played
    /// [`BEEP_GAIN`] times louder (the beep that goes with the video flash).
    pub sync_marks: Option<Duration>,
}

/// How long a sync-mark beep lasts.
pub const BEEP: Duration = Duration::from_millis(100);
/// How much louder the beep is than the tone (to about -1.5 dBFS).
pub const BEEP_GAIN: f64 = 3.4;

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            sample_rate: OPUS_RATE,
            channels: 1,
            frequency_hz: 440.0,
            bitrate_bps: 64_000,
            sync_marks: None,
        }
    }
}

impl AudioConfig {
    /// Checks every field; [`AudioSource::new`] calls this first.
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.sample_rate != OPUS_RATE {
            return Err(SourceError::InvalidSampleRate {
                rate: self.sample_rate,
            });
        }
        if !(1..=2).contains(&self.channels) {
            return Err(SourceError::InvalidChannels {
                channels: self.channels,
            });
        }
        let nyquist = self.sample_rate as f32 / 2.0;
        // NaN fails both comparisons, so it is rejected too.
        if !(self.frequency_hz > 0.0 && self.frequency_hz < nyquist) {
            return Err(SourceError::InvalidFrequency {
                hz: self.frequency_hz,
            });
        }
        if !(6_000..=510_000).contains(&self.bitrate_bps) {
            return Err(SourceError::InvalidAudioBitrate {
                bps: self.bitrate_bps,
            });
        }
        Ok(())
    }
}

/// One encoded picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedVideoFrame {
    /// One H.264 access unit in Annex-B form (`00 00 00 01` start codes).
    /// On IDR frames SPS and PPS come first.
    pub data: Vec<u8>,
    /// Whether this is an IDR picture, i.e. decodable on its own.
    pub keyframe: bool,
    /// Presentation time on the 90 kHz RTP video clock, from the media time.
    pub pts_90khz: u64,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
}

/// One encoded audio packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedAudioFrame {
    /// One Opus packet holding 20 ms.
    pub data: Vec<u8>,
    /// Timestamp of the first sample on the 48 kHz RTP audio clock.
    pub pts_48khz: u64,
    /// Samples per channel in the packet (960).
    pub samples: u32,
}

/// Errors of the synthetic media source.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum SourceError {
    /// Width or height out of range or odd.
    #[error(
        "video size {width}x{height} is invalid: width and height must be even and within 16..=3840, and the frame at most 3840x2160 (or 2160x3840)"
    )]
    InvalidDimensions {
        /// The configured width.
        width: u32,
        /// The configured height.
        height: u32,
    },
    /// Frame rate out of range.
    #[error("video frame rate {fps} fps is outside 1..=120")]
    InvalidFrameRate {
        /// The configured frame rate.
        fps: u32,
    },
    /// Video bitrate out of range.
    #[error("video bitrate {bps} bit/s is outside 10000..=100000000")]
    InvalidVideoBitrate {
        /// The configured bitrate.
        bps: u32,
    },
    /// Keyframe interval of zero.
    #[error("keyframe interval must be at least 1 frame")]
    InvalidKeyframeInterval,
    /// Sample rate other than 48 kHz.
    #[error("audio sample rate {rate} Hz is not supported: Opus over RTP uses 48000")]
    InvalidSampleRate {
        /// The configured sample rate.
        rate: u32,
    },
    /// Channel count other than 1 or 2.
    #[error("audio channel count {channels} is not supported: use 1 or 2")]
    InvalidChannels {
        /// The configured channel count.
        channels: u8,
    },
    /// Tone frequency not representable at the sample rate.
    #[error("tone frequency {hz} Hz must be above 0 and below half the sample rate")]
    InvalidFrequency {
        /// The configured frequency.
        hz: f32,
    },
    /// Audio bitrate out of the Opus range.
    #[error("audio bitrate {bps} bit/s is outside 6000..=510000")]
    InvalidAudioBitrate {
        /// The configured bitrate.
        bps: u32,
    },
    /// A pattern name that [`Pattern::from_str`] does not know.
    #[error("unknown pattern {0:?}: expected \"bars\" or \"solid\"")]
    UnknownPattern(String),
    /// A colour that [`Rgb::from_str`] cannot parse.
    #[error("invalid colour {0:?}: expected #rrggbb")]
    InvalidColor(String),
    /// OpenH264 refused to initialise or to encode.
    #[error("H.264 encoder failed")]
    H264(#[source] openh264::Error),
    /// The encoder returned no picture although frame skipping is off.
    #[error("H.264 encoder produced no picture for frame {frame}")]
    NoPicture {
        /// Index of the frame, counting from 0.
        frame: u64,
    },
    /// An IDR came out without SPS/PPS and none had been seen to repeat.
    #[error("H.264 keyframe without SPS/PPS and none seen earlier to repeat")]
    MissingParameterSets,
    /// libopus refused to initialise or to encode.
    #[error("Opus encoder failed")]
    Opus(#[source] opus::Error),
}

impl SourceError {
    /// Whether the error comes from the configuration (fix the settings)
    /// rather than from a codec at run time.
    pub fn is_config(&self) -> bool {
        !matches!(
            self,
            Self::H264(_) | Self::NoPicture { .. } | Self::MissingParameterSets | Self::Opus(_)
        )
    }
}

/// NAL unit types this module cares about (H.264 table 7-1).
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// Splits an Annex-B byte stream into NAL units, each returned with its own
/// start code (3 or 4 bytes). A zero byte just before `00 00 01` belongs to
/// that start code: a NAL unit never ends in a zero byte.
fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    fn find_start(data: &[u8], from: usize) -> Option<usize> {
        let at = from + data.get(from..)?.windows(3).position(|w| w == [0, 0, 1])?;
        Some(if at > from && data[at - 1] == 0 {
            at - 1
        } else {
            at
        })
    }
    let mut next = find_start(data, 0);
    std::iter::from_fn(move || {
        let start = next?;
        let payload = start
            + if data.get(start + 2) == Some(&1) {
                3
            } else {
                4
            };
        next = find_start(data, payload);
        Some(&data[start..next.unwrap_or(data.len())])
    })
}

/// The NAL unit type of one start-code-prefixed NAL unit, if it has one.
fn nal_type(nal: &[u8]) -> Option<u8> {
    let zeros = nal.iter().take_while(|b| **b == 0).count();
    if zeros < 2 || nal.get(zeros) != Some(&1) {
        return None;
    }
    nal.get(zeros + 1).map(|header| header & 0x1f)
}

/// The latest SPS and PPS, kept so they can be repeated in front of an IDR
/// that lacks them.
///
/// OpenH264 writes both in front of every IDR it produces (checked by the
/// tests), so in practice this only records them; the repair path exists
/// because the RTP side depends on this property and a library upgrade
/// should not silently break late joiners.
#[derive(Debug, Default)]
struct ParameterSets {
    sps: Vec<u8>,
    pps: Vec<u8>,
}

impl ParameterSets {
    /// Records parameter sets found in `au` and, if `au` holds an IDR slice
    /// without both, prepends the recorded ones. Returns whether `au` is an
    /// IDR access unit.
    fn ensure_in_idr(&mut self, au: &mut Vec<u8>) -> Result<bool, SourceError> {
        let (mut has_sps, mut has_pps, mut idr) = (false, false, false);
        for nal in nal_units(au) {
            match nal_type(nal) {
                Some(NAL_SPS) => {
                    has_sps = true;
                    self.sps.clear();
                    self.sps.extend_from_slice(nal);
                }
                Some(NAL_PPS) => {
                    has_pps = true;
                    self.pps.clear();
                    self.pps.extend_from_slice(nal);
                }
                Some(NAL_IDR) => idr = true,
                _ => {}
            }
        }
        if idr && !(has_sps && has_pps) {
            if self.sps.is_empty() || self.pps.is_empty() {
                return Err(SourceError::MissingParameterSets);
            }
            let mut fixed = Vec::with_capacity(self.sps.len() + self.pps.len() + au.len());
            fixed.extend_from_slice(&self.sps);
            fixed.extend_from_slice(&self.pps);
            // Drop a lone SPS or PPS the AU already had: the pair we prepend
            // is complete and consistent.
            for nal in nal_units(au) {
                if !matches!(nal_type(nal), Some(NAL_SPS | NAL_PPS)) {
                    fixed.extend_from_slice(nal);
                }
            }
            *au = fixed;
        }
        Ok(idr)
    }
}

/// Renders the test pattern and encodes it as constrained-baseline H.264.
pub struct VideoSource {
    cfg: VideoConfig,
    renderer: pattern::Renderer,
    encoder: Encoder,
    /// Frames encoded so far.
    frames: u64,
    /// Frames since the last IDR, counting the IDR as 1; `None` before the
    /// first frame (which OpenH264 always makes an IDR).
    since_idr: Option<u32>,
    /// Set by [`Self::force_keyframe`], consumed by the next frame.
    idr_requested: bool,
    parameter_sets: ParameterSets,
    /// Size of the previous access unit, to size the next one's buffer in
    /// one allocation.
    last_au_len: usize,
}

impl VideoSource {
    /// Validates `cfg` and sets up the renderer and encoder.
    pub fn new(cfg: VideoConfig) -> Result<Self, SourceError> {
        cfg.validate()?;
        let encoder_cfg = EncoderConfig::new()
            .profile(Profile::Baseline)
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(cfg.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(cfg.fps as f32))
            // One access unit per call, always: a publisher paced by the
            // caller must not go silent because the rate control chose to
            // drop a frame. OpenH264 warns on stderr at init that it then
            // "can't control" the bitrate; it still steers QP towards the
            // target, and this simple picture undershoots it anyway
            // (about 200 kbit/s at 640x360@15 for a 600 kbit/s target).
            .skip_frames(false)
            // IDRs are placed by this module (periodic and on request);
            // the encoder's own period and scene-cut IDRs are turned off
            // so keyframe positions are exactly predictable.
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .scene_change_detect(false)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            // Single-threaded: many sources run side by side, and threads
            // inside OpenH264 would only contend with them.
            .num_threads(1)
            .complexity(Complexity::Low)
            // Signal the matrix the renderer actually uses.
            .vui(VuiConfig::bt601());
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), encoder_cfg)
            .map_err(SourceError::H264)?;
        crate::media::openh264_log::route_encoder_log(&mut encoder);
        let renderer =
            pattern::Renderer::new(cfg.width, cfg.height, cfg.pattern, cfg.color, &cfg.label);
        Ok(Self {
            cfg,
            renderer,
            encoder,
            frames: 0,
            since_idr: None,
            idr_requested: false,
            parameter_sets: ParameterSets::default(),
            last_au_len: 0,
        })
    }

    /// The configuration this source was built with.
    pub fn config(&self) -> &VideoConfig {
        &self.cfg
    }

    /// Frames produced so far.
    pub fn frames_encoded(&self) -> u64 {
        self.frames
    }

    /// `profile_idc`, constraint flags and `level_idc` from the SPS (the
    /// three bytes of SDP `profile-level-id`), once the first frame has been
    /// encoded. OpenH264 picks the level from size, rate and bitrate.
    pub fn profile_level_id(&self) -> Option<[u8; 3]> {
        let sps = &self.parameter_sets.sps;
        let zeros = sps.iter().take_while(|b| **b == 0).count();
        // Start code (zeros + 0x01), NAL header, then the three bytes.
        let bytes = sps.get(zeros + 2..zeros + 5)?;
        Some([bytes[0], bytes[1], bytes[2]])
    }

    /// Makes the next frame an IDR (with SPS/PPS), e.g. on a PLI or FIR
    /// from a peer. The periodic keyframe cadence restarts from it.
    pub fn force_keyframe(&mut self) {
        self.idr_requested = true;
    }

    /// Renders and encodes the picture for `media_time`.
    ///
    /// Motion, clock and timestamps all come from `media_time`, so call it
    /// with the capture time of each frame (typically `n / fps`). Times
    /// need not be evenly spaced; the encoder's rate control assumes
    /// roughly [`VideoConfig::fps`].
    pub fn next_frame(&mut self, media_time: Duration) -> Result<EncodedVideoFrame, SourceError> {
        self.renderer.render(media_time);
        if let Some(period) = self.cfg.sync_marks.filter(|p| !p.is_zero()) {
            // Callers pass `n / fps` truncated (to µs or ns): allow half a
            // millisecond so frame 1 never counts as inside the first interval.
            let interval = 1_000_000_000 / u128::from(self.cfg.fps.max(1));
            let into = media_time.as_nanos() % period.as_nanos();
            if into + 500_000 < interval {
                self.renderer.paint_flash();
            }
        }

        let want_idr = match self.since_idr {
            None => false,
            Some(n) => self.idr_requested || n >= self.cfg.keyframe_interval_frames,
        };
        if want_idr {
            self.encoder.force_intra_frame();
        }
        self.idr_requested = false;

        let canvas = self.renderer.canvas();
        let (w, h) = (canvas.width() as usize, canvas.height() as usize);
        let yuv = YUVSlices::new(canvas.planes(), (w, h), (w, w / 2, w / 2));
        // OpenH264 converts its timestamp to a signed 64-bit count and
        // panics beyond that; no real stream gets there, but clamp anyway.
        let ms = u64::try_from(media_time.as_millis())
            .map_or(i64::MAX as u64, |ms| ms.min(i64::MAX as u64));
        let bitstream = self
            .encoder
            .encode_at(&yuv, Timestamp::from_millis(ms))
            .map_err(SourceError::H264)?;
        if bitstream.frame_type() == FrameType::Skip {
            return Err(SourceError::NoPicture { frame: self.frames });
        }
        let mut data = Vec::with_capacity(self.last_au_len + self.last_au_len / 4 + 64);
        bitstream.write_vec(&mut data);
        if data.is_empty() {
            return Err(SourceError::NoPicture { frame: self.frames });
        }
        let keyframe = self.parameter_sets.ensure_in_idr(&mut data)?;

        self.last_au_len = data.len();
        self.frames += 1;
        self.since_idr = Some(match self.since_idr {
            Some(n) if !keyframe => n.saturating_add(1),
            _ => 1,
        });
        // Round to the nearest tick: callers typically pass `n / fps`
        // truncated to whole nanoseconds, which must still land on n * 6000
        // (at 15 fps), not one tick short.
        let pts = (media_time.as_nanos() * 9 + 50_000) / 100_000;
        Ok(EncodedVideoFrame {
            data,
            keyframe,
            pts_90khz: u64::try_from(pts).unwrap_or(u64::MAX),
            width: self.cfg.width,
            height: self.cfg.height,
        })
    }
}

/// The only sample rate supported: Opus's RTP clock.
const OPUS_RATE: u32 = 48_000;
/// 20 ms at 48 kHz, the usual WebRTC Opus packet duration.
const FRAME_SAMPLES: u32 = 960;
/// -12 dBFS peak: clearly audible, far from clipping after coding.
const TONE_AMPLITUDE: f64 = 0.251_188_643_150_958; // 10^(-12/20)
/// libopus's recommended maximum packet size.
const MAX_OPUS_PACKET: usize = 4000;

/// Generates a continuous sine tone and encodes it as Opus, 20 ms a packet.
pub struct AudioSource {
    cfg: AudioConfig,
    encoder: opus::Encoder,
    /// Phase of the next sample in radians, kept in `0..TAU`. Carried across
    /// packets so the tone has no click at packet boundaries.
    phase: f64,
    /// Phase advance per sample.
    step: f64,
    /// Samples per channel produced so far.
    samples: u64,
    /// Interleaved PCM for one packet, reused.
    pcm: Vec<f32>,
    /// Encoder output scratch, reused.
    packet: Vec<u8>,
}

impl AudioSource {
    /// Validates `cfg` and sets up the Opus encoder.
    pub fn new(cfg: AudioConfig) -> Result<Self, SourceError> {
        cfg.validate()?;
        let channels = if cfg.channels == 1 {
            opus::Channels::Mono
        } else {
            opus::Channels::Stereo
        };
        let mut encoder = opus::Encoder::new(cfg.sample_rate, channels, opus::Application::Audio)
            .map_err(SourceError::Opus)?;
        // Validated to 6000..=510000 above, so it fits an i32.
        let bitrate = i32::try_from(cfg.bitrate_bps).unwrap_or(i32::MAX);
        encoder
            .set_bitrate(opus::Bitrate::Bits(bitrate))
            .map_err(SourceError::Opus)?;
        let step = TAU * f64::from(cfg.frequency_hz) / f64::from(cfg.sample_rate);
        let pcm = vec![0.0; FRAME_SAMPLES as usize * usize::from(cfg.channels)];
        Ok(Self {
            cfg,
            encoder,
            phase: 0.0,
            step,
            samples: 0,
            pcm,
            packet: vec![0; MAX_OPUS_PACKET],
        })
    }

    /// The configuration this source was built with.
    pub fn config(&self) -> &AudioConfig {
        &self.cfg
    }

    /// Generates and encodes the next 20 ms of tone.
    pub fn next_frame(&mut self) -> Result<EncodedAudioFrame, SourceError> {
        self.fill_pcm();
        let len = self
            .encoder
            .encode_float(&self.pcm, &mut self.packet)
            .map_err(SourceError::Opus)?;
        let pts_48khz = self.samples;
        self.samples += u64::from(FRAME_SAMPLES);
        Ok(EncodedAudioFrame {
            data: self.packet[..len].to_vec(),
            pts_48khz,
            samples: FRAME_SAMPLES,
        })
    }

    /// Writes the next packet's worth of tone into `self.pcm`.
    fn fill_pcm(&mut self) {
        let channels = usize::from(self.cfg.channels);
        let rate = u64::from(self.cfg.sample_rate);
        let marks = self.cfg.sync_marks.filter(|p| !p.is_zero()).map(|p| {
            (
                p.as_nanos() as u64 * rate / 1_000_000_000,
                BEEP.as_millis() as u64 * rate / 1000,
            )
        });
        for (n, frame) in (self.samples..).zip(self.pcm.chunks_exact_mut(channels)) {
            let gain = match marks {
                Some((period, beep)) if n % period < beep => BEEP_GAIN,
                _ => 1.0,
            };
            let sample = (self.phase.sin() * TONE_AMPLITUDE * gain) as f32;
            frame.fill(sample);
            // Wrapping keeps the phase small, so f64 precision does not
            // decay over hours of tone.
            self.phase += self.step;
            if self.phase >= TAU {
                self.phase -= TAU;
            }
        }
    }
}
