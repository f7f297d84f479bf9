//! Elementary-stream configurations: AAC from ADTS headers (`mp4a`/`esds`)
//! and H.264 parameter sets (`avc1`/`avcC`, parsed by `media::h264`), the
//! sample descriptions a file's `stsd` lists.

use super::*;

/// An AAC configuration as ADTS describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AudioConfig {
    /// MPEG-4 audio object type (2 = LC).
    pub(super) object_type: u8,
    pub(super) sf_index: u8,
    pub(super) channel_config: u8,
}

impl AudioConfig {
    pub(super) fn rate(&self) -> u32 {
        AAC_RATES
            .get(usize::from(self.sf_index))
            .copied()
            .unwrap_or(48_000)
    }

    pub(super) fn channels(&self) -> u16 {
        match self.channel_config {
            7 => 8,
            c => u16::from(c),
        }
    }

    /// AudioSpecificConfig (GASpecificConfig all zero).
    pub(super) fn asc(&self) -> [u8; 2] {
        [
            (self.object_type << 3) | (self.sf_index >> 1),
            ((self.sf_index & 1) << 7) | (self.channel_config << 3),
        ]
    }

    /// A 7-byte ADTS header (no CRC) for a raw frame of `raw_len` bytes.
    pub(super) fn adts_header(&self, raw_len: usize) -> [u8; 7] {
        let len = (raw_len + 7).min(0x1fff);
        [
            0xff,
            0xf1,
            ((self.object_type - 1) << 6) | (self.sf_index << 2) | (self.channel_config >> 2),
            ((self.channel_config & 3) << 6) | (len >> 11) as u8,
            (len >> 3) as u8,
            ((len as u8 & 7) << 5) | 0x1f,
            0xfc,
        ]
    }

    /// One frame's duration in 90 kHz ticks.
    pub(super) fn frame_ticks(&self) -> u64 {
        AAC_FRAME * CLOCK / u64::from(self.rate())
    }
}

pub(super) struct Adts {
    pub(super) config: AudioConfig,
    pub(super) header_len: usize,
    pub(super) frame_len: usize,
}

pub(super) enum AdtsProblem {
    Malformed,
    Unsupported(&'static str),
}

impl AdtsProblem {
    pub(super) fn at(self, segment: u64) -> PackError {
        match self {
            AdtsProblem::Malformed => PackError::BadAdts { segment },
            AdtsProblem::Unsupported(what) => PackError::UnsupportedAac { segment, what },
        }
    }
}

impl Adts {
    pub(super) fn parse(b: &[u8]) -> Result<Self, AdtsProblem> {
        let Some(h) = b.get(..7) else {
            return Err(AdtsProblem::Malformed);
        };
        if h[0] != 0xff || h[1] & 0xf6 != 0xf0 {
            return Err(AdtsProblem::Malformed);
        }
        let header_len = if h[1] & 1 == 1 { 7 } else { 9 };
        let frame_len =
            (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
        if frame_len <= header_len || frame_len > b.len() {
            return Err(AdtsProblem::Malformed);
        }
        let config = AudioConfig {
            object_type: (h[2] >> 6) + 1,
            sf_index: (h[2] >> 2) & 0x0f,
            channel_config: ((h[2] & 1) << 2) | (h[3] >> 6),
        };
        if usize::from(config.sf_index) >= AAC_RATES.len() {
            return Err(AdtsProblem::Unsupported("sampling frequency index"));
        }
        if config.channel_config == 0 {
            return Err(AdtsProblem::Unsupported("channel configuration in a PCE"));
        }
        if h[6] & 3 != 0 {
            return Err(AdtsProblem::Unsupported("several raw data blocks a frame"));
        }
        Ok(Self {
            config,
            header_len,
            frame_len,
        })
    }
}

/// What a PES payload of ADTS frames holds: (sample rate, channels,
/// frames), from the same parsing the packer uses; `None` when its first
/// frame is not a usable ADTS frame.
pub fn adts_payload_info(payload: &[u8]) -> Option<(u32, u8, u64)> {
    let first = Adts::parse(payload).ok()?;
    let rate = *AAC_RATES.get(usize::from(first.config.sf_index))?;
    let mut frames = 0;
    let mut pos = 0;
    while let Some(a) = payload.get(pos..).and_then(|b| Adts::parse(b).ok()) {
        frames += 1;
        pos += a.frame_len;
    }
    Some((rate, first.config.channel_config, frames))
}

/// One set of H.264 parameter sets: one `avc1` sample description.
#[derive(Debug)]
pub(super) struct VideoConfig {
    pub(super) sps: Vec<Vec<u8>>,
    pub(super) pps: Vec<Vec<u8>>,
    pub(super) width: u16,
    pub(super) height: u16,
    pub(super) avcc: Vec<u8>,
}

impl VideoConfig {
    pub(super) fn new(sps: &[Vec<u8>], pps: &[Vec<u8>]) -> Option<Self> {
        let first = sps.first()?;
        let info = h264::parse_sps(first)?;
        if pps.is_empty() || sps.len() > 31 || pps.len() > 255 {
            return None;
        }
        let mut avcc = vec![1];
        avcc.extend_from_slice(first.get(1..4)?);
        avcc.extend_from_slice(&[0xff, 0xe0 | sps.len() as u8]);
        for s in sps {
            avcc.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
            avcc.extend_from_slice(s);
        }
        avcc.push(pps.len() as u8);
        for p in pps {
            avcc.extend_from_slice(&u16::try_from(p.len()).ok()?.to_be_bytes());
            avcc.extend_from_slice(p);
        }
        if matches!(info.profile_idc, 100 | 110 | 122 | 144) {
            // ISO/IEC 14496-15 §5.3.3.1: chroma format and bit depths.
            avcc.extend_from_slice(&[
                0xfc | info.chroma_format_idc,
                0xf8 | info.bit_depth_luma_minus8,
                0xf8 | info.bit_depth_chroma_minus8,
                0,
            ]);
        }
        Some(Self {
            sps: sps.to_vec(),
            pps: pps.to_vec(),
            width: u16::try_from(info.width).ok()?,
            height: u16::try_from(info.height).ok()?,
            avcc,
        })
    }
}

/// Every sample description seen, by id.
#[derive(Debug, Default)]
pub(super) struct Configs {
    pub(super) video: Vec<VideoConfig>,
    pub(super) audio: Vec<AudioConfig>,
}

impl Configs {
    pub(super) fn video_desc(&mut self, sps: &[Vec<u8>], pps: &[Vec<u8>]) -> Option<u32> {
        if let Some(i) = self.video.iter().position(|c| c.sps == sps && c.pps == pps) {
            return u32::try_from(i).ok();
        }
        let c = VideoConfig::new(sps, pps)?;
        self.video.push(c);
        u32::try_from(self.video.len() - 1).ok()
    }

    pub(super) fn audio_desc(&mut self, c: AudioConfig) -> u32 {
        let i = match self.audio.iter().position(|a| *a == c) {
            Some(i) => i,
            None => {
                self.audio.push(c);
                self.audio.len() - 1
            }
        };
        i as u32
    }

    pub(super) fn audio(&self, desc: u32) -> AudioConfig {
        self.audio
            .get(desc as usize)
            .copied()
            .unwrap_or(AudioConfig {
                object_type: 2,
                sf_index: 3,
                channel_config: 2,
            })
    }
}

#[derive(Debug)]
pub(super) struct Sample {
    pub(super) kind: Kind,
    /// 90 kHz, unwrapped and rebased.
    pub(super) dts: u64,
    /// PTS − DTS.
    pub(super) cto: i32,
    pub(super) key: bool,
    /// Id in [`Configs`].
    pub(super) desc: u32,
    /// Length-prefixed NAL units, or one raw AAC frame.
    pub(super) data: Vec<u8>,
}
