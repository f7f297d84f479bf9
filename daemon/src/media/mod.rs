//! Media formats: bitstream parsing now; TS/HLS/MP4 muxing later.

pub mod aac;
pub mod h264;
pub mod h264_codec;
pub mod mp4;
pub mod rtp_time;
pub mod ts;
pub mod ts_demux;
