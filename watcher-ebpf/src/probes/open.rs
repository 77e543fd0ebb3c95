//! `syscalls:sys_exit_openat`, `openat2`, `open`, `creat` and `open_by_handle_at`: one
//! program per call, at exit, with the result, all writing the same record (whether a file
//! the policy names is read or written does not depend on the call). The arguments and result
//! come from the task's saved registers (`syscall`), so nothing runs at entry: an unwatched
//! open pays for one tracepoint, not two, and a watched one needs no map.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_buf, bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    maps::lpm_trie::Key,
    programs::TracePointContext,
};
use watcher_common::{
    EventKind, FastRule, OpenEvent, Watch, EVENT_FLAG_FAST_PATH, EVENT_FLAG_STOPPED,
    EVENT_FLAG_TRUNCATED, FAST_PATH_MAX, FAST_STOP, FILTER_GATE_PREFIX, FILTER_OPEN, GATE_OPEN,
    INTENT_CREATE, INTENT_READ, INTENT_TRUNCATE, INTENT_WRITE, OPEN_CALL_BY_HANDLE,
    OPEN_CALL_CREAT, OPEN_CALL_OPEN, OPEN_CALL_OPENAT, OPEN_CALL_OPENAT2, PATH_MAX, PATH_SHORT,
};

use crate::{
    gate,
    record::{try_reserve, Written},
    shared::{
        alert, count_drop, enforce_halt, fast_act, fast_lookup, file_of, may_match, off,
        read_kernel, ready, scratch_key, syscall, watch_of, Syscall, Task, CONFIG, FAST_OPEN,
    },
};

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

#[tracepoint]
pub fn sys_exit_openat(_ctx: TracePointContext) -> u32 {
    try_exit(OPEN_CALL_OPENAT);
    0
}

#[tracepoint]
pub fn sys_exit_openat2(_ctx: TracePointContext) -> u32 {
    try_exit(OPEN_CALL_OPENAT2);
    0
}

#[tracepoint]
pub fn sys_exit_open(_ctx: TracePointContext) -> u32 {
    try_exit(OPEN_CALL_OPEN);
    0
}

#[tracepoint]
pub fn sys_exit_creat(_ctx: TracePointContext) -> u32 {
    try_exit(OPEN_CALL_CREAT);
    0
}

#[tracepoint]
pub fn sys_exit_open_by_handle_at(_ctx: TracePointContext) -> u32 {
    try_exit(OPEN_CALL_BY_HANDLE);
    0
}

const AT_FDCWD: u64 = -100i64 as u64;
/// What `creat(path, mode)` is: `open(path, O_CREAT | O_WRONLY | O_TRUNC, mode)`.
const CREAT_FLAGS: u64 = 0o1101;

fn try_exit(which: u32) {
    let task = Task::current();
    let Some(watch) = watch_of(task.tgid()) else {
        return;
    };
    enforce_halt(watch.session_id);
    if !ready() {
        return;
    }
    let Syscall { args, ret } = syscall(task);
    let (dfd, path, flags, mode, resolve) = match which {
        OPEN_CALL_OPENAT2 => {
            // SAFETY: probe read of user memory, faults safely.
            let how =
                unsafe { bpf_probe_read_user(args[2] as *const OpenHow) }.unwrap_or(OpenHow {
                    flags: 0,
                    mode: 0,
                    resolve: 0,
                });
            // `how` is user memory, read again here: another thread may have rewritten it
            // since the kernel copied it, so the access mode (and whether the file was made)
            // is the opened file's.
            let flags = if ret >= 0 {
                opened_flags(task, ret as i32, how.flags)
            } else {
                how.flags
            };
            (args[0], args[1], flags, how.mode, how.resolve)
        }
        OPEN_CALL_OPEN => (AT_FDCWD, args[0], args[1], args[2], 0),
        OPEN_CALL_CREAT => (AT_FDCWD, args[0], CREAT_FLAGS, args[1], 0),
        // No path: the file is the descriptor the call returned (the mount's descriptor when
        // it failed).
        OPEN_CALL_BY_HANDLE => (
            if ret >= 0 { ret as u64 } else { args[0] },
            0,
            args[2],
            0,
            0,
        ),
        _ => (args[0], args[1], args[2], args[3], 0),
    };
    // By identity, before the record: the verifier walks the record's paths once, not once
    // per answer.
    let intent = intent_of(flags);
    gate::remember_by_identity(
        ret >= 0 && (gate::gated_parent(task, ret, intent) || gate::gated_inode(task, ret, intent)),
    );
    let call = Call {
        path: path as *const u8,
        ret,
        dfd,
        flags,
        mode,
        resolve,
        which,
    };
    // Most paths fit the short record; a longer one is read again into a long record (the
    // short one is discarded, and costs only its ring space until user space skips it).
    let written = match write::<PATH_SHORT>(&call, task, &watch) {
        Written::TooLong => write::<PATH_MAX>(&call, task, &watch),
        w => w,
    };
    if let Written::NoRoom = written {
        // The kernel policy acts whether or not the record can be written. A lost open for
        // writing holds the session; a lost read is counted (a build reads thousands).
        if intent & (INTENT_WRITE | INTENT_CREATE | INTENT_TRUNCATE) != 0 {
            gate::lost(task, watch.session_id, EventKind::Open);
        } else {
            count_drop(EventKind::Open);
        }
        if let Some(key) = scratch_key() {
            // SAFETY: probe read of user memory, faults safely.
            if let Ok(p) = unsafe { bpf_probe_read_user_str_bytes(call.path, &mut key.data) } {
                let len = p.len();
                // Fail closed: a gated open with no record stays stopped, and user space finds
                // it in `GATED` unanswered.
                if fast_open(key, len, flags) == 0
                    && ret >= 0
                    && gated(key, len, flags, &task.comm(), watch.session_id)
                {
                    gate::stop(task, watch.session_id, EventKind::Open);
                }
            }
        }
    }
}

/// One open as the record needs it.
struct Call {
    path: *const u8,
    ret: i64,
    dfd: u64,
    flags: u64,
    mode: u64,
    resolve: u64,
    which: u32,
}

/// Writes the open's record with room for `N` path bytes, acting on the kernel policy on the
/// way. A signal sent here takes effect before the task is back in user space, as at entry:
/// the open has happened, the process never gets to use the descriptor.
#[inline(always)]
fn write<const N: usize>(c: &Call, task: Task, watch: &Watch) -> Written {
    let Some(mut entry) =
        try_reserve::<OpenEvent<N>>(task, EventKind::Open, watch.session_id, watch.ppid)
    else {
        return Written::NoRoom;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<OpenEvent<N>>().
    unsafe {
        let len = match bpf_probe_read_user_str_bytes(c.path, &mut (*ev).path) {
            Ok(s) => s.len(),
            Err(_) => {
                (*ev).path[0] = 0;
                0
            }
        };
        if len >= N - 1 {
            if N < PATH_MAX {
                entry.discard(0);
                return Written::TooLong;
            }
            // Longer than any record holds: cut, and say so.
        }
        if len >= N - 1 {
            (*ev).hdr.flags |= EVENT_FLAG_TRUNCATED;
        }
        (*ev).result = c.ret;
        (*ev).dfd = c.dfd as i32;
        (*ev).flags = c.flags;
        (*ev).mode = c.mode as u32;
        (*ev).resolve = c.resolve;
        (*ev).call = c.which;
        (*ev)._pad = 0;
        // The path is read from user memory once; the lookup key is a copy of the record's,
        // made only for a path one of the prefix tries' filters does not rule out.
        let absolute = len > 0 && len <= FAST_PATH_MAX && (*ev).path[0] == b'/';
        let (b1, b2) = ((*ev).path[1], (*ev).path[2]);
        let fast = absolute && may_match(FILTER_OPEN, b1, b2);
        let gate_prefix = absolute && c.ret >= 0 && may_match(FILTER_GATE_PREFIX, b1, b2);
        let mut key = None;
        if fast || gate_prefix {
            if let Some(k) = scratch_key() {
                // Only the record's own bytes: a short record's path ends before the key's.
                let n = if N < FAST_PATH_MAX { N } else { FAST_PATH_MAX };
                if bpf_probe_read_kernel_buf((*ev).path.as_ptr(), &mut k.data[..n]).is_ok() {
                    key = Some(k);
                }
            }
        }
        if let (true, Some(k)) = (fast, key.as_deref_mut()) {
            (*ev).hdr.flags |= fast_open(k, len, c.flags);
        }
        if (*ev).hdr.flags & EVENT_FLAG_FAST_PATH == 0 && c.ret >= 0 {
            let intent = intent_of(c.flags);
            let comm = &(*ev).hdr.comm;
            let stop = gate::by_identity()
                || gate::gated_kind(watch.session_id, GATE_OPEN, intent)
                || gate::gated_comm(comm, GATE_OPEN, intent)
                || gate::gated_suffix(&(*ev).path, len, intent)
                || key.is_some_and(|k| gate::gated_prefix(k, len, intent));
            if stop {
                (*ev).hdr.flags |= gate::stop(task, watch.session_id, EventKind::Open);
            }
        }
    }
    entry.submit(0);
    Written::Done
}

/// Whether the open of `key` (`len` bytes) is in the gate, by any of its entries.
#[inline(always)]
fn gated(
    key: &mut Key<[u8; FAST_PATH_MAX]>,
    len: usize,
    flags: u64,
    comm: &[u8; 16],
    session_id: u64,
) -> bool {
    let intent = intent_of(flags);
    gate::by_identity()
        || gate::gated_kind(session_id, GATE_OPEN, intent)
        || gate::gated_comm(comm, GATE_OPEN, intent)
        || gate::gated_suffix(&key.data, len, intent)
        || gate::gated_prefix(key, len, intent)
}

/// `flags` with the access mode the kernel opened `fd` with. (Whether this open made the file
/// is `f_mode`'s `FMODE_CREATED`, whose bit moves between kernel versions and is in no BTF:
/// not read.)
#[inline(always)]
fn opened_flags(task: Task, fd: i32, flags: u64) -> u64 {
    let Some(file) = file_of(task, fd) else {
        return flags;
    };
    match read_kernel::<u32>(file, off(&CONFIG.file_flags)) {
        Some(f) => (flags & !3) | (f & 3) as u64,
        None => flags,
    }
}

/// The `INTENT_*` bits of an open's flags.
#[inline(always)]
fn intent_of(flags: u64) -> u32 {
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
    intent
}

/// Acts on the `FAST_OPEN` entry for the absolute path in `key` (`len` bytes) opened with
/// these flags, if there is one; returns the record flags that say so.
#[inline(always)]
fn fast_open(key: &mut Key<[u8; FAST_PATH_MAX]>, len: usize, flags: u64) -> u32 {
    let Some(rule) = fast_rule(key, len, flags) else {
        return 0;
    };
    fast_act(&rule);
    if rule.action == FAST_STOP {
        let out = EVENT_FLAG_FAST_PATH | EVENT_FLAG_STOPPED;
        alert(EventKind::Open, out);
        return out;
    }
    EVENT_FLAG_FAST_PATH
}

/// The `FAST_OPEN` entry for an absolute path opened with these flags, if any.
#[inline(always)]
fn fast_rule(key: &mut Key<[u8; FAST_PATH_MAX]>, len: usize, flags: u64) -> Option<FastRule> {
    if key.data[0] != b'/' {
        // Relative paths are resolved (and matched) in user space.
        return None;
    }
    let rule = fast_lookup(&FAST_OPEN, FILTER_OPEN, key, len)?;
    let intent = intent_of(flags);
    if rule.intent != 0 && rule.intent & intent == 0 {
        return None;
    }
    Some(rule)
}
