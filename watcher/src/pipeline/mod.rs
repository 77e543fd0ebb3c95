//! The pipeline: intake decodes kernel records into events, the detectors (rules, tamper) look
//! at each, and the bus hands every event to whoever follows it. Enforcement sits above and is
//! reached only through the `Enforcement` hooks the daemon installs, so nothing here imports
//! it.
pub mod audit;
pub mod baseline;
pub mod identity;
pub mod intake;
pub mod reload;
pub mod scope;
pub mod tamper;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;
use tokio::sync::broadcast;
use watcher_common::EVENT_KINDS;

use crate::{
    config::Config,
    kernel::{policy::KernelPolicy, Kernel},
    model::{
        event::{Detail, Event},
        hold::{Decision, HaltMode, HoldDraft},
        session::Sessions,
    },
    rules::{eval::Rule, gate::GatePlan, Policy},
    sys::cgroup::Cgroups,
};

/// A process registered by `launch` or `attach`, handed to intake before it can run.
#[derive(Debug)]
pub struct Seed {
    pub pid: u32,
    pub ppid: u32,
    pub session_id: u64,
    pub cwd: Option<PathBuf>,
}

#[derive(Default)]
pub struct Counters {
    /// Records decoded, per `EventKind`.
    pub events: [AtomicU64; EVENT_KINDS as usize],
    /// Records that could not be decoded.
    pub malformed: AtomicU64,
    /// Events a slow `watcher events --follow` client missed.
    pub client_lag: AtomicU64,
    /// Events published (the last sequence number).
    pub published: AtomicU64,
    pub findings: AtomicU64,
    pub holds: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
    /// Files with a fanotify mark (protected paths).
    pub protected_files: AtomicU64,
    /// Existing persistence files with a fanotify mark, whose opens for writing wait.
    pub guarded_files: AtomicU64,
    /// Failed accepts on the control socket and the API (e.g. EMFILE); each is logged and the
    /// listener goes on.
    pub accept_errors: AtomicU64,
    /// Events the gate stopped and the intake answered.
    pub gated: AtomicU64,
    /// Gated processes no answer came for in time, handed to a human as a hold.
    pub gate_unanswered: AtomicU64,
    /// Sessions held for a lost record or an unwatchable new process (`GATED_LOST`).
    pub lost_holds: AtomicU64,
    /// Findings by (detector, rule, severity, action): bounded by the policy's rules.
    pub findings_by: Mutex<std::collections::BTreeMap<[String; 4], u64>>,
    /// Decisions by outcome.
    pub decisions_by: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Counters {
    /// Findings are few (a rule matched), so a map lookup with owned keys costs nothing that
    /// shows.
    fn count_finding(&self, f: &crate::model::event::Finding) {
        let key = [
            f.detector.as_str().to_string(),
            f.rule.clone(),
            audit::name(&f.severity),
            audit::name(&f.action),
        ];
        *self
            .findings_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
        *self
            .decisions_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(audit::name(&f.outcome))
            .or_default() += 1;
    }
}

/// The policy in force, with the parts compiled into the kernel: what it decides alone (the
/// fast paths) and what it stops for user space to decide (the gate).
pub struct ActivePolicy {
    pub policy: Policy,
    pub kernel: KernelPolicy,
    pub gate: GatePlan,
}

impl ActivePolicy {
    /// `holds`: whether the daemon runs holds.
    pub fn new(policy: Policy, holds: bool) -> ActivePolicy {
        let kernel = KernelPolicy::of(&policy, holds);
        let gate = GatePlan::of(&policy, &kernel, holds);
        for (rule, kind) in &gate.unanchored {
            tracing::warn!(
                rule,
                kind,
                "the rule names nothing the kernel can test: every watched {kind} is gated"
            );
        }
        ActivePolicy {
            policy,
            kernel,
            gate,
        }
    }

    /// Writes the kernel's parts into its maps.
    pub fn apply(&self, kernel: &mut Kernel) -> anyhow::Result<()> {
        kernel.set_fast_paths(&self.kernel)?;
        kernel.set_gate(&self.gate.set)
    }
}

/// What a session whose baseline or scope is enforced has gated: every exec and connect, every
/// open for writing, every `UNLINK_SAMPLE`th delete and the rare kinds.
pub const ENFORCED_GATE: u32 = watcher_common::GATE_EXEC
    | watcher_common::GATE_CONNECT
    | watcher_common::GATE_OPEN
    | ((watcher_common::INTENT_WRITE
        | watcher_common::INTENT_CREATE
        | watcher_common::INTENT_TRUNCATE)
        << watcher_common::SESSION_INTENT_SHIFT)
    | watcher_common::GATE_UNLINK_SAMPLE
    | watcher_common::GATE_CHMOD_SETID
    | watcher_common::GATE_CHOWN
    | watcher_common::GATE_SETID
    | watcher_common::GATE_MOUNT
    | watcher_common::GATE_BPF
    | watcher_common::GATE_MODULE;

/// What the pipeline asks of enforcement, which the daemon wires in at start-up.
pub trait Enforcement: Send + Sync {
    /// Decides and acts on a rule's match. `kernel_rule`: the kernel's fast path matched this
    /// event for this rule (it has already killed, stopped or refused).
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        rule: &Rule,
        ev: &Event,
        event_boot_ns: u64,
        kernel_rule: bool,
        profile: Option<&str>,
        session_pids: &dyn Fn() -> Vec<u32>,
    ) -> Decision;
    /// Stores a hold `decide` opened (off the pipeline's thread).
    fn record_hold(&self, draft: HoldDraft);
    /// Stops a session at once (the kill-switch for it): tampering.
    fn halt_session(&self, trace: &str, mode: HaltMode, by: &str);
    /// The session waits on a hold or is frozen.
    fn is_held(&self, trace: &str) -> bool;
    /// A gated action of a session that waits on a hold: it stays stopped and joins that
    /// hold (approve continues it, deny stops it); false when no hold is pending.
    fn join_hold(&self, ev: &Event) -> bool;
    /// Keeps a session the kernel started (an agent matcher's) for a restarted daemon to adopt
    /// as it was (off the pipeline's thread).
    fn remember_session(&self, s: crate::model::session::Session);
}

/// What every pipeline stage shares: the configuration, the sessions, the kernel, the policy
/// in force and the bus.
pub struct Core {
    pub config: Config,
    pub sessions: Mutex<Sessions>,
    pub recent: Mutex<VecDeque<Arc<Event>>>,
    pub live: broadcast::Sender<Arc<Event>>,
    pub counters: Counters,
    pub kernel: Mutex<Kernel>,
    pub seeds: Mutex<std::sync::mpsc::Sender<Seed>>,
    /// Kernel event to user-space event, microseconds.
    pub latency: Mutex<Histogram<u64>>,
    /// Gate stop (kernel time) to the answer, in µs.
    pub gate_latency: Mutex<Histogram<u64>>,
    /// Swapped whole on reload: intake sees the old policy or the new one, never a mix.
    pub policy: ArcSwap<ActivePolicy>,
    /// The files and directories the gated rules name, by identity (see `identity`).
    pub inodes: ArcSwap<identity::InodeIndex>,
    /// Copies of the files the policy guards against writes, for the undo of a denied
    /// rename, link or truncate over one (refreshed with `inodes`).
    pub kept: Arc<crate::sys::keep::Kept>,
    pub findings: Mutex<VecDeque<Arc<Event>>>,
    /// The last reload error, until a reload succeeds.
    pub rules_error: Mutex<Option<String>>,
    /// Serialises reloads (file watcher, SIGHUP, control socket).
    reload_lock: Mutex<()>,
    /// One cgroup per session.
    pub cgroups: Arc<Cgroups>,
    /// The learned profiles (the baseline detector's).
    pub baselines: baseline::Baselines,
    /// The running sessions' pinned task scopes.
    pub scopes: scope::Scopes,
    /// The audit log's writer (a subscriber of `publish`).
    pub audit: Arc<audit::Audit>,
    /// The daemon's and its guardian's process and thread ids (tamper: a signal or ptrace
    /// to any of them).
    pub guarded: std::sync::RwLock<std::collections::HashSet<u32>>,
    enforcement: OnceLock<Arc<dyn Enforcement>>,
}

impl Core {
    /// Gives a new session its cgroup (`sys::cgroup`: inside the cgroup that owns `pids`'
    /// first process, where one does) and moves `pids` into it. A cgroup outside the watcher's
    /// directory gets the DNS programs of its own. A session without a cgroup is held by
    /// SIGSTOP instead (weaker), and said so.
    pub fn session_cgroup(&self, trace: &str, pids: &[u32]) {
        match self.cgroups.create(trace, pids) {
            Ok(dir) => self.watch_placed(trace, &dir),
            Err(e) => {
                tracing::warn!(%trace, "no session cgroup, holds fall back to SIGSTOP: {e}")
            }
        }
    }

    /// The DNS programs on a session cgroup placed outside the watcher's directory.
    pub fn watch_placed(&self, trace: &str, dir: &std::path::Path) {
        if !self.cgroups.is_placed(trace) {
            return;
        }
        let r = self
            .kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch_dns_in(dir);
        if let Err(e) = r {
            tracing::warn!(%trace, "the session's DNS answers are not seen: {e:#}");
        }
    }

    /// Whether `pid` is the daemon itself, one of its threads, or its guardian.
    pub fn is_guarded(&self, pid: u32) -> bool {
        pid == std::process::id()
            || self
                .guarded
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&pid)
    }

    pub fn new(
        config: Config,
        kernel: Kernel,
        active: ActivePolicy,
        cgroups: Arc<Cgroups>,
        seeds: std::sync::mpsc::Sender<Seed>,
        audit: Arc<audit::Audit>,
    ) -> anyhow::Result<Core> {
        let (live, _) = broadcast::channel(16384);
        let baselines = baseline::Baselines::open(&config, Some(config.holds.store.clone()))?;
        Ok(Core {
            baselines,
            audit,
            scopes: Default::default(),
            config,
            sessions: Mutex::new(Sessions::default()),
            recent: Mutex::new(VecDeque::new()),
            live,
            counters: Counters::default(),
            kernel: Mutex::new(kernel),
            seeds: Mutex::new(seeds),
            latency: Mutex::new(Histogram::new(3)?),
            gate_latency: Mutex::new(Histogram::new(3)?),
            policy: ArcSwap::from_pointee(active),
            inodes: ArcSwap::from_pointee(Default::default()),
            kept: Default::default(),
            findings: Mutex::new(VecDeque::new()),
            rules_error: Mutex::new(None),
            reload_lock: Mutex::new(()),
            guarded: Default::default(),
            cgroups,
            enforcement: OnceLock::new(),
        })
    }

    /// Installs enforcement (once, at start-up, before intake runs).
    pub fn set_enforcement(&self, e: Arc<dyn Enforcement>) {
        if self.enforcement.set(e).is_err() {
            tracing::error!("enforcement was installed twice; the first stays");
        }
    }

    /// Enforcement, once the daemon installed it.
    pub fn enforcement(&self) -> Option<&Arc<dyn Enforcement>> {
        self.enforcement.get()
    }

    /// Gates a session whose baseline or scope is enforced from its first action on: written
    /// when `launch` or `attach` starts it, before its command runs (intake keeps it so).
    pub fn gate_enforced_session(&self, session_id: u64) {
        let k = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        let r = k
            .gate_handle()
            .and_then(|mut g| g.set_session(session_id, ENFORCED_GATE));
        if let Err(e) = r {
            tracing::error!("gating an enforced session: {e:#}");
        }
    }

    /// Whether a session of `profile` (with a pinned scope or not) is enforced by the baseline
    /// or the scope, and so gated.
    pub fn session_enforced(&self, profile: Option<&str>, scoped: bool) -> bool {
        self.config.holds.enabled
            && (scoped
                || profile.is_some_and(|p| {
                    self.baselines.get(p).mode == crate::model::baseline::ProfileMode::Enforce
                }))
    }

    /// Numbers the event and hands it to `recent` and to live followers, in one order.
    pub fn publish(&self, mut ev: Event) -> Arc<Event> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        ev.seq = self.counters.published.fetch_add(1, Ordering::Relaxed) + 1;
        let ev = Arc::new(ev);
        if recent.len() >= self.config.daemon.recent_events {
            recent.pop_front();
        }
        recent.push_back(ev.clone());
        if let Detail::Finding(f) = &ev.detail {
            self.counters.count_finding(f);
            self.counters.findings.fetch_add(1, Ordering::Relaxed);
            let mut f = self.findings.lock().unwrap_or_else(|e| e.into_inner());
            if f.len() >= self.config.rules.recent_findings {
                f.pop_front();
            }
            f.push_back(ev.clone());
        }
        self.audit.event(&ev);
        // No subscriber is fine: the event is kept in `recent`.
        let _ = self.live.send(ev.clone());
        ev
    }

    /// The audit record of a session's start: who, the command, the profile, the scope and
    /// the policy version.
    pub fn audit_session_start(&self, s: &crate::model::session::Session) {
        let (exe, command) = crate::sys::procfs::proc_exe_argv(s.root_pid);
        let uid = crate::sys::procfs::uid_of(s.root_pid);
        let body = serde_json::to_value(s).map(|mut v| {
            v["exe"] = exe.into();
            v["command"] = command.into();
            v["uid"] = uid.into();
            v["policy_version"] = self.policy.load().policy.version.clone().into();
            v
        });
        self.audit.record("session_start", Some(&s.trace_id), body);
    }
}
