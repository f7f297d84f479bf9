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
//! - **WHIP** goes to the owner: a box that does not own the room answers
//!   307 to the owner's `advertise_url` (RFC 9725 §4.5).
//!
//! Not yet: tasks placed and resumed by room ownership, fencing of task
//! commits by epoch, drain (docs/fleet.md).

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
}

pub struct Fleet {
    conn: Connection,
    node_id: String,
    advertise_url: String,
    lease: Mutex<Lease>,
}

impl Fleet {
    /// Connects (the state store has migrated the schema) and registers
    /// this box with a first heartbeat.
    pub fn open(config: &ClusterConfig, url: &str) -> Result<Self, StoreError> {
        let fleet = Self {
            conn: Connection::new(url, "kiroku-fleet")?,
            node_id: config.node_id.clone(),
            advertise_url: config.advertise_url.clone(),
            lease: Mutex::new(Lease::new(config.lease)),
        };
        fleet.heartbeat()?;
        Ok(fleet)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
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

    /// Registers or renews this box (blocking).
    pub fn heartbeat(&self) -> Result<(), StoreError> {
        let sent = Instant::now();
        let (node, url) = (&self.node_id, &self.advertise_url);
        self.conn.run(|c| {
            c.execute(
                "INSERT INTO nodes (node_id, advertise_url) VALUES ($1, $2)
                 ON CONFLICT (node_id) DO UPDATE SET advertise_url = EXCLUDED.advertise_url, heartbeat_at = now()",
                &[node, url],
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

    /// The room's owner: this box if the room had none or its owner is
    /// dead (claimed now, epoch raised), else the live owner (blocking).
    pub fn claim_room(&self, sdk_app_id: u32, room: &str) -> Result<RoomOwner, FleetError> {
        if !self.holds_lease() {
            return Err(FleetError::LeaseLapsed);
        }
        let lease_s = self.lease().duration().as_secs_f64();
        let me = self.node_id.as_str();
        let owner = self.conn.run(|c| {
            let mut txn = c.transaction().map_err(pg_err)?;
            txn.execute(
                "INSERT INTO rooms (sdk_app_id, room_id, owner, epoch) VALUES ($1, $2, $3, 1)
                 ON CONFLICT (sdk_app_id, room_id) DO UPDATE
                   SET owner = EXCLUDED.owner, epoch = rooms.epoch + 1, claimed_at = now()
                 WHERE rooms.owner <> EXCLUDED.owner
                   AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = rooms.owner
                                   AND n.heartbeat_at > now() - make_interval(secs => $4))",
                &[&i64::from(sdk_app_id), &room, &me, &lease_s],
            )
            .map_err(pg_err)?;
            let row = txn
                .query_one(
                    "SELECT r.owner, r.epoch, coalesce(n.advertise_url, '')
                     FROM rooms r LEFT JOIN nodes n ON n.node_id = r.owner
                     WHERE r.sdk_app_id = $1 AND r.room_id = $2",
                    &[&i64::from(sdk_app_id), &room],
                )
                .map_err(pg_err)?;
            txn.commit().map_err(pg_err)?;
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
}
