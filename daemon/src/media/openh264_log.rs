//! OpenH264 writes its messages to stderr unless given a trace callback.
//! The encoder validates its parameters (and warns) when it is first
//! initialised, before the `openh264` crate lowers its trace level, so a
//! newcomer saw `Warning: bEnableFrameSkip = 0, bitrate can't be
//! controlled …` at every encoder start. [`route_encoder_log`] installs a
//! callback, before that first initialisation, that hands each message to
//! `tracing` at the level it deserves.
//!
//! The `openh264` crate has no safe way to set a trace callback, so this
//! file holds the one FFI call it needs (unsafe code is denied elsewhere).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};

use openh264::encoder::Encoder;
use openh264_sys2::{
    ENCODER_OPTION_TRACE_CALLBACK, ENCODER_OPTION_TRACE_LEVEL, WELS_LOG_ERROR, WELS_LOG_INFO,
    WELS_LOG_WARNING,
};

/// How a message of OpenH264 is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warn,
    Debug,
}

/// The `tracing` level of one OpenH264 message.
///
/// kiroku never lets the encoder skip frames (the output clock decides
/// the frame rate; `docs/mixing.md`), so the warning that bitrate control
/// is weaker without frame skipping describes a choice, not a fault: it is
/// a debug message. Other warnings and errors keep their level.
pub fn severity(level: c_int, message: &str) -> Severity {
    if level <= WELS_LOG_ERROR as c_int {
        Severity::Error
    } else if level <= WELS_LOG_WARNING as c_int && !message.contains("bEnableFrameSkip") {
        Severity::Warn
    } else {
        Severity::Debug
    }
}

unsafe extern "C" fn trace(_ctx: *mut c_void, level: c_int, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: OpenH264 passes a NUL-terminated string that lives for the call.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    let text = text.trim();
    match severity(level, text) {
        Severity::Error => tracing::error!(target: "openh264", "{text}"),
        Severity::Warn => tracing::warn!(target: "openh264", "{text}"),
        Severity::Debug => tracing::debug!(target: "openh264", "{text}"),
    }
}

/// Sends `encoder`'s messages (warnings and errors; info while it is
/// initialised) to `tracing` instead of stderr. Call it before the first
/// `encode`.
pub fn route_encoder_log(encoder: &mut Encoder) {
    let mut callback: openh264_sys2::WelsTraceCallback = Some(trace);
    let mut level: c_int = WELS_LOG_INFO as c_int;
    // SAFETY: the trace options are accepted before initialisation (OpenH264
    // copies the function pointer and the level; neither pointer is kept),
    // and `trace` is a plain function that never unwinds.
    unsafe {
        let api = encoder.raw_api();
        api.set_option(
            ENCODER_OPTION_TRACE_CALLBACK,
            std::ptr::addr_of_mut!(callback).cast(),
        );
        api.set_option(
            ENCODER_OPTION_TRACE_LEVEL,
            std::ptr::addr_of_mut!(level).cast(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_skip_warning_is_a_debug_message_and_other_warnings_stay_warnings() {
        let skip = "bEnableFrameSkip = 0,bitrate can't be controlled for RC_QUALITY_MODE,RC_BITRATE_MODE and RC_TIMESTAMP_MODE without enabling skip frame.";
        assert_eq!(severity(WELS_LOG_WARNING as c_int, skip), Severity::Debug);
        assert_eq!(
            severity(WELS_LOG_WARNING as c_int, "Invalid settings in bitrate"),
            Severity::Warn
        );
        assert_eq!(severity(WELS_LOG_ERROR as c_int, "x"), Severity::Error);
        assert_eq!(
            severity(WELS_LOG_INFO as c_int, "Change QP Range"),
            Severity::Debug
        );
    }
}
