//! Maps and helpers shared by every probe.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_task_btf,
            bpf_ktime_get_boot_ns, bpf_task_pt_regs,
        },
    },
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use watcher_common::{
    net_filter_bit, path_filter_bit, watch_slot, AgentName, Alert, EventHeader, EventKind, FastNet,
    FastRule, ProbeConfig, Watch, EVENT_KINDS, FAILURE_KINDS, FAIL_ALERT, FAIL_CONFIG,
    FAST_PATH_MAX, NET_FILTER_WORDS, PATH_FILTER_TABLES, PATH_FILTER_WORDS, PATH_MAX,
    WATCH_FILTER_SLOTS,
};

/// Field offsets, filled by user space at load time (see `ProbeConfig`). A plain static rather
/// than `aya_ebpf::Global`, whose `MaybeUninit<..>` BTF type name the kernel refuses.
#[unsafe(no_mangle)]
pub static CONFIG: ProbeConfig = ProbeConfig::zeroed();

/// All records to user space. Size set by user space at load (`ring_buffer_bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Records that must wake user space at once (see `Alert`).
#[map]
pub static ALERTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Tells user space, through `ALERTS`, that this event's record is urgent. Sent before the
/// record is written, so a hold's freeze starts while the record is still being filled. A lost alert
/// costs only latency: the main record still carries its flags.
#[inline(always)]
pub fn alert(kind: EventKind, flags: u32) {
    let a = Alert {
        kind: kind as u32,
        flags,
        // SAFETY: helpers without preconditions.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: current_tgid(),
        _pad: 0,
    };
    if ALERTS.output::<Alert>(&a, 0).is_err() {
        count_failure(FAIL_ALERT);
    }
}

/// Kernel-side failures, per CPU and per `watcher_common::FAIL_*` kind.
#[map]
pub static FAILURES: PerCpuArray<u64> = PerCpuArray::with_max_entries(FAILURE_KINDS, 0);

/// Counts a failure the program cannot report otherwise.
#[inline(always)]
pub fn count_failure(kind: u32) {
    if let Some(counter) = FAILURES.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Records that could not be reserved, per CPU and per `EventKind`.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);

/// Watched processes: tgid -> session. Filled by user space (launch, attach), by an agent
/// matcher at exec, and inherited at fork in the kernel; removed at exit.
#[map]
pub static WATCHED: HashMap<u32, Watch> = HashMap::with_max_entries(65536, 0);

/// For each `watch_slot`, at least how many `WATCHED` keys fall in it: every hook asks this
/// (an array load the verifier inlines) before the hash lookup, so the processes of the host
/// that no session holds, nearly all of them, skip the hash. A count, not a bit, so that a
/// removal never clears a slot another tgid still needs. It may count too many (a lost race,
/// a map update that replaced an entry), which only costs a lookup; never too few: it goes
/// up before a key is added and down after one is removed, with atomic adds on both sides.
/// Mappable, so that user space adds with the same atomic instruction.
#[map]
pub static WATCH_FILTER: Array<u64> =
    Array::with_max_entries(WATCH_FILTER_SLOTS, aya_ebpf::bindings::BPF_F_MMAPABLE);

#[inline(always)]
fn watch_count(tgid: u32, delta: u64) {
    if let Some(slot) = WATCH_FILTER.get_ptr_mut(watch_slot(tgid)) {
        use core::intrinsics::{atomic_xadd, AtomicOrdering};
        // SAFETY: an 8-byte aligned map value; the result is unused, so this is one atomic add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, delta) };
    }
}

/// Adds (or replaces) the watched process `tgid`.
#[inline(always)]
pub fn watch_insert(tgid: u32, w: &Watch) -> Result<(), i64> {
    // SAFETY: only compared with None.
    let new = unsafe { WATCHED.get(&tgid).is_none() };
    if new {
        watch_count(tgid, 1);
    }
    let r = WATCHED.insert(&tgid, w, 0);
    if r.is_err() && new {
        watch_count(tgid, u64::MAX);
    }
    r.map_err(i64::from)
}

/// Removes the watched process `tgid`, if it is one.
#[inline(always)]
pub fn watch_remove(tgid: u32) {
    if WATCHED.remove(&tgid).is_ok() {
        watch_count(tgid, u64::MAX);
    }
}

/// Agent matchers: executable basename -> profile index + 1.
#[map]
pub static AGENTS: HashMap<AgentName, u32> = HashMap::with_max_entries(256, 0);

/// Threads whose connect the kernel policy just refused (key: tid), for the connect record's
/// fast-path flag. Written only on a refusal; LRU so a thread that dies meanwhile cannot leak.
#[map]
pub static REFUSED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(1024, 0);

/// Per-CPU scratch for a path that is not going into a record (agent matching).
#[map]
pub static SCRATCH_PATH: PerCpuArray<[u8; PATH_MAX]> = PerCpuArray::with_max_entries(1, 0);

/// Whether user space filled `CONFIG` in, for programs that need no other field of it whole.
#[inline(always)]
pub fn ready() -> bool {
    // SAFETY: a volatile read keeps the compiler from folding the load-time value away.
    unsafe { core::ptr::read_volatile(&CONFIG.ready) != 0 }
}

#[inline(always)]
pub fn config() -> Option<ProbeConfig> {
    // SAFETY: a volatile read keeps the compiler from folding the load-time value away.
    let cfg = unsafe { core::ptr::read_volatile(&CONFIG) };
    if cfg.ready == 0 {
        count_failure(FAIL_CONFIG);
        return None;
    }
    Some(cfg)
}

/// The current process's tgid, through the helper: for the `cgroup_sock_addr` programs and
/// the alert, which run without `Task` (tracepoints use `Task::tgid`).
#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
pub fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The current task through its BTF type, for tracing programs. Each field is one plain load
/// at an offset from the frozen read-only `CONFIG`, which the verifier knows as a constant and
/// checks against the type (a pointer field loads as a typed pointer, so chains work); a bad
/// pointer reads as 0 instead of faulting. Cheaper than the helpers that read the same
/// fields, each a call and, for the uid, a namespace translation that is the identity from
/// the initial namespace, which is where the daemon reads ids.
#[derive(Clone, Copy)]
pub struct Task(*const u8);

impl Task {
    #[inline(always)]
    pub fn current() -> Task {
        // SAFETY: helper without preconditions.
        Task(unsafe { bpf_get_current_task_btf() } as *const u8)
    }

    #[inline(always)]
    pub fn tgid(self) -> u32 {
        // SAFETY: see `load`.
        unsafe { load(self.0, &CONFIG.task_tgid) }
    }

    /// The thread id.
    #[inline(always)]
    pub fn pid(self) -> u32 {
        // SAFETY: see `load`.
        unsafe { load(self.0, &CONFIG.task_pid) }
    }

    /// The real uid of the task's (subjective) credentials, as `bpf_get_current_uid_gid` gives it.
    #[inline(always)]
    pub fn uid(self) -> u32 {
        // SAFETY: see `load`.
        unsafe {
            load(
                load::<*const u8>(self.0, &CONFIG.task_cred),
                &CONFIG.cred_uid,
            )
        }
    }

    /// The task's name (the program's basename since its exec), NUL-padded.
    #[inline(always)]
    pub fn comm(self) -> [u8; 16] {
        // SAFETY: see `load`; `comm` is 16 bytes at an 8-byte boundary of the task.
        unsafe {
            let a: u64 = load(self.0, &CONFIG.task_comm);
            let p = self
                .0
                .add(core::ptr::read_volatile(&CONFIG.task_comm) as usize + 8);
            let b = *(p as *const u64);
            let mut out = [0u8; 16];
            out[..8].copy_from_slice(&a.to_ne_bytes());
            out[8..].copy_from_slice(&b.to_ne_bytes());
            out
        }
    }

    /// The address of the task's open-file array (`files->fdt->fd`), read by plain loads
    /// through the BTF-typed task; indexing it needs a probe read (a variable offset).
    #[inline(always)]
    pub fn fd_array(self) -> *const u8 {
        // SAFETY: see `load`.
        unsafe {
            let files: *const u8 = load(self.0, &CONFIG.task_files);
            let fdt: *const u8 = load(files, &CONFIG.files_fdt);
            load(fdt, &CONFIG.fdtable_fd)
        }
    }

    /// The dentry of the task's working directory (`fs->pwd.dentry`).
    #[inline(always)]
    pub fn cwd_dentry(self) -> *const u8 {
        // SAFETY: see `load`.
        unsafe {
            let fs: *const u8 = load(self.0, &CONFIG.task_fs);
            load(fs, &CONFIG.fs_pwd_dentry)
        }
    }

    /// The task's file table (`files->fdt`), for an index from user space that must be
    /// checked against its `max_fds`.
    #[inline(always)]
    pub fn fdtable(self) -> *const u8 {
        // SAFETY: see `load`.
        unsafe {
            let files: *const u8 = load(self.0, &CONFIG.task_files);
            load(files, &CONFIG.files_fdt)
        }
    }

    /// Whether a tracer is attached to the task (`task_struct.ptrace` not 0).
    #[inline(always)]
    pub fn traced(self) -> bool {
        // SAFETY: see `load`.
        unsafe { load::<u32>(self.0, &CONFIG.task_ptrace) != 0 }
    }

    /// The id of the task's cgroup v2, as `bpf_get_current_cgroup_id` gives it.
    #[inline(always)]
    pub fn cgroup_id(self) -> u64 {
        // SAFETY: see `load`.
        unsafe {
            let cset: *const u8 = load(self.0, &CONFIG.task_cgroups);
            let cgroup: *const u8 = load(cset, &CONFIG.css_set_dfl_cgrp);
            load(
                load::<*const u8>(cgroup, &CONFIG.cgroup_kn),
                &CONFIG.kernfs_node_id,
            )
        }
    }
}

/// The `T` at `*offset` bytes into the BTF-typed kernel object at `base`.
///
/// SAFETY: `base` is a BTF-typed pointer and `offset` a field of `CONFIG` that user space set
/// to the offset of a `T` in that type; the verifier checks both.
#[inline(always)]
unsafe fn load<T: Copy>(base: *const u8, offset: &u32) -> T {
    // SAFETY: a volatile read keeps the compiler from folding the load-time offset away.
    unsafe { *(base.add(core::ptr::read_volatile(offset) as usize) as *const T) }
}

#[inline(always)]
pub fn watch_of(tgid: u32) -> Option<Watch> {
    if WATCH_FILTER.get(watch_slot(tgid)).copied() == Some(0) {
        return None;
    }
    // SAFETY: the value is copied out at once; a concurrent delete can only make it stale.
    unsafe { WATCHED.get(&tgid).copied() }
}

#[inline(always)]
pub fn current_task() -> *const u8 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The current syscall as a `sys_exit_*` program sees it.
pub struct Syscall {
    /// The first four arguments as user space passed them.
    pub args: [u64; 4],
    /// The return value (a negative errno on failure).
    pub ret: i64,
}

/// The current syscall's arguments and result, from the registers saved when the task entered
/// the kernel: the arguments stay as user space passed them until it returns, and the result
/// is in place before the `sys_exit` tracepoints run. Lets a `sys_exit_*` program see its
/// call's arguments without a `sys_enter_*` program and a map between them, and its result
/// without a probe read of the tracepoint's record.
///
/// `bpf_task_pt_regs` returns a BTF-typed pointer, and each offset is read on its own from the
/// frozen read-only `CONFIG`, so the verifier knows it as a constant: each value is a plain
/// load it checks against `struct pt_regs`, with no helper call and no copy.
#[inline(always)]
pub fn syscall(task: Task) -> Syscall {
    // SAFETY: helper on a BTF-typed task.
    let regs = unsafe { bpf_task_pt_regs(task.0 as *mut _) } as *const u8;
    // SAFETY: offsets of `struct pt_regs` members (see `load`).
    unsafe {
        let reg = |off: &u32| load::<u64>(regs, off);
        Syscall {
            args: [
                reg(&CONFIG.syscall_arg[0]),
                reg(&CONFIG.syscall_arg[1]),
                reg(&CONFIG.syscall_arg[2]),
                reg(&CONFIG.syscall_arg[3]),
            ],
            ret: reg(&CONFIG.syscall_ret) as i64,
        }
    }
}

/// Reads a `T` at `offset` bytes into the kernel object at `base`.
#[inline(always)]
pub fn read_kernel<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T).ok() }
}

/// A field offset of `CONFIG` (a volatile read keeps the load-time value from being folded
/// to the zeroed default).
#[inline(always)]
pub fn off(field: &u32) -> u32 {
    // SAFETY: a plain read of the read-only global.
    unsafe { core::ptr::read_volatile(field) }
}

/// The `struct file` open as `fd` in `task` (an index from user space, checked against the
/// table's size).
#[inline(always)]
pub fn file_of(task: Task, fd: i32) -> Option<*const u8> {
    let fdt = task.fdtable();
    let max: u32 = read_kernel(fdt, off(&CONFIG.fdtable_max_fds))?;
    if fd < 0 || fd as u32 >= max {
        return None;
    }
    let fds: *const u8 = read_kernel(fdt, off(&CONFIG.fdtable_fd))?;
    read_kernel::<*const u8>(fds, (fd as u32).wrapping_mul(8)).filter(|f| !f.is_null())
}

/// The current parent's tgid (two kernel reads).
#[inline(always)]
pub fn parent_tgid(cfg: &ProbeConfig) -> u32 {
    let parent: *const u8 = match read_kernel(current_task(), cfg.task_real_parent) {
        Some(p) => p,
        None => return 0,
    };
    read_kernel(parent, cfg.task_tgid).unwrap_or(0)
}

#[inline(always)]
pub fn fill_header(hdr: *mut EventHeader, task: Task, kind: EventKind, session_id: u64, ppid: u32) {
    // SAFETY: `hdr` points into a ring-buffer reservation of the right size.
    unsafe {
        (*hdr).kind = kind as u32;
        (*hdr).flags = 0;
        (*hdr).ts_ns = bpf_ktime_get_boot_ns();
        (*hdr).session_id = session_id;
        (*hdr).cgroup_id = task.cgroup_id();
        (*hdr).pid = task.pid();
        (*hdr).tgid = task.tgid();
        (*hdr).ppid = ppid;
        (*hdr).uid = task.uid();
        // Two 8-byte loads (`comm` sits at an 8-byte boundary of the header, and of the task).
        // The kernel keeps `comm` NUL-padded; a rename racing this read can tear it, as with
        // the helper.
        let comm = task
            .0
            .add(core::ptr::read_volatile(&CONFIG.task_comm) as usize)
            as *const u64;
        let out = (&raw mut (*hdr).comm) as *mut u64;
        *out = *comm;
        *out.add(1) = *comm.add(1);
    }
}

/// Counts a record the ring buffer had no room for.
#[inline(always)]
pub fn count_drop(kind: EventKind) {
    if let Some(counter) = DROPS.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Kernel policy (see `watcher::rules::kernel`): executables to act on at exec, keyed by path.
#[map]
pub static FAST_EXEC: LpmTrie<[u8; FAST_PATH_MAX], FastRule> = LpmTrie::with_max_entries(4096, 0);

/// Kernel policy: paths and path prefixes to act on at open.
#[map]
pub static FAST_OPEN: LpmTrie<[u8; FAST_PATH_MAX], FastRule> = LpmTrie::with_max_entries(4096, 0);

/// Kernel policy: destinations a watched process may not connect to.
#[map]
pub static DENY_V4: LpmTrie<[u8; 4], FastNet> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static DENY_V6: LpmTrie<[u8; 16], FastNet> = LpmTrie::with_max_entries(1024, 0);

/// Which pairs of bytes after the leading `/` begin some `FAST_EXEC` (words 0..1024),
/// `FAST_OPEN` (1024..2048) or `GATE_PREFIX` entry, and which first two bytes a `GATE_SUFFIX`
/// key has (`watcher_common::path_filter_bit`, one table of words each). Most paths a process
/// opens share no first two bytes with any policy path; for them one array load replaces the
/// key copy and the trie walk.
#[map]
pub static PATH_FILTER: Array<u64> =
    Array::with_max_entries(PATH_FILTER_TABLES * PATH_FILTER_WORDS, 0);

/// Whether some entry of fast-path `table` (`FILTER_EXEC`, `FILTER_OPEN`) may match the absolute
/// path that begins with `/`, `b1`, `b2`.
#[inline(always)]
pub fn may_match(table: u32, b1: u8, b2: u8) -> bool {
    let (word, bit) = path_filter_bit(b1, b2);
    match PATH_FILTER.get(table * PATH_FILTER_WORDS + word) {
        Some(w) => *w & bit != 0,
        None => true,
    }
}

/// Which first bytes of a destination address begin some `DENY_V4` or `DENY_V6` network
/// (`watcher_common::net_filter_bit`): a connect to anywhere else needs no lookup at all
/// while the kill-switch is off, watched or not.
#[map]
pub static NET_FILTER: Array<u64> = Array::with_max_entries(NET_FILTER_WORDS, 0);

/// Whether some deny entry of the family may cover an address that starts with `b`.
#[inline(always)]
pub fn net_may_match(v6: bool, b: u8) -> bool {
    let (word, bit) = net_filter_bit(v6, b);
    match NET_FILTER.get(word) {
        Some(w) => *w & bit != 0,
        None => true,
    }
}

/// Per-CPU scratch for a fast-path lookup key (too big for the stack next to a record).
#[map]
pub static SCRATCH_KEY: PerCpuArray<Key<[u8; FAST_PATH_MAX]>> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn scratch_key() -> Option<&'static mut Key<[u8; FAST_PATH_MAX]>> {
    let k = SCRATCH_KEY.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, no concurrent user on this CPU.
    Some(unsafe { &mut *k })
}

/// The fast-path entry for the `len` bytes in `key.data`: the longest stored prefix, which
/// applies when it is a prefix entry or an exact entry of the same length. `table` names the
/// map's `PATH_FILTER` words.
#[inline(always)]
pub fn fast_lookup(
    map: &LpmTrie<[u8; FAST_PATH_MAX], FastRule>,
    table: u32,
    key: &mut Key<[u8; FAST_PATH_MAX]>,
    len: usize,
) -> Option<FastRule> {
    if len == 0 || len > FAST_PATH_MAX || !may_match(table, key.data[1], key.data[2]) {
        return None;
    }
    key.prefix_len = (len * 8) as u32;
    let r = *map.get(&*key)?;
    if r.exact_len != 0 && r.exact_len as usize != len {
        return None;
    }
    Some(r)
}

/// Acts on a fast-path match: the signal takes effect before the task returns to user space.
#[inline(always)]
pub fn fast_act(r: &FastRule) {
    match r.action {
        watcher_common::FAST_KILL => signal(SIGKILL),
        watcher_common::FAST_STOP => {
            signal_stop();
        }
        _ => {}
    }
}

/// SIGKILL to the current process: it dies before it is back in user space.
#[inline(always)]
pub fn signal_kill() {
    signal(SIGKILL);
}

/// SIGSTOP to the current process: it stops before it is back in user space. A traced
/// process is killed instead (returns true): its tracer sees a SIGSTOP before the process
/// stops and may resume it without it, so a stop that must hold cannot be a signal there.
#[inline(always)]
pub fn signal_stop() -> bool {
    if Task::current().traced() {
        signal(SIGKILL);
        return true;
    }
    signal(SIGSTOP);
    false
}

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

#[inline(always)]
fn signal(sig: u32) {
    // SAFETY: helper without preconditions; it signals the current task's process.
    unsafe { aya_ebpf::helpers::generated::bpf_send_signal(sig) };
}

/// Kill-switch for every watched process: `[0]` is 0 (off), `HALT_STOP` or `HALT_KILL`;
/// `[1]` is how many sessions `HALTED` holds, so that no event pays a hash lookup while none.
#[map]
pub static HALT_ALL: Array<u32> = Array::with_max_entries(2, 0);

/// Kill-switch per session: session id -> `HALT_STOP` or `HALT_KILL`.
#[map]
pub static HALTED: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// Whether the kill-switch is engaged for anything (all sessions, or any one).
#[inline(always)]
pub fn halt_engaged() -> bool {
    HALT_ALL.get(0).copied().unwrap_or(0) != 0 || HALT_ALL.get(1).copied().unwrap_or(0) != 0
}

/// The kill-switch mode that applies to a session (0: none).
#[inline(always)]
pub fn halted(session_id: u64) -> u32 {
    let all = HALT_ALL.get(0).copied().unwrap_or(0);
    if all != 0 {
        return all;
    }
    if HALT_ALL.get(1).copied().unwrap_or(0) == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    unsafe { HALTED.get(&session_id).copied().unwrap_or(0) }
}

/// Stops or kills the current watched process at this hook when the kill-switch says so.
#[inline(always)]
pub fn enforce_halt(session_id: u64) {
    match halted(session_id) {
        watcher_common::HALT_STOP => {
            signal_stop();
        }
        watcher_common::HALT_KILL => signal(SIGKILL),
        _ => {}
    }
}

/// The start of every syscall hook on a watched process: the task, its watch entry and the
/// call; None for an unwatched process (the common case, one array load) or before user space
/// filled `CONFIG` in. A kill-switch on the session acts here.
#[inline(always)]
pub fn watched_call() -> Option<(Task, Watch, Syscall)> {
    let task = Task::current();
    let watch = watch_of(task.tgid())?;
    enforce_halt(watch.session_id);
    if !ready() {
        return None;
    }
    Some((task, watch, syscall(task)))
}

/// The fifth syscall argument (see `syscall`).
#[inline(always)]
pub fn syscall_arg4(task: Task) -> u64 {
    // SAFETY: helper on a BTF-typed task.
    let regs = unsafe { bpf_task_pt_regs(task.0 as *mut _) } as *const u8;
    // SAFETY: an offset of a `struct pt_regs` member (see `load`).
    unsafe { load::<u64>(regs, &CONFIG.syscall_arg4) }
}

/// The number of the syscall the task is in (see `syscall`).
#[inline(always)]
pub fn syscall_nr(task: Task) -> u64 {
    // SAFETY: helper on a BTF-typed task.
    let regs = unsafe { bpf_task_pt_regs(task.0 as *mut _) } as *const u8;
    // SAFETY: an offset of a `struct pt_regs` member (see `load`).
    unsafe { load::<u64>(regs, &CONFIG.syscall_nr) }
}

impl Task {
    /// The ids and effective capabilities of the task's (subjective) credentials.
    #[inline(always)]
    pub fn creds(self) -> watcher_common::Creds {
        // SAFETY: see `load`.
        unsafe {
            let cred: *const u8 = load(self.0, &CONFIG.task_cred);
            watcher_common::Creds {
                uid: load(cred, &CONFIG.cred_uid),
                euid: load(cred, &CONFIG.cred_euid),
                suid: load(cred, &CONFIG.cred_suid),
                gid: load(cred, &CONFIG.cred_gid),
                egid: load(cred, &CONFIG.cred_egid),
                sgid: load(cred, &CONFIG.cred_sgid),
                cap_effective: load(cred, &CONFIG.cred_cap_effective),
            }
        }
    }
}

/// Kernel policy by event kind (`FAST_KILL` or 0), for the kinds the kernel decides alone: a
/// watched process that loads a BPF program or a kernel module.
#[map]
pub static FAST_KIND: Array<u32> = Array::with_max_entries(EVENT_KINDS, 0);

/// Acts on `FAST_KIND` for this kind; the record flags that say so.
#[inline(always)]
pub fn fast_kind(kind: EventKind) -> u32 {
    match FAST_KIND.get(kind as u32) {
        Some(&watcher_common::FAST_KILL) => {
            signal(SIGKILL);
            watcher_common::EVENT_FLAG_FAST_PATH
        }
        _ => 0,
    }
}
