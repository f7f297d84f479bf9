//! Mixed-stream recording: the pieces that turn a room's streams into one
//! picture and one sound (layout geometry, audio mixing, watermarks and
//! images).

pub mod address_policy;
pub mod audio;
pub mod fetch;
pub mod layout;
pub mod overlay;
