//! `syscalls:sys_exit_connect`: the raw sockaddr (user space decodes IPv4, IPv6 and unix
//! paths) with the result, at exit; the arguments and result come from the task's saved
//! registers.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_buf, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use watcher_common::{
    ConnectEvent, EventKind, EVENT_FLAG_FAST_PATH, GATE_CONNECT, INTENT_CONNECT, SOCKADDR_MAX,
};

use crate::{
    gate,
    shared::{
        count_drop, enforce_halt, fill_header, ready, syscall, watch_of, Syscall, Task, EVENTS,
        REFUSED,
    },
};

const EPERM: i64 = 1;
const EINPROGRESS: i64 = 115;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

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
    // A connect out that went through (or is under way) is gated before the process can send
    // on it; a refused or failed one has no effect to stop.
    let mut gated = 0;
    if (ret == 0 || ret == -EINPROGRESS)
        && (gate::gated_kind(watch.session_id, GATE_CONNECT, 0)
            || gate::gated_comm(&task.comm(), GATE_CONNECT, 0))
    {
        // SAFETY: probe read of user memory, faults safely.
        let family = unsafe { bpf_probe_read_user(args[1] as *const u16) }.unwrap_or(0);
        if family == AF_INET || family == AF_INET6 {
            gated = gate::stop(task, watch.session_id, EventKind::Connect);
        }
    }
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
        (*ev).hdr.flags |= gated;
        (*ev).fd = args[0] as i32;
        (*ev).addrlen = addrlen;
        (*ev).addr[0] = 0;
        (*ev).addr[1] = 0;
        let len = (addrlen as usize).min(SOCKADDR_MAX);
        if len > 0 && len <= SOCKADDR_MAX {
            let _ = bpf_probe_read_user_buf(args[1] as *const u8, &mut (&mut (*ev).addr)[..len]);
        }
        // A unix socket the policy names (a service that runs commands outside the
        // session): stopped before a byte of the request is sent, from the copy just made.
        if ret == 0 && gated == 0 && (*ev).addr[0] == AF_UNIX as u8 && (*ev).addr[1] == 0 {
            if let Some(path) = UNIX_PATH.get_ptr_mut(0) {
                let path = &mut *path;
                let _ =
                    bpf_probe_read_kernel_buf((*ev).addr.as_ptr().add(2), &mut path[..SUN_PATH]);
                let mut n = 0usize;
                while n < SUN_PATH && path[n] != 0 {
                    n += 1;
                }
                if n > 1 && crate::record::gated_name(path, n, INTENT_CONNECT) {
                    (*ev).hdr.flags |= gate::stop(task, watch.session_id, EventKind::Connect);
                }
            }
        }
    }
    entry.submit(0);
}

/// Bytes of `sockaddr_un.sun_path`.
const SUN_PATH: usize = 108;
const AF_UNIX: u16 = 1;

/// A unix socket's path, copied out of the record so that it starts at 0 (per CPU).
#[map]
static UNIX_PATH: PerCpuArray<[u8; 128]> = PerCpuArray::with_max_entries(1, 0);
