//! `syscalls:sys_exit_chown`, `lchown`, `fchown`, `fchownat`: an owner change, with the
//! result, at exit. `fchown` names its file by descriptor; user space resolves it.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, GATE_CHOWN};

use crate::{
    gate,
    record::{write_path, PathCall},
    shared::{syscall_arg4, watched_call},
};

const AT_FDCWD: i32 = -100;

#[tracepoint]
pub fn sys_exit_chown(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_lchown(_ctx: TracePointContext) -> u32 {
    try_exit(1);
    0
}

#[tracepoint]
pub fn sys_exit_fchown(_ctx: TracePointContext) -> u32 {
    try_exit(2);
    0
}

#[tracepoint]
pub fn sys_exit_fchownat(_ctx: TracePointContext) -> u32 {
    try_exit(3);
    0
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let a = sc.args;
    // lchown does not follow a final symlink: AT_SYMLINK_NOFOLLOW, as fchownat says it.
    let (dfd, path, uid, gid, flags) = match call {
        0 => (AT_FDCWD, a[0], a[1], a[2], 0),
        1 => (AT_FDCWD, a[0], a[1], a[2], 0x100),
        2 => (a[0] as i32, 0, a[1], a[2], 0),
        _ => (a[0] as i32, a[1], a[2], a[3], syscall_arg4(task)),
    };
    let c = PathCall {
        kind: EventKind::Chown,
        call,
        path: path as *const u8,
        dfd,
        args: [uid as u32 as u64, gid as u32 as u64, flags],
        ret: sc.ret,
        flags: if sc.ret == 0 {
            gate::stop_rare(task, watch.session_id, GATE_CHOWN, EventKind::Chown)
        } else {
            0
        },
    };
    write_path(&c, task, &watch);
}
