//! Signed event callbacks (spec §7): payloads, the durable outbox's
//! schedule, the delivery worker, and a bounded view of recent deliveries
//! for the console.

pub mod deliver;
pub mod event;
pub mod log;
pub mod outbox;
