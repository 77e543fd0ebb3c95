//! `watcher-verify`: checks a watcher audit store with the verifier key alone. It reads the
//! SQLite file read-only and links nothing of the daemon, only the log format (`watcher-tlog`).
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use watcher_tlog::{
    consistency_proof, hex, inclusion_proof, leaf_hash, root_of, unhex, verify_consistency,
    verify_inclusion, Frontier, Hash, NoteVerifier,
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
}

struct Row {
    seq: u64,
    kind: String,
    trace_id: Option<String>,
    text: String,
}

/// A checkpoint found valid: its record's seq, its tree size and root, its note.
struct Sealed {
    seq: u64,
    size: u64,
    root: Hash,
    note: String,
}

struct Log {
    leaves: Vec<Hash>,
    checkpoints: Vec<Sealed>,
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
    let rows = read(&args.store)?;
    let log = check(&rows, &key)?;
    let witnessed = match &args.witness {
        Some(w) => check_witness(w, &log, &key)?,
        None => 0,
    };
    let Some(last) = log.checkpoints.last() else {
        bail!(
            "{} records and no checkpoint: nothing is sealed",
            rows.len()
        );
    };
    match &args.cmd {
        None => Ok(format!(
            "intact: {} records up to the checkpoint of {} (record {}, signed by {}); {} unsealed records follow{}",
            last.seq,
            last.size,
            last.seq,
            key.name(),
            rows.len() as u64 - last.seq,
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
            let proof = inclusion_proof(&log.leaves[..last.size as usize], i as usize);
            let leaf = log.leaves[i as usize];
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
        Some(Cmd::Consistency { old, new }) => {
            let find = |n: u64| {
                log.checkpoints
                    .iter()
                    .find(|c| c.size == n)
                    .with_context(|| format!("no checkpoint of {n} records"))
            };
            let (a, b) = (find(*old)?, find(*new)?);
            let proof = consistency_proof(&log.leaves[..b.size as usize], a.size as usize);
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

fn read(store: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let db = rusqlite::Connection::open_with_flags(
        store,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", store.display()))?;
    let mut q = db.prepare("SELECT seq, kind, trace_id, record FROM audit ORDER BY seq")?;
    let rows = q
        .query_map([], |r| {
            Ok(Row {
                seq: r.get::<_, i64>(0)? as u64,
                kind: r.get(1)?,
                trace_id: r.get(2)?,
                text: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", store.display()))?;
    Ok(rows)
}

/// Walks every record: numbering, columns, chain, and each checkpoint's signature and root.
fn check(rows: &[Row], key: &NoteVerifier) -> anyhow::Result<Log> {
    let mut frontier = Frontier::default();
    let mut leaves = Vec::with_capacity(rows.len());
    let mut checkpoints = Vec::new();
    let mut prev = [0u8; 32];
    for (i, row) in rows.iter().enumerate() {
        let want = i as u64 + 1;
        if row.seq != want {
            bail!(
                "record {want} is missing (removed): the next record is {}",
                row.seq
            );
        }
        let v: serde_json::Value = serde_json::from_str(&row.text)
            .with_context(|| format!("record {want} is not JSON (edited)"))?;
        let says = v["seq"].as_u64();
        if says != Some(want) {
            bail!(
                "record {want} is out of place: its record says it is record {} (reordered)",
                says.map_or("?".into(), |s| s.to_string())
            );
        }
        if v["kind"].as_str() != Some(row.kind.as_str())
            || v["trace_id"].as_str() != row.trace_id.as_deref()
        {
            bail!("record {want} was edited: its kind or trace_id column differs from its record");
        }
        if v["prev"].as_str().and_then(unhex) != Some(prev) {
            bail!(
                "record {} was edited (or record {want} was): record {want} does not name its hash",
                want - 1
            );
        }
        if row.kind == "checkpoint" {
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
        prev = leaf_hash(row.text.as_bytes());
        frontier.push(prev);
        leaves.push(prev);
    }
    debug_assert_eq!(frontier.root(), root_of(&leaves));
    Ok(Log {
        leaves,
        checkpoints,
    })
}

/// Every witnessed checkpoint must verify and be in the store as it was witnessed.
fn check_witness(path: &std::path::Path, log: &Log, key: &NoteVerifier) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
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
        let have = log.leaves.len() as u64;
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
