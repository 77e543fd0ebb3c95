//! `syscalls:sys_exit_connect`: the raw sockaddr (user space decodes IPv4, IPv6 and unix
//! paths) with the result, at exit; the arguments and result come from the task's saved
//! registers.
use aya_ebpf::{helpers::bpf_probe_read_user_buf, macros::tracepoint, programs::TracePointContext};
use watcher_common::{ConnectEvent, EventKind, EVENT_FLAG_FAST_PATH, SOCKADDR_MAX};

use crate::shared::{
    count_drop, enforce_halt, fill_header, ready, syscall, watch_of, Syscall, Task, EVENTS, REFUSED,
};

const EPERM: i64 = 1;

#[tracepoint]
pub fn sys_exit_connect(_ctx: TracePointContext) -> u32 {
    try_exit();
    0
}

fn try_exit() {
    let task = Task::current();
    let Some(watch) = watch_of(task.tgid()) else {
        return;
    };
    enforce_halt(watch.session_id);
    if !ready() {
        return;
    }
    let Syscall { args, ret } = syscall(task);
    // Only a refused call can have been refused by the kernel policy (deny.rs marks it).
    let refused = ret == -EPERM && {
        let tid = task.pid();
        // SAFETY: read and removed by this thread only.
        let marked = unsafe { REFUSED.get(&tid).is_some() };
        if marked {
            let _ = REFUSED.remove(&tid);
        }
        marked
    };
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_drop(EventKind::Connect);
        return;
    };
    let ev = entry.as_mut_ptr();
    let addrlen = args[2] as u32;
    // SAFETY: `ev` is a live reservation of size_of::<ConnectEvent>().
    unsafe {
        fill_header(
            &raw mut (*ev).hdr,
            task,
            EventKind::Connect,
            watch.session_id,
            watch.ppid,
        );
        (*ev).result = ret;
        if refused {
            (*ev).hdr.flags |= EVENT_FLAG_FAST_PATH;
        }
        (*ev).fd = args[0] as i32;
        (*ev).addrlen = addrlen;
        (*ev).addr[0] = 0;
        (*ev).addr[1] = 0;
        let len = (addrlen as usize).min(SOCKADDR_MAX);
        if len > 0 && len <= SOCKADDR_MAX {
            let _ = bpf_probe_read_user_buf(args[1] as *const u8, &mut (&mut (*ev).addr)[..len]);
        }
    }
    entry.submit(0);
}
