//! Empty programs, attached by `watcher bench-floor` to every hook the watcher uses: the
//! benchmark's measure of what merely attaching the programs costs.
use aya_ebpf::{
    macros::{cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, TracePointContext},
};

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    0
}

#[cgroup_sock_addr(connect4)]
pub fn floor_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(connect6)]
pub fn floor_connect6(_ctx: SockAddrContext) -> i32 {
    1
}
