//! ISO BMFF box writers (ISO/IEC 14496-12 and -14, -15): the `moov` tree
//! and the sample entries, from the tables of `tables`.

use super::*;

pub(super) fn boxed(out: &mut Vec<u8>, kind: &[u8; 4], f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(kind);
    f(out);
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

pub(super) fn full(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    f: impl FnOnce(&mut Vec<u8>),
) {
    boxed(out, kind, |b| {
        b.extend_from_slice(&((u32::from(version) << 24) | (flags & 0x00ff_ffff)).to_be_bytes());
        f(b);
    });
}

pub(super) fn u32s(out: &mut Vec<u8>, values: &[u32]) {
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub(super) fn matrix(out: &mut Vec<u8>) {
    u32s(out, &MATRIX);
}

/// creation/modification time (0), then timescale and duration (v0/v1).
pub(super) fn times(out: &mut Vec<u8>, v1: bool, timescale: u32, duration: u64) {
    if v1 {
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&timescale.to_be_bytes());
        out.extend_from_slice(&duration.to_be_bytes());
    } else {
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&timescale.to_be_bytes());
        out.extend_from_slice(&(duration as u32).to_be_bytes());
    }
}

pub(super) fn trak(
    out: &mut Vec<u8>,
    t: &TrackBuilder,
    timing: &TrackTiming,
    id: u32,
    cfg: &Configs,
    base: u64,
    co64: bool,
) {
    let video = t.kind == Kind::Video;
    let (width, height) = t
        .descs
        .first()
        .and_then(|d| cfg.video.get(*d as usize))
        .filter(|_| video)
        .map_or((0, 0), |c| (c.width, c.height));
    boxed(out, b"trak", |b| {
        let track_ms = timing.offset_ms + timing.duration_ms;
        let v1 = track_ms > u64::from(u32::MAX);
        full(b, b"tkhd", u8::from(v1), 3, |b| {
            if v1 {
                b.extend_from_slice(&[0; 16]);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(&track_ms.to_be_bytes());
            } else {
                b.extend_from_slice(&[0; 8]);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(&(track_ms as u32).to_be_bytes());
            }
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&[0; 4]); // layer, alternate_group
            b.extend_from_slice(&(if video { 0u16 } else { 0x0100 }).to_be_bytes());
            b.extend_from_slice(&[0; 2]);
            matrix(b);
            u32s(b, &[u32::from(width) << 16, u32::from(height) << 16]);
        });
        let first_cto = t.ctts.first().map_or(0, |c| c.1.max(0));
        if timing.offset_ms > 0 || first_cto > 0 {
            boxed(b, b"edts", |b| {
                let v1 = timing.offset_ms.max(timing.duration_ms) > u64::from(u32::MAX);
                full(b, b"elst", u8::from(v1), 0, |b| {
                    let mut entries = Vec::new();
                    if timing.offset_ms > 0 {
                        entries.push((timing.offset_ms, -1i64));
                    }
                    entries.push((timing.duration_ms, i64::from(first_cto)));
                    b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                    for (duration, media_time) in entries {
                        if v1 {
                            b.extend_from_slice(&duration.to_be_bytes());
                            b.extend_from_slice(&media_time.to_be_bytes());
                        } else {
                            b.extend_from_slice(&(duration as u32).to_be_bytes());
                            b.extend_from_slice(&(media_time as i32).to_be_bytes());
                        }
                        b.extend_from_slice(&0x0001_0000u32.to_be_bytes());
                    }
                });
            });
        }
        boxed(b, b"mdia", |b| {
            let v1 = timing.duration > u64::from(u32::MAX);
            full(b, b"mdhd", u8::from(v1), 0, |b| {
                times(b, v1, t.timescale, timing.duration);
                b.extend_from_slice(&0x55c4u16.to_be_bytes()); // "und"
                b.extend_from_slice(&[0; 2]);
            });
            full(b, b"hdlr", 0, 0, |b| {
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(if video { b"vide" } else { b"soun" });
                b.extend_from_slice(&[0; 12]);
                b.extend_from_slice(if video {
                    b"VideoHandler\0".as_slice()
                } else {
                    b"SoundHandler\0".as_slice()
                });
            });
            boxed(b, b"minf", |b| {
                if video {
                    full(b, b"vmhd", 0, 1, |b| b.extend_from_slice(&[0; 8]));
                } else {
                    full(b, b"smhd", 0, 0, |b| b.extend_from_slice(&[0; 4]));
                }
                boxed(b, b"dinf", |b| {
                    full(b, b"dref", 0, 0, |b| {
                        b.extend_from_slice(&1u32.to_be_bytes());
                        full(b, b"url ", 0, 1, |_| {});
                    });
                });
                stbl(b, t, timing, id, cfg, base, co64);
            });
        });
    });
}

pub(super) fn stbl(
    out: &mut Vec<u8>,
    t: &TrackBuilder,
    timing: &TrackTiming,
    id: u32,
    cfg: &Configs,
    base: u64,
    co64: bool,
) {
    boxed(out, b"stbl", |b| {
        full(b, b"stsd", 0, 0, |b| {
            b.extend_from_slice(&(t.descs.len() as u32).to_be_bytes());
            for &d in &t.descs {
                match t.kind {
                    Kind::Video => {
                        if let Some(c) = cfg.video.get(d as usize) {
                            avc1(b, c);
                        }
                    }
                    Kind::Audio => mp4a(b, &cfg.audio(d), t, timing, id),
                }
            }
        });
        full(b, b"stts", 0, 0, |b| {
            b.extend_from_slice(&(t.stts.len() as u32).to_be_bytes());
            for (n, d) in &t.stts {
                u32s(b, &[*n, *d]);
            }
        });
        if t.ctts.iter().any(|c| c.1 != 0) {
            let signed = t.ctts.iter().any(|c| c.1 < 0);
            full(b, b"ctts", u8::from(signed), 0, |b| {
                b.extend_from_slice(&(t.ctts.len() as u32).to_be_bytes());
                for (n, c) in &t.ctts {
                    b.extend_from_slice(&n.to_be_bytes());
                    b.extend_from_slice(&c.to_be_bytes());
                }
            });
        }
        if t.kind == Kind::Video {
            full(b, b"stss", 0, 0, |b| {
                b.extend_from_slice(&(t.syncs.len() as u32).to_be_bytes());
                u32s(b, &t.syncs);
            });
        }
        full(b, b"stsc", 0, 0, |b| {
            let mut entries: Vec<[u32; 3]> = Vec::new();
            for (i, c) in t.chunks.iter().enumerate() {
                if entries
                    .last()
                    .is_none_or(|e| e[1] != c.samples || e[2] != c.desc)
                {
                    entries.push([i as u32 + 1, c.samples, c.desc]);
                }
            }
            b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
            for e in &entries {
                u32s(b, e);
            }
        });
        full(b, b"stsz", 0, 0, |b| {
            u32s(b, &[0, t.count()]);
            u32s(b, &t.sizes);
        });
        if co64 {
            full(b, b"co64", 0, 0, |b| {
                b.extend_from_slice(&(t.chunks.len() as u32).to_be_bytes());
                for c in &t.chunks {
                    b.extend_from_slice(&(base + c.offset).to_be_bytes());
                }
            });
        } else {
            full(b, b"stco", 0, 0, |b| {
                b.extend_from_slice(&(t.chunks.len() as u32).to_be_bytes());
                for c in &t.chunks {
                    b.extend_from_slice(&((base + c.offset) as u32).to_be_bytes());
                }
            });
        }
    });
}

pub(super) fn avc1(out: &mut Vec<u8>, c: &VideoConfig) {
    boxed(out, b"avc1", |b| {
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&1u16.to_be_bytes()); // data_reference_index
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&c.width.to_be_bytes());
        b.extend_from_slice(&c.height.to_be_bytes());
        u32s(b, &[0x0048_0000, 0x0048_0000, 0]); // 72 dpi, reserved
        b.extend_from_slice(&1u16.to_be_bytes()); // frame_count
        b.extend_from_slice(&[0; 32]); // compressorname
        b.extend_from_slice(&0x0018u16.to_be_bytes()); // depth
        b.extend_from_slice(&0xffffu16.to_be_bytes()); // pre_defined = -1
        boxed(b, b"avcC", |b| b.extend_from_slice(&c.avcc));
    });
}

pub(super) fn mp4a(
    out: &mut Vec<u8>,
    c: &AudioConfig,
    t: &TrackBuilder,
    timing: &TrackTiming,
    id: u32,
) {
    let avg_bps = (t.bytes * 8 * u64::from(t.timescale))
        .checked_div(timing.duration)
        .unwrap_or(0);
    let max_bps = (t.max_second_bytes * 8).max(avg_bps);
    boxed(out, b"mp4a", |b| {
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&c.channels().to_be_bytes());
        b.extend_from_slice(&16u16.to_be_bytes()); // sample size
        b.extend_from_slice(&[0; 4]);
        let rate = c.rate();
        let rate_field = if rate <= 0xffff { rate << 16 } else { 0 };
        b.extend_from_slice(&rate_field.to_be_bytes());
        full(b, b"esds", 0, 0, |b| {
            let asc = c.asc();
            let mut dcd = vec![0x40, 0x15];
            dcd.extend_from_slice(&t.max_size.min(0xff_ffff).to_be_bytes()[1..]);
            u32s(
                &mut dcd,
                &[
                    u32::try_from(max_bps).unwrap_or(u32::MAX),
                    u32::try_from(avg_bps).unwrap_or(u32::MAX),
                ],
            );
            descriptor(&mut dcd, 0x05, &asc);
            let mut es = Vec::new();
            es.extend_from_slice(&(id as u16).to_be_bytes());
            es.push(0);
            descriptor(&mut es, 0x04, &dcd);
            descriptor(&mut es, 0x06, &[0x02]);
            descriptor(b, 0x03, &es);
        });
    });
}

/// An MPEG-4 descriptor (all of ours are under 128 bytes).
pub(super) fn descriptor(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.push(body.len().min(0x7f) as u8);
    out.extend_from_slice(body);
}
