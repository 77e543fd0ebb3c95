//! The records of the hooks that change the host (unlink, rename, chmod, chown, link,
//! truncate, setid, mount, module, bpf, memfd, name_to_handle) as events: paths made absolute through the
//! directory descriptor or the working directory, calls by descriptor resolved to the file's
//! path.
use watcher_common::{Creds, EventHeader, EventKind, CHOWN_OWNER_KNOWN};

use super::tree::Tree;
use crate::model::event::{errno_name, memfd_flags, rename_flags, Detail, Ids, Name};

const AT_REMOVEDIR: u64 = 0x200;
/// chown's "unchanged".
const UNCHANGED: u32 = u32::MAX;

/// The syscall's name, by the record's `call` number.
fn syscall(kind: EventKind, call: u32) -> Name {
    kind.calls()
        .get(call as usize)
        .map_or_else(|| format!("{}#{call}", kind.name()).into(), |n| (*n).into())
}

/// `path` relative to `dfd`, or, when the call names no path, the file behind `dfd` itself.
fn at(tree: &Tree, pid: u32, dfd: i32, path: String) -> (String, bool) {
    if path.is_empty() && dfd >= 0 {
        return match tree.fd_path(pid, dfd) {
            Some(p) => (p, true),
            None => (format!("fd:{dfd}"), false),
        };
    }
    tree.resolve(pid, dfd, path)
}

/// A `PathEvent` record as an event.
pub fn path_detail(
    tree: &mut Tree,
    hdr: &EventHeader,
    (kind, call, dfd): (EventKind, u32, i32),
    path: String,
    args: [u64; 3],
    result: i64,
) -> Option<Detail> {
    let pid = hdr.tgid;
    tree.entry(pid, hdr.ppid, hdr.session_id);
    let error = errno_name(result);
    let syscall = syscall(kind, call);
    Some(match kind {
        EventKind::Unlink => {
            let (path, resolved) = at(tree, pid, dfd, path);
            Detail::Unlink {
                syscall,
                path,
                dir: args[0] & AT_REMOVEDIR != 0,
                result,
                error,
                resolved,
            }
        }
        EventKind::Chmod => {
            let (path, resolved) = at(tree, pid, dfd, path);
            Detail::Chmod {
                syscall,
                path,
                mode: (args[0] & 0o7777) as u32,
                result,
                error,
                resolved,
            }
        }
        EventKind::Chown => {
            let (path, resolved) = at(tree, pid, dfd, path);
            let id = |v: u64| Some(v as u32).filter(|v| *v != UNCHANGED);
            // The owner the file had before, where the kernel read it (calls by descriptor):
            // a chown to that same owner changes nothing (an editor keeping a file's owner).
            let before = (args[2] & CHOWN_OWNER_KNOWN != 0).then_some((args[2] >> 32) as u32);
            Detail::Chown {
                syscall,
                path,
                to_uid: id(args[0]).filter(|uid| Some(*uid) != before),
                to_gid: id(args[1]),
                result,
                error,
                resolved,
            }
        }
        EventKind::Truncate => {
            let (path, resolved) = at(tree, pid, dfd, path);
            Detail::Truncate {
                syscall,
                path,
                length: args[0],
                result,
                error,
                resolved,
            }
        }
        EventKind::Module => Detail::Module {
            syscall,
            // finit_module: the module file behind the descriptor.
            path: (dfd >= 0).then(|| at(tree, pid, dfd, String::new()).0),
            params: path,
            result,
            error,
        },
        EventKind::Bpf => Detail::Bpf {
            prog_type: args[1] as u32,
            instructions: args[2] as u32,
            // The kernel's name field is 16 bytes, the last a NUL.
            name: path.chars().take(15).collect(),
            result,
            error,
        },
        EventKind::IoUringOp => Detail::IoUringOp {
            op: crate::model::event::uring_op_name(args[0] as u8),
            opcode: args[0] as u8,
            sq_thread: args[1] != 0,
            path: (!path.is_empty()).then(|| at(tree, pid, dfd, path).0),
        },
        EventKind::IoUring => Detail::IoUring {
            entries: args[0] as u32,
            setup_flags: args[1] as u32,
            result,
            error,
        },
        EventKind::NameToHandle => {
            let (path, resolved) = at(tree, pid, dfd, path);
            Detail::NameToHandle {
                path,
                result,
                error,
                resolved,
            }
        }
        EventKind::Memfd => {
            if result >= 0 {
                tree.opened(pid, result, &format!("/memfd:{path}"));
            }
            Detail::Memfd {
                name: path,
                flags: memfd_flags(args[0]),
                result,
                error,
            }
        }
        _ => return None,
    })
}

/// What a `PairEvent` record carries.
pub struct Pair {
    pub kind: EventKind,
    pub call: u32,
    pub dfd: i32,
    pub path: String,
    pub new_dfd: i32,
    pub new_path: String,
    pub fstype: String,
    pub flags: u64,
    pub result: i64,
}

/// A `PairEvent` record as an event.
pub fn pair_detail(tree: &mut Tree, hdr: &EventHeader, p: Pair) -> Option<Detail> {
    let pid = hdr.tgid;
    tree.entry(pid, hdr.ppid, hdr.session_id);
    let error = errno_name(p.result);
    let syscall = syscall(p.kind, p.call);
    Some(match p.kind {
        EventKind::Rename => {
            let (path, a) = at(tree, pid, p.dfd, p.path);
            let (new_path, b) = at(tree, pid, p.new_dfd, p.new_path);
            Detail::Rename {
                syscall,
                path,
                new_path,
                flags: rename_flags(p.flags),
                result: p.result,
                error,
                resolved: a && b,
            }
        }
        EventKind::Link => {
            let symbolic = p.call >= 2;
            let (path, a) = at(tree, pid, p.dfd, p.path);
            // A symlink's text is kept as written: it is resolved from the link's directory
            // when used, not from the caller's.
            let (target, b) = if symbolic {
                (p.new_path, true)
            } else {
                at(tree, pid, p.new_dfd, p.new_path)
            };
            Detail::Link {
                syscall,
                path,
                target,
                symbolic,
                result: p.result,
                error,
                resolved: a && b,
            }
        }
        EventKind::Mount => {
            let some = |s: String| Some(s).filter(|s| !s.is_empty());
            // Only move_mount's source is a path; mount's is a device or a name ("tmpfs").
            let source = if p.call == 2 {
                some(at(tree, pid, p.dfd, p.path).0)
            } else {
                some(p.path)
            };
            let path = match p.call {
                3 => None,
                _ => some(p.new_path).map(|t| at(tree, pid, p.new_dfd, t).0),
            };
            Detail::Mount {
                syscall,
                source,
                path,
                fstype: some(p.fstype),
                flags: p.flags,
                result: p.result,
                error,
            }
        }
        _ => return None,
    })
}

/// A `SetidEvent` record as an event.
pub fn setid_detail(
    call: u32,
    args: [u32; 3],
    (old, new): (Option<Creds>, Creds),
    result: i64,
) -> Detail {
    let ids = |c: Creds| Ids {
        uid: c.uid,
        euid: c.euid,
        suid: c.suid,
        gid: c.gid,
        egid: c.egid,
        sgid: c.sgid,
        caps: c.cap_effective,
    };
    let n = match call {
        0 | 1 | 6 | 7 => 1,
        2 | 3 => 2,
        4 | 5 => 3,
        _ => 0,
    };
    Detail::Setid {
        syscall: syscall(EventKind::Setid, call),
        asked: args[..n]
            .iter()
            .map(|v| Some(*v).filter(|v| *v != UNCHANGED))
            .collect(),
        old: old.map(ids),
        new: ids(new),
        result,
        // setfsuid and setfsgid return the old id, not an error.
        error: if call == 6 || call == 7 {
            None
        } else {
            errno_name(result)
        },
    }
}
