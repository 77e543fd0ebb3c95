//! The watcher stands: its guardian (which continues a stopped daemon, and which the daemon
//! continues and replaces in turn), the ids the kernel guards, and the signals it obeys only
//! from outside every session.
use std::{collections::HashSet, sync::Arc};

use anyhow::Context as _;
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::{exfiltrator::WithOrigin, SignalsInfo},
};
use watcher_common::{GUARD_PROCESS, GUARD_THREAD};

use crate::{
    pipeline::Core,
    sys::guardian::{self, Seen},
};

/// Looks at the guardian every `guardian::EVERY`; the daemon's thread ids every this many looks.
const THREADS_EVERY: u32 = 50;

/// Starts the guardian and the thread that keeps it (and the guarded ids) in place.
pub fn start(core: Arc<Core>) -> anyhow::Result<()> {
    // Job control signals would stop the daemon as SIGSTOP does: they do nothing to it.
    // SAFETY: signal(2) with SIG_IGN.
    unsafe {
        for sig in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let mut child = guardian::spawn().context("starting the guardian")?;
    let mut ids = Guarded::default();
    ids.set_guardian(&core, child.id());
    ids.refresh_threads(&core);
    std::thread::Builder::new()
        .name("watcher-guard".into())
        .spawn(move || {
            let mut n = 0u32;
            loop {
                match guardian::look(&mut child) {
                    Seen::Running => {}
                    Seen::Continued => tracing::warn!(
                        pid = child.id(),
                        "the guardian was stopped; continued it"
                    ),
                    Seen::Gone(status) => {
                        tracing::warn!(pid = child.id(), %status, "the guardian is gone; starting another");
                        match guardian::spawn() {
                            Ok(c) => {
                                child = c;
                                ids.set_guardian(&core, child.id());
                            }
                            Err(e) => tracing::error!("cannot start a guardian: {e}"),
                        }
                    }
                }
                n = n.wrapping_add(1);
                if n.is_multiple_of(THREADS_EVERY) {
                    ids.refresh_threads(&core);
                }
                std::thread::sleep(guardian::EVERY);
            }
        })
        .context("starting the guardian's keeper")?;
    Ok(())
}

/// What is in the kernel's `GUARDED` map (and `Core::guarded`).
#[derive(Default)]
struct Guarded {
    guardian: Option<u32>,
    threads: HashSet<u32>,
    /// Guardians and threads that are gone, still named in `Core::guarded`: the record of the
    /// signal that killed one arrives after it was replaced.
    former: std::collections::VecDeque<u32>,
}

/// How many former ids `Core::guarded` keeps.
const FORMER: usize = 64;

impl Guarded {
    fn set_guardian(&mut self, core: &Core, pid: u32) {
        let mut k = core.kernel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = self.guardian.take() {
            let _ = k.unguard(old);
            self.forget(old);
        }
        let own = std::process::id();
        if let Err(e) = k.guard(&[(own, GUARD_PROCESS), (pid, GUARD_PROCESS)]) {
            tracing::error!("cannot guard the daemon and its guardian in the kernel: {e:#}");
        }
        drop(k);
        self.guardian = Some(pid);
        self.publish(core);
    }

    fn refresh_threads(&mut self, core: &Core) {
        let now: HashSet<u32> = guardian::own_threads().into_iter().collect();
        if now == self.threads {
            return;
        }
        let mut k = core.kernel.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<u32> = self.threads.difference(&now).copied().collect();
        for t in gone {
            let _ = k.unguard(t);
            self.forget(t);
        }
        let new: Vec<(u32, u32)> = now
            .difference(&self.threads)
            .filter(|t| **t != std::process::id())
            .map(|t| (*t, GUARD_THREAD))
            .collect();
        if let Err(e) = k.guard(&new) {
            tracing::error!("cannot guard the daemon's threads in the kernel: {e:#}");
        }
        drop(k);
        self.threads = now;
        self.publish(core);
    }

    fn forget(&mut self, id: u32) {
        if self.former.len() == FORMER {
            self.former.pop_front();
        }
        self.former.push_back(id);
    }

    fn publish(&self, core: &Core) {
        let mut g = core.guarded.write().unwrap_or_else(|e| e.into_inner());
        *g = self
            .threads
            .iter()
            .chain(&self.former)
            .copied()
            .chain(self.guardian)
            .collect();
    }
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload the rules), obeyed only when no watched
/// process sent them: such a sender was killed in the kernel as it sent, and its session is
/// taken by the kill-switch once its record arrives. Returns when a stop is asked.
pub fn await_stop(core: Arc<Core>) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGTERM, SIGINT, SIGHUP])
        .context("listening for SIGTERM, SIGINT and SIGHUP")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("watcher-signals".into())
        .spawn(move || {
            for origin in signals.forever() {
                let from = origin.process.as_ref().map(|p| p.pid as u32);
                let watched = from.is_some_and(|pid| {
                    core.kernel
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .watched_or_tamperer(pid)
                });
                if watched {
                    tracing::warn!(
                        signal = origin.signal,
                        from = from.unwrap_or(0),
                        "ignored a signal from a watched process"
                    );
                    continue;
                }
                if origin.signal == SIGHUP {
                    if let Err(e) = core.reload("SIGHUP") {
                        tracing::warn!("reload on SIGHUP: {e}");
                    }
                    continue;
                }
                let _ = tx.send(());
                return;
            }
        })
        .context("starting the signal thread")?;
    Ok(rx)
}

/// A clean stop with sessions running: by `[daemon] on_stop`, each running session is frozen
/// and marked for the next daemon, which thaws it once it watches it again (`freeze`, the
/// default: nothing a session does goes unseen), or left running (`run`). Sealed in the audit
/// log either way. Returns the sessions frozen.
pub fn on_stop(shared: &super::Enforce) -> Vec<String> {
    let a = &shared.approvals;
    let cg = &a.cgroups;
    // The last stop (`watcher retire`): no daemon comes to thaw what a freeze would stop, so
    // running sessions run on, and a hold made since the retirement is denied as it was.
    let retiring = shared.retiring.load(std::sync::atomic::Ordering::SeqCst);
    let how = match retiring {
        true => crate::config::OnStop::Run,
        false => shared.config.daemon.on_stop,
    };
    let denied = match retiring {
        true => deny_pending(shared, "watcher retire"),
        false => Vec::new(),
    };
    let running: Vec<String> = cg
        .sessions()
        .into_iter()
        .filter(|t| !cg.pids(t).is_empty() && !cg.is_frozen(t))
        .collect();
    let mut frozen = Vec::new();
    if how == crate::config::OnStop::Freeze {
        for t in &running {
            // Marked first: a mark without a freeze only thaws what runs already.
            if let Err(e) = a.set_frozen_at_stop(t, true) {
                tracing::error!(trace_id = %t, "marking the session for the next daemon: {e}");
            }
            match cg.set_frozen(t, true) {
                Ok(()) => frozen.push(t.clone()),
                Err(e) => tracing::error!(trace_id = %t, "freezing at the stop: {e}"),
            }
        }
        for t in &frozen {
            if let Err(e) = cg.wait_frozen(t, true, std::time::Duration::from_secs(5)) {
                tracing::error!(trace_id = %t, "freezing at the stop: {e}");
            }
        }
    }
    let body = serde_json::json!({
        "on_stop": how,
        "retiring": retiring,
        "running": running,
        "frozen": frozen,
        "denied": denied,
    });
    let _ = shared.audit.seal("daemon_stop", None, Ok(body));
    match how {
        crate::config::OnStop::Freeze if !frozen.is_empty() => tracing::warn!(
            sessions = frozen.len(),
            "stopping: running sessions frozen until the next daemon watches them again"
        ),
        crate::config::OnStop::Run if !running.is_empty() => tracing::warn!(
            sessions = running.len(),
            "stopping: running sessions go on unobserved (on_stop = \"run\")"
        ),
        _ => {}
    }
    // `run`: nothing of the watcher stays in the kernel to stop what goes on. `freeze`: the
    // pinned programs stay, so a session thawed by hand is still gated and its records kept.
    if how == crate::config::OnStop::Run {
        shared
            .kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unpin();
    }
    frozen
}

/// `watcher retire` (the package's removal): every pending hold is denied now, as its deadline
/// would (no answer can come once the watcher is gone), and the stop that follows is the last
/// (`on_stop`). Sessions the kill-switch holds stay frozen for a person: their cgroups stay,
/// named in the reply and the audit record. Returns the holds denied and those sessions.
pub fn retire(shared: &super::Enforce, by: &str) -> (Vec<String>, Vec<String>) {
    shared
        .retiring
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let denied = deny_pending(shared, by);
    let a = &shared.approvals;
    let left_frozen: Vec<String> = match a.kill_switch() {
        Ok(k) if k.engaged => a
            .cgroups
            .sessions()
            .into_iter()
            .filter(|t| k.all || k.traces.contains(t))
            .filter(|t| !a.cgroups.pids(t).is_empty())
            .collect(),
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::error!("reading the kill-switch: {e}");
            Vec::new()
        }
    };
    let body = serde_json::json!({ "by": by, "denied": denied, "left_frozen": left_frozen });
    let _ = shared.audit.seal("retire", None, Ok(body));
    tracing::warn!(
        by,
        denied = denied.len(),
        left_frozen = left_frozen.len(),
        "retiring: pending holds denied; the next stop leaves running sessions running"
    );
    (denied, left_frozen)
}

/// Denies every pending hold (`Via::Retire`); the ids denied.
fn deny_pending(shared: &super::Enforce, by: &str) -> Vec<String> {
    let a = &shared.approvals;
    let pending = a
        .list(Some(crate::model::hold::HoldState::Pending))
        .unwrap_or_else(|e| {
            tracing::error!("reading the pending holds: {e}");
            Vec::new()
        });
    let mut denied = Vec::new();
    for h in pending {
        match a.deny(&h.id, by, crate::model::hold::Via::Retire) {
            Ok(_) => denied.push(h.id),
            Err(e) => tracing::error!(hold = %h.id, "denying at retirement: {e}"),
        }
    }
    denied
}
