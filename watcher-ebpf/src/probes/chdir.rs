//! `syscalls:sys_enter/exit_chdir` and `fchdir`: user space tracks each process's working
//! directory from these, to make relative open paths absolute even after the process is gone.
use aya_ebpf::{
    helpers::bpf_probe_read_user_str_bytes, macros::tracepoint, programs::TracePointContext,
};
use watcher_common::{ChdirEvent, EventKind, SyscallArgs};

use crate::shared::{
    config, count_drop, current_tgid, current_tid, enforce_halt, fill_header, watch_of, EVENTS,
    SYSCALL_ARGS,
};

#[tracepoint]
pub fn sys_enter_chdir(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, false);
    0
}

#[tracepoint]
pub fn sys_enter_fchdir(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, true);
    0
}

/// Attached to both `sys_exit_chdir` and `sys_exit_fchdir`.
#[tracepoint]
pub fn sys_exit_chdir(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext, by_fd: bool) -> Result<(), i64> {
    let Some(watch) = watch_of(current_tgid()) else {
        return Ok(());
    };
    enforce_halt(watch.session_id);
    let cfg = config().ok_or(0)?;
    let mut args = SyscallArgs {
        kind: EventKind::Chdir as u32,
        flags: 0,
        session_id: watch.session_id,
        args: [0; 4],
    };
    // SAFETY: offsets came from the format files.
    unsafe {
        if by_fd {
            args.args[0] = ctx.read_at::<u64>(cfg.fchdir_fd as usize)? & 0xffff_ffff;
        } else {
            args.args[0] = u64::MAX;
            args.args[1] = ctx.read_at::<u64>(cfg.chdir_filename as usize)?;
        }
    }
    SYSCALL_ARGS.insert(&current_tid(), &args, 0)?;
    Ok(())
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let tid = current_tid();
    // SAFETY: copied out at once.
    let Some(args) = (unsafe { SYSCALL_ARGS.get(&tid).copied() }) else {
        return Ok(());
    };
    let _ = SYSCALL_ARGS.remove(&tid);
    if args.kind != EventKind::Chdir as u32 {
        return Ok(());
    }
    let cfg = config().ok_or(0)?;
    // SAFETY: offset came from the format file.
    let ret: i64 = unsafe { ctx.read_at(cfg.sys_exit_ret as usize)? };
    if ret != 0 {
        // A failed chdir changes nothing user space tracks.
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<ChdirEvent>(0) else {
        count_drop(EventKind::Chdir);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<ChdirEvent>().
    unsafe {
        fill_header(&raw mut (*ev).hdr, EventKind::Chdir, args.session_id, &cfg);
        (*ev).result = ret;
        (*ev).fd = args.args[0] as i32;
        (*ev)._pad = 0;
        (*ev).path[0] = 0;
        if args.args[0] == u64::MAX {
            let _ = bpf_probe_read_user_str_bytes(args.args[1] as *const u8, &mut (*ev).path);
        }
    }
    entry.submit(0);
    Ok(())
}
