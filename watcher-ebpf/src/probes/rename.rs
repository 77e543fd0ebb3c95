//! `syscalls:sys_exit_rename`, `renameat`, `renameat2`: a name moved, both names and the
//! result, at exit.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, INTENT_CREATE, INTENT_NAME, INTENT_TRUNCATE, INTENT_WRITE};

use crate::{
    record::{write_pair, PairCall},
    shared::{syscall_arg4, watched_call},
};

const AT_FDCWD: i32 = -100;
/// A name moved over another replaces that file as a write creating it would.
const REPLACES: u32 = INTENT_WRITE | INTENT_CREATE | INTENT_TRUNCATE | INTENT_NAME;

#[tracepoint]
pub fn sys_exit_rename(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_renameat(_ctx: TracePointContext) -> u32 {
    try_exit(1);
    0
}

#[tracepoint]
pub fn sys_exit_renameat2(_ctx: TracePointContext) -> u32 {
    try_exit(2);
    0
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let a = sc.args;
    let c = if call == 0 {
        PairCall {
            gate: REPLACES,
            kind: EventKind::Rename,
            call,
            path: a[0] as *const u8,
            dfd: AT_FDCWD,
            new_path: a[1] as *const u8,
            new_dfd: AT_FDCWD,
            fstype: core::ptr::null(),
            flags: 0,
            ret: sc.ret,
            hdr_flags: 0,
        }
    } else {
        PairCall {
            gate: REPLACES,
            kind: EventKind::Rename,
            call,
            path: a[1] as *const u8,
            dfd: a[0] as i32,
            new_path: a[3] as *const u8,
            new_dfd: a[2] as i32,
            fstype: core::ptr::null(),
            flags: if call == 2 { syscall_arg4(task) } else { 0 },
            ret: sc.ret,
            hdr_flags: 0,
        }
    };
    write_pair(&c, task, &watch);
}
