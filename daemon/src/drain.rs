//! Fleet mode: draining a box for an upgrade or a reboot (`kiroku drain`,
//! `POST /v1/drain`). Its rooms go to the other boxes without waiting for
//! a lease to lapse, one room at a time:
//!
//! 1. the box marks itself draining: no room is placed on it, and it takes
//!    over nothing;
//! 2. per room: its recorders stop as at a shutdown (files closed and
//!    kept, upload spool emptied), the room and its tasks move to the live
//!    box with the most free slots (epoch raised, tasks marked
//!    `handed_over`), and the room's WHIP sessions end so that publishers
//!    reconnect and are sent to the new owner;
//! 3. the box leaves the table of boxes and exits.
//!
//! The new owner picks the tasks up at its next heartbeat and resumes them
//! as after a failover (`ha<n>_`, callback 306).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::Fleet;
use crate::ingest::Ingest;
use crate::task::manager::Manager;

/// What a drain did, room by room.
#[derive(Debug, Default, Serialize)]
pub struct DrainReport {
    pub rooms: Vec<RoomHandOver>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct RoomHandOver {
    pub sdk_app_id: u32,
    pub room: String,
    /// The box that took it; `None` when none could (it is taken over as a
    /// dead box's room once this box has gone).
    pub to: Option<String>,
    pub tasks: usize,
    pub publishers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("this box is not in a fleet ([cluster] postgres_url): there is nothing to hand its rooms to")]
    NotInFleet,
    #[error("no other live box in the fleet could take this box's rooms: start one first")]
    NoOtherBox,
    #[error("a drain is already under way")]
    AlreadyDraining,
    #[error("the fleet's database: {0}")]
    Fleet(#[from] crate::cluster::FleetError),
}

pub struct Drainer {
    pub fleet: Option<Arc<Fleet>>,
    pub manager: Manager,
    pub ingest: Arc<Ingest>,
    /// How long a room's recorders and uploads may take to finish.
    pub grace: Duration,
    /// Told once the drain is over: the process then exits.
    pub done: tokio::sync::watch::Sender<bool>,
    started: std::sync::atomic::AtomicBool,
}

impl Drainer {
    pub fn new(
        fleet: Option<Arc<Fleet>>,
        manager: Manager,
        ingest: Arc<Ingest>,
        grace: Duration,
        done: tokio::sync::watch::Sender<bool>,
    ) -> Self {
        Self {
            fleet,
            manager,
            ingest,
            grace,
            done,
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Hands every room on, then tells the process to exit.
    pub async fn drain(&self) -> Result<DrainReport, DrainError> {
        let fleet = self.fleet.as_ref().ok_or(DrainError::NotInFleet)?;
        if fleet.call(|f| f.other_live_boxes()).await? == 0 {
            return Err(DrainError::NoOtherBox);
        }
        if self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(DrainError::AlreadyDraining);
        }
        let began = Instant::now();
        tracing::warn!(
            node_id = fleet.node_id(),
            "drain: handing this box's rooms to the fleet"
        );
        let result = self.hand_over_all(fleet).await;
        let mut report = match result {
            Ok(r) => r,
            Err(e) => {
                // Half drained: the box goes on serving what it kept, but
                // takes no new room until restarted.
                tracing::error!(error = %e, "drain failed");
                return Err(e);
            }
        };
        fleet.call(|f| f.leave()).await?;
        report.seconds = began.elapsed().as_secs_f64();
        tracing::warn!(
            rooms = report.rooms.len(),
            seconds = report.seconds,
            "drain done: the box exits"
        );
        let _ = self.done.send(true);
        Ok(report)
    }

    async fn hand_over_all(&self, fleet: &Arc<Fleet>) -> Result<DrainReport, DrainError> {
        fleet.call(|f| f.start_draining()).await?;
        let rooms = fleet.call(|f| f.rooms_owned()).await?;
        let mut report = DrainReport::default();
        for (app, room) in rooms {
            let tasks = self.manager.hand_off_room(app, &room, self.grace).await;
            let r = room.clone();
            let to = fleet.call(move |f| f.hand_over_room(app, &r)).await?;
            let publishers = self.ingest.end_room(app, &room);
            tracing::info!(sdk_app_id = app, room = %room, to = ?to, tasks = tasks.len(), publishers, "drain: room handed over");
            report.rooms.push(RoomHandOver {
                sdk_app_id: app,
                room,
                to,
                tasks: tasks.len(),
                publishers,
            });
        }
        Ok(report)
    }
}
