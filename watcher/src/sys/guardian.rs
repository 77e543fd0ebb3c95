//! The guardian: a small process beside the daemon that continues it when something stopped
//! it. A stopped process cannot continue itself, and the kernel cannot refuse a SIGSTOP here
//! (no BPF-LSM), so a second process does it; the daemon continues and replaces the guardian
//! in turn. Both are in the kernel's `GUARDED` map: a watched process that signals or traces
//! either is killed as it sends and its session halted (`watcher-ebpf/src/probes/guard.rs`),
//! so it cannot stop the second after the first.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::procfs::is_stopped;

/// How often each looks at the other: a stopped daemon runs again within about this long.
pub const EVERY: Duration = Duration::from_millis(10);

/// Starts the guardian of the calling process (`watcher guard --pid PID`, this same binary).
pub fn spawn() -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt as _;
    // Through /proc/self/exe: the binary that runs, even when an upgrade replaced the file.
    Command::new("/proc/self/exe")
        .arg0("watcher")
        .args(["guard", "--pid", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
}

/// The guardian's loop (`watcher guard`): continues `pid` whenever it is stopped; returns
/// when `pid` is gone or is no longer its parent.
pub fn guard(pid: u32) -> std::io::Result<()> {
    // SAFETY: prctl and signal with constant arguments, before any thread exists.
    unsafe {
        // The guardian ends with the daemon (a crash or kill included), never outlives it.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A terminal's job control or hang-up is the daemon's to act on, not the guardian's.
        for sig in [
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    // SAFETY: no preconditions.
    if unsafe { libc::getppid() } as u32 != pid {
        return Ok(());
    }
    loop {
        if is_stopped(pid) {
            // SAFETY: a signal to the daemon, our parent.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            eprintln!("watcher guard: the daemon (pid {pid}) was stopped; continued it");
        }
        std::thread::sleep(EVERY);
        // SAFETY: no preconditions.
        if unsafe { libc::getppid() } as u32 != pid {
            return Ok(());
        }
    }
}

/// What the daemon's side saw of its guardian in one look.
pub enum Seen {
    Running,
    /// It was stopped and has been continued.
    Continued,
    /// It is gone (exit status); a new one must be started.
    Gone(std::process::ExitStatus),
}

/// One look at the guardian from the daemon's side.
pub fn look(child: &mut Child) -> Seen {
    match child.try_wait() {
        Ok(Some(status)) => Seen::Gone(status),
        // An error here means the child was reaped elsewhere: gone all the same.
        Err(_) => Seen::Gone(std::os::unix::process::ExitStatusExt::from_raw(0)),
        Ok(None) if is_stopped(child.id()) => {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            Seen::Continued
        }
        Ok(None) => Seen::Running,
    }
}

/// The calling process's thread ids (a ptrace names a thread).
pub fn own_threads() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
