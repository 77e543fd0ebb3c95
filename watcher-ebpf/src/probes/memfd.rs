//! `syscalls:sys_exit_memfd_create`: an anonymous file, named by the caller, with the new
//! descriptor. An exec of it later is `fileless` (see exec.rs and the daemon).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::EventKind;

use crate::{
    record::{write_path, PathCall},
    shared::watched_call,
};

#[tracepoint]
pub fn sys_exit_memfd_create(_ctx: TracePointContext) -> u32 {
    try_exit();
    0
}

fn try_exit() {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let c = PathCall {
        gate: 0,
        kind: EventKind::Memfd,
        call: 0,
        path: sc.args[0] as *const u8,
        dfd: -1,
        args: [sc.args[1], 0, 0],
        ret: sc.ret,
        flags: 0,
    };
    write_path(&c, task, &watch);
}
