//! From a finding to what is done about it: allow (monitor), alert, hold (freeze the session and
//! ask a human) or kill. Decided here, in code, from the rule and the configuration; never by
//! asking the agent.
use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use super::Enforce;
use crate::{
    model::{
        event::{Action, Detail, Event, Mode, Outcome},
        hold::{Decision, HoldDraft},
        session::{new_session_id, Session},
    },
    pipeline::Seed,
    rules::eval::Rule,
};

/// Decides and acts. `kernel_rule`: the kernel's fast path matched this event for this rule
/// (it has already killed the process, stopped it, or refused the connect).
pub fn decide(
    shared: &Arc<Enforce>,
    rule: &Rule,
    ev: &Event,
    event_boot_ns: u64,
    kernel_rule: bool,
    profile: Option<&str>,
    session_pids: &dyn Fn() -> Vec<u32>,
) -> Decision {
    let plain = |outcome| Decision {
        outcome,
        hold: None,
        new_hold: false,
    };
    let is_connect = matches!(ev.detail, Detail::Connect { .. });
    match (rule.mode, rule.action) {
        (Mode::Monitor, _) => return plain(Outcome::Monitored),
        (_, Action::Alert) => return plain(Outcome::Alerted),
        _ => {}
    }
    if !shared.config.holds.enabled {
        return plain(match rule.action {
            _ if kernel_rule && is_connect => Outcome::RefusedInKernel,
            Action::Kill if kernel_rule => Outcome::KilledInKernel,
            _ => Outcome::NotEnforced,
        });
    }
    let a = &shared.approvals;
    if a.excepted(&rule.id, &ev.trace_id, profile) {
        return plain(Outcome::Excepted);
    }
    // One action, one question: the approver let this very open through, or refused it,
    // already.
    if let Some((id, allowed)) = a.decided_action(ev) {
        if kernel_rule && !is_connect {
            // The fast path stopped it (and froze the session) for a question already answered.
            // SAFETY: plain kill(2) of the process the kernel stopped.
            unsafe { libc::kill(ev.pid as i32, libc::SIGCONT) };
            if a.pending_for(&ev.trace_id).is_none() {
                a.resume(&ev.trace_id, &[]);
            }
        }
        return Decision {
            outcome: if allowed {
                Outcome::Approved
            } else {
                Outcome::Refused
            },
            hold: Some(id),
            new_hold: false,
        };
    }
    match rule.action {
        Action::Kill if kernel_rule && !is_connect => plain(Outcome::KilledInKernel),
        Action::Kill => {
            kill_after_seal(shared, rule, ev);
            plain(Outcome::Killed)
        }
        _ => {
            if let Some(id) = a.pending_for(&ev.trace_id) {
                return Decision {
                    outcome: Outcome::Held,
                    hold: Some(id),
                    new_hold: false,
                };
            }
            let Some(id) = a.claim(&ev.trace_id) else {
                return plain(Outcome::Held);
            };
            freeze_session(shared, &ev.trace_id, event_boot_ns, session_pids);
            Decision {
                outcome: Outcome::Held,
                hold: Some(id),
                new_hold: true,
            }
        }
    }
}

/// A kill decided in user space: the session is frozen at once (one write: the process runs
/// nothing more), and the kill follows on the killer's thread once its decision is sealed in
/// the audit log, so the intake never waits on the disk. A failing log does not save the
/// process (logged, counted). The rest of the session goes on unless a hold or the
/// kill-switch holds it.
fn kill_after_seal(shared: &Arc<Enforce>, rule: &Rule, ev: &Event) {
    let a = &shared.approvals;
    // Thawed after the kill only if this froze it: a freeze already there (a hold under way,
    // the kill-switch) is another's to lift.
    let ours = !a.cgroups.freeze_asked(&ev.trace_id);
    let frozen = a.cgroups.set_frozen(&ev.trace_id, true).is_ok();
    if !frozen {
        // SAFETY: plain kill(2) of the process the finding is about.
        unsafe { libc::kill(ev.pid as i32, libc::SIGSTOP) };
    }
    let body = serde_json::json!({
        "rule": rule.id,
        "action": "kill",
        "pid": ev.pid,
        "event": ev.seq,
        "reason": format!("rule {} (kill, enforce) matched", rule.id),
        "policy_version": shared.policy.load().policy.version,
    });
    let (e, ev) = (shared.clone(), ev.clone());
    shared.killer.submit(move || {
        let a = &e.approvals;
        let _ = e.audit.seal("decision", Some(&ev.trace_id), Ok(body));
        // A rename, link or truncate over a guarded name is undone first, while the
        // (frozen) process still names its mount namespace.
        if let Some(u) = a.undo_replaced(&ev) {
            tracing::warn!(trace_id = %ev.trace_id, pid = ev.pid, "{u}");
        }
        // SAFETY: plain kill(2); SIGKILL reaches a frozen or stopped task.
        unsafe { libc::kill(ev.pid as i32, libc::SIGKILL) };
        if frozen && ours && a.pending_for(&ev.trace_id).is_none() {
            a.resume(&ev.trace_id, &[]);
        }
    });
}

/// Starts freezing the session: its cgroup when it has one, else SIGSTOP to each process
/// (weaker: another process may send SIGCONT).
fn freeze_session(
    shared: &Enforce,
    trace: &str,
    event_boot_ns: u64,
    session_pids: &dyn Fn() -> Vec<u32>,
) {
    let cg = &shared.approvals.cgroups;
    match cg.freeze_timed(trace, event_boot_ns) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(
                trace,
                "no session cgroup to freeze ({e}); stopping each process"
            );
            for pid in session_pids() {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            }
        }
    }
}

/// Completes a hold off the pipeline: adds the session's recent events, waits until the
/// session is frozen (for the latency figure), stores the record, and says so.
pub fn record_hold(shared: Arc<Enforce>, mut draft: HoldDraft) {
    let recent: Vec<Event> = {
        let r = shared.recent.lock().unwrap_or_else(|e| e.into_inner());
        let trace = &draft.trigger.trace_id;
        let mut v: Vec<Event> = r
            .iter()
            .rev()
            .filter(|e| &e.trace_id == trace && !matches!(e.detail, Detail::Finding(_)))
            .take(RECENT_IN_HOLD)
            .map(|e| e.as_ref().clone())
            .collect();
        v.reverse();
        v
    };
    draft.recent = recent;
    let trace = draft.trigger.trace_id.clone();
    let a = shared.approvals.clone();
    tokio::task::spawn_blocking(move || {
        let id = draft.id.clone();
        if a.cgroups.exists(&trace) {
            draft.frozen_us = a.cgroups.take_frozen_us(&trace, Duration::from_secs(5));
            match draft.frozen_us {
                Some(us) => {
                    if let Ok(mut h) = shared.hold_latency.lock() {
                        let _ = h.record(us);
                    }
                }
                None => tracing::error!(hold = %id, "the session did not report frozen within 5 s"),
            }
        }
        crate::sys::fault::point(crate::sys::fault::BEFORE_HOLD_STORE);
        match a.record(draft) {
            Ok(h) => {
                crate::sys::fault::point(crate::sys::fault::BEFORE_HOLD_SEAL);
                a.seal_hold(&h);
                shared.counters.holds.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(hold = %h.id, trace_id = %h.trace_id, rule = %h.rule, deadline = %h.deadline, "session held: waiting for `watcher approve` or `watcher deny`");
                announce(&shared, h);
            }
            // Fail closed: the session stays frozen; the error says why there is no record.
            Err(e) => {
                tracing::error!(hold = %id, "storing the hold failed, the session stays frozen: {e}")
            }
        }
    });
}

/// Events of the session kept in a hold record.
const RECENT_IN_HOLD: usize = 200;

/// Watches the sessions whose cgroups an earlier daemon left (same trace ids).
pub fn adopt_sessions(shared: &Enforce) {
    let cg = &shared.approvals.cgroups;
    let placed = cg.discover();
    if placed > 0 {
        tracing::info!(placed, "found sessions inside the cgroups that own them");
    }
    // With the earlier daemon's maps, a process stopped at a hook has its record in the ring
    // (read next) and its entry in the gate's map (swept if the record was lost): it is
    // decided as it would have been, not as an unanswered gate.
    let took_over = shared
        .kernel
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .took_over();
    for trace in cg.sessions() {
        let pids = cg.pids(&trace);
        if pids.is_empty() {
            cg.remove_if_empty(&trace);
            continue;
        }
        if let Ok(dir) = cg.dir(&trace) {
            shared.watch_placed(&trace, &dir);
        }
        // As it was started: its profile, its pinned scope with what approvals widened it by,
        // and, where they enforce, the gate, before its processes are watched again.
        let saved = shared.approvals.remembered_session(&trace);
        // The same id as before: the kernel's maps, when taken over, name the session by it
        // (its processes, its kill-switch, the records written while no daemon ran).
        // Not kept (the store refused it): the taken-over map of watched processes has it.
        let kernel_id = || {
            if !took_over {
                return None;
            }
            let k = shared.kernel.lock().unwrap_or_else(|e| e.into_inner());
            let r = k.watched_reader().ok()?;
            pids.iter().find_map(|p| r.session_of(*p))
        };
        let session_id = saved
            .as_ref()
            .map(|s| s.session_id)
            .or_else(kernel_id)
            .unwrap_or_else(new_session_id);
        let watch = watcher_common::Watch {
            session_id,
            profile: 0,
            ppid: 0,
        };
        let profile = saved.as_ref().and_then(|s| s.profile.clone());
        let scope = saved.as_ref().and_then(|s| s.scope.clone());
        let scoped = match scope
            .clone()
            .map(crate::pipeline::scope::ScopeCheck::compile)
        {
            Some(Ok(c)) => {
                shared.scopes.set(session_id, c);
                true
            }
            Some(Err(e)) => {
                tracing::error!(trace_id = %trace, "the kept scope does not compile: {e}");
                false
            }
            None => false,
        };
        if shared.session_enforced(profile.as_deref(), scoped) {
            shared.gate_enforced_session(session_id);
        }
        {
            let seeds = shared.seeds.lock().unwrap_or_else(|e| e.into_inner());
            let mut k = shared.kernel.lock().unwrap_or_else(|e| e.into_inner());
            for pid in &pids {
                let _ = seeds.send(Seed {
                    pid: *pid,
                    ppid: crate::sys::procfs::ppid_of(*pid),
                    session_id,
                    cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
                });
                if let Err(e) = k.watch(*pid, watch) {
                    tracing::error!(pid, "re-watching: {e:#}");
                }
            }
        }
        let frozen = cg.is_frozen(&trace);
        if frozen && shared.approvals.frozen_at_stop(&trace) {
            // Frozen by a clean stop, not for a question: watched again now, it goes on
            // (unless a hold or the kill-switch holds it).
            let a = &shared.approvals;
            if a.pending_for(&trace).is_none() {
                a.resume(&trace, &[]);
            }
            if let Err(e) = a.set_frozen_at_stop(&trace, false) {
                tracing::error!(trace_id = %trace, "unmarking the session: {e}");
            }
            shared.audit.record(
                "session_resumed",
                Some(&trace),
                Ok(serde_json::json!({"why": "frozen by the last daemon's clean stop, watched again"})),
            );
        } else if frozen {
            recover_unrecorded_hold(shared, &trace, &pids, RECOVERED_RULE, RECOVERED_WHY);
        } else if !took_over && pids.iter().any(|p| crate::sys::procfs::is_stopped(*p)) {
            // Stopped at a hook (the gate, a kernel hold) by a daemon that died before it
            // answered: the session waits for a human, as a hold.
            freeze_session(shared, &trace, 0, &|| pids.clone());
            recover_unrecorded_hold(shared, &trace, &pids, UNANSWERED_RULE, UNANSWERED_WHY);
        }
        shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start(Session {
                profile,
                processes: pids.len() as u32,
                cgroup_id: cg.id(&trace),
                workdir: saved
                    .as_ref()
                    .and_then(|s| s.workdir.clone())
                    .or_else(|| crate::sys::procfs::cwd(pids[0])),
                scope,
                // As it was started, where the store kept it (its root may be gone by now).
                ..Session::new(
                    trace.clone(),
                    session_id,
                    saved.as_ref().map_or("restart", |s| s.started_by.as_str()),
                    saved
                        .as_ref()
                        .map(|s| s.root_pid)
                        .filter(|p| pids.contains(p))
                        .unwrap_or(pids[0]),
                    saved
                        .as_ref()
                        .map(|s| s.started.clone())
                        .unwrap_or_else(crate::enforce::holds::now_rfc3339),
                )
            });
        tracing::info!(trace_id = %trace, processes = pids.len(), frozen, scoped, "session from before the restart watched again");
    }
    shared.approvals.forget_sessions_but(&cg.sessions());
}

/// The rule of a hold made at start-up for a session an earlier daemon froze without storing
/// its hold.
pub const RECOVERED_RULE: &str = "watcher-recovered-hold";
const RECOVERED_WHY: &str = "the session was frozen for a hold by a daemon that stopped before it \
                             stored the hold; what triggered it is not known, decide from the tree";
/// The rule of a hold made for a process the gate stopped that got no answer: the daemon died
/// first, or the event's record was lost.
pub const UNANSWERED_RULE: &str = "watcher-unanswered-gate";
const UNANSWERED_WHY: &str = "a process was stopped at a hook for the policy to decide an \
                              action, and no decision came (the daemon restarted or the record \
                              was lost); what it was about to do is not known, decide from the tree";

/// The rule of a hold for a session whose record was lost: the ring was full, or its new
/// process could not be watched.
pub const LOST_RULE: &str = "watcher-records-lost";

/// Why a session is held for `LOST_RULE`: the stopped process's `kind`, and how many of the
/// session's records were lost.
fn lost_why(kind: u32, lost: u64) -> String {
    match watcher_common::EventKind::from_u32(kind) {
        Some(watcher_common::EventKind::Fork) => "a new process of this session could not be \
            watched: the watched-process map is full (daemon.max_watched_processes). Its parent \
            is stopped and the session frozen; approve lets the new process run unwatched"
            .to_string(),
        k => format!(
            "{lost} record(s) of this session were lost: the kernel's ring buffer was full \
             (daemon.ring_buffer_bytes, or the daemon is not keeping up). The process whose {} \
             record was lost is stopped where it made the call, and what it did is not known; \
             decide from the tree",
            k.map_or("unknown", |k| k.name())
        ),
    }
}

/// How long a gated process may wait for the intake before a human is asked instead.
const GATE_ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Fail closed: a process the gate stopped stays stopped until it is answered. One that the
/// intake has not answered in `GATE_ANSWER_WITHIN` (its record was lost, or the intake is
/// stuck) becomes a hold for its session.
pub async fn unanswered_gates(shared: Arc<Enforce>) {
    let handle = shared
        .kernel
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .gate_handle();
    let mut gate = match handle {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("no handle on the gate's maps, unanswered gates are not swept: {e:#}");
            return;
        }
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = shared.clone();
        gate = match tokio::task::spawn_blocking(move || {
            sweep_gates(&s, &mut gate);
            gate
        })
        .await
        {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("the gate sweeper failed: {e}");
                return;
            }
        };
    }
}

fn sweep_gates(shared: &Enforce, gate: &mut crate::kernel::gate::GateHandle) {
    let now = crate::sys::boot::boot_ns();
    for (tgid, g) in gate.waiting() {
        // A lost record will not come: no waiting for it.
        let lost = g.flags & watcher_common::GATED_LOST != 0;
        if !lost && now.saturating_sub(g.ts_ns) < GATE_ANSWER_WITHIN.as_nanos() as u64 {
            continue;
        }
        if !std::path::Path::new(&format!("/proc/{tgid}")).exists() {
            gate.answered(tgid);
            continue;
        }
        let trace = shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(g.session_id)
            .map(|s| s.trace_id.clone());
        let Some(trace) = trace else {
            tracing::error!(
                pid = tgid,
                "a gated process of an unknown session stays stopped"
            );
            continue;
        };
        if let Some(id) = shared.approvals.pending_for(&trace) {
            // A gated action that joined the hold is the hold's to answer once it is stored
            // there; anything else of the session is asked about after it.
            if shared.approvals.stops(&id, tgid) {
                gate.answered(tgid);
            }
            continue;
        }
        if !lost && !crate::sys::procfs::is_stopped(tgid) {
            // Let go meanwhile (the hold it joined was approved): nothing waits.
            gate.answered(tgid);
            continue;
        }
        let pids = shared.approvals.cgroups.pids(&trace);
        let pids = if pids.is_empty() { vec![tgid] } else { pids };
        freeze_session(shared, &trace, g.ts_ns, &|| pids.clone());
        if lost {
            let why = lost_why(g.kind, gate.take_lost(g.session_id));
            tracing::error!(trace_id = %trace, pid = tgid, "{why}");
            recover_unrecorded_hold(shared, &trace, &pids, LOST_RULE, &why);
            shared.counters.lost_holds.fetch_add(1, Ordering::Relaxed);
        } else {
            recover_unrecorded_hold(shared, &trace, &pids, UNANSWERED_RULE, UNANSWERED_WHY);
            shared
                .counters
                .gate_unanswered
                .fetch_add(1, Ordering::Relaxed);
        }
        gate.answered(tgid);
    }
}

/// A session frozen with no pending hold and no kill-switch on it was frozen by a daemon that
/// died before it stored the hold (the freeze comes first, so that the session stops at once).
/// It gets a hold now, so that it is listed and can be decided; left alone it would stay frozen
/// with nothing to approve. Approve thaws it and continues every process (the kernel may have
/// stopped any of them); deny kills it; the deadline applies as to any hold.
fn recover_unrecorded_hold(shared: &Enforce, trace: &str, pids: &[u32], rule: &str, why: &str) {
    let a = &shared.approvals;
    if a.pending_for(trace).is_some() {
        return;
    }
    if a.kill_switch_holds(trace) {
        return;
    }
    let Some(id) = a.claim(trace) else { return };
    let tree = crate::sys::procfs::proc_infos(pids);
    let root = &tree[0];
    let trigger = Event {
        seq: 0,
        ts: crate::model::event::Ts(std::time::SystemTime::now()),
        pid: root.pid,
        tid: root.pid,
        ppid: root.ppid,
        uid: 0,
        trace_id: trace.to_string(),
        comm: std::fs::read_to_string(format!("/proc/{}/comm", root.pid))
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cgroup_id: a.cgroups.id(trace).unwrap_or(0),
        detail: Detail::Exec {
            path: root.exe.clone(),
            argv: root.argv.clone(),
            argv_truncated: false,
            argv_missing: false,
            profile: None,
            fileless: false,
            loader: None,
            script: None,
        },
    };
    match open_own_hold(
        shared,
        OwnHold {
            id,
            kind: crate::model::hold::HoldKind::Session,
            rule,
            description: why.into(),
            tags: Vec::new(),
            in_kernel: false,
            trigger,
            tree,
            stopped: pids.to_vec(),
        },
    ) {
        Ok(h) => {
            tracing::warn!(hold = %h, trace_id = trace, "a session stopped for a question had no hold: hold made")
        }
        Err(e) => tracing::error!(
            trace_id = trace,
            "recovering the hold of a frozen session: {e}"
        ),
    }
}

/// A hold the enforcement opens itself, with no rule's match behind it: a session found
/// stopped with no stored hold, a protected open.
pub(super) struct OwnHold<'a> {
    pub id: String,
    pub kind: crate::model::hold::HoldKind,
    pub rule: &'a str,
    pub description: String,
    pub tags: Vec<String>,
    /// The kernel stopped the action itself.
    pub in_kernel: bool,
    pub trigger: Event,
    pub tree: Vec<crate::model::hold::ProcInfo>,
    pub stopped: Vec<u32>,
}

/// Publishes `h`'s finding, stores the hold, seals it in the audit log and announces it; the
/// hold's id.
pub(super) fn open_own_hold(
    shared: &Enforce,
    h: OwnHold<'_>,
) -> Result<String, crate::enforce::holds::HoldError> {
    let a = &shared.approvals;
    let version = shared.policy.load().policy.version.clone();
    let finding = crate::model::event::Finding {
        tags: h.tags,
        in_kernel: h.in_kernel,
        hold: Some(h.id.clone()),
        ..crate::model::event::Finding::new(
            crate::model::event::Detector::Rules,
            h.rule,
            h.description,
            crate::model::event::Severity::High,
            (Action::Hold, Mode::Enforce, Outcome::Held),
            &version,
            vec![h.trigger.clone()],
        )
    };
    let mut fev = h.trigger.clone();
    fev.detail = Detail::Finding(Box::new(finding));
    let published = shared.publish(fev);
    let hold = a.record(HoldDraft {
        id: h.id,
        kind: h.kind,
        finding: published.as_ref().clone(),
        also: Vec::new(),
        trigger: h.trigger,
        tree: h.tree,
        recent: Vec::new(),
        stopped: h.stopped,
        rule: h.rule.into(),
        policy_version: version,
        frozen_us: None,
        scope: None,
    })?;
    a.seal_hold(&hold);
    let id = hold.id.clone();
    announce(shared, hold);
    Ok(id)
}

/// Re-applies a kill-switch that was engaged when the daemon stopped.
pub fn restore_kill_switch(shared: &Enforce) {
    match shared.approvals.kill_switch() {
        Ok(k) if k.engaged => {
            if let Err(e) = crate::enforce::killswitch::apply(shared, &k) {
                tracing::error!("re-applying the kill-switch: {e:#}");
            }
        }
        Ok(_) => {
            // Taken-over maps hold what the earlier daemon left; the store says what holds.
            let mut k = shared.kernel.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = k.set_halt_all(0).and_then(|()| k.clear_halted_sessions()) {
                tracing::error!("clearing the kernel's kill-switch: {e:#}");
            }
        }
        Err(e) => tracing::error!("reading the kill-switch state: {e}"),
    }
}

/// Removes the cgroups of sessions that ended (nothing pending on them).
pub async fn sweep_cgroups(shared: Arc<Enforce>) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let a = shared.approvals.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for trace in a.cgroups.sessions() {
                if a.pending_for(&trace).is_none() {
                    a.cgroups.remove_if_empty(&trace);
                }
            }
            a.forget_sessions_but(&a.cgroups.sessions());
        })
        .await;
    }
}

/// POSTs a new hold to the configured webhook, on the announcer thread: a slow or dead
/// webhook (10 s timeout) delays only later announcements. A failure is logged: the hold
/// stands either way.
pub fn announce(shared: &Enforce, h: crate::model::hold::Hold) {
    let Some(url) = shared.config.holds.webhook.clone() else {
        return;
    };
    let body = match shared.config.holds.webhook_format {
        crate::config::WebhookFormat::Json => serde_json::json!({
            "event": "hold",
            "hold": h,
        }),
        crate::config::WebhookFormat::Slack => serde_json::json!({
            "text": format!(
                ":octagonal_sign: watcher held session `{}`: rule *{}* on `{}` (pid {}). Decide before {}: `watcher approve {}` or `watcher deny {}`",
                h.trace_id,
                h.rule,
                h.trigger,
                h.trigger.pid,
                h.deadline,
                h.id,
                h.id
            ),
        }),
    };
    // Off the caller's thread: a slow receiver never delays a hold or the intake.
    shared.announcer.submit(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        match agent.post(&url).send_json(body) {
            Ok(_) => tracing::info!(hold = %h.id, "webhook notified"),
            Err(e) => tracing::error!(hold = %h.id, url, "webhook: {e}"),
        }
    });
}
