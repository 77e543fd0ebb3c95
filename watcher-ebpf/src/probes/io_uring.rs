//! `syscalls:sys_exit_io_uring_setup`: a watched process making an io_uring. What a ring
//! submits (open, read, write, connect, send, rename, unlink, ...) runs in the kernel with no
//! syscall hook on the way, so no later stop could come before its effect: the ring itself is
//! the question. Stopped here, as the call returns, the process never gets to map or submit
//! to the ring before the verdict; a kill takes the ring with the process.
use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, GATE_IO_URING};

use crate::{
    gate,
    record::{write_path, PathCall},
    shared::watched_call,
};

/// `struct io_uring_params`: `sq_entries`, `cq_entries`, `flags`, ...
const PARAMS_FLAGS: usize = 8;

#[tracepoint]
pub fn sys_exit_io_uring_setup(_ctx: TracePointContext) -> u32 {
    try_exit();
    0
}

fn try_exit() {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let [entries, params, ..] = sc.args;
    // SAFETY: probe read of user memory, faults safely.
    let setup_flags = unsafe {
        bpf_probe_read_user((params as *const u8).wrapping_add(PARAMS_FLAGS) as *const u32)
    }
    .unwrap_or(0);
    let c = PathCall {
        gate: 0,
        kind: EventKind::IoUring,
        call: 0,
        path: core::ptr::null(),
        dfd: -1,
        args: [entries, setup_flags as u64, 0],
        ret: sc.ret,
        flags: if sc.ret >= 0 {
            gate::stop_rare(task, watch.session_id, GATE_IO_URING, EventKind::IoUring)
        } else {
            0
        },
    };
    write_path(&c, task, &watch);
}
