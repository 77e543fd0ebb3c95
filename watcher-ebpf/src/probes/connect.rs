//! `syscalls:sys_enter/exit_connect`: the raw sockaddr is copied at exit (user space decodes
//! IPv4, IPv6 and unix paths) together with the result.
use aya_ebpf::{helpers::bpf_probe_read_user_buf, macros::tracepoint, programs::TracePointContext};
use watcher_common::{
    ConnectEvent, EventKind, SyscallArgs, ARGS_FAST_PATH, EVENT_FLAG_FAST_PATH, SOCKADDR_MAX,
};

use crate::shared::{
    config, count_drop, current_tgid, current_tid, enforce_halt, fill_header, watch_of, EVENTS,
    SYSCALL_ARGS,
};

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(watch) = watch_of(current_tgid()) else {
        return Ok(());
    };
    enforce_halt(watch.session_id);
    let cfg = config().ok_or(0)?;
    let mut args = SyscallArgs {
        kind: EventKind::Connect as u32,
        flags: 0,
        session_id: watch.session_id,
        args: [0; 4],
    };
    // SAFETY: offsets came from the format file.
    unsafe {
        args.args[0] = ctx.read_at::<u64>(cfg.connect_fd as usize)?;
        args.args[1] = ctx.read_at::<u64>(cfg.connect_addr as usize)?;
        args.args[2] = ctx.read_at::<u64>(cfg.connect_addrlen as usize)?;
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
    if args.kind != EventKind::Connect as u32 {
        return Ok(());
    }
    let cfg = config().ok_or(0)?;
    // SAFETY: offset came from the format file.
    let ret: i64 = unsafe { ctx.read_at(cfg.sys_exit_ret as usize)? };
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_drop(EventKind::Connect);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    let addrlen = args.args[2] as u32;
    // SAFETY: `ev` is a live reservation of size_of::<ConnectEvent>().
    unsafe {
        fill_header(
            &raw mut (*ev).hdr,
            EventKind::Connect,
            args.session_id,
            &cfg,
        );
        (*ev).result = ret;
        if args.flags & ARGS_FAST_PATH != 0 {
            (*ev).hdr.flags |= EVENT_FLAG_FAST_PATH;
        }
        (*ev).fd = args.args[0] as i32;
        (*ev).addrlen = addrlen;
        (*ev).addr[0] = 0;
        (*ev).addr[1] = 0;
        let len = (addrlen as usize).min(SOCKADDR_MAX);
        if len > 0 && len <= SOCKADDR_MAX {
            let _ =
                bpf_probe_read_user_buf(args.args[1] as *const u8, &mut (&mut (*ev).addr)[..len]);
        }
    }
    entry.submit(0);
    Ok(())
}
