//! Session cgroups: every process of a session lives in `<cgroup v2 root>/watcher/<trace id>`,
//! so a hold can freeze the whole tree at once (a frozen task cannot be resumed by a signal,
//! SIGCONT included) and a deny can kill it (`cgroup.kill`). The directories outlive the daemon:
//! a session frozen when the daemon dies stays frozen (fail closed), and a restarted daemon finds
//! its sessions again here.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("cgroup v2: no cgroup2 file system is mounted")]
    NoCgroup2,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("session {0}: no cgroup (it ended, or was started before the daemon)")]
    NoSession(String),
    #[error("{0}: did not report frozen within {1:?}")]
    Timeout(PathBuf, Duration),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FreezeError + '_ {
    move |source| FreezeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct Cgroups {
    /// `<cgroup v2 root>/watcher`.
    base: PathBuf,
}

impl Cgroups {
    /// `<cgroup v2 root>/<name>`.
    pub fn open_named(name: &str) -> Result<Cgroups, FreezeError> {
        let root = crate::kernel::cgroup2_root().ok_or(FreezeError::NoCgroup2)?;
        Self::at(root.join(name))
    }

    pub fn at(base: PathBuf) -> Result<Cgroups, FreezeError> {
        std::fs::create_dir_all(&base).map_err(io(&base))?;
        Ok(Cgroups { base })
    }

    pub fn dir(&self, trace: &str) -> PathBuf {
        self.base.join(trace)
    }

    /// Creates the session's cgroup and moves `pids` into it. Children forked afterwards are
    /// born in it.
    pub fn create(&self, trace: &str, pids: &[u32]) -> Result<PathBuf, FreezeError> {
        let dir = self.dir(trace);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for pid in pids {
            self.add(trace, *pid)?;
        }
        Ok(dir)
    }

    pub fn add(&self, trace: &str, pid: u32) -> Result<(), FreezeError> {
        let procs = self.dir(trace).join("cgroup.procs");
        match write(&procs, &pid.to_string()) {
            // The process exited meanwhile: nothing to move.
            Err(FreezeError::Io { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
                Ok(())
            }
            r => r,
        }
    }

    pub fn exists(&self, trace: &str) -> bool {
        self.dir(trace).is_dir()
    }

    /// Freezes the session and waits until the kernel reports every task frozen.
    pub fn freeze(&self, trace: &str) -> Result<(), FreezeError> {
        self.set_frozen(trace, true)?;
        self.wait_frozen(trace, true, Duration::from_secs(5))
    }

    pub fn thaw(&self, trace: &str) -> Result<(), FreezeError> {
        self.set_frozen(trace, false)
    }

    /// Starts freezing (one write; tasks stop on their way back to user space).
    pub fn set_frozen(&self, trace: &str, on: bool) -> Result<(), FreezeError> {
        let dir = self.dir(trace);
        if !dir.is_dir() {
            return Err(FreezeError::NoSession(trace.into()));
        }
        write(&dir.join("cgroup.freeze"), if on { "1" } else { "0" })
    }

    /// `frozen 1` in `cgroup.events`: every task of the session is frozen.
    pub fn is_frozen(&self, trace: &str) -> bool {
        std::fs::read_to_string(self.dir(trace).join("cgroup.events"))
            .map(|t| t.lines().any(|l| l == "frozen 1"))
            .unwrap_or(false)
    }

    pub fn wait_frozen(&self, trace: &str, want: bool, limit: Duration) -> Result<(), FreezeError> {
        // The kernel freezes each task on its way back to user space; `cgroup.events` flips when
        // the last one has. Polled briefly: this is microseconds for a sleeping tree.
        let start = Instant::now();
        let mut pause = Duration::from_micros(50);
        while self.is_frozen(trace) != want {
            if start.elapsed() > limit {
                return Err(FreezeError::Timeout(self.dir(trace), limit));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        Ok(())
    }

    /// SIGKILL to every process of the session (`cgroup.kill`), frozen or not.
    pub fn kill(&self, trace: &str) -> Result<(), FreezeError> {
        let dir = self.dir(trace);
        if !dir.is_dir() {
            return Err(FreezeError::NoSession(trace.into()));
        }
        write(&dir.join("cgroup.kill"), "1")
    }

    pub fn pids(&self, trace: &str) -> Vec<u32> {
        std::fs::read_to_string(self.dir(trace).join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Every session cgroup (trace id), including those of an earlier daemon.
    pub fn sessions(&self) -> Vec<String> {
        std::fs::read_dir(&self.base)
            .map(|rd| {
                rd.filter_map(|e| {
                    let e = e.ok()?;
                    e.file_type().ok()?.is_dir().then_some(())?;
                    e.file_name().into_string().ok()
                })
                .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the cgroup of a session with no process left (the kernel refuses otherwise).
    pub fn remove_if_empty(&self, trace: &str) -> bool {
        self.pids(trace).is_empty() && std::fs::remove_dir(self.dir(trace)).is_ok()
    }
}

fn write(path: &Path, value: &str) -> Result<(), FreezeError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.write_all(value.as_bytes()).map_err(io(path))
}
