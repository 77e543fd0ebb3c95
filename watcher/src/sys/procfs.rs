//! What /proc says about processes.
use crate::model::hold::ProcInfo;

/// The processes as a hold shows them: pid, parent, executable and command line.
pub fn proc_infos(pids: &[u32]) -> Vec<ProcInfo> {
    pids.iter()
        .map(|&p| {
            let (exe, argv) = proc_exe_argv(p);
            ProcInfo {
                pid: p,
                ppid: ppid_of(p),
                exe: exe.unwrap_or_default(),
                argv,
            }
        })
        .collect()
}

/// The pid's descendants from /proc (children of children...).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The comm field may contain spaces and parens: fields resume after the last ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.remove(0);
    out
}

pub fn ppid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Whether a live process is stopped by a signal (state `T`; not `t`, stopped by a tracer).
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st == "T")
        })
        .unwrap_or(false)
}

/// A live process's executable and command line, from /proc (empty when it is gone).
pub fn proc_exe_argv(pid: u32) -> (Option<String>, Vec<String>) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    (exe, argv)
}

/// The trace id of the session `pid` belongs to: its cgroup v2 directory under `cgroup` (the
/// watcher's directory name).
pub fn session_of(cgroup: &str, pid: u32) -> Option<String> {
    let marker = format!("/{cgroup}/");
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("0::"))?;
    let i = line.find(&marker)?;
    let rest = &line[i + marker.len()..];
    Some(rest.split('/').next()?.to_string()).filter(|t| !t.is_empty())
}

/// The process's real uid (0 when it is gone).
pub fn uid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The process a pidfd of `pid` names (`Pid:` in its fdinfo), while `pid` holds it.
pub fn pidfd_target(pid: u32, fd: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
        .filter(|p: &u32| *p > 0)
}

/// The flags of the open a thread of `tgid` is blocked in (a fanotify permission event waits
/// inside the syscall, so `/proc/PID/task/TID/syscall` shows its arguments): the writing one
/// when several threads open, None when no thread of it is in an open. x86_64 numbers; an
/// `openat2` (flags behind a pointer) counts as a write.
/// `pending_open_flags`, waiting up to `limit` for the opener to be asleep in its call: a
/// permission event reaches the daemon before its opener has gone to sleep waiting for the
/// answer, and until then /proc says `running` instead of the call (seen under load: a read
/// at Python's start-up was taken for a write and held).
pub fn pending_open_flags_within(tgid: u32, limit: std::time::Duration) -> Option<u64> {
    let until = std::time::Instant::now() + limit;
    loop {
        let f = pending_open_flags(tgid);
        if f.is_some() || std::time::Instant::now() >= until {
            return f;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

pub fn pending_open_flags(tgid: u32) -> Option<u64> {
    let rd = std::fs::read_dir(format!("/proc/{tgid}/task")).ok()?;
    let mut found = None;
    for t in rd.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("syscall")) else {
            continue;
        };
        let mut f = text.split_whitespace();
        let nr: i64 = match f.next().and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => continue,
        };
        let args: Vec<u64> = f
            .take(6)
            .filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            .collect();
        let flags = match (nr, args.as_slice()) {
            (2, [_, flags, ..]) => *flags,
            (257, [_, _, flags, ..]) => *flags,
            // open_by_handle_at(mount_fd, handle, flags)
            (304, [_, _, flags, ..]) => *flags,
            (85, _) => (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64,
            (437, _) => libc::O_RDWR as u64,
            _ => continue,
        };
        let w = (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_CREAT) as u64;
        if flags & w != 0 {
            return Some(flags);
        }
        found = Some(flags);
    }
    found
}

/// Whether `pid`'s program, just exec'd as `filename`, is no file on disk: it was run through a
/// descriptor (`/dev/fd/N`, `/proc/…/fd/N`: `fexecve`, `execveat`), and its executable is a
/// memfd or deleted. Only an exec through a descriptor is looked at in /proc (it can run what
/// has no name); a process that is gone by then reads as not fileless, which the gate prevents
/// for rules that ask (it stops such an exec until the policy has run).
pub fn runs_fileless(pid: u32, filename: &str) -> bool {
    if !is_fd_path(filename) {
        return false;
    }
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .is_some_and(|exe| exe.starts_with("/memfd:") || exe.ends_with(" (deleted)"))
}

/// `/dev/fd/N`, `/proc/self/fd/N`, `/proc/PID/fd/N`.
pub fn is_fd_path(p: &str) -> bool {
    if p.strip_prefix("/dev/fd/").is_some() {
        return true;
    }
    p.strip_prefix("/proc/")
        .and_then(|r| r.split_once('/'))
        .is_some_and(|(who, rest)| {
            (who == "self" || who.bytes().all(|b| b.is_ascii_digit())) && rest.starts_with("fd/")
        })
}

/// A process's working directory, while it lives.
pub fn cwd(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The mount namespace a process is in (`mnt:[N]`), if it can be read.
pub fn mount_ns(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

#[cfg(test)]
mod tests {
    /// An opener still running when its event is read (it has not gone to sleep in the call
    /// yet) is waited for, not taken as unknown: here a thread that spins first, then blocks
    /// opening a FIFO for reading.
    #[test]
    fn an_opener_not_yet_asleep_in_its_call_is_waited_for() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = std::env::temp_dir().join(format!("watcher-flags-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let spin = std::time::Duration::from_millis(300);
        let f2 = fifo.clone();
        let opener = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while start.elapsed() < spin {
                std::hint::spin_loop();
            }
            // Blocks until a writer opens it.
            std::fs::File::open(f2).map(|_| ())
        });
        let me = std::process::id();
        // While it spins, no thread of this process is in an open (other tests' opens are
        // instant): nothing to read yet.
        let early = super::pending_open_flags(me);
        let got = super::pending_open_flags_within(me, std::time::Duration::from_secs(10));
        let _w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        opener.join().unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(early, None);
        assert_eq!(
            got.map(|f| f & (libc::O_ACCMODE as u64)),
            Some(libc::O_RDONLY as u64)
        );
    }

    #[test]
    fn an_exec_through_a_descriptor_is_told_by_its_name() {
        for p in ["/dev/fd/3", "/proc/self/fd/10", "/proc/4242/fd/3"] {
            assert!(super::is_fd_path(p), "{p}");
        }
        for p in [
            "/usr/bin/sh",
            "/proc/self/exe",
            "/proc/x1/fd/3",
            "/dev/fdx/3",
            "fd/3",
        ] {
            assert!(!super::is_fd_path(p), "{p}");
        }
    }
}
