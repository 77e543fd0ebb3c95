//! An empty program, attached by `watcher bench-floor` to every hook the watcher uses: the
//! benchmark's measure of what merely attaching a tracepoint program costs.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    0
}
