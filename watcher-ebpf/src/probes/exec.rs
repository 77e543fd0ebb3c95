//! `sched:sched_process_exec`: the new program is in place and has run no instruction yet.
//! The filename comes from the tracepoint; argv is read from the new program's stack
//! (`mm->arg_start..arg_end`, already NUL-separated), so no `sys_enter_execve` hook is needed.
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
        generated::bpf_get_prandom_u32,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use watcher_common::{
    AgentName, EventKind, ExecEvent, FastRule, ProbeConfig, Watch, AGENT_NAME_MAX, ARGV_MAX,
    EVENT_FLAG_ARGV_MISSING, EVENT_FLAG_FAST_PATH, EVENT_FLAG_SESSION_START, EVENT_FLAG_STOPPED,
    EVENT_FLAG_TRUNCATED, FAIL_SESSION_WATCH, FAST_STOP, FILTER_EXEC, GATE_EXEC, PATH_MAX,
};

use crate::record::reserve;
use crate::{
    gate,
    shared::{
        alert, config, count_failure, current_task, enforce_halt, fast_act, fast_lookup,
        parent_tgid, read_kernel, scratch_key, watch_insert, watch_of, Task, AGENTS, FAST_EXEC,
        SCRATCH_PATH,
    },
};

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    match try_sched_process_exec(&ctx) {
        Ok(()) => 0,
        Err(_) => 0,
    }
}

fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(0)?;
    let task = Task::current();
    let tgid = task.tgid();
    let mut flags = 0;
    let watch = match watch_of(tgid) {
        Some(w) => w,
        None => {
            let profile = match_agent(ctx, &cfg).ok_or(0)?;
            let w = Watch {
                session_id: new_session_id(),
                profile,
                ppid: parent_tgid(&cfg),
            };
            if let Err(e) = watch_insert(tgid, &w) {
                count_failure(FAIL_SESSION_WATCH);
                return Err(e);
            }
            flags |= EVENT_FLAG_SESSION_START;
            w
        }
    };

    enforce_halt(watch.session_id);
    // The kernel policy acts whether or not the record can be written.
    if let Some(rule) = fast_exec(ctx, &cfg) {
        fast_act(&rule);
        flags |= EVENT_FLAG_FAST_PATH;
        if rule.action == FAST_STOP {
            flags |= EVENT_FLAG_STOPPED;
            alert(EventKind::Exec, flags);
        }
    } else if gate::gated_kind(watch.session_id, GATE_EXEC, 0)
        || gate::gated_comm(&task.comm(), GATE_EXEC, 0)
        || filename_head(ctx, &cfg).is_some_and(|h| gate::gated_fileless(&h))
    {
        flags |= gate::stop(task, watch.session_id, EventKind::Exec);
    }
    let Some(mut entry) =
        reserve::<ExecEvent>(task, EventKind::Exec, watch.session_id, parent_tgid(&cfg))
    else {
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<ExecEvent>().
    unsafe {
        (*ev).profile = watch.profile;
        if read_filename(ctx, &cfg, &mut (*ev).filename).is_err() {
            (*ev).filename[0] = 0;
        }
        let (len, arg_flags) = read_argv(&cfg, &mut (*ev).argv);
        (*ev).argv_len = len;
        (*ev).hdr.flags = flags | arg_flags;
    }
    entry.submit(0);
    Ok(())
}

/// The `FAST_EXEC` entry for the new program's path, if any.
#[inline(always)]
fn fast_exec(ctx: &TracePointContext, cfg: &ProbeConfig) -> Option<FastRule> {
    let key = scratch_key()?;
    // SAFETY: the offset came from this tracepoint's format file.
    let loc: u32 = unsafe { ctx.read_at(cfg.exec_filename as usize).ok()? };
    let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    // SAFETY: probe read of the tracepoint record.
    let len = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut key.data).ok()? }.len();
    fast_lookup(&FAST_EXEC, FILTER_EXEC, key, len)
}

/// The first 8 bytes of the new program's filename.
#[inline(always)]
fn filename_head(ctx: &TracePointContext, cfg: &ProbeConfig) -> Option<[u8; 8]> {
    // SAFETY: the offset came from this tracepoint's format file.
    let loc: u32 = unsafe { ctx.read_at(cfg.exec_filename as usize).ok()? };
    let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    // SAFETY: probe read of the tracepoint record.
    unsafe { bpf_probe_read_kernel::<[u8; 8]>(src as *const [u8; 8]).ok() }
}

/// Kernel-side session ids have the top bit clear; user space sets it on its own.
#[inline(always)]
fn new_session_id() -> u64 {
    // SAFETY: helpers without preconditions.
    let (hi, lo) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    (((hi & 0x7fff_ffff) as u64) << 32) | lo as u64
}

#[inline(always)]
fn read_filename(
    ctx: &TracePointContext,
    cfg: &ProbeConfig,
    dst: &mut [u8; PATH_MAX],
) -> Result<(), i64> {
    // SAFETY: the offset came from this tracepoint's format file.
    let loc: u32 = unsafe { ctx.read_at(cfg.exec_filename as usize)? };
    let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    // SAFETY: probe read of the tracepoint record.
    unsafe { bpf_probe_read_kernel_str_bytes(src, dst)? };
    Ok(())
}

/// Copies the new program's argument area; returns (bytes, flags).
#[inline(always)]
fn read_argv(cfg: &ProbeConfig, dst: &mut [u8; ARGV_MAX]) -> (u32, u32) {
    let Some(mm) = read_kernel::<*const u8>(current_task(), cfg.task_mm) else {
        return (0, EVENT_FLAG_ARGV_MISSING);
    };
    let (Some(start), Some(end)) = (
        read_kernel::<u64>(mm, cfg.mm_arg_start),
        read_kernel::<u64>(mm, cfg.mm_arg_end),
    ) else {
        return (0, EVENT_FLAG_ARGV_MISSING);
    };
    let total = end.saturating_sub(start);
    if total == 0 {
        return (0, EVENT_FLAG_ARGV_MISSING);
    }
    let mut flags = 0;
    let mut len = total as usize;
    if len > ARGV_MAX {
        len = ARGV_MAX;
        flags |= EVENT_FLAG_TRUNCATED;
    }
    // Keep the verifier convinced the length is within the buffer.
    let len = len & (2 * ARGV_MAX - 1);
    if len == 0 || len > ARGV_MAX {
        return (0, EVENT_FLAG_ARGV_MISSING);
    }
    // SAFETY: the slice is within `dst`; the helper faults safely.
    match unsafe { bpf_probe_read_user_buf(start as *const u8, &mut dst[..len]) } {
        Ok(()) => (len as u32, flags),
        Err(_) => (0, EVENT_FLAG_ARGV_MISSING),
    }
}

/// Looks the executable's basename up in `AGENTS` (agent matchers from the config). Names are
/// at most `AGENT_NAME_MAX` bytes, so only the filename's tail is scanned (a short, fixed loop
/// the verifier accepts).
#[inline(always)]
fn match_agent(ctx: &TracePointContext, cfg: &ProbeConfig) -> Option<u32> {
    let buf = SCRATCH_PATH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, no concurrent user on this CPU.
    let buf = unsafe { &mut *buf };
    // SAFETY: the offset came from this tracepoint's format file.
    let loc: u32 = unsafe { ctx.read_at(cfg.exec_filename as usize).ok()? };
    let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    // SAFETY: probe read of the tracepoint record.
    let end = unsafe { bpf_probe_read_kernel_str_bytes(src, buf).ok()? }.len();
    if end == 0 || end >= PATH_MAX {
        return None;
    }
    let mut start = end;
    let mut k = 0usize;
    while k <= AGENT_NAME_MAX {
        if start == 0 || buf[(start - 1) & (PATH_MAX - 1)] == b'/' {
            break;
        }
        start -= 1;
        k += 1;
    }
    let len = end - start;
    if len == 0 || len > AGENT_NAME_MAX {
        return None;
    }
    let mut key = AgentName([0; AGENT_NAME_MAX]);
    let mut j = 0usize;
    while j < AGENT_NAME_MAX {
        if j >= len {
            break;
        }
        key.0[j] = buf[(start + j) & (PATH_MAX - 1)];
        j += 1;
    }
    // SAFETY: the value is copied out at once.
    unsafe { AGENTS.get(&key).copied() }
}
