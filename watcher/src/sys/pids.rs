//! Each session's process limit (`pids.max`): a fork bomb in a session fails its forks instead
//! of starving the host (and the daemon). Where the pids controller is depends on the host: on
//! the cgroup v2 hierarchy (the session's own cgroup), or, on hybrid hosts where it is bound to
//! a cgroup v1 hierarchy (this one), a v1 cgroup per session beside the v2 one, which the
//! session's processes join at launch and their children are born in. With neither, sessions
//! have no limit, and the daemon says so at start-up and in `status`.
use std::path::{Path, PathBuf};

use super::cgroup::FreezeError;

/// Where the limit is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// In the session's cgroup v2 directory.
    V2,
    /// In `<v1 pids mount>/<name>/<trace id>`: the base directory.
    V1(PathBuf),
}

#[derive(Debug)]
pub struct PidsLimit {
    pub max: u64,
    pub place: Place,
}

impl PidsLimit {
    /// The limit for sessions under `v2_base` (`<cgroup v2 root>/<name>`), where this host has
    /// the pids controller; None when it has none (or `max` is 0: no limit asked for).
    pub fn detect(v2_base: &Path, name: &str, max: u64) -> Option<PidsLimit> {
        if max == 0 {
            return None;
        }
        if let Some(root) = v2_base.parent() {
            if enable_v2(root, v2_base) {
                return Some(PidsLimit {
                    max,
                    place: Place::V2,
                });
            }
        }
        let mount = v1_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
        let base = mount.join(name);
        std::fs::create_dir_all(&base).ok()?;
        Some(PidsLimit {
            max,
            place: Place::V1(base),
        })
    }

    /// Sets the limit on a new session (`v2_dir`: its cgroup v2 directory) and moves `pids`
    /// under it. Called before the session's first process is let go.
    pub fn start(&self, v2_dir: &Path, trace: &str, pids: &[u32]) -> Result<(), FreezeError> {
        let dir = self.dir(v2_dir, trace);
        std::fs::create_dir_all(&dir).map_err(|source| FreezeError::Io {
            path: dir.clone(),
            source,
        })?;
        write(&dir.join("pids.max"), &self.max.to_string())?;
        for pid in pids {
            self.add(v2_dir, trace, *pid)?;
        }
        Ok(())
    }

    /// Moves `pid` under the session's limit (a v2 session has it already: one directory).
    pub fn add(&self, v2_dir: &Path, trace: &str, pid: u32) -> Result<(), FreezeError> {
        if self.place == Place::V2 {
            return Ok(());
        }
        let procs = self.dir(v2_dir, trace).join("cgroup.procs");
        match write(&procs, &pid.to_string()) {
            // Exited meanwhile: nothing to move.
            Err(FreezeError::Io { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
                Ok(())
            }
            r => r,
        }
    }

    /// Removes a v1 session directory with no process left (the v2 one goes with the session's
    /// cgroup).
    pub fn remove(&self, v2_dir: &Path, trace: &str) {
        if let Place::V1(_) = self.place {
            let _ = std::fs::remove_dir(self.dir(v2_dir, trace));
        }
    }

    /// Where the session's `pids.max` is.
    pub fn dir(&self, v2_dir: &Path, trace: &str) -> PathBuf {
        match &self.place {
            Place::V2 => v2_dir.to_path_buf(),
            Place::V1(base) => base.join(trace),
        }
    }

    /// For `status`: `cgroup v2`, or the v1 directory.
    pub fn describe(&self) -> String {
        match &self.place {
            Place::V2 => "cgroup v2".into(),
            Place::V1(base) => format!("cgroup v1 {}", base.display()),
        }
    }
}

/// Enables the pids controller for the children of `base` (under `root`), if the v2 hierarchy
/// has it.
fn enable_v2(root: &Path, base: &Path) -> bool {
    let has = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "pids"))
    };
    if !has(root) {
        return false;
    }
    let on = |dir: &Path| write(&dir.join("cgroup.subtree_control"), "+pids").is_ok();
    on(root) && has(base) && on(base)
}

/// The mount point of a cgroup v1 hierarchy with the pids controller, from `mountinfo`.
fn v1_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let options = r.nth(1)?;
        if !options.split(',').any(|o| o == "pids") {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

fn write(path: &Path, value: &str) -> Result<(), FreezeError> {
    std::fs::write(path, value).map_err(|source| FreezeError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v1_pids_hierarchy_is_found_in_mountinfo() {
        let text = "\
35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
36 24 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
37 24 0:32 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
";
        assert_eq!(v1_mount(text), Some(PathBuf::from("/sys/fs/cgroup/pids")));
        assert_eq!(v1_mount(&text.replace(",pids", ",cpu")), None);
    }
}
