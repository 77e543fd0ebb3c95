//! `syscalls:sys_exit_dup`, `dup2`, `dup3` and `fcntl` (`F_DUPFD`, `F_DUPFD_CLOEXEC`): a
//! watched process copying a descriptor. User space keeps each descriptor's path (from the
//! open) for the calls that name a file by descriptor or start from a directory descriptor;
//! tools move descriptors (`rm -rf` dups every directory it descends into), so the copy must
//! carry the path too.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{DupEvent, EventKind};

use crate::record::reserve;
use crate::shared::watched_call;

const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

#[tracepoint]
pub fn sys_exit_dup(_ctx: TracePointContext) -> u32 {
    try_exit(false);
    0
}

#[tracepoint]
pub fn sys_exit_dup2(_ctx: TracePointContext) -> u32 {
    try_exit(false);
    0
}

#[tracepoint]
pub fn sys_exit_dup3(_ctx: TracePointContext) -> u32 {
    try_exit(false);
    0
}

#[tracepoint]
pub fn sys_exit_fcntl(_ctx: TracePointContext) -> u32 {
    try_exit(true);
    0
}

fn try_exit(fcntl: bool) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    if sc.ret < 0 || (fcntl && sc.args[1] != F_DUPFD && sc.args[1] != F_DUPFD_CLOEXEC) {
        return;
    }
    let Some(mut entry) = reserve::<DupEvent>(task, EventKind::Dup, watch.session_id, watch.ppid)
    else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<DupEvent>().
    unsafe {
        (*ev).old_fd = sc.args[0] as i32;
        (*ev).new_fd = sc.ret as i32;
    }
    entry.submit(0);
}
