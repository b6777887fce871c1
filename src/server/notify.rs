//! Readiness for systemd (`Type=notify`, sd_notify(3)): READY=1 once the listeners
//! accept and the spool is recovered, RELOADING=1 then READY=1 around a reload,
//! STOPPING=1 at shutdown. Without `NOTIFY_SOCKET` in the environment nothing is sent.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The server accepts mail; `status` says where.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (with the monotonic time, as `Type=notify-reload` wants it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The server is stopping: it drains sessions and deliveries.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
