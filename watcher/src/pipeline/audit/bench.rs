//! `watcher bench-audit STREAM --dir DIR`: what the audit log costs, with the shipped
//! durability (WAL, `synchronous=FULL`, a checkpoint every second), on the disk under DIR.
//!
//! - Ingest: the writer appending a recorded stream's events (cycled to `--events`), against
//!   plain inserts of the same events as JSON into the same table in the same transactions
//!   (what storing them costs without the tree, the chain and the signatures), interleaved
//!   round by round; and the rate through the real hand-off (ring, writer thread, 5 ms tick).
//! - Bytes per 1,000 events in the store file, and in the plain one.
//! - A seal (an approval record and its checkpoint on disk, and the witness synced), the time
//!   it adds to an approval, against one plain durable insert, interleaved.
//!
//! The last round's store is left in DIR (`audit.db`, `audit.key.pub`) for `watcher-verify`.
use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{writer, Audit, AuditCounters, Command, Entry};
use crate::{config, model::event::Event};

pub fn run(stream: &Path, dir: &Path, events: usize, rounds: u32) -> anyhow::Result<()> {
    let recorded = crate::rules::bench::read_stream(stream)?;
    let evs: Vec<Arc<Event>> = recorded.iter().cycle().take(events).cloned().collect();
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let cfg = |name: &str| config::Audit {
        store: dir.join(format!("{name}.db")),
        key: dir.join(format!("{name}.key")),
        witness: Some(dir.join(format!("{name}.witness.jsonl"))),
        ..Default::default()
    };
    let mut audit_rates = Vec::new();
    let mut plain_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut sizes = (0u64, 0u64);
    for round in 0..rounds {
        let c = cfg("audit");
        remove(&c);
        let (t_audit, size) = audit_pass(&c, &evs)?;
        let plain = dir.join("plain.db");
        remove_db(&plain);
        let (t_plain, plain_size) = plain_pass(&plain, &evs)?;
        remove_db(&plain);
        audit_rates.push(evs.len() as f64 / t_audit.as_secs_f64());
        plain_rates.push(evs.len() as f64 / t_plain.as_secs_f64());
        ratios.push(t_audit.as_secs_f64() / t_plain.as_secs_f64());
        sizes = (size, plain_size);
        if round + 1 < rounds {
            remove(&c);
        }
    }
    let mut handoff = Vec::new();
    for _ in 0..rounds.min(5) {
        let c = cfg("handoff");
        remove(&c);
        handoff.push(evs.len() as f64 / handoff_pass(&c, &evs)?.as_secs_f64());
        remove(&c);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "audit ingest: {} events ({} recorded, cycled), {rounds} rounds, store under {}",
        evs.len(),
        recorded.len(),
        dir.display()
    );
    println!(
        "audit ingest: {:.0} events/s on one core (median; min {:.0}, max {:.0}); plain inserts {:.0} events/s; {:.2}x the plain inserts' time",
        med(&mut audit_rates),
        audit_rates[0],
        audit_rates[audit_rates.len() - 1],
        med(&mut plain_rates),
        med(&mut ratios)
    );
    println!(
        "audit ingest through the ring and the writer thread: {:.0} events/s (median of {})",
        med(&mut handoff),
        handoff.len()
    );
    println!(
        "audit size: {:.0} bytes per 1000 events (plain inserts: {:.0})",
        sizes.0 as f64 * 1000.0 / evs.len() as f64,
        sizes.1 as f64 * 1000.0 / evs.len() as f64
    );
    seal_latency(&cfg("seal"), &dir.join("seal-plain.db"), 200)?;
    remove(&cfg("seal"));
    remove_db(&dir.join("seal-plain.db"));
    Ok(())
}

/// The writer appending every event in transactions of `BATCH`, then sealing; the time and
/// the store's size once its WAL is folded in.
fn audit_pass(cfg: &config::Audit, evs: &[Arc<Event>]) -> anyhow::Result<(Duration, u64)> {
    let counters = Arc::new(AuditCounters::default());
    let mut w = writer::Writer::open(cfg, counters.clone())?;
    let start = Instant::now();
    for chunk in evs.chunks(writer::BATCH) {
        w.commit(chunk, Vec::new());
    }
    let sealing = Arc::new(super::Sealing::default());
    w.commit(&[], vec![Command::Seal(approval(), sealing.clone())]);
    sealing.wait(Duration::ZERO).map_err(anyhow::Error::msg)?;
    let t = start.elapsed();
    anyhow::ensure!(
        counters.errors.load(Ordering::Relaxed) == 0,
        "the audit writer failed (see the log)"
    );
    // The last connection's close folds the WAL into the file.
    drop(w);
    Ok((t, std::fs::metadata(&cfg.store)?.len()))
}

/// The same events inserted as JSON into the same table and indexes, same transactions and
/// durability, without the tree, the chain or signatures.
fn plain_pass(path: &Path, evs: &[Arc<Event>]) -> anyhow::Result<(Duration, u64)> {
    let db = plain_db(path)?;
    let start = Instant::now();
    let mut seq = 0i64;
    for chunk in evs.chunks(writer::BATCH) {
        let tx = db.unchecked_transaction()?;
        {
            let mut ins = tx.prepare_cached(writer::INSERT)?;
            for ev in chunk {
                seq += 1;
                let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
                ins.execute(rusqlite::params![
                    seq,
                    ts,
                    "event",
                    ev.trace_id,
                    serde_json::to_string(ev.as_ref())?
                ])?;
            }
        }
        tx.commit()?;
    }
    let t = start.elapsed();
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    drop(db);
    Ok((t, std::fs::metadata(path)?.len()))
}

/// Every event pushed through the ring as the pipeline does, timed until the writer thread
/// has them all on disk.
fn handoff_pass(cfg: &config::Audit, evs: &[Arc<Event>]) -> anyhow::Result<Duration> {
    let mut cfg = cfg.clone();
    cfg.ring_events = evs.len();
    let a = Audit::open(&cfg)?;
    let start = Instant::now();
    for ev in evs {
        a.event(ev);
    }
    let deadline = start + Duration::from_secs(120);
    while a.counters.records.load(Ordering::Relaxed) < evs.len() as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the writer did not catch up in 120 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = start.elapsed();
    anyhow::ensure!(
        a.counters.dropped.load(Ordering::Relaxed) == 0,
        "events were dropped"
    );
    Ok(t)
}

/// `Audit::seal` of an approval record (what `approve` waits for before the resume), against
/// one plain durable insert, interleaved.
fn seal_latency(cfg: &config::Audit, plain: &Path, n: usize) -> anyhow::Result<()> {
    remove(cfg);
    remove_db(plain);
    let a = Audit::open(cfg)?;
    let db = plain_db(plain)?;
    let mut seals = Vec::with_capacity(n);
    let mut inserts = Vec::with_capacity(n);
    for i in 0..n {
        let Entry { body, .. } = approval();
        let start = Instant::now();
        a.seal("approval", None, Ok(body.clone()))
            .map_err(anyhow::Error::msg)?;
        seals.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        db.execute(
            writer::INSERT,
            rusqlite::params![
                i as i64 + 1,
                "",
                "approval",
                None::<String>,
                body.to_string()
            ],
        )?;
        inserts.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let pct = |v: &mut Vec<f64>, p: usize| {
        v.sort_by(f64::total_cmp);
        v[(v.len() * p / 100).min(v.len() - 1)]
    };
    println!(
        "audit seal (approval record + checkpoint committed, witness synced): median {:.2} ms, p99 {:.2} ms; one plain durable insert: median {:.2} ms, p99 {:.2} ms ({n} each, interleaved)",
        pct(&mut seals, 50),
        pct(&mut seals, 99),
        pct(&mut inserts, 50),
        pct(&mut inserts, 99)
    );
    Ok(())
}

fn plain_db(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(path)?;
    db.execute_batch(writer::PRAGMAS)?;
    db.execute_batch(writer::SCHEMA)?;
    Ok(db)
}

fn approval() -> Entry {
    Entry {
        kind: "approval".into(),
        trace_id: Some("0123456789abcdef0123456789abcdef".into()),
        body: serde_json::json!({
            "hold": "h-0123456789abcdef",
            "by": "alice",
            "via": "cli",
            "remember": null,
        }),
    }
}

fn remove(cfg: &config::Audit) {
    remove_db(&cfg.store);
    let _ = std::fs::remove_file(&cfg.key);
    let _ = std::fs::remove_file(writer::vkey_path(&cfg.key));
    if let Some(w) = &cfg.witness {
        let _ = std::fs::remove_file(w);
    }
}

fn remove_db(p: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(s));
    }
}
