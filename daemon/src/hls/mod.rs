//! HLS as kiroku writes it, below every recorder and every reader of
//! recordings: the object-key grammar of spec §3a (`naming`, written *and*
//! parsed here only), playlists with the TRTC tags (`playlist`), key-frame
//! segment cuts (`segmenter`) and one user's stream of TS segments plus its
//! playlist (`stream`). Recorders (`record`), the end-of-task packer
//! (`output::convert`), the mixer (`mix`) and `kiroku merge` import it
//! downward. Pure: no files, sockets or clocks.

pub mod naming;
pub mod playlist;
pub mod recover;
pub mod segmenter;
pub mod stream;
