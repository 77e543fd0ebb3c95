//! Ring-buffer records to typed values. Every length is checked: a short, unknown or garbled
//! record is an error to count, never a panic.
use std::mem::size_of;

use watcher_common::{
    Alert, ChdirEvent, ConnectEvent, Creds, DnsEvent, DupEvent, EventHeader, EventKind, ExecEvent,
    ExitEvent, ForkEvent, OpenEvent, PairEvent, PathEvent, PtraceEvent, SetidEvent, SignalEvent,
    EVENT_FLAG_ARGV_MISSING, EVENT_FLAG_TRUNCATED, PATH_MAX,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {kind} layout ({need} bytes)")]
    Short {
        kind: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    Inet { addr: std::net::IpAddr, port: u16 },
    Unix { path: String },
    Other { family: u16 },
}

#[derive(Debug, Clone)]
pub enum Record {
    Exec {
        hdr: EventHeader,
        filename: String,
        argv: Vec<String>,
        truncated: bool,
        /// The kernel could not read the command line (no mm, a fault): `argv` is empty
        /// because it is unknown, not because the program has none.
        argv_missing: bool,
        profile: u32,
    },
    Fork {
        hdr: EventHeader,
        child: u32,
        is_thread: bool,
    },
    Exit {
        hdr: EventHeader,
        exit_code: u32,
        fenced_call: u32,
    },
    Open {
        hdr: EventHeader,
        /// `OPEN_CALL_*`.
        call: u32,
        dfd: i32,
        path: String,
        flags: u64,
        mode: u32,
        result: i64,
        truncated: bool,
    },
    Connect {
        hdr: EventHeader,
        fd: i32,
        addr: SockAddr,
        result: i64,
    },
    Chdir {
        hdr: EventHeader,
        fd: i32,
        path: String,
    },
    Signal {
        hdr: EventHeader,
        target: u32,
        sig: i32,
        code: i32,
        result: i32,
    },
    Ptrace {
        hdr: EventHeader,
        target: u32,
        request: u32,
        result: i64,
    },
    /// unlink, chmod, chown, truncate, module, bpf, memfd (see `PathEvent`).
    Path {
        hdr: EventHeader,
        kind: EventKind,
        call: u32,
        dfd: i32,
        path: String,
        args: [u64; 3],
        result: i64,
        truncated: bool,
    },
    /// rename, link, mount (see `PairEvent`).
    Pair {
        hdr: EventHeader,
        kind: EventKind,
        call: u32,
        dfd: i32,
        path: String,
        new_dfd: i32,
        new_path: String,
        fstype: String,
        flags: u64,
        result: i64,
        truncated: bool,
    },
    Dup {
        hdr: EventHeader,
        old_fd: i32,
        new_fd: i32,
    },
    /// A DNS message as it arrived (the header has no task fields).
    Dns {
        hdr: EventHeader,
        message: Vec<u8>,
        truncated: bool,
        /// The resolver's address and the session socket's port.
        peer: std::net::IpAddr,
        local_port: u16,
        /// A query the session sent (else a response it received).
        query: bool,
    },
    Setid {
        hdr: EventHeader,
        call: u32,
        args: [u32; 3],
        old: Option<Creds>,
        new: Creds,
        result: i64,
    },
}

impl Record {
    pub fn header(&self) -> &EventHeader {
        match self {
            Record::Exec { hdr, .. }
            | Record::Fork { hdr, .. }
            | Record::Exit { hdr, .. }
            | Record::Open { hdr, .. }
            | Record::Connect { hdr, .. }
            | Record::Chdir { hdr, .. }
            | Record::Signal { hdr, .. }
            | Record::Ptrace { hdr, .. }
            | Record::Path { hdr, .. }
            | Record::Pair { hdr, .. }
            | Record::Setid { hdr, .. }
            | Record::Dup { hdr, .. }
            | Record::Dns { hdr, .. } => hdr,
        }
    }
}

/// Copies a `T` out of the front of `buf`.
fn read<T: Copy>(buf: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Short {
            kind,
            len: buf.len(),
            need,
        });
    }
    // SAFETY: length checked; every `T` used here is plain integers and byte arrays, for which
    // any bit pattern is valid; read_unaligned copes with the buffer's alignment.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const T) })
}

/// The bytes before the first NUL (all of them when there is none).
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A record of the `ALERTS` ring.
pub fn alert(buf: &[u8]) -> Result<Alert, DecodeError> {
    read(buf, "alert")
}

pub fn decode(buf: &[u8]) -> Result<Record, DecodeError> {
    let hdr: EventHeader = read(buf, "header")?;
    let kind = EventKind::from_u32(hdr.kind).ok_or(DecodeError::UnknownKind(hdr.kind))?;
    let truncated = hdr.flags & EVENT_FLAG_TRUNCATED != 0;
    Ok(match kind {
        EventKind::Exec => {
            let ev: ExecEvent = read(buf, "exec")?;
            let len = (ev.argv_len as usize).min(ev.argv.len());
            let mut area = &ev.argv[..len];
            // Each argument ends with a NUL; drop the last one so split() yields no empty tail.
            if let [rest @ .., 0] = area {
                area = rest;
            }
            let argv = if area.is_empty() {
                Vec::new()
            } else {
                area.split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            };
            Record::Exec {
                hdr,
                filename: cstr(&ev.filename),
                argv,
                truncated,
                argv_missing: hdr.flags & EVENT_FLAG_ARGV_MISSING != 0,
                profile: ev.profile,
            }
        }
        EventKind::Fork => {
            let ev: ForkEvent = read(buf, "fork")?;
            Record::Fork {
                hdr,
                child: ev.child_pid,
                is_thread: ev.is_thread != 0,
            }
        }
        EventKind::Exit => {
            let ev: ExitEvent = read(buf, "exit")?;
            Record::Exit {
                hdr,
                exit_code: ev.exit_code,
                fenced_call: ev.fenced_call,
            }
        }
        EventKind::Open => {
            // Short or long (see `OpenEvent`): the path runs to the end of the record.
            let ev: OpenEvent<0> = read(buf, "open")?;
            let path = &buf[size_of::<OpenEvent<0>>()..];
            Record::Open {
                hdr,
                call: ev.call,
                dfd: ev.dfd,
                path: cstr(&path[..path.len().min(PATH_MAX)]),
                flags: ev.flags,
                mode: ev.mode,
                result: ev.result,
                truncated,
            }
        }
        EventKind::Connect => {
            let ev: ConnectEvent = read(buf, "connect")?;
            let len = (ev.addrlen as usize).min(ev.addr.len());
            Record::Connect {
                hdr,
                fd: ev.fd,
                addr: sockaddr(&ev.addr[..len]),
                result: ev.result,
            }
        }
        EventKind::Chdir => {
            let ev: ChdirEvent = read(buf, "chdir")?;
            Record::Chdir {
                hdr,
                fd: ev.fd,
                path: cstr(&ev.path),
            }
        }
        EventKind::Signal => {
            let ev: SignalEvent = read(buf, "signal")?;
            Record::Signal {
                hdr,
                target: ev.target,
                sig: ev.sig,
                code: ev.code,
                result: ev.result,
            }
        }
        EventKind::Ptrace => {
            let ev: PtraceEvent = read(buf, "ptrace")?;
            Record::Ptrace {
                hdr,
                target: ev.target,
                request: ev.request,
                result: ev.result,
            }
        }
        EventKind::Unlink
        | EventKind::Chmod
        | EventKind::Chown
        | EventKind::Truncate
        | EventKind::Module
        | EventKind::Bpf
        | EventKind::IoUring
        | EventKind::IoUringOp
        | EventKind::NameToHandle
        | EventKind::Memfd => {
            // Short or long, like an open.
            let ev: PathEvent<0> = read(buf, kind.name())?;
            let path = &buf[size_of::<PathEvent<0>>()..];
            Record::Path {
                hdr,
                kind,
                call: ev.call,
                dfd: ev.dfd,
                path: cstr(&path[..path.len().min(PATH_MAX)]),
                args: ev.args,
                result: ev.result,
                truncated,
            }
        }
        EventKind::Rename | EventKind::Link | EventKind::Mount => {
            // Two paths of the record's size each, after the fixed part.
            let ev: PairEvent<0> = read(buf, kind.name())?;
            let rest = &buf[size_of::<PairEvent<0>>()..];
            let n = (rest.len() / 2).min(PATH_MAX);
            Record::Pair {
                hdr,
                kind,
                call: ev.call,
                dfd: ev.dfd,
                path: cstr(&rest[..n]),
                new_dfd: ev.new_dfd,
                new_path: cstr(&rest[n..2 * n]),
                fstype: cstr(&ev.fstype),
                flags: ev.flags,
                result: ev.result,
                truncated,
            }
        }
        EventKind::Dns => {
            let ev: DnsEvent = read(buf, "dns")?;
            let len = (ev.len as usize).min(ev.data.len());
            Record::Dns {
                hdr,
                message: ev.data[..len].to_vec(),
                truncated,
                peer: match ev.v6 {
                    0 => std::net::IpAddr::from([ev.peer[0], ev.peer[1], ev.peer[2], ev.peer[3]]),
                    _ => std::net::IpAddr::from(ev.peer),
                },
                local_port: ev.local_port,
                query: ev.query != 0,
            }
        }
        EventKind::Dup => {
            let ev: DupEvent = read(buf, "dup")?;
            Record::Dup {
                hdr,
                old_fd: ev.old_fd,
                new_fd: ev.new_fd,
            }
        }
        EventKind::Setid => {
            let ev: SetidEvent = read(buf, "setid")?;
            Record::Setid {
                hdr,
                call: ev.call,
                args: ev.args,
                old: (ev.ok != 0).then_some(ev.old),
                new: ev.new,
                result: ev.result,
            }
        }
    })
}

/// Decodes a raw `struct sockaddr` (AF_INET, AF_INET6, AF_UNIX).
pub fn sockaddr(b: &[u8]) -> SockAddr {
    if b.len() < 2 {
        return SockAddr::Other { family: 0 };
    }
    let family = u16::from_ne_bytes([b[0], b[1]]);
    match family as i32 {
        libc::AF_INET if b.len() >= 8 => SockAddr::Inet {
            port: u16::from_be_bytes([b[2], b[3]]),
            addr: std::net::Ipv4Addr::new(b[4], b[5], b[6], b[7]).into(),
        },
        libc::AF_INET6 if b.len() >= 24 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            SockAddr::Inet {
                port: u16::from_be_bytes([b[2], b[3]]),
                addr: std::net::Ipv6Addr::from(a).into(),
            }
        }
        libc::AF_UNIX => {
            let p = &b[2..];
            // A leading NUL is an abstract socket; show it as `@name` like ss(8).
            let path = match p.first() {
                Some(0) => format!(
                    "@{}",
                    String::from_utf8_lossy(&p[1..]).trim_end_matches('\0')
                ),
                _ => cstr(p),
            };
            SockAddr::Unix { path }
        }
        _ => SockAddr::Other { family },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()).to_vec() }
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            flags: 0,
            ts_ns: 1,
            session_id: 7,
            cgroup_id: 0,
            pid: 10,
            tgid: 10,
            ppid: 1,
            uid: 0,
            comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    fn empty_exec() -> ExecEvent {
        ExecEvent {
            hdr: header(EventKind::Exec),
            argv_len: 0,
            profile: 0,
            filename: [0; watcher_common::PATH_MAX],
            argv: [0; watcher_common::ARGV_MAX],
        }
    }

    #[test]
    fn exec_argv_is_split_on_nul() {
        let mut ev = empty_exec();
        let args = b"sh\0-c\0echo hi\0";
        ev.argv[..args.len()].copy_from_slice(args);
        ev.argv_len = args.len() as u32;
        ev.filename[..7].copy_from_slice(b"/bin/sh");
        match decode(&bytes_of(&ev)).unwrap() {
            Record::Exec { filename, argv, .. } => {
                assert_eq!(filename, "/bin/sh");
                assert_eq!(argv, vec!["sh", "-c", "echo hi"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_argv_is_said_so() {
        let mut ev = empty_exec();
        for (flags, missing) in [(EVENT_FLAG_ARGV_MISSING, true), (0, false)] {
            ev.hdr.flags = flags;
            match decode(&bytes_of(&ev)).unwrap() {
                Record::Exec {
                    argv, argv_missing, ..
                } => {
                    assert!(argv.is_empty());
                    assert_eq!(argv_missing, missing);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let ev = ForkEvent {
            hdr: header(EventKind::Fork),
            child_pid: 11,
            is_thread: 0,
            clone_flags: 0,
        };
        let b = bytes_of(&ev);
        assert!(matches!(
            decode(&b[..b.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(decode(&b[..3]), Err(DecodeError::Short { .. })));
        let mut h = header(EventKind::Fork);
        h.kind = 99;
        assert_eq!(
            decode(&bytes_of(&h)).unwrap_err(),
            DecodeError::UnknownKind(99)
        );
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn both_sizes_of_path_and_pair_records_decode() {
        let mut short = PathEvent::<{ watcher_common::PATH_SHORT }> {
            hdr: header(EventKind::Unlink),
            result: 0,
            args: [0x200, 0, 0],
            dfd: -100,
            call: 1,
            path: [0; watcher_common::PATH_SHORT],
        };
        short.path[..5].copy_from_slice(b"a/b/c");
        match decode(&bytes_of(&short)).unwrap() {
            Record::Path {
                kind,
                path,
                args,
                call,
                ..
            } => {
                assert_eq!(
                    (kind, path.as_str(), args[0], call),
                    (EventKind::Unlink, "a/b/c", 0x200, 1)
                );
            }
            other => panic!("{other:?}"),
        }
        let mut long = PairEvent::<PATH_MAX> {
            hdr: header(EventKind::Rename),
            result: -2,
            flags: 1,
            dfd: -100,
            new_dfd: 3,
            call: 2,
            _pad: 0,
            fstype: [0; 16],
            path: [b'x'; PATH_MAX],
            new_path: [0; PATH_MAX],
        };
        long.path[300] = 0;
        long.new_path[..3].copy_from_slice(b"new");
        match decode(&bytes_of(&long)).unwrap() {
            Record::Pair {
                path,
                new_path,
                new_dfd,
                ..
            } => {
                assert_eq!(path.len(), 300);
                assert_eq!((new_path.as_str(), new_dfd), ("new", 3));
            }
            other => panic!("{other:?}"),
        }
        // The fixed part alone, without a byte of path: no panic, empty paths.
        let b = bytes_of(&long);
        assert!(matches!(
            decode(&b[..size_of::<PairEvent<0>>()]),
            Ok(Record::Pair { .. })
        ));
        assert!(matches!(
            decode(&b[..size_of::<PairEvent<0>>() - 1]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn sockaddrs_decode() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            sockaddr(&v4),
            SockAddr::Inet {
                addr: "127.0.0.1".parse().unwrap(),
                port: 8080
            }
        );
        let mut un = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        un.extend_from_slice(b"/tmp/s.sock\0\0\0");
        assert_eq!(
            sockaddr(&un),
            SockAddr::Unix {
                path: "/tmp/s.sock".into()
            }
        );
        let mut abs = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        abs.extend_from_slice(b"\0name");
        assert_eq!(
            sockaddr(&abs),
            SockAddr::Unix {
                path: "@name".into()
            }
        );
        assert_eq!(sockaddr(&[1]), SockAddr::Other { family: 0 });
    }
}
