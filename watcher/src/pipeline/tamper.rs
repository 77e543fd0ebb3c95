//! Tamper resistance: a watched process that signals the watcher or a held process, ptraces a
//! process outside its session, or touches
//! the watcher's control socket, configuration, rules or store, is caught here (built in, not a
//! rule a bad policy file could drop) and by default its session is frozen with the kill-switch.
use std::path::PathBuf;

use super::Core;
use crate::model::{
    event::{Action, Detail, Event, Finding, Mode, Outcome, Severity},
    hold::{HaltMode, TamperAction},
};

/// The built-in rule id of tamper findings.
pub const RULE: &str = "watcher-tamper";

/// The trace id of the session `pid` belongs to.
pub fn session_of(shared: &Core, pid: u32) -> Option<String> {
    crate::sys::procfs::session_of(&shared.config.holds.cgroup, pid)
}

/// The watcher's own files and directories.
pub fn own_paths(shared: &Core) -> Vec<PathBuf> {
    let c = &shared.config;
    let mut v = vec![c.daemon.socket.clone()];
    // The hold store, and the audit log with its key and witness: an edit is tampering even
    // though the verifier would catch it later.
    let mut stores = vec![&c.holds.store];
    if c.audit.enabled {
        stores.push(&c.audit.store);
        v.push(c.audit.key.clone());
        v.extend(c.audit.witness.iter().cloned());
    }
    for store in stores {
        v.push(store.clone());
        let store = store.display().to_string();
        v.push(PathBuf::from(format!("{store}-wal")));
        v.push(PathBuf::from(format!("{store}-shm")));
        // The records the audit store refused, waiting to be written into the signed log.
        v.push(PathBuf::from(format!("{store}-unwritten")));
    }
    if let Some(p) = &c.source {
        v.push(p.clone());
    }
    if let Some(p) = &c.rules.path {
        v.push(p.clone());
    }
    // The API's socket and token: a token read inside a session is a credential stolen.
    v.extend(c.api.socket.iter().cloned());
    if c.api.listen.is_some() {
        v.push(c.api.token_file.clone());
    }
    // The pinned programs and maps: what keeps enforcement in force while no daemon runs.
    if !c.daemon.bpffs.as_os_str().is_empty() {
        v.push(c.daemon.bpffs.clone());
    }
    if let Some(root) = crate::sys::cgroup::cgroup2_root() {
        v.push(root.join(&c.holds.cgroup));
    }
    // The sessions' process limits on a v1 hierarchy: raising one's own is tampering.
    if let Some(crate::sys::pids::Place::V1(base)) = shared.cgroups.pids_limit().map(|l| &l.place) {
        v.push(base.clone());
    }
    v
}

/// Why this event is tampering, if it is. `same_session(pid)`: whether process `pid` is in
/// the event's session, as the event stream has it (a target that has exited since is still
/// known there; /proc no longer has it).
pub fn check(
    shared: &Core,
    own: &[PathBuf],
    ev: &Event,
    same_session: impl Fn(u32) -> bool,
) -> Option<String> {
    match &ev.detail {
        Detail::Exit {
            fenced: Some(call), ..
        } => Some(format!(
            "{call} of the watcher, stopped by the session's seccomp fence"
        )),
        Detail::Signal {
            target_pid, signal, ..
        } => {
            if shared.is_guarded(*target_pid) {
                return Some(format!("signal {signal} to the watcher daemon"));
            }
            let trace = session_of(shared, *target_pid)?;
            let held = shared.enforcement().is_some_and(|e| e.is_held(&trace));
            held.then(|| format!("signal {signal} to process {target_pid} of a held session"))
        }
        Detail::Ptrace {
            target_pid,
            syscall,
            request,
            ..
        } => {
            // ptrace, or the other ways into a process (its memory, its descriptors).
            let how = syscall.as_deref().unwrap_or("ptrace");
            if shared.is_guarded(*target_pid) {
                return Some(format!("{how} of the watcher daemon"));
            }
            // PTRACE_TRACEME asks its parent to trace it: nothing is reached into (and a
            // traced process is killed where the gate would stop it).
            if syscall.is_none() && *request == 0 {
                return None;
            }
            // Debugging its own children is normal work; anything outside the session is not.
            (!same_session(*target_pid))
                .then(|| format!("{how} of process {target_pid} outside its session"))
        }
        // Into any cgroup's `cgroup.procs` or `cgroup.threads` (or a v1 hierarchy's `tasks`):
        // a process of the session would leave its session's cgroup (its limits, the freeze
        // and deny's kill).
        Detail::Open {
            path,
            flags,
            result,
            ..
        } if (path.ends_with("/cgroup.procs")
            || path.ends_with("/cgroup.threads")
            || (path.starts_with("/sys/fs/cgroup/") && path.ends_with("/tasks")))
            && *result >= 0
            && flags.writes() =>
        {
            Some(format!(
                "opened {path} to move a process into another cgroup"
            ))
        }
        Detail::Open { path, .. } => own
            .iter()
            .find(|p| is_under(path, p))
            .map(|p| format!("opened the watcher's {}", p.display())),
        Detail::Connect { path: Some(p), .. }
            if *p == shared.config.daemon.socket.display().to_string() =>
        {
            Some("connected to the watcher's control socket".into())
        }
        Detail::Connect { path: Some(p), .. }
            if shared
                .config
                .api
                .socket
                .as_ref()
                .is_some_and(|s| *p == s.display().to_string()) =>
        {
            Some("connected to the watcher's API socket".into())
        }
        _ => None,
    }
}

/// `path` is `base` or inside it. A byte comparison: this runs on every open, and the paths are
/// normalised already (no `.`, `..` or doubled slashes).
fn is_under(path: &str, base: &std::path::Path) -> bool {
    let Some(base) = base.to_str() else {
        return false;
    };
    let base = base.trim_end_matches('/');
    match path.strip_prefix(base) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Publishes the finding and applies the configured action to the offender's session;
/// whether the session is being stopped.
pub fn act(shared: &Core, ev: &Event, why: String) -> bool {
    let action = if shared.config.holds.enabled {
        shared.config.holds.tamper
    } else {
        TamperAction::Alert
    };
    let finding = Finding {
        tags: vec!["T1562.001".into(), "T1489".into(), "ASI10".into()],
        ..Finding::new(
            crate::model::event::Detector::Tamper,
            RULE,
            format!("tampering with the watcher: {why}"),
            Severity::Critical,
            match action {
                TamperAction::Alert => (Action::Alert, Mode::Enforce, Outcome::Alerted),
                _ => (Action::Kill, Mode::Enforce, Outcome::Held),
            },
            &shared.policy.load().policy.version,
            vec![ev.clone()],
        )
    };
    let mut fev = ev.clone();
    fev.detail = Detail::Finding(Box::new(finding));
    shared.publish(fev);
    tracing::error!(trace_id = %ev.trace_id, pid = ev.pid, "tampering: {why}");
    let mode = match action {
        TamperAction::Alert => return false,
        TamperAction::Freeze => HaltMode::Freeze,
        TamperAction::Kill => HaltMode::Kill,
    };
    match shared.enforcement() {
        Some(e) => {
            e.halt_session(&ev.trace_id, mode, "watcher (tamper)");
            true
        }
        None => {
            tracing::error!("tampering: no enforcement to stop the session");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_paths_match_by_whole_components() {
        let base = std::path::Path::new("/run/watcher/api.sock");
        assert!(super::is_under("/run/watcher/api.sock", base));
        assert!(!super::is_under("/run/watcher/api.sock2", base));
        let dir = std::path::Path::new("/sys/fs/cgroup/watcher/");
        assert!(super::is_under(
            "/sys/fs/cgroup/watcher/abc/cgroup.freeze",
            dir
        ));
        assert!(super::is_under("/sys/fs/cgroup/watcher", dir));
        assert!(!super::is_under("/sys/fs/cgroup/watcher-bench/x", dir));
    }
}
