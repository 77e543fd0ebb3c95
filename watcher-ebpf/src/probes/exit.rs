//! `sched:sched_process_exit`: the last thread of a watched process is leaving. The process
//! leaves the kernel map here, so a recycled pid is never watched by mistake.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, ExitEvent};

use crate::shared::{
    config, count_drop, current_task, fill_header, parent_tgid, read_kernel, watch_of,
    watch_remove, Task, EVENTS,
};

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
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count_drop(EventKind::Exit);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<ExitEvent>().
    unsafe {
        fill_header(
            &raw mut (*ev).hdr,
            task,
            EventKind::Exit,
            watch.session_id,
            parent_tgid(&cfg),
        );
        (*ev).exit_code = read_kernel::<u32>(current_task(), cfg.task_exit_code).unwrap_or(0);
        (*ev)._pad = 0;
    }
    entry.submit(0);
    Ok(())
}
