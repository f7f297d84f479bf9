//! The io_uring backend: one thread owns the ring, takes every queued put
//! at once, links each write to its fdatasync, renames synced files and
//! covers them with one directory fsync (group commit); plain writes take
//! over a job when the ring fails.

use super::*;
use crate::output::uring::{Event, Job, ECANCELED};

pub(super) struct Request {
    pub(super) tmp: PathBuf,
    pub(super) fin: PathBuf,
    pub(super) buf: Arc<Vec<u8>>,
    pub(super) reply: SyncSender<Result<(), SpoolError>>,
}

/// The io_uring backend: one thread owns the ring; puts queue requests on
/// a bounded channel and wait for their reply.
pub(super) struct Writer {
    pub(super) tx: Option<SyncSender<Request>>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(
        shared: Arc<Shared>,
        engine: Engine,
        depth: usize,
    ) -> Result<Writer, SpoolError> {
        let (tx, rx) = mpsc::sync_channel(depth.max(1));
        let thread = std::thread::Builder::new()
            .name("spool-uring".to_owned())
            .spawn(move || writer_loop(&shared, engine, &rx))
            .map_err(|e| SpoolError::UringUnavailable(format!("writer thread: {e}")))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub(super) fn write(&self, tmp: PathBuf, fin: PathBuf, buf: Vec<u8>) -> Result<(), SpoolError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let tx = self.tx.as_ref().ok_or(SpoolError::WriterGone)?;
        let req = Request {
            tmp,
            fin,
            buf: Arc::new(buf),
            reply,
        };
        // A full channel is back-pressure: this waits for room.
        tx.send(req).map_err(|_| SpoolError::WriterGone)?;
        answer.recv().map_err(|_| SpoolError::WriterGone)?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread's state: requests in the ring (by slot), renamed and
/// waiting for a directory fsync, and covered by the one in flight.
pub(super) struct Pipeline<'a> {
    pub(super) shared: &'a Shared,
    pub(super) engine: Engine,
    pub(super) in_ring: Vec<Option<Request>>,
    pub(super) renamed: Vec<Request>,
    pub(super) dir_cohort: Vec<Request>,
}

impl Pipeline<'_> {
    /// Opens the request's temporary file and hands it to the ring.
    pub(super) fn start(&mut self, r: Request) {
        let file = match durable::create(&r.tmp, durable::Access::Private) {
            Ok(f) => f,
            Err(e) => return fail(&r, e),
        };
        let job = Job {
            file,
            buf: r.buf.clone(),
        };
        match self.engine.start(job) {
            Ok(slot) => {
                if let Some(cell) = self.in_ring.get_mut(slot) {
                    *cell = Some(r);
                }
            }
            // No room or too large for one SQE: plain writes, here.
            Err(job) => match finish_plain(&job, 0) {
                Ok(()) => self.rename(r),
                Err(e) => fail(&r, e),
            },
        }
    }

    /// A job is back from the ring.
    pub(super) fn synced(
        &mut self,
        slot: usize,
        job: &Job,
        write: io::Result<usize>,
        sync: io::Result<()>,
    ) {
        let Some(r) = self.in_ring.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let len = job.buf.len();
        let outcome = match (write, sync) {
            (Ok(n), Ok(())) if n == len => Ok(()),
            // Short write (the linked fsync was cancelled): finish it with
            // plain writes.
            (Ok(n), Err(e)) if n < len && e.raw_os_error() == Some(ECANCELED) => {
                finish_plain(job, n)
            }
            (Ok(n), Ok(())) => finish_plain(job, n),
            // A failed fsync is final: retrying it could report success
            // for pages already dropped.
            (Ok(_), Err(e)) | (Err(e), _) => Err(e),
        };
        match outcome {
            Ok(()) => self.rename(r),
            Err(e) => fail(&r, e),
        }
    }

    pub(super) fn rename(&mut self, r: Request) {
        match fs::rename(&r.tmp, &r.fin) {
            Ok(()) => self.renamed.push(r),
            Err(e) => fail(&r, e),
        }
    }

    /// The directory fsync covering `dir_cohort` finished.
    pub(super) fn dir_synced(&mut self, res: io::Result<()>) {
        for r in self.dir_cohort.drain(..) {
            let _ = r.reply.send(match &res {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Not durable: undo, so a put reported failed does
                    // not come back after a crash.
                    let _ = fs::remove_file(&r.fin);
                    Err(SpoolError::Io {
                        path: self.shared.dir.clone(),
                        source: io::Error::new(e.kind(), e.to_string()),
                    })
                }
            });
        }
    }

    /// The ring failed: finish everything it held with plain writes.
    pub(super) fn rescue(&mut self) {
        let mut todo: Vec<Request> = self.in_ring.iter_mut().filter_map(Option::take).collect();
        let mut files = Vec::new();
        for r in todo.drain(..) {
            match redo_plain(&r.tmp, &r.buf) {
                Ok(()) => files.push(r),
                Err(e) => fail(&r, e),
            }
        }
        let pairs: Vec<(&Path, &Path)> = files
            .iter()
            .map(|r| (r.tmp.as_path(), r.fin.as_path()))
            .collect();
        let results = commit(self.shared, &pairs);
        for (r, res) in files.iter().zip(results) {
            let _ = r.reply.send(res);
        }
        // Renamed ones only need the directory fsync.
        let waiting: Vec<Request> = self
            .dir_cohort
            .drain(..)
            .chain(self.renamed.drain(..))
            .collect();
        let res = self.shared.sync_dir();
        for r in waiting {
            let _ = r.reply.send(match &res {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = fs::remove_file(&r.fin);
                    Err(SpoolError::Io {
                        path: self.shared.dir.clone(),
                        source: io::Error::other(e.to_string()),
                    })
                }
            });
        }
    }
}

pub(super) fn fail(r: &Request, e: io::Error) {
    let _ = fs::remove_file(&r.tmp);
    let _ = r.reply.send(Err(SpoolError::Io {
        path: r.tmp.clone(),
        source: e,
    }));
}

/// The writer thread: takes requests as they come, keeps the ring busy
/// (new writes go in while earlier ones sync), renames each synced file
/// and covers all renamed so far with one directory fsync at a time, then
/// answers each put. Runs until the spool is dropped and the ring is idle.
pub(super) fn writer_loop(shared: &Shared, engine: Engine, rx: &Receiver<Request>) {
    let mut p = Pipeline {
        shared,
        in_ring: (0..engine.capacity()).map(|_| None).collect(),
        engine,
        renamed: Vec::new(),
        dir_cohort: Vec::new(),
    };
    let mut open = true;
    loop {
        if open && p.engine.idle() && p.renamed.is_empty() {
            match rx.recv() {
                Ok(r) => p.start(r),
                Err(_) => open = false,
            }
        }
        while open && p.engine.has_room() {
            match rx.try_recv() {
                Ok(r) => p.start(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if !p.renamed.is_empty() && !p.engine.dir_sync_in_flight() && p.engine.start_dir_sync() {
            p.dir_cohort = std::mem::take(&mut p.renamed);
        }
        if p.engine.idle() {
            if !p.renamed.is_empty() {
                // The directory fsync could not be queued: do it here.
                p.dir_cohort = std::mem::take(&mut p.renamed);
                p.dir_synced(
                    shared
                        .sync_dir()
                        .map_err(|e| io::Error::other(e.to_string())),
                );
            }
            if !open {
                break;
            }
            continue;
        }
        let jobs_before = (p.engine.submissions, p.engine.jobs);
        let events = p.engine.wait();
        shared
            .batches
            .fetch_add(p.engine.submissions - jobs_before.0, Ordering::Relaxed);
        shared
            .batched_puts
            .fetch_add(p.engine.jobs - jobs_before.1, Ordering::Relaxed);
        match events {
            Ok(events) => {
                for ev in events {
                    match ev {
                        Event::Synced {
                            slot,
                            job,
                            write,
                            sync,
                        } => p.synced(slot, &job, write, sync),
                        Event::DirSynced(res) => p.dir_synced(res),
                    }
                }
            }
            Err(b) => {
                tracing::error!(error = %b.0, "spool: io_uring failed, plain writes from now on");
                *shared
                    .uring_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("io_uring failed at run time: {}", b.0));
                p.rescue();
                // Plain writes on this thread from now on.
                while let Ok(r) = rx.recv() {
                    let res = write_plain(shared, &r.tmp, &r.fin, &r.buf);
                    let _ = r.reply.send(res);
                }
                return;
            }
        }
    }
}

/// Completes a job from byte `from` and fdatasyncs it.
pub(super) fn finish_plain(job: &Job, from: usize) -> io::Result<()> {
    let rest = job.buf.get(from..).unwrap_or_default();
    job.file.write_all_at(rest, from as u64)?;
    job.file.sync_data()
}

/// Writes a whole temporary file anew after the ring failed: unlinks the
/// old one first (the kernel may still write to its inode).
pub(super) fn redo_plain(tmp: &Path, buf: &[u8]) -> io::Result<()> {
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    durable::write_synced(tmp, buf, durable::Access::Private)
}
