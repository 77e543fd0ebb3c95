//! The records the audit store refused (another writer's lock, a full disk), kept on disk
//! beside it until it takes them: a daemon killed meanwhile loses none, the next one writes them
//! first. (Kept only in memory, a finding or decision refused while the store was locked was
//! lost with the process.) Events are not kept here: they are counted as unwritten.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use super::Entry;

pub(super) struct Journal {
    path: PathBuf,
    /// Whether the file may hold records (so a commit clears it).
    has: bool,
    /// A failed append was said in the log (once until one succeeds).
    said: bool,
}

impl Journal {
    /// `<store>-unwritten`, beside SQLite's `-wal` and `-shm` and private like them.
    pub(super) fn beside(store: &Path) -> Journal {
        let mut p = store.as_os_str().to_owned();
        p.push("-unwritten");
        Journal {
            path: PathBuf::from(p),
            has: true,
            said: false,
        }
    }

    /// The records a stopped daemon left, in order. A line that does not decode (the daemon
    /// died in the middle of writing it) is skipped, named by file and line. A file that could
    /// not be read stays for the next start.
    pub(super) fn load(&mut self) -> Vec<Entry> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.has = false;
                return Vec::new();
            }
            Err(e) => {
                tracing::error!(file = %self.path.display(), "reading the records the audit store refused: {e}");
                return Vec::new();
            }
        };
        let mut entries = Vec::new();
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Entry>(line) {
                Ok(e) => entries.push(e),
                Err(e) => tracing::error!(
                    file = %self.path.display(),
                    line = n + 1,
                    "a record the audit store refused does not decode, skipped: {e}"
                ),
            }
        }
        if entries.is_empty() {
            // Nothing in it decoded (said above, line by line): no commit would clear it.
            self.clear();
        }
        entries
    }

    /// Appends `entries` and waits until they are on disk. On failure (the disk full, say) they
    /// stay in memory only, said once.
    pub(super) fn append(&mut self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        let r = (|| -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&self.path)?;
            let mut buf = Vec::new();
            for e in entries {
                serde_json::to_writer(&mut buf, e)?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_data()
        })();
        self.has = true;
        match r {
            Ok(()) => self.said = false,
            Err(e) if !self.said => {
                self.said = true;
                tracing::error!(file = %self.path.display(), "keeping the records the audit store refused on disk: {e} (they wait in memory only)");
            }
            Err(_) => {}
        }
    }

    /// The store took every record kept: none waits any more.
    pub(super) fn clear(&mut self) {
        if !self.has {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => self.has = false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.has = false,
            Err(e) => {
                tracing::error!(file = %self.path.display(), "removing the records the audit store took: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records kept, read back in order; a line the daemon died writing is skipped, the rest
    /// kept; a commit's clear removes the file.
    #[test]
    fn kept_records_are_read_back_in_order_past_a_torn_line() {
        let mut b = [0u8; 8];
        crate::model::ids::fill_random(&mut b);
        let dir = std::env::temp_dir().join(format!("watcher-journal-{}", u64::from_ne_bytes(b)));
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("audit.db");
        let entry = |kind: &'static str, n: u64| Entry {
            kind: kind.into(),
            trace_id: Some("t".into()),
            body: serde_json::json!({ "n": n }),
        };
        let mut j = Journal::beside(&store);
        j.append(&[entry("finding", 1), entry("decision", 2)]);
        // A torn line (the daemon killed mid-write), then another record.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&j.path)
            .unwrap()
            .write_all(b"{\"kind\":\"find")
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&j.path)
            .unwrap()
            .write_all(b"\n")
            .unwrap();
        j.append(&[entry("hold", 3)]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&j.path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let back = Journal::beside(&store).load();
        let got: Vec<(String, u64)> = back
            .iter()
            .map(|e| (e.kind.to_string(), e.body["n"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("finding".into(), 1),
                ("decision".into(), 2),
                ("hold".into(), 3)
            ]
        );
        j.clear();
        assert!(!j.path.exists());
        assert!(Journal::beside(&store).load().is_empty());
        // Only a torn line: nothing to write, and the file goes (no commit would clear it).
        std::fs::write(&j.path, b"{\"kind\":\"fi").unwrap();
        assert!(Journal::beside(&store).load().is_empty());
        assert!(!j.path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
