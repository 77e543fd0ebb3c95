//! The process tree of every watched session, with each process's working directory and
//! open directory descriptors, so relative paths become absolute even after the process exited.
use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
};

pub const AT_FDCWD: i32 = -100;

#[derive(Debug, Clone, Default)]
pub struct Proc {
    pub ppid: u32,
    pub session_id: u64,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// It ran a program of its own (false from its fork until its exec).
    pub execed: bool,
    pub cwd: Option<PathBuf>,
    /// Descriptors whose path we saw opened (inherited at fork).
    pub fds: HashMap<i32, PathBuf>,
}

#[derive(Debug, Default)]
pub struct Tree {
    procs: HashMap<u32, Proc>,
}

impl Tree {
    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    /// The process, created from what /proc still knows if we had not seen it yet.
    pub fn entry(&mut self, pid: u32, ppid: u32, session_id: u64) -> &mut Proc {
        self.procs.entry(pid).or_insert_with(|| Proc {
            ppid,
            session_id,
            cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
            ..Default::default()
        })
    }

    pub fn insert(&mut self, pid: u32, proc_: Proc) {
        self.procs.insert(pid, proc_);
    }

    pub fn fork(&mut self, parent: u32, child: u32) {
        let mut p = self.procs.get(&parent).cloned().unwrap_or_default();
        p.ppid = parent;
        p.execed = false;
        self.procs.insert(child, p);
    }

    pub fn exit(&mut self, pid: u32) -> Option<Proc> {
        self.procs.remove(&pid)
    }

    /// Makes `path` (relative to `dfd`) absolute; false when the base directory is unknown.
    pub fn resolve(&self, pid: u32, dfd: i32, path: impl Into<String>) -> (String, bool) {
        let path = path.into();
        if path.starts_with('/') {
            return (normalized(path), true);
        }
        match self.base(pid, dfd) {
            Some(b) => (normalize(&b.join(&path)), true),
            None => (path, false),
        }
    }

    /// `path` (relative to `dfd`) made absolute as the process wrote it: `..` and symlinks
    /// left for the kernel to resolve (`resolve` normalizes them by their text, which a
    /// symlinked directory before a `..` defeats). None when the base directory is unknown.
    pub fn as_written(&self, pid: u32, dfd: i32, path: &str) -> Option<String> {
        if path.starts_with('/') {
            return Some(path.to_string());
        }
        if path.is_empty() {
            return None;
        }
        let base = self.base(pid, dfd)?;
        Some(base.join(path).to_string_lossy().into_owned())
    }

    /// The directory a relative name of `pid` is resolved from: its working directory, or
    /// `dfd`'s. The process may still be alive: /proc is the fallback for what we never saw.
    fn base(&self, pid: u32, dfd: i32) -> Option<PathBuf> {
        let seen = self.procs.get(&pid).and_then(|p| {
            if dfd == AT_FDCWD {
                p.cwd.clone()
            } else {
                p.fds.get(&dfd).cloned()
            }
        });
        seen.or_else(|| {
            let link = if dfd == AT_FDCWD {
                format!("/proc/{pid}/cwd")
            } else {
                format!("/proc/{pid}/fd/{dfd}")
            };
            std::fs::read_link(link).ok()
        })
    }

    /// The path of `pid`'s descriptor `fd`: as the tree saw it opened, or, for one it never
    /// saw (opened before the session), as /proc shows it while the process lives.
    pub fn fd_path(&self, pid: u32, fd: i32) -> Option<String> {
        if let Some(p) = self.procs.get(&pid).and_then(|p| p.fds.get(&fd)) {
            return Some(p.to_string_lossy().into_owned());
        }
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// The processes of a session, with what a hold record shows of them.
    pub fn session_procs(&self, session_id: u64) -> Vec<crate::model::hold::ProcInfo> {
        let mut v: Vec<_> = self
            .procs
            .iter()
            .filter(|(_, p)| p.session_id == session_id)
            .map(|(pid, p)| crate::model::hold::ProcInfo {
                pid: *pid,
                ppid: p.ppid,
                exe: p.exe.clone().unwrap_or_default(),
                argv: p.argv.clone(),
            })
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    pub fn session_pids(&self, session_id: u64) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, p)| p.session_id == session_id)
            .map(|(pid, _)| *pid)
            .collect()
    }

    pub fn opened(&mut self, pid: u32, fd: i64, path: &str) {
        if let (Some(p), Ok(fd)) = (self.procs.get_mut(&pid), i32::try_from(fd)) {
            // Descriptor numbers are reused at once: keep the old buffer rather than allocate.
            let buf = p.fds.entry(fd).or_default().as_mut_os_string();
            buf.clear();
            buf.push(path);
        }
    }

    /// `new` is a copy of `old` (dup, fcntl F_DUPFD): it names the same file.
    pub fn dup(&mut self, pid: u32, old: i32, new: i32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            match p.fds.get(&old).cloned() {
                Some(path) => {
                    p.fds.insert(new, path);
                }
                // An unknown copy must not keep the path of the descriptor it replaced.
                None => {
                    p.fds.remove(&new);
                }
            }
        }
    }

    pub fn chdir(&mut self, pid: u32, fd: i32, path: &str) {
        let new = if fd >= 0 {
            self.procs.get(&pid).and_then(|p| p.fds.get(&fd).cloned())
        } else {
            let (abs, ok) = self.resolve(pid, AT_FDCWD, path);
            ok.then(|| PathBuf::from(abs))
        };
        if let Some(p) = self.procs.get_mut(&pid) {
            // Unknown: fall back to /proc at the next relative open rather than guess.
            p.cwd = new;
        }
    }
}

impl crate::rules::Lineage for Tree {
    fn get(&self, pid: u32) -> Option<crate::rules::ProcView<'_>> {
        self.procs.get(&pid).map(|p| crate::rules::ProcView {
            ppid: p.ppid,
            exe: p.exe.as_deref().unwrap_or(""),
            comm: &p.comm,
            argv: &p.argv,
        })
    }
}

/// `path` (absolute) without `.`, `..`, doubled or trailing slashes; returned as it is, without
/// a copy, when it has none (nearly every path a program opens).
pub fn normalized(path: String) -> String {
    let b = path.as_bytes();
    let clean = b.first() == Some(&b'/')
        && (b.len() == 1 || b.last() != Some(&b'/'))
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..");
    if clean {
        path
    } else {
        normalize(Path::new(&path))
    }
}

/// Removes `.` and `..` lexically. (A `..` after a symlink can differ from the kernel's
/// answer; the path is what the process asked for, made absolute.)
pub fn normalize(p: &Path) -> String {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_use_cwd_and_dirfds_and_survive_fork_and_chdir() {
        let mut t = Tree::default();
        t.insert(
            10,
            Proc {
                cwd: Some("/work/repo".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            t.resolve(10, AT_FDCWD, "./src/../a.txt"),
            ("/work/repo/a.txt".into(), true)
        );
        t.opened(10, 5, "/etc");
        assert_eq!(t.resolve(10, 5, "passwd"), ("/etc/passwd".into(), true));
        t.fork(10, 11);
        t.chdir(11, -1, "sub");
        assert_eq!(
            t.resolve(11, AT_FDCWD, "x"),
            ("/work/repo/sub/x".into(), true)
        );
        assert_eq!(t.resolve(10, AT_FDCWD, "x"), ("/work/repo/x".into(), true));
        t.chdir(11, 5, "");
        assert_eq!(
            t.resolve(11, AT_FDCWD, "hosts"),
            ("/etc/hosts".into(), true)
        );
        assert_eq!(t.resolve(11, 3, "/abs//p/./q"), ("/abs/p/q".into(), true));
    }

    #[test]
    fn a_copied_descriptor_names_the_same_directory() {
        let mut t = Tree::default();
        t.insert(10, Proc::default());
        t.opened(10, 3, "/w/a/b");
        t.dup(10, 3, 6);
        assert_eq!(t.resolve(10, 6, "f1"), ("/w/a/b/f1".into(), true));
        // A copy of a descriptor the tree never saw forgets what the number named before.
        t.opened(10, 7, "/etc");
        t.dup(10, 99, 7);
        assert_eq!(t.fd_path(10, 7), None);
    }

    #[test]
    fn unknown_base_is_reported_not_guessed() {
        let t = Tree::default();
        // pid 0 never has a /proc entry.
        assert_eq!(t.resolve(0, AT_FDCWD, "rel"), ("rel".into(), false));
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/..", "/"),
            ("/a/.", "/a"),
            ("/..", "/"),
            ("/a/.hidden/..x", "/a/.hidden/..x"),
        ] {
            assert_eq!(normalized(raw.to_string()), want, "{raw}");
        }
    }
}
