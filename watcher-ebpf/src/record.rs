//! Writing the records of the file-change and kernel-level hooks: one path (`PathEvent`) or two
//! (`PairEvent`), in the short size when the paths fit and the long one when not, as the open
//! hook does.
use aya_ebpf::helpers::bpf_probe_read_user_str_bytes;
use watcher_common::{
    EventKind, PairEvent, PathEvent, Watch, EVENT_FLAG_TRUNCATED, PATH_MAX, PATH_SHORT,
};

use crate::shared::{count_drop, fill_header, Task, EVENTS};

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
}

/// Writes a record in the short size, or in the long one when a path does not fit; counts a
/// drop when the ring is full.
#[inline(always)]
fn in_two_sizes(kind: EventKind, short: impl FnOnce() -> Written, long: impl FnOnce() -> Written) {
    let written = match short() {
        Written::TooLong => long(),
        w => w,
    };
    if let Written::NoRoom = written {
        count_drop(kind);
    }
}

/// Writes `c`'s record.
#[inline(always)]
pub fn write_path(c: &PathCall, task: Task, watch: &Watch) {
    in_two_sizes(
        c.kind,
        || path_record::<PATH_SHORT>(c, task, watch),
        || path_record::<PATH_MAX>(c, task, watch),
    );
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
    let Some(mut entry) = EVENTS.reserve::<PathEvent<N>>(0) else {
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
        fill_header(
            &raw mut (*ev).hdr,
            task,
            c.kind,
            watch.session_id,
            watch.ppid,
        );
        (*ev).hdr.flags = c.flags | if cut { EVENT_FLAG_TRUNCATED } else { 0 };
        (*ev).result = c.ret;
        (*ev).args = c.args;
        (*ev).dfd = c.dfd;
        (*ev).call = c.call;
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
}

/// Writes `c`'s record.
#[inline(always)]
pub fn write_pair(c: &PairCall, task: Task, watch: &Watch) {
    in_two_sizes(
        c.kind,
        || pair_record::<PATH_SHORT>(c, task, watch),
        || pair_record::<PATH_MAX>(c, task, watch),
    );
}

#[inline(always)]
fn pair_record<const N: usize>(c: &PairCall, task: Task, watch: &Watch) -> Written {
    let Some(mut entry) = EVENTS.reserve::<PairEvent<N>>(0) else {
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
        fill_header(
            &raw mut (*ev).hdr,
            task,
            c.kind,
            watch.session_id,
            watch.ppid,
        );
        (*ev).hdr.flags = c.hdr_flags | if cut { EVENT_FLAG_TRUNCATED } else { 0 };
        (*ev).result = c.ret;
        (*ev).flags = c.flags;
        (*ev).dfd = c.dfd;
        (*ev).new_dfd = c.new_dfd;
        (*ev).call = c.call;
        (*ev)._pad = 0;
    }
    entry.submit(0);
    Written::Done
}
