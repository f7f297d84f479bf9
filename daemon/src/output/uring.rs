//! The spool's io_uring engine: each job (write a whole file, then
//! fdatasync it) goes in as a linked pair of SQEs, the spool directory's
//! fsync as one more, all submitted together and completed asynchronously,
//! so that new jobs go in while earlier ones sync.
//!
//! Memory safety rests on one rule: a buffer or file descriptor named by a
//! submitted SQE is not freed before its completion has been reaped. The
//! [`Engine`] owns every job from [`Engine::start`] until the completions
//! of both its SQEs have been seen, and the directory handle for as long
//! as it lives. When the ring fails in a way that leaves completions
//! unaccounted for (an error from `io_uring_enter`), or the engine is
//! dropped with work in flight, the jobs and the handle are leaked rather
//! than dropped (their memory and descriptors stay valid for the kernel),
//! and a failed engine takes no more work.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring, Probe};

/// One file to write from offset 0 and fdatasync. The buffer is shared so
/// that the caller keeps a readable copy of it even when the job has to be
/// leaked (the kernel only reads it).
pub(super) struct Job {
    pub file: File,
    pub buf: Arc<Vec<u8>>,
}

/// Something that finished.
pub(super) enum Event {
    /// A job is back from the kernel.
    Synced {
        slot: usize,
        job: Job,
        /// Bytes written (may be short), or the write's error.
        write: io::Result<usize>,
        /// The fdatasync's outcome; `ECANCELED` when the write failed or
        /// was short (the link breaks).
        sync: io::Result<()>,
    },
    /// The directory fsync finished.
    DirSynced(io::Result<()>),
}

/// The ring failed; the work in flight was leaked.
#[derive(Debug)]
pub(super) struct Broken(pub io::Error);

struct InFlight {
    job: Job,
    write: Option<i32>,
    sync: Option<i32>,
}

/// user_data of the directory fsync (jobs use `slot << 1 | op`).
const DIR_SYNC: u64 = u64::MAX;
/// ECANCELED on Linux: what a linked SQE completes with when its
/// predecessor failed or was short.
pub(super) const ECANCELED: i32 = 125;

pub(super) struct Engine {
    ring: IoUring,
    /// The spool directory, fsynced by [`Engine::start_dir_sync`].
    dir: Option<File>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    dir_sync_in_flight: bool,
    /// SQEs pushed and not yet submitted; jobs among them.
    unsubmitted: usize,
    unsubmitted_jobs: usize,
    /// Completions not yet seen.
    in_flight_ops: usize,
    broken: bool,
    /// Submissions that carried jobs, and the jobs they carried.
    pub submissions: u64,
    pub jobs: u64,
}

impl Engine {
    /// Sets up a ring for up to `max_jobs` jobs in flight plus one
    /// directory fsync, and checks that it works here: the opcodes are
    /// supported and a no-op goes round (kernels too old, and containers
    /// whose seccomp policy blocks io_uring, fail here).
    pub fn probe(max_jobs: usize, dir: File) -> io::Result<Engine> {
        let max_jobs = max_jobs.clamp(1, 1024);
        let entries = u32::try_from(max_jobs * 2 + 1)
            .map_err(|_| io::Error::other("ring too large"))?
            .next_power_of_two();
        // The completion queue is twice the submission queue, so it never
        // overflows: at most `2 · max_jobs + 1` operations are in flight.
        let mut ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Write::CODE, "WRITE"),
            (opcode::Fsync::CODE, "FSYNC"),
            (opcode::Nop::CODE, "NOP"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring has no {name} here"),
                ));
            }
        }
        // fdatasyncs run on io_uring's bounded workers, by default a few
        // per CPU: allow one per job so that syncs of different files
        // overlap as they do with one thread per put (best effort: older
        // kernels lack the call).
        let mut max = [u32::try_from(max_jobs).unwrap_or(u32::MAX), 0];
        let _ = ring.submitter().register_iowq_max_workers(&mut max);
        let nop = opcode::Nop::new().build().user_data(0);
        // SAFETY: a NOP names no buffer and no file descriptor.
        unsafe { ring.submission().push(&nop) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        submit_and_wait(&ring, 1)?;
        let cqe = ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("io_uring NOP did not complete"))?;
        if cqe.result() < 0 {
            return Err(io::Error::from_raw_os_error(-cqe.result()));
        }
        Ok(Engine {
            ring,
            dir: Some(dir),
            slots: (0..max_jobs).map(|_| None).collect(),
            free: (0..max_jobs).rev().collect(),
            dir_sync_in_flight: false,
            unsubmitted: 0,
            unsubmitted_jobs: 0,
            in_flight_ops: 0,
            broken: false,
            submissions: 0,
            jobs: 0,
        })
    }

    /// Job slots (the most jobs in flight at once).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn has_room(&self) -> bool {
        !self.broken && !self.free.is_empty()
    }

    /// Nothing in flight or waiting for submission.
    pub fn idle(&self) -> bool {
        self.in_flight_ops == 0 && self.unsubmitted == 0
    }

    pub fn dir_sync_in_flight(&self) -> bool {
        self.dir_sync_in_flight
    }

    /// Queues a job (submitted by the next [`wait`](Self::wait)); gives it
    /// back when there is no room, or the buffer is too large for one SQE.
    pub fn start(&mut self, job: Job) -> Result<usize, Job> {
        let Ok(len) = u32::try_from(job.buf.len()) else {
            return Err(job);
        };
        if self.broken {
            return Err(job);
        }
        let Some(slot) = self.free.pop() else {
            return Err(job);
        };
        let fd = types::Fd(job.file.as_raw_fd());
        let tag = (slot as u64) << 1;
        let write = opcode::Write::new(fd, job.buf.as_ptr(), len)
            .offset(0)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(tag);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(tag | 1);
        // SAFETY: the SQEs name `job.buf` (pointer and length of the heap
        // buffer of a Vec behind an Arc: it neither moves nor is mutated
        // while shared) and `job.file`'s descriptor. The job is stored in
        // `slots[slot]` below, before anything can submit these SQEs, and
        // leaves it only in `wait`, once the completions of both have been
        // reaped; when that cannot be established, the slots are leaked
        // (see `leak`), never dropped. Both SQEs are pushed at once (the
        // ring has room for two per slot), so no link dangles.
        let pushed = unsafe { self.ring.submission().push_multiple(&[write, sync]) };
        if pushed.is_err() {
            self.free.push(slot);
            return Err(job);
        }
        self.slots[slot] = Some(InFlight {
            job,
            write: None,
            sync: None,
        });
        self.unsubmitted += 2;
        self.unsubmitted_jobs += 1;
        Ok(slot)
    }

    /// Queues an fsync of the directory (submitted by the next `wait`);
    /// false if one is in flight already.
    pub fn start_dir_sync(&mut self) -> bool {
        if self.broken || self.dir_sync_in_flight {
            return false;
        }
        let Some(dir) = &self.dir else {
            return false;
        };
        let sqe = opcode::Fsync::new(types::Fd(dir.as_raw_fd()))
            .build()
            .user_data(DIR_SYNC);
        // SAFETY: names only the directory's descriptor, owned by `self`
        // until the engine is dropped, and leaked instead if the engine
        // goes with operations in flight.
        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
            return false;
        }
        self.dir_sync_in_flight = true;
        self.unsubmitted += 1;
        true
    }

    /// Submits what was queued and waits for at least one completion
    /// (returns at once when nothing is in flight); returns what finished.
    pub fn wait(&mut self) -> Result<Vec<Event>, Broken> {
        if self.broken {
            return Err(Broken(io::Error::other("io_uring engine already failed")));
        }
        let mut events = Vec::new();
        if self.idle() {
            return Ok(events);
        }
        if self.unsubmitted_jobs > 0 {
            self.submissions += 1;
            self.jobs += self.unsubmitted_jobs as u64;
        }
        // Everything pushed counts as in flight from here: if the syscall
        // fails we cannot tell what the kernel took.
        self.in_flight_ops += self.unsubmitted;
        self.unsubmitted = 0;
        self.unsubmitted_jobs = 0;
        if let Err(e) = submit_and_wait(&self.ring, 1) {
            self.leak();
            return Err(Broken(e));
        }
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in done {
            if ud == DIR_SYNC {
                if self.dir_sync_in_flight {
                    self.dir_sync_in_flight = false;
                    self.in_flight_ops -= 1;
                    events.push(Event::DirSynced(result(res).map(|_| ())));
                }
                continue;
            }
            let Ok(slot) = usize::try_from(ud >> 1) else {
                continue;
            };
            let Some(Some(f)) = self.slots.get_mut(slot) else {
                continue;
            };
            let cell = if ud & 1 == 0 {
                &mut f.write
            } else {
                &mut f.sync
            };
            if cell.is_some() {
                continue;
            }
            *cell = Some(res);
            self.in_flight_ops -= 1;
            if let (Some(w), Some(s)) = (f.write, f.sync) {
                if let Some(f) = self.slots[slot].take() {
                    self.free.push(slot);
                    events.push(Event::Synced {
                        slot,
                        job: f.job,
                        write: result(w).map(|n| n as usize),
                        sync: result(s).map(|_| ()),
                    });
                }
            }
        }
        Ok(events)
    }

    /// Gives up on the ring: the jobs and the directory handle it may
    /// still reference are leaked, and it takes no more work.
    fn leak(&mut self) {
        self.broken = true;
        std::mem::forget(std::mem::take(&mut self.slots));
        if let Some(dir) = self.dir.take() {
            std::mem::forget(dir);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.idle() {
            self.leak();
        }
    }
}

fn result(res: i32) -> io::Result<u32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res.unsigned_abs())
    }
}

fn submit_and_wait(ring: &IoUring, want: usize) -> io::Result<usize> {
    loop {
        match ring.submit_and_wait(want) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
