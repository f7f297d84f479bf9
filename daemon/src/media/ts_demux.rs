//! A sans-IO MPEG-TS demuxer for the segments kiroku writes (the inverse of
//! [`super::ts`]): PAT/PMT, one H.264 and one AAC (ADTS) PID, PES with
//! 33-bit timestamps. Damage (lost sync, partial packets, transport and
//! continuity errors, malformed tables or PES) never stops it: the PES it
//! touches is reported lost and the problem returned as a [`TsError`].
//!
//! Used by the MP4 packer (`media::mp4`), `kiroku merge` and every test
//! that needs to read TS back ([`demux_segment`]). Out of scope: other
//! stream types, multiple programs, scrambling.

use crate::media::ts::{crc32_mpeg2, PID_AUDIO, PID_VIDEO};

pub(super) const TS_PACKET: usize = 188;
const TS_SYNC: u8 = 0x47;
const PID_PAT: u16 = 0;
const STREAM_TYPE_H264: u8 = 0x1b;
const STREAM_TYPE_AAC_ADTS: u8 = 0x0f;

/// Damage found in a segment; the PES it touched is reported lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TsError {
    #[error("segment {segment}: no MPEG-TS packets")]
    NotTs { segment: u64 },
    #[error("segment {segment}: TS sync lost at byte {offset}")]
    LostSync { segment: u64, offset: usize },
    #[error("segment {segment}: ends with a partial TS packet of {bytes} bytes")]
    PartialPacket { segment: u64, bytes: usize },
    #[error("segment {segment}: transport error flagged on PID {pid:#x}")]
    TransportError { segment: u64, pid: u16 },
    #[error("segment {segment}: continuity error on PID {pid:#x}")]
    Continuity { segment: u64, pid: u16 },
    #[error("segment {segment}: malformed adaptation field on PID {pid:#x}")]
    BadAdaptationField { segment: u64, pid: u16 },
    #[error("segment {segment}: bad PAT/PMT on PID {pid:#x}")]
    BadTable { segment: u64, pid: u16 },
    #[error("segment {segment}: malformed PES on PID {pid:#x}")]
    BadPes { segment: u64, pid: u16 },
    #[error("segment {segment}: incomplete PES on PID {pid:#x}")]
    IncompletePes { segment: u64, pid: u16 },
}

/// One elementary-stream unit of a TS segment, as written: an H.264
/// access unit (Annex-B) or one or more ADTS frames, with its raw 33-bit
/// timestamps. For tools that re-time or re-encode a recording before
/// packing it (`kiroku merge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsUnit {
    pub video: bool,
    pub pts: u64,
    pub dts: u64,
    pub payload: Vec<u8>,
}

/// The units of one TS segment in the order they end; damage is skipped
/// and returned beside them.
pub fn demux_segment(ts: &[u8]) -> (Vec<TsUnit>, Vec<TsError>) {
    let mut errors = Vec::new();
    let units = Demuxer::new()
        .segment(ts, 0, &mut errors)
        .into_iter()
        .filter_map(|d| match d {
            Demuxed::Pes(p) => Some(TsUnit {
                video: p.kind == Kind::Video,
                pts: p.pts,
                dts: p.dts,
                payload: p.payload,
            }),
            Demuxed::Lost(_) => None,
        })
        .collect();
    (units, errors)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Video = 0,
    Audio = 1,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Audio => "audio",
        }
    }
}

#[derive(Debug)]
pub(super) struct Pes {
    pub(super) kind: Kind,
    pub(super) pts: u64,
    pub(super) dts: u64,
    pub(super) payload: Vec<u8>,
}

#[derive(Debug)]
pub(super) enum Demuxed {
    Pes(Pes),
    /// A PES of this kind was lost.
    Lost(Kind),
}

impl Demuxed {
    pub(super) fn kind(&self) -> Kind {
        match self {
            Demuxed::Pes(p) => p.kind,
            Demuxed::Lost(k) => *k,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct PesBuf {
    pub(super) data: Vec<u8>,
    pub(super) cc: Option<u8>,
    pub(super) open: bool,
    pub(super) broken: bool,
}

pub(super) struct Demuxer {
    pub(super) pmt_pid: Option<u16>,
    /// Video and audio PIDs, from the newest PMT.
    pub(super) pids: [Option<u16>; 2],
    pub(super) bufs: [PesBuf; 2],
}

impl Demuxer {
    pub(super) fn new() -> Self {
        Self {
            pmt_pid: None,
            pids: [Some(PID_VIDEO), Some(PID_AUDIO)],
            bufs: Default::default(),
        }
    }

    pub(super) fn slot(&self, pid: u16) -> Option<usize> {
        self.pids.iter().position(|p| *p == Some(pid))
    }

    /// One segment's PES, in the order they end. PES never span segments.
    pub(super) fn segment(
        &mut self,
        ts: &[u8],
        segment: u64,
        found: &mut Vec<TsError>,
    ) -> Vec<Demuxed> {
        self.bufs = Default::default();
        let mut out = Vec::new();
        // Counted apart: a segment without a single packet is just NotTs.
        let mut errors = Vec::new();
        let mut lost_tail = [false; 2];
        let mut pos = 0;
        let mut packets = 0u64;
        while pos < ts.len() {
            if ts[pos] != TS_SYNC {
                errors.push(TsError::LostSync {
                    segment,
                    offset: pos,
                });
                for b in &mut self.bufs {
                    b.broken |= b.open;
                }
                match resync(ts, pos) {
                    Some(next) => pos = next,
                    None => {
                        pos = ts.len();
                        break;
                    }
                }
            }
            let Some(packet) = ts.get(pos..pos + TS_PACKET) else {
                break;
            };
            packets += 1;
            self.packet(packet, segment, &mut errors, &mut out);
            pos += TS_PACKET;
        }
        if packets == 0 {
            found.push(TsError::NotTs { segment });
            return Vec::new();
        }
        if let Some(rest) = ts.get(pos..).filter(|r| !r.is_empty()) {
            // A partial packet: what it carried is lost.
            errors.push(TsError::PartialPacket {
                segment,
                bytes: rest.len(),
            });
            match rest.get(1..3) {
                Some(h) => {
                    let pid = (u16::from(h[0] & 0x1f) << 8) | u16::from(h[1]);
                    if let Some(i) = self.slot(pid) {
                        if h[0] & 0x40 != 0 {
                            lost_tail[i] = true;
                        } else {
                            self.bufs[i].broken |= self.bufs[i].open;
                        }
                    }
                }
                None => {
                    for b in &mut self.bufs {
                        b.broken |= b.open;
                    }
                }
            }
        }
        for (i, lost) in lost_tail.into_iter().enumerate() {
            self.flush(i, segment, &mut errors, &mut out);
            if lost {
                out.push(Demuxed::Lost(kind_of(i)));
            }
        }
        found.append(&mut errors);
        out
    }

    pub(super) fn packet(
        &mut self,
        p: &[u8],
        segment: u64,
        errors: &mut Vec<TsError>,
        out: &mut Vec<Demuxed>,
    ) {
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let pusi = p[1] & 0x40 != 0;
        let afc = (p[3] >> 4) & 3;
        let cc = p[3] & 0x0f;
        let slot = self.slot(pid);
        if p[1] & 0x80 != 0 {
            errors.push(TsError::TransportError { segment, pid });
            if let Some(i) = slot {
                self.bufs[i].broken |= self.bufs[i].open;
            }
            return;
        }
        let mut start = 4;
        let mut discontinuity = false;
        if afc & 2 != 0 {
            let len = usize::from(p[4]);
            if (afc == 2 && len != 183) || (afc == 3 && len > 182) {
                errors.push(TsError::BadAdaptationField { segment, pid });
                if let Some(i) = slot {
                    self.bufs[i].broken |= self.bufs[i].open;
                }
                return;
            }
            discontinuity = len > 0 && p[5] & 0x80 != 0;
            start = 5 + len;
        }
        if afc & 1 == 0 {
            return;
        }
        let payload = &p[start..];
        if pid == PID_PAT {
            if pusi {
                match parse_pat(payload) {
                    Some(pmt) => self.pmt_pid = Some(pmt),
                    None => errors.push(TsError::BadTable { segment, pid }),
                }
            }
            return;
        }
        if Some(pid) == self.pmt_pid {
            if pusi {
                match parse_pmt(payload) {
                    Some(pids) => self.pids = pids,
                    None => errors.push(TsError::BadTable { segment, pid }),
                }
            }
            return;
        }
        let Some(i) = slot else {
            return;
        };
        let b = &mut self.bufs[i];
        if let Some(prev) = b.cc {
            if cc == prev && !discontinuity {
                return; // a duplicate packet
            }
            if cc != (prev + 1) & 0x0f && !discontinuity {
                errors.push(TsError::Continuity { segment, pid });
                b.broken |= b.open;
            }
        }
        b.cc = Some(cc);
        if pusi {
            self.flush(i, segment, errors, out);
            let b = &mut self.bufs[i];
            b.open = true;
            b.broken = false;
        } else if !b.open {
            // The middle of a PES whose start was lost.
            b.open = true;
            b.broken = true;
        }
        let b = &mut self.bufs[i];
        if !b.broken {
            b.data.extend_from_slice(payload);
        }
    }

    pub(super) fn flush(
        &mut self,
        i: usize,
        segment: u64,
        errors: &mut Vec<TsError>,
        out: &mut Vec<Demuxed>,
    ) {
        let kind = kind_of(i);
        let pid = self.pids[i].unwrap_or(0);
        let b = &mut self.bufs[i];
        if !b.open {
            return;
        }
        b.open = false;
        let data = std::mem::take(&mut b.data);
        if std::mem::take(&mut b.broken) {
            errors.push(TsError::IncompletePes { segment, pid });
            out.push(Demuxed::Lost(kind));
            return;
        }
        match parse_pes(data, kind) {
            Ok(p) => out.push(Demuxed::Pes(p)),
            Err(incomplete) => {
                errors.push(if incomplete {
                    TsError::IncompletePes { segment, pid }
                } else {
                    TsError::BadPes { segment, pid }
                });
                out.push(Demuxed::Lost(kind));
            }
        }
    }
}

pub(super) fn kind_of(i: usize) -> Kind {
    if i == 0 {
        Kind::Video
    } else {
        Kind::Audio
    }
}

/// The next plausible packet start after `from`: a sync byte followed by
/// another one packet later (or a last whole packet).
pub(super) fn resync(ts: &[u8], from: usize) -> Option<usize> {
    (from + 1..ts.len()).find(|&j| {
        ts[j] == TS_SYNC
            && match ts.get(j + TS_PACKET) {
                Some(&b) => b == TS_SYNC,
                None => j + TS_PACKET == ts.len(),
            }
    })
}

/// A PSI section in one packet: checked table id, length and CRC.
pub(super) fn section(payload: &[u8], table_id: u8) -> Option<&[u8]> {
    let pointer = usize::from(*payload.first()?);
    let s = payload.get(1 + pointer..)?;
    if *s.first()? != table_id {
        return None;
    }
    let len = (usize::from(*s.get(1)? & 0x0f) << 8) | usize::from(*s.get(2)?);
    let s = s.get(..3 + len)?;
    (len >= 9 && crc32_mpeg2(s) == 0).then_some(s)
}

/// The PID of the first program's PMT.
pub(super) fn parse_pat(payload: &[u8]) -> Option<u16> {
    let s = section(payload, 0x00)?;
    s.get(8..s.len() - 4)?
        .chunks_exact(4)
        .find(|e| e[0] != 0 || e[1] != 0)
        .map(|e| (u16::from(e[2] & 0x1f) << 8) | u16::from(e[3]))
}

/// The H.264 and AAC PIDs a PMT declares.
pub(super) fn parse_pmt(payload: &[u8]) -> Option<[Option<u16>; 2]> {
    let s = section(payload, 0x02)?;
    let info = (usize::from(*s.get(10)? & 0x0f) << 8) | usize::from(*s.get(11)?);
    let mut es = s.get(12 + info..s.len() - 4)?;
    let mut pids = [None; 2];
    while es.len() >= 5 {
        let pid = (u16::from(es[1] & 0x1f) << 8) | u16::from(es[2]);
        let len = (usize::from(es[3] & 0x0f) << 8) | usize::from(es[4]);
        match es[0] {
            STREAM_TYPE_H264 => {
                pids[0].get_or_insert(pid);
            }
            STREAM_TYPE_AAC_ADTS => {
                pids[1].get_or_insert(pid);
            }
            _ => {}
        }
        es = es.get(5 + len..)?;
    }
    Some(pids)
}

pub(super) fn pes_timestamp(b: &[u8]) -> Option<u64> {
    let b = b.get(..5)?;
    if b[0] & 1 == 0 || b[2] & 1 == 0 || b[4] & 1 == 0 {
        return None;
    }
    Some(
        (u64::from((b[0] >> 1) & 7) << 30)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1),
    )
}

/// A reassembled PES; `Err(true)` when it is shorter than its header says.
pub(super) fn parse_pes(mut data: Vec<u8>, kind: Kind) -> Result<Pes, bool> {
    if data.len() < 9 || data[..3] != [0, 0, 1] {
        return Err(data.len() < 9);
    }
    let len = usize::from(u16::from_be_bytes([data[4], data[5]]));
    if len != 0 {
        if len < 3 {
            return Err(false);
        }
        if data.len() < 6 + len {
            return Err(true);
        }
        data.truncate(6 + len);
    }
    if data[6] & 0xc0 != 0x80 {
        return Err(false);
    }
    let header_end = 9 + usize::from(data[8]);
    if header_end > data.len() {
        return Err(true);
    }
    let (pts, dts) = match data[7] >> 6 {
        2 if header_end >= 14 => {
            let pts = pes_timestamp(&data[9..]).ok_or(false)?;
            (pts, pts)
        }
        3 if header_end >= 19 => (
            pes_timestamp(&data[9..]).ok_or(false)?,
            pes_timestamp(&data[14..]).ok_or(false)?,
        ),
        _ => return Err(false),
    };
    data.drain(..header_end);
    Ok(Pes {
        kind,
        pts,
        dts,
        payload: data,
    })
}
