//! Recovering a segment that was open when its recorder died, from the
//! bytes its journal made durable (`Output::Journal`), and finishing its
//! playlist with it. Pure: bytes in, bytes and text out.
//!
//! The TS muxer writes each PES whole and in order, so every PES before
//! the last one that starts in the journal is complete; the last may be
//! cut anywhere (and the file may end inside a TS packet). The segment is
//! cut before it: at most one frame is given up. Its `#EXTINF` runs from
//! the first timestamp to the last plus one frame interval (the last
//! interval seen), as a closed segment's does.

use crate::hls::playlist::{Playlist, Segment};
use crate::media::ts::{PID_AUDIO, PID_VIDEO};
use crate::media::ts_demux::demux_segment;

const TS_PACKET: usize = 188;
/// An AAC frame (1024 samples at 48 kHz) in 90 kHz ticks: the interval of
/// an audio-only segment with a single frame.
const AAC_FRAME_90K: u64 = 1920;

/// A segment recovered from its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub ts: Vec<u8>,
    pub seconds: f64,
}

/// The whole PESs of a journaled segment, and how long they last; `None`
/// when not one whole frame is there.
pub fn recover_segment(journal: &[u8]) -> Option<Recovered> {
    let whole_packets = journal.len() / TS_PACKET * TS_PACKET;
    let packets = journal.get(..whole_packets)?;
    // The start of the last media PES: everything before it is whole.
    let last_start = packets
        .chunks_exact(TS_PACKET)
        .enumerate()
        .filter(|(_, p)| {
            let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
            p[0] == 0x47 && p[1] & 0x40 != 0 && (pid == PID_VIDEO || pid == PID_AUDIO)
        })
        .map(|(i, _)| i * TS_PACKET)
        .next_back()?;
    let ts = packets.get(..last_start)?.to_vec();
    let (units, _) = demux_segment(&ts);
    // Video times the segment when there is video (as the segmenter cuts
    // on it); else audio.
    let video = units.iter().any(|u| u.video);
    let mut pts: Vec<u64> = units
        .iter()
        .filter(|u| u.video == video)
        .map(|u| u.pts)
        .collect();
    pts.sort_unstable();
    let (first, last) = (*pts.first()?, *pts.last()?);
    let interval = match pts.len() {
        1 if video => 3000,
        1 => AAC_FRAME_90K,
        n => pts[n - 1].saturating_sub(pts[n - 2]),
    };
    let ticks = last.saturating_sub(first).saturating_add(interval);
    Some(Recovered {
        ts,
        seconds: ticks as f64 / 90_000.0,
    })
}

/// The playlist as it stood before the segment (`before`), with the
/// recovered segment added and ended: the run that was cut short ends
/// there; the next run writes playlists of its own (`ha<n>_`).
pub fn finish_playlist(
    before: &str,
    file_name: &str,
    seconds: f64,
    discontinuity: bool,
) -> Result<String, crate::hls::playlist::PlaylistParseError> {
    let mut playlist = Playlist::parse(before)?;
    playlist.push(Segment {
        file_name: file_name.to_owned(),
        duration_seconds: seconds,
        discontinuity,
    });
    playlist.ended = true;
    Ok(playlist.render())
}

/// The playlist as it stood before the open segment, ended: what a
/// journal whose segment holds not one whole frame leaves (the run ended
/// there).
pub fn end_playlist(before: &str) -> Result<String, crate::hls::playlist::PlaylistParseError> {
    let mut playlist = Playlist::parse(before)?;
    playlist.ended = true;
    Ok(playlist.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ts::TsMuxer;

    fn segment(frames: u64) -> Vec<u8> {
        let mut mux = TsMuxer::new(true, true);
        let mut out = Vec::new();
        mux.write_tables(&mut out);
        for n in 0..frames {
            let pts = 900_000 + n * 6000; // 15 fps
            let au = [
                0,
                0,
                0,
                1,
                if n == 0 { 0x65 } else { 0x41 },
                0x88,
                0x84,
                0x21,
                0xa0,
            ];
            mux.write_video(&mut out, pts, pts, n == 0, &au);
            let adts = [0xff, 0xf1, 0x50, 0x80, 0x01, 0x3f, 0xfc, 0xde, 0x04];
            mux.write_audio(&mut out, pts, &adts);
        }
        out
    }

    #[test]
    fn a_cut_journal_keeps_every_whole_frame_but_the_last_started() {
        let full = segment(30);
        // Cut in the middle of a TS packet near the end.
        let cut = &full[..full.len() - 100];
        let r = recover_segment(cut).expect("recovered");
        let (units, errors) = demux_segment(&r.ts);
        assert!(errors.is_empty(), "{errors:?}");
        let videos = units.iter().filter(|u| u.video).count();
        assert!((28..=30).contains(&videos), "{videos} video frames");
        assert!(
            (r.seconds - videos as f64 / 15.0).abs() < 1e-6,
            "{}",
            r.seconds
        );
        assert_eq!(r.ts.len() % TS_PACKET, 0);
    }

    #[test]
    fn nothing_whole_is_nothing_recovered() {
        let full = segment(1);
        // The tables and the start of the one video PES: no whole frame.
        assert!(recover_segment(&full[..3 * TS_PACKET + 50]).is_none());
        assert!(recover_segment(&[]).is_none());
        assert!(recover_segment(&[0x47; 100]).is_none());
        assert!(recover_segment(&[0u8; 188 * 20]).is_none());
    }

    #[test]
    fn the_playlist_gets_the_segment_and_ends() {
        let before = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n\
                      #EXT-X-TRTC-START-REC-TIME:1700000000000\n#EXTINF:10.000\na.ts\n";
        let text = finish_playlist(before, "b.ts", 3.5, true).expect("playlist");
        let p = Playlist::parse(&text).expect("parse");
        assert_eq!(p.start_rec_time_ms, 1_700_000_000_000);
        assert_eq!(p.segments.len(), 2);
        assert!(p.segments[1].discontinuity && p.ended);
        assert!((p.total_seconds() - 13.5).abs() < 1e-9);
        // The first segment of a stream: its playlist had none yet.
        let empty = Playlist::new(5, None).render();
        let first =
            Playlist::parse(&finish_playlist(&empty, "x.ts", 1.0, false).expect("playlist"))
                .expect("parse");
        assert!(first.ended && first.segments.len() == 1 && first.start_rec_time_ms == 5);
    }
}
