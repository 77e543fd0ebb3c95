//! Empty programs, attached by `watcher bench-floor` to every hook the watcher uses: the
//! benchmark's measure of what merely attaching the programs costs.
use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_sock_addr, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, SockAddrContext, TracePointContext},
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

/// The floor of the other hook types the syscall programs could use: one program on every
/// syscall's exit (`raw_syscalls:sys_exit`), as a BTF-typed and as a raw tracepoint. The
/// benchmark compares them with the per-syscall tracepoints above.
#[btf_tracepoint(function = "sys_exit")]
pub fn floor_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_raw_tp(_ctx: RawTracePointContext) -> i32 {
    0
}
