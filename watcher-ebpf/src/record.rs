//! Writing the records of the file-change and kernel-level hooks: one path (`PathEvent`) or two
//! (`PairEvent`), in the short size when the paths fit and the long one when not, as the open
//! hook does.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_buf, bpf_probe_read_user_str_bytes},
    maps::ring_buf::RingBufEntry,
};
use watcher_common::{
    EventHeader, EventKind, PairEvent, PathEvent, Record, Watch, EVENT_FLAG_TRUNCATED,
    FAST_PATH_MAX, FILTER_GATE_PREFIX, FILTER_OPEN, GATE_OPEN, PATH_MAX, PATH_SHORT,
};

use crate::{
    gate,
    shared::{fast_lookup, fill_header, may_match, scratch_key, Task, EVENTS, FAST_OPEN},
};

/// A record of `kind` for the current task in the ring, its header filled (the session's and
/// `ppid`); `None` when the ring is full (the caller decides what the loss means).
#[inline(always)]
pub fn try_reserve<T: Record>(
    task: Task,
    kind: EventKind,
    session_id: u64,
    ppid: u32,
) -> Option<RingBufEntry<T>> {
    let mut entry = EVENTS.reserve::<T>(0)?;
    // `Record`: the header is the record's first field.
    fill_header(
        entry.as_mut_ptr() as *mut EventHeader,
        task,
        kind,
        session_id,
        ppid,
    );
    Some(entry)
}

/// How a probe starts its record: `try_reserve`, and when the ring is full the record is
/// lost (`gate::lost`: counted, and a kind that could have held holds the session).
#[inline(always)]
pub fn reserve<T: Record>(
    task: Task,
    kind: EventKind,
    session_id: u64,
    ppid: u32,
) -> Option<RingBufEntry<T>> {
    let entry = try_reserve(task, kind, session_id, ppid);
    if entry.is_none() {
        gate::lost(task, session_id, kind);
    }
    entry
}

/// Whether every open with `intent` of this process or session is gated (by kind or by the
/// process's name): a change to a name is gated as an open of it would be.
#[inline(always)]
fn gated_whole(comm: &[u8; 16], session_id: u64, intent: u32) -> bool {
    gate::gated_kind(session_id, GATE_OPEN, intent) || gate::gated_comm(comm, GATE_OPEN, intent)
}

/// Whether a change (`intent`) to the name in `path` (`len` bytes) would be stopped as an
/// open of it with the same intent would: by the gate's tails and prefixes, or by a
/// fast-path entry (whose rules the gate leaves to the fast path). The change has happened;
/// user space decides it as that open, and deny puts the old file back.
#[inline(always)]
pub fn gated_name<const N: usize>(path: &[u8; N], len: usize, intent: u32) -> bool {
    if gate::gated_suffix(path, len, intent) {
        return true;
    }
    if len < 2 || len > FAST_PATH_MAX || path[0] != b'/' {
        return false;
    }
    let (b1, b2) = (path[1], path[2]);
    let fast = may_match(FILTER_OPEN, b1, b2);
    if !fast && !may_match(FILTER_GATE_PREFIX, b1, b2) {
        return false;
    }
    let Some(k) = scratch_key() else {
        return false;
    };
    let n = if N < FAST_PATH_MAX { N } else { FAST_PATH_MAX };
    // SAFETY: the record's own bytes; the helper faults safely.
    if unsafe { bpf_probe_read_kernel_buf(path.as_ptr(), &mut k.data[..n]) }.is_err() {
        return false;
    }
    if gate::gated_prefix(k, len, intent) {
        return true;
    }
    fast && fast_lookup(&FAST_OPEN, FILTER_OPEN, k, len)
        .is_some_and(|r| r.intent == 0 || r.intent & intent != 0)
}

pub enum Written {
    Done,
    /// A path needs the bigger record; nothing was written.
    TooLong,
    /// The ring is full; nothing was written.
    NoRoom,
}

/// A call with one path (or none: a call by descriptor).
pub struct PathCall {
    pub kind: EventKind,
    pub call: u32,
    /// User memory; null when the call has no path.
    pub path: *const u8,
    pub dfd: i32,
    pub args: [u64; 3],
    pub ret: i64,
    /// `EVENT_FLAG_*` bits for the header (the kernel policy's).
    pub flags: u32,
    /// Open intents (`INTENT_*`) this call has on its file (truncate: `INTENT_TRUNCATE`), to
    /// be gated as an open of the file with them would be; 0: not gated. A call by descriptor
    /// (no path) is looked up by the file's identity, with `dfd` the descriptor.
    pub gate: u32,
}

/// Writes a record in the short size, or in the long one when a path does not fit; when the
/// ring is full, the record is lost (`gate::lost`).
#[inline(always)]
fn in_two_sizes(
    (kind, task, session_id): (EventKind, Task, u64),
    short: impl FnOnce() -> Written,
    long: impl FnOnce() -> Written,
) {
    let written = match short() {
        Written::TooLong => long(),
        w => w,
    };
    if let Written::NoRoom = written {
        gate::lost(task, session_id, kind);
    }
}

/// Writes `c`'s record.
#[inline(always)]
pub fn write_path(c: &PathCall, task: Task, watch: &Watch) {
    gate::remember_by_identity(
        c.gate != 0
            && c.ret == 0
            && (relative_in_gated_dir(task, c.path, c.dfd, c.gate)
                || c.path.is_null() && gate::gated_inode(task, c.dfd as i64, c.gate)),
    );
    in_two_sizes(
        (c.kind, task, watch.session_id),
        || path_record::<PATH_SHORT>(c, task, watch),
        || path_record::<PATH_MAX>(c, task, watch),
    );
}

/// Whether the user string at `name` is a relative name and `dfd` (or the working directory)
/// is a directory the policy guards names in (`gate::gated_dir`). Its first byte is read here,
/// before the record: a rewrite in between costs a gated round trip or a tail match, as any
/// relative name does.
#[inline(always)]
fn relative_in_gated_dir(task: Task, name: *const u8, dfd: i32, intent: u32) -> bool {
    if name.is_null() {
        return false;
    }
    // SAFETY: probe read of user memory, faults safely.
    let first = unsafe { aya_ebpf::helpers::bpf_probe_read_user(name) }.unwrap_or(b'/');
    first != b'/' && first != 0 && gate::gated_dir(task, dfd, intent)
}

/// Reads the user string at `src` into `dst`; its length (0 when there is none).
#[inline(always)]
fn read_str(src: *const u8, dst: &mut [u8]) -> usize {
    dst[0] = 0;
    if src.is_null() {
        return 0;
    }
    // SAFETY: probe read of user memory, faults safely.
    match unsafe { bpf_probe_read_user_str_bytes(src, dst) } {
        Ok(s) => s.len(),
        Err(_) => {
            dst[0] = 0;
            0
        }
    }
}

#[inline(always)]
fn path_record<const N: usize>(c: &PathCall, task: Task, watch: &Watch) -> Written {
    let Some(mut entry) = try_reserve::<PathEvent<N>>(task, c.kind, watch.session_id, watch.ppid)
    else {
        return Written::NoRoom;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<PathEvent<N>>().
    unsafe {
        let len = read_str(c.path, &mut (*ev).path);
        let cut = len >= N - 1;
        if cut && N < PATH_MAX {
            entry.discard(0);
            return Written::TooLong;
        }
        (*ev).hdr.flags = c.flags | if cut { EVENT_FLAG_TRUNCATED } else { 0 };
        (*ev).result = c.ret;
        (*ev).args = c.args;
        (*ev).dfd = c.dfd;
        (*ev).call = c.call;
        if c.gate != 0 && c.ret == 0 {
            // By identity: a relative name in a guarded directory, or a call by descriptor.
            let named = gate::by_identity() || len > 0 && gated_name(&(*ev).path, len, c.gate);
            if named || gated_whole(&(*ev).hdr.comm, watch.session_id, c.gate) {
                (*ev).hdr.flags |= gate::stop(task, watch.session_id, c.kind);
            }
        }
    }
    entry.submit(0);
    Written::Done
}

/// A call with two paths.
pub struct PairCall {
    pub kind: EventKind,
    pub call: u32,
    pub path: *const u8,
    pub dfd: i32,
    pub new_path: *const u8,
    pub new_dfd: i32,
    /// User memory, or null: mount's file system type.
    pub fstype: *const u8,
    pub flags: u64,
    pub ret: i64,
    /// `EVENT_FLAG_*` bits for the header.
    pub hdr_flags: u32,
    /// Open intents the call has on the name it makes (a rename's `new_path`, a link's
    /// `path`), gated as an open of that name with them would be; 0: not gated.
    pub gate: u32,
}

/// Writes `c`'s record.
#[inline(always)]
pub fn write_pair(c: &PairCall, task: Task, watch: &Watch) {
    // The name the call makes: a rename's new one, a link's first.
    let (name, dfd) = if c.kind == EventKind::Rename {
        (c.new_path, c.new_dfd)
    } else {
        (c.path, c.dfd)
    };
    gate::remember_by_identity(
        c.gate != 0 && c.ret == 0 && relative_in_gated_dir(task, name, dfd, c.gate),
    );
    in_two_sizes(
        (c.kind, task, watch.session_id),
        || pair_record::<PATH_SHORT>(c, task, watch),
        || pair_record::<PATH_MAX>(c, task, watch),
    );
}

#[inline(always)]
fn pair_record<const N: usize>(c: &PairCall, task: Task, watch: &Watch) -> Written {
    let Some(mut entry) = try_reserve::<PairEvent<N>>(task, c.kind, watch.session_id, watch.ppid)
    else {
        return Written::NoRoom;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<PairEvent<N>>().
    unsafe {
        let a = read_str(c.path, &mut (*ev).path);
        let b = read_str(c.new_path, &mut (*ev).new_path);
        let cut = a >= N - 1 || b >= N - 1;
        if cut && N < PATH_MAX {
            entry.discard(0);
            return Written::TooLong;
        }
        read_str(c.fstype, &mut (*ev).fstype);
        (*ev).hdr.flags = c.hdr_flags | if cut { EVENT_FLAG_TRUNCATED } else { 0 };
        (*ev).result = c.ret;
        (*ev).flags = c.flags;
        (*ev).dfd = c.dfd;
        (*ev).new_dfd = c.new_dfd;
        (*ev).call = c.call;
        (*ev)._pad = 0;
        if c.gate != 0 && c.ret == 0 {
            // The new name: a rename's second path, a link's first.
            let named = gate::by_identity()
                || if c.kind == EventKind::Rename {
                    gated_name(&(*ev).new_path, b, c.gate)
                } else {
                    gated_name(&(*ev).path, a, c.gate)
                };
            if named || gated_whole(&(*ev).hdr.comm, watch.session_id, c.gate) {
                (*ev).hdr.flags |= gate::stop(task, watch.session_id, c.kind);
            }
        }
    }
    entry.submit(0);
    Written::Done
}
