//! `task:task_newtask`: a task was created. Fires in the parent before the child can run, and
//! carries `clone_flags`, which tells a new process from a new thread. A new process of a
//! watched process joins its session here, in the kernel, so it is watched from its first
//! instruction.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use watcher_common::{EventKind, ForkEvent, Watch, FAIL_FORK_WATCH};

use crate::gate;
use crate::record::reserve;
use crate::shared::{
    config, count_failure, enforce_halt, parent_tgid, watch_insert, watch_of, Task,
};

const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    match try_task_newtask(&ctx) {
        Ok(()) => 0,
        Err(_) => 0,
    }
}

fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i64> {
    let task = Task::current();
    let Some(watch) = watch_of(task.tgid()) else {
        return Ok(());
    };
    enforce_halt(watch.session_id);
    let cfg = config().ok_or(0)?;
    // SAFETY: offsets came from this tracepoint's format file.
    let child: u32 = unsafe { ctx.read_at(cfg.newtask_pid as usize)? };
    let clone_flags: u64 = unsafe { ctx.read_at(cfg.newtask_clone_flags as usize)? };
    let is_thread = clone_flags & CLONE_THREAD != 0;
    if !is_thread {
        let child_watch = Watch {
            ppid: task.tgid(),
            ..watch
        };
        if let Err(e) = watch_insert(child, &child_watch) {
            // The watched map is full: the child would run unwatched. The parent stops here
            // and the session is frozen (the child with it) for a human to decide.
            count_failure(FAIL_FORK_WATCH);
            gate::hold_lost(task, watch.session_id, EventKind::Fork);
            return Err(e);
        }
    }
    let Some(mut entry) =
        reserve::<ForkEvent>(task, EventKind::Fork, watch.session_id, parent_tgid(&cfg))
    else {
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<ForkEvent>().
    unsafe {
        (*ev).child_pid = child;
        (*ev).is_thread = is_thread as u32;
        (*ev).clone_flags = clone_flags;
    }
    entry.submit(0);
    Ok(())
}
