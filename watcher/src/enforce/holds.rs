//! Holds: a session frozen by a finding, waiting for a human. The record carries what the
//! approver needs to decide (the finding, the triggering event, the process tree, the session's
//! recent events) and is stored before anything else happens to it; no answer by the deadline
//! means deny.

use std::{
    collections::HashMap,
    sync::{Mutex, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::store::{Audited, Store, StoreError};
pub use crate::model::hold::{
    BootDeadline, DenyScope, Exception, Hold, HoldDraft, HoldKind, HoldState, KillSwitchState,
    ProcInfo, SetidBits, Via,
};
use crate::{
    model::event::{Detail, Event},
    sys::{
        boot,
        cgroup::{Cgroups, FreezeError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error("no hold {0}")]
    NotFound(String),
    #[error("hold {0} is already {1}")]
    Decided(String, &'static str),
    #[error(transparent)]
    Id(#[from] crate::model::ids::IdError),
    #[error("creating the approval latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error("the decision is recorded as taken but could not be sealed in the audit log, so it was not carried out (the session stays frozen): {0}")]
    Audit(String),
}

pub struct Approvals {
    store: Mutex<Store>,
    /// The kill-switch state as stored (None: not read yet).
    kill_switch: Mutex<Option<KillSwitchState>>,
    pub cgroups: std::sync::Arc<Cgroups>,
    /// Pending hold per session (one at a time: the session is frozen).
    pending: Mutex<HashMap<String, String>>,
    exceptions: RwLock<Vec<Exception>>,
    pub timeout: Duration,
    pub deny: DenyScope,
    /// Wakes the deadline task when a hold begins.
    pub changed: tokio::sync::Notify,
    /// Answers a waiting protected open (hold id, allow); false when none waits.
    verdict_hook: Mutex<Option<VerdictHook>>,
    /// Protected opens decided lately: the open's own event, when it arrives, is covered by
    /// that decision instead of asking again.
    decided_opens: Mutex<Vec<DecidedOpen>>,
    /// Approvals and denials are sealed in it before they take effect.
    audit: std::sync::OnceLock<std::sync::Arc<crate::pipeline::audit::Audit>>,
    /// Gated actions that joined a hold before it was stored, by hold id.
    joined: Mutex<HashMap<String, Vec<Event>>>,
    /// Copies of the guarded files: deny puts back what a held rename, link or truncate
    /// replaced.
    kept: std::sync::OnceLock<std::sync::Arc<crate::sys::keep::Kept>>,
    /// A hold's start to its decision (by a person or the deadline), microseconds.
    pub decision_latency: Mutex<hdrhistogram::Histogram<u64>>,
    /// When each pending hold's deadline falls on the monotonic clock: a step of the wall
    /// clock (NTP, an operator's `date -s`) neither denies a hold early nor keeps it longer.
    /// Set when the hold begins, or when this daemon first sees it (from the stored deadline,
    /// never beyond `timeout` from then).
    due: Mutex<HashMap<String, std::time::Instant>>,
}

/// How long a decided open waits for its event.
const DECIDED_OPEN_WINDOW: Duration = Duration::from_secs(60);
/// Decided opens remembered at most (the oldest go first).
const DECIDED_OPENS_MAX: usize = 1024;
/// How long a hold the store refuses is tried again before it is given up (logged; the
/// session stays frozen, and a restarted daemon holds it anew).
const STORE_RETRY_FOR: Duration = Duration::from_secs(3600);
/// How long a session the store refuses to keep is tried again (its launch waits meanwhile).
const REMEMBER_RETRY_FOR: Duration = Duration::from_secs(10);

struct DecidedOpen {
    trace: String,
    pid: u32,
    path: String,
    hold: String,
    /// Approved (the open went through) or denied (it failed with EPERM).
    allowed: bool,
    at: std::time::Instant,
    /// The event that was the decided open, once seen: every finding on it is covered, and
    /// no later event is.
    event: Option<u64>,
}

type VerdictHook = Box<dyn Fn(&str, bool) -> bool + Send + Sync>;

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_hold_id() -> String {
    crate::model::ids::HoldId::random().into()
}

impl Approvals {
    pub fn open(
        store: &std::path::Path,
        cgroups: std::sync::Arc<Cgroups>,
        timeout: Duration,
        deny: DenyScope,
    ) -> Result<Approvals, HoldError> {
        let store = Store::open(store)?;
        let pending = store
            .list(Some(HoldState::Pending))?
            .into_iter()
            .map(|h| (h.trace_id, h.id))
            .collect();
        let exceptions = store.exceptions()?;
        Ok(Approvals {
            store: Mutex::new(store),
            cgroups,
            pending: Mutex::new(pending),
            exceptions: RwLock::new(exceptions),
            timeout,
            deny,
            changed: tokio::sync::Notify::new(),
            verdict_hook: Mutex::new(None),
            decided_opens: Mutex::new(Vec::new()),
            audit: std::sync::OnceLock::new(),
            kill_switch: Mutex::new(None),
            kept: std::sync::OnceLock::new(),
            joined: Mutex::new(HashMap::new()),
            decision_latency: Mutex::new(hdrhistogram::Histogram::new(3)?),
            due: Mutex::new(HashMap::new()),
        })
    }

    /// Installs the audit log (once, at start-up).
    pub fn set_kept(&self, k: std::sync::Arc<crate::sys::keep::Kept>) {
        let _ = self.kept.set(k);
    }

    /// Puts back the guarded name a held rename, link or truncate replaced (`ev` its write),
    /// while its process is still there to name its mount namespace; what was done.
    pub fn undo_replaced(&self, ev: &Event) -> Option<String> {
        let path = ev.detail.replaced_name()?;
        let undo = self.kept.get()?.undo(ev.pid, path)?;
        Some(match undo {
            crate::sys::keep::Undo::Restored => format!("put {path} back as it was"),
            crate::sys::keep::Undo::Removed => format!("removed {path}, which did not exist"),
            crate::sys::keep::Undo::Unchanged => format!("{path} was as it had been"),
            crate::sys::keep::Undo::Failed(why) => format!("could not put {path} back: {why}"),
        })
    }

    pub fn set_audit(&self, a: std::sync::Arc<crate::pipeline::audit::Audit>) {
        let _ = self.audit.set(a);
    }

    /// Appends a decision's record and a checkpoint covering it; without an audit log, Ok.
    pub fn seal(&self, kind: &'static str, h: &Hold) -> Result<u64, HoldError> {
        let Some(a) = self.audit.get() else {
            return Ok(0);
        };
        let body = serde_json::json!({
            "hold": h.id,
            "rule": h.rule,
            "state": h.state.as_str(),
            "by": h.decided_by,
            "via": h.decided_via,
            "at": h.decided_at,
            "remembered": h.remembered,
            "kind": h.kind,
        });
        // An approval acts only once sealed, so one not sealed is not written either; a
        // denial stops the session regardless, and its record is written when it can be.
        let sealed = if h.state == HoldState::Approved {
            a.seal_only(kind, Some(&h.trace_id), Ok(body))
        } else {
            a.seal(kind, Some(&h.trace_id), Ok(body))
        };
        if sealed.is_ok() && h.state == HoldState::Denied {
            self.mark_audited(h, Audited::Denial);
        }
        sealed.map_err(HoldError::Audit)
    }

    /// The audit record of a new hold, with the evidence the approver is shown (sealed; when
    /// the store refuses it now, kept and written as soon as it takes writes again).
    pub fn seal_hold(&self, h: &Hold) {
        if let Some(a) = self.audit.get() {
            if a.seal("hold", Some(&h.trace_id), serde_json::to_value(h))
                .is_ok()
            {
                self.mark_audited(h, Audited::Hold);
            }
        }
    }

    /// The store remembers a sealed record, so a restarted daemon looks in the log only for
    /// holds whose record may be missing.
    fn mark_audited(&self, h: &Hold, record: Audited) {
        if let Err(e) = self.store().mark_audited(&h.id, record) {
            tracing::warn!(hold = %h.id, "marking the hold's {record:?} record as sealed: {e}");
        }
    }

    /// Every hold, every denial of one, and the kill-switch in force are in the audit log: one
    /// that a daemon stored but died before it sealed (or kept in memory while the log's store
    /// refused writes) gets its record now. Approvals need none: they act only once sealed.
    /// The kill-switch's record is written before this returns; the holds' on a thread of
    /// their own (one sealed write each, and the daemon decides meanwhile).
    pub fn audit_missing(self: &std::sync::Arc<Self>) {
        self.audit_kill_switch();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-missing".into())
            .spawn(move || me.audit_missing_holds());
        if let Err(e) = spawned {
            tracing::error!("checking the holds' audit records: {e}");
        }
    }

    /// Only holds the store has not marked as sealed are looked for: a sealed record that
    /// retention pruned since is not written again, and no clock is compared (the wall clock
    /// may have been stepped between a hold and the log's oldest record).
    fn audit_missing_holds(&self) {
        let Some(a) = self.audit.get() else { return };
        for (record, kind, field) in [
            (Audited::Hold, "hold", "id"),
            (Audited::Denial, "denial", "hold"),
        ] {
            let unmarked = self.store().unaudited(record);
            let unmarked = match unmarked {
                Ok(u) => u,
                Err(e) => {
                    tracing::error!("reading the hold store: {e}");
                    continue;
                }
            };
            for h in unmarked {
                let logged = a.has_record(Some(&h.trace_id), kind, field, &h.id);
                let sealed = match logged {
                    Ok(true) => true,
                    Ok(false) => {
                        tracing::warn!(hold = %h.id, "the hold's {kind} record was not in the audit log (the daemon stopped before it was written): written now");
                        match record {
                            Audited::Hold => a
                                .seal(kind, Some(&h.trace_id), serde_json::to_value(&h))
                                .is_ok(),
                            Audited::Denial => self.seal(kind, &h).is_ok(),
                        }
                    }
                    Err(e) => {
                        tracing::error!(hold = %h.id, "reading the audit log: {e:#}");
                        false
                    }
                };
                if sealed {
                    self.mark_audited(&h, record);
                }
            }
        }
    }

    /// The kill-switch in force: its last engagement is in the log (stored first, sealed
    /// after, so a daemon that died between left it out).
    fn audit_kill_switch(&self) {
        let Some(a) = self.audit.get() else { return };
        if let Some(k) = self.kill_switch().ok().filter(|k| k.engaged) {
            let logged = a
                .has_record(None, "kill_switch", "at", &k.at)
                .inspect_err(|e| tracing::error!("reading the audit log: {e:#}"))
                .unwrap_or(true);
            if !logged {
                tracing::warn!(by = %k.by, at = %k.at, "the kill-switch's engagement was not in the audit log (the daemon stopped before it was written): written now");
                let _ = a.seal("kill_switch", None, serde_json::to_value(&k));
            }
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session's pending hold, if any.
    pub fn pending_for(&self, trace: &str) -> Option<String> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(trace)
            .cloned()
    }

    /// Claims the session for a new hold; None when one is already pending (the session is
    /// frozen already, later findings join the record as evidence only).
    pub fn claim(&self, trace: &str) -> Option<String> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.contains_key(trace) {
            return None;
        }
        let id = new_hold_id();
        p.insert(trace.to_string(), id.clone());
        Some(id)
    }

    pub fn set_verdict_hook(&self, hook: VerdictHook) {
        *self.verdict_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    fn verdict(&self, id: &str, allow: bool) -> bool {
        self.verdict_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| h(id, allow))
    }

    /// Stores the hold (the caller has frozen the session, or holds the open) and wakes the
    /// deadline task.
    pub fn record(&self, d: HoldDraft) -> Result<Hold, HoldError> {
        // A held open that created its file: deny removes it again.
        let created = match (&d.kind, &d.trigger.detail) {
            (
                HoldKind::Session,
                Detail::Open {
                    path,
                    opened_as,
                    flags,
                    result,
                    ..
                },
                // (A rename, link or truncate over a name is undone from the kept copies instead:
                // the file it put there may be new, the name was not.)
            ) if *result >= 0 && flags.creates() && d.trigger.detail.replaced_name().is_none() => {
                // The name the process opened, in its own mount namespace (it is stopped at
                // the gate, or frozen): the policy's name for it may be another.
                let view = crate::sys::view::View::of([d.trigger.pid]);
                let name = opened_as.as_deref().unwrap_or(path);
                crate::sys::files::created_by_open(&view, name, d.trigger.ts.0)
                    .into_iter()
                    .collect()
            }
            _ => Vec::new(),
        };
        // A held chmod that set the setuid or setgid bit: deny clears them again. The
        // process is stopped at the call (the gate), so the file is still the one it changed.
        let setid_bits = match (&d.kind, &d.trigger.detail) {
            (
                HoldKind::Session,
                Detail::Chmod {
                    path,
                    mode,
                    result: 0,
                    ..
                },
            ) if mode & 0o6000 != 0 => {
                let view = crate::sys::view::View::of([d.trigger.pid]);
                crate::sys::files::identity_of_file(&view, path).map(|file| SetidBits {
                    file,
                    bits: mode & 0o6000,
                })
            }
            _ => None,
        };
        let deadline = SystemTime::now() + self.timeout;
        let started = std::time::Instant::now();
        let hold = Hold {
            id: d.id,
            kind: d.kind,
            trace_id: d.finding.trace_id.clone(),
            rule: d.rule,
            policy_version: d.policy_version,
            state: HoldState::Pending,
            finding: d.finding,
            also: d.also,
            trigger: d.trigger,
            tree: d.tree,
            recent: d.recent,
            started: now_rfc3339(),
            deadline: humantime::format_rfc3339_millis(deadline).to_string(),
            deadline_ms: now_ms() + self.timeout.as_millis() as i64,
            deadline_boot: Some(BootDeadline {
                boot_id: boot::boot_id().to_string(),
                ms: boot::boot_ns() / 1_000_000 + self.timeout.as_millis() as u64,
            }),
            stopped: d.stopped,
            waiting: Vec::new(),
            frozen_us: d.frozen_us,
            decided_by: None,
            decided_via: None,
            decided_at: None,
            remembered: false,
            result: None,
            created,
            setid_bits,
            scope: d.scope,
        };
        let mut hold = hold;
        // A store that refuses the write (busy, its disk full) is tried again: the session is
        // frozen meanwhile, and a hold that is not stored could not be decided.
        let since = std::time::Instant::now();
        let mut said = None::<std::time::Instant>;
        loop {
            // Gated actions that joined while the hold was being recorded.
            let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
            for ev in joined.remove(&hold.id).unwrap_or_default() {
                hold.stopped.push(ev.pid);
                hold.waiting.push(ev);
            }
            match self.store().put(&hold) {
                Ok(()) => {
                    self.due
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(hold.id.clone(), started + self.timeout);
                    break;
                }
                Err(e @ StoreError::Sql { .. }) if since.elapsed() < STORE_RETRY_FOR => {
                    if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::error!(hold = %hold.id, "storing the hold failed, trying again (the session stays frozen): {e}");
                        said = Some(std::time::Instant::now());
                    }
                }
                Err(e) => return Err(e.into()),
            }
            drop(joined);
            std::thread::sleep(Duration::from_millis(250));
        }
        self.changed.notify_one();
        Ok(hold)
    }

    /// A gated action of a session that waits on a hold: it stays stopped and joins that
    /// hold (its evidence, and the processes approve continues). False when no hold is
    /// pending for the session.
    pub fn join(&self, ev: &Event) -> bool {
        let Some(id) = self.pending_for(&ev.trace_id) else {
            return false;
        };
        let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        let stored = self.store().get(&id);
        match stored {
            Ok(Some(mut h)) if h.state == HoldState::Pending => {
                h.stopped.push(ev.pid);
                h.waiting.push(ev.clone());
                let put = if crate::sys::fault::fails(crate::sys::fault::JOIN_REFUSED) {
                    Err(StoreError::Io {
                        path: "hold store".into(),
                        source: std::io::Error::other("refused by fault injection"),
                    })
                } else {
                    self.store().put(&h)
                };
                // Still stopped and still in the gate's map: once this hold is decided, the
                // gate sweeper asks about it again (it is not in what approve continues).
                if let Err(e) = put {
                    tracing::error!(hold = %id, pid = ev.pid, "a gated action could not join its hold, it is asked about after it: {e}");
                }
            }
            // Not stored yet (it is being recorded): `record` takes it.
            Ok(None) => joined.entry(id).or_default().push(ev.clone()),
            // Decided meanwhile: the action waits for no one; the caller answers it.
            _ => return false,
        }
        tracing::warn!(trace_id = %ev.trace_id, pid = ev.pid, "a gated action joined the pending hold");
        true
    }

    /// Whether the stored hold `id` lists `pid` among the processes its decision answers.
    pub fn stops(&self, id: &str, pid: u32) -> bool {
        matches!(self.store().get(id), Ok(Some(h)) if h.stopped.contains(&pid))
    }

    pub fn get(&self, id: &str) -> Result<Hold, HoldError> {
        crate::model::ids::HoldId::parse(id)?;
        self.store()
            .get(id)?
            .ok_or_else(|| HoldError::NotFound(id.into()))
    }

    pub fn list(&self, state: Option<HoldState>) -> Result<Vec<Hold>, HoldError> {
        Ok(self.store().list(state)?)
    }

    fn pending_hold(&self, id: &str) -> Result<Hold, HoldError> {
        let h = self.get(id)?;
        if h.state != HoldState::Pending {
            return Err(HoldError::Decided(id.into(), h.state.as_str()));
        }
        Ok(h)
    }

    /// Records the decision, if no other decision came first (the store's compare-and-set),
    /// before it is acted on: a crash after this resumes or kills nothing unrecorded.
    fn finish(&self, mut h: Hold, state: HoldState, by: &str, via: Via) -> Result<Hold, HoldError> {
        h.state = state;
        h.decided_by = Some(by.to_string());
        h.decided_via = Some(via);
        h.decided_at = Some(now_rfc3339());
        if !self.store().decide(&h)? {
            let now = self.get(&h.id)?;
            return Err(HoldError::Decided(h.id, now.state.as_str()));
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.get(&h.trace_id) == Some(&h.id) {
            pending.remove(&h.trace_id);
        }
        drop(pending);
        if let Some(waited) = humantime::parse_rfc3339(&h.started)
            .ok()
            .and_then(|t| t.elapsed().ok())
        {
            let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            self.decision_latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .saturating_record(us);
        }
        Ok(h)
    }

    /// Puts a hold whose approval could not be sealed back to pending.
    fn undecide(&self, h: &Hold) {
        match self.store().undecide(h) {
            Ok(()) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(h.trace_id.clone(), h.id.clone());
                self.changed.notify_one();
            }
            Err(e) => tracing::error!(
                hold = %h.id,
                "the approval was not sealed and the hold could not be made pending again \
                 (the session stays frozen; a restarted daemon holds it anew): {e}"
            ),
        }
    }

    /// Resumes the session. With `remember`, the rule does not hold this session again.
    /// `remember_profile`: the exception is for the session's profile (every session of it),
    /// not only this session.
    pub fn approve(
        &self,
        id: &str,
        by: &str,
        via: Via,
        remember: bool,
        remember_profile: Option<String>,
    ) -> Result<Hold, HoldError> {
        let mut h = self.pending_hold(id)?;
        let exception = (remember || remember_profile.is_some()).then(|| {
            let (scope, value) = match remember_profile {
                Some(p) => ("profile", p),
                None => ("trace", h.trace_id.clone()),
            };
            Exception {
                rule: h.rule.clone(),
                scope: scope.into(),
                value,
                by: by.into(),
                at: now_rfc3339(),
                hold: h.id.clone(),
            }
        });
        let before = h.clone();
        h.remembered = exception.is_some();
        let h = self.finish(h, HoldState::Approved, by, via)?;
        // An approval takes effect only once it is sealed in the audit log; one that cannot be
        // (the store busy, its disk full) is taken back: the hold is pending again, to be
        // decided once the log takes writes, not an approval that never acted.
        if let Err(e) = self.seal("approval", &h) {
            self.undecide(&before);
            return Err(e);
        }
        if let Some(e) = exception {
            self.store().add_exception(&e)?;
            self.exceptions
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(e);
        }
        if h.kind == HoldKind::ProtectedOpen {
            self.remember_decided_open(&h, true);
            self.verdict(&h.id, true);
        }
        self.resume(&h.trace_id, &h.stopped);
        Ok(h)
    }

    fn remember_decided_open(&self, h: &Hold, allowed: bool) {
        let Detail::Open { path, .. } = &h.trigger.detail else {
            return;
        };
        let mut a = self.decided_opens.lock().unwrap_or_else(|e| e.into_inner());
        if a.len() >= DECIDED_OPENS_MAX {
            a.remove(0);
        }
        a.push(DecidedOpen {
            trace: h.trace_id.clone(),
            pid: h.trigger.pid,
            path: path.clone(),
            hold: h.id.clone(),
            allowed,
            at: std::time::Instant::now(),
            event: None,
        });
    }

    /// The decided hold that already covers this event, and whether it was approved: the open
    /// a protected-open hold let through or refused, seen now as the open's own event (its
    /// findings are not asked about again).
    pub fn decided_action(&self, ev: &Event) -> Option<(String, bool)> {
        let Detail::Open { path, .. } = &ev.detail else {
            return None;
        };
        let mut a = self.decided_opens.lock().unwrap_or_else(|e| e.into_inner());
        a.retain(|o| o.at.elapsed() < DECIDED_OPEN_WINDOW);
        let o = a.iter_mut().find(|o| {
            o.trace == ev.trace_id
                && o.pid == ev.pid
                && o.path == *path
                && o.event.is_none_or(|seq| seq == ev.seq)
        })?;
        o.event = Some(ev.seq);
        Some((o.hold.clone(), o.allowed))
    }

    /// Whether the kill-switch, as stored, holds the session.
    pub fn kill_switch_holds(&self, trace: &str) -> bool {
        self.kill_switch()
            .is_ok_and(|k| k.engaged && (k.all || k.traces.iter().any(|t| t == trace)))
    }

    /// Thaws the session and continues the processes the kernel stopped, unless the
    /// kill-switch holds the session: an approval never lifts it (`release` does).
    pub fn resume(&self, trace: &str, stopped: &[u32]) {
        if self.kill_switch_holds(trace) {
            tracing::warn!(trace, "the kill-switch holds the session: it stays stopped");
            return;
        }
        if let Err(e) = self.cgroups.thaw(trace) {
            tracing::warn!(trace, "thawing: {e}");
        }
        for pid in stopped {
            // SAFETY: plain kill(2); a pid that is gone gives ESRCH, which is fine.
            unsafe { libc::kill(*pid as i32, libc::SIGCONT) };
        }
    }

    /// Stops the session (or, by configuration, only the triggering process).
    pub fn deny(&self, id: &str, by: &str, via: Via) -> Result<Hold, HoldError> {
        let h = self.pending_hold(id)?;
        let mut h = self.finish(h, HoldState::Denied, by, via)?;
        // Stopping is the safe side: a denial that cannot be sealed still stops (loudly).
        let sealed = self.seal("denial", &h);
        let stopped = self.stop(&h);
        h.result = Some(match &stopped {
            Ok(what) => what.clone(),
            Err(e) => format!("deny failed: {e}"),
        });
        self.store().put(&h)?;
        sealed?;
        stopped.map(|_| h)
    }

    fn stop(&self, h: &Hold) -> Result<String, HoldError> {
        if h.kind == HoldKind::ProtectedOpen {
            self.remember_decided_open(h, false);
            // What deny stops is stopped first, while the open still waits: answered first,
            // the open would fail with EPERM and the process (or the session) would run its
            // next step before it died.
            let pid = h.trigger.pid;
            let stopped = match self.deny {
                DenyScope::Session => self
                    .cgroups
                    .kill(&h.trace_id)
                    .map(|()| "killed the session".to_string()),
                DenyScope::Process => {
                    // SAFETY: plain kill(2); SIGKILL reaches a frozen task.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    Ok(format!("killed process {pid}"))
                }
            };
            // The open fails with EPERM for a process that is dying; none waits when the
            // kill ended the wait, or when a restarted daemon found it let through (the opener
            // has not run since: its session was frozen).
            let refused = self.verdict(&h.id, false);
            let mut what = stopped?;
            if refused {
                what.push_str("; refused the open (EPERM)");
            }
            if self.deny == DenyScope::Process {
                self.resume(&h.trace_id, &[]);
            }
            return Ok(what);
        }
        // Before the kill, while the session's processes (frozen) still name the mount
        // namespace its files are in: what the held action changed is put back there.
        let mut undone = Vec::new();
        if let Some(u) = self.undo_replaced(&h.trigger) {
            undone.push(u);
        }
        let view = crate::sys::view::View::of(
            std::iter::once(h.trigger.pid).chain(self.cgroups.pids(&h.trace_id)),
        );
        // The setuid/setgid bits a held chmod set go again.
        if let Some(b) = &h.setid_bits {
            undone.push(
                if crate::sys::files::clear_mode_bits(&view, &b.file, b.bits) {
                    format!("cleared the setuid/setgid bits of {}", b.file.path)
                } else {
                    format!("{} was gone or replaced", b.file.path)
                },
            );
        }
        // What the held open created goes too, so the host is as it was.
        for f in &h.created {
            undone.push(if crate::sys::files::remove_created(&view, f) {
                format!("removed {}", f.path)
            } else {
                format!("{} was already gone or replaced", f.path)
            });
        }
        let mut what = match self.deny {
            DenyScope::Session => {
                self.cgroups.kill(&h.trace_id)?;
                "killed the session".to_string()
            }
            DenyScope::Process => {
                let pid = h.trigger.pid;
                // The actions that waited on this decision are denied with it.
                for p in std::iter::once(pid).chain(h.waiting.iter().map(|e| e.pid)) {
                    // SAFETY: plain kill(2); SIGKILL reaches a frozen task.
                    unsafe { libc::kill(p as i32, libc::SIGKILL) };
                }
                self.resume(&h.trace_id, &[]);
                match h.waiting.len() {
                    0 => format!("killed process {pid}"),
                    n => format!("killed process {pid} and the {n} gated action(s) that waited"),
                }
            }
        };
        for u in undone {
            what.push_str(&format!("; {u}"));
        }
        Ok(what)
    }

    /// Denies every pending hold whose deadline passed; returns the time to the next one.
    pub fn expire_due(&self) -> Option<Duration> {
        let pending = match self.list(Some(HoldState::Pending)) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("reading holds: {e}");
                return Some(Duration::from_secs(1));
            }
        };
        let (now, wall, boot_ms) = (
            std::time::Instant::now(),
            now_ms(),
            (boot::boot_ns() / 1_000_000) as i64,
        );
        let mut next: Option<std::time::Instant> = None;
        let mut known = self.due.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|id, _| pending.iter().any(|h| h.id == *id));
        let due: Vec<_> = pending
            .into_iter()
            .map(|h| {
                // A restart of the same boot counts on the boot clock, whatever the wall
                // clock did meanwhile; after a reboot only the wall clock is left.
                let left = match &h.deadline_boot {
                    Some(b) if !b.boot_id.is_empty() && b.boot_id == boot::boot_id() => {
                        b.ms as i64 - boot_ms
                    }
                    _ => h.deadline_ms - wall,
                };
                let left = left.clamp(0, self.timeout.as_millis() as i64);
                let at = *known
                    .entry(h.id.clone())
                    .or_insert(now + Duration::from_millis(left as u64));
                (h, at)
            })
            .collect();
        drop(known);
        for (h, at) in due {
            if at <= now {
                match self.deny(&h.id, "deadline", Via::Deadline) {
                    Ok(_) => {
                        tracing::warn!(hold = %h.id, trace_id = %h.trace_id, "no answer by the deadline: denied")
                    }
                    Err(e) => tracing::error!(hold = %h.id, "denying at the deadline: {e}"),
                }
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next.map(|n| n.saturating_duration_since(now))
    }

    pub fn excepted(&self, rule: &str, trace: &str, profile: Option<&str>) -> bool {
        self.exceptions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|e| {
                e.rule == rule
                    && match e.scope.as_str() {
                        "trace" => e.value == trace,
                        "profile" => profile == Some(e.value.as_str()),
                        _ => false,
                    }
            })
    }

    /// Deletes decided holds older than `retention`; pending holds stay.
    pub fn prune(&self, retention: Duration) -> Result<usize, HoldError> {
        let before = now_ms() - retention.as_millis().min(i64::MAX as u128) as i64;
        Ok(self.store().prune(before)?)
    }

    /// Keeps what a session was started with (and its scope's widenings), for a restarted
    /// daemon to adopt it as it was.
    /// A store that refuses the write (busy, its disk full) is tried again for a while: a
    /// session not kept is adopted after a restart with no profile or scope of its own.
    pub fn remember_session(&self, s: &crate::model::session::Session) {
        let since = std::time::Instant::now();
        loop {
            match self.store().put_session(s) {
                Ok(()) => return,
                Err(StoreError::Sql { .. }) if since.elapsed() < REMEMBER_RETRY_FOR => {}
                Err(e) => {
                    tracing::error!(trace_id = %s.trace_id, "keeping the session for a restart: {e}");
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// What a session of an earlier daemon was started with.
    pub fn remembered_session(&self, trace: &str) -> Option<crate::model::session::Session> {
        self.store()
            .session(trace)
            .inspect_err(|e| tracing::error!(trace_id = %trace, "reading the kept session: {e}"))
            .ok()
            .flatten()
    }

    /// Marks a session frozen by a clean stop (the next daemon thaws it), or unmarks it.
    pub fn set_frozen_at_stop(&self, trace: &str, on: bool) -> Result<(), HoldError> {
        Ok(self.store().set_frozen_at_stop(trace, on)?)
    }

    /// Whether a clean stop froze the session.
    pub fn frozen_at_stop(&self, trace: &str) -> bool {
        self.store().frozen_at_stop(trace).unwrap_or_else(|e| {
            tracing::error!(trace_id = %trace, "reading the stop's freezes: {e}");
            false
        })
    }

    /// Forgets the kept sessions that are not `running`.
    pub fn forget_sessions_but(&self, running: &[String]) {
        if let Err(e) = self.store().retain_sessions(running) {
            tracing::error!("forgetting ended sessions: {e}");
        }
    }

    /// The kill-switch state: from memory once read (this daemon is the store's only writer),
    /// so the intake's checks never wait on the disk.
    pub fn kill_switch(&self) -> Result<KillSwitchState, HoldError> {
        let mut k = self.kill_switch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = k.as_ref() {
            return Ok(k.clone());
        }
        let read = self.store().kill_switch()?;
        *k = Some(read.clone());
        Ok(read)
    }

    pub fn set_kill_switch(&self, state: &KillSwitchState) -> Result<(), HoldError> {
        let mut k = self.kill_switch.lock().unwrap_or_else(|e| e.into_inner());
        // Stored first: what memory says is never ahead of the store. A failed write leaves
        // memory to be read again from the store.
        *k = None;
        self.store().set_kill_switch(state)?;
        *k = Some(state.clone());
        Ok(())
    }
}

/// Runs until the daemon stops: every hour (and at start), deletes decided holds older than
/// `retention`.
pub async fn prune(approvals: std::sync::Arc<Approvals>, retention: Duration) {
    loop {
        let a = approvals.clone();
        match tokio::task::spawn_blocking(move || a.prune(retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(holds = n, ?retention, "decided holds pruned"),
            Ok(Err(e)) => tracing::error!("pruning decided holds: {e}"),
            Err(e) => tracing::error!("pruning decided holds: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Runs until the daemon stops: denies holds at their deadline.
pub async fn deadlines(approvals: std::sync::Arc<Approvals>) {
    loop {
        let a = approvals.clone();
        let next = tokio::task::spawn_blocking(move || a.expire_due())
            .await
            .ok()
            .flatten()
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = approvals.changed.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `Approvals` on a fresh store in its own directory; a plain directory stands in for
    /// the cgroup tree.
    fn approvals(tag: &str) -> (std::path::PathBuf, Approvals) {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Approvals::open(
            &dir.join("db"),
            std::sync::Arc::new(Cgroups::at(dir.join("cg")).unwrap()),
            Duration::from_secs(60),
            DenyScope::Session,
        )
        .unwrap();
        (dir, a)
    }

    fn draft(id: &str, trace: &str, frozen_us: Option<u64>) -> HoldDraft {
        HoldDraft {
            id: id.into(),
            kind: HoldKind::Session,
            finding: event(trace),
            also: Vec::new(),
            trigger: event(trace),
            tree: vec![],
            recent: vec![],
            stopped: vec![],
            rule: "r".into(),
            policy_version: "v".into(),
            frozen_us,
            scope: None,
        }
    }

    fn event(trace: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "ts": "2026-01-01T00:00:00Z", "pid": 10, "tid": 10, "ppid": 1, "uid": 0,
            "trace_id": trace, "comm": "x", "cgroup_id": 0, "type": "exec", "path": "/bin/x", "argv": ["x"]
        }))
        .unwrap()
    }

    #[test]
    fn holds_persist_and_remembered_exceptions_apply_by_scope() {
        let dir = std::env::temp_dir().join(format!("watcher-approvals-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A plain directory stands in for the cgroup tree: thawing it fails and is logged.
        let cg = Cgroups::at(dir.join("cg")).unwrap();
        let a = Approvals::open(
            &dir.join("db"),
            std::sync::Arc::new(cg),
            Duration::from_secs(60),
            DenyScope::Session,
        )
        .unwrap();
        let t1 = crate::model::ids::TraceId::random().to_string();
        let id = a.claim(&t1).unwrap();
        assert!(a.claim(&t1).is_none(), "one pending hold per session");
        a.record(draft(&id, &t1, Some(5))).unwrap();
        // A second Approvals on the same file (a restarted daemon) sees it pending.
        let again = Approvals::open(
            &dir.join("db"),
            std::sync::Arc::new(Cgroups::at(dir.join("cg")).unwrap()),
            Duration::from_secs(60),
            DenyScope::Session,
        )
        .unwrap();
        assert_eq!(again.pending_for(&t1), Some(id.clone()));
        let h = a
            .approve(&id, "alice", Via::Cli, false, Some("claude".into()))
            .unwrap();
        assert_eq!(h.state, HoldState::Approved);
        assert_eq!(h.decided_by.as_deref(), Some("alice"));
        assert!(a.excepted("r", "another-trace", Some("claude")));
        assert!(!a.excepted("r", "another-trace", Some("codex")));
        assert!(!a.excepted("other-rule", &t1, Some("claude")));
        assert!(matches!(
            a.approve(&id, "bob", Via::Cli, false, None),
            Err(HoldError::Decided(..))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A human's approve and the deadline's deny on one hold, started together: exactly one
    /// decides, the other is told the hold is decided, and the store agrees with the winner.
    #[test]
    fn approve_and_deny_racing_give_exactly_one_decision() {
        let dir = std::env::temp_dir().join(format!("watcher-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let trace = crate::model::ids::TraceId::random().to_string();
        // Plain files stand in for the cgroup's control files: thaw and kill write to them.
        let cg = Cgroups::at(dir.join("cg")).unwrap();
        let session = cg.create(&trace, &[]).unwrap();
        for f in ["cgroup.freeze", "cgroup.kill"] {
            std::fs::write(session.join(f), "").unwrap();
        }
        let a = std::sync::Arc::new(
            Approvals::open(
                &dir.join("db"),
                std::sync::Arc::new(cg),
                Duration::from_secs(60),
                DenyScope::Session,
            )
            .unwrap(),
        );
        let (mut approved, mut denied) = (0, 0);
        for _ in 0..100 {
            let id = a.claim(&trace).unwrap();
            a.record(draft(&id, &trace, None)).unwrap();
            let go = std::sync::Arc::new(std::sync::Barrier::new(2));
            let approve = std::thread::spawn({
                let (a, id, go) = (a.clone(), id.clone(), go.clone());
                move || {
                    go.wait();
                    a.approve(&id, "alice", Via::Cli, false, None)
                }
            });
            go.wait();
            let deny = a.deny(&id, "deadline", Via::Deadline);
            let approve = approve.join().unwrap();
            let stored = a.get(&id).unwrap().state;
            match (&approve, &deny) {
                (Ok(h), Err(HoldError::Decided(..))) => {
                    assert_eq!(h.state, HoldState::Approved);
                    assert_eq!(stored, HoldState::Approved);
                    approved += 1;
                }
                (Err(HoldError::Decided(..)), Ok(h)) => {
                    assert_eq!(h.state, HoldState::Denied);
                    assert_eq!(stored, HoldState::Denied);
                    denied += 1;
                }
                other => panic!("not exactly one decision: {other:?}"),
            }
            assert_eq!(a.pending_for(&trace), None);
        }
        assert_eq!(approved + denied, 100);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_malformed_hold_id_is_refused_before_any_lookup() {
        let (dir, a) = approvals("watcher-holdid");
        for bad in ["../x", "h-", "' OR 1=1 --"] {
            assert!(matches!(a.get(bad), Err(HoldError::Id(_))), "{bad}");
            assert!(
                matches!(a.deny(bad, "x", Via::Cli), Err(HoldError::Id(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            a.get("h-0123456789ab"),
            Err(HoldError::NotFound(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn decided_holds_are_pruned_after_the_retention_and_pending_ones_never() {
        let (dir, a) = approvals("watcher-prune");
        let mut ids = Vec::new();
        for _ in 0..3 {
            let trace = crate::model::ids::TraceId::random().to_string();
            let id = a.claim(&trace).unwrap();
            a.record(draft(&id, &trace, None)).unwrap();
            ids.push(id);
        }
        // One approved (its thaw fails on the plain directory and is logged), two pending.
        a.approve(&ids[0], "alice", Via::Cli, false, None).unwrap();
        assert_eq!(a.list(Some(HoldState::Pending)).unwrap().len(), 2);
        assert_eq!(a.list(None).unwrap().len(), 3);
        // Within the retention nothing goes; past it only the decided hold does.
        assert_eq!(a.prune(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(a.prune(Duration::ZERO).unwrap(), 1);
        assert!(matches!(a.get(&ids[0]), Err(HoldError::NotFound(_))));
        assert_eq!(a.list(None).unwrap().len(), 2);
        assert_eq!(a.list(Some(HoldState::Pending)).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The store marks which of a hold's audit records were sealed, and a later write of the
    /// hold (its decision) keeps the marks: a restarted daemon looks in the log only for the
    /// records not marked.
    #[test]
    fn a_sealed_record_is_marked_and_stays_marked() {
        let (dir, a) = approvals("watcher-audited");
        let trace = crate::model::ids::TraceId::random().to_string();
        let id = a.claim(&trace).unwrap();
        let mut h = a.record(draft(&id, &trace, None)).unwrap();
        let unmarked = |r| -> Vec<String> {
            a.store()
                .unaudited(r)
                .unwrap()
                .into_iter()
                .map(|h| h.id)
                .collect()
        };
        assert_eq!(unmarked(Audited::Hold), vec![id.clone()]);
        assert!(unmarked(Audited::Denial).is_empty(), "not denied yet");
        a.store().mark_audited(&id, Audited::Hold).unwrap();
        assert!(unmarked(Audited::Hold).is_empty());
        h.state = HoldState::Denied;
        a.store().put(&h).unwrap();
        assert!(
            unmarked(Audited::Hold).is_empty(),
            "the write lost the mark"
        );
        assert_eq!(unmarked(Audited::Denial), vec![id.clone()]);
        a.store().mark_audited(&id, Audited::Denial).unwrap();
        assert!(unmarked(Audited::Denial).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The wall clock stepped past a hold's deadline (NTP, `date -s`) denies nothing: the
    /// deadline runs on the monotonic clock; a daemon that first sees the hold (a restart)
    /// takes what was left of it on the boot clock (the wall clock's after a reboot), never
    /// more than the timeout.
    #[test]
    fn a_step_of_the_wall_clock_neither_denies_a_hold_early_nor_keeps_it_longer() {
        let (dir, a) = approvals("watcher-clockstep");
        let trace = crate::model::ids::TraceId::random().to_string();
        let id = a.claim(&trace).unwrap();
        let mut h = a.record(draft(&id, &trace, None)).unwrap();
        // As the wall clock two hours ahead would see it: the stored deadline long past.
        h.deadline_ms = now_ms() - 2 * 3600 * 1000;
        a.store().put(&h).unwrap();
        let next = a
            .expire_due()
            .expect("the hold's deadline is still to come");
        assert!(next > Duration::from_secs(50), "{next:?}");
        assert_eq!(a.get(&id).unwrap().state, HoldState::Pending);
        // A daemon that had not seen it (a restart) and a clock stepped back a day: the
        // deadline is the timeout at most, not a day.
        a.due.lock().unwrap().clear();
        h.deadline_ms = now_ms() + 24 * 3600 * 1000;
        a.store().put(&h).unwrap();
        let next = a.expire_due().unwrap();
        assert!(next <= a.timeout, "{next:?}");
        // A restart of the same boot counts on the boot clock: the wall clock's deadline two
        // hours past (a step back after the hold began) is not the deadline.
        a.due.lock().unwrap().clear();
        h.deadline_ms = now_ms() - 2 * 3600 * 1000;
        a.store().put(&h).unwrap();
        let next = a
            .expire_due()
            .expect("the boot clock's deadline is still to come");
        assert!(next > Duration::from_secs(50), "{next:?}");
        assert_eq!(a.get(&id).unwrap().state, HoldState::Pending);
        // After a reboot only the wall clock is left: one whose stored deadline passed while
        // no daemon ran is denied at once.
        a.due.lock().unwrap().clear();
        h.deadline_ms = now_ms() - 1000;
        h.deadline_boot = Some(BootDeadline {
            boot_id: "another-boot".into(),
            ms: u64::MAX,
        });
        a.store().put(&h).unwrap();
        let _ = a.expire_due();
        assert_eq!(a.get(&id).unwrap().state, HoldState::Denied);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
