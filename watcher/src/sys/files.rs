//! What the file system says about files a held process touched.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
    time::SystemTime,
};

use std::os::fd::AsRawFd as _;

use super::view::View;
use crate::model::hold::CreatedFile;

/// How far before the open's event a file's birth may lie and still be the open's creation:
/// the kernel stamps the inode before the syscall's exit hook reads its clock, and the two
/// clocks are read at different moments.
const BIRTH_SLACK: Duration = Duration::from_millis(20);

/// The file at `path`, as `view`'s process names it, if the open at `opened` created it: its
/// birth time (statx) is at or after the open. None when it existed before, is gone, or the
/// file system keeps no birth time (then nothing will be removed on deny: a file that may have
/// existed is never deleted).
pub fn created_by_open(view: &View, path: &str, opened: SystemTime) -> Option<CreatedFile> {
    let f = view.stat(Path::new(path)).ok()?;
    if f.st.stx_mask & libc::STATX_BTIME == 0 || !f.is_file() {
        return None;
    }
    let born = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(f.st.stx_btime.tv_sec).ok()?,
            f.st.stx_btime.tv_nsec,
        );
    if born + BIRTH_SLACK < opened {
        return None;
    }
    let (dev, ino) = f.id();
    Some(CreatedFile {
        path: path.to_string(),
        dev,
        ino,
    })
}

/// Removes a file a denied open created, if its name, as `view`'s process names it, still
/// names that same file. Returns whether it was removed.
pub fn remove_created(view: &View, f: &CreatedFile) -> bool {
    let Ok(found) = view.stat(Path::new(&f.path)) else {
        return false;
    };
    // SAFETY: unlinkat of a name in a directory descriptor that is open.
    found.id() == (f.dev, f.ino)
        && unsafe { libc::unlinkat(found.dir.as_raw_fd(), found.name.as_ptr(), 0) } == 0
}

/// The regular file `path` names (not following a final symlink), as `view`'s process names
/// it, by name and identity.
pub fn identity_of_file(view: &View, path: &str) -> Option<CreatedFile> {
    let f = view.stat(Path::new(path)).ok()?;
    let (dev, ino) = f.id();
    f.is_file().then(|| CreatedFile {
        path: path.to_string(),
        dev,
        ino,
    })
}

/// Clears `bits` of the mode of `f` if its name, as `view`'s process names it, still names
/// that same regular file (a name swapped for another file, `/usr/bin/sudo` say, is left
/// alone). Through a descriptor of the file checked, so the name cannot be swapped between the
/// check and the change.
pub fn clear_mode_bits(view: &View, f: &CreatedFile, bits: u32) -> bool {
    use std::os::fd::FromRawFd as _;
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(found) = view.stat(Path::new(&f.path)) else {
        return false;
    };
    // SAFETY: openat of a name in an open directory descriptor, never following a link.
    let fd = unsafe {
        libc::openat(
            found.dir.as_raw_fd(),
            found.name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: the descriptor just returned, owned here.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let Ok(md) = file.metadata() else {
        return false;
    };
    if !md.is_file() || md.dev() != f.dev || md.ino() != f.ino {
        return false;
    }
    let mode = md.permissions().mode() & 0o7777;
    file.set_permissions(std::fs::Permissions::from_mode(mode & !bits))
        .is_ok()
}

/// A device number as the kernel keeps it (`super_block.s_dev`, `MKDEV(major, minor)`,
/// `major << 20 | minor`): 32 bits, where `stat` gives 64.
pub fn kernel_dev(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | libc::minor(st_dev)
}

/// (inode, kernel device) of what `path` names, following symlinks (and `/proc/PID/fd/N`), as
/// the kernel's gate reads them (`i_ino`, `i_sb->s_dev`). For many paths at once, `Identities`
/// reads each mount table once.
pub fn identity(path: &Path) -> Option<(u64, u32)> {
    Identities::default().of(path)
}

/// File identities looked up together: the mount tables they need are read once per lookup
/// pass (mount ids are reused after an unmount, so a table is not kept longer).
#[derive(Default)]
pub struct Identities {
    /// By the process whose mount namespace a path was resolved in (None: ours): mount id ->
    /// device.
    tables: std::collections::HashMap<Option<u32>, std::collections::HashMap<u64, u32>>,
}

impl Identities {
    /// `identity` of `path`. The device is the one `mountinfo` prints for the mount the path
    /// is on: `st_dev` is another number on a btrfs subvolume.
    pub fn of(&mut self, path: &Path) -> Option<(u64, u32)> {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
        // The mount table of the namespace `path` is resolved in: the process's for
        // `/proc/PID/...`, else ours.
        let pid = path
            .strip_prefix("/proc")
            .ok()
            .and_then(|r| r.components().next())
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok());
        self.at(libc::AT_FDCWD, &c, 0, pid)
    }

    /// `of` the name `name` in the directory `dir` (an empty name: `dir` itself), a final
    /// symlink not followed, in the mount namespace of process `pid` (None: ours).
    pub fn of_in(
        &mut self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::CStr,
        pid: Option<u32>,
    ) -> Option<(u64, u32)> {
        self.at(dir.as_raw_fd(), name, libc::AT_SYMLINK_NOFOLLOW, pid)
    }

    fn at(
        &mut self,
        dir: i32,
        name: &std::ffi::CStr,
        flags: i32,
        pid: Option<u32>,
    ) -> Option<(u64, u32)> {
        let st = super::view::statx(dir, name, flags).ok()?;
        let st_dev = kernel_dev(libc::makedev(st.stx_dev_major, st.stx_dev_minor));
        let dev = (st.stx_mask & libc::STATX_MNT_ID != 0)
            .then(|| {
                self.tables
                    .entry(pid)
                    .or_insert_with(|| mount_table(pid))
                    .get(&st.stx_mnt_id)
                    .copied()
            })
            .flatten()
            .unwrap_or(st_dev);
        Some((st.stx_ino, dev))
    }
}

/// Mount id -> device (`major:minor`, as the kernel keeps it) of a mount namespace's table.
fn mount_table(pid: Option<u32>) -> std::collections::HashMap<u64, u32> {
    let table = match pid {
        Some(pid) => format!("/proc/{pid}/mountinfo"),
        None => "/proc/self/mountinfo".to_string(),
    };
    let text = std::fs::read_to_string(table).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            // `36 35 98:0 /mnt1 /mnt2 ...`: mount id, parent id, major:minor.
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let (ma, mi) = f.nth(1)?.split_once(':')?;
            Some((
                id,
                (ma.parse::<u32>().ok()? << 20) | mi.parse::<u32>().ok()?,
            ))
        })
        .collect()
}

/// Entries `named` returns at most for one pattern.
const NAMED_MAX: usize = 4096;

/// The files and directories that exist now and that a path pattern (`*`, `?`, `[..]` within a
/// component) names: each file it matches, and, when its last component is a wildcard, each
/// directory that component is matched in (`true`): a file created there later is named too.
/// A `**` before the last component names nothing (not enumerable); a last `**` names its
/// directory.
pub fn named(pattern: &str) -> Vec<(PathBuf, bool)> {
    named_under(Path::new("/"), pattern)
}

/// `named` under another root (`/proc/PID/root`: a process's own mount namespace), the paths
/// returned with that root before them. Under another root no directory is entered through a
/// symlink: it would be read in the daemon's namespace, not the process's.
pub fn named_under(root: &Path, pattern: &str) -> Vec<(PathBuf, bool)> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Vec::new();
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Vec::new();
    };
    let Some(cur) = directories(root, dirs) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if *last == "**" {
        out.extend(cur.into_iter().map(|d| (d, true)));
    } else if wild(last) {
        let Some(m) = component_matcher(last) else {
            return Vec::new();
        };
        for d in cur {
            out.extend(
                children(&d)
                    .into_iter()
                    .filter(|p| p.is_file() && p.file_name().is_some_and(|n| m.is_match(n)))
                    .map(|p| (p, false)),
            );
            out.push((d, true));
        }
    } else {
        out.extend(
            cur.into_iter()
                .map(|d| d.join(last))
                .filter(|p| p.exists())
                .map(|p| (p, false)),
        );
    }
    out.truncate(NAMED_MAX);
    out
}

/// The directories that exist now where a path pattern with a literal last component would
/// put that name (`~/.ssh` for `~/.ssh/authorized_keys`, whether the file exists or not): a
/// name made there under any other spelling is the pattern's. Nothing for a pattern whose last
/// component is a wildcard (`named` lists those directories).
pub fn parents(pattern: &str) -> Vec<PathBuf> {
    parents_under(Path::new("/"), pattern)
}

/// `parents` under another root, as `named_under`.
pub fn parents_under(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Vec::new();
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.split_last() {
        Some((last, dirs)) if !last.is_empty() && !wild(last) => {
            directories(root, dirs).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

fn wild(c: &str) -> bool {
    c.contains(['*', '?', '['])
}

/// The directories that exist now and that these components (`*`, `?`, `[..]` within one)
/// name; None for a `**` (not enumerable) or a bad pattern.
fn directories(root: &Path, dirs: &[&str]) -> Option<Vec<PathBuf>> {
    let ours = root == Path::new("/");
    let is_dir = |p: &Path| match ours {
        true => p.is_dir(),
        false => std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()),
    };
    let mut cur = vec![root.to_path_buf()];
    for c in dirs {
        if c.contains("**") {
            return None;
        }
        cur = if wild(c) {
            let m = component_matcher(c)?;
            cur.iter()
                .flat_map(|d| children(d).into_iter().filter(|p| is_dir(p)))
                .filter(|p| p.file_name().is_some_and(|n| m.is_match(n)))
                .take(NAMED_MAX)
                .collect()
        } else {
            cur.into_iter()
                .map(|d| d.join(c))
                .filter(|p| is_dir(p))
                .collect()
        };
    }
    Some(cur)
}

fn component_matcher(c: &str) -> Option<globset::GlobMatcher> {
    Some(globset::Glob::new(c).ok()?.compile_matcher())
}

fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// Makes the SQLite database at `path` private to its owner before SQLite opens it: created
/// 0600 if missing, and an existing one (with its `-wal` and `-shm`) brought back to 0600.
/// SQLite gives the `-wal` and `-shm` files the database file's own mode when it creates
/// them, so they are never readable by others either, not even for an instant.
pub fn private_store(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // O_NOFOLLOW: a planted symlink does not give SQLite another file to create or chmod.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    for suffix in ["-wal", "-shm", "-journal", "-unwritten"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        match std::fs::symlink_metadata(&side) {
            Ok(md) if md.is_file() && md.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600))?
            }
            _ => {}
        }
    }
    Ok(())
}

/// Clears the permission bits others have on `path` (a file a user or an older version
/// made), keeping the owner's and the group's.
pub fn close_to_others(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o007))?;
    }
    Ok(())
}

/// Writes `text` to a new file at `path` created with `mode` (never wider, whatever the
/// umask), replacing what was there.
pub fn write_private(path: &Path, text: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(text)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::{clear_mode_bits, identity_of_file, named};
    use std::path::Path;

    /// A file has one identity by its name and by a descriptor of it (`/proc/self/fd/N`), and
    /// one pass gives what single lookups give.
    #[test]
    fn a_file_is_one_identity_by_name_and_by_descriptor() {
        use std::os::fd::AsRawFd as _;
        let f = std::fs::File::open("/etc/hostname").unwrap();
        let by_fd = format!("/proc/self/fd/{}", f.as_raw_fd());
        let mut ids = super::Identities::default();
        let (a, b) = (
            ids.of(Path::new("/etc/hostname")),
            ids.of(Path::new(&by_fd)),
        );
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_eq!(a, super::identity(Path::new("/etc/hostname")));
        assert_ne!(ids.of(Path::new("/dev/shm")), ids.of(Path::new("/dev")));
    }

    #[test]
    fn a_pattern_names_the_files_that_exist_and_the_directories_of_its_wildcard() {
        let dir = std::env::temp_dir().join(format!("watcher-named-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["u1/.ssh", "u2/.ssh", "u3"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        for f in [
            "u1/.ssh/id_rsa",
            "u1/.ssh/known_hosts",
            "u2/.ssh/id_ed25519",
            "u3/.netrc",
        ] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let d = dir.display();
        let mut keys = named(&format!("{d}/*/.ssh/id_*"));
        keys.sort();
        let want = |p: &str, is_dir: bool| (dir.join(p), is_dir);
        assert_eq!(
            keys,
            [
                want("u1/.ssh", true),
                want("u1/.ssh/id_rsa", false),
                want("u2/.ssh", true),
                want("u2/.ssh/id_ed25519", false)
            ]
        );
        assert_eq!(named(&format!("{d}/*/.netrc")), [want("u3/.netrc", false)]);
        assert_eq!(named(&format!("{d}/u3/**")), [want("u3", true)]);
        assert!(
            named(&format!("{d}/**/.netrc")).is_empty(),
            "** is not enumerable"
        );
        assert!(named(&format!("{d}/u9/.netrc")).is_empty());
        assert!(named("relative/path").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clearing_setid_bits_spares_a_file_swapped_in_under_the_name() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("watcher-setid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tool");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        std::fs::write(&f, "x").unwrap();
        set(&f, 0o4755);
        let v = crate::sys::view::View::ours();
        let id = identity_of_file(&v, f.to_str().unwrap()).unwrap();
        assert!(clear_mode_bits(&v, &id, 0o6000));
        assert_eq!(mode(&f), 0o755);
        // Another file renamed over the name keeps its bits.
        let other = dir.join("other");
        std::fs::write(&other, "y").unwrap();
        set(&other, 0o4755);
        std::fs::rename(&other, &f).unwrap();
        assert!(!clear_mode_bits(&v, &id, 0o6000));
        assert_eq!(mode(&f), 0o4755);
        // A symlink in its place is not followed.
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink("/bin/sh", &f).unwrap();
        assert!(!clear_mode_bits(&v, &id, 0o6000));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
