//! Protected paths: an open of a protected file by a watched process waits in the kernel for a
//! human's verdict (fanotify permission events), before the open happens. Unwatched processes
//! are answered at once. fanotify marks inodes, so the protected list is expanded to the files
//! that exist when the daemon starts; the directories they live in are watched (inotify), and a
//! matching file created or renamed there later is marked too. (Marking the directories for
//! permission events instead would make every open in a home directory wait on the daemon.)
use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc, Mutex},
};

use super::Enforce;
use crate::model::event::{Detail, Event, Ts};

/// The built-in rule id of protected-path holds.
pub const RULE: &str = "protected-path";

pub struct Protect {
    fd: OwnedFd,
    /// Hold id -> the fanotify event's file descriptor, until the verdict is written.
    pending: Mutex<HashMap<String, OwnedFd>>,
    /// The files marked so far.
    files: Mutex<std::collections::BTreeSet<PathBuf>>,
    patterns: Vec<String>,
    /// Keeps the directory watch alive.
    dirs: Mutex<Option<notify::RecommendedWatcher>>,
    /// Builds, stores and announces the holds, so that the thread answering the kernel does
    /// nothing slow: every protected open on the host waits behind it.
    recorder: crate::sys::worker::Worker,
    /// The kernel's watched processes (None: the map could not be opened again; then /proc).
    watched: Option<crate::kernel::WatchedReader>,
    /// Existing files whose change is the harm (the persistence files the gated rules name for
    /// writing, e.g. shell start-up files, `authorized_keys`, crontabs): marked too, but only
    /// an open for writing waits, so every shell that reads its `.bashrc` goes on at once.
    /// With whether a `kill` rule names them (a write is refused at once, no question).
    write_patterns: Vec<(String, bool)>,
    /// (device, inode) of the marked files only writes wait for, and whether a write is
    /// refused at once.
    write_only: Mutex<HashMap<(u64, u64), bool>>,
}

/// The patterns with `~/` made into a path per home (a glob may remain in the last component).
fn candidates(patterns: &[String]) -> Vec<PathBuf> {
    let homes = crate::rules::compile::homes();
    let mut out = Vec::new();
    for p in patterns {
        match p.strip_prefix("~/") {
            Some(rest) => {
                for h in &homes {
                    if let Some(base) = h.strip_suffix("/*") {
                        if let Ok(rd) = std::fs::read_dir(base) {
                            out.extend(rd.flatten().map(|e| e.path().join(rest)));
                        }
                    } else {
                        out.push(Path::new(h).join(rest));
                    }
                }
            }
            None => out.push(PathBuf::from(p)),
        }
    }
    out
}

/// `~/` patterns for every home, globs by listing their directory (`*` in the last component
/// only); files only, `*.pub` left out.
pub fn expand(patterns: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in candidates(patterns) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.contains('*') {
            let Some(dir) = path.parent() else { continue };
            let Ok(glob) = globset::Glob::new(name) else {
                continue;
            };
            let m = glob.compile_matcher();
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let f = e.file_name();
                    let f = f.to_string_lossy();
                    if m.is_match(f.as_ref()) && !f.ends_with(".pub") && e.path().is_file() {
                        out.push(e.path());
                    }
                }
            }
        } else if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The existing directories protected files are (or may appear) in.
fn directories(patterns: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = candidates(patterns)
        .iter()
        .filter_map(|p| p.parent().filter(|d| d.is_dir()).map(Path::to_path_buf))
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Protect {
    /// Marks the protected files, watches their directories for new ones, and starts answering
    /// their opens. None when there is nothing to mark and no directory to watch.
    pub fn start(shared: Arc<Enforce>) -> anyhow::Result<Option<Arc<Protect>>> {
        let patterns = shared.config.holds.protected.clone();
        let write_patterns = write_patterns(&shared);
        let mut dirs = directories(&patterns);
        dirs.extend(write_directories(&write_patterns));
        dirs.sort();
        dirs.dedup();
        if dirs.is_empty() && expand(&patterns).is_empty() {
            return Ok(None);
        }
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC,
                (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
            )
        };
        if raw < 0 {
            return Err(anyhow::anyhow!(
                "fanotify_init: {} (protected paths need fanotify permission events)",
                std::io::Error::last_os_error()
            ));
        }
        let p = Arc::new(Protect {
            // SAFETY: a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            pending: Mutex::new(HashMap::new()),
            files: Mutex::new(Default::default()),
            patterns,
            dirs: Mutex::new(None),
            recorder: crate::sys::worker::Worker::start("protect-record")?,
            watched: match shared
                .kernel
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .watched_reader()
            {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("protected opens look sessions up in /proc: {e:#}");
                    None
                }
            },
            write_patterns,
            write_only: Mutex::new(Default::default()),
        });
        p.refresh(&shared);
        tracing::info!(
            files = p.files.lock().map(|f| f.len()).unwrap_or(0),
            directories = dirs.len(),
            "protected paths: opens by watched processes wait for a verdict"
        );
        p.watch_directories(&shared, &dirs);
        let (p2, s2) = (p.clone(), shared.clone());
        std::thread::Builder::new()
            .name("protect".into())
            .spawn(move || p2.run(s2))?;
        let p3 = p.clone();
        shared
            .approvals
            .set_verdict_hook(Box::new(move |hold, allow| p3.verdict(hold, allow)));
        Ok(Some(p))
    }

    /// Marks every file the patterns match now that is not marked yet.
    fn refresh(&self, shared: &Enforce) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let read = expand(&self.patterns);
        let mut written: Vec<PathBuf> = Vec::new();
        for (p, kill) in &self.write_patterns {
            for (f, dir) in crate::sys::files::named(p) {
                if dir || !f.is_file() || read.contains(&f) {
                    continue;
                }
                if let Ok(md) = std::fs::metadata(&f) {
                    use std::os::unix::fs::MetadataExt as _;
                    let mut w = self.write_only.lock().unwrap_or_else(|e| e.into_inner());
                    *w.entry((md.dev(), md.ino())).or_insert(false) |= kill;
                }
                written.push(f);
            }
        }
        for f in read.into_iter().chain(written) {
            if files.contains(&f) {
                continue;
            }
            match self.mark(&f) {
                Ok(()) => {
                    tracing::debug!(path = %f.display(), "protected");
                    files.insert(f);
                }
                Err(e) => tracing::warn!(path = %f.display(), "cannot protect: {e}"),
            }
        }
        let guarded = self
            .write_only
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        // By identity: two names of one file (Debian's /usr/lib/python3.X/sitecustomize.py is a
        // symlink to /etc/python3.X/sitecustomize.py) are one marked file.
        let marked: std::collections::HashSet<(u64, u64)> = files
            .iter()
            .filter_map(|f| {
                use std::os::unix::fs::MetadataExt as _;
                std::fs::metadata(f).ok().map(|m| (m.dev(), m.ino()))
            })
            .collect();
        shared.counters.protected_files.store(
            marked.len().saturating_sub(guarded) as u64,
            Ordering::Relaxed,
        );
        shared
            .counters
            .guarded_files
            .store(guarded as u64, Ordering::Relaxed);
    }

    fn mark(&self, path: &Path) -> std::io::Result<()> {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid descriptor and C string.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD,
                libc::FAN_OPEN_PERM,
                libc::AT_FDCWD,
                c.as_ptr(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Marks files that appear later in the protected files' directories.
    fn watch_directories(self: &Arc<Self>, shared: &Arc<Enforce>, dirs: &[PathBuf]) {
        let (tx, rx) = std::sync::mpsc::channel();
        let w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                // A new name in the directory: created, or renamed into place.
                if matches!(
                    ev.kind,
                    notify::EventKind::Create(_)
                        | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) {
                    let _ = tx.send(());
                }
            }
        });
        let mut w = match w {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch for new protected files: {e}");
                return;
            }
        };
        for d in dirs {
            if let Err(e) = notify::Watcher::watch(&mut w, d, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %d.display(), "cannot watch for new protected files: {e}");
            }
        }
        *self.dirs.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
        let (p, s) = (self.clone(), shared.clone());
        let _ = std::thread::Builder::new()
            .name("protect-dirs".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    while rx.try_recv().is_ok() {}
                    p.refresh(&s);
                }
            });
    }

    fn run(&self, shared: Arc<Enforce>) {
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: reading into our buffer from our descriptor.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("fanotify read: {e}; protected paths are no longer held");
                return;
            }
            let mut off = 0usize;
            let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
            while off + meta_len <= n as usize {
                // SAFETY: the kernel wrote whole records; read_unaligned copes with the buffer.
                let m: libc::fanotify_event_metadata =
                    unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                if m.event_len < meta_len as u32 {
                    break;
                }
                off += m.event_len as usize;
                if m.fd < 0 {
                    continue;
                }
                // SAFETY: the event's descriptor is ours to close.
                let efd = unsafe { OwnedFd::from_raw_fd(m.fd) };
                if m.mask & libc::FAN_OPEN_PERM != 0 {
                    self.on_open(&shared, m.pid as u32, efd);
                }
            }
        }
    }

    fn respond(&self, efd: &OwnedFd, allow: bool) {
        let r = libc::fanotify_response {
            fd: efd.as_raw_fd(),
            response: if allow {
                libc::FAN_ALLOW
            } else {
                libc::FAN_DENY
            },
        };
        // SAFETY: writing a plain struct to our descriptor.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&r as *const libc::fanotify_response).cast(),
                std::mem::size_of::<libc::fanotify_response>(),
            )
        };
        if n < 0 {
            tracing::error!("fanotify response: {}", std::io::Error::last_os_error());
        }
    }

    /// The trace id of the session a watched process is in, from the kernel's map and the
    /// session table (no /proc read, no kernel lock: every protected open on the host waits
    /// for this thread). A session the pipeline has not seen yet (an agent matcher's, in its
    /// first microseconds) is found through its cgroup instead.
    fn session_of(&self, shared: &Enforce, pid: u32) -> Option<String> {
        let session_id = match &self.watched {
            Some(w) => w.session_of(pid)?,
            None => return crate::pipeline::tamper::session_of(shared, pid),
        };
        let known = shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(session_id)
            .map(|s| s.trace_id.clone());
        known.or_else(|| crate::pipeline::tamper::session_of(shared, pid))
    }

    fn on_open(&self, shared: &Arc<Enforce>, pid: u32, efd: OwnedFd) {
        let Some(trace) = self.session_of(shared, pid) else {
            // Not watched: answered at once.
            self.respond(&efd, true);
            return;
        };
        let flags = match self.only_writes_wait(&efd) {
            Some(kill) => match crate::sys::procfs::pending_open_flags_within(
                pid,
                std::time::Duration::from_millis(100),
            ) {
                Some(f) if !writes(f) => {
                    self.respond(&efd, true);
                    return;
                }
                // A kill rule's file: refused now, with no question; the rule then acts on
                // the refused open as on any other.
                _ if kill => {
                    self.respond(&efd, false);
                    return;
                }
                // Not known (the thread could not be read): the open waits, as a write.
                f => f.unwrap_or(libc::O_WRONLY as u64),
            },
            None => libc::O_RDONLY as u64,
        };
        let a = &shared.approvals;
        let id = match a.pending_for(&trace) {
            // One verdict at a time per session: a second protected open while a hold is
            // pending waits on the same decision.
            Some(id) => id,
            None => match a.claim(&trace) {
                Some(id) => id,
                None => {
                    self.respond(&efd, false);
                    return;
                }
            },
        };
        // The whole session stops too, so a daemon crash (which makes the kernel allow the
        // waiting open) still leaves it frozen.
        let _ = a.cgroups.set_frozen(&trace, true);
        let fresh = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = !p.contains_key(&id);
            if let Some(old) = p.insert(id.clone(), efd) {
                self.respond(&old, false);
            }
            fresh
        };
        if !fresh {
            return;
        }
        // The path, the process's details, the tree, SQLite and the webhook: on the worker.
        // The open waits in the kernel and the session is frozen meanwhile.
        let fd = match efd_dup(&self.pending, &id) {
            Some(fd) => fd,
            None => return,
        };
        let shared = shared.clone();
        self.recorder
            .submit(move || record(&shared, pid, trace, id, fd, flags));
    }

    /// Whether the event's file is one where only an open for writing waits, and if so
    /// whether such an open is refused at once (a `kill` rule's file).
    fn only_writes_wait(&self, efd: &OwnedFd) -> Option<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let md = std::fs::metadata(format!("/proc/self/fd/{}", efd.as_raw_fd())).ok()?;
        self.write_only
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(md.dev(), md.ino()))
            .copied()
    }

    /// Writes the verdict of a protected-open hold. False when no open is waiting on it (the
    /// daemon restarted since).
    fn verdict(&self, hold: &str, allow: bool) -> bool {
        let efd = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hold);
        match efd {
            Some(efd) => {
                self.respond(&efd, allow);
                true
            }
            None => false,
        }
    }
}

/// Whether open flags write to the file (or truncate or create it).
fn writes(flags: u64) -> bool {
    flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_CREAT) as u64 != 0
}

/// The open-path patterns the gated rules name only for writing (their files' change is the
/// harm).
fn write_patterns(shared: &Enforce) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = shared
        .policy
        .load()
        .gate
        .named
        .iter()
        .filter(|n| n.intent != 0 && n.intent & watcher_common::INTENT_READ == 0)
        .map(|n| (n.pattern.clone(), n.kill))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The existing directories the write patterns' files are (or may appear) in.
fn write_directories(patterns: &[(String, bool)]) -> Vec<PathBuf> {
    patterns
        .iter()
        .filter_map(|(p, _)| p.rsplit_once('/').map(|(dir, _)| dir.to_string()))
        .flat_map(|dir| {
            if dir.contains(['*', '?', '[']) {
                crate::sys::files::named(&dir)
                    .into_iter()
                    .filter(|(d, _)| d.is_dir())
                    .map(|(d, _)| d)
                    .collect()
            } else if Path::new(&dir).is_dir() {
                vec![PathBuf::from(dir)]
            } else {
                Vec::new()
            }
        })
        .collect()
}

/// A second descriptor of the waiting open's file (the verdict consumes the first one).
fn efd_dup(pending: &Mutex<HashMap<String, OwnedFd>>, id: &str) -> Option<OwnedFd> {
    let p = pending.lock().unwrap_or_else(|e| e.into_inner());
    p.get(id)?.try_clone().ok()
}

/// Publishes the finding of a held protected open and stores its hold (on the worker).
fn record(shared: &Arc<Enforce>, pid: u32, trace: String, id: String, fd: OwnedFd, flags: u64) {
    let a = &shared.approvals;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    drop(fd);
    let trigger = Event {
        seq: 0,
        ts: Ts(std::time::SystemTime::now()),
        pid,
        tid: pid,
        ppid: crate::sys::procfs::ppid_of(pid),
        uid: crate::sys::procfs::uid_of(pid),
        trace_id: trace.clone(),
        comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cgroup_id: 0,
        detail: Detail::Open {
            syscall: None,
            path: path.clone(),
            flags: crate::model::event::OpenFlags(flags),
            mode: 0,
            result: 0,
            error: None,
            resolved: true,
            path_truncated: false,
            opened_as: None,
        },
    };
    let description = if writes(flags) {
        format!("a watched process opened {path} for writing; the open waits for a verdict, before the file changes")
    } else {
        format!("a watched process opened the protected file {path}; the open waits for a verdict")
    };
    tracing::warn!(hold = %id, trace_id = %trace, pid, path, "protected open held");
    let tree = crate::sys::procfs::proc_infos(&a.cgroups.pids(&trace));
    crate::sys::fault::point(crate::sys::fault::BEFORE_HOLD_STORE);
    let hold = crate::enforce::decide::OwnHold {
        id,
        kind: crate::model::hold::HoldKind::ProtectedOpen,
        rule: RULE,
        description,
        tags: vec!["T1552.001".into(), "ASI03".into()],
        in_kernel: true,
        trigger,
        tree,
        stopped: Vec::new(),
    };
    if let Err(e) = crate::enforce::decide::open_own_hold(shared, hold) {
        tracing::error!("storing the protected-open hold: {e}");
    }
}
