//! systemd integration through `sd_notify`: `READY=1` once listening,
//! `WATCHDOG=1` at half of `WatchdogSec`, `STATUS=` with the task count,
//! `STOPPING=1` on shutdown. Every call is a no-op outside systemd
//! (no `NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;

pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// The interval at which to ping the watchdog, if systemd asked for one.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

pub fn watchdog_ping() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}
