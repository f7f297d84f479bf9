//! Test publisher (`kiroku publish`): a synthetic media source (moving
//! H.264 test pattern and an Opus tone) and a WHIP client that sends it.

pub mod client;
pub mod source;
