//! `cgroup/connect4` and `cgroup/connect6`, attached to the root of the cgroup v2 hierarchy:
//! a watched process connecting to a destination of the kernel policy gets EPERM, in the
//! kernel, before any packet leaves; so does every watched process while the kill-switch is
//! engaged for it. While the kill-switch is off, a connect to an address no deny entry can
//! cover (`NET_FILTER`) is let through before any hash or trie lookup.
use aya_ebpf::{
    bindings::bpf_sock_addr, macros::cgroup_sock_addr, maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use watcher_common::FastNet;

use crate::shared::{
    current_tgid, current_tid, halt_engaged, halted, net_may_match, watch_of, DENY_V4, DENY_V6,
    REFUSED,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn deny_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr as *const bpf_sock_addr;
    // SAFETY: the context is the kernel's bpf_sock_addr; 4-byte loads as the verifier wants.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    if !net_may_match(false, ip.to_ne_bytes()[0]) && !halt_engaged() {
        return ALLOW;
    }
    let Some(watch) = watch_of(current_tgid()) else {
        return ALLOW;
    };
    if halted(watch.session_id) != 0 {
        return refuse();
    }
    let key = Key::new(32, ip.to_ne_bytes());
    verdict(DENY_V4.get(&key).copied(), port)
}

#[cgroup_sock_addr(connect6)]
pub fn deny_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr as *const bpf_sock_addr;
    // SAFETY: as in connect4.
    let first = unsafe { (*sa).user_ip6[0] }.to_ne_bytes()[0];
    if !net_may_match(true, first) && !halt_engaged() {
        return ALLOW;
    }
    let Some(watch) = watch_of(current_tgid()) else {
        return ALLOW;
    };
    if halted(watch.session_id) != 0 {
        return refuse();
    }
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
    let key = Key::new(128, ip);
    verdict(DENY_V6.get(&key).copied(), port)
}

#[inline(always)]
fn verdict(entry: Option<FastNet>, port_be: u32) -> i32 {
    let Some(e) = entry else {
        return ALLOW;
    };
    let port = u16::from_be(port_be as u16);
    if port < e.port_lo || port > e.port_hi {
        return ALLOW;
    }
    refuse()
}

#[inline(always)]
fn refuse() -> i32 {
    // Tell the connect tracepoint that the kernel policy refused this call.
    let _ = REFUSED.insert(&current_tid(), &1, 0);
    REFUSE
}
