//! One file being built: per-track sample tables (sizes, durations,
//! composition offsets, sync samples, chunks). The payload is not kept:
//! each chunk goes out as [`PackOutput::Payload`] when it is complete, and
//! the header (`ftyp`, `moov`, `mdat` header: faststart) comes with
//! [`PackOutput::Closed`] when the file closes.

use super::*;

#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) offset: u64,
    pub(super) samples: u32,
    /// 1-based index into the track's `stsd`.
    pub(super) desc: u32,
}

#[derive(Debug)]
pub(super) struct TrackBuilder {
    pub(super) kind: Kind,
    pub(super) timescale: u32,
    /// Config ids, in `stsd` order.
    pub(super) descs: Vec<u32>,
    pub(super) sizes: Vec<u32>,
    pub(super) stts: Vec<(u32, u32)>,
    pub(super) ctts: Vec<(u32, i32)>,
    pub(super) syncs: Vec<u32>,
    pub(super) chunks: Vec<Chunk>,
    pub(super) first_dts: u64,
    pub(super) last_dts: u64,
    /// Media time (timescale units) of the last sample's start.
    pub(super) pos: u64,
    /// One AAC frame in timescale units.
    pub(super) frame: u64,
    pub(super) last_delta: Option<u64>,
    pub(super) open: Vec<u8>,
    pub(super) open_samples: u32,
    pub(super) open_start: u64,
    pub(super) open_desc: u32,
    pub(super) bytes: u64,
    pub(super) max_size: u32,
    pub(super) second: u64,
    pub(super) second_bytes: u64,
    pub(super) max_second_bytes: u64,
    pub(super) waiting_reported: bool,
}

impl TrackBuilder {
    pub(super) fn new(kind: Kind) -> Self {
        Self {
            kind,
            timescale: CLOCK as u32,
            descs: Vec::new(),
            sizes: Vec::new(),
            stts: Vec::new(),
            ctts: Vec::new(),
            syncs: Vec::new(),
            chunks: Vec::new(),
            first_dts: 0,
            last_dts: 0,
            pos: 0,
            frame: AAC_FRAME,
            last_delta: None,
            open: Vec::new(),
            open_samples: 0,
            open_start: 0,
            open_desc: 0,
            bytes: 0,
            max_size: 0,
            second: 0,
            second_bytes: 0,
            max_second_bytes: 0,
            waiting_reported: false,
        }
    }

    pub(super) fn count(&self) -> u32 {
        self.sizes.len() as u32
    }

    pub(super) fn media_time(&self, dts: u64) -> u64 {
        let rel = dts - self.first_dts;
        match self.kind {
            Kind::Video => rel,
            Kind::Audio => (rel * u64::from(self.timescale) + CLOCK / 2) / CLOCK,
        }
    }

    pub(super) fn push_duration(&mut self, d: u64) {
        let d = d.clamp(1, u64::from(u32::MAX)) as u32;
        match self.stts.last_mut() {
            Some((n, delta)) if *delta == d => *n += 1,
            _ => self.stts.push((1, d)),
        }
    }

    /// Hands the open chunk out; `payload_len` is what the file's payload
    /// held before it.
    pub(super) fn flush_chunk(&mut self, payload_len: &mut u64, out: &mut Vec<PackOutput>) {
        if self.open_samples == 0 {
            return;
        }
        self.chunks.push(Chunk {
            offset: *payload_len,
            samples: self.open_samples,
            desc: self.open_desc,
        });
        *payload_len += self.open.len() as u64;
        out.push(PackOutput::Payload(std::mem::take(&mut self.open)));
        self.open_samples = 0;
    }

    /// Media duration and the last sample's duration, in timescale units.
    pub(super) fn close(&mut self, end: Option<u64>) -> u64 {
        let last = match self.kind {
            Kind::Video => match end {
                Some(e) if e > self.last_dts && e - self.last_dts <= VIDEO_STALL => {
                    e - self.last_dts
                }
                _ => self.last_delta.unwrap_or(DEFAULT_FRAME),
            },
            Kind::Audio => self.frame,
        };
        self.push_duration(last);
        self.pos + last
    }
}

pub(super) struct FileBuilder {
    pub(super) container: Container,
    pub(super) start: u64,
    /// Bytes handed out as [`PackOutput::Payload`] so far.
    pub(super) payload_len: u64,
    pub(super) tracks: [TrackBuilder; 2],
}

impl FileBuilder {
    pub(super) fn new(container: Container, start: u64) -> Self {
        Self {
            container,
            start,
            payload_len: 0,
            tracks: [
                TrackBuilder::new(Kind::Video),
                TrackBuilder::new(Kind::Audio),
            ],
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tracks.iter().all(|t| t.sizes.is_empty())
    }

    /// The file's size if it were closed now, at most.
    pub(super) fn size_bound(&self) -> u64 {
        let mut n = FIXED_HEADER_BYTES + self.payload_len;
        for t in &self.tracks {
            n += t.open.len() as u64
                + TABLE_BYTES_PER_SAMPLE * u64::from(t.count())
                + 20 * (t.chunks.len() as u64 + 1);
        }
        n
    }

    pub(super) fn add(
        &mut self,
        s: Sample,
        cfg: &Configs,
        stats: &mut PackStats,
        segment: u64,
        out: &mut Vec<PackOutput>,
    ) {
        if s.dts < self.start {
            stats.error(PackError::Late {
                segment,
                track: s.kind.name(),
            });
            match s.kind {
                Kind::Video => stats.dropped_video_frames += 1,
                Kind::Audio => stats.dropped_audio_frames += 1,
            }
            return;
        }
        let container = self.container;
        let t = &mut self.tracks[s.kind as usize];
        if t.sizes.is_empty() {
            if s.kind == Kind::Video && !s.key {
                // A file cut while video stalled: wait for a key frame.
                if !t.waiting_reported {
                    t.waiting_reported = true;
                    stats.error(PackError::WaitingForKeyframe { segment });
                }
                stats.dropped_video_frames += 1;
                return;
            }
            if s.kind == Kind::Audio {
                let c = cfg.audio(s.desc);
                t.timescale = c.rate();
            }
            t.first_dts = s.dts;
            t.pos = 0;
        } else {
            if s.dts <= t.last_dts {
                stats.error(PackError::NonMonotonic {
                    segment,
                    track: s.kind.name(),
                });
                return;
            }
            let mut delta = t.media_time(s.dts).saturating_sub(t.pos).max(1);
            if s.kind == Kind::Audio && delta.abs_diff(t.frame) <= 2 {
                delta = t.frame;
            }
            t.push_duration(delta);
            t.last_delta = Some(delta);
            t.pos += delta;
        }
        if s.kind == Kind::Audio {
            let c = cfg.audio(s.desc);
            t.frame = (AAC_FRAME * u64::from(t.timescale) / u64::from(c.rate())).max(1);
        }
        let desc = match t.descs.iter().position(|d| *d == s.desc) {
            Some(i) => i as u32 + 1,
            None => {
                t.descs.push(s.desc);
                t.descs.len() as u32
            }
        };
        if t.open_samples > 0
            && (desc != t.open_desc
                || s.dts - t.open_start >= CHUNK_SPAN
                || t.open.len() >= CHUNK_BYTES)
        {
            t.flush_chunk(&mut self.payload_len, out);
        }
        if t.open_samples == 0 {
            t.open_start = s.dts;
            t.open_desc = desc;
        }
        if container == Container::Adts {
            t.open
                .extend_from_slice(&cfg.audio(s.desc).adts_header(s.data.len()));
        }
        t.open.extend_from_slice(&s.data);
        t.open_samples += 1;
        let size = s.data.len() as u32;
        t.sizes.push(size);
        t.max_size = t.max_size.max(size);
        t.bytes += u64::from(size);
        let second = (s.dts - t.first_dts) / CLOCK;
        if second != t.second {
            t.second = second;
            t.second_bytes = 0;
        }
        t.second_bytes += u64::from(size);
        t.max_second_bytes = t.max_second_bytes.max(t.second_bytes);
        if s.key && s.kind == Kind::Video {
            t.syncs.push(t.count());
        }
        match t.ctts.last_mut() {
            Some((n, c)) if *c == s.cto => *n += 1,
            _ => t.ctts.push((1, s.cto)),
        }
        t.last_dts = s.dts;
        match s.kind {
            Kind::Video => stats.video_frames += 1,
            Kind::Audio => stats.audio_frames += 1,
        }
    }

    pub(super) fn finish(
        mut self,
        index: u32,
        end: Option<u64>,
        origin: u64,
        cfg: &Configs,
        co64_above: u64,
        out: &mut Vec<PackOutput>,
    ) {
        let mut timings = Vec::new();
        let mut end_ticks = 0u64;
        for t in &mut self.tracks {
            t.flush_chunk(&mut self.payload_len, out);
            if t.sizes.is_empty() {
                continue;
            }
            let duration = t.close(end);
            let offset = t.first_dts - self.start;
            let ticks = duration * CLOCK / u64::from(t.timescale);
            end_ticks = end_ticks.max(offset + ticks);
            timings.push(TrackTiming {
                kind: t.kind,
                duration,
                offset_ms: (offset + 45) / 90,
                duration_ms: (duration * MOVIE_TIMESCALE + u64::from(t.timescale) / 2)
                    / u64::from(t.timescale),
            });
        }
        let [video, audio] = &self.tracks;
        let (has_video, has_audio) = (!video.sizes.is_empty(), !audio.sizes.is_empty());
        let (video_frames, audio_frames) = (video.sizes.len() as u64, audio.sizes.len() as u64);
        let header = if self.container == Container::Adts {
            Vec::new()
        } else {
            self.header(cfg, &timings, co64_above)
        };
        out.push(PackOutput::Closed(ClosedFile {
            header,
            payload_len: self.payload_len,
            facts: FileFacts {
                index,
                start_ms: (self.start.saturating_sub(origin) + 45) / 90,
                duration_ms: (end_ticks + 45) / 90,
                has_video,
                has_audio,
                video_frames,
                audio_frames,
            },
        }));
    }

    /// `ftyp`, `moov` and the `mdat` header, with chunk offsets pointing
    /// past them.
    pub(super) fn header(
        &self,
        cfg: &Configs,
        timings: &[TrackTiming],
        co64_above: u64,
    ) -> Vec<u8> {
        let mut ftyp = Vec::new();
        boxed(&mut ftyp, b"ftyp", |b| match self.container {
            Container::AudioMp4 => {
                b.extend_from_slice(b"M4A \0\0\0\0M4A isomiso2mp41");
            }
            _ => b.extend_from_slice(b"isom\0\0\x02\0isomiso2avc1mp41"),
        });
        let payload = self.payload_len;
        let mdat_header: u64 = if payload + 8 > u64::from(u32::MAX) {
            16
        } else {
            8
        };
        let mut co64 = false;
        let mut moov = self.moov(cfg, timings, 0, false);
        if ftyp.len() as u64 + moov.len() as u64 + mdat_header + payload > co64_above {
            co64 = true;
            moov = self.moov(cfg, timings, 0, true);
        }
        let base = ftyp.len() as u64 + moov.len() as u64 + mdat_header;
        let moov = self.moov(cfg, timings, base, co64);
        let mut out = ftyp;
        out.extend_from_slice(&moov);
        if mdat_header == 16 {
            out.extend_from_slice(&1u32.to_be_bytes());
            out.extend_from_slice(b"mdat");
            out.extend_from_slice(&(payload + 16).to_be_bytes());
        } else {
            out.extend_from_slice(&((payload + 8) as u32).to_be_bytes());
            out.extend_from_slice(b"mdat");
        }
        out
    }

    pub(super) fn moov(
        &self,
        cfg: &Configs,
        timings: &[TrackTiming],
        base: u64,
        co64: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let movie_ms = timings
            .iter()
            .map(|t| t.offset_ms + t.duration_ms)
            .max()
            .unwrap_or(0);
        boxed(&mut out, b"moov", |b| {
            let v1 = movie_ms > u64::from(u32::MAX);
            full(b, b"mvhd", u8::from(v1), 0, |b| {
                times(b, v1, MOVIE_TIMESCALE as u32, movie_ms);
                b.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate
                b.extend_from_slice(&0x0100u16.to_be_bytes()); // volume
                b.extend_from_slice(&[0; 10]);
                matrix(b);
                b.extend_from_slice(&[0; 24]);
                b.extend_from_slice(&(timings.len() as u32 + 1).to_be_bytes());
            });
            for (i, timing) in timings.iter().enumerate() {
                let t = &self.tracks[timing.kind as usize];
                trak(b, t, timing, i as u32 + 1, cfg, base, co64);
            }
        });
        out
    }
}

pub(super) struct TrackTiming {
    pub(super) kind: Kind,
    /// Media duration, timescale units.
    pub(super) duration: u64,
    pub(super) offset_ms: u64,
    pub(super) duration_ms: u64,
}
