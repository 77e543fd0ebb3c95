//! Pinning in bpffs: the maps and the programs' links outlive the daemon, so a crash, a
//! `systemctl restart` or an upgrade leaves the gate, the fast paths, the deny lists, the
//! kill-switch and the watched map in force. A process gated while no daemon runs stays
//! stopped, and its record waits in the pinned ring for the next daemon.
//!
//! Layout: `<root>/<generation>/maps/<MAP>` and `<root>/<generation>/links-<pid>/<program>`.
//! The generation names the object and the map sizes: a daemon of the same generation takes
//! the maps over (unread records, watched processes, gated ones, the kill-switch); another
//! starts with fresh maps. A daemon pins its own links before it removes those of the daemons
//! before it, so at every instant some program is attached (for a few milliseconds both are,
//! and a record may be read twice).
use std::{
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::programs::links::{FdLink, PinnedLink};
use sha2::{Digest as _, Sha256};

/// `statfs(2)`'s `f_type` of a bpf file system.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub struct Pins {
    root: PathBuf,
    generation: PathBuf,
    links: PathBuf,
    /// Held open while the daemon runs: a pin removed by someone else then detaches nothing.
    held: std::sync::Mutex<Vec<PinnedLink>>,
    /// The maps were there already: an earlier daemon of the same generation pinned them.
    pub reused: bool,
}

impl Pins {
    /// Opens (creating, mode 0700) the pin directory for this object and these map sizes.
    pub fn open(root: &Path, object: &[u8], sizes: &[u32]) -> anyhow::Result<Pins> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .with_context(|| format!("[daemon] bpffs: creating {}", root.display()))?;
        let fs = nix::sys::statfs::statfs(root)
            .with_context(|| format!("[daemon] bpffs: statfs {}", root.display()))?;
        if fs.filesystem_type().0 as i64 != BPF_FS_MAGIC {
            bail!(
                "[daemon] bpffs: {} is not on a bpf file system (mount -t bpf bpf /sys/fs/bpf, \
                 or bpffs = \"\" to pin nothing)",
                root.display()
            );
        }
        let mut h = Sha256::new();
        h.update(object);
        for s in sizes {
            h.update(s.to_le_bytes());
        }
        let digest = h.finalize();
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let generation = root.join(name);
        let maps = generation.join("maps");
        let reused = std::fs::read_dir(&maps).is_ok_and(|mut d| d.next().is_some());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&maps)
            .with_context(|| format!("[daemon] bpffs: creating {}", maps.display()))?;
        let links = generation.join(format!("links-{}", std::process::id()));
        // A directory of an earlier process with this pid: its links are stale.
        let _ = std::fs::remove_dir_all(&links);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&links)
            .with_context(|| format!("[daemon] bpffs: creating {}", links.display()))?;
        Ok(Pins {
            root: root.to_path_buf(),
            generation,
            links,
            held: Default::default(),
            reused,
        })
    }

    /// Where the map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.generation.join("maps").join(name)
    }

    /// Pins the link of `program`: it stays attached until the pin is removed.
    pub fn pin(&self, program: &str, link: FdLink) -> anyhow::Result<()> {
        let path = self.links.join(program);
        let pinned = link
            .pin(&path)
            .with_context(|| format!("pinning the link of {program} at {}", path.display()))?;
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pinned);
        Ok(())
    }

    /// Whether an earlier daemon's links (not yet retired) include `program`'s.
    pub fn had(&self, program: &str) -> bool {
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|g| std::fs::read_dir(g.path()).into_iter().flatten().flatten())
            .filter(|d| d.file_name().to_string_lossy().starts_with("links-"))
            .any(|d| d.path() != self.links && d.path().join(program).exists())
    }

    /// Removes the links of earlier daemons (their programs detach) and the maps of other
    /// generations. Called once this daemon's own links are pinned.
    pub fn retire_others(&self) {
        let mut retired = 0;
        for entry in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = entry.path();
            if dir == self.generation {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let p = e.path();
                    let old_links = e.file_name().to_string_lossy().starts_with("links-");
                    if old_links && p != self.links && std::fs::remove_dir_all(&p).is_ok() {
                        retired += 1;
                    }
                }
            } else if entry.file_type().is_ok_and(|t| t.is_dir())
                && std::fs::remove_dir_all(&dir).is_ok()
            {
                retired += 1;
            }
        }
        if retired > 0 {
            tracing::info!(
                retired,
                reused = self.reused,
                "programs of an earlier daemon detached; this one's are pinned"
            );
        }
    }

    /// Removes this daemon's links (its programs detach when it exits) and maps: a stop that
    /// leaves the sessions running leaves nothing in the kernel that would stop them.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.generation) {
            tracing::warn!(
                "removing the pinned programs at {}: {e}",
                self.generation.display()
            );
        }
    }
}

/// The names of the maps in `object` that are worth keeping: every one the programs declare
/// (the loader's own `.rodata`, `.bss` and `.data` are made again from the object).
pub fn map_names(object: &[u8]) -> anyhow::Result<Vec<String>> {
    let obj = aya_obj::Object::parse(object).context("reading the eBPF object's maps")?;
    Ok(obj
        .maps
        .keys()
        .filter(|n| !n.starts_with('.'))
        .cloned()
        .collect())
}
