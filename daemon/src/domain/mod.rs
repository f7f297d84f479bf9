//! The shared vocabulary at the ground floor of the import graph: validated
//! recording parameters (`params`) and the task records and states
//! (`task`). Everything above (API, recorders, storage, callbacks, the
//! manager) imports these downward; nothing here imports anything of
//! kiroku's but other `domain` items.

pub mod params;
pub mod task;
