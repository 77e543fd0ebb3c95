//! `cgroup/connect4`, `connect6`, `sendmsg4` and `sendmsg6`, attached to the root of the
//! cgroup v2 hierarchy: a watched process connecting or sending a datagram (sendto, sendmsg,
//! sendmmsg with a destination: UDP, unconnected sockets) to a destination of the kernel policy
//! gets EPERM, in the kernel, before any packet leaves; so does every watched process while the
//! kill-switch is engaged for it. The address is the kernel's copy, not user memory read again.
//! While the kill-switch is off, an address no deny entry can cover (`NET_FILTER`) is let
//! through before any hash or trie lookup.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use watcher_common::{
    ConnectEvent, EventKind, FastNet, Watch, EVENT_FLAG_SEND, FAST_NET_RANGES, SOCKADDR_MAX,
};

use crate::shared::{
    count_drop, current_tgid, current_tid, halt_engaged, halted, net_may_match, watch_of, DENY_V4,
    DENY_V6, EVENTS, REFUSED,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn deny_connect4(ctx: SockAddrContext) -> i32 {
    check4(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn deny_sendmsg4(ctx: SockAddrContext) -> i32 {
    check4(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn deny_connect6(ctx: SockAddrContext) -> i32 {
    check6(&ctx, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn deny_sendmsg6(ctx: SockAddrContext) -> i32 {
    check6(&ctx, false)
}

/// `connect`: a connect (the connect tracepoint is told when the kernel policy refused it,
/// and records it), else a send with a destination, recorded here. An unwatched send costs
/// one array load (`watch_of`'s filter); an unwatched connect to an address no entry can
/// cover, one more.
#[inline(always)]
fn check4(ctx: &SockAddrContext, connect: bool) -> i32 {
    let sa = ctx.sock_addr as *const bpf_sock_addr;
    // SAFETY: the context is the kernel's bpf_sock_addr; 4-byte loads as the verifier wants.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let may = net_may_match(false, ip.to_ne_bytes()[0]);
    if connect && !may && !halt_engaged() {
        return ALLOW;
    }
    let Some(watch) = watch_of(current_tgid()) else {
        return ALLOW;
    };
    let v = if halted(watch.session_id) != 0 {
        refuse(connect)
    } else if !may {
        ALLOW
    } else {
        let key = Key::new(32, ip.to_ne_bytes());
        verdict(DENY_V4.get(&key).copied(), port, connect)
    };
    if !connect {
        let mut sa = [0u8; 16];
        sa[..2].copy_from_slice(&(AF_INET as u16).to_ne_bytes());
        sa[2..4].copy_from_slice(&(port as u16).to_ne_bytes());
        sa[4..8].copy_from_slice(&ip.to_ne_bytes());
        send_record(&watch, &sa, v);
    }
    v
}

#[inline(always)]
fn check6(ctx: &SockAddrContext, connect: bool) -> i32 {
    let sa = ctx.sock_addr as *const bpf_sock_addr;
    // SAFETY: as in check4.
    let first = unsafe { (*sa).user_ip6[0] }.to_ne_bytes()[0];
    let may = net_may_match(true, first);
    if connect && !may && !halt_engaged() {
        return ALLOW;
    }
    let Some(watch) = watch_of(current_tgid()) else {
        return ALLOW;
    };
    let mut ip = [0u8; 16];
    // SAFETY: as above; each word is loaded on its own.
    let port = unsafe {
        let w = [
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        ];
        let mut i = 0;
        while i < 4 {
            let b = w[i].to_ne_bytes();
            ip[i * 4] = b[0];
            ip[i * 4 + 1] = b[1];
            ip[i * 4 + 2] = b[2];
            ip[i * 4 + 3] = b[3];
            i += 1;
        }
        (*sa).user_port
    };
    let v = if halted(watch.session_id) != 0 {
        refuse(connect)
    } else if !may {
        ALLOW
    } else {
        verdict(DENY_V6.get(&Key::new(128, ip)).copied(), port, connect)
    };
    if !connect {
        let mut sa = [0u8; 28];
        sa[..2].copy_from_slice(&(AF_INET6 as u16).to_ne_bytes());
        sa[2..4].copy_from_slice(&(port as u16).to_ne_bytes());
        sa[8..24].copy_from_slice(&ip);
        send_record(&watch, &sa, v);
    }
    v
}

#[inline(always)]
fn verdict(entry: Option<FastNet>, port_be: u32, connect: bool) -> i32 {
    let Some(e) = entry else {
        return ALLOW;
    };
    let port = u16::from_be(port_be as u16);
    let mut i = 0;
    while i < FAST_NET_RANGES {
        if i as u32 >= e.n {
            break;
        }
        let [lo, hi] = e.ranges[i];
        if lo <= port && port <= hi {
            return refuse(connect);
        }
        i += 1;
    }
    ALLOW
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// A watched process's datagram to `sa` (the kernel's copy), as a connect record flagged
/// `EVENT_FLAG_SEND`: rules, scope and baseline take it as a connect to that destination. The
/// header comes from helpers: a cgroup program cannot read the task itself.
#[inline(always)]
fn send_record<const N: usize>(watch: &Watch, sa: &[u8; N], verdict: i32) {
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_drop(EventKind::Connect);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<ConnectEvent>(); helpers without
    // preconditions.
    unsafe {
        let pid_tgid = bpf_get_current_pid_tgid();
        let h = &raw mut (*ev).hdr;
        (*h).kind = EventKind::Connect as u32;
        (*h).flags = EVENT_FLAG_SEND;
        (*h).ts_ns = bpf_ktime_get_boot_ns();
        (*h).session_id = watch.session_id;
        (*h).cgroup_id = bpf_get_current_cgroup_id();
        (*h).pid = pid_tgid as u32;
        (*h).tgid = (pid_tgid >> 32) as u32;
        (*h).ppid = watch.ppid;
        (*h).uid = bpf_get_current_uid_gid() as u32;
        (*h).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).result = if verdict == ALLOW {
            0
        } else {
            -1 /* EPERM */
        };
        (*ev).fd = -1;
        (*ev).addrlen = N as u32;
        let mut a = [0u8; SOCKADDR_MAX];
        a[..N].copy_from_slice(sa);
        (*ev).addr = a;
    }
    entry.submit(0);
}

#[inline(always)]
fn refuse(connect: bool) -> i32 {
    if connect {
        // Tell the connect tracepoint that the kernel policy refused this call.
        let _ = REFUSED.insert(&current_tid(), &1, 0);
    }
    REFUSE
}
