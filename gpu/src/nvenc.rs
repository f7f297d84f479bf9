//! H.264 encoding on NVIDIA's hardware encoder (NVENC), found at run time.
//!
//! The NVIDIA libraries are not linked: `libnvidia-encode.so.1` and
//! `libcuda.so.1` are opened with `libloading` on first use and kept for the
//! life of the process, so a binary built with the `nvenc` feature still
//! starts, and falls back to the CPU encoder, on machines without the
//! driver. Struct layouts, GUIDs, enums and version numbers come from the
//! `nvidia-video-codec-sdk` crate's bindings to the SDK 12.1 headers, built
//! with its `ci-check` feature, which compiles them without looking for the
//! NVIDIA libraries or `nvcc`.
//!
//! [`probe`] says whether NVENC is usable here and, if not, why.
//! [`NvencEncoder`] is a [`VideoEncoder`]: High profile, P4 preset tuned
//! for low latency, CBR at the settings' bitrate with a one-second VBV,
//! an IDR every `gop_frames` frames (and on request), no B-frames, SPS and
//! PPS before every IDR, Annex-B output, BT.601 limited range signalled in
//! the VUI. Pictures are converted from I420 to NV12 (the input format every
//! NVENC generation accepts) while being copied into the encoder's own
//! input buffer; the alpha planes are ignored.
//!
//! What was verified, and where: the pure parts below (settings → NVENC
//! configuration, H.264 level choice, I420 → NV12 layout, status texts, API
//! version handling, the structures handed to the driver, and `probe` /
//! `open` on a machine without the NVIDIA driver) are unit-tested on the
//! development machine, which has no NVIDIA driver. The encode path itself
//! has not run anywhere: it needs a GPU with an NVENC engine, and none was
//! available (the data-centre H100 and H200 we could borrow have NVDEC but
//! no NVENC). It follows the SDK header's documented call sequence and
//! rests on two assumptions to check on the first NVENC machine: a locked
//! NV12 input buffer's chroma starts `pitch × height` bytes in, and the
//! device's primary CUDA context, retained but never made current, serves
//! as the floating context NVENC asks for.

use std::fmt;

use nvidia_video_codec_sdk::sys::nvEncodeAPI::{
    NVENCAPI_MAJOR_VERSION, NVENCAPI_MINOR_VERSION, NVENCSTATUS, NVENC_INFINITE_GOPLENGTH,
    NV_ENC_LEVEL, NV_ENC_PIC_TYPE,
};

use crate::cuda::DriverError;
use crate::{chroma_size, EncodeError, EncodedFrame, EncoderSettings, Picture, VideoEncoder};

mod ffi;

/// Whether NVENC can be used on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Available {
        /// The newest NVENC API the installed driver supports.
        max_api_version: ApiVersion,
        /// The CUDA device an encoder would run on (the first one).
        device_name: String,
    },
    Unavailable(Unavailable),
}

/// Looks for the NVIDIA driver, a CUDA device and an NVENC engine able to
/// encode H.264, by opening (and closing) an encode session.
pub fn probe() -> Probe {
    match ffi::Session::open() {
        Ok(session) => Probe::Available {
            max_api_version: session.max_api_version(),
            device_name: session.device_name().to_owned(),
        },
        Err(reason) => {
            tracing::debug!(%reason, "NVENC unavailable");
            Probe::Unavailable(reason)
        }
    }
}

/// Why NVENC cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The driver's libraries or CUDA, shared with NVDEC.
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(
        "the NVIDIA driver supports NVENC API {driver} at most, this build needs {required}: \
         update the driver"
    )]
    DriverTooOld {
        driver: ApiVersion,
        required: ApiVersion,
    },
    #[error("the driver's NVENC function table lacks {0}")]
    MissingFunction(&'static str),
    #[error(
        "{device} has no NVENC engine ({status}); data-centre GPUs such as the H100 and H200 \
         have none"
    )]
    NoEncoder { device: String, status: NvencStatus },
    #[error("the NVENC engine of {device} cannot encode H.264")]
    NoH264 { device: String },
    #[error("NVENC: {0}")]
    Nvenc(NvencCallError),
}

/// An NVENC API version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl ApiVersion {
    /// The version of the SDK headers this module was built against: the
    /// oldest driver interface it can talk to.
    pub const BUILT: ApiVersion = ApiVersion {
        major: NVENCAPI_MAJOR_VERSION,
        minor: NVENCAPI_MINOR_VERSION,
    };

    /// Decodes `NvEncodeAPIGetMaxSupportedVersion`'s answer: the minor
    /// version in the low four bits, the major version above them.
    pub fn from_max_supported(raw: u32) -> Self {
        Self {
            major: raw >> 4,
            minor: raw & 0xf,
        }
    }

    /// The `apiVersion` word of `NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS`
    /// (the header's `NVENCAPI_VERSION`): major in the low byte, minor in
    /// the high byte.
    pub fn to_session_word(self) -> u32 {
        self.major | (self.minor << 24)
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A status code returned by an NVENC call (`NVENCSTATUS`), kept as the
/// raw number so that codes newer than the bindings stay representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvencStatus(pub u32);

/// Names and meanings of the SDK 12.1 status codes, indexed by code.
const STATUS_TEXT: [(&str, &str); 27] = [
    ("NV_ENC_SUCCESS", "success"),
    ("NV_ENC_ERR_NO_ENCODE_DEVICE", "no encode-capable device"),
    ("NV_ENC_ERR_UNSUPPORTED_DEVICE", "the device cannot encode"),
    (
        "NV_ENC_ERR_INVALID_ENCODERDEVICE",
        "the encoder device is not valid",
    ),
    ("NV_ENC_ERR_INVALID_DEVICE", "the device is invalid"),
    (
        "NV_ENC_ERR_DEVICE_NOT_EXIST",
        "the device is gone: reopen the session",
    ),
    ("NV_ENC_ERR_INVALID_PTR", "a pointer argument is invalid"),
    (
        "NV_ENC_ERR_INVALID_EVENT",
        "the completion event is invalid",
    ),
    ("NV_ENC_ERR_INVALID_PARAM", "a parameter is invalid"),
    ("NV_ENC_ERR_INVALID_CALL", "call made out of order"),
    (
        "NV_ENC_ERR_OUT_OF_MEMORY",
        "out of memory (or out of encode sessions)",
    ),
    (
        "NV_ENC_ERR_ENCODER_NOT_INITIALIZED",
        "the encoder is not initialised",
    ),
    (
        "NV_ENC_ERR_UNSUPPORTED_PARAM",
        "a parameter is not supported",
    ),
    (
        "NV_ENC_ERR_LOCK_BUSY",
        "the output is still being written: retry",
    ),
    ("NV_ENC_ERR_NOT_ENOUGH_BUFFER", "a buffer is too small"),
    (
        "NV_ENC_ERR_INVALID_VERSION",
        "a struct version is not supported",
    ),
    ("NV_ENC_ERR_MAP_FAILED", "mapping the input resource failed"),
    (
        "NV_ENC_ERR_NEED_MORE_INPUT",
        "the encoder needs more input before it outputs",
    ),
    ("NV_ENC_ERR_ENCODER_BUSY", "the encoder is busy: retry"),
    (
        "NV_ENC_ERR_EVENT_NOT_REGISTERD",
        "the completion event is not registered",
    ),
    ("NV_ENC_ERR_GENERIC", "unknown internal error"),
    (
        "NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY",
        "feature not licensed on this system",
    ),
    ("NV_ENC_ERR_UNIMPLEMENTED", "not implemented"),
    (
        "NV_ENC_ERR_RESOURCE_REGISTER_FAILED",
        "registering the resource failed",
    ),
    (
        "NV_ENC_ERR_RESOURCE_NOT_REGISTERED",
        "the resource is not registered",
    ),
    (
        "NV_ENC_ERR_RESOURCE_NOT_MAPPED",
        "the resource is not mapped",
    ),
    (
        "NV_ENC_ERR_NEED_MORE_OUTPUT",
        "the encoder needs more output buffers",
    ),
];

impl NvencStatus {
    pub const SUCCESS: NvencStatus = NvencStatus(NVENCSTATUS::NV_ENC_SUCCESS as u32);

    /// The header's name for this code, if these bindings know it.
    pub fn name(self) -> Option<&'static str> {
        self.text().map(|(name, _)| name)
    }

    fn text(self) -> Option<(&'static str, &'static str)> {
        usize::try_from(self.0)
            .ok()
            .and_then(|index| STATUS_TEXT.get(index))
            .copied()
    }

    pub fn is(self, status: NVENCSTATUS) -> bool {
        self.0 == status as u32
    }
}

impl fmt::Display for NvencStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text() {
            Some((name, meaning)) => write!(f, "{name} ({meaning})"),
            None => write!(f, "NVENC status {} (newer than SDK 12.1)", self.0),
        }
    }
}

/// An NVENC call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvencCallError {
    pub call: &'static str,
    pub status: NvencStatus,
    /// The driver's last error string for the session; empty if it gave
    /// none.
    pub detail: String,
}

impl fmt::Display for NvencCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} returned {}", self.call, self.status)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for NvencCallError {}

impl From<NvencCallError> for EncodeError {
    fn from(error: NvencCallError) -> Self {
        EncodeError::Codec(error.to_string())
    }
}

/// An H.264 encoder session on the first CUDA device's NVENC engine.
pub struct NvencEncoder {
    plan: EncodePlan,
    session: ffi::Encoder,
}

impl NvencEncoder {
    /// Opens an encode session for `settings`. On machines without a usable
    /// NVENC this is [`EncodeError::Unavailable`] with the reason;
    /// settings NVENC cannot take are [`EncodeError::Codec`].
    pub fn open(settings: EncoderSettings) -> Result<Self, EncodeError> {
        let plan =
            EncodePlan::from_settings(&settings).map_err(|e| EncodeError::Codec(e.to_string()))?;
        let session = ffi::Encoder::open(&plan)?;
        tracing::info!(
            device = session.device_name(),
            width = plan.width,
            height = plan.height,
            fps = plan.fps,
            bitrate_bps = plan.bitrate_bps,
            level = ?plan.level,
            "NVENC H.264 encoder opened"
        );
        Ok(Self { plan, session })
    }
}

impl VideoEncoder for NvencEncoder {
    fn name(&self) -> &'static str {
        "nvenc"
    }

    fn encode(
        &mut self,
        picture: &Picture,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        if (picture.width, picture.height) != (self.plan.width, self.plan.height) {
            return Err(EncodeError::Size {
                got_w: picture.width,
                got_h: picture.height,
                want_w: self.plan.width,
                want_h: self.plan.height,
            });
        }
        let output = self.session.encode(picture, force_keyframe)?;
        if output.data.is_empty() {
            return Ok(None);
        }
        Ok(Some(EncodedFrame {
            keyframe: is_keyframe(output.picture_type),
            data: output.data,
        }))
    }
}

/// Only IDR pictures let a decoder start: NVENC's plain I pictures (which
/// this configuration does not produce) may be followed by pictures that
/// reference frames before them.
fn is_keyframe(picture_type: u32) -> bool {
    picture_type == NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_IDR as u32
}

/// Settings NVENC is not asked to encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("size {width}x{height}: 4:2:0 H.264 needs a non-zero, even width and height")]
    Size { width: u32, height: u32 },
    #[error("frame rate must be at least 1")]
    ZeroFrameRate,
    #[error("bitrate must be at least 1 bit/s")]
    ZeroBitrate,
    #[error("{width}x{height} at {fps} fps and {bitrate_bps} bit/s exceeds every H.264 level")]
    NoLevel {
        width: u32,
        height: u32,
        fps: u32,
        bitrate_bps: u32,
    },
}

/// What NVENC is configured with, derived from [`EncoderSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EncodePlan {
    width: u32,
    height: u32,
    fps: u32,
    /// Frames from one IDR to the next; [`NVENC_INFINITE_GOPLENGTH`] when
    /// the settings ask for none (IDRs then come only on request).
    gop_length: u32,
    bitrate_bps: u32,
    /// CBR buffer size, also used as the initial delay (a full buffer).
    vbv_buffer_bits: u32,
    level: NV_ENC_LEVEL,
    /// Reference frames the level's DPB holds at this picture size.
    max_ref_frames: u32,
}

impl EncodePlan {
    fn from_settings(settings: &EncoderSettings) -> Result<Self, SettingsError> {
        let EncoderSettings {
            width,
            height,
            fps,
            bitrate_bps,
            gop_frames,
        } = *settings;
        if width == 0 || height == 0 || width % 2 != 0 || height % 2 != 0 {
            return Err(SettingsError::Size { width, height });
        }
        if fps == 0 {
            return Err(SettingsError::ZeroFrameRate);
        }
        if bitrate_bps == 0 {
            return Err(SettingsError::ZeroBitrate);
        }
        // One second of stream: the output is recorded (HLS/MP4), so a
        // buffer this size costs no viewer latency and lets IDRs and scene
        // cuts keep their quality.
        let vbv_buffer_bits = bitrate_bps;
        let limits = H264Level::smallest_for(width, height, fps, bitrate_bps, vbv_buffer_bits)
            .ok_or(SettingsError::NoLevel {
                width,
                height,
                fps,
                bitrate_bps,
            })?;
        let frame_macroblocks = macroblocks(width) * macroblocks(height);
        let max_ref_frames = (limits.max_dpb_macroblocks / frame_macroblocks).min(16) as u32;
        Ok(Self {
            width,
            height,
            fps,
            gop_length: if gop_frames == 0 {
                NVENC_INFINITE_GOPLENGTH
            } else {
                gop_frames
            },
            bitrate_bps,
            vbv_buffer_bits,
            level: limits.level,
            max_ref_frames,
        })
    }
}

fn macroblocks(pixels: u32) -> u64 {
    u64::from(pixels.div_ceil(16))
}

/// One row of the H.264 level limits (ITU-T H.264 Table A-1).
#[derive(Debug, Clone, Copy)]
struct H264Level {
    level: NV_ENC_LEVEL,
    max_macroblocks_per_second: u64,
    max_frame_macroblocks: u64,
    max_dpb_macroblocks: u64,
    /// In 1000 bit/s for Baseline and Main; High allows 1.25 times this.
    max_bitrate: u64,
    /// In 1000 bits, with the same High factor.
    max_cpb: u64,
}

/// High profile's `cpbBrVclFactor` (Table A-2), per unit of the table.
const HIGH_PROFILE_BITS_PER_UNIT: u64 = 1250;

const fn level(
    level: NV_ENC_LEVEL,
    max_macroblocks_per_second: u64,
    max_frame_macroblocks: u64,
    max_dpb_macroblocks: u64,
    max_bitrate: u64,
    max_cpb: u64,
) -> H264Level {
    H264Level {
        level,
        max_macroblocks_per_second,
        max_frame_macroblocks,
        max_dpb_macroblocks,
        max_bitrate,
        max_cpb,
    }
}

/// Level 1b is left out: it only matters below QCIF.
const H264_LEVELS: [H264Level; 19] = {
    use NV_ENC_LEVEL::*;
    [
        level(NV_ENC_LEVEL_H264_1, 1_485, 99, 396, 64, 175),
        level(NV_ENC_LEVEL_H264_11, 3_000, 396, 900, 192, 500),
        level(NV_ENC_LEVEL_H264_12, 6_000, 396, 2_376, 384, 1_000),
        level(NV_ENC_LEVEL_H264_13, 11_880, 396, 2_376, 768, 2_000),
        level(NV_ENC_LEVEL_H264_2, 11_880, 396, 2_376, 2_000, 2_000),
        level(NV_ENC_LEVEL_H264_21, 19_800, 792, 4_752, 4_000, 4_000),
        level(NV_ENC_LEVEL_H264_22, 20_250, 1_620, 8_100, 4_000, 4_000),
        level(NV_ENC_LEVEL_H264_3, 40_500, 1_620, 8_100, 10_000, 10_000),
        level(NV_ENC_LEVEL_H264_31, 108_000, 3_600, 18_000, 14_000, 14_000),
        level(NV_ENC_LEVEL_H264_32, 216_000, 5_120, 20_480, 20_000, 20_000),
        level(NV_ENC_LEVEL_H264_4, 245_760, 8_192, 32_768, 20_000, 25_000),
        level(NV_ENC_LEVEL_H264_41, 245_760, 8_192, 32_768, 50_000, 62_500),
        level(NV_ENC_LEVEL_H264_42, 522_240, 8_704, 34_816, 50_000, 62_500),
        level(
            NV_ENC_LEVEL_H264_5,
            589_824,
            22_080,
            110_400,
            135_000,
            135_000,
        ),
        level(
            NV_ENC_LEVEL_H264_51,
            983_040,
            36_864,
            184_320,
            240_000,
            240_000,
        ),
        level(
            NV_ENC_LEVEL_H264_52,
            2_073_600,
            36_864,
            184_320,
            240_000,
            240_000,
        ),
        level(
            NV_ENC_LEVEL_H264_60,
            4_177_920,
            139_264,
            696_320,
            240_000,
            240_000,
        ),
        level(
            NV_ENC_LEVEL_H264_61,
            8_355_840,
            139_264,
            696_320,
            480_000,
            480_000,
        ),
        level(
            NV_ENC_LEVEL_H264_62,
            16_711_680,
            139_264,
            696_320,
            800_000,
            800_000,
        ),
    ]
};

impl H264Level {
    /// The lowest High-profile level whose limits the stream fits in, so
    /// that every decoder able to play the stream is allowed to.
    fn smallest_for(
        width: u32,
        height: u32,
        fps: u32,
        bitrate_bps: u32,
        vbv_buffer_bits: u32,
    ) -> Option<H264Level> {
        let (width_mbs, height_mbs) = (macroblocks(width), macroblocks(height));
        let frame_mbs = width_mbs * height_mbs;
        H264_LEVELS.iter().copied().find(|limits| {
            // A.3.1: neither dimension may exceed sqrt(8 × MaxFS).
            let max_side_mbs_squared = 8 * limits.max_frame_macroblocks;
            frame_mbs <= limits.max_frame_macroblocks
                && width_mbs * width_mbs <= max_side_mbs_squared
                && height_mbs * height_mbs <= max_side_mbs_squared
                && frame_mbs * u64::from(fps) <= limits.max_macroblocks_per_second
                && u64::from(bitrate_bps) <= limits.max_bitrate * HIGH_PROFILE_BITS_PER_UNIT
                && u64::from(vbv_buffer_bits) <= limits.max_cpb * HIGH_PROFILE_BITS_PER_UNIT
        })
    }
}

/// A picture that cannot be laid out in the encoder's input buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Nv12Error {
    #[error("{plane} plane has {got} bytes, a {width}x{height} picture needs {want}")]
    Plane {
        plane: &'static str,
        width: u32,
        height: u32,
        got: usize,
        want: usize,
    },
    #[error("surface pitch {pitch} is narrower than the picture ({width} bytes)")]
    Pitch { pitch: usize, width: usize },
    #[error("surface has {got} bytes, pitch {pitch} × {rows} rows needs {want}")]
    Surface {
        pitch: usize,
        rows: usize,
        got: usize,
        want: usize,
    },
}

/// Bytes of an NV12 surface of `height` rows at `pitch`: the luma rows,
/// then the interleaved chroma rows directly after them.
fn nv12_len(pitch: usize, height: u32) -> usize {
    pitch * nv12_rows(height)
}

fn nv12_rows(height: u32) -> usize {
    let (_, chroma_height) = chroma_size(1, height);
    height as usize + chroma_height as usize
}

/// Copies an I420 picture into an NV12 surface with rows `pitch` bytes
/// apart: luma as is, then U and V interleaved (U first) from byte
/// `pitch × height` on. Bytes past each row's end are left untouched.
fn write_nv12(picture: &Picture, surface: &mut [u8], pitch: usize) -> Result<(), Nv12Error> {
    let (width, height) = (picture.width as usize, picture.height as usize);
    let (chroma_width, chroma_height) = chroma_size(picture.width, picture.height);
    let (chroma_width, chroma_height) = (chroma_width as usize, chroma_height as usize);
    for (plane, bytes, want) in [
        ("Y", &picture.y, width * height),
        ("U", &picture.u, chroma_width * chroma_height),
        ("V", &picture.v, chroma_width * chroma_height),
    ] {
        if bytes.len() != want {
            return Err(Nv12Error::Plane {
                plane,
                width: picture.width,
                height: picture.height,
                got: bytes.len(),
                want,
            });
        }
    }
    if pitch < width.max(2 * chroma_width) {
        return Err(Nv12Error::Pitch {
            pitch,
            width: width.max(2 * chroma_width),
        });
    }
    let want = nv12_len(pitch, picture.height);
    if surface.len() < want {
        return Err(Nv12Error::Surface {
            pitch,
            rows: nv12_rows(picture.height),
            got: surface.len(),
            want,
        });
    }
    if width == 0 {
        return Ok(());
    }
    let (luma, chroma) = surface.split_at_mut(pitch * height);
    for (dst, src) in luma.chunks_mut(pitch).zip(picture.y.chunks_exact(width)) {
        dst[..width].copy_from_slice(src);
    }
    let chroma_rows = picture
        .u
        .chunks_exact(chroma_width)
        .zip(picture.v.chunks_exact(chroma_width));
    for (dst, (u_row, v_row)) in chroma.chunks_mut(pitch).zip(chroma_rows) {
        for (pair, (&u, &v)) in dst[..2 * chroma_width]
            .chunks_exact_mut(2)
            .zip(u_row.iter().zip(v_row))
        {
            pair[0] = u;
            pair[1] = v;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nvidia_video_codec_sdk::sys::nvEncodeAPI as sys;

    use super::*;

    fn settings(width: u32, height: u32, fps: u32, bitrate_bps: u32) -> EncoderSettings {
        EncoderSettings {
            width,
            height,
            fps,
            bitrate_bps,
            gop_frames: 2 * fps,
        }
    }

    fn level_of(width: u32, height: u32, fps: u32, bitrate_bps: u32) -> Option<NV_ENC_LEVEL> {
        EncodePlan::from_settings(&settings(width, height, fps, bitrate_bps))
            .ok()
            .map(|plan| plan.level)
    }

    #[test]
    fn plan_maps_settings_to_cbr_gop_and_one_second_vbv() {
        let plan = EncodePlan::from_settings(&EncoderSettings {
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_bps: 2_500_000,
            gop_frames: 60,
        });
        assert_eq!(
            plan,
            Ok(EncodePlan {
                width: 1280,
                height: 720,
                fps: 30,
                gop_length: 60,
                bitrate_bps: 2_500_000,
                vbv_buffer_bits: 2_500_000,
                level: NV_ENC_LEVEL::NV_ENC_LEVEL_H264_31,
                // 3.1's DPB is 18000 MBs, a 720p frame 3600.
                max_ref_frames: 5,
            })
        );
    }

    #[test]
    fn plan_without_gop_leaves_idrs_to_requests() {
        let mut s = settings(640, 360, 15, 600_000);
        s.gop_frames = 0;
        let plan = EncodePlan::from_settings(&s).map(|p| p.gop_length);
        assert_eq!(plan, Ok(NVENC_INFINITE_GOPLENGTH));
    }

    #[test]
    fn plan_rejects_what_nvenc_cannot_take() {
        for (w, h) in [(0, 720), (1280, 0), (1279, 720), (1280, 719)] {
            assert_eq!(
                EncodePlan::from_settings(&settings(w, h, 30, 1_000_000)),
                Err(SettingsError::Size {
                    width: w,
                    height: h
                })
            );
        }
        assert_eq!(
            EncodePlan::from_settings(&settings(1280, 720, 0, 1_000_000)),
            Err(SettingsError::ZeroFrameRate)
        );
        assert_eq!(
            EncodePlan::from_settings(&settings(1280, 720, 30, 0)),
            Err(SettingsError::ZeroBitrate)
        );
        assert!(matches!(
            EncodePlan::from_settings(&settings(8192, 8192, 30, 10_000_000)),
            Err(SettingsError::NoLevel { .. })
        ));
    }

    #[test]
    fn level_follows_resolution_and_frame_rate() {
        use NV_ENC_LEVEL::*;
        let cases = [
            (176, 144, 15, 64_000, NV_ENC_LEVEL_H264_1),
            (320, 240, 15, 300_000, NV_ENC_LEVEL_H264_12),
            (640, 360, 30, 800_000, NV_ENC_LEVEL_H264_3),
            (1280, 720, 30, 2_500_000, NV_ENC_LEVEL_H264_31),
            (1280, 720, 60, 4_000_000, NV_ENC_LEVEL_H264_32),
            (1920, 1080, 30, 5_000_000, NV_ENC_LEVEL_H264_4),
            (1920, 1080, 60, 8_000_000, NV_ENC_LEVEL_H264_42),
            (3840, 2160, 30, 20_000_000, NV_ENC_LEVEL_H264_51),
            (3840, 2160, 60, 40_000_000, NV_ENC_LEVEL_H264_52),
        ];
        for (w, h, fps, bps, want) in cases {
            assert_eq!(level_of(w, h, fps, bps), Some(want), "{w}x{h}@{fps}");
        }
    }

    #[test]
    fn level_rises_with_bitrate_using_high_profile_limits() {
        use NV_ENC_LEVEL::*;
        // 3.1 allows 14 Mbit/s × 1.25 = 17.5 Mbit/s in High profile.
        assert_eq!(
            level_of(1280, 720, 30, 17_500_000),
            Some(NV_ENC_LEVEL_H264_31)
        );
        assert_eq!(
            level_of(1280, 720, 30, 17_500_001),
            Some(NV_ENC_LEVEL_H264_32)
        );
        assert_eq!(
            level_of(1920, 1080, 30, 30_000_000),
            Some(NV_ENC_LEVEL_H264_41)
        );
    }

    #[test]
    fn level_limits_each_side_not_only_the_area() {
        // 256×4 macroblocks fit level 3.1's frame size (3600) but not its
        // longest side (sqrt(8 × 3600) ≈ 169 MBs); level 4's is 256.
        assert_eq!(
            level_of(4096, 64, 30, 1_000_000),
            Some(NV_ENC_LEVEL::NV_ENC_LEVEL_H264_4)
        );
    }

    #[test]
    fn level_table_is_ordered_and_names_h264_levels() {
        for pair in H264_LEVELS.windows(2) {
            let (lower, higher) = (pair[0].level as u32, pair[1].level as u32);
            assert!(lower > 0 && lower < higher, "{:?}", pair[1].level);
            assert!(pair[0].max_macroblocks_per_second <= pair[1].max_macroblocks_per_second);
            assert!(pair[0].max_frame_macroblocks <= pair[1].max_frame_macroblocks);
            assert!(pair[0].max_bitrate <= pair[1].max_bitrate);
        }
        for limits in H264_LEVELS {
            assert!(format!("{:?}", limits.level).starts_with("NV_ENC_LEVEL_H264_"));
            // So every plan has at least one reference frame.
            assert!(limits.max_dpb_macroblocks >= limits.max_frame_macroblocks);
        }
    }

    fn numbered_picture(width: u32, height: u32) -> Picture {
        let (cw, ch) = chroma_size(width, height);
        Picture {
            width,
            height,
            y: (0..width * height).map(|i| i as u8).collect(),
            u: (0..cw * ch).map(|i| 100 + i as u8).collect(),
            v: (0..cw * ch).map(|i| 200 + i as u8).collect(),
            alpha: None,
        }
    }

    #[test]
    fn nv12_keeps_luma_rows_and_interleaves_chroma_at_pitch() {
        let picture = numbered_picture(4, 4);
        let pitch = 6;
        let mut surface = vec![0xEE; nv12_len(pitch, 4)];
        assert_eq!(surface.len(), 36);
        assert_eq!(write_nv12(&picture, &mut surface, pitch), Ok(()));
        #[rustfmt::skip]
        let want: [u8; 36] = [
            0, 1, 2, 3, 0xEE, 0xEE,
            4, 5, 6, 7, 0xEE, 0xEE,
            8, 9, 10, 11, 0xEE, 0xEE,
            12, 13, 14, 15, 0xEE, 0xEE,
            100, 200, 101, 201, 0xEE, 0xEE,
            102, 202, 103, 203, 0xEE, 0xEE,
        ];
        assert_eq!(surface, want);
    }

    #[test]
    fn nv12_rejects_inconsistent_planes_and_small_surfaces() {
        let mut picture = numbered_picture(4, 4);
        let mut surface = vec![0; nv12_len(4, 4)];
        assert_eq!(write_nv12(&picture, &mut surface, 4), Ok(()));
        assert!(matches!(
            write_nv12(&picture, &mut surface, 3),
            Err(Nv12Error::Pitch { pitch: 3, width: 4 })
        ));
        assert!(matches!(
            write_nv12(&picture, &mut surface[..23], 4),
            Err(Nv12Error::Surface {
                got: 23,
                want: 24,
                ..
            })
        ));
        picture.v.pop();
        assert!(matches!(
            write_nv12(&picture, &mut surface, 4),
            Err(Nv12Error::Plane {
                plane: "V",
                got: 3,
                want: 4,
                ..
            })
        ));
    }

    #[test]
    fn status_names_match_the_bindings() {
        use NVENCSTATUS::*;
        let all = [
            NV_ENC_SUCCESS,
            NV_ENC_ERR_NO_ENCODE_DEVICE,
            NV_ENC_ERR_UNSUPPORTED_DEVICE,
            NV_ENC_ERR_INVALID_ENCODERDEVICE,
            NV_ENC_ERR_INVALID_DEVICE,
            NV_ENC_ERR_DEVICE_NOT_EXIST,
            NV_ENC_ERR_INVALID_PTR,
            NV_ENC_ERR_INVALID_EVENT,
            NV_ENC_ERR_INVALID_PARAM,
            NV_ENC_ERR_INVALID_CALL,
            NV_ENC_ERR_OUT_OF_MEMORY,
            NV_ENC_ERR_ENCODER_NOT_INITIALIZED,
            NV_ENC_ERR_UNSUPPORTED_PARAM,
            NV_ENC_ERR_LOCK_BUSY,
            NV_ENC_ERR_NOT_ENOUGH_BUFFER,
            NV_ENC_ERR_INVALID_VERSION,
            NV_ENC_ERR_MAP_FAILED,
            NV_ENC_ERR_NEED_MORE_INPUT,
            NV_ENC_ERR_ENCODER_BUSY,
            NV_ENC_ERR_EVENT_NOT_REGISTERD,
            NV_ENC_ERR_GENERIC,
            NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY,
            NV_ENC_ERR_UNIMPLEMENTED,
            NV_ENC_ERR_RESOURCE_REGISTER_FAILED,
            NV_ENC_ERR_RESOURCE_NOT_REGISTERED,
            NV_ENC_ERR_RESOURCE_NOT_MAPPED,
            NV_ENC_ERR_NEED_MORE_OUTPUT,
        ];
        assert_eq!(all.len(), STATUS_TEXT.len());
        for status in all {
            let code = NvencStatus(status as u32);
            assert_eq!(code.name(), Some(format!("{status:?}").as_str()));
            assert!(code.is(status));
        }
    }

    #[test]
    fn status_text_names_the_code_and_its_meaning() {
        assert_eq!(
            NvencStatus(1).to_string(),
            "NV_ENC_ERR_NO_ENCODE_DEVICE (no encode-capable device)"
        );
        assert_eq!(
            NvencStatus(27).to_string(),
            "NVENC status 27 (newer than SDK 12.1)"
        );
        assert_eq!(NvencStatus(u32::MAX).name(), None);
        let mut error = NvencCallError {
            call: "nvEncInitializeEncoder",
            status: NvencStatus(8),
            detail: "bad level".into(),
        };
        assert_eq!(
            EncodeError::from(error.clone()).to_string(),
            "encoder: nvEncInitializeEncoder returned NV_ENC_ERR_INVALID_PARAM \
             (a parameter is invalid): bad level"
        );
        error.detail.clear();
        assert_eq!(
            error.to_string(),
            "nvEncInitializeEncoder returned NV_ENC_ERR_INVALID_PARAM (a parameter is invalid)"
        );
    }

    #[test]
    fn api_versions_decode_pack_and_compare() {
        // Driver 530+ answers 0xC1 for SDK 12.1.
        assert_eq!(
            ApiVersion::from_max_supported(0xC1),
            ApiVersion {
                major: 12,
                minor: 1
            }
        );
        assert_eq!(ApiVersion::from_max_supported(0xC1), ApiVersion::BUILT);
        assert_eq!(ApiVersion::BUILT.to_session_word(), sys::NVENCAPI_VERSION);
        assert_eq!(ApiVersion::BUILT.to_session_word(), 0x0100_000C);
        assert!(ApiVersion::from_max_supported(0xC0) < ApiVersion::BUILT);
        assert!(ApiVersion::from_max_supported(0xB1) < ApiVersion::BUILT);
        assert!(ApiVersion::from_max_supported(0xD0) > ApiVersion::BUILT);
        assert_eq!(ApiVersion::BUILT.to_string(), "12.1");
    }

    #[test]
    fn struct_versions_are_those_of_the_sdk_12_1_header() {
        // NVENCAPI_STRUCT_VERSION(v) = NVENCAPI_VERSION | v << 16 | 7 << 28,
        // some with bit 31 set too; written out here so that a bindings
        // update that changes what the driver is told shows up.
        let packed = |v: u32| ApiVersion::BUILT.to_session_word() | (v << 16) | (7 << 28);
        let with_bit_31 = |v: u32| packed(v) | (1 << 31);
        assert_eq!(packed(2), sys::NV_ENCODE_API_FUNCTION_LIST_VER);
        assert_eq!(packed(2), 0x7102_000C);
        assert_eq!(packed(1), sys::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS_VER);
        assert_eq!(with_bit_31(4), sys::NV_ENC_PRESET_CONFIG_VER);
        assert_eq!(with_bit_31(8), sys::NV_ENC_CONFIG_VER);
        assert_eq!(with_bit_31(6), sys::NV_ENC_INITIALIZE_PARAMS_VER);
        assert_eq!(packed(1), sys::NV_ENC_CREATE_INPUT_BUFFER_VER);
        assert_eq!(packed(1), sys::NV_ENC_CREATE_BITSTREAM_BUFFER_VER);
        assert_eq!(packed(1), sys::NV_ENC_LOCK_INPUT_BUFFER_VER);
        assert_eq!(with_bit_31(6), sys::NV_ENC_PIC_PARAMS_VER);
        assert_eq!(with_bit_31(6), 0xF106_000C);
        assert_eq!(with_bit_31(1), sys::NV_ENC_LOCK_BITSTREAM_VER);
    }

    #[test]
    fn only_idr_pictures_are_keyframes() {
        use NV_ENC_PIC_TYPE::*;
        assert!(is_keyframe(NV_ENC_PIC_TYPE_IDR as u32));
        for other in [
            NV_ENC_PIC_TYPE_P,
            NV_ENC_PIC_TYPE_I,
            NV_ENC_PIC_TYPE_INTRA_REFRESH,
            NV_ENC_PIC_TYPE_UNKNOWN,
        ] {
            assert!(!is_keyframe(other as u32), "{other:?}");
        }
    }

    #[test]
    fn open_checks_settings_before_looking_for_the_driver() {
        let result = NvencEncoder::open(settings(1279, 720, 30, 1_000_000));
        assert!(
            matches!(&result, Err(EncodeError::Codec(text)) if text.contains("1279x720")),
            "{:?}",
            result.err()
        );
    }
}
