//! Session cgroups: every process of a session lives in a cgroup of its own, so a hold can
//! freeze the whole tree at once (a frozen task cannot be resumed by a signal, SIGCONT included)
//! and a deny can kill it (`cgroup.kill`).
//!
//! A session stays where the host put it: its cgroup is made inside the cgroup its first
//! process was in (`<that cgroup>/watcher-<trace id>`), so a pod's, a service's or a login
//! scope's limits go on applying to it and stopping that unit stops it too. Only a process
//! that nothing owns (in the root cgroup, or already in a session's) gets one in the watcher's
//! own directory, `<cgroup v2 root>/watcher/<trace id>`. The directories outlive the daemon: a
//! session frozen when the daemon dies stays frozen (fail closed), and a restarted daemon finds
//! its sessions again (`discover`).
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
    #[error(transparent)]
    Id(#[from] crate::model::ids::IdError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FreezeError + '_ {
    move |source| FreezeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug)]
pub struct Cgroups {
    /// `<cgroup v2 root>/watcher`.
    base: PathBuf,
    /// The cgroup v2 root (`base`'s parent).
    root: PathBuf,
    /// Sessions whose cgroup is inside the cgroup that owned their first process: trace id ->
    /// directory (the others are `base/<trace id>`).
    placed: std::sync::Mutex<std::collections::HashMap<String, PathBuf>>,
    /// Cgroup id (the directory's inode, what the kernel stamps on each record) to directory,
    /// so the intake reader can freeze a session from a record's header alone.
    by_id: std::sync::Mutex<std::collections::HashMap<u64, PathBuf>>,
    /// Session directory -> microseconds from the triggering kernel event to `frozen 1`.
    frozen_us: FrozenTimes,
    /// The one thread that times freezes.
    timer: std::sync::Mutex<Option<std::sync::mpsc::Sender<(PathBuf, u64)>>>,
    /// Each session's process limit, where the host has a pids controller.
    limit: Option<super::pids::PidsLimit>,
}

type FrozenTimes = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>>;

/// How long a freeze is timed before it is given up (and logged by whoever waits for it).
const FREEZE_TIMING_LIMIT: Duration = Duration::from_secs(5);

/// Times every freeze on one long-lived thread: it polls the `cgroup.events` of each session
/// being frozen (the kernel wakes pollers on every change) and records the time from the
/// triggering event to `frozen 1`. Several sessions freezing at once are timed together.
fn freeze_timer(out: FrozenTimes) -> std::io::Result<std::sync::mpsc::Sender<(PathBuf, u64)>> {
    use std::{
        io::{Read as _, Seek as _},
        os::fd::AsRawFd as _,
    };
    let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, u64)>();
    std::thread::Builder::new()
        .name("freeze-timer".into())
        .spawn(move || {
            let mut waiting: Vec<(PathBuf, std::fs::File, u64, Instant)> = Vec::new();
            let mut text = String::new();
            loop {
                if waiting.is_empty() {
                    match rx.recv() {
                        Ok(j) => add(&mut waiting, j),
                        Err(_) => return,
                    }
                }
                while let Ok(j) = rx.try_recv() {
                    add(&mut waiting, j);
                }
                waiting.retain_mut(|(dir, f, event_ns, since)| {
                    text.clear();
                    let frozen = f.rewind().is_ok()
                        && f.read_to_string(&mut text).is_ok()
                        && text.lines().any(|l| l == "frozen 1");
                    if frozen {
                        let us = super::boot::boot_ns().saturating_sub(*event_ns) / 1000;
                        out.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(dir.clone(), us);
                    }
                    !frozen && since.elapsed() < FREEZE_TIMING_LIMIT
                });
                let mut fds: Vec<libc::pollfd> = waiting
                    .iter()
                    .map(|(_, f, _, _)| libc::pollfd {
                        fd: f.as_raw_fd(),
                        events: libc::POLLPRI,
                        revents: 0,
                    })
                    .collect();
                if !fds.is_empty() {
                    // The notification comes from a workqueue a busy CPU can delay; a read
                    // every millisecond bounds that.
                    // SAFETY: a valid array of pollfds.
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1) };
                }
            }
        })?;
    fn add(waiting: &mut Vec<(PathBuf, std::fs::File, u64, Instant)>, (dir, ns): (PathBuf, u64)) {
        if let Ok(f) = std::fs::File::open(dir.join("cgroup.events")) {
            waiting.push((dir, f, ns, Instant::now()));
        }
    }
    Ok(tx)
}

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup` or, in hybrid layouts,
/// `/sys/fs/cgroup/unified`), from the mount table.
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(left.split_whitespace().nth(4)?))
    })
}

impl Cgroups {
    /// `<cgroup v2 root>/<name>`.
    pub fn open_named(name: &str) -> Result<Cgroups, FreezeError> {
        let root = cgroup2_root().ok_or(FreezeError::NoCgroup2)?;
        Self::at(root.join(name))
    }

    pub fn at(base: PathBuf) -> Result<Cgroups, FreezeError> {
        std::fs::create_dir_all(&base).map_err(io(&base))?;
        Ok(Cgroups {
            root: base.parent().unwrap_or(&base).to_path_buf(),
            placed: Default::default(),
            base,
            by_id: Default::default(),
            frozen_us: Default::default(),
            timer: Default::default(),
            limit: None,
        })
    }

    /// Gives every session from now on a limit of `max` processes (0: none), where this host
    /// has the pids controller (`sys::pids`); says so when it has none.
    pub fn with_pids_max(mut self, name: &str, max: u64) -> Cgroups {
        self.limit = super::pids::PidsLimit::detect(&self.base, name, max);
        match &self.limit {
            Some(l) => tracing::info!(max, place = %l.describe(), "session process limit"),
            None if max > 0 => tracing::warn!(
                "no pids controller on this host (cgroup v2 or v1): sessions have no process limit"
            ),
            None => {}
        }
        self
    }

    /// The session process limit and where it is set, if sessions have one.
    pub fn pids_limit(&self) -> Option<&super::pids::PidsLimit> {
        self.limit.as_ref()
    }

    /// The directory of every session cgroup.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The session's directory. The trace id is checked here too, where it becomes a path,
    /// whatever the caller checked: only a plain 32-hex-digit name is ever joined to a cgroup.
    pub fn dir(&self, trace: &str) -> Result<PathBuf, FreezeError> {
        crate::model::ids::TraceId::check(trace)?;
        let placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match placed.get(trace) {
            Some(d) => d.clone(),
            None => self.base.join(trace),
        })
    }

    /// Where a new session whose first process is `pid` gets its cgroup: inside the cgroup
    /// that process is in, unless that is the root or a session's (or cannot be read).
    fn owner_of(&self, pid: u32) -> Option<PathBuf> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let rel = rel.trim().trim_start_matches('/');
        // A path that climbs (`..`, as another cgroup namespace shows it) is not taken.
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c == ".." || c == "." || c.is_empty())
        {
            return None;
        }
        let owner = self.root.join(rel);
        let in_session = owner.starts_with(&self.base)
            || Path::new(rel).components().any(|c| {
                c.as_os_str()
                    .to_str()
                    .and_then(|n| n.strip_prefix("watcher-"))
                    .is_some_and(|t| crate::model::ids::TraceId::check(t).is_ok())
            });
        (!in_session && owner.is_dir()).then_some(owner)
    }

    /// Creates the session's cgroup and moves `pids` into it. Children forked afterwards are
    /// born in it.
    pub fn create(&self, trace: &str, pids: &[u32]) -> Result<PathBuf, FreezeError> {
        crate::model::ids::TraceId::check(trace)?;
        let placed = pids.first().and_then(|p| self.owner_of(*p)).and_then(|owner| {
            let dir = owner.join(format!("watcher-{trace}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => Some(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(dir),
                Err(e) => {
                    tracing::warn!(
                        %trace,
                        owner = %owner.display(),
                        "cannot make the session's cgroup inside the one that owns it, using the watcher's: {e}"
                    );
                    None
                }
            }
        });
        let dir = match placed {
            Some(d) => {
                self.placed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(trace.to_string(), d.clone());
                d
            }
            None => {
                let d = self.base.join(trace);
                std::fs::create_dir_all(&d).map_err(io(&d))?;
                d
            }
        };
        self.remember_id(&dir);
        // The limit first: `add` moves each process under it too. Inside a cgroup that holds
        // processes the v2 controller cannot be enabled for children: the owner's limit
        // applies there.
        if let Some(l) = self.limit(&dir) {
            l.start(&dir, trace, &[])?;
        }
        for pid in pids {
            self.add(trace, *pid)?;
        }
        Ok(dir)
    }

    /// The session process limit, where it can be set for the session's directory.
    fn limit(&self, dir: &Path) -> Option<&super::pids::PidsLimit> {
        self.limit
            .as_ref()
            .filter(|l| !matches!(l.place, super::pids::Place::V2) || dir.join("pids.max").exists())
    }

    /// Finds the sessions an earlier daemon placed inside other cgroups (`watcher-<trace id>`
    /// anywhere in the hierarchy but the watcher's own directory), so they are held, frozen
    /// and killed as before. A walk of the hierarchy: done at start-up.
    pub fn discover(&self) -> usize {
        let mut found = Vec::new();
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((d, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let p = e.path();
                if p == self.base {
                    continue;
                }
                let name = e.file_name();
                match name.to_str().and_then(|n| n.strip_prefix("watcher-")) {
                    Some(t) if crate::model::ids::TraceId::check(t).is_ok() => {
                        found.push((t.to_string(), p))
                    }
                    // Deep enough for any real hierarchy; a deeper one is not walked forever.
                    _ if depth < 64 => stack.push((p, depth + 1)),
                    _ => {}
                }
            }
        }
        let n = found.len();
        self.placed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(found);
        n
    }

    /// Whether the session's cgroup is inside another cgroup than the watcher's directory.
    pub fn is_placed(&self, trace: &str) -> bool {
        self.placed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(trace)
    }

    /// The session cgroup's id: its directory's inode, which the kernel stamps on every record
    /// of a process in it.
    pub fn id(&self, trace: &str) -> Option<u64> {
        std::fs::metadata(self.dir(trace).ok()?)
            .ok()
            .map(|md| std::os::unix::fs::MetadataExt::ino(&md))
    }

    fn remember_id(&self, dir: &Path) {
        if let Ok(md) = std::fs::metadata(dir) {
            self.by_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(std::os::unix::fs::MetadataExt::ino(&md), dir.to_path_buf());
        }
    }

    /// Starts freezing the session cgroup with this id, if it is one of ours, and times it
    /// from the kernel event at `event_boot_ns`.
    pub fn freeze_id(&self, id: u64, event_boot_ns: u64) -> bool {
        let dir = self
            .by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        match dir {
            Some(d) => self.freeze_dir_timed(d, event_boot_ns).is_ok(),
            None => false,
        }
    }

    /// Starts freezing the session and times it from the kernel event at `event_boot_ns`
    /// (a helper thread watches `cgroup.events`, so the figure does not include whatever the
    /// caller does next).
    pub fn freeze_timed(&self, trace: &str, event_boot_ns: u64) -> Result<(), FreezeError> {
        let dir = self.session_dir(trace)?;
        self.freeze_dir_timed(dir, event_boot_ns)
    }

    fn freeze_dir_timed(&self, dir: PathBuf, event_boot_ns: u64) -> Result<(), FreezeError> {
        let already = self
            .frozen_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&dir);
        write(&dir.join("cgroup.freeze"), "1")?;
        if already {
            return Ok(());
        }
        let mut timer = self.timer.lock().unwrap_or_else(|e| e.into_inner());
        if timer.is_none() {
            *timer = freeze_timer(self.frozen_us.clone()).ok();
        }
        if let Some(t) = timer.as_ref() {
            if t.send((dir, event_boot_ns)).is_err() {
                *timer = None;
            }
        }
        Ok(())
    }

    /// The measured event-to-frozen time of the session's freeze (waits for the measurement).
    pub fn take_frozen_us(&self, trace: &str, limit: Duration) -> Option<u64> {
        let dir = self.dir(trace).ok()?;
        let start = Instant::now();
        loop {
            if let Some(us) = self
                .frozen_us
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&dir)
            {
                return Some(us);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn add(&self, trace: &str, pid: u32) -> Result<(), FreezeError> {
        let dir = self.dir(trace)?;
        let procs = dir.join("cgroup.procs");
        match write(&procs, &pid.to_string()) {
            // The process exited meanwhile: nothing to move.
            Err(FreezeError::Io { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
                Ok(())
            }
            r => r,
        }?;
        match self.limit(&dir) {
            Some(l) => l.add(&dir, trace, pid),
            None => Ok(()),
        }
    }

    pub fn exists(&self, trace: &str) -> bool {
        self.dir(trace).is_ok_and(|d| d.is_dir())
    }

    /// The directory of a session that has one.
    fn session_dir(&self, trace: &str) -> Result<PathBuf, FreezeError> {
        let dir = self.dir(trace)?;
        if !dir.is_dir() {
            return Err(FreezeError::NoSession(trace.into()));
        }
        Ok(dir)
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
        let dir = self.session_dir(trace)?;
        write(&dir.join("cgroup.freeze"), if on { "1" } else { "0" })
    }

    /// `frozen 1` in `cgroup.events`: every task of the session is frozen.
    pub fn is_frozen(&self, trace: &str) -> bool {
        self.dir(trace)
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.events")).map_err(io(&d)))
            .map(|t| t.lines().any(|l| l == "frozen 1"))
            .unwrap_or(false)
    }

    /// Whether a freeze of the session was asked for (`cgroup.freeze` 1), done or not yet.
    pub fn freeze_asked(&self, trace: &str) -> bool {
        self.dir(trace)
            .ok()
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.freeze")).ok())
            .is_some_and(|t| t.trim() == "1")
    }

    pub fn wait_frozen(&self, trace: &str, want: bool, limit: Duration) -> Result<(), FreezeError> {
        wait_events(&self.dir(trace)?, want, limit)
    }

    /// SIGKILL to every process of the session (`cgroup.kill`), frozen or not.
    pub fn kill(&self, trace: &str) -> Result<(), FreezeError> {
        let dir = self.session_dir(trace)?;
        write(&dir.join("cgroup.kill"), "1")
    }

    pub fn pids(&self, trace: &str) -> Vec<u32> {
        self.dir(trace)
            .ok()
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Every session cgroup (trace id), including those of an earlier daemon (the ones it
    /// placed elsewhere once `discover` found them).
    pub fn sessions(&self) -> Vec<String> {
        let mut out = self.list();
        out.extend(
            self.placed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        for t in &out {
            if let Ok(d) = self.dir(t) {
                self.remember_id(&d);
            }
        }
        out
    }

    fn list(&self) -> Vec<String> {
        std::fs::read_dir(&self.base)
            .map(|rd| {
                rd.filter_map(|e| {
                    let e = e.ok()?;
                    e.file_type().ok()?.is_dir().then_some(())?;
                    // Only session directories: whatever else someone made here is not ours.
                    let name = e.file_name().into_string().ok()?;
                    crate::model::ids::TraceId::check(&name).ok()?;
                    Some(name)
                })
                .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the cgroup of a session with no process left (the kernel refuses otherwise),
    /// and forgets it.
    pub fn remove_if_empty(&self, trace: &str) -> bool {
        let Ok(dir) = self.dir(trace) else {
            return false;
        };
        if !self.pids(trace).is_empty() || std::fs::remove_dir(&dir).is_err() {
            return false;
        }
        if let Some(l) = &self.limit {
            l.remove(&dir, trace);
        }
        self.placed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(trace);
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, d| *d != dir);
        self.frozen_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&dir);
        true
    }

    /// Session cgroups remembered by id (for `status` and the tests of bounded state).
    pub fn remembered(&self) -> usize {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Waits until the cgroup's `cgroup.events` says `frozen` is `want`. The kernel freezes each
/// task on its way back to user space and flips the file when the last one has; it wakes
/// pollers of the file (POLLPRI) on every change, so this mostly sleeps.
fn wait_events(dir: &Path, want: bool, limit: Duration) -> Result<(), FreezeError> {
    use std::{
        io::{Read as _, Seek as _},
        os::fd::AsRawFd as _,
    };
    let path = dir.join("cgroup.events");
    let mut f = std::fs::File::open(&path).map_err(io(&path))?;
    let line = if want { "frozen 1" } else { "frozen 0" };
    let deadline = Instant::now() + limit;
    let mut text = String::new();
    loop {
        // Reading (from the start) also re-arms the notification.
        text.clear();
        f.rewind().map_err(io(&path))?;
        f.read_to_string(&mut text).map_err(io(&path))?;
        if text.lines().any(|l| l == line) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FreezeError::Timeout(dir.to_path_buf(), limit));
        }
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // The kernel delivers the notification from a workqueue, which a busy CPU can delay
        // by milliseconds; a read every millisecond bounds that (and a removed directory).
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 1) };
    }
}

fn write(path: &Path, value: &str) -> Result<(), FreezeError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.write_all(value.as_bytes()).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_session_is_forgotten_with_its_directory() {
        let base = std::env::temp_dir().join(format!("watcher-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        // A plain directory stands in for the cgroup tree: no cgroup.procs means no process.
        let cg = Cgroups::at(base.clone()).unwrap();
        let traces: Vec<String> = (0..3)
            .map(|_| crate::model::ids::TraceId::random().to_string())
            .collect();
        for t in &traces {
            cg.create(t, &[]).unwrap();
        }
        assert_eq!(cg.remembered(), 3);
        assert!(cg.remove_if_empty(&traces[0]));
        assert_eq!(cg.remembered(), 2);
        assert!(!cg.exists(&traces[0]));
        assert!(
            !cg.remove_if_empty("../etc"),
            "a path-like id removed something"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
