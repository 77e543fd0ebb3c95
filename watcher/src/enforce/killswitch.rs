//! The kill-switch, for incident responders: every watched process (or the given sessions)
//! stops or dies at once. Three layers, so nothing slips through: the session cgroups are frozen
//! or killed now; an in-kernel flag stops or kills any watched process at its next hook (a
//! process outside its cgroup included); and the cgroup connect programs refuse their connects.
//! The state is stored, so a restarted daemon engages it again.
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use watcher_common::{HALT_KILL, HALT_STOP};

use super::Enforce;
use crate::model::{
    hold::{Engaged, HaltMode, KillSwitchEntry, KillSwitchState},
    ids::TraceId,
};

/// Engages the kill-switch for `traces` (ids checked by the caller's parser) or for every
/// session. A trace id that names no session is an error and engages nothing: a typo must not
/// look like a stopped session.
pub fn engage(
    shared: &Enforce,
    traces: Vec<TraceId>,
    all: bool,
    mode: HaltMode,
    by: &str,
) -> anyhow::Result<Engaged> {
    if !all && traces.is_empty() {
        return Err(anyhow!(
            "say which sessions: --trace ID (repeatable) or --all"
        ));
    }
    let unknown: Vec<&str> = {
        let sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let known = sessions.all();
        traces
            .iter()
            .map(TraceId::as_str)
            .filter(|t| {
                !shared.approvals.cgroups.exists(t) && !known.iter().any(|s| s.trace_id == *t)
            })
            .collect()
    };
    if !unknown.is_empty() {
        return Err(anyhow!(
            "no such session: {} (nothing was engaged)",
            unknown.join(", ")
        ));
    }
    let traces: Vec<String> = traces.into_iter().map(String::from).collect();
    let start = Instant::now();
    let entry = KillSwitchEntry {
        by: by.into(),
        at: crate::enforce::holds::now_rfc3339(),
        mode: mode.as_str().into(),
        traces: traces.clone(),
        all,
    };
    // A second engagement adds to the first (another session, the host, a harder mode);
    // it never replaces it.
    let before = shared.approvals.kill_switch()?;
    let mut state = match before.engaged {
        true => before,
        false => KillSwitchState::default(),
    };
    state.engaged = true;
    state.all |= all;
    for t in traces {
        if !state.traces.contains(&t) {
            state.traces.push(t);
        }
    }
    if state.mode != "kill" {
        state.mode = mode.as_str().into();
    }
    state.by = entry.by.clone();
    state.at = entry.at.clone();
    state.entries.push(entry);
    shared.approvals.set_kill_switch(&state)?;
    crate::sys::fault::point(crate::sys::fault::BEFORE_KILL_SWITCH_SEAL);
    let _ = shared
        .audit
        .seal("kill_switch", None, serde_json::to_value(&state));
    let (sessions, processes) = apply(shared, &state)?;
    tracing::warn!(
        by,
        all,
        mode = mode.as_str(),
        sessions = sessions.len(),
        processes,
        "kill-switch engaged"
    );
    Ok(Engaged {
        sessions,
        processes,
        micros: start.elapsed().as_micros() as u64,
    })
}

/// Sets the kernel flags and freezes or kills the sessions' cgroups; waits until they are
/// frozen. Returns the sessions and how many processes they had.
pub fn apply(shared: &Enforce, k: &KillSwitchState) -> anyhow::Result<(Vec<String>, usize)> {
    let (code, kill) = match k.mode.as_str() {
        "kill" => (HALT_KILL, true),
        _ => (HALT_STOP, false),
    };
    let cg = &shared.approvals.cgroups;
    let traces: Vec<String> = if k.all {
        cg.sessions()
    } else {
        valid(&k.traces)
    };
    {
        let mut kernel = shared.kernel.lock().unwrap_or_else(|e| e.into_inner());
        if k.all {
            kernel.set_halt_all(code)?;
        } else {
            let sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
            for s in sessions.all() {
                if traces.contains(&s.trace_id) {
                    kernel.set_halt_session(s.session_id, code)?;
                }
            }
        }
    }
    let mut processes = 0;
    // Every write first, then the waits: the sessions freeze in parallel.
    for t in &traces {
        processes += cg.pids(t).len();
        let r = if kill {
            cg.kill(t)
        } else {
            cg.set_frozen(t, true)
        };
        if let Err(e) = r {
            tracing::warn!(trace_id = %t, "kill-switch: {e}");
        }
    }
    if !kill {
        for t in &traces {
            if cg.exists(t) {
                cg.wait_frozen(t, true, Duration::from_secs(5))
                    .with_context(|| format!("session {t}"))?;
            }
        }
    }
    Ok((traces, processes))
}

/// Clears the kernel flags and thaws the sessions (those waiting on a hold stay frozen).
pub fn release(shared: &Enforce, by: &str) -> anyhow::Result<Vec<String>> {
    let k = shared.approvals.kill_switch()?;
    {
        let mut kernel = shared.kernel.lock().unwrap_or_else(|e| e.into_inner());
        kernel.set_halt_all(0)?;
        kernel.clear_halted_sessions()?;
    }
    let cg = &shared.approvals.cgroups;
    let traces = if k.all {
        cg.sessions()
    } else {
        valid(&k.traces)
    };
    // Released first, so that resuming is no longer refused for the kill-switch.
    let state = KillSwitchState {
        engaged: false,
        by: by.into(),
        at: crate::enforce::holds::now_rfc3339(),
        ..Default::default()
    };
    shared.approvals.set_kill_switch(&state)?;
    let mut released = Vec::new();
    for t in traces {
        if shared.approvals.pending_for(&t).is_some() || !cg.exists(&t) {
            continue;
        }
        let pids = cg.pids(&t);
        // The kernel flag may have stopped processes with SIGSTOP at their hooks.
        shared.approvals.resume(&t, &pids);
        released.push(t);
    }
    shared
        .audit
        .record("kill_switch", None, serde_json::to_value(&state));
    tracing::warn!(by, sessions = released.len(), "kill-switch released");
    Ok(released)
}

/// The stored state's trace ids that are trace ids. The store is root's, but an id that is not
/// one (an edited file, an older daemon's record) is dropped here, loudly, before it can name a
/// path.
fn valid(traces: &[String]) -> Vec<String> {
    traces
        .iter()
        .filter(|t| match TraceId::check(t) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("kill-switch state: {e}; ignored");
                false
            }
        })
        .cloned()
        .collect()
}
