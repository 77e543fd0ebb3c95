//! `syscalls:sys_exit_init_module`, `sys_exit_finit_module`: a watched process loading a
//! kernel module, with the result. The kernel policy may kill it here (`FAST_KIND`), but a
//! module's init has run by the time the call returns: the kill stops what the process does
//! next, not the load. Attached only where the kernel has modules (CONFIG_MODULES).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, GATE_MODULE};

use crate::{
    gate,
    record::{write_path, PathCall},
    shared::{fast_kind, watched_call},
};

#[tracepoint]
pub fn sys_exit_init_module(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_finit_module(_ctx: TracePointContext) -> u32 {
    try_exit(1);
    0
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let a = sc.args;
    // init_module(image, len, params); finit_module(fd, params, flags).
    let (dfd, params, arg) = if call == 0 {
        (-1, a[2], a[1])
    } else {
        (a[0] as i32, a[1], a[2])
    };
    let c = PathCall {
        gate: 0,
        kind: EventKind::Module,
        call,
        path: params as *const u8,
        dfd,
        args: [arg, 0, 0],
        ret: sc.ret,
        flags: match fast_kind(EventKind::Module) {
            0 => gate::stop_rare(task, watch.session_id, GATE_MODULE, EventKind::Module),
            f => f,
        },
    };
    write_path(&c, task, &watch);
}
