//! `syscalls:sys_exit_chdir` and `sys_exit_fchdir`: user space tracks each process's working
//! directory from these, to make relative open paths absolute even after the process is gone.
//! The arguments and result come from the task's saved registers.
use aya_ebpf::{
    helpers::bpf_probe_read_user_str_bytes, macros::tracepoint, programs::TracePointContext,
};
use watcher_common::{ChdirEvent, EventKind};

use crate::record::reserve;
use crate::shared::{watched_call, Syscall};

#[tracepoint]
pub fn sys_exit_chdir(_ctx: TracePointContext) -> u32 {
    try_exit(false);
    0
}

#[tracepoint]
pub fn sys_exit_fchdir(_ctx: TracePointContext) -> u32 {
    try_exit(true);
    0
}

fn try_exit(by_fd: bool) {
    let Some((task, watch, Syscall { args, ret })) = watched_call() else {
        return;
    };
    if ret != 0 {
        // A failed chdir changes nothing user space tracks.
        return;
    }
    let Some(mut entry) =
        reserve::<ChdirEvent>(task, EventKind::Chdir, watch.session_id, watch.ppid)
    else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<ChdirEvent>().
    unsafe {
        (*ev).result = ret;
        (*ev).fd = if by_fd { args[0] as i32 } else { -1 };
        (*ev)._pad = 0;
        (*ev).path[0] = 0;
        if !by_fd {
            let _ = bpf_probe_read_user_str_bytes(args[0] as *const u8, &mut (*ev).path);
        }
    }
    entry.submit(0);
}
