//! `syscalls:sys_exit_name_to_handle_at`: a handle made for a file. The handle opens the file
//! later through `open_by_handle_at`, by no name (an `Open` of its own, its file named by the
//! descriptor); this event names the file the handle was made for, and when.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::EventKind;

use crate::{
    record::{write_path, PathCall},
    shared::watched_call,
};

#[tracepoint]
pub fn sys_exit_name_to_handle_at(_ctx: TracePointContext) -> u32 {
    try_exit();
    0
}

fn try_exit() {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    // name_to_handle_at(dirfd, pathname, handle, mount_id, flags): the flags are the fifth
    // argument, past the four the saved registers give here.
    let c = PathCall {
        gate: 0,
        kind: EventKind::NameToHandle,
        call: 0,
        path: sc.args[1] as *const u8,
        dfd: sc.args[0] as i32,
        args: [0; 3],
        ret: sc.ret,
        flags: 0,
    };
    write_path(&c, task, &watch);
}
