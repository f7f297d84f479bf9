//! The outbox delivery worker: the IO edge around [`super::outbox::Schedule`].
//!
//! One tokio task owns the schedule. It wakes when a callback is queued,
//! when an attempt finishes, or at the schedule's next deadline; POSTs run
//! as separate tasks, at most `callbacks.max_in_flight` at once. Results
//! are written back to the store (delete, or new attempt time) before the
//! next attempt of that task can start, so a restart resumes exactly where
//! delivery stood. Delivery is at-least-once: a crash between a 200 and the
//! delete re-sends that callback.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use super::log::DeliveryLog;
use super::outbox::{Outcome, Pending, Schedule};
use crate::clock;
use crate::config::CallbackConfig;
use crate::metrics::Metrics;
use crate::state::{OutboxEntry, StateStore};

/// Handle for queuing callbacks that the store has already made durable.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<OutboxEntry>,
    log: Arc<DeliveryLog>,
}

impl Outbox {
    /// Hands freshly committed entries to the worker. (Unbounded is safe:
    /// every entry is already on disk and the number is bounded by the
    /// API rate; the channel only carries the wake-up.)
    pub fn queued(&self, entries: Vec<OutboxEntry>) {
        for e in entries {
            let _ = self.tx.send(e);
        }
    }

    /// What became of recent callbacks (the console's view).
    pub fn log(&self) -> Arc<DeliveryLog> {
        self.log.clone()
    }
}

struct Attempt {
    entry: Arc<OutboxEntry>,
    delivered: bool,
}

/// Starts the worker with the entries left in the store. It runs until
/// `shutdown` fires; in-flight POSTs are abandoned then (they are resent
/// after a restart).
pub fn start(
    store: Arc<StateStore>,
    backlog: Vec<OutboxEntry>,
    config: CallbackConfig,
    metrics: Metrics,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> (Outbox, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<OutboxEntry>();
    let log = Arc::new(DeliveryLog::default());
    let worker_log = log.clone();
    let handle = tokio::spawn(async move {
        let log = worker_log;
        let client = match reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kiroku/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the callback HTTP client; callbacks stay queued");
                return;
            }
        };
        let mut schedule = Schedule::new(config.retry_for.as_millis() as u64);
        let mut entries: std::collections::HashMap<u64, Arc<OutboxEntry>> =
            std::collections::HashMap::new();
        for e in backlog {
            log.queued(e.seq, &e.task_id, e.event_type, e.attempts, e.created_ms);
            schedule.push(pending_of(&e));
            entries.insert(e.seq, Arc::new(e));
        }
        metrics.callbacks_pending.set(schedule.pending() as i64);
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let (done_tx, mut done_rx) = mpsc::channel::<Attempt>(config.max_in_flight.max(1));
        loop {
            let now = clock::unix_ms();
            for p in schedule.due(now) {
                let Some(entry) = entries.get(&p.seq).cloned() else {
                    continue;
                };
                let client = client.clone();
                let done = done_tx.clone();
                let permits = permits.clone();
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let delivered = post(&client, &entry).await;
                    let _ = done.send(Attempt { entry, delivered }).await;
                });
            }
            let sleep_for = schedule
                .next_wakeup()
                .map(|t| Duration::from_millis(t.saturating_sub(clock::unix_ms())))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(e) = rx.recv() => {
                    metrics.callbacks_queued.inc();
                    log.queued(e.seq, &e.task_id, e.event_type, e.attempts, e.created_ms);
                    schedule.push(pending_of(&e));
                    entries.insert(e.seq, Arc::new(e));
                }
                Some(a) = done_rx.recv() => {
                    let outcome = schedule.complete(&a.entry.task_id, a.entry.seq, a.delivered, clock::unix_ms());
                    let store = store.clone();
                    let result = match outcome {
                        Some(Outcome::Delivered { seq }) => {
                            metrics.callbacks_delivered.inc();
                            log.delivered(seq, clock::unix_ms());
                            entries.remove(&seq);
                            tokio::task::spawn_blocking(move || store.outbox_remove(seq)).await
                        }
                        Some(Outcome::Retry { seq, attempts, next_attempt_ms }) => {
                            metrics.callbacks_retried.inc();
                            log.attempted(seq, attempts);
                            tracing::debug!(seq, attempts, task_id = %a.entry.task_id, "callback will be retried");
                            tokio::task::spawn_blocking(move || store.outbox_retry(seq, attempts, next_attempt_ms)).await
                        }
                        Some(Outcome::GivenUp { seq, attempts }) => {
                            metrics.callbacks_given_up.inc();
                            log.given_up(seq, attempts, clock::unix_ms());
                            tracing::error!(seq, attempts, task_id = %a.entry.task_id, event_type = a.entry.event_type, url = %a.entry.url,
                                "callback given up after callbacks.retry_for_seconds");
                            entries.remove(&seq);
                            tokio::task::spawn_blocking(move || store.outbox_remove(seq)).await
                        }
                        None => Ok(Ok(())),
                    };
                    if !matches!(result, Ok(Ok(()))) {
                        metrics.store_errors.inc();
                        tracing::error!(seq = a.entry.seq, "could not record a callback attempt in the state store");
                    }
                }
                _ = tokio::time::sleep(sleep_for) => {}
            }
            metrics.callbacks_pending.set(schedule.pending() as i64);
        }
    });
    (Outbox { tx, log }, handle)
}

fn pending_of(e: &OutboxEntry) -> Pending {
    Pending {
        seq: e.seq,
        task_id: e.task_id.clone(),
        created_ms: e.created_ms,
        attempts: e.attempts,
        next_attempt_ms: e.next_attempt_ms,
    }
}

async fn post(client: &reqwest::Client, e: &OutboxEntry) -> bool {
    let result = client
        .post(&e.url)
        .header("Content-Type", "application/json")
        .header("Sign", &e.sign)
        .header("SdkAppId", e.sdk_app_id.to_string())
        .body(e.body.clone())
        .send()
        .await;
    match result {
        Ok(resp) if resp.status().is_success() => true,
        Ok(resp) => {
            tracing::warn!(seq = e.seq, status = resp.status().as_u16(), url = %e.url, "callback refused by the receiver");
            false
        }
        Err(err) => {
            tracing::warn!(seq = e.seq, error = %err, url = %e.url, "callback not delivered");
            false
        }
    }
}
