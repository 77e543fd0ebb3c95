//! The audit log as OCSF JSON lines: read from the store (a reader beside the writer, never in
//! its way), for `watcher audit export` and for the continuous export (`[audit] export`) to
//! stdout or to a file rotated by size.
use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::Context as _;

use super::{ocsf, AuditCounters};

/// Which records: after `after` (a seq), of one session, from a time on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub trace: Option<String>,
    /// RFC 3339, UTC (`ts` is stored so, so the text compares as the time).
    pub since: Option<String>,
}

/// The store, read-only.
pub fn open_store(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening the audit store {}", path.display()))
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Writes every record after seq `after` and up to `upto` that `filter` keeps, as OCSF lines;
/// returns the last seq read (kept or not) and how many lines were written.
pub fn write_since(
    db: &rusqlite::Connection,
    after: u64,
    upto: u64,
    filter: &Filter,
    out: &mut dyn Write,
    host: &str,
) -> anyhow::Result<(u64, u64)> {
    let mut q = db.prepare_cached(
        "SELECT seq, trace_id, ts, record FROM audit WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT 10000",
    )?;
    let (mut last, mut n) = (after, 0);
    let upto = i64::try_from(upto).unwrap_or(i64::MAX);
    loop {
        let mut rows = q.query([last as i64, upto])?;
        let mut any = false;
        while let Some(r) = rows.next()? {
            any = true;
            last = r.get::<_, i64>(0)? as u64;
            let trace = r.get_ref(1)?.as_str_or_null()?;
            let ts = r.get_ref(2)?.as_str()?;
            if filter.trace.as_deref().is_some_and(|t| trace != Some(t))
                || filter.since.as_deref().is_some_and(|s| ts < s)
            {
                continue;
            }
            let record: serde_json::Value = serde_json::from_str(r.get_ref(3)?.as_str()?)
                .with_context(|| format!("audit record {last} is not JSON"))?;
            serde_json::to_writer(&mut *out, &ocsf::map(&record, host))?;
            out.write_all(b"\n")?;
            n += 1;
        }
        if !any {
            return Ok((last, n));
        }
    }
}

/// Where the continuous export goes.
#[derive(Debug, Clone)]
pub enum Sink {
    Stdout,
    /// A file, rotated to `.1` .. `.keep` when it reaches `max_bytes`; the last exported seq
    /// is kept in `<file>.pos`, so a restart goes on where it stopped.
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
}

/// Starts the continuous export thread: every `every`, what was committed since.
pub fn start(
    store: PathBuf,
    sink: Sink,
    every: Duration,
    counters: Arc<AuditCounters>,
) -> anyhow::Result<()> {
    let pos_path = match &sink {
        Sink::File { path, keep, .. } => {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d).with_context(|| format!("{}", d.display()))?;
            }
            // An export an older version left readable by others is closed to them.
            for p in std::iter::once(path.clone())
                .chain((1..=*keep).map(|i| with_suffix(path, &format!(".{i}"))))
            {
                match crate::sys::files::close_to_others(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("{}", p.display()))
                    }
                    _ => {}
                }
            }
            Some(with_suffix(path, ".pos"))
        }
        Sink::Stdout => None,
    };
    let db = open_store(&store)?;
    let mut after = match &pos_path {
        Some(p) => std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        // Stdout: from now on (a restart would repeat the whole log otherwise).
        None => last_seq(&db)?,
    };
    let host = host_name();
    std::thread::Builder::new()
        .name("audit-export".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let r = (|| -> anyhow::Result<()> {
                let mut buf = Vec::new();
                // A bounded step, so a busy log is exported (and its position saved) in parts.
                let (last, n) = write_since(
                    &db,
                    after,
                    after + 50_000,
                    &Filter::default(),
                    &mut buf,
                    &host,
                )?;
                if n == 0 && last == after {
                    return Ok(());
                }
                match &sink {
                    Sink::Stdout => {
                        let mut o = std::io::stdout().lock();
                        o.write_all(&buf)?;
                        o.flush()?;
                    }
                    Sink::File {
                        path,
                        max_bytes,
                        keep,
                    } => {
                        append(path, &buf, *max_bytes, *keep)?;
                        if let Some(p) = &pos_path {
                            std::fs::write(p, format!("{last}\n"))
                                .with_context(|| format!("{}", p.display()))?;
                        }
                    }
                }
                after = last;
                Ok(())
            })();
            if let Err(e) = r {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("the audit export: {e:#} (retried)");
            }
        })
        .context("starting the audit export")?;
    Ok(())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Appends to the file, first rotating it when it has reached `max_bytes`.
fn append(path: &Path, buf: &[u8], max_bytes: u64, keep: u32) -> anyhow::Result<()> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > 0 && size + buf.len() as u64 > max_bytes {
        for i in (1..keep).rev() {
            let _ = std::fs::rename(
                with_suffix(path, &format!(".{i}")),
                with_suffix(path, &format!(".{}", i + 1)),
            );
        }
        if keep > 0 {
            std::fs::rename(path, with_suffix(path, ".1"))
                .with_context(|| format!("rotating {}", path.display()))?;
        } else {
            std::fs::remove_file(path).with_context(|| format!("{}", path.display()))?;
        }
    }
    // The export carries every command line and path: never readable by others.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    f.write_all(buf)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The last seq in the store now.
pub fn last_seq(db: &rusqlite::Connection) -> anyhow::Result<u64> {
    Ok(
        db.query_row("SELECT coalesce(max(seq), 0) FROM audit", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_file_is_rotated_by_size_and_keeps_as_many_as_asked() {
        let dir = std::env::temp_dir().join(format!("watcher-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ocsf.jsonl");
        for i in 0..10 {
            append(&f, format!("{i:099}\n").as_bytes(), 250, 2).unwrap();
        }
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
        // Two lines of 100 bytes per file; the oldest beyond two rotations are gone.
        assert_eq!(read("ocsf.jsonl").lines().count(), 2);
        assert!(read("ocsf.jsonl").starts_with("0000"));
        assert!(read("ocsf.jsonl").ends_with("09\n"));
        assert!(read("ocsf.jsonl.1").ends_with("07\n"));
        assert!(read("ocsf.jsonl.2").ends_with("05\n"));
        assert!(!dir.join("ocsf.jsonl.3").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
