//! `syscalls:sys_exit_chmod`, `fchmod`, `fchmodat`, `fchmodat2`: a mode change, with the
//! result, at exit. `fchmod` names its file by descriptor; user space resolves it.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, GATE_CHMOD_SETID};

use crate::{
    gate,
    record::{write_path, PathCall},
    shared::watched_call,
};

const AT_FDCWD: i32 = -100;

#[tracepoint]
pub fn sys_exit_chmod(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_fchmod(_ctx: TracePointContext) -> u32 {
    try_exit(1);
    0
}

#[tracepoint]
pub fn sys_exit_fchmodat(_ctx: TracePointContext) -> u32 {
    try_exit(2);
    0
}

#[tracepoint]
pub fn sys_exit_fchmodat2(_ctx: TracePointContext) -> u32 {
    try_exit(3);
    0
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let a = sc.args;
    let (dfd, path, mode, flags) = match call {
        0 => (AT_FDCWD, a[0], a[1], 0),
        1 => (a[0] as i32, 0, a[1], 0),
        2 => (a[0] as i32, a[1], a[2], 0),
        _ => (a[0] as i32, a[1], a[2], a[3]),
    };
    let c = PathCall {
        gate: 0,
        kind: EventKind::Chmod,
        call,
        path: path as *const u8,
        dfd,
        args: [mode & 0o7777, flags, 0],
        ret: sc.ret,
        flags: if sc.ret == 0 && mode & 0o6000 != 0 {
            gate::stop_rare(task, watch.session_id, GATE_CHMOD_SETID, EventKind::Chmod)
        } else {
            0
        },
    };
    write_path(&c, task, &watch);
}
