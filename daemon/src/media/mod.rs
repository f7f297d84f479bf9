//! Media formats, pure: H.264 Annex-B and SPS parsing (`h264`, the one SPS
//! parser), RTP timestamp unwrapping (`rtp_time`), Opus → AAC (`aac`), the
//! MPEG-TS muxer (`ts`) and its demuxer (`ts_demux`), and the MP4 packer
//! (`mp4`: faststart MP4/M4A/ADTS from recorded TS). `h264_codec` wraps
//! OpenH264 for decoding pictures and encoding the mixed canvas;
//! `openh264_log` routes OpenH264's messages into `tracing`.
//!
//! ```text
//!   H.264 AUs + ADTS ──ts──▶ TS segments ──ts_demux──▶ PES ──mp4──▶ MP4 / M4A / .aac
//! ```
//!
//! Out of scope: files, sockets and clocks (callers hand bytes in and take
//! bytes out), HLS naming and playlists (`hls`), and any codec other than
//! H.264 and AAC/Opus.

pub mod aac;
pub mod h264;
pub mod h264_codec;
pub mod mp4;
pub mod openh264_log;
pub mod rtp_time;
pub mod ts;
pub mod ts_demux;
