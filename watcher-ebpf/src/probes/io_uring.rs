//! `syscalls:sys_exit_io_uring_setup`: a watched process making an io_uring. What a ring
//! submits (open, read, write, connect, send, rename, unlink, ...) runs in the kernel with no
//! syscall hook on the way, so no later stop could come before its effect: the ring itself is
//! the question. Stopped here, as the call returns, the process never gets to map or submit
//! to the ring before the verdict; a kill takes the ring with the process. A ring a profile or
//! scope allowed is then watched op by op (`io_uring_submit_req`).
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_str_bytes, bpf_probe_read_user},
    macros::{map, raw_tracepoint, tracepoint},
    maps::Array,
    programs::{RawTracePointContext, TracePointContext},
};
use watcher_common::{
    EventKind, PathEvent, Watch, EVENT_FLAG_TRUNCATED, GATE_IO_URING, PATH_SHORT,
};

use crate::record::reserve;
use crate::{
    gate,
    record::{write_path, PathCall},
    shared::{config, read_kernel, watch_of, watched_call, Task},
};

/// `struct io_uring_params`: `sq_entries`, `cq_entries`, `flags`, ...
const PARAMS_FLAGS: usize = 8;

/// `[0]`: 1 once user space has attached `io_uring_submit_req`. It attaches it when a watched
/// process first makes a ring (the hook costs every io_uring operation on the host), so until
/// then that ring's process waits here for it, as at the gate.
#[map]
static URING_OPS_ON: Array<u32> = Array::with_max_entries(1, 0);

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
            match gate::stop_rare(task, watch.session_id, GATE_IO_URING, EventKind::IoUring) {
                // Not gated: stopped all the same while no operation of a ring would be seen
                // (a traced process goes on: the gate would kill it instead).
                0 if URING_OPS_ON.get(0).copied().unwrap_or(0) == 0 && !task.traced() => {
                    gate::stop(task, watch.session_id, EventKind::IoUring)
                }
                f => f,
            }
        } else {
            0
        },
    };
    write_path(&c, task, &watch);
}

/// `IORING_OP_OPENAT` and `IORING_OP_OPENAT2` (uapi `enum io_uring_op`).
const OP_OPENAT: u8 = 18;
const OP_OPENAT2: u8 = 28;

/// `IORING_SETUP_SQPOLL`: the ring's submissions are made by its polling thread.
const SETUP_SQPOLL: u32 = 1 << 1;

/// `io_uring:io_uring_submit_req` (raw: its argument is the request itself, and no trace
/// record is built before the program runs, which cost an unwatched process's every op 0.3 µs
/// as a classic tracepoint): an operation a watched process's ring submitted, from the
/// submitting task (the process's own thread, or the ring's polling thread `iou-sqp-PID`,
/// which is a thread of the same process). It fires after the request was prepared and before
/// it is issued, in the same call: the record says what ran, nothing can stop it here.
#[raw_tracepoint(tracepoint = "io_uring_submit_req")]
pub fn io_uring_submit_req(ctx: RawTracePointContext) -> i32 {
    let task = Task::current();
    let Some(watch) = watch_of(task.tgid()) else {
        return 0;
    };
    try_submit(ctx.arg::<u64>(0) as *const u8, task, &watch);
    0
}

fn try_submit(req: *const u8, task: Task, watch: &Watch) -> Option<()> {
    let cfg = config()?;
    let opcode: u8 = read_kernel(req, cfg.uring_opcode)?;
    let sq_thread = read_kernel::<u64>(req, cfg.uring_ctx)
        .and_then(|c| read_kernel::<u32>(c as *const u8, cfg.uring_ctx_flags))
        .is_some_and(|f| f & SETUP_SQPOLL != 0);
    // An open's path as the kernel copied it at prepare time (a later rewrite of the user's
    // buffer does not change what was opened).
    let open = (opcode == OP_OPENAT || opcode == OP_OPENAT2) && cfg.uring_open_filename != 0;
    let (name, dfd): (*const u8, i32) = if open {
        (
            read_kernel::<u64>(req, cfg.uring_open_filename)
                .and_then(|f| read_kernel::<u64>(f as *const u8, cfg.filename_name))
                .unwrap_or(0) as *const u8,
            read_kernel::<i32>(req, cfg.uring_open_dfd).unwrap_or(-1),
        )
    } else {
        (core::ptr::null(), -1)
    };
    let Some(mut entry) =
        reserve::<PathEvent<PATH_SHORT>>(task, EventKind::IoUringOp, watch.session_id, watch.ppid)
    else {
        return None;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<PathEvent<PATH_SHORT>>().
    unsafe {
        (*ev).result = 0;
        (*ev).args = [opcode as u64, sq_thread as u64, 0];
        (*ev).dfd = dfd;
        (*ev).call = 0;
        (*ev).path[0] = 0;
        if !name.is_null() {
            let len = bpf_probe_read_kernel_str_bytes(name, &mut (*ev).path)
                .map(|s| s.len())
                .unwrap_or(0);
            if len >= PATH_SHORT - 1 {
                (*ev).hdr.flags |= EVENT_FLAG_TRUNCATED;
            }
        }
    }
    entry.submit(0);
    Some(())
}
