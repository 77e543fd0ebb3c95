//! `syscalls:sys_enter/exit_openat(2)`: arguments are kept at entry (watched threads only) and
//! the record is written at exit, with the result.
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use watcher_common::{
    EventKind, FastRule, OpenEvent, SyscallArgs, ARGS_FAST_PATH, ARGS_OPENAT2, ARGS_STOPPED,
    EVENT_FLAG_FAST_PATH, EVENT_FLAG_STOPPED, EVENT_FLAG_TRUNCATED, FAST_STOP, INTENT_CREATE,
    INTENT_READ, INTENT_TRUNCATE, INTENT_WRITE, PATH_MAX,
};

use crate::shared::{
    alert, config, count_drop, current_tgid, current_tid, enforce_halt, fast_act, fast_lookup,
    fill_header, scratch_key, watch_of, EVENTS, FAST_OPEN, SYSCALL_ARGS,
};

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, false);
    0
}

#[tracepoint]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, true);
    0
}

#[tracepoint]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext, openat2: bool) -> Result<(), i64> {
    let Some(watch) = watch_of(current_tgid()) else {
        return Ok(());
    };
    enforce_halt(watch.session_id);
    let cfg = config().ok_or(0)?;
    let mut args = SyscallArgs {
        kind: EventKind::Open as u32,
        flags: if openat2 { ARGS_OPENAT2 } else { 0 },
        session_id: watch.session_id,
        args: [0; 4],
    };
    // SAFETY: offsets came from the tracepoints' format files.
    unsafe {
        if openat2 {
            args.args[0] = ctx.read_at::<u64>(cfg.openat2_dfd as usize)?;
            args.args[1] = ctx.read_at::<u64>(cfg.openat2_filename as usize)?;
            let how: *const OpenHow = ctx.read_at::<u64>(cfg.openat2_how as usize)? as *const _;
            if let Ok(how) = bpf_probe_read_user(how) {
                args.args[2] = how.flags;
                args.args[3] = (how.mode & 0xffff_ffff) | (how.resolve << 32);
            }
        } else {
            args.args[0] = ctx.read_at::<u64>(cfg.openat_dfd as usize)?;
            args.args[1] = ctx.read_at::<u64>(cfg.openat_filename as usize)?;
            args.args[2] = ctx.read_at::<u64>(cfg.openat_flags as usize)?;
            args.args[3] = ctx.read_at::<u64>(cfg.openat_mode as usize)? & 0xffff_ffff;
        }
    }
    if let Some(rule) = fast_open(args.args[1] as *const u8, args.args[2]) {
        // Takes effect on the way back to user space: the open completes, the process never
        // gets to use the descriptor.
        fast_act(&rule);
        args.flags |= ARGS_FAST_PATH;
        if rule.action == FAST_STOP {
            args.flags |= ARGS_STOPPED;
            alert(EventKind::Open, EVENT_FLAG_FAST_PATH | EVENT_FLAG_STOPPED);
        }
    }
    SYSCALL_ARGS.insert(&current_tid(), &args, 0)?;
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

/// Shared by `sys_exit_openat` and `sys_exit_openat2` (the same program is attached to both).
fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let tid = current_tid();
    // SAFETY: copied out at once.
    let Some(args) = (unsafe { SYSCALL_ARGS.get(&tid).copied() }) else {
        return Ok(());
    };
    let _ = SYSCALL_ARGS.remove(&tid);
    if args.kind != EventKind::Open as u32 {
        return Ok(());
    }
    let cfg = config().ok_or(0)?;
    // SAFETY: offset came from the format file.
    let ret: i64 = unsafe { ctx.read_at(cfg.sys_exit_ret as usize)? };
    let Some(mut entry) = EVENTS.reserve::<OpenEvent>(0) else {
        count_drop(EventKind::Open);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<OpenEvent>().
    unsafe {
        fill_header(&raw mut (*ev).hdr, EventKind::Open, args.session_id, &cfg);
        (*ev).result = ret;
        (*ev).dfd = args.args[0] as i32;
        (*ev).flags = args.args[2];
        (*ev).mode = args.args[3] as u32;
        (*ev).resolve = args.args[3] >> 32;
        (*ev).openat2 = args.flags & ARGS_OPENAT2;
        (*ev)._pad = 0;
        if args.flags & ARGS_FAST_PATH != 0 {
            (*ev).hdr.flags |= EVENT_FLAG_FAST_PATH;
        }
        if args.flags & ARGS_STOPPED != 0 {
            (*ev).hdr.flags |= EVENT_FLAG_STOPPED;
        }
        match bpf_probe_read_user_str_bytes(args.args[1] as *const u8, &mut (*ev).path) {
            Ok(s) if s.len() >= PATH_MAX - 1 => (*ev).hdr.flags |= EVENT_FLAG_TRUNCATED,
            Ok(_) => {}
            Err(_) => (*ev).path[0] = 0,
        }
    }
    entry.submit(0);
    Ok(())
}
