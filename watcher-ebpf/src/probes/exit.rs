//! `sched:sched_process_exit`: the last thread of a watched process is leaving. The process
//! leaves the kernel map here, so a recycled pid is never watched by mistake.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, ExitEvent, FENCE_CALLS};

use crate::record::reserve;
use crate::shared::{
    config, current_task, parent_tgid, read_kernel, syscall_nr, watch_of, watch_remove, Task,
};

const SIGSYS: u32 = 31;

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    match try_sched_process_exit(&ctx) {
        Ok(()) => 0,
        Err(_) => 0,
    }
}

fn try_sched_process_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let task = Task::current();
    let tgid = task.tgid();
    let Some(watch) = watch_of(tgid) else {
        return Ok(());
    };
    let cfg = config().ok_or(0)?;
    // SAFETY: offset came from this tracepoint's format file.
    let group_dead: u8 = unsafe { ctx.read_at(cfg.exit_group_dead as usize)? };
    if group_dead == 0 {
        return Ok(());
    }
    watch_remove(tgid);
    let Some(mut entry) =
        reserve::<ExitEvent>(task, EventKind::Exit, watch.session_id, parent_tgid(&cfg))
    else {
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<ExitEvent>().
    unsafe {
        let code = read_kernel::<u32>(current_task(), cfg.task_exit_code).unwrap_or(0);
        (*ev).exit_code = code;
        (*ev).fenced_call = 0;
        // Killed by SIGSYS in one of the fence's calls: the session's seccomp fence stopped it
        // on its way to the watcher. Its session halts now, before user space reads a record.
        if code & 0x7f == SIGSYS {
            let nr = syscall_nr(task);
            let mut i = 0;
            while i < FENCE_CALLS {
                if cfg.fence_calls[i] as u64 == nr {
                    (*ev).fenced_call = nr as u32;
                    super::guard::halt_session(watch.session_id);
                    break;
                }
                i += 1;
            }
        }
    }
    entry.submit(0);
    Ok(())
}
