//! `syscalls:sys_enter_ptrace`: a watched process attaching to (or seizing) another. User space
//! decides whether it is tampering (the watcher, a held process, anything outside the session).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, PtraceEvent};

use crate::shared::{config, count_drop, current_tgid, fill_header, watch_of, EVENTS};

const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;

#[tracepoint]
pub fn sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(watch) = watch_of(current_tgid()) else {
        return Ok(());
    };
    let cfg = config().ok_or(0)?;
    // SAFETY: offsets came from this tracepoint's format file.
    let (request, pid) = unsafe {
        (
            ctx.read_at::<u64>(cfg.ptrace_request as usize)?,
            ctx.read_at::<u64>(cfg.ptrace_pid as usize)?,
        )
    };
    if request != PTRACE_ATTACH && request != PTRACE_SEIZE {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<PtraceEvent>(0) else {
        count_drop(EventKind::Ptrace);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<PtraceEvent>().
    unsafe {
        fill_header(
            &raw mut (*ev).hdr,
            EventKind::Ptrace,
            watch.session_id,
            watch.ppid,
        );
        (*ev).target = pid as u32;
        (*ev).request = request as u32;
    }
    entry.submit(0);
    Ok(())
}
