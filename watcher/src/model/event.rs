//! Events as users see them (`watcher events`): one JSON object per line, or one readable line.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Position in the daemon's event stream (gap-free; a client can spot what it missed).
    #[serde(default)]
    pub seq: u64,
    /// Wall-clock time of the kernel event (RFC 3339 with nanoseconds on the wire).
    pub ts: Ts,
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread id that made the call.
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub trace_id: String,
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(flatten)]
    pub detail: Detail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Detail {
    Exec {
        path: String,
        argv: Vec<String>,
        /// argv was longer than the kernel copies (see README: limits).
        #[serde(default, skip_serializing_if = "is_false")]
        argv_truncated: bool,
        /// The kernel could not read argv: `argv` is empty because it is unknown.
        #[serde(default, skip_serializing_if = "is_false")]
        argv_missing: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        /// The program is no file on disk: a memfd, or a file deleted before it was run (an
        /// exec through a descriptor, `fexecve` or `execveat`).
        #[serde(default, skip_serializing_if = "is_false")]
        fileless: bool,
        /// The dynamic loader that was exec'd to run `path` (`ld-linux*.so* PROG ARGS`): the
        /// rules, baseline and scope see an exec of `path`, with `argv` from PROG on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loader: Option<String>,
        /// The file an interpreter runs (`bash FILE`, `python3 FILE`, `sh < FILE`): a
        /// sequence's `same: {path: ...}` on this exec matches it as it matches `path`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        script: Option<String>,
    },
    Fork {
        child_pid: u32,
        thread: bool,
    },
    Exit {
        /// The exit status when the process exited, or None when a signal ended it.
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// The call the session's seccomp fence killed it in (`kill`, `tgkill`, `ptrace`, ...):
        /// it was on its way to the watcher.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fenced: Option<String>,
    },
    Open {
        /// The call when it is not openat (`openat2`, `open`, `creat`, `open_by_handle_at`);
        /// every one is the same open to the rules.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        syscall: Option<Name>,
        /// Absolute when it could be resolved (see `resolved`).
        path: String,
        flags: OpenFlags,
        mode: u32,
        /// A file descriptor, or a negative errno.
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
        /// False when a relative path could not be made absolute.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        resolved: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        path_truncated: bool,
        /// The name the process opened the file by, when `path` is the file's name in the
        /// policy instead (the gate found the same file behind a symlink, a hard link, a bind
        /// mount or `/proc/…/root`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        opened_as: Option<String>,
    },
    Connect {
        /// `sendmsg` for a datagram sent with a destination (sendto, sendmsg, sendmmsg: no
        /// connect, the same destination to the rules); absent for connect.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        syscall: Option<Name>,
        /// inet, inet6, unix or other.
        family: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<String>,
        /// The name the session resolved `addr` from (its last DNS answer with that address).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
    },
    /// A signal a watched process sent.
    Signal {
        target_pid: u32,
        signal: i32,
        /// 0: delivered; otherwise ignored, already pending, ... (the kernel's trace result).
        result: i32,
    },
    /// ptrace attach (request 16) or seize (0x4206) by a watched process.
    Ptrace {
        /// `process_vm_writev`, `process_vm_readv` or `pidfd_getfd` (then `request` is 0): the
        /// other ways into another process; absent for ptrace attach and seize.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        syscall: Option<Name>,
        target_pid: u32,
        request: u32,
        /// 0, or the negative errno of a refused attach. Absent (0) in events stored before
        /// the watcher recorded it.
        #[serde(default)]
        result: i64,
    },
    /// unlink, unlinkat or rmdir (`dir`).
    Unlink {
        syscall: Name,
        /// Absolute when it could be resolved (see `resolved`).
        path: String,
        /// A directory was removed (rmdir, `AT_REMOVEDIR`).
        dir: bool,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        resolved: bool,
    },
    Rename {
        syscall: Name,
        path: String,
        new_path: String,
        /// renameat2 flags by name (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        flags: Vec<Name>,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        resolved: bool,
    },
    Chmod {
        syscall: Name,
        /// The file; for fchmod the path of its descriptor.
        path: String,
        /// The new mode's permission bits (07777), as a number; `watcher events` shows it in
        /// octal.
        mode: u32,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        resolved: bool,
    },
    Chown {
        syscall: Name,
        path: String,
        /// The new owner; absent when the call left it unchanged (-1). (`uid` is the
        /// process's own, as on every event.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_uid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_gid: Option<u32>,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        resolved: bool,
    },
    /// link, linkat (`symbolic` false), symlink, symlinkat (true).
    Link {
        syscall: Name,
        /// The new name.
        path: String,
        /// What it names: the linked file, or a symlink's text as written.
        target: String,
        symbolic: bool,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        resolved: bool,
    },
    Truncate {
        syscall: Name,
        path: String,
        length: u64,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        resolved: bool,
    },
    /// A change of ids or capabilities (setuid, ..., capset).
    Setid {
        syscall: Name,
        /// The ids asked for, in the call's order (absent: -1, unchanged).
        asked: Vec<Option<u32>>,
        /// Before the call; absent when the daemon did not see its entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old: Option<Ids>,
        new: Ids,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
    },
    /// mount, umount2, move_mount, fsmount: what (`source`, `fstype`) went where (`path`).
    Mount {
        syscall: Name,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// The mount point (absent for fsmount, which only makes a mount to be moved).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fstype: Option<String>,
        flags: u64,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
    },
    /// init_module or finit_module (`path`: the module file of finit_module).
    Module {
        syscall: Name,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        params: String,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
    },
    /// bpf(BPF_PROG_LOAD).
    Bpf {
        /// The program type (`enum bpf_prog_type`).
        prog_type: u32,
        instructions: u32,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
        /// The program's descriptor, or a negative errno.
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
    },
    /// io_uring_setup: a ring whose operations no syscall hook sees (`result`: its
    /// descriptor). What it submits is in the kernel's io_uring tracepoints, not in events.
    #[serde(rename = "io_uring")]
    IoUring {
        /// Submission queue entries asked for.
        entries: u32,
        /// `IORING_SETUP_*` bits (2: a kernel thread polls the ring, `SQPOLL`).
        setup_flags: u32,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
    },
    /// An operation a watched process's io_uring submitted (`op`: the kernel's name of its
    /// opcode, `openat`, `connect`, `send`, `renameat`, ...). Seen as it is issued, never
    /// stopped: it runs in the same call. `path`: an open's path as the kernel copied it
    /// (resolved against its directory); other operations act on descriptors or on user
    /// memory the record does not carry.
    #[serde(rename = "io_uring_op")]
    IoUringOp {
        op: String,
        opcode: u8,
        /// Submitted by the ring's polling thread (`IORING_SETUP_SQPOLL`), not by a call.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sq_thread: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    /// name_to_handle_at: a handle made for a file, which `open_by_handle_at` opens later
    /// by no name (that open is an `open` event, its path the file its descriptor names).
    #[serde(rename = "name_to_handle")]
    NameToHandle {
        /// Absolute when it could be resolved (see `resolved`).
        path: String,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        resolved: bool,
    },
    /// memfd_create: an anonymous file (`result`: its descriptor).
    Memfd {
        name: String,
        flags: Vec<Name>,
        result: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Name>,
    },
    /// A DNS answer delivered to a socket of the session (UDP from port 53). `pid` is 0: the
    /// packet arrives in no process.
    Dns {
        /// The name asked for.
        query: String,
        /// The query type (`A`, `AAAA`, `CNAME`, ... or a number).
        qtype: String,
        /// `NOERROR`, `NXDOMAIN`, ...
        rcode: String,
        /// Addresses and names answered (CNAME targets included), in order.
        answers: Vec<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        truncated: bool,
        /// No query of the session asked this (another id, name, resolver or port): it
        /// teaches the session no name.
        #[serde(default, skip_serializing_if = "is_false")]
        unsolicited: bool,
    },
    Finding(Box<Finding>),
}

/// A process's ids and effective capabilities (a bit mask, `capabilities(7)` numbers).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Ids {
    pub uid: u32,
    pub euid: u32,
    pub suid: u32,
    pub gid: u32,
    pub egid: u32,
    pub sgid: u32,
    pub caps: u64,
}

/// A rule matched: what it decided and the events that made it match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    /// Which detector made it: the rule pack, the learned baseline, the pinned task scope.
    #[serde(default)]
    pub detector: Detector,
    pub rule: String,
    pub description: String,
    pub severity: Severity,
    #[serde(default)]
    pub tags: Vec<String>,
    /// What the rule asks for.
    pub action: Action,
    pub mode: Mode,
    /// What was actually done.
    pub outcome: Outcome,
    /// The policy's content hash.
    pub policy_version: String,
    /// The kernel matched this event on its fast path (and acted, see `outcome`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub in_kernel: bool,
    /// The hold this finding opened or joined (`watcher show-hold ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// The events that matched, in order (the last one completed the rule).
    pub evidence: Vec<Event>,
    /// Baseline and scope findings: how far the action is from normal (0..1), and what was
    /// new or out of scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<Anomaly>,
}

impl Finding {
    /// What every finding has: `detector`'s `rule` matched `evidence` (the last event completed
    /// it) under the policy `policy_version`; not in the kernel, no hold, no score, no tags
    /// (set those on the value).
    pub fn new(
        detector: Detector,
        rule: impl Into<String>,
        description: impl Into<String>,
        severity: Severity,
        (action, mode, outcome): (Action, Mode, Outcome),
        policy_version: impl Into<String>,
        evidence: Vec<Event>,
    ) -> Finding {
        Finding {
            detector,
            rule: rule.into(),
            description: description.into(),
            severity,
            tags: Vec::new(),
            action,
            mode,
            outcome,
            policy_version: policy_version.into(),
            in_kernel: false,
            hold: None,
            evidence,
            score: None,
            anomaly: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Detector {
    #[default]
    Rules,
    Baseline,
    Scope,
    /// The watcher's own integrity (signals to it, its files).
    Tamper,
}

impl Detector {
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Rules => "rules",
            Detector::Baseline => "baseline",
            Detector::Scope => "scope",
            Detector::Tamper => "tamper",
        }
    }
}

/// What a baseline or scope finding is about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Anomaly {
    /// `exec`, `exec_location`, `command`, `edge`, `ancestry`, `read`, `write`, `create`,
    /// `delete`, `destination`, `kind`, `rate`, `sequence`; for scope: the entry's field.
    pub facet: String,
    /// What the session did, generalised as the profile keeps it (a directory area, a
    /// destination, a location class).
    pub value: String,
    /// What the profile has instead (the nearest entries of the same facet), or the scope's
    /// entries that did not allow it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instead: Vec<String>,
    /// The profile's learning behind the judgement: sessions learned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
    /// Scope findings: what `approve --remember` adds to the session's scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widen: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Monitor mode: recorded what the action would have been, did nothing.
    Monitored,
    /// An alert was raised (this finding).
    Alerted,
    /// The kernel sent SIGKILL at the hook, before the process ran another instruction.
    KilledInKernel,
    /// The kernel refused the connect.
    RefusedInKernel,
    /// Enforce mode with holds disabled (`[holds] enabled = false`): recorded as what would
    /// have been done.
    NotEnforced,
    /// The session is frozen and waits for a human (see `hold`).
    Held,
    /// The daemon killed the process (SIGKILL) as soon as the finding was made.
    Killed,
    /// An approver said this rule may pass for this session (`approve --remember`).
    Excepted,
    /// The approver already allowed this very action (a protected open approved while it
    /// waited): it is not asked about twice (`hold` names the approved hold).
    Approved,
    /// The approver already refused this very action (a protected open denied while it
    /// waited, which failed with EPERM): nothing happened, nothing is asked again.
    Refused,
    /// Shadow mode (baseline): enforce would have held the session here; nothing was stopped.
    WouldHold,
}

/// A wall-clock time, formatted only when an event is written out (most events never are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ts(pub std::time::SystemTime);

impl std::fmt::Display for Ts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_nanos(self.0))
    }
}

impl Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Ts)
            .map_err(|e| serde::de::Error::custom(format!("ts {text:?}: {e}")))
    }
}

impl Ts {
    /// Nanoseconds since the Unix epoch (0 before it).
    pub fn unix_ns(&self) -> u64 {
        self.0
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

fn is_false(b: &bool) -> bool {
    !b
}
fn is_true(b: &bool) -> bool {
    *b
}
fn yes() -> bool {
    true
}

impl Detail {
    /// The path the event is about: opened, removed, renamed from, changed, the new name of a
    /// link, a mount point, a module file (not an exec's program: that is the `exe`).
    pub fn path(&self) -> Option<&str> {
        match self {
            Detail::Open { path, .. }
            | Detail::Unlink { path, .. }
            | Detail::Rename { path, .. }
            | Detail::Chmod { path, .. }
            | Detail::Chown { path, .. }
            | Detail::Link { path, .. }
            | Detail::Truncate { path, .. }
            | Detail::NameToHandle { path, .. } => Some(path),
            Detail::Mount { path, .. }
            | Detail::Module { path, .. }
            | Detail::IoUringOp { path, .. } => path.as_deref(),
            _ => None,
        }
    }

    /// The call's return value, for the events that have one.
    pub fn result(&self) -> Option<i64> {
        match self {
            Detail::Open { result, .. }
            | Detail::Connect { result, .. }
            | Detail::Unlink { result, .. }
            | Detail::Rename { result, .. }
            | Detail::Chmod { result, .. }
            | Detail::Chown { result, .. }
            | Detail::Link { result, .. }
            | Detail::Truncate { result, .. }
            | Detail::Setid { result, .. }
            | Detail::Mount { result, .. }
            | Detail::Module { result, .. }
            | Detail::Bpf { result, .. }
            | Detail::Memfd { result, .. }
            | Detail::NameToHandle { result, .. }
            | Detail::IoUring { result, .. } => Some(*result),
            Detail::Ptrace { result, .. } => Some(*result),
            _ => None,
        }
    }

    /// The open a change to a name amounts to: a rename or link over a name, or a truncate,
    /// writes that name as an open with these flags would (`syscall` names the call), so the
    /// rules on writing a file apply to it. None for anything else, or a call that failed.
    pub fn as_write(&self) -> Option<Detail> {
        let (syscall, path, flags): (&Name, &str, OpenFlags) = match self {
            Detail::Rename {
                syscall,
                new_path,
                result: 0,
                ..
            } => (syscall, new_path, OpenFlags::REPLACE),
            Detail::Link {
                syscall,
                path,
                result: 0,
                ..
            } => (syscall, path, OpenFlags::LINK),
            Detail::Truncate {
                syscall,
                path,
                result: 0,
                ..
            } => (syscall, path, OpenFlags::TRUNCATE),
            _ => return None,
        };
        Some(Detail::Open {
            syscall: Some(syscall.clone()),
            path: path.to_string(),
            flags,
            mode: 0,
            result: 0,
            error: None,
            resolved: path.starts_with('/'),
            path_truncated: false,
            opened_as: None,
        })
    }

    /// The name a rename, link or truncate wrote (what `as_write` opens), to be named by
    /// the policy's name for it.
    pub fn written_name_mut(&mut self) -> Option<&mut String> {
        match self {
            Detail::Rename { new_path, .. } => Some(new_path),
            Detail::Link { path, .. } | Detail::Truncate { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The name an `as_write` open replaced (its path), for the undo on deny.
    pub fn replaced_name(&self) -> Option<&str> {
        match self {
            Detail::Open {
                syscall: Some(s),
                path,
                ..
            } if REPLACING_CALLS.contains(&&**s) => Some(path),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Detail::Exec { .. } => "exec",
            Detail::Fork { .. } => "fork",
            Detail::Exit { .. } => "exit",
            Detail::Open { .. } => "open",
            Detail::Connect { .. } => "connect",
            Detail::Signal { .. } => "signal",
            Detail::Ptrace { .. } => "ptrace",
            Detail::Unlink { .. } => "unlink",
            Detail::Rename { .. } => "rename",
            Detail::Chmod { .. } => "chmod",
            Detail::Chown { .. } => "chown",
            Detail::Link { .. } => "link",
            Detail::Truncate { .. } => "truncate",
            Detail::Setid { .. } => "setid",
            Detail::Mount { .. } => "mount",
            Detail::Module { .. } => "module",
            Detail::Bpf { .. } => "bpf",
            Detail::Memfd { .. } => "memfd",
            Detail::NameToHandle { .. } => "name_to_handle",
            Detail::IoUring { .. } => "io_uring",
            Detail::IoUringOp { .. } => "io_uring_op",
            Detail::Dns { .. } => "dns",
            Detail::Finding(_) => "finding",
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let trace = self.trace_id.get(..8).unwrap_or(&self.trace_id);
        write!(
            f,
            "{} {} {:<7} pid={} ppid={} comm={} ",
            self.ts,
            trace,
            self.detail.kind(),
            self.pid,
            self.ppid,
            self.comm
        )?;
        match &self.detail {
            Detail::Exec { path, argv, .. } => write!(f, "{path} {argv:?}"),
            Detail::Fork { child_pid, thread } => {
                write!(
                    f,
                    "{} {child_pid}",
                    if *thread { "thread" } else { "child" }
                )
            }
            Detail::Exit {
                exit_code,
                signal,
                fenced,
            } => match (exit_code, signal) {
                _ if fenced.is_some() => write!(
                    f,
                    "killed by the seccomp fence in {}",
                    fenced.as_deref().unwrap_or_default()
                ),
                (_, Some(sig)) => write!(f, "killed by signal {sig}"),
                (Some(code), None) => write!(f, "exit code {code}"),
                (None, None) => write!(f, "exited"),
            },
            Detail::Open {
                path,
                flags,
                result,
                error,
                ..
            } => write!(
                f,
                "{path} {} -> {}",
                flags.names().join("|"),
                error
                    .clone()
                    .unwrap_or_else(|| format!("fd {result}").into())
            ),
            Detail::Connect {
                addr,
                port,
                path,
                result,
                error,
                host,
                ..
            } => {
                if let Some(h) = host {
                    write!(f, "{h} ")?;
                }
                match (addr, port, path) {
                    (Some(a), Some(p), _) => write!(f, "{a}:{p}")?,
                    (_, _, Some(p)) => write!(f, "{p}")?,
                    _ => write!(f, "?")?,
                }
                write!(
                    f,
                    " -> {}",
                    error.clone().unwrap_or_else(|| result.to_string().into())
                )
            }
            Detail::Signal {
                target_pid, signal, ..
            } => write!(f, "signal {signal} to {target_pid}"),
            Detail::Ptrace {
                syscall: Some(call),
                target_pid,
                result,
                ..
            } => write!(f, "{call} on {target_pid} -> {result}"),
            Detail::Ptrace {
                target_pid,
                request,
                result,
                ..
            } => write!(f, "ptrace request {request:#x} on {target_pid} -> {result}"),
            Detail::Unlink {
                syscall,
                path,
                result,
                ..
            } => write!(f, "{syscall} {path} -> {result}"),
            Detail::Rename {
                path,
                new_path,
                result,
                ..
            } => write!(f, "{path} -> {new_path} -> {result}"),
            Detail::Chmod {
                path, mode, result, ..
            } => write!(f, "{path} mode {mode:o} -> {result}"),
            Detail::Chown {
                path,
                to_uid,
                to_gid,
                result,
                ..
            } => write!(
                f,
                "{path} owner {}:{} -> {result}",
                to_uid.map_or("-".into(), |u| u.to_string()),
                to_gid.map_or("-".into(), |g| g.to_string())
            ),
            Detail::Link {
                path,
                target,
                symbolic,
                result,
                ..
            } => write!(
                f,
                "{path} {} {target} -> {result}",
                if *symbolic { "~>" } else { "=>" }
            ),
            Detail::Truncate {
                path,
                length,
                result,
                ..
            } => write!(f, "{path} to {length} bytes -> {result}"),
            Detail::Setid {
                syscall,
                old,
                new,
                result,
                ..
            } => match old {
                Some(o) => write!(
                    f,
                    "{syscall} uid {}/{} -> {}/{}, gid {}/{} -> {}/{} -> {result}",
                    o.uid, o.euid, new.uid, new.euid, o.gid, o.egid, new.gid, new.egid
                ),
                None => write!(
                    f,
                    "{syscall} -> uid {}/{}, gid {}/{} -> {result}",
                    new.uid, new.euid, new.gid, new.egid
                ),
            },
            Detail::Mount {
                syscall,
                source,
                path,
                fstype,
                result,
                ..
            } => write!(
                f,
                "{syscall} {} ({}) on {} -> {result}",
                source.as_deref().unwrap_or("-"),
                fstype.as_deref().unwrap_or("-"),
                path.as_deref().unwrap_or("-")
            ),
            Detail::Module {
                syscall,
                path,
                result,
                ..
            } => write!(
                f,
                "{syscall} {} -> {result}",
                path.as_deref().unwrap_or("(image)")
            ),
            Detail::Bpf {
                prog_type,
                name,
                result,
                ..
            } => write!(f, "load program {name:?} of type {prog_type} -> {result}"),
            Detail::Memfd { name, result, .. } => write!(f, "memfd {name:?} -> {result}"),
            Detail::NameToHandle { path, result, .. } => {
                write!(f, "handle for {path} -> {result}")
            }
            Detail::IoUring {
                entries, result, ..
            } => write!(f, "io_uring ring of {entries} entries -> {result}"),
            Detail::IoUringOp { op, path, .. } => {
                write!(f, "io_uring {op} {}", path.as_deref().unwrap_or(""))
            }
            Detail::Dns {
                query,
                qtype,
                rcode,
                answers,
                ..
            } => write!(f, "{query} {qtype} -> {rcode} {}", answers.join(" ")),
            Detail::Finding(x) => write!(
                f,
                "{:?} {} action={:?} mode={:?} outcome={:?}: {}",
                x.severity, x.rule, x.action, x.mode, x.outcome, x.description
            ),
        }
    }
}

/// A symbolic name (open flag, errno): static for the kernel's own names, so an event costs no
/// allocation for them; owned when read back from JSON.
pub type Name = std::borrow::Cow<'static, str>;

/// An open's flags as the kernel gave them, typed once where the record is translated: what
/// the open may do to its file is a few bit tests wherever it is asked. Written and read as
/// their names, access mode first (`["O_WRONLY", "O_CREAT"]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenFlags(pub u64);

/// The named flags besides the access mode (`O_TMPFILE` without the `O_DIRECTORY` it includes).
const OPEN_FLAG_NAMES: [(i32, &str); 11] = [
    (libc::O_CREAT, "O_CREAT"),
    (libc::O_EXCL, "O_EXCL"),
    (libc::O_TRUNC, "O_TRUNC"),
    (libc::O_APPEND, "O_APPEND"),
    (libc::O_NONBLOCK, "O_NONBLOCK"),
    (libc::O_DIRECTORY, "O_DIRECTORY"),
    (libc::O_NOFOLLOW, "O_NOFOLLOW"),
    (libc::O_CLOEXEC, "O_CLOEXEC"),
    (libc::O_TMPFILE & !libc::O_DIRECTORY, "O_TMPFILE"),
    (libc::O_PATH, "O_PATH"),
    (libc::O_SYNC, "O_SYNC"),
];

impl OpenFlags {
    /// The flags a rename or link over a name amounts to.
    pub const REPLACE: OpenFlags =
        OpenFlags((libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64);
    pub const LINK: OpenFlags = OpenFlags((libc::O_WRONLY | libc::O_CREAT) as u64);
    pub const TRUNCATE: OpenFlags = OpenFlags((libc::O_WRONLY | libc::O_TRUNC) as u64);

    fn has(self, bit: i32) -> bool {
        self.0 as i32 & bit == bit
    }

    fn access(self) -> i32 {
        self.0 as i32 & libc::O_ACCMODE
    }

    /// Opened for reading (`O_RDONLY` or `O_RDWR`).
    pub fn reads(self) -> bool {
        matches!(self.access(), libc::O_RDONLY | libc::O_RDWR)
    }

    /// Opened for writing (`O_WRONLY` or `O_RDWR`).
    pub fn writes(self) -> bool {
        matches!(self.access(), libc::O_WRONLY | libc::O_RDWR)
    }

    pub fn creates(self) -> bool {
        self.has(libc::O_CREAT)
    }

    pub fn truncates(self) -> bool {
        self.has(libc::O_TRUNC)
    }

    pub fn directory(self) -> bool {
        self.has(libc::O_DIRECTORY)
    }

    /// May change the file or make one: writes, creates or truncates.
    pub fn may_change(self) -> bool {
        self.writes() || self.creates() || self.truncates()
    }

    /// The names, access mode first.
    pub fn names(self) -> Vec<&'static str> {
        let mut out = vec![match self.access() {
            libc::O_WRONLY => "O_WRONLY",
            libc::O_RDWR => "O_RDWR",
            _ => "O_RDONLY",
        }];
        out.extend(
            OPEN_FLAG_NAMES
                .iter()
                .filter(|(bit, _)| self.has(*bit))
                .map(|(_, n)| *n),
        );
        out
    }

    /// From names (`O_RDONLY` when none names an access mode); the unknown one is the error.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<OpenFlags, String> {
        let mut bits = 0;
        for n in names {
            bits |= match n.as_ref() {
                "O_RDONLY" => libc::O_RDONLY,
                "O_WRONLY" => libc::O_WRONLY,
                "O_RDWR" => libc::O_RDWR,
                other => OPEN_FLAG_NAMES
                    .iter()
                    .find(|(_, name)| *name == other)
                    .map(|(bit, _)| *bit)
                    .ok_or_else(|| format!("unknown open flag `{other}`"))?,
            };
        }
        Ok(OpenFlags(bits as u64))
    }
}

impl Serialize for OpenFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for OpenFlags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<OpenFlags, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        OpenFlags::from_names(&names).map_err(serde::de::Error::custom)
    }
}

/// The names of the bits of `flags` that `table` names.
fn bit_names(flags: u64, table: &[(u32, &'static str)]) -> Vec<Name> {
    table
        .iter()
        .filter(|(bit, _)| flags & *bit as u64 != 0)
        .map(|(_, n)| (*n).into())
        .collect()
}

/// renameat2 flags by name.
pub fn rename_flags(flags: u64) -> Vec<Name> {
    bit_names(
        flags,
        &[
            (libc::RENAME_NOREPLACE, "RENAME_NOREPLACE"),
            (libc::RENAME_EXCHANGE, "RENAME_EXCHANGE"),
            (libc::RENAME_WHITEOUT, "RENAME_WHITEOUT"),
        ],
    )
}

/// memfd_create flags by name.
pub fn memfd_flags(flags: u64) -> Vec<Name> {
    bit_names(
        flags,
        &[
            (libc::MFD_CLOEXEC, "MFD_CLOEXEC"),
            (libc::MFD_ALLOW_SEALING, "MFD_ALLOW_SEALING"),
            (libc::MFD_HUGETLB, "MFD_HUGETLB"),
            (0x8, "MFD_NOEXEC_SEAL"),
            (0x10, "MFD_EXEC"),
        ],
    )
}

/// `-errno` as its symbolic name.
pub fn errno_name(result: i64) -> Option<Name> {
    if result >= 0 {
        return None;
    }
    let e = (-result) as i32;
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EROFS => "EROFS",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EISCONN => "EISCONN",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EXDEV => "EXDEV",
        libc::EBUSY => "EBUSY",
        libc::ENOSYS => "ENOSYS",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        _ => return Some(format!("errno {e}").into()),
    };
    Some(name.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_fields() {
        let ev = Event {
            seq: 1,
            ts: Ts(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_500_000_000_123_456_789)
            ),
            pid: 1,
            tid: 1,
            ppid: 0,
            uid: 0,
            trace_id: "ab".into(),
            comm: "cat".into(),
            cgroup_id: 3,
            detail: Detail::Open {
                syscall: None,
                path: "/tmp/x".into(),
                flags: OpenFlags((libc::O_WRONLY | libc::O_CREAT) as u64),
                mode: 0o644,
                result: -2,
                error: errno_name(-2),
                resolved: true,
                path_truncated: false,
                opened_as: None,
            },
        };
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "open");
        assert_eq!(v["path"], "/tmp/x");
        assert_eq!(v["flags"], serde_json::json!(["O_WRONLY", "O_CREAT"]));
        assert_eq!(v["error"], "ENOENT");
        assert_eq!(v["trace_id"], "ab");
        assert_eq!(v["ts"], "2017-07-14T02:40:00.123456789Z");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn open_flags_are_typed_once_and_written_as_names() {
        let f = OpenFlags::from_names(&["O_RDWR", "O_CREAT", "O_CLOEXEC"]).unwrap();
        assert!(f.reads() && f.writes() && f.creates() && !f.truncates());
        assert_eq!(f.names(), ["O_RDWR", "O_CREAT", "O_CLOEXEC"]);
        let r = OpenFlags::from_names(&["O_DIRECTORY"]).unwrap();
        assert!(r.reads() && !r.may_change() && r.directory());
        assert_eq!(r.names(), ["O_RDONLY", "O_DIRECTORY"]);
        // O_TMPFILE includes O_DIRECTORY: both are named, and read back the same.
        let t = OpenFlags((libc::O_WRONLY | libc::O_TMPFILE) as u64);
        assert_eq!(OpenFlags::from_names(&t.names()).unwrap(), t);
        assert!(OpenFlags::TRUNCATE.may_change() && !OpenFlags::TRUNCATE.creates());
        let bad = serde_json::from_value::<OpenFlags>(serde_json::json!(["O_WRONLY", "O_BOGUS"]));
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("unknown open flag `O_BOGUS`"));
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Alert,
    Hold,
    Kill,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Record what would have been done.
    #[default]
    Monitor,
    Enforce,
}

/// The calls whose `as_write` open replaces or cuts a file that existed under the name.
const REPLACING_CALLS: &[&str] = &[
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "truncate",
    "ftruncate",
];

/// The kernel's names of io_uring opcodes (uapi `enum io_uring_op`, which only grows), as
/// `io_uring:io_uring_submit_req` prints them, lower case.
pub const URING_OPS: &[&str] = &[
    "nop",
    "readv",
    "writev",
    "fsync",
    "read_fixed",
    "write_fixed",
    "poll_add",
    "poll_remove",
    "sync_file_range",
    "sendmsg",
    "recvmsg",
    "timeout",
    "timeout_remove",
    "accept",
    "async_cancel",
    "link_timeout",
    "connect",
    "fallocate",
    "openat",
    "close",
    "files_update",
    "statx",
    "read",
    "write",
    "fadvise",
    "madvise",
    "send",
    "recv",
    "openat2",
    "epoll_ctl",
    "splice",
    "provide_buffers",
    "remove_buffers",
    "tee",
    "shutdown",
    "renameat",
    "unlinkat",
    "mkdirat",
    "symlinkat",
    "linkat",
    "msg_ring",
    "fsetxattr",
    "setxattr",
    "fgetxattr",
    "getxattr",
    "socket",
    "uring_cmd",
    "send_zc",
    "sendmsg_zc",
    "read_multishot",
    "waitid",
    "futex_wait",
    "futex_wake",
    "futex_waitv",
    "fixed_fd_install",
    "ftruncate",
    "bind",
    "listen",
    "recv_zc",
    "epoll_wait",
    "readv_fixed",
    "writev_fixed",
    "pipe",
];

/// The name of io_uring opcode `op` (`op_N` for one newer than this list).
pub fn uring_op_name(op: u8) -> String {
    URING_OPS
        .get(op as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("op_{op}"))
}
