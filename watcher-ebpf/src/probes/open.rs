//! `syscalls:sys_exit_openat(2)`: one program per call, at exit, with the result. The call's
//! arguments come from the task's saved registers (`syscall_args`), so nothing runs at entry:
//! an unwatched open pays for one tracepoint, not two, and a watched one needs no map.
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use watcher_common::{
    EventKind, FastRule, OpenEvent, EVENT_FLAG_FAST_PATH, EVENT_FLAG_STOPPED, EVENT_FLAG_TRUNCATED,
    FAST_STOP, INTENT_CREATE, INTENT_READ, INTENT_TRUNCATE, INTENT_WRITE, PATH_MAX,
};

use crate::shared::{
    alert, config, count_drop, current_tgid, enforce_halt, fast_act, fast_lookup, fill_header,
    scratch_key, syscall_args, watch_of, EVENTS, FAST_OPEN,
};

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

#[tracepoint]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx, false);
    0
}

#[tracepoint]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx, true);
    0
}

fn try_exit(ctx: &TracePointContext, openat2: bool) -> Result<(), i64> {
    let Some(watch) = watch_of(current_tgid()) else {
        return Ok(());
    };
    enforce_halt(watch.session_id);
    let cfg = config().ok_or(0)?;
    let args = syscall_args(&cfg).ok_or(0)?;
    let (dfd, path, flags, mode, resolve) = if openat2 {
        // SAFETY: probe read of user memory, faults safely.
        let how = unsafe { bpf_probe_read_user(args[2] as *const OpenHow) }.unwrap_or(OpenHow {
            flags: 0,
            mode: 0,
            resolve: 0,
        });
        (args[0], args[1], how.flags, how.mode, how.resolve)
    } else {
        (args[0], args[1], args[2], args[3], 0)
    };
    let path = path as *const u8;
    // SAFETY: offset came from the format file.
    let ret: i64 = unsafe { ctx.read_at(cfg.sys_exit_ret as usize)? };

    let mut flags_out = 0;
    // A signal sent here takes effect before the task is back in user space, as at entry: the
    // open has happened, the process never gets to use the descriptor. The kernel policy acts
    // whether or not the record can be written.
    if let Some(rule) = fast_open(path, flags) {
        fast_act(&rule);
        flags_out |= EVENT_FLAG_FAST_PATH;
        if rule.action == FAST_STOP {
            flags_out |= EVENT_FLAG_STOPPED;
            alert(EventKind::Open, flags_out);
        }
    }

    let Some(mut entry) = EVENTS.reserve::<OpenEvent>(0) else {
        count_drop(EventKind::Open);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<OpenEvent>().
    unsafe {
        fill_header(&raw mut (*ev).hdr, EventKind::Open, watch.session_id, &cfg);
        (*ev).hdr.flags = flags_out;
        (*ev).result = ret;
        (*ev).dfd = dfd as i32;
        (*ev).flags = flags;
        (*ev).mode = mode as u32;
        (*ev).resolve = resolve;
        (*ev).openat2 = openat2 as u32;
        (*ev)._pad = 0;
        match bpf_probe_read_user_str_bytes(path, &mut (*ev).path) {
            Ok(s) if s.len() >= PATH_MAX - 1 => (*ev).hdr.flags |= EVENT_FLAG_TRUNCATED,
            Ok(_) => {}
            Err(_) => (*ev).path[0] = 0,
        }
    }
    entry.submit(0);
    Ok(())
}

/// The `FAST_OPEN` entry for an absolute path opened with these flags, if any.
#[inline(always)]
fn fast_open(path: *const u8, flags: u64) -> Option<FastRule> {
    let key = scratch_key()?;
    // SAFETY: probe read of user memory, faults safely.
    let len = unsafe { bpf_probe_read_user_str_bytes(path, &mut key.data).ok()? }.len();
    if key.data[0] != b'/' {
        // Relative paths are resolved (and matched) in user space.
        return None;
    }
    let rule = fast_lookup(&FAST_OPEN, key, len)?;
    let mut intent = match flags & 3 {
        0 => INTENT_READ,
        1 => INTENT_WRITE,
        _ => INTENT_READ | INTENT_WRITE,
    };
    if flags & 0o100 != 0 {
        intent |= INTENT_CREATE;
    }
    if flags & 0o1000 != 0 {
        intent |= INTENT_TRUNCATE;
    }
    if rule.intent != 0 && rule.intent & intent == 0 {
        return None;
    }
    Some(rule)
}
