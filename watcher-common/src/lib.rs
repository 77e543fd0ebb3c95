//! Types shared by the kernel programs (`watcher-ebpf`) and the daemon (`watcher`).
//!
//! Every ring-buffer record starts with [`EventHeader`]; its `kind` says which record follows.
//! All types are `#[repr(C)]` with explicit padding so both sides agree byte for byte.
#![no_std]

/// Longest path the kernel copies (exec filename, open path, chdir path), NUL included.
pub const PATH_MAX: usize = 512;
/// Bytes of argv copied at exec (the new program's `arg_start..arg_end`, NUL-separated).
/// Longer command lines are cut and flagged [`EVENT_FLAG_TRUNCATED`]. A power of two.
pub const ARGV_MAX: usize = 2048;
/// Bytes of a `struct sockaddr` copied at connect (enough for `sockaddr_un`).
pub const SOCKADDR_MAX: usize = 112;
/// Agent matcher keys: basenames up to this many bytes (longer names cannot be matched).
pub const AGENT_NAME_MAX: usize = 32;

/// Record kinds. Values are stable: they index the per-kind drop counters too.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 0,
    Fork = 1,
    Exit = 2,
    Open = 3,
    Connect = 4,
    Chdir = 5,
    /// A signal sent by a watched process (kill, tkill, tgkill, pidfd_send_signal, sigqueue).
    Signal = 6,
    /// ptrace(2) attach or seize by a watched process.
    Ptrace = 7,
    /// unlink, unlinkat, rmdir ([`PathEvent`]).
    Unlink = 8,
    /// rename, renameat, renameat2 ([`PairEvent`]).
    Rename = 9,
    /// chmod, fchmod, fchmodat, fchmodat2 ([`PathEvent`]).
    Chmod = 10,
    /// chown, lchown, fchown, fchownat ([`PathEvent`]).
    Chown = 11,
    /// link, linkat, symlink, symlinkat ([`PairEvent`]).
    Link = 12,
    /// truncate, ftruncate ([`PathEvent`]).
    Truncate = 13,
    /// setuid, setgid, setre*id, setres*id, setfs*id, capset ([`SetidEvent`]).
    Setid = 14,
    /// mount, umount2, move_mount, fsmount ([`PairEvent`]).
    Mount = 15,
    /// init_module, finit_module ([`PathEvent`]).
    Module = 16,
    /// bpf(BPF_PROG_LOAD) ([`PathEvent`]).
    Bpf = 17,
    /// memfd_create ([`PathEvent`]).
    Memfd = 18,
    /// dup, dup2, dup3, fcntl(F_DUPFD): a descriptor copied (internal: user space keeps each
    /// descriptor's path, so that calls through the copy resolve).
    Dup = 19,
    /// A DNS response to a socket of a session ([`DnsEvent`]); no task fields in its header.
    Dns = 20,
    /// io_uring_setup ([`PathEvent`], no path): a ring whose operations (open, read, write,
    /// connect, send, rename, ...) pass no syscall hook at all, so the ring itself is gated.
    IoUring = 21,
    /// An operation a watched process's ring submitted (`io_uring:io_uring_submit_req`,
    /// [`PathEvent`]): `args` `[opcode, submitted by the ring's polling thread]`, the path of an
    /// `OPENAT`/`OPENAT2` as the kernel copied it. Seen, not stopped: it runs in the same call.
    IoUringOp = 22,
    /// name_to_handle_at ([`PathEvent`]): a handle made for a file, which
    /// `open_by_handle_at` opens later by no name (that open is an `Open`).
    NameToHandle = 23,
}

/// Number of [`EventKind`] values (size of the drop counter array).
pub const EVENT_KINDS: u32 = 24;

/// Kernel-side failures, counted per CPU in the `FAILURES` map by kind. None should happen;
/// each one that does is a process or an alert the watcher may have missed, so user space
/// shows them (`watcher status`) instead of the kernel swallowing them.
/// A watched process's new child could not be added to `WATCHED` (the map is full): the child
/// runs unwatched.
pub const FAIL_FORK_WATCH: u32 = 0;
/// An agent matcher's new session could not be added to `WATCHED`.
pub const FAIL_SESSION_WATCH: u32 = 1;
/// A program found its load-time configuration missing.
pub const FAIL_CONFIG: u32 = 2;
/// An urgent alert could not be written to `ALERTS` (the freeze then waits for the record).
pub const FAIL_ALERT: u32 = 3;
pub const FAILURE_KINDS: u32 = 4;
/// The kinds' names, by index, as `watcher status` shows them.
pub const FAILURE_NAMES: [&str; FAILURE_KINDS as usize] =
    ["fork_watch", "session_watch", "config", "alert"];

impl EventKind {
    pub const ALL: [EventKind; EVENT_KINDS as usize] = [
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
        EventKind::Open,
        EventKind::Connect,
        EventKind::Chdir,
        EventKind::Signal,
        EventKind::Ptrace,
        EventKind::Unlink,
        EventKind::Rename,
        EventKind::Chmod,
        EventKind::Chown,
        EventKind::Link,
        EventKind::Truncate,
        EventKind::Setid,
        EventKind::Mount,
        EventKind::Module,
        EventKind::Bpf,
        EventKind::Memfd,
        EventKind::Dup,
        EventKind::Dns,
        EventKind::IoUring,
        EventKind::IoUringOp,
        EventKind::NameToHandle,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Fork => "fork",
            EventKind::Exit => "exit",
            EventKind::Open => "open",
            EventKind::Connect => "connect",
            EventKind::Chdir => "chdir",
            EventKind::Signal => "signal",
            EventKind::Ptrace => "ptrace",
            EventKind::Unlink => "unlink",
            EventKind::Rename => "rename",
            EventKind::Chmod => "chmod",
            EventKind::Chown => "chown",
            EventKind::Link => "link",
            EventKind::Truncate => "truncate",
            EventKind::Setid => "setid",
            EventKind::Mount => "mount",
            EventKind::Module => "module",
            EventKind::Bpf => "bpf",
            EventKind::Memfd => "memfd",
            EventKind::Dup => "dup",
            EventKind::Dns => "dns",
            EventKind::IoUring => "io_uring",
            EventKind::IoUringOp => "io_uring_op",
            EventKind::NameToHandle => "name_to_handle",
        }
    }

    /// The syscalls of this kind, by the `call` number their records carry.
    pub fn calls(self) -> &'static [&'static str] {
        match self {
            // By `OPEN_CALL_*`.
            EventKind::Open => &["openat", "openat2", "open", "creat", "open_by_handle_at"],
            EventKind::Unlink => &["unlink", "unlinkat", "rmdir"],
            EventKind::Rename => &["rename", "renameat", "renameat2"],
            EventKind::Chmod => &["chmod", "fchmod", "fchmodat", "fchmodat2"],
            EventKind::Chown => &["chown", "lchown", "fchown", "fchownat"],
            EventKind::Link => &["link", "linkat", "symlink", "symlinkat"],
            EventKind::Truncate => &["truncate", "ftruncate"],
            EventKind::Setid => &SETID_CALLS,
            EventKind::Mount => &["mount", "umount2", "move_mount", "fsmount"],
            EventKind::Module => &["init_module", "finit_module"],
            EventKind::Bpf => &["bpf"],
            EventKind::Memfd => &["memfd_create"],
            EventKind::IoUring => &["io_uring_setup"],
            EventKind::NameToHandle => &["name_to_handle_at"],
            _ => &[],
        }
    }
}

/// The `call` numbers of [`SetidEvent`]s.
pub const SETID_CALLS: [&str; 9] = [
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "capset",
];

/// A record of the ring: `#[repr(C)]` with its `EventHeader` first, so a probe fills the
/// header of any record through one helper.
///
/// # Safety
/// The type is `#[repr(C)]` and its first field is `hdr: EventHeader`.
pub unsafe trait Record {}

// SAFETY: each is `#[repr(C)]` with `hdr: EventHeader` first (checked below).
unsafe impl Record for ExecEvent {}
unsafe impl Record for ForkEvent {}
unsafe impl Record for ExitEvent {}
unsafe impl<const N: usize> Record for OpenEvent<N> {}
unsafe impl<const N: usize> Record for PathEvent<N> {}
unsafe impl<const N: usize> Record for PairEvent<N> {}
unsafe impl Record for SetidEvent {}
unsafe impl Record for ConnectEvent {}
unsafe impl Record for DnsEvent {}
unsafe impl Record for DupEvent {}
unsafe impl Record for ChdirEvent {}
unsafe impl Record for SignalEvent {}
unsafe impl Record for PtraceEvent {}
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(ExecEvent, hdr) == 0);
    assert!(offset_of!(ForkEvent, hdr) == 0);
    assert!(offset_of!(ExitEvent, hdr) == 0);
    assert!(offset_of!(OpenEvent<PATH_SHORT>, hdr) == 0);
    assert!(offset_of!(PathEvent<PATH_SHORT>, hdr) == 0);
    assert!(offset_of!(PairEvent<PATH_SHORT>, hdr) == 0);
    assert!(offset_of!(SetidEvent, hdr) == 0);
    assert!(offset_of!(ConnectEvent, hdr) == 0);
    assert!(offset_of!(DnsEvent, hdr) == 0);
    assert!(offset_of!(DupEvent, hdr) == 0);
    assert!(offset_of!(ChdirEvent, hdr) == 0);
    assert!(offset_of!(SignalEvent, hdr) == 0);
    assert!(offset_of!(PtraceEvent, hdr) == 0);
};

/// First bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// `EVENT_FLAG_*` bits.
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME, so suspend does not skew wall-clock conversion.
    pub ts_ns: u64,
    pub session_id: u64,
    pub cgroup_id: u64,
    /// Thread id of the task that caused the record.
    pub pid: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread group id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub comm: [u8; 16],
}

// The probes fill `comm` with two 8-byte stores.
const _: () = assert!(core::mem::offset_of!(EventHeader, comm) % 8 == 0);

/// The string or argv buffer of this record was cut at its limit.
pub const EVENT_FLAG_TRUNCATED: u32 = 1 << 0;
/// The argv area could not be read (argv is empty in the record).
pub const EVENT_FLAG_ARGV_MISSING: u32 = 1 << 1;
/// This exec started a session (agent matcher).
pub const EVENT_FLAG_SESSION_START: u32 = 1 << 2;
/// A fast-path entry of the kernel policy matched this event (and the kernel acted on it).
pub const EVENT_FLAG_FAST_PATH: u32 = 1 << 3;
/// The kernel stopped the process (SIGSTOP) for a hold: user space freezes its session now.
pub const EVENT_FLAG_STOPPED: u32 = 1 << 4;
/// A connect record of a datagram sent with a destination (sendto, sendmsg, sendmmsg), from the
/// kernel's copy of the address; its `fd` is -1 and its header's `ppid` 0 (the cgroup program
/// that writes it cannot read the task).
pub const EVENT_FLAG_SEND: u32 = 1 << 6;
/// The event is in the gate (`GATE_*` maps): the kernel stopped the process (SIGSTOP) at the
/// hook, before it could use the result, and it stays stopped until user space has run the
/// whole policy on this record and answers (resume, hold or kill).
pub const EVENT_FLAG_GATED: u32 = 1 << 5;
/// With `EVENT_FLAG_GATED`: the process was traced, and a tracer can resume a stopped
/// tracee (it sees the SIGSTOP and need not pass it on), so the gate killed it instead.
pub const EVENT_FLAG_TRACED: u32 = 1 << 7;
/// A connect record whose address is the connected socket's peer as the kernel holds it, not
/// the buffer the process passed (which another thread may have rewritten since the kernel
/// copied it).
pub const EVENT_FLAG_FROM_SOCKET: u32 = 1 << 8;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    /// Bytes of `argv` in use (each argument NUL-terminated).
    pub argv_len: u32,
    /// Agent profile index + 1 that started the session at this exec, 0 otherwise.
    pub profile: u32,
    pub filename: [u8; PATH_MAX],
    pub argv: [u8; ARGV_MAX],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub hdr: EventHeader,
    /// The new task's id: a process id, or a thread id when `is_thread` is 1.
    pub child_pid: u32,
    pub is_thread: u32,
    pub clone_flags: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub hdr: EventHeader,
    /// The kernel's `task_struct.exit_code`: `status << 8` or the terminating signal.
    pub exit_code: u32,
    /// The call the session's seccomp fence killed the process in (a signal, trace or memory
    /// access aimed at the watcher: one of `ProbeConfig::fence_calls`), 0 otherwise.
    pub fenced_call: u32,
}

/// How many calls the seccomp fence refuses (`ProbeConfig::fence_calls`).
pub const FENCE_CALLS: usize = 9;

/// An open record, in two sizes: `OpenEvent<PATH_SHORT>` for most paths and
/// `OpenEvent<PATH_MAX>` for the rest. The fields before `path` are the same in both, and
/// user space reads the path up to the record's end, so `OpenEvent<0>` is the fixed part.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenEvent<const N: usize> {
    pub hdr: EventHeader,
    /// The syscall's return value: a file descriptor or `-errno`.
    pub result: i64,
    pub flags: u64,
    pub resolve: u64,
    pub dfd: i32,
    pub mode: u32,
    /// Which call (`OPEN_CALL_*`): a promise made for openat holds for every other way to open.
    pub call: u32,
    pub _pad: u32,
    pub path: [u8; N],
}

/// `OpenEvent::call`. `creat` is recorded with the flags it implies (`O_CREAT|O_WRONLY|
/// O_TRUNC`); `open_by_handle_at` has no path, and `dfd` is the opened descriptor, by which
/// user space names the file.
pub const OPEN_CALL_OPENAT: u32 = 0;
pub const OPEN_CALL_OPENAT2: u32 = 1;
pub const OPEN_CALL_OPEN: u32 = 2;
pub const OPEN_CALL_CREAT: u32 = 3;
pub const OPEN_CALL_BY_HANDLE: u32 = 4;

/// Path bytes of the short open (and path, pair) record, which is then 256 bytes long instead
/// of 616: the ring holds 2.4 times as many opens before a reader that stalls makes it drop. A
/// longer path (151 bytes or more) goes into a record of `PATH_MAX` instead.
pub const PATH_SHORT: usize = 152;

const _: () = assert!(size_of::<OpenEvent<PATH_SHORT>>() == 256);

/// One path (or descriptor) and up to three numbers: unlink, chmod, chown, truncate, memfd,
/// module and bpf records, in the two sizes of [`OpenEvent`] (`PathEvent<0>` is the fixed
/// part; the path runs to the record's end).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathEvent<const N: usize> {
    pub hdr: EventHeader,
    /// The syscall's return value.
    pub result: i64,
    /// By kind: unlink `[flags]`; chmod `[mode, flags]`; chown `[uid, gid, flags]` (u32::MAX:
    /// unchanged); truncate `[length]`; memfd `[flags]`; module `[length of the image or
    /// flags]`; bpf `[command, program type, instruction count]`; io_uring `[entries, setup
    /// flags]`.
    pub args: [u64; 3],
    /// The directory descriptor a relative `path` starts from (`AT_FDCWD`: the working
    /// directory), or the file's own descriptor for a call by descriptor (`fchmod`,
    /// `ftruncate`, `finit_module`, or an `AT_EMPTY_PATH` call), -1 when there is none.
    pub dfd: i32,
    /// Which syscall of the kind ([`EventKind::calls`]).
    pub call: u32,
    /// The path; memfd: the name; module: the parameters; bpf: the program's name.
    pub path: [u8; N],
}

// Record sizes (BENCHMARKS.md lists them): path 256 or 616 bytes, pair 416 or 1136, setid 168.
const _: () = assert!(size_of::<PathEvent<PATH_SHORT>>() == 256);
const _: () = assert!(size_of::<PathEvent<PATH_MAX>>() == 616);

/// Two paths: rename (old, new), link (the new name, the target), mount (the source, the
/// mount point; `fstype` the file system type), in two sizes like [`OpenEvent`]. `PairEvent<N>`
/// holds `N` bytes of each path.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PairEvent<const N: usize> {
    pub hdr: EventHeader,
    pub result: i64,
    /// renameat2 and linkat `flags`, mount `mountflags`, umount2, move_mount and fsmount
    /// `flags`.
    pub flags: u64,
    /// The directory descriptors `path` and `new_path` start from (-1: none).
    pub dfd: i32,
    pub new_dfd: i32,
    pub call: u32,
    pub _pad: u32,
    pub fstype: [u8; 16],
    /// rename: the old name; link: the new name; mount: the source (umount: the mount point).
    pub path: [u8; N],
    /// rename: the new name; link: the target (a symlink's text); mount: the mount point.
    pub new_path: [u8; N],
}

/// A process's ids and effective capabilities, before or after a `setid` call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub euid: u32,
    pub suid: u32,
    pub gid: u32,
    pub egid: u32,
    pub sgid: u32,
    pub cap_effective: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SetidEvent {
    pub hdr: EventHeader,
    pub result: i64,
    /// [`SETID_CALLS`] index.
    pub call: u32,
    pub _pad: u32,
    /// The ids asked for, as passed (u32::MAX: unchanged); capset: 0.
    pub args: [u32; 3],
    pub _pad2: u32,
    /// At entry (`ok` 0 when the entry was not seen: the daemon started meanwhile).
    pub old: Creds,
    pub new: Creds,
    /// 1 when `old` was read at entry.
    pub ok: u32,
    pub _pad3: u32,
}

const _: () = assert!(size_of::<PairEvent<PATH_SHORT>>() == 416);
const _: () = assert!(size_of::<PairEvent<PATH_MAX>>() == 1136);
const _: () = assert!(size_of::<SetidEvent>() == 168);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectEvent {
    pub hdr: EventHeader,
    pub result: i64,
    pub fd: i32,
    /// The `addrlen` the process passed.
    pub addrlen: u32,
    /// The raw `struct sockaddr`, first `min(addrlen, SOCKADDR_MAX)` bytes.
    pub addr: [u8; SOCKADDR_MAX],
}

/// Bytes of a DNS message copied from a response (a longer one is cut, and flagged
/// [`EVENT_FLAG_TRUNCATED`]; a classic UDP answer is at most 512).
pub const DNS_MAX: usize = 512;

/// A UDP DNS response (source port 53) delivered to a socket in a session's cgroup. Written by
/// a `cgroup_skb` program, which runs in no task: the header has the socket's cgroup and the
/// time, and zero for the session and the process fields; user space finds the session by
/// the cgroup.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent {
    pub hdr: EventHeader,
    /// Bytes of `data` in use.
    pub len: u32,
    /// The message's length on the wire.
    pub wire_len: u32,
    /// The other end: the resolver a query went to or an answer came from (IPv4 in the
    /// first 4 bytes when `v6` is 0).
    pub peer: [u8; 16],
    /// The session socket's own port (a query's source, an answer's destination).
    pub local_port: u16,
    pub v6: u8,
    /// 1: a query the session sent (egress); 0: a response it received (ingress).
    pub query: u8,
    pub _pad: u32,
    pub data: [u8; DNS_MAX],
}

/// `EventKind::Dup`: `new_fd` is a copy of `old_fd`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DupEvent {
    pub hdr: EventHeader,
    pub old_fd: i32,
    pub new_fd: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ChdirEvent {
    pub hdr: EventHeader,
    pub result: i64,
    /// The fd of an `fchdir`, or -1 for `chdir`.
    pub fd: i32,
    pub _pad: u32,
    pub path: [u8; PATH_MAX],
}

/// A record of the `ALERTS` ring: the kernel stopped a process for a hold
/// (`EVENT_FLAG_STOPPED`) and its session must be frozen now. The record ring is read in
/// batches; this small ring has a thread of its own that wakes at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alert {
    /// `EventKind` of the record.
    pub kind: u32,
    /// `EVENT_FLAG_*` bits of the record.
    pub flags: u32,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Value of the `WATCHED` map (key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    pub session_id: u64,
    /// Agent profile index + 1, 0 when none.
    pub profile: u32,
    /// The parent's tgid when the process was forked or first watched: the `ppid` of its
    /// records other than exec, fork and exit (which read the current parent), so most records
    /// cost no kernel reads for it. The process tree in user space keeps the same parent.
    pub ppid: u32,
}

/// Key of the `AGENTS` map: a basename, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AgentName(pub [u8; AGENT_NAME_MAX]);

/// `signal:signal_generate` from a watched sender.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SignalEvent {
    pub hdr: EventHeader,
    /// The receiving thread.
    pub target: u32,
    pub sig: i32,
    /// `si_code`: 0 (SI_USER, kill), -6 (SI_TKILL), -1 (SI_QUEUE), ...
    pub code: i32,
    /// TRACE_SIGNAL_DELIVERED (0), IGNORED (1), ALREADY_PENDING (2), ...
    pub result: i32,
}

/// `syscalls:sys_exit_ptrace` (attach or seize) from a watched process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PtraceEvent {
    pub hdr: EventHeader,
    /// The target's pid; for `pidfd_getfd`, the pidfd (user space reads whose it is).
    pub target: u32,
    /// The ptrace request, or one of `PTRACE_REQ_*` for the other ways into a process.
    pub request: u32,
    /// 0, or the negative errno of a refused attach.
    pub result: i64,
}

/// `PtraceEvent::request` of the calls that reach into another process without ptrace.
pub const PTRACE_REQ_VM_WRITE: u32 = 0x1_0001;
pub const PTRACE_REQ_VM_READ: u32 = 0x1_0002;
pub const PTRACE_REQ_PIDFD_GETFD: u32 = 0x1_0003;

/// Slots of the `WATCH_FILTER` counters in front of the watched-process map (a power of two).
pub const WATCH_FILTER_SLOTS: u32 = 65536;

/// The `WATCH_FILTER` slot of a tgid.
pub const fn watch_slot(tgid: u32) -> u32 {
    tgid & (WATCH_FILTER_SLOTS - 1)
}

/// Paths the kernel fast path can match (longer ones are left to user space).
pub const FAST_PATH_MAX: usize = 256;
/// `PATH_FILTER` words per fast-path table: one bit for each possible pair of bytes after the
/// leading `/` (65,536 bits).
pub const PATH_FILTER_WORDS: u32 = 1024;
/// The table of a `PATH_FILTER` lookup: its words start at `table * PATH_FILTER_WORDS`.
pub const FILTER_EXEC: u32 = 0;
pub const FILTER_OPEN: u32 = 1;

/// The `PATH_FILTER` bit for an absolute path whose bytes after the `/` are `b1`, `b2` (`b2`
/// is 0 when the path is `/` or `/x`): a fast-path entry can only match a path whose bit is set.
#[inline(always)]
pub const fn path_filter_bit(b1: u8, b2: u8) -> (u32, u64) {
    let b2 = if b1 == 0 { 0 } else { b2 };
    let i = ((b1 as u32) << 8) | b2 as u32;
    (i / 64, 1u64 << (i % 64))
}

/// `NET_FILTER` words: 256 bits per address family, one for each possible first byte of a
/// destination address (IPv4 in words 0..4, IPv6 in 4..8).
pub const NET_FILTER_WORDS: u32 = 8;
pub const NET_FILTER_V6: u32 = 4;

/// The `NET_FILTER` word and bit for a destination whose address starts with `b` (`v6`: an
/// IPv6 address): a `DENY_V4`/`DENY_V6` entry can only match a destination whose bit is set.
#[inline(always)]
pub const fn net_filter_bit(v6: bool, b: u8) -> (u32, u64) {
    let base = if v6 { NET_FILTER_V6 } else { 0 };
    (base + (b / 64) as u32, 1u64 << (b % 64))
}

/// Fast-path actions: flag the record only, or SIGKILL at the hook as well.
pub const FAST_MARK: u32 = 1;
pub const FAST_KILL: u32 = 2;
/// SIGSTOP at the hook: the process waits for a human (a hold).
pub const FAST_STOP: u32 = 3;
/// Kill-switch modes (`HALT_ALL[0]`, `HALTED[session]`): stop or kill at the next hook.
pub const HALT_STOP: u32 = 1;
pub const HALT_KILL: u32 = 2;
/// Open intents, as bits of `FastRule::intent` (0: any open).
pub const INTENT_READ: u32 = 1 << 0;
pub const INTENT_WRITE: u32 = 1 << 1;
pub const INTENT_CREATE: u32 = 1 << 2;
pub const INTENT_TRUNCATE: u32 = 1 << 3;
/// In gate path entries only: a connect to a unix socket at that path (the gate's tails and
/// prefixes name socket paths too).
pub const INTENT_CONNECT: u32 = 1 << 4;
/// In gate path entries only: a call that makes or changes a name in place (a rename over it,
/// a link made as it, a truncate by it). Tails of a guarded file's own name carry only this
/// bit, so the kernel stops such a call by the name's last component whatever directory it is
/// spelled through (a symlinked one, `..`), and user space names it by identity; opens, which
/// the kernel finds by identity itself, never carry it.
pub const INTENT_NAME: u32 = 1 << 5;

/// The value of a path entry of `FAST_EXEC`/`FAST_OPEN` (LPM tries keyed by path bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastRule {
    pub action: u32,
    pub intent: u32,
    /// The exact path's length, or 0 for a prefix entry.
    pub exact_len: u32,
    pub _pad: u32,
}

/// Event kinds of a gate entry (`Gate::kinds`, `GATE_ALL[0]`, `SESSION_GATE` values).
pub const GATE_EXEC: u32 = 1 << 0;
pub const GATE_OPEN: u32 = 1 << 1;
pub const GATE_CONNECT: u32 = 1 << 2;
/// In `GATE_ALL[0]` only: execs through a descriptor (`/dev/fd/N`, `/proc/…/fd/N`).
pub const GATE_FILELESS: u32 = 1 << 3;
/// In `GATE_ALL[0]` (every session) or `SESSION_GATE` (one session), the rare kinds, gated whole when a rule could match them: a chmod
/// that sets the setuid or setgid bit, any chown, setid, mount, bpf program load, module load.
pub const GATE_CHMOD_SETID: u32 = 1 << 4;
pub const GATE_CHOWN: u32 = 1 << 5;

/// `GUARDED` values: the daemon's or its guardian's process id, or one of the daemon's
/// thread ids.
pub const GUARD_PROCESS: u32 = 1;
pub const GUARD_THREAD: u32 = 2;

/// A chown record's `args[2]`: the call's flags in the low 16 bits; when this bit is set, the
/// owner the file had before the call in the high 32 (known for calls by descriptor, read at
/// entry: the exit sees only the new owner).
pub const CHOWN_OWNER_KNOWN: u64 = 1 << 16;
pub const GATE_SETID: u32 = 1 << 6;
pub const GATE_MOUNT: u32 = 1 << 7;
pub const GATE_BPF: u32 = 1 << 8;
pub const GATE_MODULE: u32 = 1 << 9;
/// In `SESSION_GATE` values only: the session's deletes, while a `count:` rule that holds on
/// them is counting (so the one that makes the count is stopped at its hook).
pub const GATE_UNLINK: u32 = 1 << 10;
/// io_uring_setup: stopped as the call returns, before the ring can be used.
pub const GATE_IO_URING: u32 = 1 << 12;
/// In `GATE_ALL[0]` (or one session's `SESSION_GATE`): a `count:` rule that holds counts deletes, so every
/// `UNLINK_SAMPLE`th delete of a session is gated: user space then has every delete before it
/// and starts gating them all (`GATE_UNLINK`) if a count is under way. A burst that makes a
/// count overshoots it by fewer than `UNLINK_SAMPLE` deletes, however fast it deletes.
pub const GATE_UNLINK_SAMPLE: u32 = 1 << 11;
pub const UNLINK_SAMPLE: u64 = 32;
/// In `SESSION_GATE` values: the open intents (`INTENT_*`) of the session's gated opens, from
/// this bit up (0: any open). A session whose baseline or scope is enforced gates its writes.
pub const SESSION_INTENT_SHIFT: u32 = 16;
/// Bytes of a `GATE_COMM` key: the task's `comm` (the new program's basename, cut at 15).
pub const GATE_COMM_LEN: usize = 16;
/// Bytes of a `GATE_SUFFIX` key: the path's last bytes, last byte first.
pub const GATE_SUFFIX_MAX: usize = 64;
/// `PATH_FILTER` tables of the gate's path tries: the first two bytes after the `/` of a
/// `GATE_PREFIX` entry, and the first two bytes of a (reversed) `GATE_SUFFIX` key.
pub const FILTER_GATE_PREFIX: u32 = 2;
pub const FILTER_GATE_SUFFIX: u32 = 3;
/// The table of the first two bytes of a `GATE_COMM` name.
pub const FILTER_GATE_COMM: u32 = 4;
pub const PATH_FILTER_TABLES: u32 = 5;

/// The value of a gate entry: which events it gates. `GATE_COMM` entries gate the kinds in
/// `kinds` of a process with that name (opens only with one of the `intent` bits, 0: any);
/// `GATE_PREFIX` and `GATE_SUFFIX` entries gate opens with one of the `intent` bits (0: any),
/// a `GATE_PREFIX` entry only the exact path when `exact_len` is not 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    pub kinds: u32,
    pub intent: u32,
    pub exact_len: u32,
    pub _pad: u32,
}

/// A key of `GATE_INODE`: a file (`dir` 0: the opened file itself) or a directory (`dir` 1: the
/// opened file's directory) the policy names, by identity, whatever name it is opened by: the
/// inode number and the file system's device (`super_block.s_dev`), so that a number every
/// file system root shares (1 on tmpfs, 2 on ext4) names one directory, not all of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub ino: u64,
    pub dev: u32,
    pub dir: u32,
}

/// The value of a `GATED` entry (key: tgid): a process the gate stopped and user space has not
/// answered yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gated {
    pub session_id: u64,
    pub ts_ns: u64,
    /// `EventKind` of the gated event.
    pub kind: u32,
    /// `GATED_LOST`, or 0.
    pub flags: u32,
}

/// `Gated::flags`: the event's record was lost (the ring was full, or the new process could
/// not be watched): no record will answer the stop, so user space holds the session at once.
pub const GATED_LOST: u32 = 1;

/// Port ranges one `DENY_V4`/`DENY_V6` entry holds at most.
pub const FAST_NET_RANGES: usize = 8;

/// The value of a `DENY_V4`/`DENY_V6` entry: the ports refused, as `n` ranges (host order,
/// inclusive). The trie answers with the longest prefix only, so an entry carries the ranges
/// of every entry whose network covers it as well: two rules on one network, or on a network
/// and one inside it, both refuse.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastNet {
    pub ranges: [[u16; 2]; FAST_NET_RANGES],
    pub n: u32,
}

/// Where the fields the programs read live. Tracepoint field offsets come from
/// tracefs `format` files and `task_struct` member offsets from kernel BTF, both at start-up,
/// so no kernel layout is compiled in. Handed to the programs as a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    pub exec_filename: u32,
    pub exec_pid: u32,
    pub exec_old_pid: u32,
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    pub exit_group_dead: u32,
    /// Offsets in `struct pt_regs` of a syscall's first four arguments as user space passed
    /// them (x86_64: di, si, dx, r10), from BTF: a `sys_exit_*` program reads its call's
    /// arguments there, so no `sys_enter_*` program and no map has to carry them.
    pub syscall_arg: [u32; 4],
    /// The fifth argument (x86_64: r8): renameat2, linkat, fchownat and move_mount flags.
    pub syscall_arg4: u32,
    /// Offset in `struct pt_regs` of a syscall's return value (x86_64: ax), set before the
    /// `sys_exit` tracepoints run: a plain load instead of a probe read of the tracepoint's
    /// record.
    pub syscall_ret: u32,
    pub signal_sig: u32,
    pub signal_code: u32,
    pub signal_pid: u32,
    pub signal_result: u32,
    pub task_real_parent: u32,
    /// The header's fields are plain loads through the BTF-typed current task rather than
    /// helper calls (`pid`, `tgid`, `cred->uid`, `cgroups->dfl_cgrp->kn->id`, and `comm`,
    /// which the helper would copy byte by byte and pad): these are their offsets.
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_cred: u32,
    pub cred_uid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub task_exit_code: u32,
    pub task_mm: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// The chain from a task to an open file's inode number and its directory's (the gate's
    /// file identity): `task->files->fdt->fd[n]`, then `file->f_inode->i_ino` and
    /// `file->f_path.dentry->d_parent->d_inode->i_ino`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub file_inode: u32,
    pub file_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    pub inode_ino: u32,
    /// `inode->i_sb->s_dev`: the device of a file's file system as the kernel keeps it (what
    /// `/proc/self/mountinfo` prints), the other half of a `GATE_INODE` key.
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// `fdtable.max_fds` (an index from user space is checked against it) and `inode.i_uid`
    /// (a file's owner before a chown by descriptor changes it).
    pub fdtable_max_fds: u32,
    pub inode_uid: u32,
    /// `task_struct.ptrace` (not 0 while a tracer is attached): the gate kills a traced
    /// process instead of stopping it, since its tracer can swallow a SIGSTOP.
    pub task_ptrace: u32,
    /// `struct cred` ids and capabilities (`cred_uid` above), for setid records.
    pub cred_euid: u32,
    pub cred_suid: u32,
    pub cred_gid: u32,
    pub cred_egid: u32,
    pub cred_sgid: u32,
    pub cred_cap_effective: u32,
    /// A connected socket's peer as the kernel holds it (item "what the kernel saw"): the
    /// socket file's `private_data` (`struct socket`), its `sk`, and in `struct sock` the
    /// family, IPv4 and IPv6 destination and port; for a unix socket `unix_sock.peer`, the
    /// peer's bound `unix_sock.addr`, and that `unix_address`'s `len` and `name`.
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    pub sock_daddr: u32,
    pub sock_dport: u32,
    pub sock_v6_daddr: u32,
    pub unix_peer: u32,
    pub unix_addr: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// `file.f_flags`: the access mode the file was opened with.
    pub file_flags: u32,
    /// `task_struct.fs` and `fs_struct.pwd.dentry`: the working directory a bare name is in.
    pub task_fs: u32,
    pub fs_pwd_dentry: u32,
    /// Offset in `struct pt_regs` of the syscall number (x86_64: orig_ax), and the numbers of
    /// the calls the session's seccomp fence kills in (`sys::fence`): a process that dies of
    /// SIGSYS in one of them was stopped by the fence on its way to the watcher.
    pub syscall_nr: u32,
    pub fence_calls: [u32; FENCE_CALLS],
    /// From an io_uring request (`struct io_kiocb`, the raw `io_uring_submit_req`'s argument):
    /// its `opcode`, its ring (`ctx`) and the ring's setup `flags`, and the kernel's copy of an
    /// open's path and directory: `io_kiocb.cmd` + `io_open.filename` / `io_open.dfd` (0: this
    /// kernel's layout is not known, no path), then `filename.name`.
    pub uring_opcode: u32,
    pub uring_ctx: u32,
    pub uring_ctx_flags: u32,
    pub uring_open_filename: u32,
    pub uring_open_dfd: u32,
    pub filename_name: u32,
    /// 1 once user space filled this in; programs do nothing while it is 0.
    pub ready: u32,
}

impl ProbeConfig {
    pub const fn zeroed() -> Self {
        ProbeConfig {
            exec_filename: 0,
            exec_pid: 0,
            exec_old_pid: 0,
            newtask_pid: 0,
            newtask_clone_flags: 0,
            exit_group_dead: 0,
            syscall_arg: [0; 4],
            syscall_arg4: 0,
            syscall_ret: 0,
            signal_sig: 0,
            signal_code: 0,
            signal_pid: 0,
            signal_result: 0,
            task_real_parent: 0,
            task_pid: 0,
            task_tgid: 0,
            task_comm: 0,
            task_cred: 0,
            cred_uid: 0,
            task_cgroups: 0,
            css_set_dfl_cgrp: 0,
            cgroup_kn: 0,
            kernfs_node_id: 0,
            task_exit_code: 0,
            task_mm: 0,
            mm_arg_start: 0,
            mm_arg_end: 0,
            task_files: 0,
            files_fdt: 0,
            fdtable_fd: 0,
            file_inode: 0,
            file_dentry: 0,
            dentry_parent: 0,
            dentry_inode: 0,
            inode_ino: 0,
            inode_sb: 0,
            sb_dev: 0,
            fdtable_max_fds: 0,
            inode_uid: 0,
            task_ptrace: 0,
            cred_euid: 0,
            cred_suid: 0,
            cred_gid: 0,
            cred_egid: 0,
            cred_sgid: 0,
            cred_cap_effective: 0,
            file_private_data: 0,
            socket_sk: 0,
            sock_family: 0,
            sock_daddr: 0,
            sock_dport: 0,
            sock_v6_daddr: 0,
            unix_peer: 0,
            unix_addr: 0,
            unix_address_len: 0,
            unix_address_name: 0,
            file_flags: 0,
            task_fs: 0,
            fs_pwd_dentry: 0,
            syscall_nr: 0,
            fence_calls: [0; FENCE_CALLS],
            uring_opcode: 0,
            uring_ctx: 0,
            uring_ctx_flags: 0,
            uring_open_filename: 0,
            uring_open_dfd: 0,
            filename_name: 0,
            ready: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers.
    unsafe impl aya::Pod for Watch {}
    unsafe impl aya::Pod for ProbeConfig {}
    unsafe impl aya::Pod for AgentName {}
    unsafe impl aya::Pod for FastRule {}
    unsafe impl aya::Pod for FastNet {}
    unsafe impl aya::Pod for Gate {}
    unsafe impl aya::Pod for Gated {}
    unsafe impl aya::Pod for InodeKey {}
    unsafe impl aya::Pod for Creds {}
}
