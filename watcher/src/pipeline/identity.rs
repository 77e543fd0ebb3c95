//! A rule on a path matches the file, however it is named: the files and directories the
//! gated rules name are looked up when the policy loads (and again every few seconds, so files
//! that appear are covered; a new home reloads the policy), written to the kernel's `GATE_INODE` map by identity (inode and
//! device), and kept here by name. A gated open of one of them under another name (a symlink,
//! a hard link, a bind mount, `/proc/self/root/…`) is then evaluated under the policy's name.
use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    sync::Arc,
    time::Duration,
};

use watcher_common::{Gate, InodeKey, GATE_OPEN, INTENT_CREATE, INTENT_TRUNCATE, INTENT_WRITE};

use super::Core;
use crate::kernel::policy::merge_intent;

/// The named files (`dir` 0) and directories (`dir` 1) by identity, with the policy's name.
pub type InodeIndex = HashMap<InodeKey, String>;

/// How often the named files are looked up again.
pub const REFRESH: Duration = Duration::from_secs(5);

impl Core {
    /// Looks the gated rules' files up again and makes the kernel's map and the index match.
    pub fn refresh_inodes(&self) {
        let active = self.policy.load();
        let mut entries: HashMap<InodeKey, (Gate, String)> = HashMap::new();
        // Each pattern's names, listed once: for the gate and, for the names guarded against
        // writes, the copies that let a rename, link or truncate over one be undone.
        let named: Vec<Vec<(std::path::PathBuf, bool)>> = active
            .gate
            .named
            .iter()
            .map(|n| crate::sys::files::named(&n.pattern))
            .collect();
        let guarded: Vec<(&str, &[(std::path::PathBuf, bool)])> = active
            .gate
            .named
            .iter()
            .zip(&named)
            .filter(|(n, _)| {
                n.intent == 0 || n.intent & (INTENT_WRITE | INTENT_CREATE | INTENT_TRUNCATE) != 0
            })
            .map(|(n, l)| (n.pattern.as_str(), l.as_slice()))
            .collect();
        // One pass: each mount table read once.
        let mut ids = crate::sys::files::Identities::default();
        let mut put = |(ino, dev): (u64, u32), dir: bool, intent: u32, name: &Path| {
            let key = InodeKey {
                ino,
                dev,
                dir: dir as u32,
            };
            let e = entries.entry(key).or_insert_with(|| {
                (
                    Gate {
                        kinds: GATE_OPEN,
                        intent,
                        exact_len: 0,
                        _pad: 0,
                    },
                    name.display().to_string(),
                )
            });
            // Two rules on one file: either's intents are gated.
            e.0.intent = merge_intent(e.0.intent, intent);
        };
        for (n, listed) in active.gate.named.iter().zip(&named) {
            // The directory a literal name would be made in, whether it exists or not: the
            // kernel gates a change made there by a name the tails cannot see (a bare name in
            // the working directory, a symlinked directory, a path rewritten in flight).
            let parents = crate::sys::files::parents(&n.pattern)
                .into_iter()
                .map(|d| (d, true));
            for (path, dir) in listed.iter().cloned().chain(parents) {
                if let Some(id) = ids.of(&path) {
                    put(id, dir, n.intent, &path);
                }
            }
        }
        // Sessions in a mount namespace of their own (a bubblewrap sandbox, a container) see
        // other files under the same names: those files too, by their names there, looked up
        // inside that namespace's root.
        for pid in self.foreign_namespaces() {
            let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
            let view = crate::sys::view::View::of([pid]);
            if view.pid() != Some(pid) {
                continue;
            }
            for n in &active.gate.named {
                let parents = crate::sys::files::parents_under(&root, &n.pattern)
                    .into_iter()
                    .map(|d| (d, true));
                for (path, dir) in crate::sys::files::named_under(&root, &n.pattern)
                    .into_iter()
                    .chain(parents)
                {
                    let Ok(rel) = path.strip_prefix(&root) else {
                        continue;
                    };
                    let name = Path::new("/").join(rel);
                    let id = view
                        .open(&name)
                        .ok()
                        .and_then(|fd| ids.of_in(fd.as_fd(), c"", Some(pid)));
                    if let Some(id) = id {
                        put(id, dir, n.intent, &name);
                    }
                }
            }
        }
        self.kept.refresh(&guarded);
        let list: Vec<(InodeKey, Gate)> = entries.iter().map(|(k, (g, _))| (*k, *g)).collect();
        let index: InodeIndex = entries.into_iter().map(|(k, (_, p))| (k, p)).collect();
        // The index first: a gated open the kernel finds by identity must find its name here.
        self.inodes.store(Arc::new(index));
        let r = self
            .kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_inodes(&list);
        if let Err(e) = r {
            tracing::error!("updating the gate's file identities: {e:#}");
        }
    }

    /// One process of each mount namespace, other than the daemon's, that a live session's
    /// processes are in.
    pub fn foreign_namespaces(&self) -> Vec<u32> {
        let ns = crate::sys::procfs::mount_ns;
        let ours = ns(std::process::id());
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for trace in self.cgroups.sessions() {
            for pid in self.cgroups.pids(&trace) {
                let Some(n) = ns(pid) else {
                    continue;
                };
                // Every process: one may have made a namespace of its own mid-session.
                if Some(&n) != ours.as_ref() && seen.insert(n) {
                    out.push(pid);
                }
            }
        }
        out
    }

    /// The policy's name for the file `tgid` opened as `fd` (it is stopped at the gate, so the
    /// descriptor is still there), when that is not `opened`: the file itself by identity, its
    /// directory by identity, or its real path.
    pub fn policy_name(&self, tgid: u32, fd: i64, opened: &str) -> Option<String> {
        let link = format!("/proc/{tgid}/fd/{fd}");
        let index = self.inodes.load();
        let key = |(ino, dev): (u64, u32), dir: u32| InodeKey { ino, dev, dir };
        let differs = |name: String| (name != opened).then_some(name);
        // The index is as old as its last refresh: a named file deleted since may have left its
        // inode number to a new file. A name counts only while it still is that file.
        let ids = std::cell::RefCell::new(crate::sys::files::Identities::default());
        let identity = |p: &Path| ids.borrow_mut().of(p);
        let still = |name: &str, id| identity(Path::new(name)) == Some(id);
        let opened_id = identity(Path::new(&link));
        if let Some(id) = opened_id {
            if let Some(name) = index.get(&key(id, 0)).filter(|n| still(n, id)) {
                return differs(name.clone());
            }
        }
        let real = std::fs::read_link(&link).ok()?;
        let real = real.to_str()?;
        if !real.starts_with('/') || real.ends_with(" (deleted)") {
            return None;
        }
        let p = Path::new(real);
        if let (Some(parent), Some(base)) = (p.parent(), p.file_name()) {
            // The directory as the process names it, in its own mount namespace (a sandbox's
            // bind mount of a guarded directory is that directory), and only while it still
            // holds the file opened.
            let view = crate::sys::view::View::of([tgid]);
            let dir_id = view.dir(parent).ok().and_then(|fd| {
                let name = std::ffi::CString::new(base.as_encoded_bytes()).ok()?;
                let mut ids = ids.borrow_mut();
                let holds =
                    opened_id.is_some() && ids.of_in(fd.as_fd(), &name, view.pid()) == opened_id;
                holds
                    .then(|| ids.of_in(fd.as_fd(), c"", view.pid()))
                    .flatten()
            });
            let dir = dir_id.and_then(|id| index.get(&key(id, 1)).filter(|d| still(d, id)));
            if let Some(dir) = dir {
                return differs(format!("{}/{}", dir.trim_end_matches('/'), base.to_str()?));
            }
        }
        differs(real.to_string())
    }

    /// The policy's name for the name a rename, link or truncate wrote, when that is not
    /// `named`: `written` is absolute as the process wrote it (`..` and symlinks unresolved),
    /// resolved in the root of the first of `pids` still there (the caller, else its
    /// session's), else in the daemon's. A truncate follows a final symlink (`follow`), so the file itself is
    /// looked up by identity first; then, for each call, the directory the name is in.
    pub fn policy_name_written(
        &self,
        pids: impl IntoIterator<Item = u32>,
        written: &str,
        named: &str,
        follow: bool,
    ) -> Option<String> {
        let p = Path::new(written);
        let (parent, base) = (p.parent()?, p.file_name()?);
        // None left (the call was not stopped, and the session ended before its record was
        // read): the daemon's own view, as an undo takes then. In a namespace of its own that
        // may name nothing (missed) or another file (a hold no one needed): never a release.
        let view = crate::sys::view::View::of(pids);
        let index = self.inodes.load();
        let key = |(ino, dev): (u64, u32), dir: u32| InodeKey { ino, dev, dir };
        let mut ids = crate::sys::files::Identities::default();
        // As in `policy_name`: an index entry counts only while its name is still that file.
        let mut still = |name: &str, id| ids.of(Path::new(name)) == Some(id);
        let mut found = crate::sys::files::Identities::default();
        let differs = |name: String| (name != named).then_some(name);
        if follow {
            if let Ok(fd) = view.open(p) {
                if let Some(id) = found.of_in(fd.as_fd(), c"", view.pid()) {
                    if let Some(name) = index.get(&key(id, 0)).filter(|n| still(n, id)) {
                        return differs(name.clone());
                    }
                }
                // Not in the index (made or replaced since its last refresh): the file's
                // real path, as for an open.
                let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
                let real = real.to_str()?;
                return (real.starts_with('/') && !real.ends_with(" (deleted)"))
                    .then(|| differs(real.to_string()))
                    .flatten();
            }
        }
        let dir = view
            .dir(parent)
            .ok()
            .and_then(|fd| found.of_in(fd.as_fd(), c"", view.pid()))?;
        let dir_name = index.get(&key(dir, 1)).filter(|d| still(d, dir))?;
        differs(format!(
            "{}/{}",
            dir_name.trim_end_matches('/'),
            base.to_str()?
        ))
    }
}

/// Refreshes the index every `REFRESH`, on a thread of its own (it reads directories).
/// A new home under /home also reloads the policy: the kernel's `~/` prefixes are compiled
/// per existing home.
pub fn spawn_refresh(core: Arc<Core>) -> anyhow::Result<()> {
    core.refresh_inodes();
    let homes = || {
        let mut h = crate::rules::kernel::home_dirs();
        h.sort();
        h
    };
    let mut known = homes();
    std::thread::Builder::new()
        .name("identities".into())
        .spawn(move || loop {
            std::thread::sleep(REFRESH);
            let now = homes();
            if now != known {
                known = now;
                // A failed reload is logged, counted and keeps the policy in force.
                if core.reload("the homes under /home changed").is_ok() {
                    continue;
                }
            }
            core.refresh_inodes();
        })
        .map_err(|e| anyhow::anyhow!("starting the identity thread: {e}"))?;
    Ok(())
}
