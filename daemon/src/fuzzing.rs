//! Fuzz targets: every parser that reads what a peer, an API caller, a
//! file or an operator hands kiroku, behind one `fn(&[u8])` each
//! (docs/security.md, "Fuzzing").
//!
//! The coverage-guided runs (`fuzz/`, cargo-fuzz with libFuzzer on a
//! nightly toolchain) call these; so does the smoke in the test command
//! (`daemon/tests/fuzz_smoke.rs`, stable), which replays each target's
//! seed corpus and a few thousand mutations of it. A target may return
//! anything for bad input but must not panic, hang or allocate without
//! bound; where a round trip exists (the MP4 packer) it checks it.

use std::time::{Duration, Instant};

/// A target: it takes any bytes.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus folder and fuzz binary carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("whip_offer", whip_offer),
    ("sdp_str0m", sdp_str0m),
    ("h264", h264),
    ("stun", stun),
    ("ts_demux", ts_demux),
    ("mp4_pack", mp4_pack),
    ("playlist", playlist),
    ("merge_names", merge_names),
    ("api_create", api_create),
    ("tc3_header", tc3_header),
    ("usersig", usersig),
    ("overlay_image", overlay_image),
    ("config_toml", config_toml),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A WHIP offer: kiroku's own checks (before str0m sees it).
pub fn whip_offer(data: &[u8]) {
    let Some(sdp) = text(data) else { return };
    for aux in [false, true] {
        let _ = crate::ingest::offer::check(sdp, aux);
    }
}

/// A WHIP offer through str0m's SDP parser, which every offer that passes
/// kiroku's checks reaches. A target of its own: the parser (`combine`,
/// with backtracking) takes about 2 ms an input under the sanitiser, a
/// hundred times kiroku's checks, and would hold them back.
pub fn sdp_str0m(data: &[u8]) {
    let Some(sdp) = text(data) else { return };
    let _ = str0m::change::SdpOffer::from_sdp_string(sdp);
}

/// H.264 from a publisher: parameter sets and access units.
pub fn h264(data: &[u8]) {
    let _ = crate::media::h264::parse_sps(data);
    let _ = crate::media::h264::normalize_access_unit(data);
    // The same bytes as an SPS NAL whatever their first byte says.
    if let Some(rest) = data.get(1..) {
        let mut nal = Vec::with_capacity(data.len());
        nal.push(0x67);
        nal.extend_from_slice(rest);
        let _ = crate::media::h264::parse_sps(&nal);
    }
}

/// A datagram on the UDP port: STUN parsing, integrity, routing.
pub fn stun(data: &[u8]) {
    use crate::ingest::router::{stun_integrity_ok, stun_local_ufrag, Router};
    let _ = stun_local_ufrag(data);
    let _ = stun_integrity_ok(data, b"local-password-0123456789abcdef");
    let mut router = Router::default();
    router.add_peer(1, "aaaa", "local-password-0123456789abcdef");
    let source = std::net::SocketAddr::from(([192, 0, 2, 1], 5000));
    let _ = router.route(source, data);
    let _ = router.route(source, data);
}

/// A TS segment (recorded HLS, merge input).
pub fn ts_demux(data: &[u8]) {
    let _ = crate::media::ts_demux::demux_segment(data);
}

/// TS segments packed into MP4: whatever comes out must be a sequence of
/// well-formed top-level boxes starting with `ftyp`.
pub fn mp4_pack(data: &[u8]) {
    use crate::media::mp4::{Container, Mp4Packer, PackOutput, SplitLimits};
    let mut packer = Mp4Packer::new(SplitLimits::default(), Container::Mp4);
    // Two "segments": the data cut in two, the second after a discontinuity.
    let cut = data.len() / 2;
    let mut outputs = packer.push_segment(&data[..cut], false);
    outputs.extend(packer.push_segment(&data[cut..], true));
    outputs.extend(packer.finish().outputs);
    // Streamed: each file's payload comes before its header, and adds up.
    let mut payload = Vec::new();
    for output in outputs {
        match output {
            PackOutput::Payload(mut bytes) => payload.append(&mut bytes),
            PackOutput::Closed(closed) => {
                assert_eq!(closed.payload_len, payload.len() as u64);
                let mut file = closed.header;
                file.append(&mut payload);
                check_boxes(&file);
            }
        }
    }
    assert!(payload.is_empty(), "payload without a file");
}

/// Top-level MP4 boxes: sizes that add up to the file, `ftyp` first.
fn check_boxes(file: &[u8]) {
    let mut at = 0usize;
    let mut first = true;
    while at < file.len() {
        let header = file.get(at..at + 8).expect("a box header");
        let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let size = if size == 1 {
            let large = file.get(at + 8..at + 16).expect("a 64-bit box size");
            usize::try_from(u64::from_be_bytes(large.try_into().expect("8 bytes")))
                .expect("a size that fits")
        } else {
            size
        };
        assert!(size >= 8, "box of {size} bytes at {at}");
        if first {
            assert_eq!(&header[4..8], b"ftyp", "the file starts with ftyp");
            first = false;
        }
        at = at.checked_add(size).expect("box sizes add up");
    }
    assert_eq!(at, file.len(), "box sizes add up to the file");
}

/// An HLS playlist (merge reads others' too).
pub fn playlist(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let _ = crate::hls::playlist::Playlist::parse(t);
}

/// Segment names found by `kiroku merge`, then the plan made of them (one
/// name per line; the first byte of a line sets its duration).
pub fn merge_names(data: &[u8]) {
    use crate::merge::plan::{plan, PlanOptions, SegmentFile};
    use crate::merge::AvChoice;
    let Some(t) = text(data) else { return };
    let mut segments = Vec::new();
    for line in t.lines().take(64) {
        if let Some((user, media, track, start_ms)) = crate::merge::scan::parse_segment_name(line) {
            segments.push(SegmentFile {
                name: line.to_owned(),
                user,
                media,
                track,
                start_ms,
                duration_ms: u64::from(line.len() as u8) * 100,
            });
        }
    }
    for merge_user in [false, true] {
        for av in [AvChoice::Main, AvChoice::Auto, AvChoice::Aux] {
            let _ = plan(
                &segments,
                &PlanOptions {
                    merge_user,
                    drop_gaps: !merge_user,
                    av,
                    reencode_video: false,
                },
            );
        }
    }
}

/// A CreateCloudRecording body: the SDK's JSON shape, then validation.
pub fn api_create(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<crate::api::model::CreateCloudRecordingRequest>(data)
    else {
        return;
    };
    let _ = crate::api::validate::create(req);
}

/// An `Authorization` header of a signed request.
pub fn tc3_header(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let _ = crate::api::tc3::parse_authorization(t);
}

/// A UserSig presented by a publisher.
pub fn usersig(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let _ = crate::auth::usersig::verify(
        t,
        "0123456789abcdef0123456789abcdef",
        1_400_000_001,
        "user",
        1_700_000_000,
    );
}

/// A watermark, background or placeholder image (PNG or JPEG).
pub fn overlay_image(data: &[u8]) {
    let _ = crate::mix::overlay::decode_image(data, &crate::mix::overlay::ImageLimits::default());
}

/// A configuration file.
pub fn config_toml(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let _ = crate::config::Config::parse(t);
}

/// Deterministic mutations of `seed` for the smoke (a tiny xorshift
/// mutator: flips, sets, truncations, duplications), `count` of them.
pub fn mutations(seed: &[u8], count: usize, mut state: u64) -> Vec<Vec<u8>> {
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut m = seed.to_vec();
        for _ in 0..1 + next() % 4 {
            let len = m.len();
            match next() % 5 {
                0 if len > 0 => {
                    let i = (next() as usize) % len;
                    m[i] ^= 1 << (next() % 8);
                }
                1 if len > 0 => {
                    let i = (next() as usize) % len;
                    m[i] = [0, 0xff, 0x7f, 0x80, 0x01][(next() % 5) as usize];
                }
                2 if len > 0 => m.truncate((next() as usize) % len),
                3 if len > 0 => {
                    let i = (next() as usize) % len;
                    let j = (i + 1 + (next() as usize) % 16).min(len);
                    let chunk = m[i..j].to_vec();
                    m.splice(i..i, chunk);
                }
                _ => m.push(next() as u8),
            }
        }
        out.push(m);
    }
    out
}

/// Runs `target` over `inputs` until `budget` is spent; how many ran.
pub fn run_for(target: Target, inputs: &[Vec<u8>], budget: Duration) -> usize {
    let started = Instant::now();
    let mut n = 0;
    for input in inputs {
        target(input);
        n += 1;
        if started.elapsed() >= budget {
            break;
        }
    }
    n
}
