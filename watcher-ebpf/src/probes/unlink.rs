//! `syscalls:sys_exit_unlink`, `sys_exit_unlinkat`, `sys_exit_rmdir`: a watched process
//! removing a name, with the result, at exit (the arguments come from the saved registers).
//! The removal has happened: rules act on what follows. While a `count:` rule that holds
//! counts a session's deletes, each one is gated (`GATE_UNLINK`), so the one that makes the
//! count stops its process before the next.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, GATE_UNLINK};

use crate::{
    gate,
    record::{write_path, PathCall},
    shared::watched_call,
};

const AT_FDCWD: i32 = -100;
const AT_REMOVEDIR: u64 = 0x200;

#[tracepoint]
pub fn sys_exit_unlink(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_unlinkat(_ctx: TracePointContext) -> u32 {
    try_exit(1);
    0
}

#[tracepoint]
pub fn sys_exit_rmdir(_ctx: TracePointContext) -> u32 {
    try_exit(2);
    0
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let a = sc.args;
    let (dfd, path, flags) = match call {
        1 => (a[0] as i32, a[1], a[2]),
        2 => (AT_FDCWD, a[0], AT_REMOVEDIR),
        _ => (AT_FDCWD, a[0], 0),
    };
    let c = PathCall {
        gate: 0,
        kind: EventKind::Unlink,
        call,
        path: path as *const u8,
        dfd,
        args: [flags, 0, 0],
        ret: sc.ret,
        flags: if sc.ret == 0
            && (gate::gated_kind(watch.session_id, GATE_UNLINK, 0)
                || gate::unlink_sampled(watch.session_id))
        {
            gate::stop(task, watch.session_id, EventKind::Unlink)
        } else {
            0
        },
    };
    write_path(&c, task, &watch);
}
