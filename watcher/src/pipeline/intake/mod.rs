//! Intake: drains the kernel ring buffer, decodes records, keeps the process tree, resolves
//! paths and attaches the session's trace id, on one thread. When it falls behind, the kernel
//! ring holds the backlog and counts what it cannot reserve, per event kind (nothing is lost
//! silently).
mod changes;
pub mod decode;
mod dns;
mod runs;
pub mod tree;

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

/// One event's findings so far: the holds they open, and whether one keeps the stopped process.
struct Conclusions<'a> {
    drafts: Vec<HoldDraft>,
    kept: bool,
    gated: bool,
    session_id: u64,
    profile: Option<&'a str>,
    scope: Option<&'a crate::model::scope::Scope>,
    policy_version: &'a str,
}

/// The rule a baseline or scope finding is decided by.
fn found_rule(id: &str, description: String, score: f32, action: Action) -> Rule {
    Rule {
        id: id.into(),
        description,
        severity: match score {
            s if s >= 0.9 => Severity::Critical,
            s if s >= 0.6 => Severity::High,
            s if s >= 0.3 => Severity::Medium,
            _ => Severity::Low,
        },
        tags: Vec::new(),
        action,
        mode: Mode::Enforce,
        cond: None,
        sequence: None,
        reverse: None,
        count: None,
        file: String::new(),
    }
}

/// The finding a rule made (or a baseline or scope detector, through its synthetic rule).
fn finding_of(
    rule: &Rule,
    outcome: Outcome,
    policy_version: &str,
    evidence: Vec<Event>,
    anomaly: Option<(Detector, f32, Anomaly)>,
) -> Finding {
    let (detector, score, anomaly) = match anomaly {
        Some((d, s, a)) => (d, Some(s), Some(a)),
        None => (Detector::Rules, None, None),
    };
    Finding {
        tags: rule.tags.clone(),
        score,
        anomaly,
        ..Finding::new(
            detector,
            &rule.id,
            &rule.description,
            rule.severity,
            (rule.action, rule.mode, outcome),
            policy_version,
            evidence,
        )
    }
}

fn scope_rule(entry: &str) -> &'static str {
    match entry {
        "workdir" => "scope-workdir",
        "allow_write" => "scope-allow-write",
        "allow_read" => "scope-allow-read",
        "allow_host" => "scope-allow-host",
        _ => "scope-allow-exec",
    }
}

/// Decoded records waiting for the pipeline: a burst waits here, in user memory, rather than
/// filling the kernel's ring (which would then have to drop).
const QUEUE: usize = 65536;
/// Records processed between two looks at the kernel's ring.
const SLICE: usize = 4096;

/// Starts the reader and the alert thread; they run until the process ends.
pub fn spawn(
    (events, alerts): (RingBuf<MapData>, RingBuf<MapData>),
    shared: Arc<Core>,
    seeds: std::sync::mpsc::Receiver<Seed>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    let boost = Arc::new(Boost::default());
    let reader = Reader {
        events,
        queue: std::collections::VecDeque::with_capacity(QUEUE),
        batch_wait: shared.config.daemon.batch_wait,
        intake: Intake::new(shared.clone(), seeds),
        shared: shared.clone(),
        boost: boost.clone(),
    };
    let intake = std::thread::Builder::new()
        .name("intake".into())
        .spawn(move || {
            // Holds and tamper actions start blocking work on the runtime.
            let _rt = runtime.enter();
            // SAFETY: gettid has no preconditions.
            reader
                .boost
                .tid
                .store(unsafe { libc::gettid() }, Ordering::Release);
            reader.run()
        })
        .map_err(|e| anyhow::anyhow!("starting the intake thread: {e}"))?;
    let alerts = Alerts {
        ring: alerts,
        shared,
        intake: intake.thread().clone(),
        boost,
    };
    std::thread::Builder::new()
        .name("intake-alerts".into())
        .spawn(move || alerts.run())
        .map_err(|e| anyhow::anyhow!("starting the alert thread: {e}"))?;
    Ok(())
}

/// Drains the record ring and runs each record through the pipeline, on a thread of its own.
/// While records keep coming it sleeps `batch_wait` between drains; when a drain finds nothing
/// it blocks until the kernel wakes it. One thread for both: handing records to another
/// thread cost a second wake-up per batch, more than the pipeline's own work at agent rates.
/// Everything slow (hold records, kill-switch) is started on the runtime, not done here.
struct Reader {
    events: RingBuf<MapData>,
    queue: std::collections::VecDeque<Record>,
    batch_wait: Duration,
    intake: Intake,
    shared: Arc<Core>,
    boost: Arc<Boost>,
}

impl Reader {
    fn run(mut self) {
        loop {
            if let Err(e) = wait_readable(&self.events) {
                tracing::error!("polling the ring buffer failed, intake stopped: {e}");
                return;
            }
            crate::sys::fault::pause(crate::sys::fault::PAUSE_INTAKE);
            // A gated event wakes the thread early (the alert thread unparks it).
            while self.drain() > 0 && !self.batch_wait.is_zero() {
                self.boost.lower();
                std::thread::park_timeout(self.batch_wait);
            }
            self.boost.lower();
        }
    }

    /// Processes every waiting record; returns how many.
    fn drain(&mut self) -> u32 {
        let mut n = 0u32;
        loop {
            self.fill();
            if self.queue.is_empty() {
                return n;
            }
            for _ in 0..SLICE {
                let Some(rec) = self.queue.pop_front() else {
                    break;
                };
                self.intake.process(rec);
                n += 1;
            }
        }
    }

    /// Moves records from the kernel's ring into the queue until the ring is empty or the
    /// queue full.
    fn fill(&mut self) {
        while self.queue.len() < QUEUE {
            let Some(item) = self.events.next() else {
                return;
            };
            let rec = match decode(&item) {
                Ok(r) => r,
                Err(e) => {
                    malformed(&self.shared, "record", &e);
                    continue;
                }
            };
            drop(item);
            let hdr = rec.header();
            if hdr.flags & EVENT_FLAG_STOPPED != 0 {
                // Normally frozen from the alert already (a second write is harmless); this
                // covers an alert the kernel could not write.
                self.shared.cgroups.freeze_id(hdr.cgroup_id, hdr.ts_ns);
            }
            self.queue.push_back(rec);
        }
    }
}

/// Freezes the session of a hold the kernel decided (the trigger is stopped already) as soon
/// as the kernel says so, on a thread that does nothing else and runs at real-time priority
/// when allowed: neither a busy pipeline nor a busy CPU delays it. It wakes only for holds.
struct Alerts {
    ring: RingBuf<MapData>,
    shared: Arc<Core>,
    /// Woken for a gated event, which waits stopped until the intake has decided it.
    intake: std::thread::Thread,
    boost: Arc<Boost>,
}

impl Alerts {
    fn run(mut self) {
        realtime_priority();
        loop {
            if let Err(e) = wait_readable(&self.ring) {
                tracing::error!("polling the alert ring failed, kernel holds freeze late: {e}");
                return;
            }
            while let Some(item) = self.ring.next() {
                match decode::alert(&item) {
                    Ok(a) if a.flags & EVENT_FLAG_STOPPED != 0 => {
                        self.shared.cgroups.freeze_id(a.cgroup_id, a.ts_ns);
                    }
                    Ok(a) if a.flags & EVENT_FLAG_GATED != 0 => {
                        self.boost.raise();
                        self.intake.unpark();
                    }
                    Ok(_) => {}
                    Err(e) => malformed(&self.shared, "alert", &e),
                }
            }
        }
    }
}

/// SCHED_FIFO at the lowest real-time priority for the calling thread (and the threads it
/// starts). Only for threads that sleep until the kernel has something urgent.
fn realtime_priority() {
    if let Err(e) = set_realtime(0, true) {
        tracing::debug!("no real-time priority for the alert thread: {e}");
    }
}

/// Moves thread `tid` (0: the calling thread) to SCHED_FIFO at the lowest real-time priority,
/// or back to the normal scheduler.
fn set_realtime(tid: i32, on: bool) -> std::io::Result<()> {
    let (policy, prio) = if on {
        (libc::SCHED_FIFO, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: plain syscall on one of this process's threads.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The intake thread's id and whether a gated event has it at real-time priority: while a
/// process waits stopped at the gate, the intake runs ahead of the busy CPU's other work,
/// and goes back to the normal scheduler once the ring is drained.
#[derive(Default)]
struct Boost {
    tid: std::sync::atomic::AtomicI32,
    on: std::sync::atomic::AtomicBool,
}

impl Boost {
    /// From the alert thread.
    fn raise(&self) {
        let tid = self.tid.load(Ordering::Acquire);
        if tid != 0 && !self.on.swap(true, Ordering::AcqRel) && set_realtime(tid, true).is_err() {
            self.on.store(false, Ordering::Release);
        }
    }

    /// From the intake thread, when it has nothing left to do.
    fn lower(&self) {
        if self.on.swap(false, Ordering::AcqRel) {
            let _ = set_realtime(0, false);
        }
    }
}

/// Counts and logs a ring entry that could not be decoded.
fn malformed(shared: &Core, what: &str, e: &decode::DecodeError) {
    shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("malformed {what}: {e}");
}

/// Blocks until `ring` has data.
fn wait_readable(ring: &RingBuf<MapData>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut fd, 1, -1) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Converts kernel CLOCK_BOOTTIME stamps to wall-clock time.
struct Clock {
    offset_ns: i128,
    /// The boot-time stamp of the event at the last measurement.
    refreshed_boot_ns: u64,
}

/// How often (in kernel time) the boot-to-wall offset is measured again.
const CLOCK_REFRESH_NS: u64 = 10_000_000_000;

impl Clock {
    fn new() -> Clock {
        Clock {
            offset_ns: Self::measure(),
            refreshed_boot_ns: 0,
        }
    }

    fn measure() -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let boot = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        wall - boot
    }

    fn wall(&mut self, boot_ns: u64) -> SystemTime {
        // Follow clock steps (NTP) without a syscall per event: the events' own kernel time
        // says when the last measurement is old.
        if boot_ns.abs_diff(self.refreshed_boot_ns) > CLOCK_REFRESH_NS {
            self.offset_ns = Self::measure();
            self.refreshed_boot_ns = boot_ns;
        }
        let ns = (boot_ns as i128 + self.offset_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

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

    /// Runs the detectors on the event (the rules, the session's scope, its profile's
    /// baseline) and publishes a finding for each thing they find. `stops`: (a fast path acted
    /// on the event, the gate stopped it). Returns whether a new hold keeps the stopped process
    /// (it continues when the hold is approved).
    fn detect(
        &mut self,
        ev: &Arc<Event>,
        ts_ns: u64,
        session: SessionView<'_>,
        (in_kernel, gated): (bool, bool),
        (session_id, scoped): (u64, bool),
    ) -> bool {
        let mut kept = false;
        let active = self.shared.policy.load();
        let policy = &active.policy;
        if policy.version != self.policy_version {
            // Partial sequences belong to the policy that started them.
            self.seq.clear();
            self.policy_version.clone_from(&policy.version);
        }
        let mut matches = std::mem::take(&mut self.matches);
        policy.evaluate(ev, ts_ns, session, &self.tree, &mut self.seq, &mut matches);
        if !self.seq.advanced.is_empty() {
            self.gate_next_steps(&active, session_id, ts_ns);
        }
        let scope = scoped.then(|| self.shared.scopes.get(session_id)).flatten();
        let mut out = Conclusions {
            drafts: Vec::new(),
            kept: false,
            gated,
            session_id,
            profile: session.profile,
            scope: scope.as_ref().map(|s| &s.scope),
            policy_version: &policy.version,
        };
        for m in matches.drain(..) {
            let rule = &policy.rules[m.rule];
            // The fast-path flag belongs to this event; only a rule the kernel holds can own it.
            let kernel_rule = in_kernel && active.kernel.has_rule(&rule.id);
            let evidence = m.evidence.iter().map(|e| e.as_ref().clone()).collect();
            self.conclude(&mut out, ev, rule, kernel_rule, evidence, None, ts_ns);
        }
        self.matches = matches;
        if let Some(b) = scope.as_ref().and_then(|s| s.check(ev)) {
            let rule = found_rule(
                scope_rule(b.entry),
                format!(
                    "outside the task scope: {} is not allowed by {} [{}]",
                    b.value,
                    b.entry,
                    b.allowed.join(", ")
                ),
                1.0,
                Action::Hold,
            );
            let anomaly = Anomaly {
                facet: b.entry.into(),
                value: b.value.clone(),
                instead: b.allowed.clone(),
                sessions: None,
                widen: Some(format!("{} {}", b.widen.0, b.widen.1)),
            };
            let f = (Detector::Scope, 1.0, anomaly);
            self.conclude(
                &mut out,
                ev,
                &rule,
                false,
                vec![ev.as_ref().clone()],
                Some(f),
                ts_ns,
            );
        }
        if let Some(profile) = session.profile {
            let cx = crate::pipeline::baseline::Ctx {
                session_id,
                trace_id: &ev.trace_id,
                profile,
                workdir: session.workdir,
                tree: &self.tree,
                ts_ns,
            };
            let found = self.baseline.observe(&self.shared.baselines, ev, &cx);
            for f in found {
                let action = match f.level {
                    Level::Hold => Action::Hold,
                    Level::Alert => Action::Alert,
                };
                let rule = found_rule(f.rule, f.description, f.score, action);
                let mut evidence = f.before;
                evidence.push(ev.as_ref().clone());
                let shadow = f.mode == ProfileMode::Shadow;
                let d = (Detector::Baseline, f.score, f.anomaly);
                if shadow {
                    self.shadow(ev, &rule, evidence, d, &policy.version);
                } else {
                    self.conclude(&mut out, ev, &rule, false, evidence, Some(d), ts_ns);
                }
            }
        }
        kept |= out.kept;
        if let Some(e) = self.shared.enforcement() {
            for draft in out.drafts {
                e.record_hold(draft);
            }
        }
        kept
    }

    /// Decides one finding, publishes it, and adds the hold it opens (or joins) to `out`.
    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &self,
        out: &mut Conclusions<'_>,
        ev: &Arc<Event>,
        rule: &Rule,
        kernel_rule: bool,
        evidence: Vec<Event>,
        anomaly: Option<(Detector, f32, Anomaly)>,
        ts_ns: u64,
    ) {
        let tree = &self.tree;
        let session_id = out.session_id;
        let d = match self.shared.enforcement() {
            Some(e) => e.decide(rule, ev, ts_ns, kernel_rule, out.profile, &|| {
                tree.session_pids(session_id)
            }),
            // Not wired (a tool that runs the pipeline alone): recorded, not enforced.
            None => Decision {
                outcome: Outcome::NotEnforced,
                hold: None,
                new_hold: false,
            },
        };
        let mut finding = finding_of(rule, d.outcome, out.policy_version, evidence, anomaly);
        finding.in_kernel = kernel_rule;
        finding.hold = d.hold.clone();
        let detector = finding.detector;
        tracing::info!(rule = %finding.rule, detector = detector.as_str(), trace_id = %ev.trace_id, pid = ev.pid, outcome = ?d.outcome, "finding");
        let published = self.publish_finding(ev, finding);
        match (d.new_hold, d.hold) {
            (true, Some(id)) => {
                // The kernel stopped the trigger at the hook (SIGSTOP): it needs SIGCONT later.
                let stopped =
                    if out.gated || (kernel_rule && !matches!(ev.detail, Detail::Connect { .. })) {
                        out.kept = true;
                        vec![ev.pid]
                    } else {
                        Vec::new()
                    };
                out.drafts.push(HoldDraft {
                    id,
                    kind: HoldKind::Session,
                    finding: published.as_ref().clone(),
                    also: Vec::new(),
                    trigger: ev.as_ref().clone(),
                    tree: self.tree.session_procs(session_id),
                    recent: Vec::new(),
                    stopped,
                    rule: rule.id.clone(),
                    policy_version: out.policy_version.to_string(),
                    frozen_us: None,
                    scope: out.scope.cloned(),
                });
            }
            // Another finding of the same action: the same question, with its evidence.
            (false, Some(id)) => {
                if let Some(draft) = out.drafts.iter_mut().find(|h| h.id == id) {
                    draft.also.push(published.as_ref().clone());
                }
            }
            _ => {}
        }
    }

    /// A shadow-mode baseline finding: what enforce would have done, recorded; nothing stops.
    fn shadow(
        &self,
        ev: &Arc<Event>,
        rule: &Rule,
        evidence: Vec<Event>,
        anomaly: (Detector, f32, Anomaly),
        policy_version: &str,
    ) {
        let outcome = match rule.action {
            Action::Alert => Outcome::Alerted,
            _ => Outcome::WouldHold,
        };
        let mut finding = finding_of(rule, outcome, policy_version, evidence, Some(anomaly));
        finding.mode = Mode::Monitor;
        tracing::info!(rule = %finding.rule, trace_id = %ev.trace_id, pid = ev.pid, outcome = ?finding.outcome, "shadow finding");
        self.publish_finding(ev, finding);
    }

    fn publish_finding(&self, ev: &Event, finding: Finding) -> Arc<Event> {
        self.shared.publish(Event {
            seq: 0,
            ts: ev.ts,
            pid: ev.pid,
            tid: ev.tid,
            ppid: ev.ppid,
            uid: ev.uid,
            trace_id: ev.trace_id.clone(),
            comm: ev.comm.clone(),
            cgroup_id: ev.cgroup_id,
            detail: Detail::Finding(Box::new(finding)),
        })
    }

    /// Gates a session whose baseline or scope is enforced (see `ENFORCED_GATE`); decided
    /// again when a profile changes (`watcher baseline mode`).
    fn base_gate(&mut self, session_id: u64, scoped: bool, profile: Option<&str>) {
        let generation = self.shared.baselines.generation();
        if self
            .session_base
            .get(&session_id)
            .is_some_and(|(g, _)| *g == generation)
        {
            return;
        }
        let enforced =
            profile.is_some_and(|p| self.shared.baselines.get(p).mode == ProfileMode::Enforce);
        let bits = if self.shared.config.holds.enabled && (enforced || scoped) {
            ENFORCED_GATE
        } else {
            0
        };
        let old = self
            .session_base
            .insert(session_id, (generation, bits))
            .map_or(0, |(_, b)| b);
        if old != bits {
            let seq = self.session_gates.get(&session_id).map_or(0, |e| e.0);
            self.gate_write(session_id, seq);
        }
    }

    /// The sequences this event started or moved on whose next step the gate cannot name:
    /// the session's events of that step's kind are gated until the sequence's window ends.
    /// Written before the event's own gate is answered, so the next step cannot slip past.
    fn gate_next_steps(&mut self, active: &ActivePolicy, session_id: u64, ts_ns: u64) {
        let mut kinds = 0;
        let mut until = 0;
        for (rule, reversed, next) in self.seq.advanced.drain(..) {
            if !active.gate.dynamic.get(rule).copied().unwrap_or(false) {
                continue;
            }
            let r = &active.policy.rules[rule];
            kinds |= gate::step_kinds(r, reversed, next);
            let within = match (&r.sequence, &r.count) {
                (Some(s), _) => s.within_ns,
                (_, Some(c)) => c.within_ns,
                _ => 0,
            };
            until = until.max(ts_ns.saturating_add(within));
        }
        if kinds == 0 {
            return;
        }
        let e = self.session_gates.entry(session_id).or_insert((0, 0));
        let changed = e.0 | kinds != e.0;
        e.0 |= kinds;
        e.1 = e.1.max(until);
        if changed {
            let k = e.0;
            self.gate_write(session_id, k);
        }
    }

    /// Writes the session's gated kinds: its sequences' next steps (`kinds`) and what its
    /// enforced baseline or scope gates.
    fn gate_write(&mut self, session_id: u64, kinds: u32) {
        let base = self.session_base.get(&session_id).map_or(0, |(_, b)| *b);
        // A sequence's next step is any open: the base's intents do not narrow it.
        let any_open = kinds & watcher_common::GATE_OPEN != 0;
        let mut kinds = kinds | base;
        if any_open {
            kinds &= (1 << watcher_common::SESSION_INTENT_SHIFT) - 1;
        }
        if let Some(g) = self.gate.as_mut() {
            if let Err(e) = g.set_session(session_id, kinds) {
                tracing::error!("gating a session's next steps: {e:#}");
            }
        }
    }

    /// Drops the per-session gates whose sequences can no longer complete.
    fn sweep_session_gates(&mut self, now_ns: u64, ended: Option<u64>) {
        let done: Vec<u64> = self
            .session_gates
            .iter()
            .filter(|(id, (_, until))| *until < now_ns || Some(**id) == ended)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.session_gates.remove(&id);
            self.gate_write(id, 0);
        }
    }

    /// A watched process that sends SIGCONT to a process while the gate holds it lets it use
    /// what it did before the policy decided: tampering, as SIGCONT to a held session is. The
    /// gated record comes first in the ring, so its stop and answer are known here.
    fn gate_tamper(&self, ev: &Event, ts_ns: u64) -> Option<String> {
        let Detail::Signal {
            target_pid, signal, ..
        } = &ev.detail
        else {
            return None;
        };
        if *signal != libc::SIGCONT || *target_pid == ev.pid {
            return None;
        }
        let (stop, answer) = *self.gate_stops.get(target_pid)?;
        (stop <= ts_ns && ts_ns < answer).then(|| {
            format!("SIGCONT to process {target_pid} while the gate held it for a decision")
        })
    }

    /// The gate killed a traced process where it would have stopped it (see
    /// `EVENT_FLAG_TRACED`): nothing waits for an answer, and the kill is recorded.
    fn traced_at_gate(&self, ev: &Event) {
        let rule = found_rule(
            "traced-at-gate",
            "A traced process reached the gate: its tracer could have resumed it before the \
             answer, so the kernel killed it"
                .into(),
            0.6,
            Action::Kill,
        );
        let finding = finding_of(
            &rule,
            Outcome::KilledInKernel,
            &self.policy_version,
            vec![ev.clone()],
            None,
        );
        tracing::warn!(trace_id = %ev.trace_id, pid = ev.pid, "a traced process reached the gate and was killed");
        self.publish_finding(
            ev,
            Finding {
                in_kernel: true,
                ..finding
            },
        );
    }

    /// A rename, link or truncate that wrote a name the policy names by another spelling (a
    /// symlinked directory, `..` after one, a symlink to the file for a truncate) is matched
    /// under the policy's name, as a gated open is. `written`: the name as the process wrote it.
    fn named_by_identity(
        &self,
        hdr: &EventHeader,
        mut detail: Option<Detail>,
        written: Option<String>,
        follow: bool,
    ) -> Option<Detail> {
        let (Some(d), Some(written)) = (detail.as_mut(), written) else {
            return detail;
        };
        let Some(name) = d.written_name_mut() else {
            return detail;
        };
        // The caller is stopped at the gate, or may have exited: its session's other
        // processes name the same files.
        let pids = std::iter::once(hdr.tgid).chain(self.tree.session_pids(hdr.session_id));
        if let Some(policy) = self
            .shared
            .policy_name_written(pids, &written, name, follow)
        {
            *name = policy;
        }
        detail
    }

    /// The whole policy has run on a gated event: the process continues unless a new hold
    /// keeps it (approve continues it, deny kills it). A kill or a freeze has already been
    /// started; SIGCONT does not release a frozen cgroup. A process that `joined` a pending
    /// hold keeps its entry in the gate's map until the hold store lists it (the gate sweeper
    /// removes it then): should the join not be stored, or the daemon die first, it is asked
    /// about again instead of staying stopped with nothing to decide.
    fn answer_gate(&mut self, hdr: &EventHeader, kept: bool, joined: bool) {
        crate::sys::fault::point(crate::sys::fault::BEFORE_GATE_ANSWER);
        if !kept {
            // SAFETY: plain kill(2) of the process the gate stopped.
            unsafe { libc::kill(hdr.tgid as i32, libc::SIGCONT) };
        }
        if let Some(g) = self.gate.as_mut().filter(|_| !joined) {
            g.answered(hdr.tgid);
        }
        self.shared.counters.gated.fetch_add(1, Ordering::Relaxed);
        let now = crate::sys::cgroup::boot_ns();
        if self.gate_stops.len() >= GATE_STOPS_MAX {
            self.gate_stops.clear();
        }
        self.gate_stops.insert(hdr.tgid, (hdr.ts_ns, now));
        if let Ok(mut h) = self.shared.gate_latency.lock() {
            let _ = h.record(now.saturating_sub(hdr.ts_ns) / 1000);
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

    /// Updates the tree and builds the user-facing detail (None for internal records).
    /// Takes the record by value so its strings move into the event instead of being copied.
    fn apply(&mut self, rec: Record, hdr: &EventHeader, comm: &str) -> Option<Detail> {
        let pid = hdr.tgid;
        match rec {
            Record::Exec {
                filename,
                argv,
                truncated,
                argv_missing,
                profile,
                ..
            } => {
                let fileless = crate::sys::procfs::runs_fileless(pid, &filename);
                self.tree.entry(pid, hdr.ppid, hdr.session_id);
                let (path, argv, loader) = match self
                    .loaders
                    .is_loader(pid, &filename)
                    .then(|| runs::loader_program(&argv))
                    .flatten()
                {
                    Some((prog, rest)) => (
                        self.tree.resolve(pid, tree::AT_FDCWD, prog).0,
                        rest,
                        Some(filename),
                    ),
                    None => (filename, argv, None),
                };
                let script = runs::script(
                    &path,
                    &argv,
                    || self.tree.fd_path(pid, 0),
                    |f| self.tree.resolve(pid, tree::AT_FDCWD, f).0,
                );
                let p = self.tree.entry(pid, hdr.ppid, hdr.session_id);
                p.exe = Some(path.clone());
                p.execed = true;
                p.argv = argv.clone();
                p.comm = comm.to_string();
                let profile = (hdr.flags & EVENT_FLAG_SESSION_START != 0 || profile != 0)
                    .then(|| {
                        self.shared
                            .config
                            .agents
                            .get((profile as usize).wrapping_sub(1))
                            .map(|a| a.profile.clone())
                    })
                    .flatten();
                Some(Detail::Exec {
                    path,
                    argv,
                    argv_truncated: truncated,
                    argv_missing,
                    profile,
                    fileless,
                    loader,
                    script,
                })
            }
            Record::Fork {
                child, is_thread, ..
            } => {
                if !is_thread {
                    self.tree.entry(pid, hdr.ppid, hdr.session_id);
                    self.tree.fork(pid, child);
                }
                Some(Detail::Fork {
                    child_pid: child,
                    thread: is_thread,
                })
            }
            Record::Exit {
                exit_code,
                fenced_call,
                ..
            } => {
                self.tree.exit(pid);
                let sig = (exit_code & 0x7f) as i32;
                let fenced =
                    (fenced_call != 0).then(|| crate::sys::fence::call_name(fenced_call).into());
                Some(if sig == 0 {
                    Detail::Exit {
                        exit_code: Some(((exit_code >> 8) & 0xff) as i32),
                        signal: None,
                        fenced,
                    }
                } else {
                    Detail::Exit {
                        exit_code: None,
                        signal: Some(sig),
                        fenced,
                    }
                })
            }
            Record::Open {
                call,
                dfd,
                path,
                flags,
                mode,
                result,
                truncated,
                ..
            } => {
                self.tree.entry(pid, hdr.ppid, hdr.session_id);
                // open_by_handle_at names no path: the file is the descriptor it returned.
                let (abs, resolved) = if call == OPEN_CALL_BY_HANDLE {
                    match (result >= 0).then(|| self.tree.fd_path(pid, dfd)).flatten() {
                        Some(p) => (p, true),
                        None => (format!("fd:{dfd}"), false),
                    }
                } else {
                    self.tree.resolve(pid, dfd, path)
                };
                if result >= 0 && resolved {
                    self.tree.opened(pid, result, &abs);
                }
                // A gated open is matched as the file it opened, by the policy's name for it.
                let renamed = (hdr.flags & EVENT_FLAG_GATED != 0 && result >= 0)
                    .then(|| self.shared.policy_name(pid, result, &abs))
                    .flatten();
                let (path, opened_as) = match renamed {
                    Some(name) => (name, Some(abs)),
                    None => (abs, None),
                };
                Some(Detail::Open {
                    // Absent for openat, the common case (every event stays as it was).
                    syscall: (call != OPEN_CALL_OPENAT)
                        .then(|| EventKind::Open.calls().get(call as usize))
                        .flatten()
                        .map(|n| (*n).into()),
                    path,
                    flags: OpenFlags(flags),
                    mode,
                    result,
                    error: errno_name(result),
                    resolved,
                    path_truncated: truncated,
                    opened_as,
                })
            }
            Record::Connect { addr, result, .. } => {
                let host = match &addr {
                    SockAddr::Inet { addr, .. } => {
                        self.names.host(hdr.session_id, *addr).map(String::from)
                    }
                    _ => None,
                };
                let (family, addr, port, path) = match addr {
                    SockAddr::Inet { addr, port } => (
                        if addr.is_ipv4() { "inet" } else { "inet6" },
                        Some(addr.to_string()),
                        Some(port),
                        None,
                    ),
                    SockAddr::Unix { path } => ("unix", None, None, Some(path)),
                    SockAddr::Other { .. } => ("other", None, None, None),
                };
                Some(Detail::Connect {
                    syscall: (hdr.flags & EVENT_FLAG_SEND != 0).then_some("sendmsg".into()),
                    family: family.into(),
                    addr,
                    host,
                    port,
                    path,
                    result,
                    error: errno_name(result),
                })
            }
            Record::Signal {
                target,
                sig,
                result,
                ..
            } => Some(Detail::Signal {
                target_pid: target,
                signal: sig,
                result,
            }),
            Record::Ptrace {
                target,
                request,
                result,
                ..
            } => {
                let (syscall, target_pid, request) = match request {
                    PTRACE_REQ_VM_WRITE => (Some("process_vm_writev"), target, 0),
                    PTRACE_REQ_VM_READ => (Some("process_vm_readv"), target, 0),
                    // The target is whoever the pidfd names (0 when it cannot be read: no
                    // session, so outside the caller's).
                    PTRACE_REQ_PIDFD_GETFD => (
                        Some("pidfd_getfd"),
                        crate::sys::procfs::pidfd_target(pid, target as i32).unwrap_or(0),
                        0,
                    ),
                    r => (None, target, r),
                };
                Some(Detail::Ptrace {
                    syscall: syscall.map(Into::into),
                    target_pid,
                    request,
                    result,
                })
            }
            Record::Chdir { fd, path, .. } => {
                self.tree.entry(pid, hdr.ppid, hdr.session_id);
                self.tree.chdir(pid, fd, &path);
                None
            }
            Record::Path {
                kind,
                call,
                dfd,
                path,
                args,
                result,
                ..
            } => {
                // truncate(2) by name follows a final symlink: the file is found by identity.
                let written = (kind == EventKind::Truncate && result == 0)
                    .then(|| self.tree.as_written(pid, dfd, &path))
                    .flatten();
                let d = changes::path_detail(
                    &mut self.tree,
                    hdr,
                    (kind, call, dfd),
                    path,
                    args,
                    result,
                );
                self.named_by_identity(hdr, d, written, true)
            }
            Record::Pair {
                kind,
                call,
                dfd,
                path,
                new_dfd,
                new_path,
                fstype,
                flags,
                result,
                ..
            } => {
                // The name written, as the process wrote it: its directory by identity.
                let written = match kind {
                    EventKind::Rename if result == 0 => {
                        self.tree.as_written(pid, new_dfd, &new_path)
                    }
                    EventKind::Link if result == 0 => self.tree.as_written(pid, dfd, &path),
                    _ => None,
                };
                let d = changes::pair_detail(
                    &mut self.tree,
                    hdr,
                    changes::Pair {
                        kind,
                        call,
                        dfd,
                        path,
                        new_dfd,
                        new_path,
                        fstype,
                        flags,
                        result,
                    },
                );
                self.named_by_identity(hdr, d, written, false)
            }
            // Handled before the session lookup (`process`).
            Record::Dns { .. } => None,
            Record::Dup { old_fd, new_fd, .. } => {
                self.tree.entry(pid, hdr.ppid, hdr.session_id);
                self.tree.dup(pid, old_fd, new_fd);
                None
            }
            Record::Setid {
                call,
                args,
                old,
                new,
                result,
                ..
            } => Some(changes::setid_detail(call, args, (old, new), result)),
        }
    }
}
