//! Splitting a recording into files: groups of samples (from a video key
//! frame, or any audio frame while there is no video) go into the current
//! file until the next group would pass the duration or size limit.

use super::*;

pub(super) struct Splitter {
    pub(super) container: Container,
    pub(super) limits: SplitLimits,
    pub(super) file: Option<FileBuilder>,
    /// Samples since the last place a file may start.
    pub(super) group: Vec<Sample>,
    pub(super) group_start: u64,
    pub(super) group_end: u64,
    pub(super) group_bytes: u64,
    /// The group continues one that was too big for a file: it must join
    /// the same file.
    pub(super) group_continues: bool,
    pub(super) last_video: Option<u64>,
    pub(super) video_delta: u64,
    pub(super) emitted: u32,
    pub(super) origin: Option<u64>,
    pub(super) co64_above: u64,
    /// The segment being pushed, for errors.
    pub(super) segment: u64,
}

impl Splitter {
    pub(super) fn new(limits: SplitLimits, container: Container) -> Self {
        Self {
            container,
            limits,
            file: None,
            group: Vec::new(),
            group_start: 0,
            group_end: 0,
            group_bytes: 0,
            group_continues: false,
            last_video: None,
            video_delta: DEFAULT_FRAME,
            emitted: 0,
            origin: None,
            co64_above: u64::from(u32::MAX),
            segment: 0,
        }
    }

    pub(super) fn push(
        &mut self,
        s: Sample,
        cfg: &Configs,
        stats: &mut PackStats,
        out: &mut Vec<PackOutput>,
    ) {
        self.origin.get_or_insert(s.dts);
        let end = match s.kind {
            Kind::Video => {
                if s.key {
                    self.commit(s.dts, cfg, stats, out);
                }
                if let Some(last) = self.last_video {
                    if s.dts > last && s.dts - last < VIDEO_STALL {
                        self.video_delta = s.dts - last;
                    }
                }
                self.last_video = Some(s.dts);
                s.dts + self.video_delta
            }
            Kind::Audio => {
                // (a stall shorter than half the file: the group stays small)
                let stall = VIDEO_STALL.min(self.limits.max_ticks() / 2);
                let video_live = self
                    .last_video
                    .is_some_and(|v| s.dts < v.saturating_add(stall));
                if !video_live {
                    self.commit(s.dts, cfg, stats, out);
                }
                s.dts + cfg.audio(s.desc).frame_ticks()
            }
        };
        if self.group.is_empty() {
            self.group_start = s.dts;
            self.group_end = end;
        } else {
            self.group_start = self.group_start.min(s.dts);
            self.group_end = self.group_end.max(end);
        }
        self.group_bytes += s.data.len() as u64 + TABLE_BYTES_PER_SAMPLE;
        self.group.push(s);
        let span = self.group_end - self.group_start;
        if span > self.limits.max_ticks() || self.group_bytes > self.limits.max_bytes {
            // Too big for any file: it gets one of its own, over the limit.
            if !self.group_continues {
                stats.oversize_files += 1;
                if self.file.as_ref().is_some_and(|f| !f.is_empty()) {
                    self.close(Some(self.group_start), cfg, out);
                }
            }
            self.append_group(cfg, stats, out);
            self.group_continues = true;
        }
    }

    /// The group is complete (the next sample, at `t`, may start a file):
    /// it joins the open file, or a new one if the open one would pass a
    /// limit.
    pub(super) fn commit(
        &mut self,
        t: u64,
        cfg: &Configs,
        stats: &mut PackStats,
        out: &mut Vec<PackOutput>,
    ) {
        if self.group.is_empty() {
            return;
        }
        let end = self.group_end.max(t);
        let too_big = self.file.as_ref().is_some_and(|f| {
            !f.is_empty()
                && (end.saturating_sub(f.start) > self.limits.max_ticks()
                    || f.size_bound() + self.group_bytes > self.limits.max_bytes)
        });
        if too_big && !self.group_continues {
            self.close(Some(self.group_start), cfg, out);
        }
        self.append_group(cfg, stats, out);
        self.group_continues = false;
    }

    pub(super) fn append_group(
        &mut self,
        cfg: &Configs,
        stats: &mut PackStats,
        out: &mut Vec<PackOutput>,
    ) {
        let file = self
            .file
            .get_or_insert_with(|| FileBuilder::new(self.container, self.group_start));
        if file.is_empty() {
            file.start = self.group_start;
        }
        for s in self.group.drain(..) {
            file.add(s, cfg, stats, self.segment, out);
        }
        self.group_bytes = 0;
    }

    pub(super) fn close(&mut self, end: Option<u64>, cfg: &Configs, out: &mut Vec<PackOutput>) {
        let Some(file) = self.file.take().filter(|f| !f.is_empty()) else {
            return;
        };
        self.emitted += 1;
        let origin = self.origin.unwrap_or(file.start);
        file.finish(self.emitted, end, origin, cfg, self.co64_above, out);
    }

    pub(super) fn finish(
        &mut self,
        cfg: &Configs,
        stats: &mut PackStats,
        out: &mut Vec<PackOutput>,
    ) {
        self.commit(self.group_end, cfg, stats, out);
        let Some(file) = self.file.take().filter(|f| !f.is_empty()) else {
            return;
        };
        let index = if self.emitted == 0 {
            0
        } else {
            self.emitted + 1
        };
        self.emitted += 1;
        let origin = self.origin.unwrap_or(file.start);
        file.finish(index, None, origin, cfg, self.co64_above, out);
    }
}
