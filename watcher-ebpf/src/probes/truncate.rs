//! `syscalls:sys_exit_truncate`, `sys_exit_ftruncate`: a file cut to a length, with the
//! result, at exit. `ftruncate` names its file by descriptor; user space resolves it.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, INTENT_NAME, INTENT_TRUNCATE, INTENT_WRITE};

use crate::{
    record::{write_path, PathCall},
    shared::watched_call,
};

const AT_FDCWD: i32 = -100;

#[tracepoint]
pub fn sys_exit_truncate(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_ftruncate(_ctx: TracePointContext) -> u32 {
    try_exit(1);
    0
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let a = sc.args;
    let (dfd, path) = if call == 0 {
        (AT_FDCWD, a[0])
    } else {
        (a[0] as i32, 0)
    };
    let c = PathCall {
        gate: INTENT_WRITE | INTENT_TRUNCATE | INTENT_NAME,
        kind: EventKind::Truncate,
        call,
        path: path as *const u8,
        dfd,
        args: [a[1], 0, 0],
        ret: sc.ret,
        flags: 0,
    };
    write_path(&c, task, &watch);
}
