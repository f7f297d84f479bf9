//! What a subscription delivers: one encoded frame with both its clocks.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The three tracks a TRTC user can publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    MainVideo,
    AuxVideo,
}

impl TrackKind {
    pub fn label(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::MainVideo => "main_video",
            TrackKind::AuxVideo => "aux_video",
        }
    }

    pub fn is_video(self) -> bool {
        !matches!(self, TrackKind::Audio)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    H264,
    Opus,
}

/// One H.264 access unit (Annex-B) or one Opus packet.
#[derive(Debug, Clone)]
pub struct MediaFrame {
    pub codec: Codec,
    pub data: Arc<[u8]>,
    /// H.264: an IDR access unit (decodable on its own). Opus: always true.
    pub keyframe: bool,
    /// RTP timestamp extended to 64 bits (wrap-arounds counted).
    pub rtp_time: u64,
    /// 90 000 for video, 48 000 for Opus.
    pub clock_rate: u32,
    /// Sender wall-clock time of this frame from the latest RTCP sender
    /// report (`ntp + (rtp - sr_rtp) / clock_rate`); `None` before the first SR.
    pub ntp_time: Option<SystemTime>,
    /// The NTP time stamped on that sender report: each report has its own,
    /// so two reports that map RTP time alike are still told apart (the
    /// recording timeline takes a second report as confirmation of the
    /// first). `None` before the first SR.
    pub report_stamp: Option<SystemTime>,
    /// When the first packet of this frame arrived here.
    pub received_at: Instant,
    /// Server wall-clock time of arrival (for BeginTimeStamp and file names).
    pub received_wall: SystemTime,
    /// False when packets were lost since the previous frame.
    pub contiguous: bool,
}
