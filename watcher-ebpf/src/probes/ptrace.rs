//! `syscalls:sys_exit_ptrace`: a watched process attaching to (or seizing) another, with the
//! result; and the other ways into another process: `process_vm_writev`, `process_vm_readv`
//! (its memory) and `pidfd_getfd` (its descriptors). User space decides whether it is
//! tampering (the watcher, a held process, anything outside the session). At exit rather than entry: the arguments and result come from the
//! task's saved registers, and no `sys_enter` tracepoint is attached at all, which every
//! syscall on the host would pay for.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{
    EventKind, PtraceEvent, PTRACE_REQ_PIDFD_GETFD, PTRACE_REQ_VM_READ, PTRACE_REQ_VM_WRITE,
};

use crate::record::reserve;
use crate::{
    gate,
    shared::{ready, syscall, watch_of, Syscall, Task},
};

const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;
const PTRACE_TRACEME: u64 = 0;

#[tracepoint]
pub fn sys_exit_ptrace(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_process_vm_writev(_ctx: TracePointContext) -> u32 {
    try_exit(PTRACE_REQ_VM_WRITE);
    0
}

#[tracepoint]
pub fn sys_exit_process_vm_readv(_ctx: TracePointContext) -> u32 {
    try_exit(PTRACE_REQ_VM_READ);
    0
}

#[tracepoint]
pub fn sys_exit_pidfd_getfd(_ctx: TracePointContext) -> u32 {
    try_exit(PTRACE_REQ_PIDFD_GETFD);
    0
}

/// `call`: 0 for ptrace itself (its request is the first argument), else the call's
/// `PTRACE_REQ_*`; the target is the first argument of each.
#[inline(always)]
fn try_exit(call: u32) {
    let task = Task::current();
    let Some(watch) = watch_of(task.tgid()) else {
        return;
    };
    if !ready() {
        return;
    }
    let Syscall { args, ret } = syscall(task);
    let (request, mut pid) = match call {
        0 => (args[0], args[1]),
        req => (req as u64, args[0]),
    };
    if call == 0 && request != PTRACE_ATTACH && request != PTRACE_SEIZE {
        if request != PTRACE_TRACEME {
            return;
        }
        // The caller's parent becomes its tracer: from now on the gate kills the caller
        // where it would stop it (`signal_stop`), so the parent cannot take the stop away.
        match crate::shared::config() {
            Some(cfg) => pid = crate::shared::parent_tgid(&cfg) as u64,
            None => return,
        }
    }
    // A tracer that attaches to a process the gate holds could resume it before the answer
    // (a tracer may restart a stopped tracee): it dies before it is back in user space,
    // which detaches it and leaves the process stopped.
    if request != PTRACE_TRACEME && ret >= 0 && gate::waiting(pid as u32) {
        crate::shared::signal_kill();
    }
    // The daemon or its guardian traced or its memory touched: the caller dies (its tracees
    // are let go) and its session halts, whether or not the call succeeded. (A pidfd names
    // its process only to user space.)
    let by_pidfd = request == PTRACE_REQ_PIDFD_GETFD as u64;
    if !by_pidfd && super::guard::guarded(pid as u32) {
        super::guard::stop_sender(watch.session_id);
    }
    // Into a process outside the session (or one only a pidfd names): the caller waits at the
    // gate, before it can use what it took or wrote, until user space has looked (tampering
    // takes the session). Its own children, which it may debug, pass.
    let outside = request != PTRACE_TRACEME
        && (by_pidfd || watch_of(pid as u32).is_none_or(|w| w.session_id != watch.session_id));
    let flags = if outside && ret >= 0 {
        gate::stop(task, watch.session_id, EventKind::Ptrace)
    } else {
        0
    };
    let Some(mut entry) =
        reserve::<PtraceEvent>(task, EventKind::Ptrace, watch.session_id, watch.ppid)
    else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<PtraceEvent>().
    unsafe {
        (*ev).hdr.flags |= flags;
        (*ev).target = pid as u32;
        (*ev).request = request as u32;
        (*ev).result = ret;
    }
    entry.submit(0);
}
