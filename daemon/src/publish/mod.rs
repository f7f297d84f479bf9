//! Test publisher: a synthetic media source (moving H.264 test pattern and an Opus tone) for `kiroku publish`.

pub mod source;
