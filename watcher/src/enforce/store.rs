//! The hold store: a SQLite file, so pending holds, decisions, remembered exceptions and the
//! kill-switch state survive a daemon restart or crash. Records are JSON in one column, with the
//! fields queries need beside them.
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::hold::{Exception, Hold, HoldState, KillSwitchState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("hold store {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("hold store {path}: a record does not decode: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("hold store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A hold's audit records a store marks once sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audited {
    Hold = 1,
    Denial = 2,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    state TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS holds_state ON holds(state);
CREATE TABLE IF NOT EXISTS exceptions (
    rule TEXT NOT NULL,
    scope TEXT NOT NULL,
    value TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (rule, scope, value)
);
CREATE TABLE IF NOT EXISTS kill_switch (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    record TEXT NOT NULL
);
-- What a running session was started with (profile, scope and its widenings, work directory),
-- so a restarted daemon adopts it as it was.
CREATE TABLE IF NOT EXISTS sessions (
    trace_id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
-- Sessions a clean stop froze (`[daemon] on_stop = freeze`): the next daemon thaws them
-- once it watches them again.
CREATE TABLE IF NOT EXISTS frozen_at_stop (
    trace_id TEXT PRIMARY KEY
);
";

/// Adds `name` to `holds` in a store made before it existed.
fn add_column(conn: &Connection, name: &str, decl: &str) -> rusqlite::Result<()> {
    let has = conn
        .prepare("SELECT 1 FROM pragma_table_info('holds') WHERE name = ?1")
        .and_then(|mut s| s.exists([name]))?;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE holds ADD COLUMN {name} {decl}"))?;
    }
    Ok(())
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // Only root may read holds (they carry command lines and file paths).
        crate::sys::files::private_store(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let sql = |source| StoreError::Sql {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        // WAL: a reader (another `watcher` CLI, sqlite3) never blocks the daemon; FULL sync: a
        // decision is on disk before it is acted on.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        // Stores made before decisions had a time column get it (NULL for their old rows,
        // which retention then ages by their deadline).
        add_column(&conn, "decided_ms", "INTEGER").map_err(sql)?;
        // Which of a hold's audit records were sealed (`Audited`): a restarted daemon looks
        // for the rest in the log. Old stores' rows start with none marked, and are looked for.
        add_column(&conn, "audited", "INTEGER NOT NULL DEFAULT 0").map_err(sql)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    fn json(&self, source: serde_json::Error) -> StoreError {
        StoreError::Json {
            path: self.path.clone(),
            source,
        }
    }

    pub fn put(&self, h: &Hold) -> Result<(), StoreError> {
        let record = serde_json::to_string(h).map_err(|e| self.json(e))?;
        self.conn
            .execute(
                "INSERT INTO holds (id, trace_id, state, deadline_ms, record) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state, deadline_ms = excluded.deadline_ms, record = excluded.record",
                params![h.id, h.trace_id, h.state.as_str(), h.deadline_ms, record],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Stores the decided record of a hold only if it is still pending: one compare-and-set, so
    /// of a human's approve and the deadline's deny exactly one wins. False: another decision
    /// came first and nothing was written.
    pub fn decide(&self, h: &Hold) -> Result<bool, StoreError> {
        let record = serde_json::to_string(h).map_err(|e| self.json(e))?;
        let n = self
            .conn
            .execute(
                "UPDATE holds SET state = ?2, record = ?3, decided_ms = ?4
                 WHERE id = ?1 AND state = 'pending'",
                params![h.id, h.state.as_str(), record, super::holds::now_ms()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    /// Marks one of the hold's audit records as sealed.
    pub fn mark_audited(&self, id: &str, record: Audited) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE holds SET audited = audited | ?2 WHERE id = ?1",
                params![id, record as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Holds missing the audit record `record` by their marks (oldest first): their record was
    /// refused or the daemon died before it was sealed (or it was written later from memory).
    pub fn unaudited(&self, record: Audited) -> Result<Vec<Hold>, StoreError> {
        let (sql, arg) = match record {
            Audited::Hold => (
                "SELECT record FROM holds WHERE audited & 1 = 0 ORDER BY rowid",
                "",
            ),
            Audited::Denial => (
                "SELECT record FROM holds WHERE state = ?1 AND audited & 2 = 0 ORDER BY rowid",
                HoldState::Denied.as_str(),
            ),
        };
        let args: Vec<&str> = [arg].into_iter().filter(|a| !a.is_empty()).collect();
        self.records(sql, &args)
    }

    /// A decided hold back to pending, as `h` was before (its decision was not carried out).
    pub fn undecide(&self, h: &Hold) -> Result<(), StoreError> {
        let record = serde_json::to_string(h).map_err(|e| self.json(e))?;
        self.conn
            .execute(
                "UPDATE holds SET state = 'pending', record = ?2, decided_ms = NULL WHERE id = ?1",
                params![h.id, record],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Hold>, StoreError> {
        let rec: Option<String> = self
            .conn
            .query_row("SELECT record FROM holds WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        rec.map(|r| serde_json::from_str(&r).map_err(|e| self.json(e)))
            .transpose()
    }

    /// Holds in `state` (all when None), oldest first. With a state, only those rows are read
    /// (through the state index), so a store with many decided holds costs nothing here.
    pub fn list(&self, state: Option<HoldState>) -> Result<Vec<Hold>, StoreError> {
        let (sql, args): (&str, Vec<&str>) = match state {
            Some(s) => (
                "SELECT record FROM holds WHERE state = ?1 ORDER BY rowid",
                vec![s.as_str()],
            ),
            None => ("SELECT record FROM holds ORDER BY rowid", vec![]),
        };
        self.records(sql, &args)
    }

    /// The `record` column of every row `sql` selects, decoded.
    fn records<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        args: &[&str],
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let rec = row.map_err(|e| self.sql(e))?;
            out.push(serde_json::from_str(&rec).map_err(|e| self.json(e))?);
        }
        Ok(out)
    }

    /// Deletes decided holds decided before `before_ms` (Unix milliseconds); pending holds
    /// are never pruned. Returns how many went.
    pub fn prune(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM holds WHERE state != 'pending' AND COALESCE(decided_ms, deadline_ms) <= ?1",
                [before_ms],
            )
            .map_err(|e| self.sql(e))
    }

    pub fn add_exception(&self, e: &Exception) -> Result<(), StoreError> {
        let record = serde_json::to_string(e).map_err(|e| self.json(e))?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO exceptions (rule, scope, value, record) VALUES (?1, ?2, ?3, ?4)",
                params![e.rule, e.scope, e.value, record],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn exceptions(&self) -> Result<Vec<Exception>, StoreError> {
        self.records("SELECT record FROM exceptions", &[])
    }

    pub fn set_kill_switch(&self, k: &KillSwitchState) -> Result<(), StoreError> {
        let record = serde_json::to_string(k).map_err(|e| self.json(e))?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO kill_switch (id, record) VALUES (0, ?1)",
                [record],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn put_session(&self, s: &crate::model::session::Session) -> Result<(), StoreError> {
        let record = serde_json::to_string(s).map_err(|e| self.json(e))?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO sessions (trace_id, record) VALUES (?1, ?2)",
                [&s.trace_id, &record],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn session(
        &self,
        trace: &str,
    ) -> Result<Option<crate::model::session::Session>, StoreError> {
        let rec: Option<String> = self
            .conn
            .query_row(
                "SELECT record FROM sessions WHERE trace_id = ?1",
                [trace],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        rec.map(|r| serde_json::from_str(&r).map_err(|e| self.json(e)))
            .transpose()
    }

    /// Marks (or unmarks) a session as frozen by a clean stop.
    pub fn set_frozen_at_stop(&self, trace: &str, on: bool) -> Result<(), StoreError> {
        let sql = if on {
            "INSERT OR IGNORE INTO frozen_at_stop (trace_id) VALUES (?1)"
        } else {
            "DELETE FROM frozen_at_stop WHERE trace_id = ?1"
        };
        self.conn.execute(sql, [trace]).map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn frozen_at_stop(&self, trace: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT 1 FROM frozen_at_stop WHERE trace_id = ?1",
                [trace],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.sql(e))
    }

    /// Forgets every session but `keep`'s.
    pub fn retain_sessions(&self, keep: &[String]) -> Result<usize, StoreError> {
        let all: Vec<String> = {
            let mut q = self
                .conn
                .prepare("SELECT trace_id FROM sessions")
                .map_err(|e| self.sql(e))?;
            let rows = q.query_map([], |r| r.get(0)).map_err(|e| self.sql(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))?
        };
        let mut n = 0;
        for t in all.iter().filter(|t| !keep.contains(t)) {
            n += self
                .conn
                .execute("DELETE FROM sessions WHERE trace_id = ?1", [t])
                .map_err(|e| self.sql(e))?;
        }
        Ok(n)
    }

    pub fn kill_switch(&self) -> Result<KillSwitchState, StoreError> {
        let rec: Option<String> = self
            .conn
            .query_row("SELECT record FROM kill_switch WHERE id = 0", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sql(e))?;
        match rec {
            Some(r) => serde_json::from_str(&r).map_err(|e| self.json(e)),
            None => Ok(KillSwitchState::default()),
        }
    }
}
