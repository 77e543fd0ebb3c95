//! `syscalls:sys_exit_chown`, `lchown`, `fchown`, `fchownat`: an owner change, with the
//! result, at exit. `fchown` names its file by descriptor; user space resolves it. For a call
//! by descriptor the entry reads the file's owner first, so user space can tell a chown to
//! the owner the file already has (an in-place edit keeping its owner) from a change.
use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use watcher_common::{EventKind, CHOWN_OWNER_KNOWN, GATE_CHOWN};

use crate::{
    gate,
    record::{write_path, PathCall},
    shared::{
        file_of, off, read_kernel, syscall, syscall_arg4, watch_of, watched_call, Task, CONFIG,
    },
};

const AT_FDCWD: i32 = -100;
const AT_EMPTY_PATH: u64 = 0x1000;

/// The owner a descriptor's file had when the thread entered fchown(at), until its exit.
#[map]
static OWNER_BEFORE: LruHashMap<u32, u32> = LruHashMap::with_max_entries(1024, 0);

#[tracepoint]
pub fn sys_enter_fchown(_ctx: TracePointContext) -> u32 {
    try_enter(false);
    0
}

#[tracepoint]
pub fn sys_enter_fchownat(_ctx: TracePointContext) -> u32 {
    try_enter(true);
    0
}

fn try_enter(at: bool) {
    let task = Task::current();
    if watch_of(task.tgid()).is_none() {
        return;
    }
    let a = syscall(task).args;
    if at {
        // Only `fchownat(fd, "", .., AT_EMPTY_PATH)` names the descriptor's own file.
        // SAFETY: probe read of user memory, faults safely.
        let first = unsafe { bpf_probe_read_user(a[1] as *const u8) }.unwrap_or(1);
        if syscall_arg4(task) & AT_EMPTY_PATH == 0 || first != 0 {
            return;
        }
    }
    if let Some(uid) = owner_of(task, a[0] as i32) {
        let _ = OWNER_BEFORE.insert(&task.pid(), &uid, 0);
    }
}

/// The owner of the file open as `fd` in the current task.
#[inline(always)]
fn owner_of(task: Task, fd: i32) -> Option<u32> {
    let file = file_of(task, fd)?;
    let inode: *const u8 = read_kernel(file, off(&CONFIG.file_inode))?;
    read_kernel(inode, off(&CONFIG.inode_uid))
}

#[tracepoint]
pub fn sys_exit_chown(_ctx: TracePointContext) -> u32 {
    try_exit(0);
    0
}

#[tracepoint]
pub fn sys_exit_lchown(_ctx: TracePointContext) -> u32 {
    try_exit(1);
    0
}

#[tracepoint]
pub fn sys_exit_fchown(_ctx: TracePointContext) -> u32 {
    try_exit(2);
    0
}

#[tracepoint]
pub fn sys_exit_fchownat(_ctx: TracePointContext) -> u32 {
    try_exit(3);
    0
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let a = sc.args;
    // lchown does not follow a final symlink: AT_SYMLINK_NOFOLLOW, as fchownat says it.
    let (dfd, path, uid, gid, flags) = match call {
        0 => (AT_FDCWD, a[0], a[1], a[2], 0),
        1 => (AT_FDCWD, a[0], a[1], a[2], 0x100),
        2 => (a[0] as i32, 0, a[1], a[2], 0),
        _ => (a[0] as i32, a[1], a[2], a[3], syscall_arg4(task)),
    };
    let mut flags = flags & 0xffff;
    if call >= 2 {
        // SAFETY: copied out at once.
        if let Some(before) = unsafe { OWNER_BEFORE.get(&task.pid()) }.copied() {
            flags |= CHOWN_OWNER_KNOWN | (before as u64) << 32;
            let _ = OWNER_BEFORE.remove(&task.pid());
        }
    }
    let c = PathCall {
        gate: 0,
        kind: EventKind::Chown,
        call,
        path: path as *const u8,
        dfd,
        args: [uid as u32 as u64, gid as u32 as u64, flags],
        ret: sc.ret,
        flags: if sc.ret == 0 {
            gate::stop_rare(task, watch.session_id, GATE_CHOWN, EventKind::Chown)
        } else {
            0
        },
    };
    write_path(&c, task, &watch);
}
