//! `syscalls:sys_exit_mount`, `umount` (umount2), `move_mount`, `fsmount`: what was mounted
//! (`path`, `fstype`) and where (`new_path`), with the result, at exit.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, GATE_MOUNT};

use crate::{
    gate,
    record::{write_pair, PairCall},
    shared::{syscall_arg4, watched_call},
};

const AT_FDCWD: i32 = -100;

#[tracepoint]
pub fn sys_exit_mount(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_umount(_ctx: TracePointContext) -> u32 {
    try_exit(1);
    0
}

#[tracepoint]
pub fn sys_exit_move_mount(_ctx: TracePointContext) -> u32 {
    try_exit(2);
    0
}

#[tracepoint]
pub fn sys_exit_fsmount(_ctx: TracePointContext) -> u32 {
    try_exit(3);
    0
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let a = sc.args;
    let null = core::ptr::null();
    let hdr_flags = if sc.ret >= 0 {
        gate::stop_rare(task, watch.session_id, GATE_MOUNT, EventKind::Mount)
    } else {
        0
    };
    // mount(source, target, fstype, flags, data); umount2(target, flags);
    // move_mount(from_dfd, from, to_dfd, to, flags); fsmount(fs_fd, flags, attr_flags).
    let c = match call {
        0 => PairCall {
            gate: 0,
            kind: EventKind::Mount,
            call,
            path: a[0] as *const u8,
            dfd: AT_FDCWD,
            new_path: a[1] as *const u8,
            new_dfd: AT_FDCWD,
            fstype: a[2] as *const u8,
            flags: a[3],
            ret: sc.ret,
            hdr_flags,
        },
        1 => PairCall {
            gate: 0,
            kind: EventKind::Mount,
            call,
            path: null,
            dfd: -1,
            new_path: a[0] as *const u8,
            new_dfd: AT_FDCWD,
            fstype: null,
            flags: a[1],
            ret: sc.ret,
            hdr_flags,
        },
        2 => PairCall {
            gate: 0,
            kind: EventKind::Mount,
            call,
            path: a[1] as *const u8,
            dfd: a[0] as i32,
            new_path: a[3] as *const u8,
            new_dfd: a[2] as i32,
            fstype: null,
            flags: syscall_arg4(task),
            ret: sc.ret,
            hdr_flags,
        },
        _ => PairCall {
            gate: 0,
            kind: EventKind::Mount,
            call,
            path: null,
            dfd: a[0] as i32,
            new_path: null,
            new_dfd: -1,
            fstype: null,
            flags: a[1],
            ret: sc.ret,
            hdr_flags,
        },
    };
    write_pair(&c, task, &watch);
}
