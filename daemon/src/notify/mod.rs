//! Signed event callbacks (spec §7): payloads, the durable outbox's
//! schedule, and the delivery worker.

pub mod deliver;
pub mod event;
pub mod outbox;
