//! Credentials that come from outside the API signature: TRTC UserSigs.

pub mod usersig;
