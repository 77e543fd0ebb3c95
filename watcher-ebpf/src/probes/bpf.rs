//! `syscalls:sys_exit_bpf` for `BPF_PROG_LOAD`: a watched process loading a BPF program, with
//! the result (the program's descriptor). A program runs only once attached, which takes
//! another call with that descriptor; the kernel policy's kill here (`FAST_KIND`) ends the
//! process before it can, and its descriptor, and so the program, go with it.
use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, GATE_BPF};

use crate::{
    gate,
    record::{write_path, PathCall},
    shared::{fast_kind, watched_call},
};

const BPF_PROG_LOAD: u64 = 5;
/// `union bpf_attr` for BPF_PROG_LOAD: `prog_type`, `insn_cnt`, then at 48 `prog_name[16]`.
const PROG_NAME: usize = 48;

#[tracepoint]
pub fn sys_exit_bpf(_ctx: TracePointContext) -> u32 {
    try_exit();
    0
}

fn try_exit() {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let [cmd, attr, ..] = sc.args;
    if cmd != BPF_PROG_LOAD {
        return;
    }
    let attr = attr as *const u8;
    // SAFETY: probe read of user memory, faults safely.
    let head = unsafe { bpf_probe_read_user(attr as *const [u32; 2]) }.unwrap_or([0; 2]);
    let c = PathCall {
        gate: 0,
        kind: EventKind::Bpf,
        call: 0,
        path: attr.wrapping_add(PROG_NAME),
        dfd: -1,
        args: [cmd, head[0] as u64, head[1] as u64],
        ret: sc.ret,
        flags: match fast_kind(EventKind::Bpf) {
            0 if sc.ret >= 0 => gate::stop_rare(task, watch.session_id, GATE_BPF, EventKind::Bpf),
            f => f,
        },
    };
    write_path(&c, task, &watch);
}
