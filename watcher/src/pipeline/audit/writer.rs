//! The audit writer: one thread that owns the store, the tree's frontier and the key.
//!
//! A record is `{"seq", "kind", "ts", "trace_id", "prev", "body"}`, hashed exactly as stored
//! (serde_json, no whitespace). `prev` is the previous record's leaf hash: the tree proves
//! what a checkpoint covers, the chain names the first edited record. A checkpoint is itself
//! a record (kind `checkpoint`) whose body has the signed note of the tree of every record
//! before it, and the frontier (so a restart or a pruned prefix need not rehash the past).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ringbuf::{traits::Consumer as _, HeapCons};
use watcher_tlog::{hex, hex_str, leaf_hash, unhex, Checkpoint, Frontier, Hash, NoteSigner};

use super::{AuditCounters, Command, Entry, SealState};
use crate::{config, model::event::Event};

/// The verifier key file beside the signing key.
pub fn vkey_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'+'))
        .unwrap_or_else(|| "localhost".into())
}

/// The signing key, created (mode 0600) with its verifier key on first use.
pub fn open_key(path: &Path) -> anyhow::Result<NoteSigner> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d).with_context(|| format!("{}", d.display()))?;
            }
            let mut seed = [0u8; 32];
            crate::model::ids::fill_random(&mut seed);
            let text = format!("watcher/{} {}\n", host_name(), hex(&seed));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating the audit key {}", path.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            tracing::info!(key = %path.display(), "created the audit signing key");
            text
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (name, seed) = text
        .trim()
        .split_once(' ')
        .and_then(|(n, s)| Some((n, unhex(s)?)))
        .with_context(|| format!("{}: want `<name> <64 hex digits>`", path.display()))?;
    let signer = NoteSigner::new(name, &seed);
    let vpath = vkey_path(path);
    if std::fs::read_to_string(&vpath)
        .ok()
        .map(|s| s.trim().to_string())
        != Some(signer.vkey())
    {
        std::fs::write(&vpath, format!("{}\n", signer.vkey()))
            .with_context(|| format!("writing {}", vpath.display()))?;
    }
    Ok(signer)
}

/// The tree so far: its frontier and the last leaf (the next record's `prev`).
#[derive(Clone)]
struct Tree {
    frontier: Frontier,
    prev: Hash,
    /// The record being written (reused: one allocation per commit, not per record).
    buf: Vec<u8>,
}

pub(super) struct Writer {
    db: rusqlite::Connection,
    signer: NoteSigner,
    tree: Tree,
    witness: Option<PathBuf>,
    witness_url: Option<String>,
    interval: Duration,
    last_checkpoint: Instant,
    /// The tree size of the last checkpoint.
    sealed: u64,
    retain: Option<Duration>,
    max_bytes: Option<u64>,
    last_retention: Instant,
    /// A prune stopped at its step: the next one follows the next commit.
    prune_more: bool,
    counters: Arc<AuditCounters>,
    /// Records a failed commit did not write (the store busy, its disk full), in order: the
    /// next commit writes them first. Never dropped: a finding, decision or hold waits here
    /// until the store takes it.
    unwritten: Vec<Entry>,
    /// `unwritten` on disk, so a daemon killed before the store takes them loses none.
    journal: super::journal::Journal,
    /// Since when commits fail, and when the last one was tried: a failing store is retried
    /// every `RETRY_EVERY`, and said in the log once a minute, not every tick.
    failing: Option<(Instant, Instant)>,
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a store that refused a commit is tried again (seals are tried at once).
const RETRY_EVERY: Duration = Duration::from_millis(250);
const SAY_FAILING_EVERY: Duration = Duration::from_secs(60);

/// WAL with FULL: every commit is on disk before it returns (a seal's answer means it).
/// Large pages, a 64 MB WAL between folds and a 32 MB cache: a third more inserts per second
/// than SQLite's defaults on the benchmark's disk (`cargo xtask bench --only audit`). The
/// page size applies to a new store only.
pub(super) const PRAGMAS: &str = "PRAGMA page_size=16384; PRAGMA auto_vacuum=INCREMENTAL;
    PRAGMA journal_mode=WAL;
    PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=4000; PRAGMA journal_size_limit=67108864;
    PRAGMA cache_size=-32768;";

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    trace_id TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_trace ON audit(trace_id) WHERE trace_id IS NOT NULL;
DROP INDEX IF EXISTS audit_kind;
-- Every kind but events (the bulk), for queries by kind and finding the last checkpoint.
CREATE INDEX IF NOT EXISTS audit_records ON audit(kind, seq) WHERE kind <> 'event';
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

pub(super) fn start(
    cfg: &config::Audit,
    events: HeapCons<Arc<Event>>,
    commands: mpsc::Receiver<Command>,
    counters: Arc<AuditCounters>,
) -> anyhow::Result<()> {
    let mut w = Writer::open(cfg, counters)?;
    std::thread::Builder::new()
        .name("audit".into())
        .spawn(move || w.run(events, commands))
        .context("starting the audit writer")?;
    Ok(())
}

/// The frontier and last leaf after the store's last record: from the last checkpoint's
/// frontier, plus the records after it.
fn recover(db: &rusqlite::Connection) -> anyhow::Result<(Frontier, Hash, u64)> {
    let last: Option<(u64, String)> = db
        .query_row(
            // `kind <> 'event'` lets SQLite use the partial index (it does not infer it).
            "SELECT seq, record FROM audit WHERE kind = 'checkpoint' AND kind <> 'event' \
             ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let (mut frontier, from) = match last {
        None => (Frontier::default(), 0u64),
        Some((seq, text)) => {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let size = v["body"]["size"]
                .as_u64()
                .context("checkpoint without size")?;
            let hashes = v["body"]["frontier"]
                .as_array()
                .context("checkpoint without frontier")?
                .iter()
                .map(|h| h.as_str().and_then(unhex))
                .collect::<Option<Vec<_>>>()
                .context("a malformed frontier hash")?;
            let f = Frontier::from_parts(size, hashes).context("a frontier of the wrong size")?;
            (f, seq - 1)
        }
    };
    let sealed = frontier.size;
    let mut prev = [0u8; 32];
    let mut q = db.prepare("SELECT seq, record FROM audit WHERE seq > ?1 ORDER BY seq")?;
    let mut rows = q.query([from as i64])?;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let text: String = r.get(1)?;
        anyhow::ensure!(
            seq as u64 == frontier.size + 1,
            "record {} follows record {}",
            seq,
            frontier.size
        );
        prev = leaf_hash(text.as_bytes());
        frontier.push(prev);
    }
    Ok((frontier, prev, sealed))
}

/// A record as stored and hashed, serialised straight from the event (no `Value` in between).
#[derive(serde::Serialize)]
struct Record<'a, B> {
    seq: u64,
    kind: &'a str,
    ts: &'a str,
    trace_id: Option<&'a str>,
    prev: &'a str,
    body: &'a B,
}

pub(super) const INSERT: &str =
    "INSERT INTO audit (seq, ts, kind, trace_id, record) VALUES (?1, ?2, ?3, ?4, ?5)";

impl Tree {
    /// Appends one record; `ts` is the commit's time (one clock read per transaction).
    fn append<B: serde::Serialize>(
        &mut self,
        ins: &mut rusqlite::CachedStatement<'_>,
        ts: &str,
        kind: &str,
        trace_id: Option<&str>,
        body: &B,
    ) -> anyhow::Result<u64> {
        let seq = self.frontier.size + 1;
        let mut prev = [0u8; 64];
        self.buf.clear();
        serde_json::to_writer(
            &mut self.buf,
            &Record {
                seq,
                kind,
                ts,
                trace_id,
                prev: hex_str(&self.prev, &mut prev),
                body,
            },
        )?;
        let text = std::str::from_utf8(&self.buf)?;
        ins.execute(rusqlite::params![seq as i64, ts, kind, trace_id, text])?;
        self.prev = leaf_hash(&self.buf);
        self.frontier.push(self.prev);
        Ok(seq)
    }

    /// Signs the tree of every record so far and appends the checkpoint record.
    fn checkpoint(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        ts: &str,
        signer: &NoteSigner,
    ) -> anyhow::Result<(u64, String)> {
        let c = Checkpoint {
            origin: signer.name().to_string(),
            size: self.frontier.size,
            root: self.frontier.root(),
        };
        let note = signer.sign(&c);
        let body = serde_json::json!({
            "size": c.size,
            "root": hex(&c.root),
            "note": note,
            "frontier": self.frontier.hashes.iter().map(hex).collect::<Vec<_>>(),
        });
        let mut ins = tx.prepare_cached(INSERT)?;
        self.append(&mut ins, ts, "checkpoint", None, &body)?;
        Ok((c.size, note))
    }
}

/// How often retention is checked (and at every start, on the writer's thread).
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Records one retention step removes at most (about 30 MB of a storm's events).
const PRUNE_STEP: i64 = 100_000;

/// Records per transaction at most (a burst is committed in parts).
pub(super) const BATCH: usize = 8192;

impl Writer {
    /// Opens (or creates) the store and the key, and recovers the tree.
    pub(super) fn open(
        cfg: &config::Audit,
        counters: Arc<AuditCounters>,
    ) -> anyhow::Result<Writer> {
        let signer = open_key(&cfg.key)?;
        let store = &cfg.store;
        // The log carries every command line and path of every session: root's only.
        crate::sys::files::private_store(store)
            .with_context(|| format!("creating the audit store {}", store.display()))?;
        let db = rusqlite::Connection::open(store)
            .with_context(|| format!("opening the audit store {}", store.display()))?;
        // Another writer (an operator's sqlite3, a backup) makes a commit wait at most this
        // long: then it fails, its records wait in memory and the writer goes on reading
        // events instead of stalling behind the lock.
        db.busy_timeout(BUSY_TIMEOUT)
            .and_then(|_| db.execute_batch(PRAGMAS))
            .and_then(|_| db.execute_batch(SCHEMA))
            .with_context(|| format!("the audit store {}", store.display()))?;
        let (frontier, prev, sealed) = recover(&db).with_context(|| {
            format!(
                "the audit store {} (run watcher-verify on it)",
                store.display()
            )
        })?;
        if let Some(w) = &cfg.witness {
            if let Some(d) = w.parent() {
                std::fs::create_dir_all(d).with_context(|| format!("{}", d.display()))?;
            }
        }
        // What a stopped daemon could not write waits first in line.
        let mut journal = super::journal::Journal::beside(store);
        let unwritten = journal.load();
        if !unwritten.is_empty() {
            tracing::warn!(
                records = unwritten.len(),
                "records the audit store refused before the daemon stopped: written first"
            );
        }
        let w = Writer {
            db,
            signer,
            tree: Tree {
                frontier,
                prev,
                buf: Vec::new(),
            },
            witness: cfg.witness.clone(),
            witness_url: cfg.witness_url.clone(),
            interval: cfg.checkpoint_interval,
            last_checkpoint: Instant::now(),
            sealed,
            retain: cfg.retain,
            max_bytes: cfg.max_bytes.filter(|b| *b > 0),
            // Due at once: the first check runs on the writer's thread, not before the
            // daemon is up.
            last_retention: Instant::now()
                .checked_sub(RETENTION_EVERY)
                .unwrap_or_else(Instant::now),
            prune_more: false,
            counters,
            unwritten,
            journal,
            failing: None,
        };
        w.counters
            .records
            .store(w.tree.frontier.size, Ordering::Relaxed);
        w.counters
            .pending
            .store(w.unwritten.len() as u64, Ordering::Relaxed);
        tracing::info!(store = %store.display(), records = w.tree.frontier.size, "audit log open");
        Ok(w)
    }

    fn run(&mut self, mut events: HeapCons<Arc<Event>>, commands: mpsc::Receiver<Command>) {
        let tick = Duration::from_millis(5);
        loop {
            let mut batch: Vec<Command> = Vec::new();
            match commands.recv_timeout(tick) {
                Ok(c) => batch.push(c),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(c) = commands.try_recv() {
                batch.push(c);
            }
            loop {
                let evs: Vec<Arc<Event>> = events.pop_iter().take(BATCH).collect();
                let more = evs.len() == BATCH;
                let cmds = if more {
                    Vec::new()
                } else {
                    std::mem::take(&mut batch)
                };
                self.commit(&evs, cmds);
                if !more {
                    break;
                }
            }
            // After the commit: what waited to be sealed is on disk before a prune step runs.
            if self.prune_more || self.last_retention.elapsed() >= RETENTION_EVERY {
                self.last_retention = Instant::now();
                if let Err(e) = self.retention(std::time::SystemTime::now()) {
                    self.prune_more = false;
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("pruning the audit log: {e:#}");
                }
            }
        }
    }

    /// Appends what earlier commits could not write, the events, then the commands, with a
    /// checkpoint if one is sealed or due, in one transaction; answers the seals once it is on
    /// disk. When the store refuses (busy, disk full): the records are kept for the next commit,
    /// the events are counted (`unwritten`), and the seals are answered with the error (their
    /// callers did not act, so their records must not appear later).
    pub(super) fn commit(&mut self, events: &[Arc<Event>], commands: Vec<Command>) {
        let due = self.last_checkpoint.elapsed() >= self.interval;
        let has_seal = commands.iter().any(|c| matches!(c, Command::Seal(..)));
        if let Some((_, tried)) = self.failing {
            if !has_seal && tried.elapsed() < RETRY_EVERY {
                // Not yet: the records wait with the others, the events are not written.
                self.keep(commands);
                self.counters
                    .unwritten
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                return;
            }
        }
        if events.is_empty()
            && commands.is_empty()
            && self.unwritten.is_empty()
            // The last checkpoint's own record needs no checkpoint of its own: an idle log
            // stays still.
            && !(due && self.tree.frontier.size > self.sealed + 1)
        {
            return;
        }
        let start = self.tree.clone();
        let sealed_before = self.sealed;
        let earlier = std::mem::take(&mut self.unwritten);
        let tree = &mut self.tree;
        let (db, signer, sealed) = (&self.db, &self.signer, &mut self.sealed);
        let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        // Each seal taken is locked from its append to its answer, so a caller that gives up
        // meanwhile waits for the answer instead of missing a record that is on disk.
        let mut seals: Vec<(std::sync::MutexGuard<'_, SealState>, &super::Sealing, u64)> =
            Vec::new();
        let r = (|| -> anyhow::Result<Option<String>> {
            let tx = db.unchecked_transaction()?;
            {
                let mut ins = tx.prepare_cached(INSERT)?;
                for e in &earlier {
                    tree.append(&mut ins, &ts, &e.kind, e.trace_id.as_deref(), &e.body)?;
                }
                for ev in events {
                    tree.append(&mut ins, &ts, "event", Some(&ev.trace_id), ev.as_ref())?;
                }
                for c in &commands {
                    let (e, sealing) = match c {
                        Command::Record(e) => (e, None),
                        Command::Seal(e, s) => (e, Some(s)),
                    };
                    let guard = match sealing {
                        Some(s) => {
                            let g = s.state.lock().unwrap_or_else(|e| e.into_inner());
                            if matches!(*g, SealState::GivenUp) {
                                continue;
                            }
                            Some((g, s.as_ref()))
                        }
                        None => None,
                    };
                    let seq = tree.append(&mut ins, &ts, &e.kind, e.trace_id.as_deref(), &e.body);
                    if let Some((g, s)) = guard {
                        seals.push((g, s, *seq.as_ref().unwrap_or(&0)));
                    }
                    seq?;
                }
            }
            let grew = tree.frontier.size > *sealed + 1;
            let note =
                if !seals.is_empty() || (due && grew) || tree.frontier.size - *sealed >= 65536 {
                    let (size, note) = tree.checkpoint(&tx, &ts, signer)?;
                    *sealed = size;
                    Some(note)
                } else {
                    None
                };
            tx.commit()?;
            Ok(note)
        })();
        let answer = |seals: Vec<(std::sync::MutexGuard<'_, SealState>, &super::Sealing, u64)>,
                      err: Option<&str>| {
            for (mut g, s, seq) in seals {
                *g = SealState::Done(match err {
                    None => Ok(seq),
                    Some(e) => Err(format!("writing the audit log: {e}")),
                });
                s.answered.notify_all();
            }
        };
        match r {
            Ok(note) => {
                if let Some((since, _)) = self.failing.take() {
                    tracing::info!(
                        records = earlier.len(),
                        "the audit store takes writes again after {:?}",
                        since.elapsed()
                    );
                }
                if !earlier.is_empty() {
                    self.journal.clear();
                }
                self.counters.pending.store(0, Ordering::Relaxed);
                self.counters
                    .records
                    .store(self.tree.frontier.size, Ordering::Relaxed);
                if let Some(note) = note {
                    self.last_checkpoint = Instant::now();
                    self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                    self.witness(&note);
                }
                answer(seals, None);
            }
            Err(e) => {
                let err = format!("{e:#}");
                answer(seals, Some(&err));
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                match self.failing {
                    None => tracing::error!(
                        "writing the audit log: {e:#} (records wait in memory; events are counted as unwritten)"
                    ),
                    Some((since, _)) if since.elapsed() >= SAY_FAILING_EVERY => {
                        tracing::error!("writing the audit log still fails: {e:#}")
                    }
                    _ => {}
                }
                let since = match self.failing {
                    Some((since, _)) if since.elapsed() < SAY_FAILING_EVERY => since,
                    _ => now,
                };
                self.failing = Some((since, now));
                self.tree = start;
                self.sealed = sealed_before;
                self.unwritten = earlier;
                self.counters
                    .unwritten
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                // The records wait for the next commit (on disk too); the seals get the error
                // (those the transaction did not reach too).
                let mut kept = Vec::new();
                for c in commands {
                    match c {
                        Command::Record(e) => kept.push(e),
                        Command::Seal(_, s) => {
                            s.answer_if_waiting(Err(format!("writing the audit log: {err}")))
                        }
                    }
                }
                self.journal.append(&kept);
                self.unwritten.extend(kept);
                self.counters
                    .pending
                    .store(self.unwritten.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Records that wait for the store (a commit with no seal, between two tries).
    fn keep(&mut self, commands: Vec<Command>) {
        let kept: Vec<Entry> = commands
            .into_iter()
            .filter_map(|c| match c {
                Command::Record(e) => Some(e),
                Command::Seal(..) => None,
            })
            .collect();
        self.journal.append(&kept);
        self.unwritten.extend(kept);
        self.counters
            .pending
            .store(self.unwritten.len() as u64, Ordering::Relaxed);
    }

    /// Prunes the oldest whole checkpoint ranges that `retain` or `max_bytes` no longer keep:
    /// every record before a checkpoint goes, the checkpoint stays as the new first record (its
    /// frontier lets the verifier go on from there), and a sealed `retention` record says what
    /// was removed and why. Returns how many records were removed.
    pub(super) fn retention(&mut self, now: std::time::SystemTime) -> anyhow::Result<u64> {
        if self.retain.is_none() && self.max_bytes.is_none() {
            return Ok(0);
        }
        let one = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<Option<i64>> {
            self.db.query_row(sql, p, |r| r.get(0))
        };
        let Some(first) = one("SELECT min(seq) FROM audit", &[])? else {
            return Ok(0);
        };
        let last = one("SELECT max(seq) FROM audit", &[])?.unwrap_or(first);
        let mut anchor: Option<(i64, &str)> = None;
        let cutoff = self
            .retain
            .and_then(|r| now.checked_sub(r))
            .map(|t| humantime::format_rfc3339_micros(t).to_string());
        if let Some(cutoff) = &cutoff {
            if let Some(c) = one(
                "SELECT max(seq) FROM audit WHERE kind = 'checkpoint' AND kind <> 'event' \
                 AND seq > ?1 AND ts < ?2",
                &[&first, cutoff],
            )? {
                anchor = Some((c, "age"));
            }
        }
        if let Some(max) = self.max_bytes {
            let page: i64 = self.db.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages: i64 = self.db.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let free: i64 = self
                .db
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let used = (pages - free) * page;
            if used as u64 > max {
                // Down to nine tenths of the limit, assuming records of even size.
                let keep = (max as f64 * 0.9 / used as f64 * (last - first + 1) as f64) as i64;
                let want = last - keep;
                let c = one(
                    "SELECT min(seq) FROM audit WHERE kind = 'checkpoint' AND kind <> 'event' \
                     AND seq >= ?1",
                    &[&want],
                )?
                .or(one(
                    "SELECT max(seq) FROM audit WHERE kind = 'checkpoint' AND kind <> 'event' \
                     AND seq > ?1",
                    &[&first],
                )?);
                if let Some(c) = c.filter(|c| anchor.is_none_or(|(a, _)| *c > a)) {
                    anchor = Some((c, "size"));
                }
            }
        }
        let Some((goal, reason)) = anchor.filter(|(a, _)| *a > first) else {
            self.prune_more = false;
            return Ok(0);
        };
        // A bounded step (whole checkpoint ranges still): the writer commits and answers seals
        // between steps, so pruning a large store never holds a decision for long.
        let anchor = if goal - first > PRUNE_STEP {
            one(
                "SELECT max(seq) FROM audit WHERE kind = 'checkpoint' AND kind <> 'event' \
                 AND seq > ?1 AND seq <= ?2",
                &[&first, &(first + PRUNE_STEP)],
            )?
            .or(one(
                "SELECT min(seq) FROM audit WHERE kind = 'checkpoint' AND kind <> 'event' \
                 AND seq > ?1",
                &[&first],
            )?)
            .map_or(goal, |c| c.min(goal))
        } else {
            goal
        };
        self.prune_more = anchor < goal;
        let removed = (anchor - first) as u64;
        let ts = humantime::format_rfc3339_micros(now).to_string();
        let start = self.tree.clone();
        let (db, signer, tree) = (&self.db, &self.signer, &mut self.tree);
        let r = (|| -> anyhow::Result<(u64, String)> {
            let tx = db.unchecked_transaction()?;
            // The trigger guards against mistakes; this is the one deletion the log allows,
            // and it is itself recorded.
            tx.execute_batch("DROP TRIGGER audit_no_delete;")?;
            tx.execute("DELETE FROM audit WHERE seq < ?1", [anchor])?;
            tx.execute_batch(SCHEMA)?;
            {
                let mut ins = tx.prepare_cached(INSERT)?;
                let body = serde_json::json!({
                    "reason": reason,
                    "pruned_through": anchor - 1,
                    "first_kept": anchor,
                    "removed": removed,
                    "older_than": cutoff,
                    "max_bytes": self.max_bytes,
                });
                tree.append(&mut ins, &ts, "retention", None, &body)?;
            }
            let sealed = tree.checkpoint(&tx, &ts, signer)?;
            tx.commit()?;
            Ok(sealed)
        })();
        match r {
            Ok((size, note)) => {
                self.sealed = size;
                self.last_checkpoint = Instant::now();
                self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .records
                    .store(self.tree.frontier.size, Ordering::Relaxed);
                self.witness(&note);
                // Hands the freed pages back to the file system (stores made before
                // auto_vacuum was set only reuse them).
                let _ = self.db.execute_batch("PRAGMA incremental_vacuum;");
                tracing::info!(removed, reason, first_kept = anchor, "pruned the audit log");
                Ok(removed)
            }
            Err(e) => {
                self.tree = start;
                Err(e)
            }
        }
    }

    /// Appends the checkpoint to the witness file (synced) and POSTs it, off this thread.
    fn witness(&self, note: &str) {
        let line = serde_json::json!({ "size": self.sealed, "note": note }).to_string();
        if let Some(path) = &self.witness {
            // One line or nothing: a write cut short (the disk full) is cut off again, or the
            // next line would follow half a line.
            let r = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    let before = f.metadata()?.len();
                    let r = f.write_all(format!("{line}\n").as_bytes());
                    if r.is_err() {
                        let _ = f.set_len(before);
                    }
                    r?;
                    f.sync_data()
                });
            if let Err(e) = r {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(witness = %path.display(), "appending a checkpoint: {e}");
            }
        }
        if let Some(url) = self.witness_url.clone() {
            let counters = self.counters.clone();
            std::thread::spawn(move || {
                let r = ureq::post(&url)
                    .timeout(Duration::from_secs(5))
                    .set("content-type", "application/json")
                    .send_string(&line);
                if let Err(e) = r {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%url, "posting a checkpoint to the witness: {e}");
                }
            });
        }
    }
}
