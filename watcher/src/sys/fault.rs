//! Fault injection for the crash tests, compiled in only with the `fault-injection` feature
//! (`cargo xtask test` builds with it; release builds do not have it). `WATCHER_FAULT=NAME`
//! (several separated by commas) makes the daemon SIGKILL itself when it reaches the point of that name (`point`), wait
//! there for two seconds (`delay`), or wait there while the file `WATCHER_FAULT_FILE` exists
//! (`pause`).

/// The point between freezing a session for a hold and storing the hold.
pub const BEFORE_HOLD_STORE: &str = "before-hold-store";
/// The point between storing a hold and sealing its audit record (SIGKILL).
pub const BEFORE_HOLD_SEAL: &str = "before-hold-seal";
/// The point between deciding a gated event and answering it (SIGKILL).
pub const BEFORE_GATE_ANSWER: &str = "before-gate-answer";
/// Before deciding a gated event: the decision comes two seconds late (`delay`).
pub const SLOW_GATE_ANSWER: &str = "slow-gate-answer";
/// Before answering a `baseline` request: the reply comes two seconds late (`delay`).
pub const SLOW_BASELINE_REPLY: &str = "slow-baseline-reply";
/// The intake, once the record ring has data: it stops reading the ring (`pause`).
pub const PAUSE_INTAKE: &str = "pause-intake";
/// Between storing a kill-switch engagement and sealing its audit record (SIGKILL).
pub const BEFORE_KILL_SWITCH_SEAL: &str = "before-kill-switch-seal";
/// A gated action joining a stored hold: the hold store refuses the write (`fails`).
pub const JOIN_REFUSED: &str = "join-refused";

/// True at the point of that name: the caller fails there as a refused write would.
#[cfg(feature = "fault-injection")]
pub fn fails(name: &str) -> bool {
    let on = on(name);
    if on {
        tracing::error!(point = name, "fault injection: failing");
    }
    on
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fails(_name: &str) -> bool {
    false
}

/// `WATCHER_FAULT` names this point (it may name several, separated by commas).
#[cfg(feature = "fault-injection")]
fn on(name: &str) -> bool {
    std::env::var("WATCHER_FAULT").is_ok_and(|v| v.split(',').any(|p| p == name))
}

#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    if on(name) {
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
    if on(name) {
        tracing::error!(point = name, "fault injection: waiting 2 s");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn delay(_name: &str) {}

/// The longest a `pause` lasts, whatever the file: a test that dies must not leave a daemon
/// that never reads its ring.
#[cfg(feature = "fault-injection")]
const PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(feature = "fault-injection")]
pub fn pause(name: &str) {
    if on(name) {
        let Some(file) = std::env::var_os("WATCHER_FAULT_FILE") else {
            return;
        };
        let file = std::path::PathBuf::from(file);
        let start = std::time::Instant::now();
        if file.exists() {
            tracing::error!(
                point = name,
                "fault injection: paused while {} exists",
                file.display()
            );
        }
        while file.exists() && start.elapsed() < PAUSE_MAX {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn pause(_name: &str) {}
