//! `watcher-verify`: checks a watcher audit store with the verifier key alone. It reads the
//! SQLite file read-only and links nothing of the daemon, only the log format (`watcher-tlog`).
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use watcher_tlog::{
    hex, hex_str, leaf_hash, unhex, verify_consistency, verify_inclusion, Frontier, Hash,
    NoteVerifier, PrunedTree,
};

#[derive(Parser)]
#[command(about = "Verify a watcher audit store: signatures, tree, chain and witness")]
struct Args {
    /// The audit store (`[audit] store`).
    #[arg(long)]
    store: PathBuf,
    /// The verifier key file (`watcher audit pubkey` prints it).
    #[arg(long)]
    pubkey: PathBuf,
    /// The witness file (`[audit] witness`): catches a truncated tail.
    #[arg(long)]
    witness: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// An inclusion proof of record SEQ in the latest checkpoint, checked.
    Inclusion { seq: u64 },
    /// A consistency proof between the checkpoints of OLD and NEW records, checked.
    Consistency { old: u64, new: u64 },
    /// The verify rate: reading the store alone against reading and checking it, interleaved.
    #[command(hide = true)]
    Bench {
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
}

/// A checkpoint found valid: its record's seq, its tree size and root, its note.
struct Sealed {
    seq: u64,
    size: u64,
    root: Hash,
    note: String,
}

struct Log {
    /// The tree of the records pruned by retention (empty when none were).
    pruned: Frontier,
    /// The leaves of the records kept (record `pruned.size + 1` first).
    leaves: Vec<Hash>,
    checkpoints: Vec<Sealed>,
}

impl Log {
    fn size(&self) -> u64 {
        self.pruned.size + self.leaves.len() as u64
    }

    fn tree(&self) -> PrunedTree<'_> {
        PrunedTree {
            prefix: &self.pruned,
            leaves: &self.leaves,
        }
    }
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(msg) => println!("{msg}"),
        Err(e) => {
            println!("NOT INTACT: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> anyhow::Result<String> {
    let vkey = std::fs::read_to_string(&args.pubkey)
        .with_context(|| format!("reading {}", args.pubkey.display()))?;
    let key = NoteVerifier::parse(&vkey).with_context(|| args.pubkey.display().to_string())?;
    if let Some(Cmd::Bench { rounds }) = args.cmd {
        return bench(&args.store, &key, rounds);
    }
    // The witness is read before the store: the daemon appends a checkpoint to it only once
    // the store has committed it, so a live store read after it holds every checkpoint it has.
    let witness = match &args.witness {
        Some(w) => Some((
            w,
            std::fs::read_to_string(w).with_context(|| format!("reading {}", w.display()))?,
        )),
        None => None,
    };
    let log = check(&open(&args.store)?, &key, true)?;
    let witnessed = match &witness {
        Some((w, text)) => check_witness(w, text, &log, &key)?,
        None => 0,
    };
    let Some(last) = log.checkpoints.last() else {
        bail!(
            "{} records and no checkpoint: nothing is sealed",
            log.size()
        );
    };
    match &args.cmd {
        None => Ok(format!(
            "intact: {} records up to the checkpoint of {} (record {}, signed by {}); {} unsealed records follow{}{}",
            last.seq,
            last.size,
            last.seq,
            key.name(),
            log.size() - last.seq,
            if log.pruned.size > 0 {
                format!(
                    "; records 1..{} were pruned by retention, as recorded",
                    log.pruned.size
                )
            } else {
                String::new()
            },
            if args.witness.is_some() {
                format!("; {witnessed} witnessed checkpoints match")
            } else {
                String::new()
            }
        )),
        Some(Cmd::Inclusion { seq }) => {
            let i = seq.checked_sub(1).context("records start at 1")?;
            if i >= last.size {
                bail!("record {seq} is not covered by the latest checkpoint ({} records)", last.size);
            }
            let pruned = log.pruned.size;
            if i < pruned {
                bail!("record {seq} was pruned by retention (records 1..{pruned})");
            }
            let proof = log
                .tree()
                .inclusion_proof(i, last.size)
                .context("the proof needs a pruned record")?;
            let leaf = log.leaves[(i - pruned) as usize];
            if !verify_inclusion(i, last.size, &leaf, &proof, &last.root) {
                bail!("the inclusion proof of record {seq} does not verify");
            }
            Ok(format!(
                "record {seq} (leaf {}) is in the tree of {} records, root {}\nproof:\n{}\ncheckpoint:\n{}",
                hex(&leaf),
                last.size,
                hex(&last.root),
                proof.iter().map(hex).collect::<Vec<_>>().join("\n"),
                last.note
            ))
        }
        Some(Cmd::Bench { .. }) => unreachable!("handled above"),
        Some(Cmd::Consistency { old, new }) => {
            let find = |n: u64| {
                log.checkpoints
                    .iter()
                    .find(|c| c.size == n)
                    .with_context(|| format!("no checkpoint of {n} records"))
            };
            let (a, b) = (find(*old)?, find(*new)?);
            let proof = log
                .tree()
                .consistency_proof(a.size, b.size)
                .context("the proof needs pruned records")?;
            if !verify_consistency(a.size, b.size, &a.root, &b.root, &proof) {
                bail!("the checkpoints of {old} and {new} records are not consistent");
            }
            Ok(format!(
                "the tree of {old} records (root {}) is a prefix of the tree of {new} (root {})\nproof:\n{}",
                hex(&a.root),
                hex(&b.root),
                proof.iter().map(hex).collect::<Vec<_>>().join("\n")
            ))
        }
    }
}

fn bench(store: &std::path::Path, key: &NoteVerifier, rounds: u32) -> anyhow::Result<String> {
    use std::time::Instant;
    let (mut read_rates, mut rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut n = 0;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        n = scan(&open(store)?)?;
        let t_read = t.elapsed().as_secs_f64();
        let t = Instant::now();
        check(&open(store)?, key, false)?;
        let t_all = t.elapsed().as_secs_f64();
        read_rates.push(n as f64 / t_read);
        rates.push(n as f64 / t_all);
        ratios.push(t_all / t_read);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(format!(
        "verify: {:.0} records/s (median of {rounds}; {n} records), reading them alone {:.0} records/s; {:.2}x the read's time",
        med(&mut rates),
        med(&mut read_rates),
        med(&mut ratios)
    ))
}

fn open(store: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
    rusqlite::Connection::open_with_flags(
        store,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", store.display()))
}

const ROWS: &str = "SELECT seq, kind, trace_id, record FROM audit ORDER BY seq";

/// Every row read and nothing checked: the benchmark's floor.
fn scan(db: &rusqlite::Connection) -> anyhow::Result<usize> {
    let mut q = db.prepare(ROWS)?;
    let mut rows = q.query([])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        n += r.get_ref(3)?.as_str()?.len().min(1);
    }
    Ok(n)
}

/// The header of a record; the body is checked only in checkpoints (the chain and the tree
/// cover the rest byte for byte).
#[derive(serde::Deserialize)]
struct Head<'a> {
    seq: u64,
    kind: &'a str,
    trace_id: Option<&'a str>,
    prev: &'a str,
    #[serde(rename = "body")]
    _body: serde::de::IgnoredAny,
}

/// Walks every record: numbering, columns, chain, and each checkpoint's signature and root.
/// `progress`: a bar on stderr while it runs (drawn only on a terminal).
fn check(db: &rusqlite::Connection, key: &NoteVerifier, progress: bool) -> anyhow::Result<Log> {
    let total: i64 = db.query_row(
        "SELECT coalesce(max(seq), 0) - coalesce(min(seq), 1) + 1 FROM audit",
        [],
        |r| r.get(0),
    )?;
    let bar = if progress {
        indicatif::ProgressBar::new(total.max(0) as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "verifying {bar:40} {human_pos}/{human_len} records, {per_sec}, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut frontier = Frontier::default();
    let mut leaves = Vec::new();
    let mut checkpoints = Vec::new();
    let mut prev = [0u8; 32];
    let mut prev_hex = [0u8; 64];
    let mut q = db.prepare(ROWS)?;
    let mut rows = q.query([])?;
    let mut want = 0u64;
    let mut pruned = Frontier::default();
    // (seq, pruned_through) of each retention record.
    let mut retentions = Vec::new();
    while let Some(row) = rows.next()? {
        want += 1;
        let seq = row.get::<_, i64>(0)?;
        if want == 1 && seq > 1 {
            // Retention pruned records 1..seq-1: the first record kept must be a checkpoint,
            // whose signed root its frontier must give; the chain and the tree go on from it.
            let text = row.get_ref(3)?.as_str()?;
            let f = pruned_start(seq as u64, row.get_ref(1)?.as_str()?, text, key)?;
            pruned = f.clone();
            frontier = f;
            want = seq as u64;
        }
        if seq != want as i64 {
            bail!("record {want} is missing (removed): the next record is {seq}");
        }
        let kind = row.get_ref(1)?.as_str()?;
        let trace_id = row.get_ref(2)?.as_str_or_null()?;
        let text = row.get_ref(3)?.as_str()?;
        let head: Head = serde_json::from_str(text)
            .with_context(|| format!("record {want} is not a record (edited)"))?;
        if head.seq != want {
            bail!(
                "record {want} is out of place: its record says it is record {} (reordered)",
                head.seq
            );
        }
        if head.kind != kind || head.trace_id != trace_id {
            bail!("record {want} was edited: its kind or trace_id column differs from its record");
        }
        // The writer writes lowercase hex; anything else is not what was hashed. (The first
        // record after a pruning names a hash that is gone.)
        if want > pruned.size + 1 && head.prev != hex_str(&prev, &mut prev_hex) {
            bail!(
                "record {} was edited (or record {want} was): record {want} does not name its hash",
                want - 1
            );
        }
        if kind == "retention" {
            let v: serde_json::Value = serde_json::from_str(text)?;
            retentions.push((want, v["body"]["pruned_through"].as_u64()));
        }
        if kind == "checkpoint" {
            let v: serde_json::Value = serde_json::from_str(text)?;
            let b = &v["body"];
            let note = b["note"].as_str().unwrap_or_default();
            let c = key
                .open(note)
                .with_context(|| format!("the checkpoint in record {want} does not verify"))?;
            if c.size != want - 1 || b["size"].as_u64() != Some(c.size) {
                bail!(
                    "the checkpoint in record {want} is for {} records, not {}",
                    c.size,
                    want - 1
                );
            }
            if c.root != frontier.root() {
                bail!(
                    "the checkpoint in record {want} signs another tree: records 1..{} were edited, removed or forged since it was signed",
                    want - 1
                );
            }
            if b["root"].as_str().and_then(unhex) != Some(c.root) {
                bail!("record {want} was edited: its root differs from its signed note");
            }
            checkpoints.push(Sealed {
                seq: want,
                size: c.size,
                root: c.root,
                note: note.to_string(),
            });
        }
        prev = leaf_hash(text.as_bytes());
        frontier.push(prev);
        leaves.push(prev);
        if leaves.len() % 65536 == 0 {
            bar.set_position(leaves.len() as u64);
        }
    }
    bar.finish_and_clear();
    if pruned.size > 0 {
        // A pruning must be recorded, and sealed: a retention record appended after the last
        // checkpoint could be anyone's.
        let sealed = checkpoints.last().map_or(0, |c| c.seq);
        let recorded = retentions
            .iter()
            .any(|(seq, through)| *through == Some(pruned.size) && *seq < sealed);
        if !recorded {
            bail!(
                "records 1..{} are missing: removed without a sealed retention record",
                pruned.size
            );
        }
    }
    Ok(Log {
        pruned,
        leaves,
        checkpoints,
    })
}

/// The tree of the records a retention pruned, from the first record kept: a checkpoint whose
/// frontier gives the root it signs.
fn pruned_start(seq: u64, kind: &str, text: &str, key: &NoteVerifier) -> anyhow::Result<Frontier> {
    if kind != "checkpoint" {
        bail!("record 1 is missing (removed): the first record is {seq}, which is no checkpoint");
    }
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("record {seq} is not JSON (edited)"))?;
    let b = &v["body"];
    let c = key
        .open(b["note"].as_str().unwrap_or_default())
        .with_context(|| format!("the checkpoint in record {seq} does not verify"))?;
    let hashes = b["frontier"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| h.as_str().and_then(unhex))
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or_default()
        .with_context(|| format!("record {seq} was edited: a malformed frontier"))?;
    let f = Frontier::from_parts(seq - 1, hashes)
        .filter(|f| c.size == seq - 1 && f.root() == c.root)
        .with_context(|| {
            format!("record {seq} was edited: its frontier does not give the root it signs")
        })?;
    Ok(f)
}

/// Every witnessed checkpoint must verify and be in the store as it was witnessed.
fn check_witness(
    path: &std::path::Path,
    text: &str,
    log: &Log,
    key: &NoteVerifier,
) -> anyhow::Result<usize> {
    let mut n = 0;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{at}: not JSON"))?;
        let note = v["note"]
            .as_str()
            .with_context(|| format!("{at}: no note"))?;
        let c = key.open(note).with_context(|| at.clone())?;
        let have = log.size();
        if c.size < log.pruned.size {
            // Witnessed before a retention pruned it: nothing left to compare.
            continue;
        }
        if c.size >= have {
            bail!(
                "the tail is missing: the witness has a checkpoint of {} records ({at}), the store has {have}",
                c.size
            );
        }
        let Some(s) = log.checkpoints.iter().find(|s| s.size == c.size) else {
            bail!(
                "the store has no checkpoint of {} records, which the witness has ({at})",
                c.size
            );
        };
        if s.root != c.root {
            bail!(
                "the store's checkpoint of {} records differs from the witnessed one ({at})",
                c.size
            );
        }
        n += 1;
    }
    Ok(n)
}
