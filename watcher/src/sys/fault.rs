//! Fault injection for the crash tests, compiled in only with the `fault-injection` feature
//! (`cargo xtask test` builds with it; release builds do not have it). `WATCHER_FAULT=NAME`
//! makes the daemon SIGKILL itself when it reaches the point of that name (`point`), or wait
//! there for two seconds (`delay`).

/// The point between freezing a session for a hold and storing the hold.
pub const BEFORE_HOLD_STORE: &str = "before-hold-store";
/// The point between deciding a gated event and answering it (SIGKILL).
pub const BEFORE_GATE_ANSWER: &str = "before-gate-answer";
/// Before deciding a gated event: the decision comes two seconds late (`delay`).
pub const SLOW_GATE_ANSWER: &str = "slow-gate-answer";

#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    if std::env::var("WATCHER_FAULT").is_ok_and(|v| v == name) {
        tracing::error!(point = name, "fault injection: SIGKILL");
        // SAFETY: kill(2) of this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

#[cfg(feature = "fault-injection")]
pub fn delay(name: &str) {
    if std::env::var("WATCHER_FAULT").is_ok_and(|v| v == name) {
        tracing::error!(point = name, "fault injection: waiting 2 s");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn delay(_name: &str) {}
