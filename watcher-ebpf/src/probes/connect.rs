//! `syscalls:sys_exit_connect`: the destination as a raw sockaddr (user space decodes IPv4,
//! IPv6 and unix paths) with the result, at exit: the connected socket's peer as the kernel
//! holds it, or for a failed call the buffer the process passed. The arguments and result come
//! from the task's saved registers.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_buf, bpf_probe_read_user_buf},
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use watcher_common::{
    ConnectEvent, EventKind, EVENT_FLAG_FAST_PATH, EVENT_FLAG_FROM_SOCKET, EVENT_FLAG_GATED,
    GATE_CONNECT, INTENT_CONNECT, SOCKADDR_MAX,
};

use crate::record::reserve;
use crate::{
    gate,
    shared::{file_of, off, read_kernel, watched_call, Syscall, Task, CONFIG, REFUSED},
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
    let Some((task, watch, Syscall { args, ret })) = watched_call() else {
        return;
    };
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
    let Some(addr) = PEER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch, used by this program only.
    let addr = unsafe { &mut *addr };
    // The destination is the connected socket's peer as the kernel holds it: the buffer the
    // process passed is user memory, which another thread may have rewritten since the kernel
    // copied it (a blocking connect gives it time). A call that failed connected nothing, and
    // only its buffer says where it tried.
    let connected = ret == 0 || ret == -EINPROGRESS;
    let from_socket = if connected {
        peer_of(task, args[0] as i32, addr)
    } else {
        None
    };
    let (addrlen, mut flags) = match from_socket {
        Some(len) => (len, EVENT_FLAG_FROM_SOCKET),
        None => {
            let addrlen = args[2] as u32;
            addr[0] = 0;
            addr[1] = 0;
            let len = (addrlen as usize).min(SOCKADDR_MAX);
            if len > 0 && len <= SOCKADDR_MAX {
                // SAFETY: probe read of user memory, faults safely.
                let _ = unsafe { bpf_probe_read_user_buf(args[1] as *const u8, &mut addr[..len]) };
            }
            (addrlen, 0)
        }
    };
    if refused {
        flags |= EVENT_FLAG_FAST_PATH;
    }
    let family = u16::from_ne_bytes([addr[0], addr[1]]);
    // A connect out that went through (or is under way) is gated before the process can send
    // on it; a refused or failed one has no effect to stop.
    if connected
        && (family == AF_INET || family == AF_INET6)
        && (gate::gated_kind(watch.session_id, GATE_CONNECT, 0)
            || gate::gated_comm(&task.comm(), GATE_CONNECT, 0))
    {
        flags |= gate::stop(task, watch.session_id, EventKind::Connect);
    }
    // A unix socket the policy names (a service that runs commands outside the session):
    // stopped before a byte of the request is sent.
    if ret == 0 && flags & EVENT_FLAG_GATED == 0 && family == AF_UNIX && addr[2] != 0 {
        if let Some(path) = UNIX_PATH.get_ptr_mut(0) {
            // SAFETY: this CPU's scratch, used by this program only.
            let path = unsafe { &mut *path };
            // SAFETY: a copy between two of this program's buffers.
            let _ =
                unsafe { bpf_probe_read_kernel_buf(addr.as_ptr().add(2), &mut path[..SUN_PATH]) };
            let mut n = 0usize;
            while n < SUN_PATH && path[n] != 0 {
                n += 1;
            }
            if n > 1 && crate::record::gated_name(path, n, INTENT_CONNECT) {
                flags |= gate::stop(task, watch.session_id, EventKind::Connect);
            }
        }
    }
    let Some(mut entry) =
        reserve::<ConnectEvent>(task, EventKind::Connect, watch.session_id, watch.ppid)
    else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<ConnectEvent>().
    unsafe {
        (*ev).hdr.flags |= flags;
        (*ev).result = ret;
        (*ev).fd = args[0] as i32;
        (*ev).addrlen = addrlen;
        (*ev).addr.copy_from_slice(&addr[..SOCKADDR_MAX]);
    }
    entry.submit(0);
}

/// Writes the peer of the socket open as `fd` into `out` as a `struct sockaddr` and returns
/// its length, from the socket itself: `sock_common`'s destination for IPv4 and IPv6 (family 0
/// when it has none: a datagram socket's `AF_UNSPEC` disconnect), the address the peer is bound
/// to for a unix socket.
#[inline(always)]
fn peer_of(task: Task, fd: i32, out: &mut [u8; PEER_BYTES]) -> Option<u32> {
    let file = file_of(task, fd)?;
    let socket: *const u8 = read_kernel(file, off(&CONFIG.file_private_data))?;
    let sk: *const u8 = read_kernel(socket, off(&CONFIG.socket_sk))?;
    let family: u16 = read_kernel(sk, off(&CONFIG.sock_family))?;
    // Bytes as they are in memory: port and address are already in network order.
    let port: [u8; 2] = read_kernel(sk, off(&CONFIG.sock_dport))?;
    match family {
        AF_INET => {
            let a: [u8; 4] = read_kernel(sk, off(&CONFIG.sock_daddr))?;
            *out = [0; PEER_BYTES];
            if a == [0; 4] && port == [0; 2] {
                return Some(2);
            }
            out[..2].copy_from_slice(&family.to_ne_bytes());
            out[2..4].copy_from_slice(&port);
            out[4..8].copy_from_slice(&a);
            Some(16)
        }
        AF_INET6 => {
            let a: [u8; 16] = read_kernel(sk, off(&CONFIG.sock_v6_daddr))?;
            *out = [0; PEER_BYTES];
            if a == [0; 16] && port == [0; 2] {
                return Some(2);
            }
            out[..2].copy_from_slice(&family.to_ne_bytes());
            out[2..4].copy_from_slice(&port);
            out[8..24].copy_from_slice(&a);
            Some(28)
        }
        AF_UNIX => {
            let peer: *const u8 = read_kernel(sk, off(&CONFIG.unix_peer))?;
            let bound: *const u8 = read_kernel(peer, off(&CONFIG.unix_addr))?;
            let len: i32 = read_kernel(bound, off(&CONFIG.unix_address_len))?;
            let n = len as usize;
            if !(3..SOCKADDR_MAX).contains(&n) {
                return None;
            }
            *out = [0; PEER_BYTES];
            let name = bound.wrapping_add(off(&CONFIG.unix_address_name) as usize);
            // The verifier needs the bound on the very register passed: an opaque copy, masked.
            // SAFETY: a plain read of a local.
            let n = unsafe { core::ptr::read_volatile(&n) } & (PEER_BYTES - 1);
            // SAFETY: probe read of kernel memory, faults safely.
            unsafe { bpf_probe_read_kernel_buf(name, &mut out[..n]) }.ok()?;
            Some(n as u32)
        }
        _ => None,
    }
}

/// Bytes of `sockaddr_un.sun_path`.
const SUN_PATH: usize = 108;
const AF_UNIX: u16 = 1;

/// The destination being built (per CPU): the record is reserved only after the gate has
/// acted, so that a full ring never lets a gated connect through.
#[map]
static PEER: PerCpuArray<[u8; PEER_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// `PEER`'s size: a power of two above `SOCKADDR_MAX`, so that a length masked by it fits.
const PEER_BYTES: usize = 128;
const _: () = assert!(PEER_BYTES.is_power_of_two() && PEER_BYTES >= SOCKADDR_MAX);

/// A unix socket's path, copied out of the destination so that it starts at 0 (per CPU).
#[map]
static UNIX_PATH: PerCpuArray<[u8; 128]> = PerCpuArray::with_max_entries(1, 0);
