//! A sans-IO MPEG-TS muxer for HLS segments: H.264 and AAC (ADTS).
//!
//! Written here because the crates on offer either write no PCR
//! (`mpeg-ts-core`) or leave PES packetisation, AUD insertion and PCR
//! placement to the caller anyway (`mpeg2ts`); what HLS needs is ~300
//! lines we can test exhaustively.
//!
//! Layout: PAT (PID 0) → PMT (PID 0x1000) → video PID 0x100 (stream_type
//! 0x1b) and/or audio PID 0x101 (0x0f, ADTS AAC). Each segment starts with
//! PAT+PMT ([`TsMuxer::write_tables`]). Every video access unit starts with
//! an AUD (added when missing, as Apple's HLS spec asks); key frames carry
//! `random_access_indicator`. The PCR rides on the video PID (audio PID
//! for audio-only streams), at least every 100 ms, `PCR_LEAD_90K` before
//! the DTS. Continuity counters run per PID across segments.
//!
//! Timestamps are 90 kHz ticks on the caller's timeline (already unwrapped
//! to 64 bits); they are written modulo 2^33 as the format requires.

const PACKET: usize = 188;
pub const PID_PMT: u16 = 0x1000;
pub const PID_VIDEO: u16 = 0x100;
pub const PID_AUDIO: u16 = 0x101;
const STREAM_TYPE_H264: u8 = 0x1b;
const STREAM_TYPE_AAC: u8 = 0x0f;
/// The PCR runs this far ahead of the DTS, giving decoders a buffer.
pub const PCR_LEAD_90K: u64 = 9_000;
const PCR_INTERVAL_90K: u64 = 9_000;
const AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xf0];

/// CRC-32/MPEG-2 of PSI sections.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[derive(Debug, Clone)]
pub struct TsMuxer {
    video: bool,
    audio: bool,
    cc: [u8; 4], // PAT, PMT, video, audio
    last_pcr: Option<u64>,
}

impl TsMuxer {
    pub fn new(video: bool, audio: bool) -> Self {
        Self {
            video,
            audio,
            cc: [0; 4],
            last_pcr: None,
        }
    }

    /// Changes the elementary streams declared from the next
    /// [`TsMuxer::write_tables`] on (a merged stream whose video starts or
    /// stops; continuity counters carry on).
    pub fn set_streams(&mut self, video: bool, audio: bool) {
        if (video, audio) != (self.video, self.audio) {
            self.video = video;
            self.audio = audio;
            self.last_pcr = None;
        }
    }

    fn pcr_pid(&self) -> u16 {
        if self.video {
            PID_VIDEO
        } else {
            PID_AUDIO
        }
    }

    fn next_cc(&mut self, pid: u16) -> u8 {
        let i = match pid {
            0 => 0,
            PID_PMT => 1,
            PID_VIDEO => 2,
            _ => 3,
        };
        let c = self.cc[i];
        self.cc[i] = (c + 1) & 0x0f;
        c
    }

    fn section_packet(&mut self, out: &mut Vec<u8>, pid: u16, section: &[u8]) {
        let start = out.len();
        let cc = self.next_cc(pid);
        out.extend_from_slice(&[0x47, 0x40 | (pid >> 8) as u8, pid as u8, 0x10 | cc, 0x00]);
        out.extend_from_slice(section);
        out.resize(start + PACKET, 0xff);
    }

    /// PAT and PMT: at the start of every segment.
    pub fn write_tables(&mut self, out: &mut Vec<u8>) {
        // PAT: one program (1) → PMT PID.
        let mut pat = vec![0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00, 0x01];
        pat.extend_from_slice(&[0xe0 | (PID_PMT >> 8) as u8, PID_PMT as u8]);
        pat.extend_from_slice(&crc32_mpeg2(&pat).to_be_bytes());
        self.section_packet(out, 0, &pat);

        let mut es = Vec::new();
        if self.video {
            es.extend_from_slice(&[
                STREAM_TYPE_H264,
                0xe0 | (PID_VIDEO >> 8) as u8,
                PID_VIDEO as u8,
                0xf0,
                0x00,
            ]);
        }
        if self.audio {
            es.extend_from_slice(&[
                STREAM_TYPE_AAC,
                0xe0 | (PID_AUDIO >> 8) as u8,
                PID_AUDIO as u8,
                0xf0,
                0x00,
            ]);
        }
        let section_len = 9 + es.len() + 4;
        let pcr = self.pcr_pid();
        let mut pmt = vec![
            0x02,
            0xb0 | (section_len >> 8) as u8,
            section_len as u8,
            0x00,
            0x01,
            0xc1,
            0x00,
            0x00,
        ];
        pmt.extend_from_slice(&[0xe0 | (pcr >> 8) as u8, pcr as u8, 0xf0, 0x00]);
        pmt.extend_from_slice(&es);
        pmt.extend_from_slice(&crc32_mpeg2(&pmt).to_be_bytes());
        self.section_packet(out, PID_PMT, &pmt);
    }

    /// One H.264 access unit (Annex-B).
    pub fn write_video(
        &mut self,
        out: &mut Vec<u8>,
        pts: u64,
        dts: u64,
        keyframe: bool,
        access_unit: &[u8],
    ) {
        let has_aud = crate::media::h264::nal_units(access_unit)
            .next()
            .map(crate::media::h264::nal_type)
            == Some(crate::media::h264::NAL_AUD);
        let mut payload = Vec::with_capacity(access_unit.len() + 6);
        if !has_aud {
            payload.extend_from_slice(&AUD);
        }
        payload.extend_from_slice(access_unit);
        let pes = pes(0xe0, pts, Some(dts), &payload, false);
        self.packetize(out, PID_VIDEO, &pes, keyframe, dts);
    }

    /// One or more ADTS AAC frames starting at `pts`.
    pub fn write_audio(&mut self, out: &mut Vec<u8>, pts: u64, adts: &[u8]) {
        let pes = pes(0xc0, pts, None, adts, true);
        self.packetize(out, PID_AUDIO, &pes, !self.video, pts);
    }

    fn packetize(
        &mut self,
        out: &mut Vec<u8>,
        pid: u16,
        pes: &[u8],
        random_access: bool,
        dts: u64,
    ) {
        let want_pcr = pid == self.pcr_pid()
            && self.last_pcr.is_none_or(|p| {
                dts.saturating_sub(p) >= PCR_INTERVAL_90K || dts < p || random_access
            });
        let mut rest = pes;
        let mut first = true;
        while !rest.is_empty() {
            let start = out.len();
            let cc = self.next_cc(pid);
            let pusi = if first { 0x40 } else { 0x00 };
            out.extend_from_slice(&[0x47, pusi | (pid >> 8) as u8, pid as u8, 0]);
            // Adaptation field: PCR / random access on the first packet,
            // stuffing on the last.
            let mut af: Vec<u8> = Vec::new();
            if first && (want_pcr || random_access) {
                let mut flags = 0u8;
                if random_access {
                    flags |= 0x40;
                }
                af.push(0); // flags placeholder
                if want_pcr {
                    flags |= 0x10;
                    let pcr = dts.saturating_sub(PCR_LEAD_90K) & ((1 << 33) - 1);
                    self.last_pcr = Some(dts);
                    af.extend_from_slice(&[
                        (pcr >> 25) as u8,
                        (pcr >> 17) as u8,
                        (pcr >> 9) as u8,
                        (pcr >> 1) as u8,
                        ((pcr & 1) << 7) as u8 | 0x7e,
                        0x00,
                    ]);
                }
                af[0] = flags;
            }
            let header_room = PACKET - 4;
            let af_total = if af.is_empty() { 0 } else { 1 + af.len() };
            let space = header_room - af_total;
            if rest.len() < space {
                // Stuff the adaptation field so the payload ends the packet.
                let stuffing = space - rest.len();
                if af.is_empty() {
                    // An adaptation field of `stuffing` bytes in total.
                    if stuffing == 1 {
                        // Just the length byte: adaptation_field_length = 0.
                        af_marker(out, start, &[]);
                    } else {
                        let mut body = vec![0u8];
                        body.resize(stuffing - 1, 0xff);
                        af_marker(out, start, &body);
                    }
                } else {
                    af.resize(af.len() + stuffing, 0xff);
                    af_marker(out, start, &af);
                }
            } else if !af.is_empty() {
                af_marker(out, start, &af);
            } else {
                out[start + 3] |= 0x10; // payload only
            }
            out[start + 3] |= cc;
            let take = PACKET - (out.len() - start);
            out.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            first = false;
        }
    }
}

/// Writes an adaptation field (length + body) and marks the header
/// "adaptation field + payload".
fn af_marker(out: &mut Vec<u8>, start: usize, body: &[u8]) {
    out[start + 3] |= 0x30;
    out.push(body.len() as u8);
    out.extend_from_slice(body);
}

fn timestamp(marker: u8, t: u64) -> [u8; 5] {
    let t = t & ((1 << 33) - 1);
    [
        (marker << 4) | (((t >> 30) as u8 & 0x07) << 1) | 1,
        (t >> 22) as u8,
        (((t >> 15) as u8) << 1) | 1,
        (t >> 7) as u8,
        ((t as u8) << 1) | 1,
    ]
}

fn pes(stream_id: u8, pts: u64, dts: Option<u64>, payload: &[u8], bounded: bool) -> Vec<u8> {
    let dts = dts.filter(|d| *d != pts);
    let header_data = if dts.is_some() { 10 } else { 5 };
    let mut v = Vec::with_capacity(payload.len() + 19);
    v.extend_from_slice(&[0, 0, 1, stream_id]);
    let len = 3 + header_data + payload.len();
    // Video PES may be unbounded (length 0); audio is bounded when it fits.
    let field = if bounded && len <= 0xffff {
        len as u16
    } else {
        0
    };
    v.extend_from_slice(&field.to_be_bytes());
    v.push(0x80);
    v.push(if dts.is_some() { 0xc0 } else { 0x80 });
    v.push(header_data as u8);
    match dts {
        Some(d) => {
            v.extend_from_slice(&timestamp(0x3, pts));
            v.extend_from_slice(&timestamp(0x1, d));
        }
        None => v.extend_from_slice(&timestamp(0x2, pts)),
    }
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Minimal demuxer for checking our own output: per-PID payloads
    /// reassembled into PES, continuity and sizes checked. Kept apart from
    /// `media::ts_demux` on purpose: the muxer's wire format is judged by a
    /// reader that shares none of the project demuxer's code, and this one
    /// sees what the demuxer hides (PCRs, every continuity counter).
    fn demux(ts: &[u8]) -> (Vec<(u16, Vec<u8>)>, Vec<u64>) {
        assert_eq!(ts.len() % PACKET, 0, "whole packets");
        let mut cc: std::collections::HashMap<u16, u8> = Default::default();
        let mut pes: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut pcrs = Vec::new();
        for p in ts.chunks(PACKET) {
            assert_eq!(p[0], 0x47);
            let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
            let pusi = p[1] & 0x40 != 0;
            let afc = (p[3] >> 4) & 3;
            let c = p[3] & 0x0f;
            if let Some(prev) = cc.insert(pid, c) {
                assert_eq!(c, (prev + 1) & 0x0f, "continuity on PID {pid:#x}");
            }
            let mut i = 4;
            if afc & 2 != 0 {
                let len = p[4] as usize;
                if len > 0 && p[5] & 0x10 != 0 {
                    let b = &p[6..12];
                    let base = (u64::from(b[0]) << 25)
                        | (u64::from(b[1]) << 17)
                        | (u64::from(b[2]) << 9)
                        | (u64::from(b[3]) << 1)
                        | (u64::from(b[4]) >> 7);
                    pcrs.push(base);
                }
                i = 5 + len;
            }
            if afc & 1 == 0 || pid == 0 || pid == PID_PMT {
                continue;
            }
            if pusi {
                pes.push((pid, Vec::new()));
            }
            pes.last_mut()
                .expect("PES starts with PUSI")
                .1
                .extend_from_slice(&p[i..]);
        }
        (pes, pcrs)
    }

    fn pts_of(pes: &[u8]) -> u64 {
        let b = &pes[9..14];
        (u64::from(b[0] >> 1 & 7) << 30)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1)
    }

    #[test]
    fn tables_have_valid_crcs() {
        let mut m = TsMuxer::new(true, true);
        let mut out = Vec::new();
        m.write_tables(&mut out);
        assert_eq!(out.len(), 2 * PACKET);
        for p in out.chunks(PACKET) {
            let len = ((usize::from(p[6]) & 0x0f) << 8) | usize::from(p[7]);
            let section = &p[5..8 + len];
            assert_eq!(crc32_mpeg2(section), 0, "CRC over section incl. CRC is 0");
        }
        assert_eq!(
            crc32_mpeg2(b"123456789"),
            0x0376_e6e7,
            "CRC-32/MPEG-2 check value"
        );
    }

    #[test]
    fn video_and_audio_round_trip_with_timestamps_aud_and_pcr() {
        let mut m = TsMuxer::new(true, true);
        let mut out = Vec::new();
        m.write_tables(&mut out);
        let big: Vec<u8> = [&[0u8, 0, 0, 1, 0x65][..], &vec![0xab; 5000]].concat();
        let small = [0u8, 0, 0, 1, 0x41, 1, 2, 3];
        let base = 1u64 << 32; // beyond 2^32: written modulo 2^33
        for i in 0..30u64 {
            let t = base + i * 6000;
            m.write_video(&mut out, t, t, i == 0, if i == 0 { &big } else { &small });
            m.write_audio(
                &mut out,
                t,
                &[0xff, 0xf1, 0x50, 0x80, 0x01, 0x7f, 0xfc, 9, 9],
            );
        }
        let (pes, pcrs) = demux(&out);
        let video: Vec<&Vec<u8>> = pes
            .iter()
            .filter(|(p, _)| *p == PID_VIDEO)
            .map(|(_, d)| d)
            .collect();
        let audio: Vec<&Vec<u8>> = pes
            .iter()
            .filter(|(p, _)| *p == PID_AUDIO)
            .map(|(_, d)| d)
            .collect();
        assert_eq!((video.len(), audio.len()), (30, 30));
        let first = video[0];
        assert_eq!(&first[..4], &[0, 0, 1, 0xe0]);
        let payload_at = 9 + first[8] as usize;
        assert_eq!(&first[payload_at..payload_at + 6], &AUD, "AUD in front");
        assert_eq!(first.len() - payload_at, 6 + big.len(), "whole access unit");
        for (i, v) in video.iter().enumerate() {
            assert_eq!(pts_of(v), (base + i as u64 * 6000) & ((1 << 33) - 1));
        }
        assert_eq!(audio[0].len(), 14 + 9, "bounded audio PES");
        assert!(pcrs.len() >= 6, "PCR at least every 100 ms: {}", pcrs.len());
        assert!(pcrs.windows(2).all(|w| w[1] >= w[0]), "PCR monotonic");
        assert_eq!(pcrs[0], (base - PCR_LEAD_90K) & ((1 << 33) - 1));
    }

    #[test]
    fn audio_only_streams_carry_the_pcr_on_audio() {
        let mut m = TsMuxer::new(false, true);
        let mut out = Vec::new();
        m.write_tables(&mut out);
        for i in 0..10u64 {
            m.write_audio(
                &mut out,
                90_000 + i * 1920,
                &[0xff, 0xf1, 0x50, 0x80, 0x01, 0x1f, 0xfc],
            );
        }
        let (pes, pcrs) = demux(&out);
        assert_eq!(pes.len(), 10);
        assert!(!pcrs.is_empty());
        // Every payload size from 0 to 2 packets packs without panicking.
        let mut m = TsMuxer::new(true, false);
        for n in 0..400usize {
            let mut out = Vec::new();
            let au: Vec<u8> = [&[0u8, 0, 0, 1, 0x41][..], &vec![7; n]].concat();
            m.write_video(&mut out, 9000, 9000, n % 50 == 0, &au);
            let (pes, _) = demux(&out);
            assert_eq!(pes[0].1.len(), 14 + 6 + au.len(), "size {n}");
        }
    }

    /// An external tool for checks, or `None` to skip. With
    /// `KIROKU_REQUIRE_TOOLS=1` (the README test command sets it) a missing
    /// tool fails the test instead.
    pub(crate) fn tool(name: &str) -> Option<std::path::PathBuf> {
        let found = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        });
        if found.is_none() && std::env::var("KIROKU_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{name} is required (KIROKU_REQUIRE_TOOLS=1) but not on PATH");
        }
        found
    }

    #[test]
    fn ffprobe_reads_a_segment_of_real_h264() {
        let Some(ffprobe) = tool("ffprobe") else {
            eprintln!("skipped: ffprobe not installed");
            return;
        };
        use crate::publish::source::{VideoConfig, VideoSource};
        let mut src = VideoSource::new(VideoConfig {
            width: 320,
            height: 180,
            fps: 15,
            ..VideoConfig::default()
        })
        .expect("source");
        let mut m = TsMuxer::new(true, false);
        let mut out = Vec::new();
        m.write_tables(&mut out);
        let start = (1u64 << 32) - 45_000; // crosses the 2^32 boundary mid-segment
        for i in 0..45u64 {
            let f = src
                .next_frame(std::time::Duration::from_millis(i * 1000 / 15))
                .expect("frame");
            let t = start + i * 6000;
            m.write_video(&mut out, t, t, f.keyframe, &f.data);
        }
        let path = std::env::temp_dir().join(format!("kiroku-ts-{}.ts", std::process::id()));
        std::fs::write(&path, &out).expect("write");
        let probe = std::process::Command::new(ffprobe)
            .args([
                "-v",
                "error",
                "-count_frames",
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames:format=duration",
                "-of",
                "json",
            ])
            .arg(&path)
            .output()
            .expect("ffprobe runs");
        let _ = std::fs::remove_file(&path);
        assert!(
            probe.status.success(),
            "{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        assert!(
            probe.stderr.is_empty(),
            "ffprobe complained: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&probe.stdout).expect("json");
        let st = &v["streams"][0];
        assert_eq!(st["codec_name"], "h264");
        assert_eq!(
            (st["width"].as_u64(), st["height"].as_u64()),
            (Some(320), Some(180))
        );
        assert_eq!(st["nb_read_frames"], "45");
        let d: f64 = v["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .expect("duration");
        assert!((d - 3.0).abs() < 0.1, "duration {d}");
    }
}
