//! Profiles in the SQLite store (`[holds] store`): one row per profile, one per entry, and the
//! shadow-mode `would_hold` records. Written by the baseline's worker thread, never by intake.
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use super::{
    facets::Facet,
    profile::{Profile, Stat},
};
use crate::model::baseline::{ProfileExport, WouldHold};

#[derive(Debug, thiserror::Error)]
#[error("profile store {path}: {message}")]
pub struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

pub struct ProfileStore {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS profiles (
    name TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS profile_entries (
    profile TEXT NOT NULL,
    facet TEXT NOT NULL,
    value TEXT NOT NULL,
    sessions INTEGER NOT NULL,
    events INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    sha256 TEXT,
    PRIMARY KEY (profile, facet, value)
);
CREATE TABLE IF NOT EXISTS would_hold (
    seq INTEGER PRIMARY KEY,
    profile TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS would_hold_profile ON would_hold(profile);
";

impl ProfileStore {
    pub fn open(path: &Path) -> Result<ProfileStore, StoreError> {
        let err = |e: rusqlite::Error| StoreError {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        // Profiles name the files and hosts an agent uses: its owner's only.
        crate::sys::files::private_store(path).map_err(|e| StoreError {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(ProfileStore {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Every stored profile (entries included).
    pub fn load(&self) -> Result<Vec<Profile>, StoreError> {
        let mut out = Vec::new();
        let mut st = self
            .conn
            .prepare("SELECT name, record FROM profiles ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows: Vec<(String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|r| r.collect())
            .map_err(|e| self.err(e))?;
        for (name, record) in rows {
            let x: ProfileExport = serde_json::from_str(&record)
                .map_err(|e| self.err(format!("profile {name}: {e}")))?;
            let mut p =
                Profile::import(&x).map_err(|e| self.err(format!("profile {name}: {e}")))?;
            let mut st = self
                .conn
                .prepare(
                    "SELECT facet, value, sessions, events, first_ms, last_ms, sha256
                     FROM profile_entries WHERE profile = ?1",
                )
                .map_err(|e| self.err(e))?;
            let entries = st
                .query_map([&name], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        Stat {
                            sessions: r.get::<_, i64>(2)? as u64,
                            events: r.get::<_, i64>(3)? as u64,
                            first_ms: r.get(4)?,
                            last_ms: r.get(5)?,
                            sha256: r.get(6)?,
                        },
                    ))
                })
                .and_then(|r| r.collect::<Result<Vec<_>, _>>())
                .map_err(|e| self.err(e))?;
            for (facet, value, stat) in entries {
                match Facet::parse(&facet) {
                    Some(f) => {
                        p.entries[f as usize].insert(value, stat);
                    }
                    None => {
                        tracing::warn!(profile = %name, facet, "unknown facet in the store, skipped")
                    }
                }
            }
            out.push(p);
        }
        Ok(out)
    }

    /// Writes the profile's row and the given entries (all of them with `None`), in one
    /// transaction.
    pub fn save(
        &mut self,
        p: &Profile,
        changed: Option<&[(Facet, String)]>,
    ) -> Result<(), StoreError> {
        let mut head = p.export();
        // The entries live in their own table.
        head.entries.clear();
        let record = serde_json::to_string(&head).map_err(|e| self.err(e))?;
        let path = self.path.clone();
        let err = move |e: rusqlite::Error| StoreError {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(&err)?;
        tx.execute(
            "INSERT INTO profiles (name, mode, record) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET mode = excluded.mode, record = excluded.record",
            params![p.name, p.mode.as_str(), record],
        )
        .map_err(&err)?;
        let all: Vec<(Facet, String)>;
        let changed = match changed {
            Some(c) => c,
            None => {
                tx.execute("DELETE FROM profile_entries WHERE profile = ?1", [&p.name])
                    .map_err(&err)?;
                all = Facet::ALL
                    .iter()
                    .flat_map(|f| p.entries[*f as usize].keys().map(move |k| (*f, k.clone())))
                    .collect();
                &all
            }
        };
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO profile_entries
                     (profile, facet, value, sessions, events, first_ms, last_ms, sha256)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(profile, facet, value) DO UPDATE SET
                       sessions = excluded.sessions, events = excluded.events,
                       last_ms = excluded.last_ms, sha256 = excluded.sha256",
                )
                .map_err(&err)?;
            for (f, v) in changed {
                if let Some(s) = p.knows(*f, v) {
                    st.execute(params![
                        p.name,
                        f.as_str(),
                        v,
                        s.sessions as i64,
                        s.events as i64,
                        s.first_ms,
                        s.last_ms,
                        s.sha256
                    ])
                    .map_err(&err)?;
                }
            }
        }
        tx.commit().map_err(&err)
    }

    pub fn delete(&mut self, name: &str) -> Result<(), StoreError> {
        for table in ["profiles", "profile_entries", "would_hold"] {
            let col = if table == "profiles" {
                "name"
            } else {
                "profile"
            };
            self.conn
                .execute(&format!("DELETE FROM {table} WHERE {col} = ?1"), [name])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    pub fn add_would_hold(&self, profile: &str, w: &WouldHold) -> Result<(), StoreError> {
        let record = serde_json::to_string(w).map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "INSERT INTO would_hold (profile, record) VALUES (?1, ?2)",
                params![profile, record],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn would_hold(&self, profile: &str) -> Result<Vec<WouldHold>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT record FROM would_hold WHERE profile = ?1 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows: Vec<String> = st
            .query_map([profile], |r| r.get(0))
            .and_then(|r| r.collect())
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| serde_json::from_str(r).map_err(|e| self.err(e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::baseline::profile::Learned;

    #[test]
    fn profiles_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("watcher-profiles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("w.db");
        let mut s = ProfileStore::open(&db).unwrap();
        let mut p = Profile::new("claude");
        let mut l = Learned::default();
        l.values[Facet::Exec as usize].insert("/usr/bin/git".into(), (2, Some("ab".repeat(32))));
        let changed = p.merge(&l, 1_700_000_000_000);
        s.save(&p, Some(&changed)).unwrap();
        p.mode = crate::model::baseline::ProfileMode::Shadow;
        s.save(&p, Some(&[])).unwrap();
        drop(s);
        let s = ProfileStore::open(&db).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].export(), p.export());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
