//! The audit log: every event of a watched session, every finding, decision, hold, approval,
//! denial and kill-switch change, appended to one SQLite file (`[audit] store`) as the leaves
//! of an RFC 6962 Merkle tree, with signed checkpoints (C2SP signed notes) committing to it.
//!
//! The pipeline hands events to the writer thread through a lock-free SPSC ring (`ringbuf`):
//! publishing never waits on the store; when the ring is full the event is dropped and counted
//! (`dropped`). Every other record goes through a channel that is never full, so no decision is
//! lost; when the store refuses a write (busy, disk full) the writer keeps those records and
//! writes them first once it takes writes again (`pending`), and counts the events (`unwritten`). [`Audit::seal`] returns once its record and a checkpoint covering it are on disk:
//! an approval's resume and a kill wait for it.
pub mod bench;
pub mod export;
mod journal;
pub mod ocsf;
mod writer;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};

use ringbuf::{traits::Producer as _, traits::Split as _, HeapProd, HeapRb};

use crate::{config, model::event::Event};

pub use writer::{open_key, vkey_path};

/// One record for the writer: its kind, the session it is about, and its body.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub kind: std::borrow::Cow<'static, str>,
    pub trace_id: Option<String>,
    pub body: serde_json::Value,
}

enum Command {
    Record(Entry),
    /// Appended, then a checkpoint; the answer says when both are on disk.
    Seal(Entry, Arc<Sealing>),
}

/// A seal's answer, and its caller's giving up: a seal is either written and answered, or
/// given up before the writer took it and never written (a decision reported as failed must
/// not appear in the log later).
#[derive(Default)]
struct Sealing {
    state: Mutex<SealState>,
    answered: std::sync::Condvar,
}

#[derive(Default)]
enum SealState {
    #[default]
    Waiting,
    Done(Result<u64, String>),
    GivenUp,
}

impl Sealing {
    /// The answer, unless the seal already has one or was given up.
    fn answer_if_waiting(&self, r: Result<u64, String>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*s, SealState::Waiting) {
            *s = SealState::Done(r);
            self.answered.notify_all();
        }
    }

    /// The answer within `limit`; after it, the seal is given up (unless the writer holds it:
    /// then its answer is awaited, a commit being bounded by the store's busy timeout).
    fn wait(&self, limit: Duration) -> Result<u64, String> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (mut s, _) = self
            .answered
            .wait_timeout_while(s, limit, |s| matches!(s, SealState::Waiting))
            .unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *s, SealState::GivenUp) {
            SealState::Done(r) => r,
            _ => Err(format!("no audit checkpoint within {limit:?}")),
        }
    }
}

#[derive(Default)]
pub struct AuditCounters {
    /// Records appended.
    pub records: AtomicU64,
    /// Events dropped because the ring to the writer was full.
    pub dropped: AtomicU64,
    /// Checkpoints signed.
    pub checkpoints: AtomicU64,
    /// Failed writes (each is logged).
    pub errors: AtomicU64,
    /// Events not written because the store refused the write (busy, disk full).
    pub unwritten: AtomicU64,
    /// Records waiting in memory for the store to take them again (never dropped).
    pub pending: AtomicU64,
}

pub struct Audit {
    /// The store, for the few reads the daemon makes (the writer thread owns the writes).
    store: Option<std::path::PathBuf>,
    events: Option<Mutex<HeapProd<Arc<Event>>>>,
    commands: Option<Mutex<mpsc::Sender<Command>>>,
    pub counters: Arc<AuditCounters>,
}

/// How long a decision waits for its checkpoint before it is reported as failed.
const SEAL_DEADLINE: Duration = Duration::from_secs(10);

/// `has_record`'s lookups, each through an index (the store may hold millions of events): a
/// session's records by `audit_trace`, records of no session by `audit_records` (which leaves
/// out events). `trace_id IS ?1` would use neither and read the whole log once per lookup: a
/// restarted daemon looking for a few dozen holds' records took minutes.
const HAS_RECORD_OF_SESSION: &str = "SELECT record FROM audit WHERE trace_id = ?1 AND kind = ?2";
const HAS_RECORD_OF_NONE: &str =
    "SELECT record FROM audit WHERE kind = ?2 AND kind <> 'event' AND trace_id IS NULL AND ?1 IS NULL";

impl Audit {
    /// No audit log (`[audit] enabled = false`).
    pub fn disabled() -> Audit {
        Audit {
            store: None,
            events: None,
            commands: None,
            counters: Default::default(),
        }
    }

    /// Opens the store and the key and starts the writer thread.
    pub fn open(cfg: &config::Audit) -> anyhow::Result<Audit> {
        if !cfg.enabled {
            return Ok(Audit::disabled());
        }
        let (prod, cons) = HeapRb::<Arc<Event>>::new(cfg.ring_events.max(1024)).split();
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(AuditCounters::default());
        writer::start(cfg, cons, rx, counters.clone())?;
        if let Some(to) = &cfg.export {
            let sink = match to.as_str() {
                "stdout" => export::Sink::Stdout,
                "" => anyhow::bail!("[audit] export: want \"stdout\" or a file path, not \"\""),
                p => export::Sink::File {
                    path: p.into(),
                    max_bytes: cfg.export_max_bytes.max(4096),
                    keep: cfg.export_keep,
                },
            };
            export::start(
                cfg.store.clone(),
                sink,
                Duration::from_secs(1),
                counters.clone(),
            )?;
        }
        Ok(Audit {
            store: Some(cfg.store.clone()),
            events: Some(Mutex::new(prod)),
            commands: Some(Mutex::new(tx)),
            counters,
        })
    }

    pub fn status(&self) -> crate::model::protocol::AuditStatus {
        let c = &self.counters;
        crate::model::protocol::AuditStatus {
            enabled: self.commands.is_some(),
            records: c.records.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            unwritten: c.unwritten.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
        }
    }

    /// Whether the log has a `kind` record of session `trace` whose body has `field` `id`
    /// (true without a log: nothing is missing from it).
    pub fn has_record(
        &self,
        trace: Option<&str>,
        kind: &str,
        field: &str,
        id: &str,
    ) -> anyhow::Result<bool> {
        let Some(db) = self.reader()? else {
            return Ok(true);
        };
        let mut q = db.prepare(match trace {
            Some(_) => HAS_RECORD_OF_SESSION,
            None => HAS_RECORD_OF_NONE,
        })?;
        let needle = format!("\"{field}\":\"{id}\"");
        let mut rows = q.query(rusqlite::params![trace, kind])?;
        while let Some(r) = rows.next()? {
            if r.get::<_, String>(0)?.contains(&needle) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A read-only connection to the store; None when the log is disabled.
    fn reader(&self) -> rusqlite::Result<Option<rusqlite::Connection>> {
        self.store
            .as_ref()
            .map(|s| {
                rusqlite::Connection::open_with_flags(s, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            })
            .transpose()
    }

    /// An event, as published (findings go as `finding` and `decision` records).
    pub fn event(&self, ev: &Arc<Event>) {
        let Some(p) = &self.events else { return };
        if let crate::model::event::Detail::Finding(f) = &ev.detail {
            self.record(
                "finding",
                Some(&ev.trace_id),
                serde_json::to_value(ev.as_ref()),
            );
            let reason = format!(
                "{} {} matched ({} in {} mode): {}",
                f.detector.as_str(),
                f.rule,
                name(&f.action),
                name(&f.mode),
                name(&f.outcome)
            );
            let body = serde_json::json!({
                "event": ev.seq,
                "trigger": f.evidence.last().map(|e| e.seq),
                "rule": f.rule,
                "detector": f.detector,
                "action": f.action,
                "mode": f.mode,
                "outcome": f.outcome,
                "hold": f.hold,
                "score": f.score,
                "reason": reason,
                "policy_version": f.policy_version,
            });
            self.record("decision", Some(&ev.trace_id), Ok(body));
            return;
        }
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        if p.try_push(ev.clone()).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A record that must not be lost (never dropped; the channel is unbounded).
    pub fn record(
        &self,
        kind: &'static str,
        trace_id: Option<&str>,
        body: Result<serde_json::Value, serde_json::Error>,
    ) {
        let Some(c) = &self.commands else { return };
        let Some(body) = self.body(kind, body) else {
            return;
        };
        let entry = Entry {
            kind: kind.into(),
            trace_id: trace_id.map(String::from),
            body,
        };
        let c = c.lock().unwrap_or_else(|e| e.into_inner());
        if c.send(Command::Record(entry)).is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(kind, "the audit writer is gone: record lost");
        }
    }

    fn body(
        &self,
        kind: &str,
        body: Result<serde_json::Value, serde_json::Error>,
    ) -> Option<serde_json::Value> {
        match body {
            Ok(b) => Some(b),
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(kind, "an audit record could not be encoded: {e}");
                None
            }
        }
    }

    /// Appends the record and a checkpoint covering it, and returns once both are on disk
    /// (its sequence number). When that fails (the store busy, its disk full), the record is
    /// kept and written once the store takes writes again: for what is carried out either way
    /// (a hold, a denial, a kill, a stop).
    pub fn seal(
        &self,
        kind: &'static str,
        trace_id: Option<&str>,
        body: Result<serde_json::Value, serde_json::Error>,
    ) -> Result<u64, String> {
        let kept = body.as_ref().ok().cloned();
        let r = self.seal_only(kind, trace_id, body);
        if let (Err(_), Some(b)) = (&r, kept) {
            self.record(kind, trace_id, Ok(b));
        }
        r
    }

    /// As `seal`, but a record that could not be sealed is never written: for a decision that
    /// takes effect only once sealed (an approval), so the log never shows one not carried out.
    pub fn seal_only(
        &self,
        kind: &'static str,
        trace_id: Option<&str>,
        body: Result<serde_json::Value, serde_json::Error>,
    ) -> Result<u64, String> {
        let Some(c) = &self.commands else {
            return Ok(0);
        };
        let body = self
            .body(kind, body)
            .ok_or_else(|| format!("the {kind} record could not be encoded"))?;
        let sealing = Arc::new(Sealing::default());
        let entry = Entry {
            kind: kind.into(),
            trace_id: trace_id.map(String::from),
            body,
        };
        c.lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Command::Seal(entry, sealing.clone()))
            .map_err(|_| "the audit writer is gone".to_string())?;
        let r = sealing.wait(SEAL_DEADLINE);
        if let Err(e) = &r {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(kind, "sealing an audit record: {e}");
        }
        r
    }
}

/// A unit enum's serde name.
pub(crate) fn name<T: serde::Serialize>(t: &T) -> String {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Reads the verifier key written beside the signing key.
pub fn read_vkey(key: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(vkey_path(key)).map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lookups a restarted daemon makes for each unmarked hold read through an index,
    /// whatever the log's size.
    #[test]
    fn a_record_lookup_reads_through_an_index() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(writer::SCHEMA).unwrap();
        for (sql, trace) in [
            (HAS_RECORD_OF_SESSION, Some("t")),
            (HAS_RECORD_OF_NONE, None),
        ] {
            let mut q = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = q
                .query_map(rusqlite::params![trace, "hold"], |r| r.get(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                plan.iter().all(|p| p.contains("USING INDEX")),
                "{sql}: {plan:?}"
            );
        }
    }

    #[test]
    fn a_seal_is_checkpointed_at_once_and_an_idle_log_stays_still() {
        let mut b = [0u8; 8];
        crate::model::ids::fill_random(&mut b);
        let dir = std::env::temp_dir().join(format!("watcher-audit-{}", u64::from_ne_bytes(b)));
        let cfg = config::Audit {
            store: dir.join("audit.db"),
            key: dir.join("audit.key"),
            witness: Some(dir.join("witness.jsonl")),
            checkpoint_interval: Duration::from_millis(20),
            ..Default::default()
        };
        let a = Audit::open(&cfg).unwrap();
        let seq = a
            .seal(
                "policy_reload",
                None,
                Ok(serde_json::json!({"why": "test"})),
            )
            .unwrap();
        assert_eq!(seq, 1);
        // The record and its checkpoint are committed when seal returns.
        assert_eq!(a.counters.records.load(Ordering::Relaxed), 2);
        assert_eq!(a.counters.checkpoints.load(Ordering::Relaxed), 1);
        let witness = std::fs::read_to_string(dir.join("witness.jsonl")).unwrap();
        assert!(witness.contains("\"size\":1"), "{witness}");
        // Ten intervals with nothing new: no checkpoint of the checkpoint.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(a.counters.checkpoints.load(Ordering::Relaxed), 1);
        assert_eq!(a.counters.records.load(Ordering::Relaxed), 2);
        let vkey = read_vkey(&cfg.key).unwrap();
        assert!(watcher_tlog::NoteVerifier::parse(&vkey).is_ok(), "{vkey}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A store another writer holds locked: records wait and are written once it is free, an
    /// approval that could not be sealed is never written, a denial that could not is.
    #[test]
    fn records_wait_for_a_busy_store_and_an_unsealed_approval_never_appears() {
        let mut b = [0u8; 8];
        crate::model::ids::fill_random(&mut b);
        let dir = std::env::temp_dir().join(format!("watcher-audit-{}", u64::from_ne_bytes(b)));
        let cfg = config::Audit {
            store: dir.join("audit.db"),
            key: dir.join("audit.key"),
            checkpoint_interval: Duration::from_millis(20),
            ..Default::default()
        };
        let a = Audit::open(&cfg).unwrap();
        a.seal("policy_reload", None, Ok(serde_json::json!({})))
            .unwrap();
        let other = rusqlite::Connection::open(&cfg.store).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        a.record("finding", Some("t"), Ok(serde_json::json!({"n": 1})));
        let approval = a.seal_only("approval", Some("t"), Ok(serde_json::json!({"n": 2})));
        assert!(approval.is_err(), "sealed in a locked store: {approval:?}");
        let denial = a.seal("denial", Some("t"), Ok(serde_json::json!({"n": 3})));
        assert!(denial.is_err(), "sealed in a locked store: {denial:?}");
        assert!(a.counters.pending.load(Ordering::Relaxed) >= 1);
        other.execute_batch("COMMIT").unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while a.counters.pending.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            a.counters.pending.load(Ordering::Relaxed),
            0,
            "still waiting"
        );
        let kinds: Vec<String> = other
            .prepare("SELECT kind FROM audit WHERE kind != 'checkpoint' ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(kinds, ["policy_reload", "finding", "denial"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
