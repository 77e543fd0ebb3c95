//! `signal:signal_generate`: a signal sent by a watched process to anyone (kill, tkill, tgkill,
//! pidfd_send_signal, sigqueue). Signals the kernel generates (SIGCHLD at exit, faults) have a
//! positive `si_code` and are left out. User space looks for tampering: a signal to the watcher
//! or to a held process.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, SignalEvent};

use crate::record::reserve;
use crate::shared::{config, watch_of, Task};

#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let _ = try_signal_generate(&ctx);
    0
}

fn try_signal_generate(ctx: &TracePointContext) -> Result<(), i64> {
    let task = Task::current();
    let Some(watch) = watch_of(task.tgid()) else {
        return Ok(());
    };
    let cfg = config().ok_or(0)?;
    // SAFETY: offsets came from this tracepoint's format file.
    let (sig, code, target, result) = unsafe {
        (
            ctx.read_at::<i32>(cfg.signal_sig as usize)?,
            ctx.read_at::<i32>(cfg.signal_code as usize)?,
            ctx.read_at::<u32>(cfg.signal_pid as usize)?,
            ctx.read_at::<i32>(cfg.signal_result as usize)?,
        )
    };
    if code > 0 {
        return Ok(());
    }
    let Some(mut entry) =
        reserve::<SignalEvent>(task, EventKind::Signal, watch.session_id, watch.ppid)
    else {
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<SignalEvent>().
    unsafe {
        (*ev).target = target;
        (*ev).sig = sig;
        (*ev).code = code;
        (*ev).result = result;
    }
    entry.submit(0);
    Ok(())
}
