//! The fleet (`[cluster] postgres_url`): each box registers itself in the
//! shared database and heartbeats; each room is owned by one live box at a
//! time, with an epoch that grows at every takeover.
//!
//! - **Liveness** is the database's: a box is alive while its
//!   `nodes.heartbeat_at` is younger than `cluster.lease_seconds`. The box's
//!   own view ([`lease::Lease`]) runs from when it *sent* each committed
//!   heartbeat and ends a margin early, so it gives its rooms up before
//!   anyone can take them.
//! - **Rooms** are claimed in one statement (`INSERT … ON CONFLICT DO
//!   UPDATE … WHERE` the owner is not alive, which locks the row, so two
//!   boxes claiming at once are serialised and one wins): a room with no
//!   owner, or whose owner is dead, becomes this box's with the epoch
//!   raised; a room a live box owns stays its.
//! - **Placement**: a room with no live owner goes to the live box, not
//!   draining, with the most free task slots (`capacity`, its
//!   `limits.max_tasks`, minus the task rows it owns: counted in the same
//!   database, so they are never stale).
//! - **WHIP** goes to the owner: a box that does not own the room answers
//!   307 to the owner's `advertise_url` (RFC 9725 §4.5); the API forwards
//!   (`api::forward`).
//! - **Drain** hands each of a box's rooms, with its tasks, to another box
//!   (`handed_over`), which picks them up at its next heartbeat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::types::Type;

use crate::config::ClusterConfig;
use crate::state::postgres::{pg_err, Connection};
use crate::state::StoreError;

pub mod lease;

use lease::Lease;

/// Who owns a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomOwner {
    pub node_id: String,
    /// Where the owner is reached (empty if it never registered).
    pub advertise_url: String,
    pub epoch: u64,
    /// This box.
    pub mine: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this box's lease in the fleet has lapsed (its heartbeats do not reach the database): it takes no room until they do")]
    LeaseLapsed,
    #[error("every live box of the fleet runs as many tasks as its limits.max_tasks")]
    Full,
    #[error("the room's box is dead and this box has held its lease for less than a lease (just started, or the database was away): it takes no dead box's room yet; retry shortly")]
    Settling,
}

/// Where a task or a room's work goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This box (the room is claimed for it).
    Here,
    /// Another live box: the room's owner, or the box with the most room
    /// for a room nobody owns (it claims the room when the request arrives).
    There {
        node_id: String,
        advertise_url: String,
    },
}

/// The box a stored task belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskHome {
    Here,
    /// A live box of the fleet.
    There {
        node_id: String,
        advertise_url: String,
    },
    /// A box whose lease has lapsed: its rooms are about to be taken over.
    Dead {
        node_id: String,
    },
}

pub struct Fleet {
    conn: Connection,
    node_id: String,
    advertise_url: String,
    /// Tasks this box takes (`limits.max_tasks`), told to the fleet.
    capacity: i32,
    lease: Mutex<Lease>,
    /// Drain began: this box takes no room and resumes no other box's task.
    draining: AtomicBool,
    /// Drain ended: this box has left the table of boxes; its heartbeat
    /// must not bring it back before the process exits.
    left: AtomicBool,
}

impl Fleet {
    /// Connects (the state store has migrated the schema) and registers
    /// this box with a first heartbeat.
    pub fn open(config: &ClusterConfig, url: &str, capacity: usize) -> Result<Self, StoreError> {
        let fleet = Self {
            conn: Connection::new(url, "kiroku-fleet", config.postgres_ca_file.as_deref())?,
            node_id: config.node_id.clone(),
            advertise_url: config.advertise_url.clone(),
            capacity: i32::try_from(capacity).unwrap_or(i32::MAX),
            lease: Mutex::new(Lease::new(config.lease)),
            draining: AtomicBool::new(false),
            left: AtomicBool::new(false),
        };
        fleet.heartbeat()?;
        // A box that drained and came back takes rooms again.
        let me = fleet.node_id.as_str();
        fleet.conn.run(|c| {
            c.execute(
                "UPDATE nodes SET draining = false WHERE node_id = $1",
                &[&me],
            )
            .map_err(pg_err)
        })?;
        Ok(fleet)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Runs a (blocking) fleet call off the async runtime.
    pub async fn call<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl FnOnce(&Fleet) -> Result<T, FleetError> + Send + 'static,
    ) -> Result<T, FleetError> {
        let fleet = self.clone();
        tokio::task::spawn_blocking(move || op(&fleet))
            .await
            .unwrap_or_else(|e| {
                Err(FleetError::Store(StoreError::Postgres(format!(
                    "a fleet call did not finish: {e}"
                ))))
            })
    }

    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.lease().heartbeat_interval()
    }

    /// Whether this box may act as the owner of its rooms now.
    pub fn holds_lease(&self) -> bool {
        self.lease().holds(Instant::now())
    }

    /// Whether this box may take rooms from boxes it believes dead
    /// (`Lease::settled`).
    fn settled(&self) -> bool {
        self.lease().settled(Instant::now())
    }

    /// Whether a drain of this box has begun.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Registers or renews this box (blocking).
    pub fn heartbeat(&self) -> Result<(), StoreError> {
        if self.left.load(Ordering::SeqCst) {
            return Ok(());
        }
        let sent = Instant::now();
        let (node, url, capacity) = (&self.node_id, &self.advertise_url, &self.capacity);
        self.conn.run(|c| {
            c.execute(
                "INSERT INTO nodes (node_id, advertise_url, capacity) VALUES ($1, $2, $3)
                 ON CONFLICT (node_id) DO UPDATE SET advertise_url = EXCLUDED.advertise_url,
                   capacity = EXCLUDED.capacity, heartbeat_at = now()",
                &[node, url, capacity],
            )
            .map_err(pg_err)
        })?;
        self.lease().renewed(sent);
        Ok(())
    }

    /// Takes over rooms whose owner is dead (at most 16 at a time; rows
    /// other boxes are taking over at the same moment are skipped, `FOR
    /// UPDATE SKIP LOCKED`), raising their epochs, and the tasks recording
    /// them; returns those tasks' stored values (blocking).
    pub fn take_over_dead_rooms(&self) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
        if !self.holds_lease() {
            return Err(FleetError::LeaseLapsed);
        }
        if self.draining() || !self.settled() {
            return Ok(Vec::new());
        }
        let lease_s = self.lease().duration().as_secs_f64();
        let me = self.node_id.as_str();
        let taken = self.conn.run(|c| {
            let mut txn = c.transaction().map_err(pg_err)?;
            let rooms = txn
                .query(
                    "WITH dead AS (
                         SELECT r.sdk_app_id, r.room_id FROM rooms r
                         WHERE r.owner <> $1
                           AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = r.owner
                                           AND n.heartbeat_at > now() - make_interval(secs => $2))
                         ORDER BY r.claimed_at LIMIT 16
                         FOR UPDATE SKIP LOCKED)
                     UPDATE rooms r SET owner = $1, epoch = r.epoch + 1, claimed_at = now()
                     FROM dead WHERE r.sdk_app_id = dead.sdk_app_id AND r.room_id = dead.room_id
                     RETURNING r.sdk_app_id, r.room_id, r.epoch",
                    &[&me, &lease_s],
                )
                .map_err(pg_err)?;
            let apps: Vec<i64> = rooms.iter().map(|r| r.get(0)).collect();
            let keys: Vec<String> = rooms.iter().map(|r| r.get(1)).collect();
            for r in &rooms {
                let (app, room, epoch): (i64, String, i64) = (r.get(0), r.get(1), r.get(2));
                tracing::warn!(sdk_app_id = app, room = %room, epoch, "room taken over from a dead box");
            }
            let tasks = if rooms.is_empty() {
                Vec::new()
            } else {
                txn.query(
                    "UPDATE tasks t SET node_id = $1, updated_at = now()
                     FROM (SELECT unnest($2::bigint[]) AS app, unnest($3::text[]) AS room) taken
                     WHERE t.sdk_app_id = taken.app AND t.room_key = taken.room
                       AND t.node_id IS DISTINCT FROM $1
                     RETURNING t.task_id, t.value",
                    &[&me, &apps, &keys],
                )
                .map_err(pg_err)?
            };
            txn.commit().map_err(pg_err)?;
            Ok(tasks
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>())
        })?;
        Ok(taken)
    }

    /// Claims the callbacks that dead boxes had queued and not delivered
    /// (at most 1000 at a time; rows another box is claiming at the same
    /// moment are skipped) and returns them, in order, to be delivered
    /// from this box (blocking).
    pub fn take_over_dead_outbox(&self) -> Result<Vec<crate::state::OutboxEntry>, FleetError> {
        if !self.settled() || self.draining() {
            return Ok(Vec::new());
        }
        let lease_s = self.lease().duration().as_secs_f64();
        let me = self.node_id.as_str();
        let rows = self.conn.run(|c| {
            c.query(
                "WITH dead AS (
                     SELECT o.seq FROM outbox o
                     WHERE o.node_id IS NOT NULL AND o.node_id <> $1
                       AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = o.node_id
                                       AND n.heartbeat_at > now() - make_interval(secs => $2))
                     ORDER BY o.seq LIMIT 1000
                     FOR UPDATE SKIP LOCKED)
                 UPDATE outbox o SET node_id = $1 FROM dead WHERE o.seq = dead.seq
                 RETURNING o.*",
                &[&me, &lease_s],
            )
            .map_err(pg_err)
        })?;
        let mut entries = rows
            .iter()
            .map(crate::state::postgres::entry_of)
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.seq);
        if !entries.is_empty() {
            tracing::warn!(
                callbacks = entries.len(),
                "callbacks of a dead box taken over for delivery"
            );
        }
        Ok(entries)
    }

    /// The room's owner: this box if the room had none or its owner is
    /// dead (claimed now, epoch raised), else the live owner (blocking).
    pub fn claim_room(&self, sdk_app_id: u32, room: &str) -> Result<RoomOwner, FleetError> {
        if !self.holds_lease() {
            return Err(FleetError::LeaseLapsed);
        }
        let lease_s = self.lease().duration().as_secs_f64();
        let me = self.node_id.as_str();
        // A room of a box believed dead is taken only by a settled box; an
        // unsettled one (just started, or back from a database outage)
        // claims only rooms nobody owns.
        let may_take = self.settled();
        let owner = self.conn.run(|c| {
            // One statement, committed on its own (one round trip): a row
            // back means the room is this box's now.
            let claimed = c
                .query_typed_opt(
                    "INSERT INTO rooms (sdk_app_id, room_id, owner, epoch) VALUES ($1, $2, $3, 1)
                     ON CONFLICT (sdk_app_id, room_id) DO UPDATE
                       SET owner = EXCLUDED.owner, epoch = rooms.epoch + 1, claimed_at = now()
                     WHERE rooms.owner <> EXCLUDED.owner AND $5
                       AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = rooms.owner
                                       AND n.heartbeat_at > now() - make_interval(secs => $4))
                     RETURNING epoch",
                    &[
                        (&i64::from(sdk_app_id), Type::INT8),
                        (&room, Type::TEXT),
                        (&me, Type::TEXT),
                        (&lease_s, Type::FLOAT8),
                        (&may_take, Type::BOOL),
                    ],
                )
                .map_err(pg_err)?;
            let row = match claimed {
                Some(r) => {
                    let epoch: i64 = r.get(0);
                    return Ok(RoomOwner {
                        mine: true,
                        node_id: me.to_owned(),
                        advertise_url: self.advertise_url.clone(),
                        epoch: u64::try_from(epoch).unwrap_or(0),
                    });
                }
                // Already this box's, or another's.
                None => c
                    .query_one(
                        "SELECT r.owner, r.epoch, coalesce(n.advertise_url, '')
                         FROM rooms r LEFT JOIN nodes n ON n.node_id = r.owner
                         WHERE r.sdk_app_id = $1 AND r.room_id = $2",
                        &[&i64::from(sdk_app_id), &room],
                    )
                    .map_err(pg_err)?,
            };
            let node_id: String = row.get(0);
            let epoch: i64 = row.get(1);
            Ok(RoomOwner {
                mine: node_id == me,
                node_id,
                advertise_url: row.get(2),
                epoch: u64::try_from(epoch).unwrap_or(0),
            })
        })?;
        tracing::debug!(sdk_app_id, room, owner = %owner.node_id, epoch = owner.epoch, "room owner");
        Ok(owner)
    }

    /// Where a room's work goes: its live owner; for a room without one,
    /// the live box (not draining) with the most free task slots, this box
    /// claiming the room when that is itself (blocking).
    pub fn place_room(&self, sdk_app_id: u32, room: &str) -> Result<Placement, FleetError> {
        if !self.holds_lease() {
            return Err(FleetError::LeaseLapsed);
        }
        let lease_s = self.lease().duration().as_secs_f64();
        let app = i64::from(sdk_app_id);
        // One round trip: the live owner if there is one, else the box
        // with the most free slots.
        let target = self.conn.run(|c| {
            let row = c
                .query_typed_opt(
                    "WITH owner AS (
                         SELECT r.owner AS node_id, n.advertise_url FROM rooms r
                         JOIN nodes n ON n.node_id = r.owner
                         WHERE r.sdk_app_id = $1 AND r.room_id = $2
                           AND n.heartbeat_at > now() - make_interval(secs => $3)),
                     roomiest AS (
                         SELECT n.node_id, n.advertise_url FROM nodes n
                         LEFT JOIN (SELECT node_id, count(*) AS tasks FROM tasks GROUP BY node_id) t
                           ON t.node_id = n.node_id
                         LEFT JOIN (SELECT owner, count(*) AS rooms FROM rooms GROUP BY owner) r
                           ON r.owner = n.node_id
                         WHERE n.heartbeat_at > now() - make_interval(secs => $3) AND NOT n.draining
                           AND n.capacity > coalesce(t.tasks, 0)
                         ORDER BY n.capacity - coalesce(t.tasks, 0) DESC, coalesce(r.rooms, 0), n.node_id
                         LIMIT 1)
                     SELECT node_id, advertise_url, true FROM owner
                     UNION ALL
                     SELECT node_id, advertise_url, false FROM roomiest WHERE NOT EXISTS (SELECT 1 FROM owner)
                     LIMIT 1",
                    &[(&app, Type::INT8), (&room, Type::TEXT), (&lease_s, Type::FLOAT8)],
                )
                .map_err(pg_err)?;
            Ok(row.map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, bool>(2))))
        })?;
        match target {
            None => Err(FleetError::Full),
            // Already this box's room: nothing to claim.
            Some((node_id, _, true)) if node_id == self.node_id => Ok(Placement::Here),
            Some((node_id, _, _)) if node_id == self.node_id => {
                let settled = self.settled();
                let owner = self.claim_room(sdk_app_id, room)?;
                if !owner.mine && !settled {
                    // Most likely the dead owner, still on the row.
                    return Err(FleetError::Settling);
                }
                Ok(if owner.mine {
                    Placement::Here
                } else {
                    Placement::There {
                        node_id: owner.node_id,
                        advertise_url: owner.advertise_url,
                    }
                })
            }
            Some((node_id, advertise_url, _)) => Ok(Placement::There {
                node_id,
                advertise_url,
            }),
        }
    }

    /// The box a stored task belongs to; `None` if no such task is stored
    /// (blocking).
    pub fn task_home(&self, task_id: &str) -> Result<Option<TaskHome>, FleetError> {
        let lease_s = self.lease().duration().as_secs_f64();
        let row = self.conn.run(|c| {
            c.query_opt(
                "SELECT t.node_id, coalesce(n.advertise_url, ''),
                        coalesce(n.heartbeat_at > now() - make_interval(secs => $2), false)
                 FROM tasks t LEFT JOIN nodes n ON n.node_id = t.node_id
                 WHERE t.task_id = $1",
                &[&task_id, &lease_s],
            )
            .map_err(pg_err)
        })?;
        Ok(row.map(|r| {
            let node: Option<String> = r.get(0);
            match node {
                None => TaskHome::Here,
                Some(n) if n == self.node_id => TaskHome::Here,
                Some(node_id) if r.get::<_, bool>(2) => TaskHome::There {
                    node_id,
                    advertise_url: r.get(1),
                },
                Some(node_id) => TaskHome::Dead { node_id },
            }
        }))
    }

    /// Which of `task_ids` (tasks this box runs) are not this box's in the
    /// database any more: taken over while this box was cut off, or ended
    /// by their owner (blocking).
    pub fn tasks_lost(&self, task_ids: &[String]) -> Result<Vec<String>, FleetError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let me = self.node_id.as_str();
        let rows = self.conn.run(|c| {
            c.query(
                "SELECT id FROM unnest($1::text[]) AS id
                 WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = id
                                   AND (t.node_id = $2 OR t.node_id IS NULL))",
                &[&task_ids, &me],
            )
            .map_err(pg_err)
        })?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    /// Drain, first step: this box takes no new room (blocking).
    pub fn start_draining(&self) -> Result<(), FleetError> {
        self.draining.store(true, Ordering::SeqCst);
        let me = self.node_id.as_str();
        self.conn.run(|c| {
            c.execute(
                "UPDATE nodes SET draining = true WHERE node_id = $1",
                &[&me],
            )
            .map_err(pg_err)
        })?;
        Ok(())
    }

    /// How many other live boxes could take this box's rooms (blocking).
    pub fn other_live_boxes(&self) -> Result<usize, FleetError> {
        let lease_s = self.lease().duration().as_secs_f64();
        let me = self.node_id.as_str();
        let n: i64 = self.conn.run(|c| {
            c.query_one(
                "SELECT count(*) FROM nodes WHERE node_id <> $1 AND NOT draining
                   AND heartbeat_at > now() - make_interval(secs => $2)",
                &[&me, &lease_s],
            )
            .map(|r| r.get(0))
            .map_err(pg_err)
        })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The rooms this box owns, as (SdkAppId, room key) (blocking).
    pub fn rooms_owned(&self) -> Result<Vec<(u32, String)>, FleetError> {
        let me = self.node_id.as_str();
        let rows = self.conn.run(|c| {
            c.query(
                "SELECT sdk_app_id, room_id FROM rooms WHERE owner = $1 ORDER BY claimed_at",
                &[&me],
            )
            .map_err(pg_err)
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let app = u32::try_from(r.get::<_, i64>(0)).ok()?;
                Some((app, r.get::<_, String>(1)))
            })
            .collect())
    }

    /// Drain: gives one of this box's rooms, with its tasks, to the live
    /// box (not draining, not this one) with the most free slots; its epoch
    /// grows, so anything this box still wrote for it would be fenced.
    /// `None` when no box can take it (blocking).
    pub fn hand_over_room(
        &self,
        sdk_app_id: u32,
        room: &str,
    ) -> Result<Option<String>, FleetError> {
        let lease_s = self.lease().duration().as_secs_f64();
        let (me, app) = (self.node_id.as_str(), i64::from(sdk_app_id));
        let taker = self.conn.run(|c| {
            let mut txn = c.transaction().map_err(pg_err)?;
            let taker = txn
                .query_opt(
                    "SELECT n.node_id FROM nodes n
                     LEFT JOIN (SELECT node_id, count(*) AS tasks FROM tasks GROUP BY node_id) t
                       ON t.node_id = n.node_id
                     WHERE n.node_id <> $1 AND NOT n.draining
                       AND n.heartbeat_at > now() - make_interval(secs => $2)
                     ORDER BY n.capacity - coalesce(t.tasks, 0) DESC, n.node_id
                     LIMIT 1",
                    &[&me, &lease_s],
                )
                .map_err(pg_err)?
                .map(|r| r.get::<_, String>(0));
            let Some(taker) = taker else {
                return Ok(None);
            };
            let moved = txn
                .execute(
                    "UPDATE rooms SET owner = $4, epoch = epoch + 1, claimed_at = now()
                     WHERE sdk_app_id = $1 AND room_id = $2 AND owner = $3",
                    &[&app, &room, &me, &taker],
                )
                .map_err(pg_err)?;
            if moved == 1 {
                txn.execute(
                    "UPDATE tasks SET node_id = $4, handed_over = true, updated_at = now()
                     WHERE sdk_app_id = $1 AND room_key = $2 AND node_id = $3",
                    &[&app, &room, &me, &taker],
                )
                .map_err(pg_err)?;
            }
            txn.commit().map_err(pg_err)?;
            Ok(Some(taker))
        })?;
        Ok(taker)
    }

    /// Tasks another box handed to this one while draining: marked taken
    /// and returned with their stored values (blocking).
    pub fn take_handed_over(&self) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
        if self.draining() {
            return Ok(Vec::new());
        }
        let me = self.node_id.as_str();
        let rows = self.conn.run(|c| {
            c.query(
                "UPDATE tasks SET handed_over = false WHERE node_id = $1 AND handed_over
                 RETURNING task_id, value",
                &[&me],
            )
            .map_err(pg_err)
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
            .collect())
    }

    /// Drain, last step: this box leaves the fleet's table of boxes.
    pub fn leave(&self) -> Result<(), FleetError> {
        self.left.store(true, Ordering::SeqCst);
        let me = self.node_id.as_str();
        self.conn.run(|c| {
            c.execute("DELETE FROM nodes WHERE node_id = $1", &[&me])
                .map_err(pg_err)
        })?;
        Ok(())
    }
}
