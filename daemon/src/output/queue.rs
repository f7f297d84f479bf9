//! The upload queue: which spooled files to upload next, and when to retry
//! the ones that failed. Sans-IO: no clock, no files, no network. Time is
//! passed in as Unix milliseconds, the caller does the uploads and reports
//! each outcome, and the state that has to survive a restart (each entry's
//! attempts and next attempt time, [`RetryState`]) is handed back to the
//! caller for the [`Spool`](super::spool::Spool) to persist.
//!
//! Guarantees:
//! - Every entry pushed stays in the queue until [`UploadQueue::succeeded`]
//!   or until a newer version of the same key supersedes it; a failure
//!   never drops an entry (retries go on at the capped backoff, and entries
//!   that keep failing are counted as *stranded* per task).
//! - Per key, at most one upload is in flight, and versions go in put
//!   order: a newer version supersedes an older one that is still queued
//!   (the older is dropped without being uploaded), and waits while an
//!   older one is in flight (which is then dropped if it fails).
//! - A playlist is never uploaded before a segment of the same task that
//!   was spooled before it, so a published playlist never names a segment
//!   the remote store does not have yet. Segments go in any order.
//! - An entry handed out by [`UploadQueue::due`] is not handed out again
//!   until its outcome is reported (after a restart, entries that were in
//!   flight are due again: uploads are at-least-once, and a re-upload puts
//!   the same bytes under the same key).
//! - The backoff is exponential with a cap and jitter; the jitter is a
//!   deterministic function of (entry, attempt, seed), so schedules can be
//!   tested and retries of many entries that failed together still spread.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// A spooled file's identity: the spool's sequence number, in put order.
pub type EntryId = u64;

/// What an entry is, for ordering: taken from the key's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A media segment (or any other file): independent of its siblings.
    Segment,
    /// A playlist (`.m3u8`, `.mpd`): waits for the segments spooled before it.
    Playlist,
}

impl Kind {
    pub fn of_key(key: &str) -> Kind {
        let ext = key.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        if ext.eq_ignore_ascii_case("m3u8") || ext.eq_ignore_ascii_case("mpd") {
            Kind::Playlist
        } else {
            Kind::Segment
        }
    }
}

/// The part of an entry that changes with failures and is persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryState {
    /// Failed attempts so far.
    pub attempts: u32,
    /// Unix milliseconds before which the entry is not due.
    pub next_attempt_at: u64,
    /// The last failure, for operators.
    pub last_error: Option<String>,
}

/// One file waiting to be uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub task: String,
    pub key: String,
    /// Payload bytes.
    pub size: u64,
    pub kind: Kind,
    pub retry: RetryState,
}

impl Entry {
    /// A freshly spooled entry: never tried, due at once.
    pub fn new(id: EntryId, task: impl Into<String>, key: impl Into<String>, size: u64) -> Entry {
        let key = key.into();
        Entry {
            id,
            task: task.into(),
            kind: Kind::of_key(&key),
            key,
            size,
            retry: RetryState::default(),
        }
    }
}

/// Retry timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The delay after the first failure, in milliseconds.
    pub base_ms: u64,
    /// The longest delay, in milliseconds.
    pub cap_ms: u64,
    /// The share of each delay taken off at random, in `[0, 1]`: a delay
    /// `d` becomes one in `[d·(1-jitter), d]`.
    pub jitter: f64,
    /// Seeds the jitter.
    pub seed: u64,
    /// After this many failed attempts an entry counts as stranded.
    pub stranded_after: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 1_000,
            cap_ms: 5 * 60_000,
            jitter: 0.25,
            seed: 0x6b69_726f_6b75,
            stranded_after: 8,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt, after `attempts` failures (≥ 1).
    pub fn delay_ms(&self, id: EntryId, attempts: u32) -> u64 {
        let shift = attempts.saturating_sub(1).min(63);
        let full = self.base_ms.saturating_mul(1u64 << shift).min(self.cap_ms);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 || full == 0 {
            return full;
        }
        let r = splitmix64(self.seed ^ id.rotate_left(17) ^ u64::from(attempts));
        // 53 random bits → [0, 1).
        let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
        let off = (full as f64 * jitter * unit) as u64;
        full - off.min(full)
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What [`UploadQueue::push`] did besides queueing the entry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Older queued versions of the same key, dropped: remove them from the
    /// spool.
    pub superseded: Vec<EntryId>,
}

/// The outcome of [`UploadQueue::failed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Failed {
    /// Scheduled again; persist this state (`Spool::set_retry`).
    Retry(RetryState),
    /// A newer version of the key is queued: the entry is dropped, remove
    /// it from the spool.
    Superseded,
    /// Not in flight (unknown, or already reported): nothing changed.
    Unknown,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Entries in the queue, in flight included.
    pub pending_files: usize,
    pub pending_bytes: u64,
    pub in_flight: usize,
    /// Failed attempts since the queue was made (not persisted).
    pub retries: u64,
    /// Entries dropped because a newer version of their key came.
    pub superseded: u64,
    /// Per task, entries that failed at least `stranded_after` times.
    pub stranded: BTreeMap<String, usize>,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    in_flight: bool,
}

/// The queue. See the module docs for its rules.
///
/// Every operation costs O(log n) in the backlog, or the few entries that
/// must wait behind an upload in flight, never a walk over the backlog
/// (only [`retry_now`](Self::retry_now), once per task's end): an hour's S3
/// outage leaves 100k entries, and a walk under the queue's lock at every
/// put and every finished upload starved the uploads that drain it.
#[derive(Debug)]
pub struct UploadQueue {
    backoff: Backoff,
    /// All entries, in put order.
    slots: BTreeMap<EntryId, Slot>,
    /// Per key, the ids of its versions in the queue (at most two: one in
    /// flight and the newest), ascending.
    by_key: HashMap<String, Vec<EntryId>>,
    /// Per task, its entries' counts and its queued segments.
    per_task: HashMap<String, TaskEntries>,
    /// The entries not in flight, by the time they are due at.
    waiting: BTreeSet<(u64, EntryId)>,
    /// The entries of `waiting` due at `promoted_to` (or earlier), in put
    /// order: what [`due_at_most`](Self::due_at_most) hands out from.
    ready: BTreeSet<EntryId>,
    promoted_to: u64,
    pending_bytes: u64,
    in_flight: usize,
    retries: u64,
    superseded: u64,
}

#[derive(Debug, Default)]
struct TaskEntries {
    pending: usize,
    stranded: usize,
    /// Its segments in the queue (in flight included): a playlist waits
    /// while one spooled before it is here.
    segments: BTreeSet<EntryId>,
}

impl UploadQueue {
    pub fn new(backoff: Backoff) -> Self {
        UploadQueue {
            backoff,
            slots: BTreeMap::new(),
            by_key: HashMap::new(),
            per_task: HashMap::new(),
            waiting: BTreeSet::new(),
            ready: BTreeSet::new(),
            promoted_to: 0,
            pending_bytes: 0,
            in_flight: 0,
            retries: 0,
            superseded: 0,
        }
    }

    /// A queue holding `entries` (the spool's entries after a restart, with
    /// their persisted retry state); also returns what they supersede.
    pub fn restore(backoff: Backoff, entries: impl IntoIterator<Item = Entry>) -> (Self, Pushed) {
        let mut q = UploadQueue::new(backoff);
        let mut entries: Vec<Entry> = entries.into_iter().collect();
        entries.sort_by_key(|e| e.id);
        let mut all = Pushed::default();
        for e in entries {
            all.superseded.extend(q.push(e).superseded);
        }
        (q, all)
    }

    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, id: EntryId) -> Option<&Entry> {
        self.slots.get(&id).map(|s| &s.entry)
    }

    /// Queues an entry. Entries of one key must be pushed in id order (the
    /// spool's put order); an entry older than a queued version of its key
    /// is itself superseded at once.
    pub fn push(&mut self, entry: Entry) -> Pushed {
        let mut out = Pushed::default();
        if self.slots.contains_key(&entry.id) {
            return out;
        }
        let versions = self.by_key.entry(entry.key.clone()).or_default();
        if versions.iter().any(|&v| v > entry.id) {
            self.superseded += 1;
            out.superseded.push(entry.id);
            return out;
        }
        let mut keep = Vec::with_capacity(2);
        for &v in versions.iter() {
            match self.slots.get(&v) {
                Some(s) if s.in_flight => keep.push(v),
                Some(_) => out.superseded.push(v),
                None => {}
            }
        }
        keep.push(entry.id);
        *versions = keep;
        for &v in &out.superseded {
            if let Some(s) = self.slots.remove(&v) {
                self.pending_bytes -= s.entry.size;
                self.superseded += 1;
                self.unpark(v, s.entry.retry.next_attempt_at);
                self.count_out(&s.entry);
            }
        }
        self.pending_bytes += entry.size;
        let task = self.per_task.entry(entry.task.clone()).or_default();
        task.pending += 1;
        if entry.retry.attempts >= self.backoff.stranded_after {
            task.stranded += 1;
        }
        if entry.kind == Kind::Segment {
            task.segments.insert(entry.id);
        }
        self.park(entry.id, entry.retry.next_attempt_at);
        self.slots.insert(
            entry.id,
            Slot {
                entry,
                in_flight: false,
            },
        );
        out
    }

    /// Entries to upload now, in put order, marked in flight: each must be
    /// reported with [`succeeded`](Self::succeeded) or
    /// [`failed`](Self::failed) before it is handed out again.
    pub fn due(&mut self, now: u64) -> Vec<Entry> {
        self.due_at_most(now, usize::MAX)
    }

    /// [`due`](Self::due), handing out at most `max` entries (the oldest).
    pub fn due_at_most(&mut self, now: u64, max: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        if now > self.promoted_to {
            let from = (self.promoted_to.saturating_add(1), EntryId::MIN);
            for &(_, id) in self.waiting.range(from..=(now, EntryId::MAX)) {
                self.ready.insert(id);
            }
            self.promoted_to = now;
        }
        // What is ready but passed over waits behind an upload in flight
        // (an older version of its key, or a playlist's earlier segment):
        // at most a few per task, so this walk stays short.
        let mut picked = Vec::new();
        for &id in &self.ready {
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            let e = &slot.entry;
            let older_version = self
                .by_key
                .get(&e.key)
                .and_then(|v| v.first())
                .is_some_and(|&first| first < id);
            let blocked_by_segment = e.kind == Kind::Playlist
                && self
                    .per_task
                    .get(&e.task)
                    .and_then(|t| t.segments.first())
                    .is_some_and(|&first| first < id);
            // Promoted at a later `now` than this one (the clock stepped back).
            let early = e.retry.next_attempt_at > now;
            if older_version || blocked_by_segment || early {
                continue;
            }
            picked.push(id);
            if picked.len() >= max {
                break;
            }
        }
        for id in picked {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            slot.in_flight = true;
            let at = slot.entry.retry.next_attempt_at;
            out.push(slot.entry.clone());
            self.in_flight += 1;
            self.unpark(id, at);
        }
        out
    }

    /// Entries of `task` still queued (in flight included).
    pub fn pending_for(&self, task: &str) -> usize {
        self.per_task.get(task).map_or(0, |c| c.pending)
    }

    /// Makes every waiting entry of `task` due at `now` (a task that ends
    /// tries its backlog once more at once instead of after its backoff).
    /// Walks the queue: it runs once per task's end.
    pub fn retry_now(&mut self, task: &str, now: u64) {
        let later: Vec<(EntryId, u64)> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.entry.task == task && !s.in_flight && s.entry.retry.next_attempt_at > now
            })
            .map(|(&id, s)| (id, s.entry.retry.next_attempt_at))
            .collect();
        for (id, at) in later {
            self.unpark(id, at);
            if let Some(s) = self.slots.get_mut(&id) {
                s.entry.retry.next_attempt_at = now;
            }
            self.park(id, now);
        }
    }

    /// The earliest time an entry not in flight is scheduled for (it may
    /// still wait for an upload in flight); `None` when nothing waits.
    pub fn next_attempt_at(&self) -> Option<u64> {
        self.waiting.first().map(|&(at, _)| at)
    }

    /// The upload of `id` succeeded: it leaves the queue (remove it from
    /// the spool). Returns the entry, or `None` if it was not in flight.
    pub fn succeeded(&mut self, id: EntryId) -> Option<Entry> {
        if !self.slots.get(&id).is_some_and(|s| s.in_flight) {
            return None;
        }
        self.take(id)
    }

    /// The upload of `id` failed at `now`: it is scheduled again with
    /// backoff, or dropped if a newer version of its key is queued.
    pub fn failed(&mut self, id: EntryId, now: u64, error: &str) -> Failed {
        let newer = match self.slots.get(&id) {
            Some(s) if s.in_flight => self
                .by_key
                .get(&s.entry.key)
                .is_some_and(|v| v.iter().any(|&o| o > id)),
            _ => return Failed::Unknown,
        };
        self.retries += 1;
        if newer {
            self.take(id);
            self.superseded += 1;
            return Failed::Superseded;
        }
        let backoff = &self.backoff;
        let Some(slot) = self.slots.get_mut(&id) else {
            return Failed::Unknown;
        };
        slot.in_flight = false;
        self.in_flight -= 1;
        let r = &mut slot.entry.retry;
        r.attempts = r.attempts.saturating_add(1);
        if r.attempts == backoff.stranded_after {
            if let Some(c) = self.per_task.get_mut(&slot.entry.task) {
                c.stranded += 1;
            }
        }
        r.next_attempt_at = now.saturating_add(backoff.delay_ms(id, r.attempts));
        r.last_error = Some(error.to_owned());
        let state = r.clone();
        self.park(id, state.next_attempt_at);
        Failed::Retry(state)
    }

    /// Counters for metrics.
    pub fn stats(&self) -> QueueStats {
        let stranded = self
            .per_task
            .iter()
            .filter(|(_, c)| c.stranded > 0)
            .map(|(task, c)| (task.clone(), c.stranded))
            .collect();
        QueueStats {
            pending_files: self.slots.len(),
            pending_bytes: self.pending_bytes,
            in_flight: self.in_flight,
            retries: self.retries,
            superseded: self.superseded,
            stranded,
        }
    }

    fn take(&mut self, id: EntryId) -> Option<Entry> {
        let slot = self.slots.remove(&id)?;
        if slot.in_flight {
            self.in_flight -= 1;
        } else {
            self.unpark(id, slot.entry.retry.next_attempt_at);
        }
        self.pending_bytes -= slot.entry.size;
        if let Some(v) = self.by_key.get_mut(&slot.entry.key) {
            v.retain(|&o| o != id);
            if v.is_empty() {
                self.by_key.remove(&slot.entry.key);
            }
        }
        self.count_out(&slot.entry);
        Some(slot.entry)
    }

    /// Entry `id`, not in flight, waits until `at`.
    fn park(&mut self, id: EntryId, at: u64) {
        self.waiting.insert((at, id));
        if at <= self.promoted_to {
            self.ready.insert(id);
        }
    }

    /// Entry `id`, parked until `at`, goes in flight or leaves the queue.
    fn unpark(&mut self, id: EntryId, at: u64) {
        self.waiting.remove(&(at, id));
        self.ready.remove(&id);
    }

    /// `entry` left the queue: its task's counts go down.
    fn count_out(&mut self, entry: &Entry) {
        let Some(c) = self.per_task.get_mut(&entry.task) else {
            return;
        };
        c.pending = c.pending.saturating_sub(1);
        if entry.retry.attempts >= self.backoff.stranded_after {
            c.stranded = c.stranded.saturating_sub(1);
        }
        c.segments.remove(&entry.id);
        if c.pending == 0 {
            self.per_task.remove(&entry.task);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn no_jitter() -> Backoff {
        Backoff {
            base_ms: 1_000,
            cap_ms: 30_000,
            jitter: 0.0,
            stranded_after: 3,
            ..Backoff::default()
        }
    }

    fn ids(v: &[Entry]) -> Vec<EntryId> {
        v.iter().map(|e| e.id).collect()
    }

    #[test]
    fn kinds_from_keys() {
        assert_eq!(Kind::of_key("p/t/a.m3u8"), Kind::Playlist);
        assert_eq!(Kind::of_key("p/t/a.M3U8"), Kind::Playlist);
        assert_eq!(Kind::of_key("p/t/a.mpd"), Kind::Playlist);
        assert_eq!(Kind::of_key("p/t/a_1.ts"), Kind::Segment);
        assert_eq!(Kind::of_key("p/t/noext"), Kind::Segment);
    }

    #[test]
    fn playlist_waits_for_earlier_segments_of_its_task() {
        let mut q = UploadQueue::new(no_jitter());
        q.push(Entry::new(1, "a", "a/1.ts", 10));
        q.push(Entry::new(2, "b", "b/1.ts", 10));
        q.push(Entry::new(3, "a", "a/x.m3u8", 1));
        q.push(Entry::new(4, "b", "b/x.m3u8", 1));
        q.push(Entry::new(5, "a", "a/2.ts", 10));
        // Segments go at once, in put order; playlists wait.
        assert_eq!(ids(&q.due(0)), vec![1, 2, 5]);
        assert!(q.due(0).is_empty(), "nothing handed out twice");
        q.succeeded(2);
        assert_eq!(ids(&q.due(0)), vec![4], "b's playlist is free");
        // a/2.ts came after a's playlist: it does not hold the playlist.
        assert!(q.succeeded(1).is_some());
        assert_eq!(ids(&q.due(0)), vec![3]);
        assert_eq!(q.stats().in_flight, 3);
    }

    #[test]
    fn failed_segment_holds_its_playlist() {
        let mut q = UploadQueue::new(no_jitter());
        q.push(Entry::new(1, "a", "a/1.ts", 10));
        q.push(Entry::new(2, "a", "a/x.m3u8", 1));
        assert_eq!(ids(&q.due(0)), vec![1]);
        assert!(matches!(q.failed(1, 0, "503"), Failed::Retry(_)));
        assert!(q.due(500).is_empty());
        assert_eq!(ids(&q.due(1_000)), vec![1]);
        q.succeeded(1);
        assert_eq!(ids(&q.due(1_000)), vec![2]);
    }

    /// The per-task counts kept as entries come and go equal a recount,
    /// through pushes, supersessions, failures past the stranded mark,
    /// successes and a restore.
    #[test]
    fn per_task_counts_follow_every_change() {
        fn recount(q: &UploadQueue) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
            let (mut pending, mut stranded) = (BTreeMap::new(), BTreeMap::new());
            for s in q.slots.values() {
                *pending.entry(s.entry.task.clone()).or_insert(0) += 1;
                if s.entry.retry.attempts >= q.backoff.stranded_after {
                    *stranded.entry(s.entry.task.clone()).or_insert(0) += 1;
                }
            }
            (pending, stranded)
        }
        fn check(q: &UploadQueue) {
            let (pending, stranded) = recount(q);
            for task in ["a", "b", "c"] {
                assert_eq!(
                    q.pending_for(task),
                    pending.get(task).copied().unwrap_or(0),
                    "{task}"
                );
            }
            assert_eq!(q.stats().stranded, stranded);
        }
        let mut q = UploadQueue::new(no_jitter());
        let mut id = 0;
        let mut now = 0;
        for round in 0..40u64 {
            for task in ["a", "b", "c"] {
                id += 1;
                q.push(Entry::new(id, task, format!("{task}/{id}.ts"), 10));
                id += 1;
                q.push(Entry::new(id, task, format!("{task}/x.m3u8"), 1));
            }
            check(&q);
            now += 40_000;
            for (n, e) in q.due_at_most(now, 4).into_iter().enumerate() {
                // Task "b" keeps failing; the others fail one time in three.
                if e.task == "b" || (round + n as u64) % 3 == 0 {
                    q.failed(e.id, now, "503");
                } else {
                    q.succeeded(e.id);
                }
                check(&q);
            }
        }
        assert!(q.stats().stranded.get("b").copied().unwrap_or(0) > 0);
        let entries: Vec<Entry> = q.slots.values().map(|s| s.entry.clone()).collect();
        let (restored, _) = UploadQueue::restore(no_jitter(), entries);
        check(&restored);
        assert_eq!(restored.stats().stranded, q.stats().stranded);
        for e in q.due(u64::MAX) {
            q.succeeded(e.id);
        }
        while !q.is_empty() {
            for e in q.due(u64::MAX) {
                q.succeeded(e.id);
            }
        }
        check(&q);
        assert!(q.per_task.is_empty());
    }

    /// The indexed queue hands out exactly what a walk over the whole queue
    /// in put order gives (the rules in the module docs), through random
    /// pushes, supersessions, failures, successes, `retry_now` and a clock
    /// that sometimes steps back; `next_attempt_at` equals a scan's minimum.
    #[test]
    fn due_matches_a_walk_over_the_whole_queue() {
        fn walk(q: &UploadQueue, now: u64, max: usize) -> Vec<EntryId> {
            let mut picked = Vec::new();
            if max == 0 {
                return picked;
            }
            let mut segment_before: HashSet<&str> = HashSet::new();
            let mut key_before: HashSet<&str> = HashSet::new();
            for (&id, slot) in &q.slots {
                let e = &slot.entry;
                let older_version = !key_before.insert(e.key.as_str());
                let blocked = e.kind == Kind::Playlist && segment_before.contains(e.task.as_str());
                if e.kind == Kind::Segment {
                    segment_before.insert(e.task.as_str());
                }
                if slot.in_flight || older_version || blocked || e.retry.next_attempt_at > now {
                    continue;
                }
                picked.push(id);
                if picked.len() >= max {
                    break;
                }
            }
            picked
        }
        let mut q = UploadQueue::new(Backoff {
            jitter: 0.5,
            ..no_jitter()
        });
        let mut rng = 0x5eed_u64;
        let mut random = move |n: u64| {
            rng = splitmix64(rng);
            rng % n
        };
        let tasks = ["a", "b", "c"];
        let (mut now, mut id, mut handed_out) = (1_000u64, 0u64, 0usize);
        let mut in_flight: Vec<EntryId> = Vec::new();
        for step in 0..6_000 {
            match random(10) {
                0..=3 => {
                    id += 1;
                    let task = tasks[random(3) as usize];
                    let key = if random(3) == 0 {
                        format!("{task}/x{}.m3u8", random(2))
                    } else {
                        format!("{task}/{id}.ts")
                    };
                    q.push(Entry::new(id, task, key, 1));
                }
                4..=6 => {
                    let max = random(4) as usize;
                    let expected = walk(&q, now, max);
                    let got = ids(&q.due_at_most(now, max));
                    assert_eq!(got, expected, "step {step}");
                    handed_out += got.len();
                    in_flight.extend(got);
                }
                7 | 8 if !in_flight.is_empty() => {
                    let e = in_flight.swap_remove(random(in_flight.len() as u64) as usize);
                    if random(2) == 0 {
                        assert!(q.succeeded(e).is_some());
                    } else {
                        assert_ne!(q.failed(e, now, "503"), Failed::Unknown);
                    }
                }
                _ => q.retry_now(tasks[random(3) as usize], now),
            }
            now = match random(25) {
                0 => now.saturating_sub(3_000),
                _ => now + random(700),
            };
            let scan = q
                .slots
                .values()
                .filter(|s| !s.in_flight)
                .map(|s| s.entry.retry.next_attempt_at)
                .min();
            assert_eq!(q.next_attempt_at(), scan, "step {step}");
        }
        assert!(handed_out > 1_000, "{handed_out}");
    }

    /// A backlog waiting out its backoff is not looked at until it is due.
    #[test]
    fn backlog_in_backoff_is_not_walked() {
        let mut q = UploadQueue::new(no_jitter());
        for id in 1..=10_000 {
            q.push(Entry::new(id, "a", format!("a/{id}.ts"), 1));
        }
        for e in q.due(0) {
            q.failed(e.id, 0, "refused");
        }
        assert!(q.ready.is_empty(), "{} ready", q.ready.len());
        assert!(q.due_at_most(999, 8).is_empty());
        assert_eq!(q.next_attempt_at(), Some(1_000));
        assert_eq!(ids(&q.due_at_most(1_000, 3)), vec![1, 2, 3]);
        assert_eq!(q.ready.len(), 9_997);
    }

    #[test]
    fn newer_playlist_supersedes_queued_one() {
        let mut q = UploadQueue::new(no_jitter());
        assert!(q
            .push(Entry::new(1, "a", "a/x.m3u8", 5))
            .superseded
            .is_empty());
        assert_eq!(
            q.push(Entry::new(2, "a", "a/x.m3u8", 6)).superseded,
            vec![1]
        );
        assert_eq!(q.stats().pending_bytes, 6);
        assert_eq!(q.stats().superseded, 1);
        // In flight: the newer version waits, and is not superseded.
        assert_eq!(ids(&q.due(0)), vec![2]);
        assert!(q
            .push(Entry::new(3, "a", "a/x.m3u8", 7))
            .superseded
            .is_empty());
        assert!(q.due(0).is_empty(), "one upload per key at a time");
        // A fourth supersedes the third (queued), not the second (in flight).
        assert_eq!(
            q.push(Entry::new(4, "a", "a/x.m3u8", 8)).superseded,
            vec![3]
        );
        // The in-flight one fails: dropped, since a newer one is queued.
        assert_eq!(q.failed(2, 0, "timeout"), Failed::Superseded);
        assert_eq!(ids(&q.due(0)), vec![4]);
        assert!(q.succeeded(4).is_some());
        assert!(q.is_empty());
        let s = q.stats();
        assert_eq!((s.pending_bytes, s.pending_files, s.in_flight), (0, 0, 0));
        // An older version arriving late is superseded at once.
        q.push(Entry::new(10, "a", "a/x.m3u8", 1));
        assert_eq!(
            q.push(Entry::new(9, "a", "a/x.m3u8", 1)).superseded,
            vec![9]
        );
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn in_flight_success_lets_newer_version_go() {
        let mut q = UploadQueue::new(no_jitter());
        q.push(Entry::new(1, "a", "a/x.m3u8", 5));
        assert_eq!(ids(&q.due(0)), vec![1]);
        q.push(Entry::new(2, "a", "a/x.m3u8", 5));
        assert!(q.due(0).is_empty());
        assert!(q.succeeded(1).is_some());
        assert!(q.succeeded(1).is_none(), "reported once");
        assert_eq!(ids(&q.due(0)), vec![2]);
    }

    #[test]
    fn backoff_schedule_exponential_and_capped() {
        let mut q = UploadQueue::new(no_jitter());
        q.push(Entry::new(7, "a", "a/1.ts", 1));
        let mut now = 100_000;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let due = q.due(now);
            assert_eq!(ids(&due), vec![7]);
            let Failed::Retry(r) = q.failed(7, now, "503") else {
                panic!("not rescheduled")
            };
            delays.push(r.next_attempt_at - now);
            assert!(q.due(r.next_attempt_at - 1).is_empty(), "not early");
            assert_eq!(q.next_attempt_at(), Some(r.next_attempt_at));
            now = r.next_attempt_at;
        }
        assert_eq!(
            delays,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        let s = q.stats();
        assert_eq!(s.retries, 8);
        assert_eq!(s.stranded.get("a"), Some(&1));
        assert_eq!(q.get(7).map(|e| e.retry.attempts), Some(8));
        assert_eq!(
            q.get(7).and_then(|e| e.retry.last_error.clone()).as_deref(),
            Some("503")
        );
        // Huge attempt counts do not overflow.
        assert_eq!(no_jitter().delay_ms(1, u32::MAX), 30_000);
    }

    #[test]
    fn jitter_stays_in_bounds_deterministic_and_spreads() {
        let b = Backoff {
            base_ms: 1_000,
            cap_ms: 60_000,
            jitter: 0.5,
            ..Backoff::default()
        };
        let mut seen = HashSet::new();
        for id in 0..200u64 {
            for attempts in 1..10u32 {
                let full = (1_000u64 << (attempts - 1)).min(60_000);
                let d = b.delay_ms(id, attempts);
                assert!(d <= full && d >= full / 2, "{d} vs {full}");
                assert_eq!(d, b.delay_ms(id, attempts));
                if attempts == 3 {
                    seen.insert(d);
                }
            }
        }
        assert!(seen.len() > 100, "entries failing together spread out");
    }

    #[test]
    fn restore_resumes_schedule_and_supersession() {
        let mut a = Entry::new(1, "a", "a/1.ts", 10);
        a.retry = RetryState {
            attempts: 2,
            next_attempt_at: 5_000,
            last_error: Some("x".into()),
        };
        let entries = vec![
            Entry::new(3, "a", "a/x.m3u8", 2),
            a,
            Entry::new(2, "a", "a/x.m3u8", 1),
        ];
        let (mut q, pushed) = UploadQueue::restore(no_jitter(), entries);
        assert_eq!(pushed.superseded, vec![2]);
        assert!(q.due(4_999).is_empty());
        assert_eq!(ids(&q.due(5_000)), vec![1]);
        let Failed::Retry(r) = q.failed(1, 5_000, "y") else {
            panic!()
        };
        assert_eq!((r.attempts, r.next_attempt_at), (3, 9_000));
    }

    #[test]
    fn unknown_reports_change_nothing() {
        let mut q = UploadQueue::new(no_jitter());
        q.push(Entry::new(1, "a", "a/1.ts", 10));
        assert_eq!(q.failed(1, 0, "not in flight"), Failed::Unknown);
        assert_eq!(q.failed(99, 0, "unknown"), Failed::Unknown);
        assert!(q.succeeded(1).is_none());
        assert_eq!(q.stats().retries, 0);
        assert_eq!(ids(&q.due(0)), vec![1]);
    }
}
