//! The session's seccomp fence: `watcher launch` gives the session root a filter before it
//! execs the agent (inherited by every process of the session, never removable) that kills a
//! process in the calls that would signal, trace or reach into the daemon, its threads or its
//! guardian, and in `kill(-1, …)`, which reaches the daemon and the guardian in one call, before
//! anything is sent. The kernel-side checks (`probes/guard.rs`) see a signal only as it is
//! generated, after which a SIGSTOP has stopped its target; the fence stops the call instead.
//! The process dies of SIGSYS in that call, which the exit hook sees (`fenced_call`): its
//! session is halted at once and taken by the kill-switch, as for a signal that got through.
//!
//! The ids are the ones at launch: a guardian started later (the first one was killed) is
//! guarded by the kernel-side checks only. A filter needs `CAP_SYS_ADMIN` without
//! `no_new_privs`, which would stop setuid programs (`sudo`) in the session: `launch` installs
//! it when it runs as root, and a session of another user cannot signal root's daemon anyway.
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("seccomp filter: {0}")]
    Compile(#[from] seccompiler::Error),
    #[error("seccomp(SECCOMP_SET_MODE_FILTER): {0}")]
    Install(std::io::Error),
}

/// The calls the fence refuses (the kernel's exit hook names the one a process died in).
pub const CALLS: [i64; watcher_common::FENCE_CALLS] = [
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_pidfd_open,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_ptrace,
];

/// The name of a call the fence refuses.
pub fn call_name(nr: u32) -> &'static str {
    const NAMES: [&str; watcher_common::FENCE_CALLS] = [
        "kill",
        "tkill",
        "tgkill",
        "rt_sigqueueinfo",
        "rt_tgsigqueueinfo",
        "pidfd_open",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
    ];
    CALLS
        .iter()
        .position(|c| *c == nr as i64)
        .map_or("a fenced call", |i| NAMES[i])
}

/// The filter that keeps a session's processes off `guarded` (the daemon's process and thread
/// ids and its guardian's).
pub fn program(guarded: &[u32]) -> Result<BpfProgram, FenceError> {
    let arg_is = |arg: u8, v: u32| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v as u64)
    };
    let one = |arg: u8, v: u32| -> Result<SeccompRule, FenceError> {
        Ok(SeccompRule::new(vec![arg_is(arg, v)?])?)
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // kill(-1, …): every process the caller may signal, the daemon and the guardian included.
    rules
        .entry(libc::SYS_kill)
        .or_default()
        .push(one(0, -1i32 as u32)?);
    for &pid in guarded {
        // The process, and its process group (`kill(-pid)`).
        rules.entry(libc::SYS_kill).or_default().push(one(0, pid)?);
        rules
            .entry(libc::SYS_kill)
            .or_default()
            .push(one(0, (pid as i32).wrapping_neg() as u32)?);
        // Calls whose first argument is the target's process or thread id.
        for call in CALLS {
            if call != libc::SYS_kill && call != libc::SYS_ptrace {
                rules.entry(call).or_default().push(one(0, pid)?);
            }
        }
        // ptrace(request, pid, …): attach, seize and every other request on it.
        rules
            .entry(libc::SYS_ptrace)
            .or_default()
            .push(one(1, pid)?);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        std::env::consts::ARCH.try_into()?,
    )?;
    Ok(filter.try_into()?)
}

/// Installs `prog` on the calling thread (and what it execs and forks from now on). Without
/// `no_new_privs`: the caller must have `CAP_SYS_ADMIN`.
pub fn install(prog: &BpfProgram) -> Result<(), FenceError> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(2) with a filter program that outlives the call (the kernel copies it).
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(FenceError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Call = dyn Fn(i32) -> i64;

    /// How a child that installs the fence around `guarded` and then calls `call(pid)` ends.
    fn status_after(call: &Call, guarded: &[u32], pid: i32) -> i32 {
        let prog = program(guarded).unwrap();
        // SAFETY: fork(2); the child only makes raw calls and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            if install(&prog).is_err() {
                unsafe { libc::_exit(100) };
            }
            call(pid);
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        status
    }

    #[test]
    fn a_call_on_a_guarded_process_dies_of_sigsys_and_on_another_goes_through() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test installs a seccomp filter without no_new_privs: run it as root");
        }
        let sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let bystander = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let target = sleeper.id() as i32;
        // As many ids as a daemon has threads, the target among them.
        let mut guarded: Vec<u32> = (4_000_000..4_000_024).collect();
        guarded.insert(12, target as u32);
        // Calls that change nothing: kill(pid, 0) checks; ptrace(PTRACE_PEEKDATA) and
        // process_vm_readv of nothing fail on a process we do not trace; a pidfd is closed
        // with the process.
        let calls: [(&str, Box<Call>); 6] = [
            (
                "ptrace attach",
                Box::new(|p| unsafe { libc::ptrace(libc::PTRACE_ATTACH, p, 0, 0) }),
            ),
            ("kill", Box::new(|p| unsafe { libc::kill(p, 0) } as i64)),
            (
                "tgkill",
                Box::new(|p| unsafe { libc::syscall(libc::SYS_tgkill, p, p, 0) }),
            ),
            (
                "ptrace",
                Box::new(|p| unsafe { libc::ptrace(libc::PTRACE_PEEKDATA, p, 0, 0) }),
            ),
            (
                "pidfd_open",
                Box::new(|p| unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) }),
            ),
            (
                "process_vm_readv",
                Box::new(|p| unsafe {
                    libc::syscall(libc::SYS_process_vm_readv, p, 0, 0, 0, 0, 0)
                }),
            ),
        ];
        let me = bystander.id() as i32;
        for (name, call) in &calls {
            let st = status_after(call, &guarded, target);
            assert!(
                libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS,
                "{name} on a guarded process: status {st:#x}"
            );
            let st = status_after(call, &guarded, me);
            assert!(
                libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                "{name} on another process: status {st:#x}"
            );
        }
        for mut p in [sleeper, bystander] {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    #[test]
    fn the_filter_compiles_for_a_daemon_with_many_threads() {
        let ids: Vec<u32> = (1000..1064).collect();
        let prog = program(&ids).unwrap();
        // seccomp(2) refuses a program longer than BPF_MAXINSNS (4096).
        assert!(!prog.is_empty() && prog.len() < 4096, "{}", prog.len());
    }
}
