//! Spool tests: both backends, crash recovery, capacity and disk-full.

use std::io::{BufRead, Write};
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::output::queue::{Backoff, Failed, UploadQueue};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "kiroku-spool-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The backends to test: plain always, io_uring when it works here.
fn backends() -> Vec<BackendChoice> {
    let mut v = vec![BackendChoice::Plain];
    let dir = File::open(std::env::temp_dir()).expect("temp dir");
    match Engine::probe(4, dir) {
        Ok(_) => v.push(BackendChoice::IoUring),
        // io_uring is the default backend: the test command sets
        // KIROKU_REQUIRE_URING so that a machine without it fails instead
        // of testing the fallback alone.
        Err(e) if std::env::var_os("KIROKU_REQUIRE_URING").is_some() => {
            panic!("io_uring unavailable here ({e}) and KIROKU_REQUIRE_URING is set")
        }
        Err(e) => eprintln!("io_uring unavailable here ({e}): testing plain writes only"),
    }
    v
}

fn open(dir: &Path, cap: u64, b: BackendChoice) -> Spool {
    Spool::open_with(dir, SpoolOptions::new(cap).backend(b)).expect("open")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("dir")
        .filter_map(|d| d.ok()?.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

fn payload(n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + n * 7) as u8).collect()
}

/// A packed MP4 is spooled as its header and its spilled payload; the
/// entry is the same as the whole file put at once, and survives a reopen.
#[test]
fn bytes_and_a_file_spool_as_one_entry() {
    for b in backends() {
        let d = TempDir::new("content");
        let tail = d.0.with_extension("payload");
        std::fs::write(&tail, payload(2, 300_000)).expect("payload");
        let s = open(&d.0, 1 << 20, b);
        let id = s
            .put_content(
                "t1",
                "p/t1/a.mp4",
                durable::Content::spilled(b"head", &tail),
            )
            .expect("put");
        let mut whole = b"head".to_vec();
        whole.extend_from_slice(&payload(2, 300_000));
        assert_eq!(s.read(id).expect("read"), whole);
        assert_eq!(s.get(id).expect("entry").size, whole.len() as u64);
        // Too big for what is left: refused before anything is written.
        let big = s.put_content(
            "t1",
            "p/t1/b.mp4",
            durable::Content::spilled(&[0; 800_000], &tail),
        );
        assert!(matches!(big, Err(SpoolError::Full { .. })), "{big:?}");
        drop(s);
        let s = open(&d.0, 1 << 20, b);
        assert_eq!(s.read(id).expect("read after reopen"), whole);
        assert_eq!(names(&d.0).len(), 1, "{:?}", names(&d.0));
        let _ = std::fs::remove_file(&tail);
    }
}

#[test]
fn put_read_remove_round_trip() {
    for b in backends() {
        let d = TempDir::new("rt");
        let s = open(&d.0, 1 << 20, b);
        assert_eq!(
            s.backend(),
            if b == BackendChoice::Plain {
                "plain"
            } else {
                "io_uring"
            }
        );
        let a = s.put("t1", "p/t1/a_1.ts", &payload(1, 1000)).expect("put");
        let p = s.put("t1", "p/t1/a.m3u8", b"#EXTM3U\n").expect("put");
        let e = s.put("t1", "p/t1/empty.ts", b"").expect("empty put");
        assert!(a < p && p < e);
        assert_eq!(s.read(a).expect("read"), payload(1, 1000));
        assert_eq!(s.read(p).expect("read"), b"#EXTM3U\n");
        assert!(s.read(e).expect("read").is_empty());
        let got = s.get(a).expect("entry");
        assert_eq!(
            (got.task.as_str(), got.key.as_str(), got.size),
            ("t1", "p/t1/a_1.ts", 1000)
        );
        let u = s.usage();
        assert_eq!(u.files, 3);
        assert!(u.bytes > 1008);
        assert_eq!(
            names(&d.0).len(),
            3,
            "no temporary files: {:?}",
            names(&d.0)
        );
        for id in [a, p, e] {
            s.remove(id).expect("remove");
        }
        assert!(matches!(s.read(a), Err(SpoolError::NotFound(_))));
        assert!(matches!(s.remove(a), Err(SpoolError::NotFound(_))));
        assert_eq!(s.usage().bytes, 0);
        assert!(names(&d.0).is_empty());
        assert!(matches!(
            s.put("t", "../x", b""),
            Err(SpoolError::BadKey(_))
        ));
    }
}

#[test]
fn backends_write_identical_files() {
    let bs = backends();
    if bs.len() < 2 {
        eprintln!("skipped: io_uring unavailable here");
        return;
    }
    let mut files = Vec::new();
    for b in bs {
        let d = TempDir::new("same");
        let s = open(&d.0, 64 << 20, b);
        for n in 0..20 {
            let key = format!("p/t/seg_{n}.ts");
            s.put("task", &key, &payload(n, 1000 + n * 4096))
                .expect("put");
        }
        s.put("task", "p/t/x.m3u8", b"#EXTM3U").expect("put");
        let all: Vec<(String, Vec<u8>)> = names(&d.0)
            .into_iter()
            .map(|n| {
                let b = fs::read(d.0.join(&n)).expect("read");
                (n, b)
            })
            .collect();
        assert_eq!(all.len(), 21);
        files.push(all);
    }
    assert!(files[0] == files[1], "io_uring and plain files differ");
}

#[test]
fn recovery_after_crash_loses_and_duplicates_nothing() {
    let d = TempDir::new("crash");
    let (a, b) = {
        let s = open(&d.0, 1 << 20, BackendChoice::Plain);
        let a = s.put("t", "p/t/a_1.ts", b"segment").expect("put");
        let b = s.put("t", "p/t/a.m3u8", b"playlist").expect("put");
        let r = RetryState {
            attempts: 3,
            next_attempt_at: 12_345,
            last_error: Some("HTTP 503".into()),
        };
        s.set_retry(a, &r).expect("retry");
        (a, b)
    };
    // What a crash can leave: a half-written entry (its put never
    // returned), a retry state caught mid-replace (the temp file), a
    // torn state file, a state whose entry was removed.
    fs::write(d.0.join(format!("{:016x}.tmp", b + 1)), b"KRKSPOL1\x01\0").expect("w");
    fs::write(d.0.join(format!("{b:016x}.retry.tmp")), b"{\"attem").expect("w");
    fs::write(d.0.join(format!("{b:016x}.retry")), b"{\"attempts\":").expect("w");
    fs::write(d.0.join(format!("{:016x}.retry", b + 7)), b"{}").expect("w");
    fs::write(d.0.join("unrelated.txt"), b"x").expect("w");

    let s = open(&d.0, 1 << 20, BackendChoice::Plain);
    let rec = s.recovery().clone();
    assert_eq!(rec.entries, 2);
    assert_eq!(rec.temp_removed, 2);
    assert_eq!(rec.orphans_removed, 1);
    assert_eq!(rec.bad_retry_states, 1);
    let es = s.entries();
    assert_eq!(es.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(es[0].retry.attempts, 3);
    assert_eq!(es[0].retry.next_attempt_at, 12_345);
    assert_eq!(
        es[1].retry,
        RetryState::default(),
        "torn state: no failures"
    );
    assert_eq!(s.read(a).expect("read"), b"segment");
    assert_eq!(s.read(b).expect("read"), b"playlist");
    // New ids never reuse one seen on disk, even a temporary one.
    let c = s.put("t", "p/t/a_2.ts", b"next").expect("put");
    assert!(c > b + 1);
    assert_eq!(
        names(&d.0),
        vec![
            format!("{a:016x}.ent"),
            format!("{a:016x}.retry"),
            format!("{b:016x}.ent"),
            format!("{b:016x}.retry"),
            format!("{c:016x}.ent"),
            "unrelated.txt".to_owned(),
        ]
    );
    // Removing the entry takes its state along.
    s.remove(a).expect("remove");
    assert!(!d.0.join(format!("{a:016x}.retry")).exists());
}

#[test]
fn corrupt_entry_is_set_aside_not_served() {
    let d = TempDir::new("corrupt");
    let a = {
        let s = open(&d.0, 1 << 20, BackendChoice::Plain);
        s.put("t", "p/t/a.ts", b"0123456789").expect("put")
    };
    let path = d.0.join(format!("{a:016x}.ent"));
    let raw = fs::read(&path).expect("read");
    fs::write(&path, &raw[..raw.len() - 3]).expect("truncate");
    let s = open(&d.0, 1 << 20, BackendChoice::Plain);
    assert_eq!(s.recovery().corrupt.len(), 1);
    assert!(s.entries().is_empty());
    assert_eq!(s.usage().bytes, 0);
    assert!(d.0.join(format!("{a:016x}.corrupt")).exists());
}

#[test]
fn capacity_exceeded_fails_that_put_only() {
    for b in backends() {
        let d = TempDir::new("cap");
        let one = encode("t1", "p/t1/s_0.ts", &[0; 1000]).len() as u64;
        let s = open(&d.0, 3 * one, b);
        let ids: Vec<EntryId> = (0..3)
            .map(|n| {
                s.put("t1", &format!("p/t1/s_{n}.ts"), &[0; 1000])
                    .expect("put")
            })
            .collect();
        let err = s.put("t1", "p/t1/s_3.ts", &[0; 1000]).expect_err("full");
        assert!(err.is_full(), "{err}");
        match &err {
            SpoolError::Full {
                task,
                needed,
                used,
                capacity,
                ..
            } => {
                assert_eq!(task, "t1");
                assert_eq!((*needed, *used, *capacity), (one, 3 * one, 3 * one));
            }
            other => panic!("{other}"),
        }
        // Small files of another task still fit nowhere; nothing was
        // left behind by the refused puts.
        assert!(s
            .put("t2", "p/t2/x.m3u8", b"#")
            .expect_err("full")
            .is_full());
        assert_eq!(s.usage().bytes, 3 * one);
        assert_eq!(names(&d.0).len(), 3);
        // Space frees: puts go on.
        s.remove(ids[0]).expect("remove");
        let t2 = s.put("t2", "p/t2/x.m3u8", b"#EXTM3U").expect("fits now");
        assert_eq!(s.read(t2).expect("read"), b"#EXTM3U");
        assert_eq!(s.usage().files, 3);
    }
}

#[test]
fn concurrent_puts_from_eight_threads() {
    for b in backends() {
        let d = TempDir::new("conc");
        let s = Arc::new(open(&d.0, 1 << 30, b));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..40)
                        .map(|n| {
                            let key = format!("p/t{t}/s_{n}.ts");
                            let id = s
                                .put(&format!("t{t}"), &key, &payload(t * 100 + n, 5000 + n))
                                .expect("put");
                            (id, t, n)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for th in threads {
            let mine = th.join().expect("thread");
            // Per thread (per task), ids follow put order.
            assert!(mine.windows(2).all(|w| w[0].0 < w[1].0));
            all.extend(mine);
        }
        let mut ids: Vec<EntryId> = all.iter().map(|x| x.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 320);
        assert_eq!(s.entries().len(), 320);
        for (id, t, n) in all {
            assert_eq!(s.read(id).expect("read"), payload(t * 100 + n, 5000 + n));
            let e = s.get(id).expect("entry");
            assert_eq!(e.key, format!("p/t{t}/s_{n}.ts"));
        }
        assert_eq!(names(&d.0).len(), 320);
        let (batches, puts) = s.batching();
        if b == BackendChoice::IoUring {
            assert_eq!(puts, 320);
            eprintln!("io_uring: {puts} puts in {batches} submissions");
        }
    }
}

#[test]
fn queue_state_survives_restart() {
    let d = TempDir::new("queue");
    let mut q = UploadQueue::new(Backoff {
        jitter: 0.0,
        ..Backoff::default()
    });
    let (seg, pl2, before) = {
        let s = open(&d.0, 1 << 20, BackendChoice::Plain);
        let seg = s.put("t", "p/t/a_1.ts", b"seg").expect("put");
        let pl1 = s.put("t", "p/t/a.m3u8", b"v1").expect("put");
        for e in [seg, pl1] {
            assert!(q.push(s.get(e).expect("entry")).superseded.is_empty());
        }
        let due = q.due(1_000);
        assert_eq!(due.len(), 1);
        let Failed::Retry(r) = q.failed(seg, 1_000, "HTTP 500") else {
            panic!("not retried")
        };
        s.set_retry(seg, &r).expect("persist");
        // A newer playlist arrives; the crash comes before the
        // superseded one is removed from the spool.
        let pl2 = s.put("t", "p/t/a.m3u8", b"v2").expect("put");
        assert_eq!(q.push(s.get(pl2).expect("entry")).superseded, vec![pl1]);
        (seg, pl2, q.get(seg).cloned())
    };
    let s = open(&d.0, 1 << 20, BackendChoice::Plain);
    let (mut q2, pushed) = UploadQueue::restore(q.backoff().clone(), s.entries());
    for id in pushed.superseded {
        s.remove(id).expect("remove superseded");
    }
    assert_eq!(s.entries().len(), 2);
    assert_eq!(q2.get(seg).cloned(), before, "attempts and schedule kept");
    assert_eq!(q2.len(), 2);
    // Resumes exactly: the segment at its retry time, then the newest
    // playlist.
    assert!(q2.due(1_999).is_empty());
    let due = q2.due(2_000);
    assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), vec![seg]);
    q2.succeeded(seg);
    s.remove(seg).expect("remove");
    let due = q2.due(2_000);
    assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), vec![pl2]);
    assert_eq!(s.read(pl2).expect("read"), b"v2");
}

#[test]
fn forced_backends() {
    let d = TempDir::new("force");
    let s = open(&d.0, 1, BackendChoice::Plain);
    assert_eq!(s.backend(), "plain");
    assert!(s.fallback_reason().is_some());
    drop(s);
    match Spool::open_with(&d.0, SpoolOptions::new(1).backend(BackendChoice::IoUring)) {
        Ok(s) => {
            assert_eq!(s.backend(), "io_uring");
            assert!(s.fallback_reason().is_none());
        }
        Err(SpoolError::UringUnavailable(e)) => eprintln!("io_uring unavailable here: {e}"),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(BackendChoice::parse("PLAIN"), Some(BackendChoice::Plain));
    assert_eq!(
        BackendChoice::parse("io_uring"),
        Some(BackendChoice::IoUring)
    );
    assert_eq!(BackendChoice::parse("nope"), None);
}

const CHILD_DIR: &str = "KIROKU_SPOOL_TEST_CHILD_DIR";
const CHILD_BACKEND: &str = "KIROKU_SPOOL_TEST_CHILD_BACKEND";

/// The child of `kill_9_loses_nothing_acknowledged` (ignored otherwise):
/// puts until killed, printing each acknowledged put.
#[test]
#[ignore = "the child process of kill_9_loses_nothing_acknowledged, which runs it with --ignored"]
fn kill_9_child() {
    let dir = std::env::var(CHILD_DIR).expect("run by kill_9_loses_nothing_acknowledged");
    let b = std::env::var(CHILD_BACKEND)
        .ok()
        .and_then(|v| BackendChoice::parse(&v))
        .unwrap_or(BackendChoice::Plain);
    let s = Arc::new(open(Path::new(&dir), 1 << 40, b));
    let out = Arc::new(Mutex::new(io::stdout()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (s, out) = (s.clone(), out.clone());
            std::thread::spawn(move || {
                for n in 0.. {
                    let len = 1 + (n * 977 + t * 13) % 70_000;
                    let key = format!("p/t{t}/s_{n}.ts");
                    let id = s
                        .put(&format!("t{t}"), &key, &payload(n, len))
                        .expect("put");
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = writeln!(o, "ACK {id} {t} {n} {len}");
                    let _ = o.flush();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let exe = std::env::current_exe().expect("the path of this test binary");
    for b in backends() {
        let d = TempDir::new("kill9");
        fs::create_dir_all(&d.0).expect("mkdir");
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "output::spool::tests::kill_9_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_DIR, &d.0)
            .env(
                CHILD_BACKEND,
                if b == BackendChoice::Plain {
                    "plain"
                } else {
                    "io_uring"
                },
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut acked = Vec::new();
        for line in io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let f: Vec<usize> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            assert_eq!(f.len(), 4, "{line}");
            acked.push((f[0] as EntryId, f[1], f[2], f[3]));
            if acked.len() == 150 {
                child.kill().expect("kill -9");
                break;
            }
        }
        let _ = child.wait();
        assert_eq!(acked.len(), 150, "child stopped early");
        let s = open(&d.0, 1 << 40, BackendChoice::Plain);
        let entries = s.entries();
        for &(id, t, n, len) in &acked {
            let e = s
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged entry {id} lost"));
            assert_eq!(e.key, format!("p/t{t}/s_{n}.ts"));
            assert_eq!(s.read(id).expect("read"), payload(n, len));
        }
        // Puts cut short by the kill either finished whole or left
        // nothing; every key is there at most once.
        let mut keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        let total = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), total, "duplicated entries");
        assert!(total >= acked.len() && total <= acked.len() + 4 * 2);
        for e in &entries {
            assert_eq!(s.read(e.id).expect("read").len() as u64, e.size);
        }
        assert!(names(&d.0).iter().all(|n| n.ends_with(".ent")));
    }
}

#[test]
fn another_box_reads_one_tasks_entries_newest_playlist_only_and_removes_them() {
    let t = TempDir::new("foreign");
    let spool = Spool::open_with(
        &t.0,
        SpoolOptions::new(1 << 20).backend(BackendChoice::Plain),
    )
    .expect("open");
    spool
        .put("task-a", "p/task-a/seg0.ts", b"segment zero")
        .expect("put");
    spool
        .put("task-b", "p/task-b/seg0.ts", b"other task")
        .expect("put");
    spool
        .put("task-a", "p/task-a/x.m3u8", b"#EXTM3U old")
        .expect("put");
    spool
        .put("task-a", "p/task-a/seg1.ts", b"segment one")
        .expect("put");
    spool
        .put("task-a", "p/task-a/x.m3u8", b"#EXTM3U new")
        .expect("put");
    // A half-written file of the box that owns the spool is no entry.
    fs::write(t.0.join("00000000000000ff.tmp"), b"half").expect("tmp");

    let found = foreign_entries(&t.0, "task-a").expect("read");
    let keys: Vec<(&str, bool)> = found
        .iter()
        .map(|e| (e.key.as_str(), e.superseded))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("p/task-a/seg0.ts", false),
            ("p/task-a/x.m3u8", true),
            ("p/task-a/seg1.ts", false),
            ("p/task-a/x.m3u8", false),
        ]
    );
    let newest = &found[3];
    let mut payload = vec![0u8; newest.payload_len as usize];
    File::open(&newest.path)
        .expect("entry")
        .read_exact_at(&mut payload, newest.payload_offset)
        .expect("payload");
    assert_eq!(payload, b"#EXTM3U new");

    for e in &found {
        e.remove().expect("remove");
        e.remove().expect("removing twice is no error");
    }
    drop(spool);
    // The owner, back, finds only its other task's entry.
    let spool = Spool::open_with(
        &t.0,
        SpoolOptions::new(1 << 20).backend(BackendChoice::Plain),
    )
    .expect("reopen");
    let left: Vec<String> = spool.entries().into_iter().map(|e| e.key).collect();
    assert_eq!(left, vec!["p/task-b/seg0.ts".to_owned()]);
    assert!(foreign_entries(&t.0.join("missing"), "task-a")
        .expect("a missing spool is empty")
        .is_empty());
}
