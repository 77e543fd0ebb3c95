//! `syscalls:sys_exit_link`, `linkat`, `symlink`, `symlinkat`: a new name (`path`) for a target
//! (`new_path` in the record: the linked file, or a symlink's text), with the result, at exit.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, INTENT_CREATE, INTENT_NAME, INTENT_WRITE};

use crate::{
    record::{write_pair, PairCall},
    shared::{syscall_arg4, watched_call},
};

const AT_FDCWD: i32 = -100;

#[tracepoint]
pub fn sys_exit_link(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_linkat(_ctx: TracePointContext) -> u32 {
    try_exit(1);
    0
}

#[tracepoint]
pub fn sys_exit_symlink(_ctx: TracePointContext) -> u32 {
    try_exit(2);
    0
}

#[tracepoint]
pub fn sys_exit_symlinkat(_ctx: TracePointContext) -> u32 {
    try_exit(3);
    0
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let a = sc.args;
    // (new name, its dfd, target, the target's dfd: -1 for a symlink's text, which is not
    // resolved), by call: link(old, new), linkat(odfd, old, ndfd, new, flags),
    // symlink(target, new), symlinkat(target, ndfd, new).
    let (path, dfd, target, target_dfd, flags) = match call {
        0 => (a[1], AT_FDCWD, a[0], AT_FDCWD, 0),
        1 => (a[3], a[2] as i32, a[1], a[0] as i32, syscall_arg4(task)),
        2 => (a[1], AT_FDCWD, a[0], -1, 0),
        _ => (a[2], a[1] as i32, a[0], -1, 0),
    };
    let c = PairCall {
        gate: INTENT_WRITE | INTENT_CREATE | INTENT_NAME,
        kind: EventKind::Link,
        call,
        path: path as *const u8,
        dfd,
        new_path: target as *const u8,
        new_dfd: target_dfd,
        fstype: core::ptr::null(),
        flags,
        ret: sc.ret,
        hdr_flags: 0,
    };
    write_pair(&c, task, &watch);
}
