//! `syscalls:sys_exit_ptrace`: a watched process attaching to (or seizing) another, with the
//! result. User space decides whether it is tampering (the watcher, a held process, anything
//! outside the session). At exit rather than entry: the arguments and result come from the
//! task's saved registers, and no `sys_enter` tracepoint is attached at all, which every
//! syscall on the host would pay for.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, PtraceEvent};

use crate::shared::{count_drop, fill_header, ready, syscall, watch_of, Syscall, Task, EVENTS};

const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;

#[tracepoint]
pub fn sys_exit_ptrace(_ctx: TracePointContext) -> u32 {
    try_exit();
    0
}

fn try_exit() {
    let task = Task::current();
    let Some(watch) = watch_of(task.tgid()) else {
        return;
    };
    if !ready() {
        return;
    }
    let Syscall { args, ret } = syscall(task);
    let (request, pid) = (args[0], args[1]);
    if request != PTRACE_ATTACH && request != PTRACE_SEIZE {
        return;
    }
    // The daemon or its guardian traced: the tracer dies (its tracees are let go) and its
    // session halts, whether or not the attach succeeded.
    if super::guard::guarded(pid as u32) {
        super::guard::stop_sender(watch.session_id);
    }
    let Some(mut entry) = EVENTS.reserve::<PtraceEvent>(0) else {
        count_drop(EventKind::Ptrace);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<PtraceEvent>().
    unsafe {
        fill_header(
            &raw mut (*ev).hdr,
            task,
            EventKind::Ptrace,
            watch.session_id,
            watch.ppid,
        );
        (*ev).target = pid as u32;
        (*ev).request = request as u32;
        (*ev).result = ret;
    }
    entry.submit(0);
}
