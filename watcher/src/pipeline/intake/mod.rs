//! Intake: drains the kernel ring buffer, decodes records, keeps the process tree, resolves
//! paths and attaches the session's trace id, on one thread. When it falls behind, the kernel
//! ring holds the backlog and counts what it cannot reserve, per event kind (nothing is lost
//! silently).
mod changes;
mod clock;
pub mod decode;
mod detect;
mod dns;
mod gates;
mod read;
mod runs;
mod translate;
pub mod tree;

use clock::Clock;
pub use read::spawn;

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use watcher_common::{
    EventHeader, EventKind, EVENT_FLAG_FAST_PATH, EVENT_FLAG_GATED, EVENT_FLAG_SEND,
    EVENT_FLAG_SESSION_START, EVENT_FLAG_STOPPED, EVENT_FLAG_TRACED, OPEN_CALL_BY_HANDLE,
    OPEN_CALL_OPENAT, PTRACE_REQ_PIDFD_GETFD, PTRACE_REQ_VM_READ, PTRACE_REQ_VM_WRITE,
};

use self::{
    decode::{decode, Record, SockAddr},
    tree::{Proc, Tree},
};
use super::{ActivePolicy, Core, Seed, ENFORCED_GATE};
use crate::{
    kernel::gate::GateHandle,
    model::{
        baseline::ProfileMode,
        event::{
            errno_name, Action, Anomaly, Detail, Detector, Event, Finding, Mode, OpenFlags,
            Outcome, Severity, Ts,
        },
        hold::{Decision, HoldDraft, HoldKind},
        session::{new_trace_id, Session},
    },
    pipeline::baseline::Level,
    rules::{eval::Rule, gate, Match, SeqState, SessionView},
};

/// Decoded records waiting for the pipeline: a burst waits here, in user memory, rather than
/// filling the kernel's ring (which would then have to drop).
const QUEUE: usize = 65536;
/// Records processed between two looks at the kernel's ring.
const SLICE: usize = 4096;

/// How often (in kernel time) the boot-to-wall offset is measured again.
const CLOCK_REFRESH_NS: u64 = 10_000_000_000;

pub struct Intake {
    shared: Arc<Core>,
    seeds: std::sync::mpsc::Receiver<Seed>,
    tree: Tree,
    clock: Clock,
    seq: SeqState,
    /// Kernel time of the last sweep of expired sequence state.
    last_sweep_ns: u64,
    policy_version: String,
    /// The host's dynamic loaders: an exec of one runs the program it is given.
    loaders: runs::Loaders,
    matches: Vec<Match>,
    sampled: u32,
    /// The watcher's own files (tamper checks).
    own: Vec<std::path::PathBuf>,
    /// The gate's maps (None: not loaded, e.g. a tool that runs the pipeline alone).
    gate: Option<GateHandle>,
    /// Per session: the kinds gated for its sequences' next steps, and until when.
    session_gates: std::collections::HashMap<u64, (u32, u64)>,
    /// Per process: its last gate's stop and answer (kernel time), to tell a SIGCONT that
    /// released it before the answer.
    gate_stops: std::collections::HashMap<u32, (u64, u64)>,
    /// The names the sessions' DNS answers gave their addresses.
    names: dns::Names,
    /// The baseline detector's per-session state.
    baseline: crate::pipeline::baseline::Detector,
    /// Per session: the kinds gated because its baseline or scope is enforced, and the
    /// profiles' generation that was decided at.
    session_base: std::collections::HashMap<u64, (u64, u32)>,
}

/// Processes whose last gate is remembered at most (a tamper check needs only recent ones).
const GATE_STOPS_MAX: usize = 4096;

/// Kernel-to-intake latency is measured on one event in this many.
const LATENCY_SAMPLE: u32 = 16;

impl Intake {
    pub fn new(shared: Arc<Core>, seeds: std::sync::mpsc::Receiver<Seed>) -> Intake {
        let gate = match shared
            .kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .gate_handle()
        {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::error!(
                    "no handle on the gate's maps, gated processes wait for the sweeper: {e:#}"
                );
                None
            }
        };
        Intake {
            own: crate::pipeline::tamper::own_paths(&shared),
            shared,
            seeds,
            tree: Tree::default(),
            clock: Clock::new(),
            seq: SeqState::default(),
            last_sweep_ns: 0,
            policy_version: String::new(),
            loaders: runs::Loaders::of_host(),
            matches: Vec::new(),
            sampled: 0,
            gate,
            session_gates: Default::default(),
            gate_stops: Default::default(),
            names: Default::default(),
            baseline: Default::default(),
            session_base: Default::default(),
        }
    }

    /// Processes the launches and attaches registered since the last call. A process of a new
    /// session was registered before it could produce a record, so draining here, when a
    /// record names a process we do not know, never misses one.
    fn take_seeds(&mut self) {
        while let Ok(s) = self.seeds.try_recv() {
            let (exe, argv) = crate::sys::procfs::proc_exe_argv(s.pid);
            self.tree.insert(
                s.pid,
                Proc {
                    ppid: s.ppid,
                    session_id: s.session_id,
                    comm: String::new(),
                    argv,
                    exe,
                    execed: true,
                    cwd: s.cwd,
                    fds: Default::default(),
                },
            );
        }
    }

    pub fn process(&mut self, rec: Record) {
        let hdr = *rec.header();
        let kind = hdr.kind as usize;
        if let Some(c) = self.shared.counters.events.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let rec = match rec {
            // No task: the session is the socket's cgroup's.
            Record::Dns {
                message,
                truncated,
                peer,
                local_port,
                query,
                ..
            } => return self.dns(&hdr, &message, truncated, (peer, local_port, query)),
            r => r,
        };
        if self.tree.get(hdr.tgid).is_none() {
            self.take_seeds();
        }
        let ts = self.clock.wall(hdr.ts_ns);
        let ts_text = || humantime::format_rfc3339_nanos(ts).to_string();
        self.record_latency(ts);
        let comm = decode::cstr(&hdr.comm);
        let Some(detail) = self.apply(rec, &hdr, &comm) else {
            return;
        };
        if matches!(detail, Detail::IoUring { result, .. } if result >= 0) {
            // Before its verdict (a gated ring's process waits for it): what the ring submits
            // is seen from its first operation.
            let mut k = self.shared.kernel.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = k.watch_uring_ops() {
                tracing::error!("io_uring operations are not watched: {e:#}");
            }
        }
        let mut new_matcher_session = false;
        let mut session_ended = false;
        let (trace_id, profile, workdir, stray, scoped) = {
            let mut sessions = self
                .shared
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if sessions.get(hdr.session_id).is_none() {
                // A session the kernel started (agent matcher) and we have not seen yet.
                let profile = match &detail {
                    Detail::Exec { profile, .. } => profile.clone(),
                    _ => None,
                };
                let trace_id = new_trace_id();
                let cgroups = &self.shared.cgroups;
                self.shared.session_cgroup(&trace_id, &[hdr.tgid]);
                new_matcher_session = true;
                let s = Session {
                    cgroup_id: cgroups.id(&trace_id),
                    profile,
                    workdir: crate::sys::procfs::cwd(hdr.tgid),
                    ..Session::new(trace_id, hdr.session_id, "matcher", hdr.tgid, ts_text())
                };
                self.shared.audit_session_start(&s);
                if let Some(e) = self.shared.enforcement() {
                    e.remember_session(s.clone());
                }
                sessions.start(s);
            }
            let s = sessions.get_mut(hdr.session_id).expect("inserted above");
            s.events += 1;
            let trace = s.trace_id.clone();
            let profile = s.profile.clone();
            let workdir = s.workdir.clone();
            let scoped = s.scope.is_some();
            // A process of the session outside its cgroup would keep running through a hold.
            let stray = s.cgroup_id.is_some_and(|id| id != hdr.cgroup_id)
                && !matches!(detail, Detail::Exit { .. });
            match &detail {
                Detail::Fork { thread: false, .. } => s.processes += 1,
                Detail::Exit { .. } => {
                    sessions.process_exited(hdr.session_id, &ts_text());
                    session_ended = sessions
                        .get(hdr.session_id)
                        .is_none_or(|s| s.ended.is_some());
                }
                _ => {}
            }
            (trace, profile, workdir, stray, scoped)
        };
        if new_matcher_session {
            self.gather(&trace_id, hdr.session_id);
        } else if stray {
            self.move_into_session(&trace_id, hdr.tgid);
        }
        let ev = self.shared.publish(Event {
            seq: 0,
            ts: Ts(ts),
            pid: hdr.tgid,
            tid: hdr.pid,
            ppid: hdr.ppid,
            uid: hdr.uid,
            trace_id,
            comm,
            cgroup_id: hdr.cgroup_id,
            detail,
        });
        // A gated event that is tampering stays stopped: the kill-switch takes its session
        // (off this thread), and a SIGCONT first would let the next step run.
        let tampered = match crate::pipeline::tamper::check(&self.shared, &self.own, &ev, |pid| {
            match self.tree.get(pid) {
                Some(p) => p.session_id == hdr.session_id,
                None => crate::pipeline::tamper::session_of(&self.shared, pid)
                    .is_some_and(|t| t == ev.trace_id),
            }
        })
        .or_else(|| self.gate_tamper(&ev, hdr.ts_ns))
        {
            Some(why) => crate::pipeline::tamper::act(&self.shared, &ev, why),
            None => false,
        };
        let gated = hdr.flags & EVENT_FLAG_GATED != 0;
        if gated {
            crate::sys::fault::delay(crate::sys::fault::SLOW_GATE_ANSWER);
        }
        if !session_ended {
            self.base_gate(hdr.session_id, scoped, profile.as_deref());
        }
        let view = SessionView {
            profile: profile.as_deref(),
            workdir: workdir.as_deref(),
        };
        let in_kernel = hdr.flags & EVENT_FLAG_FAST_PATH != 0;
        let mut kept = self.detect(
            &ev,
            hdr.ts_ns,
            view,
            (in_kernel, gated),
            (hdr.session_id, scoped),
        );
        // A rename or link over a name, or a truncate, is also the write of that name to the
        // rules (and to scope and the baseline): the same rules hold it whichever call wrote.
        if let Some(write) = ev.detail.as_write() {
            let write = self.shared.publish(Event {
                seq: 0,
                detail: write,
                ..ev.as_ref().clone()
            });
            kept |= self.detect(
                &write,
                hdr.ts_ns,
                view,
                (in_kernel, gated),
                (hdr.session_id, scoped),
            );
        }
        if gated && hdr.flags & EVENT_FLAG_TRACED != 0 {
            self.traced_at_gate(&ev);
        } else if gated {
            // An action of a session that waits on a hold waits with it: approving releases
            // only what the approver was shown.
            let joined =
                !kept && !tampered && self.shared.enforcement().is_some_and(|e| e.join_hold(&ev));
            self.answer_gate(&hdr, kept || tampered || joined, joined);
        }
        // Sequence state that can no longer complete goes: at a process's exit, at a
        // session's end, and by age once a second.
        if matches!(ev.detail, Detail::Exit { .. }) {
            self.seq.process_exited(ev.pid);
            self.gate_stops.remove(&ev.pid);
            self.baseline.process_exited(hdr.session_id, ev.pid);
            if session_ended {
                self.shared.audit.record(
                    "session_end",
                    Some(&ev.trace_id),
                    Ok(serde_json::json!({ "session_id": hdr.session_id, "last_pid": ev.pid })),
                );
                self.seq.session_ended(&ev.trace_id);
                self.names.session_ended(hdr.session_id);
                if let Some(p) = &profile {
                    self.baseline.session_ended(
                        &self.shared.baselines,
                        hdr.session_id,
                        &ev.trace_id,
                        p,
                    );
                }
                self.shared.scopes.ended(hdr.session_id);
                self.session_base.remove(&hdr.session_id);
                let mut kernel = self.shared.kernel.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = kernel.session_ended(hdr.session_id) {
                    tracing::warn!("forgetting an ended session's kill-switch entry: {e:#}");
                }
            }
        }
        if session_ended {
            self.sweep_session_gates(hdr.ts_ns, Some(hdr.session_id));
        }
        if hdr.ts_ns.saturating_sub(self.last_sweep_ns) >= 1_000_000_000 {
            self.seq.sweep(hdr.ts_ns);
            self.sweep_session_gates(hdr.ts_ns, None);
            self.last_sweep_ns = hdr.ts_ns;
        }
    }

    /// A DNS answer to a socket of a session: an event, the names it gives the session's
    /// later connects, and the policy. Anything on port 53 that is no DNS answer is ignored.
    fn dns(
        &mut self,
        hdr: &EventHeader,
        message: &[u8],
        truncated: bool,
        (resolver, port, query): (std::net::IpAddr, u16, bool),
    ) {
        let session_of = |cgroup| {
            let sessions = self
                .shared
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            sessions.by_cgroup(cgroup).map(|s| s.session_id)
        };
        if query {
            if let (Some((id, name)), Some(session)) =
                (dns::query(message), session_of(hdr.cgroup_id))
            {
                self.names.asked(session, port, resolver, id, &name);
            }
            return;
        }
        let Some((mut detail, id, addrs)) = dns::parse(message, truncated) else {
            return;
        };
        let (trace_id, session_id, profile, workdir, scoped) = {
            let sessions = self
                .shared
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let Some(s) = sessions.by_cgroup(hdr.cgroup_id) else {
                return;
            };
            (
                s.trace_id.clone(),
                s.session_id,
                s.profile.clone(),
                s.workdir.clone(),
                s.scope.is_some(),
            )
        };
        // A name counts only from the answer to a query the session sent: anything else on
        // port 53 could be forged by the session itself to make `--allow-host` trust an
        // address.
        if let Detail::Dns {
            query, unsolicited, ..
        } = &mut detail
        {
            if self.names.answers(session_id, port, resolver, id, query) {
                *unsolicited = false;
                self.names.learn(session_id, query, &addrs);
            }
        }
        let ev = self.shared.publish(Event {
            seq: 0,
            ts: Ts(self.clock.wall(hdr.ts_ns)),
            pid: 0,
            tid: 0,
            ppid: 0,
            uid: 0,
            trace_id,
            comm: String::new(),
            cgroup_id: hdr.cgroup_id,
            detail,
        });
        let session = SessionView {
            profile: profile.as_deref(),
            workdir: workdir.as_deref(),
        };
        self.detect(
            &ev,
            hdr.ts_ns,
            session,
            (false, false),
            (session_id, scoped),
        );
    }

    /// Moves every process the kernel counts in a session the kernel started (agent matcher)
    /// into its new cgroup: children forked before intake saw the session are not in it yet.
    fn gather(&self, trace: &str, session_id: u64) {
        let pids = self
            .shared
            .kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pids_of_session(session_id);
        for pid in pids {
            self.move_into_session(trace, pid);
        }
    }

    /// Puts `pid` into the session's cgroup; it was outside (its record said so).
    fn move_into_session(&self, trace: &str, pid: u32) {
        if let Err(e) = self.shared.cgroups.add(trace, pid) {
            tracing::warn!(trace_id = %trace, pid, "cannot move into the session cgroup: {e}");
        }
    }

    /// Records one event in `LATENCY_SAMPLE`: a clock read and a lock per event would cost
    /// more than the percentiles are worth.
    fn record_latency(&mut self, ts: SystemTime) {
        self.sampled = self.sampled.wrapping_add(1);
        if !self.sampled.is_multiple_of(LATENCY_SAMPLE) {
            return;
        }
        if let Ok(d) = SystemTime::now().duration_since(ts) {
            if let Ok(mut h) = self.shared.latency.lock() {
                let _ = h.record(d.as_micros() as u64);
            }
        }
    }
}
