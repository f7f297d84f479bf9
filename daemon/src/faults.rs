//! Faults injected on purpose, for the supervision tests only: with the
//! environment variable `KIROKU_TEST_FAULTS=1` the operator endpoint
//! `POST /v1/faults` (behind the admin token) makes the ingest engine or a
//! task's recorder thread panic at its next pass, or the state store fail
//! its next commits, or the H.264 encoder of the next mixed tasks slow
//! (an overload the box did not foresee), so that the end-to-end suite can
//! watch the daemon recover or degrade (docs/operations.md,
//! "Supervision"). Without the variable the endpoint answers 404 and
//! nothing here is ever armed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use kiroku_gpu::{EncodeError, EncodedFrame, Picture, VideoEncoder};

#[derive(Default)]
struct Armed {
    ingest: AtomicBool,
    recorders: Mutex<HashSet<String>>,
    commit_failures: std::sync::atomic::AtomicU32,
    /// Milliseconds each frame of a mixed task's encoder takes at least
    /// (for tasks whose recorder starts while it is set; 0: off).
    slow_encoder_ms: std::sync::atomic::AtomicU32,
}

fn armed() -> &'static Armed {
    static ARMED: OnceLock<Armed> = OnceLock::new();
    ARMED.get_or_init(Armed::default)
}

/// Whether faults may be injected in this process.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("KIROKU_TEST_FAULTS").is_some_and(|v| v == "1"))
}

/// The ingest engine panics at its next pass.
pub fn arm_ingest_panic() {
    armed().ingest.store(true, Ordering::SeqCst);
}

/// Task `task_id`'s recorder panics at its next pass.
pub fn arm_recorder_panic(task_id: &str) {
    crate::sync::lock(&armed().recorders).insert(task_id.to_owned());
}

/// The next `n` state-store commits fail (as on a full disk).
pub fn arm_commit_failures(n: u32) {
    armed().commit_failures.store(n, Ordering::SeqCst);
}

/// Mixed tasks started from now on encode each frame in at least `ms`
/// (0 turns it off).
pub fn arm_slow_encoder(ms: u32) {
    armed().slow_encoder_ms.store(ms, Ordering::SeqCst);
}

/// The encoder a new mixed task gets: `encoder`, slowed down if armed.
pub fn encoder(encoder: Box<dyn VideoEncoder>) -> Box<dyn VideoEncoder> {
    let ms = if enabled() {
        armed().slow_encoder_ms.load(Ordering::SeqCst)
    } else {
        0
    };
    if ms == 0 {
        return encoder;
    }
    Box::new(SlowEncoder {
        inner: encoder,
        at_least: std::time::Duration::from_millis(u64::from(ms)),
    })
}

/// An encoder slower than the box's estimate (the test of graceful
/// overload): every frame takes at least `at_least`.
struct SlowEncoder {
    inner: Box<dyn VideoEncoder>,
    at_least: std::time::Duration,
}

impl VideoEncoder for SlowEncoder {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn encode(
        &mut self,
        picture: &Picture,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        let started = std::time::Instant::now();
        let out = self.inner.encode(picture, force_keyframe);
        if let Some(rest) = self.at_least.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        out
    }
}

/// Called by the state store before a commit: whether it must fail.
pub fn commit_checkpoint() -> bool {
    enabled()
        && armed()
            .commit_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
}

/// Called by the ingest engine each pass: panics once if armed.
pub fn ingest_checkpoint() {
    if enabled() && armed().ingest.swap(false, Ordering::SeqCst) {
        panic!("injected fault: ingest engine panic (KIROKU_TEST_FAULTS)");
    }
}

/// Called by a recorder each pass: panics once if armed for its task.
pub fn recorder_checkpoint(task_id: &str) {
    if enabled() && crate::sync::lock(&armed().recorders).remove(task_id) {
        panic!("injected fault: recorder panic for task {task_id} (KIROKU_TEST_FAULTS)");
    }
}
