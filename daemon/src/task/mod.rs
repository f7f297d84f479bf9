//! Recording tasks: validated parameters, the idle rule, and the manager
//! that owns every live task.

pub mod idle;
pub mod lifecycle;
pub mod manager;
pub mod outputs;
pub mod params;
