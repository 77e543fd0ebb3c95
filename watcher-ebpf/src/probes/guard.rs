//! The watcher's own standing: a signal (any call: kill, tkill, tgkill, pidfd_send_signal,
//! sigqueue, to any thread) or a ptrace from a watched process to the daemon or its guardian.
//! Without BPF-LSM the kernel cannot refuse either, so the sender is killed before it is back
//! in user space (it sends nothing more) and its session is halted at its next hook; the
//! guardian continues a stopped daemon, and user space takes the session with the kill-switch
//! when the signal's record arrives (`signal.rs`).
use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::{HashMap, LruHashMap},
    programs::RawTracePointContext,
};
use watcher_common::HALT_STOP;

use crate::shared::{read_kernel, signal_kill, watch_of, Task, CONFIG, HALTED, HALT_ALL};

/// The daemon's and its guardian's process ids (`GUARD_PROCESS`) and the daemon's thread ids
/// (`GUARD_THREAD`: a ptrace names a thread).
#[map]
pub static GUARDED: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// Processes that signalled or traced a guarded one, with their session: the daemon ignores a
/// SIGTERM or SIGHUP sent by one even after it is gone from `WATCHED` (it was killed for it).
#[map]
pub static TAMPERERS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(256, 0);

/// `si_code`s of signals a process sent: `SI_USER` (kill, pidfd_send_signal), `SI_QUEUE`
/// (sigqueue), `SI_TKILL` (tkill, tgkill). Not the kernel's own (a timer firing in interrupt
/// context while a watched task happens to run is not that task's doing).
const SI_USER: i32 = 0;
const SI_QUEUE: i32 = -1;
const SI_TKILL: i32 = -6;
/// `SEND_SIG_PRIV`: a kernel-internal "info" pointer, as is 0 (`SEND_SIG_NOINFO`, SI_USER).
const SEND_SIG_PRIV: u64 = 1;
/// `kernel_siginfo.si_code`, after `si_signo` and `si_errno`: fixed by the ABI.
const SI_CODE_OFFSET: u32 = 8;

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int
/// group, int result)`: the target task itself, so a signal to any thread is seen by its
/// process id.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn guard_signal(ctx: RawTracePointContext) -> i32 {
    let sender = Task::current();
    let Some(watch) = watch_of(sender.tgid()) else {
        return 0;
    };
    let info: u64 = ctx.arg(1);
    let code = match info {
        0 => SI_USER,
        SEND_SIG_PRIV => return 0,
        p => read_kernel::<i32>(p as *const u8, SI_CODE_OFFSET).unwrap_or(SI_USER),
    };
    if code != SI_USER && code != SI_QUEUE && code != SI_TKILL {
        return 0;
    }
    let target: u64 = ctx.arg(2);
    // SAFETY: a plain read of the read-only global (volatile: not folded to its zeroed default).
    let tgid_off = unsafe { core::ptr::read_volatile(&CONFIG.task_tgid) };
    let Some(tgid) = read_kernel::<u32>(target as *const u8, tgid_off) else {
        return 0;
    };
    if guarded(tgid) {
        stop_sender(watch.session_id);
    }
    0
}

/// Whether `id` (a process or thread id) is the daemon's or its guardian's.
#[inline(always)]
pub fn guarded(id: u32) -> bool {
    // SAFETY: copied out at once.
    unsafe { GUARDED.get(&id) }.is_some()
}

/// Kills the current process (before it is back in user space) and halts its session: every
/// other process of it stops at its next hook, before user space has read a record.
#[inline(always)]
pub fn stop_sender(session_id: u64) {
    signal_kill();
    halt_session(session_id);
}

/// Halts the current process's session (every process of it stops at its next hook) and
/// remembers the current process as its tamperer.
#[inline(always)]
pub fn halt_session(session_id: u64) {
    let _ = TAMPERERS.insert(&Task::current().tgid(), &session_id, 0);
    if HALTED
        .insert(&session_id, &HALT_STOP, 1 /* BPF_NOEXIST */)
        .is_ok()
    {
        // `HALT_ALL[1]` counts the sessions in `HALTED` so that no hook looks there while
        // none is; any non-zero value makes them look (user space recounts when it changes
        // the map).
        if let Some(n) = HALT_ALL.get_ptr_mut(1) {
            // SAFETY: a live array slot.
            unsafe {
                if *n == 0 {
                    *n = 1;
                }
            }
        }
    }
}
