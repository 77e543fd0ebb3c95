//! A process's view of the file system. An agent in a bubblewrap sandbox or a container has
//! its own mount namespace: the same path names other files there than in the daemon's. What
//! the daemon looks up or undoes for a process is resolved inside that process's root
//! (`/proc/PID/root`, which also enters its mount namespace), with `RESOLVE_IN_ROOT`, so an
//! absolute symlink inside it is read as the process reads it, never as a name of the
//! daemon's.
use std::{
    ffi::{CStr, CString},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// The root paths are resolved in: a process's, or the daemon's own when none is left.
pub struct View {
    /// None only when not even `/` could be opened (out of descriptors): every lookup fails.
    root: Option<OwnedFd>,
    pid: Option<u32>,
}

/// What `View::stat` found: the directory (held open, so an undo acts in the directory that
/// was checked), the name in it, and its `statx`.
pub struct Found {
    pub dir: OwnedFd,
    pub name: CString,
    pub st: libc::statx,
}

impl Found {
    /// (dev, ino) as `stat` reports them (`st_dev`).
    pub fn id(&self) -> (u64, u64) {
        (
            libc::makedev(self.st.stx_dev_major, self.st.stx_dev_minor),
            self.st.stx_ino,
        )
    }

    pub fn is_file(&self) -> bool {
        u32::from(self.st.stx_mode) & libc::S_IFMT == libc::S_IFREG
    }
}

impl View {
    /// The view of the first of `pids` that is still there; the daemon's own after them.
    pub fn of(pids: impl IntoIterator<Item = u32>) -> View {
        for pid in pids {
            if let Ok(root) = open_path(libc::AT_FDCWD, &format!("/proc/{pid}/root"), 0) {
                return View {
                    root: Some(root),
                    pid: Some(pid),
                };
            }
        }
        View::ours()
    }

    /// The daemon's own view.
    pub fn ours() -> View {
        View {
            root: open_path(libc::AT_FDCWD, "/", 0).ok(),
            pid: None,
        }
    }

    /// Whose view it is (None: the daemon's).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The directory `dir` (absolute, as the process names it), opened `O_PATH`.
    pub fn dir(&self, dir: &Path) -> std::io::Result<OwnedFd> {
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EMFILE))?;
        open_path(
            root.as_raw_fd(),
            rel.to_str().ok_or_else(not_utf8)?,
            libc::O_DIRECTORY,
        )
    }

    /// What `path` names (a symlink in it followed inside the root), opened `O_PATH`.
    pub fn open(&self, path: &Path) -> std::io::Result<OwnedFd> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EMFILE))?;
        open_path(root.as_raw_fd(), rel.to_str().ok_or_else(not_utf8)?, 0)
    }

    /// What `path` names, a final symlink not followed.
    pub fn stat(&self, path: &Path) -> std::io::Result<Found> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let dir = self.dir(parent)?;
        let name = CString::new(name.as_encoded_bytes())?;
        let st = statx(dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)?;
        Ok(Found { dir, name, st })
    }
}

/// `statx` of `name` in the directory descriptor `dir` (`AT_FDCWD`: the working directory; an
/// empty name: `dir` itself).
pub fn statx(dir: i32, name: &CStr, flags: i32) -> std::io::Result<libc::statx> {
    let flags = flags
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: an all-zero statx is a valid out-buffer.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, C string and out-buffer.
    let r = unsafe {
        libc::statx(
            dir,
            name.as_ptr(),
            flags,
            libc::STATX_TYPE | libc::STATX_INO | libc::STATX_BTIME | libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn not_utf8() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EINVAL)
}

/// `openat2(dirfd, path, O_PATH | flags)`, resolved inside `dirfd` when it is a root.
fn open_path(dirfd: i32, path: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(path)?;
    // SAFETY: an all-zero open_how is valid (no flags, no mode, no resolve restriction).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC | flags) as u64;
    if dirfd != libc::AT_FDCWD {
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    }
    // SAFETY: openat2 with a valid C string and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the call just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_in_a_root_is_read_inside_that_root() {
        let base = std::env::temp_dir().join(format!("watcher-view-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/hostname"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("link")).unwrap();
        let root = open_path(libc::AT_FDCWD, base.to_str().unwrap(), 0).unwrap();
        let v = View {
            root: Some(root),
            pid: None,
        };
        // `/link/hostname` is the root's own etc/hostname, not the daemon's /etc/hostname.
        let inside = v.stat(Path::new("/link/hostname")).unwrap();
        let want = std::fs::metadata(base.join("etc/hostname")).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(inside.id(), (want.dev(), want.ino()));
        assert!(inside.is_file());
        // `..` does not leave it either.
        let up = v.stat(Path::new("/../../etc/hostname")).unwrap();
        assert_eq!(up.id(), (want.dev(), want.ino()));
        assert!(v.stat(Path::new("/missing/x")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
