//! The gate: events that some enforce-mode `hold` or `kill` rule could match, which user space
//! must decide (`watcher::rules::gate` compiles the set from the policy). A watched process
//! whose event is in the set is stopped at the hook (SIGSTOP takes effect before the task is
//! back in user space), its record is flagged `EVENT_FLAG_GATED`, and user space resumes it,
//! holds it or kills it once the whole policy has run on the record. Entries are a superset:
//! a gated event that no rule matches costs one round trip, never a hold.
use aya_ebpf::{
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use watcher_common::{
    EventKind, Gate, Gated, InodeKey, FAST_PATH_MAX, FILTER_GATE_COMM, FILTER_GATE_PREFIX,
    FILTER_GATE_SUFFIX, GATE_COMM_LEN, GATE_OPEN, GATE_SUFFIX_MAX, INTENT_CREATE, INTENT_TRUNCATE,
    INTENT_WRITE,
};

use crate::shared::{
    alert, count_drop, file_of, may_match, off, read_kernel, signal_stop, Task, CONFIG,
};

/// `[0]`: the kinds gated for every watched process; `[1]`: the open intents of `[0]`'s opens
/// (0: any); `[2]`: how many sessions `SESSION_GATE` holds, and `[3]` how many entries
/// `GATE_INODE` holds, so that no event pays for a map that is empty.
#[map]
pub static GATE_ALL: Array<u32> = Array::with_max_entries(4, 0);

/// Files and directories the policy names, by identity (see `InodeKey`), with the open
/// intents that are gated.
#[map]
pub static GATE_INODE: HashMap<InodeKey, Gate> = HashMap::with_max_entries(16384, 0);

/// Kinds gated per session: the next steps of the sequences this session has started.
#[map]
pub static SESSION_GATE: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// Processes the gate stopped that user space has not answered yet (key: tgid). User space
/// removes an entry when it answers; one left behind is an unanswered gate, which becomes a
/// hold for a human (fail closed).
#[map]
pub static GATED: HashMap<u32, Gated> = HashMap::with_max_entries(16384, 0);

/// Whether the gate stopped process `tgid` and user space has not answered yet.
#[inline(always)]
pub fn waiting(tgid: u32) -> bool {
    // SAFETY: only tested for presence.
    unsafe { GATED.get(&tgid).is_some() }
}

/// Gate entries by process name (`comm`, the new program's basename at exec).
#[map]
pub static GATE_COMM: LpmTrie<[u8; GATE_COMM_LEN], Gate> = LpmTrie::with_max_entries(4096, 0);

/// Gate entries by path prefix (absolute paths).
#[map]
pub static GATE_PREFIX: LpmTrie<[u8; FAST_PATH_MAX], Gate> = LpmTrie::with_max_entries(4096, 0);

/// Gate entries by path suffix, keyed by the path's bytes last first: looked up with the whole
/// path (a file name's tail) and with the path up to its last `/` (a directory's tail), so
/// they match relative paths, `..`, `//` and `/proc/self/root/…` names alike.
#[map]
pub static GATE_SUFFIX: LpmTrie<[u8; GATE_SUFFIX_MAX], Gate> = LpmTrie::with_max_entries(4096, 0);

/// The two reversed keys of one suffix lookup.
pub struct SuffixKeys {
    pub file: Key<[u8; GATE_SUFFIX_MAX]>,
    pub dir: Key<[u8; GATE_SUFFIX_MAX]>,
    /// Where the last `/` is, passed through memory (see `gated_tail`).
    slash: u64,
}

#[map]
static SCRATCH_SUFFIX: PerCpuArray<SuffixKeys> = PerCpuArray::with_max_entries(1, 0);

/// Whether this session's `kind` events are gated whatever they name.
#[inline(always)]
pub fn gated_kind(session_id: u64, kind: u32, intent: u32) -> bool {
    let all = GATE_ALL.get(0).copied().unwrap_or(0);
    if all & kind != 0 {
        let want = GATE_ALL.get(1).copied().unwrap_or(0);
        if kind != GATE_OPEN || want == 0 || want & intent != 0 {
            return true;
        }
    }
    let s = session_bits(session_id);
    if s & kind == 0 {
        return false;
    }
    let want = s >> watcher_common::SESSION_INTENT_SHIFT;
    kind != GATE_OPEN || want == 0 || want & intent != 0
}

/// The session's `SESSION_GATE` value (0 without one, and without a lookup while the map is
/// empty).
#[inline(always)]
fn session_bits(session_id: u64) -> u32 {
    if GATE_ALL.get(2).copied().unwrap_or(0) == 0 {
        return 0;
    }
    // SAFETY: copied out at once.
    unsafe { SESSION_GATE.get(&session_id).copied().unwrap_or(0) }
}

/// Deletes per session, for `GATE_UNLINK_SAMPLE` (LRU: an ended session's count goes by
/// itself).
#[map]
static UNLINKS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Whether this delete is a sampled one (`GATE_UNLINK_SAMPLE`).
#[inline(always)]
pub fn unlink_sampled(session_id: u64) -> bool {
    let bit = watcher_common::GATE_UNLINK_SAMPLE;
    if GATE_ALL.get(0).copied().unwrap_or(0) & bit == 0 && session_bits(session_id) & bit == 0 {
        return false;
    }
    let n = match UNLINKS.get_ptr_mut(&session_id) {
        // A plain add: this target's atomics return no value. Two threads of a session that
        // delete at once on two CPUs may lose a count, which moves a sample by one delete.
        // SAFETY: a live map value.
        Some(c) => unsafe {
            *c += 1;
            *c
        },
        None => {
            let _ = UNLINKS.insert(&session_id, &1, 0);
            1
        }
    };
    n % watcher_common::UNLINK_SAMPLE == 0
}

/// Stops the current process (see `stop`) when the rare kind `bit` (`GATE_CHMOD_SETID`, ...)
/// is gated; the record flags that say so.
#[inline(always)]
pub fn stop_rare(task: Task, session_id: u64, bit: u32, kind: EventKind) -> u32 {
    if GATE_ALL.get(0).copied().unwrap_or(0) & bit == 0 && session_bits(session_id) & bit == 0 {
        return 0;
    }
    stop(task, session_id, kind)
}

/// Whether execs through a descriptor are gated and `head` (the filename's first bytes) is
/// one: `/dev/fd/N` or `/proc/…` (`/proc/self/fd/N`, `/proc/PID/fd/N`).
#[inline(always)]
pub fn gated_fileless(head: &[u8; 8]) -> bool {
    let all = GATE_ALL.get(0).copied().unwrap_or(0);
    all & watcher_common::GATE_FILELESS != 0 && (head == b"/dev/fd/" || (head[..6] == *b"/proc/"))
}

/// Whether a process called `comm` has its `kind` events gated (opens: with this intent).
#[inline(always)]
pub fn gated_comm(comm: &[u8; GATE_COMM_LEN], kind: u32, intent: u32) -> bool {
    if !may_match(FILTER_GATE_COMM, comm[0], comm[1]) {
        return false;
    }
    let mut len = 0usize;
    while len < GATE_COMM_LEN && comm[len] != 0 {
        len += 1;
    }
    if len == 0 {
        return false;
    }
    let key = Key::new((len * 8) as u32, *comm);
    let Some(g) = GATE_COMM.get(&key) else {
        return false;
    };
    (g.exact_len == 0 || g.exact_len as usize == len)
        && g.kinds & kind != 0
        && (kind != GATE_OPEN || g.intent == 0 || g.intent & intent != 0)
}

#[inline(always)]
fn intent_ok(g: &Gate, intent: u32) -> bool {
    g.intent == 0 || g.intent & intent != 0
}

/// Whether the absolute path in `key` (`len` bytes) opened with `intent` is gated by prefix.
#[inline(always)]
pub fn gated_prefix(key: &mut Key<[u8; FAST_PATH_MAX]>, len: usize, intent: u32) -> bool {
    if len == 0 || len > FAST_PATH_MAX || key.data[0] != b'/' {
        return false;
    }
    if !may_match(FILTER_GATE_PREFIX, key.data[1], key.data[2]) {
        return false;
    }
    key.prefix_len = (len * 8) as u32;
    let Some(g) = GATE_PREFIX.get(&*key) else {
        return false;
    };
    (g.exact_len == 0 || g.exact_len as usize == len) && intent_ok(g, intent)
}

/// Bytes of the tail copy a suffix lookup works on: the keys are at most this long (a power
/// of two, so that every index can be masked into it: the verifier then needs no other bound).
const TAIL: usize = GATE_SUFFIX_MAX;

#[map]
static SCRATCH_TAIL: PerCpuArray<[u8; TAIL]> = PerCpuArray::with_max_entries(1, 0);

/// Whether the path in the record buffer `path` (`len` bytes) opened with `intent` is gated by
/// its file's or its directory's tail. The last `TAIL` bytes are copied first.
#[inline(always)]
pub fn gated_suffix<const N: usize>(path: &[u8; N], len: usize, intent: u32) -> bool {
    if len < 2 || len >= N {
        return false;
    }
    let Some(buf) = SCRATCH_TAIL.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent user on this CPU.
    let buf = unsafe { &mut *buf };
    let n = if N < TAIL { N } else { TAIL };
    // The last `TAIL` bytes: the keys need no more.
    let (from, tail) = if len <= TAIL {
        (0, len)
    } else {
        (len - TAIL, TAIL)
    };
    if from > N - n {
        return false;
    }
    // SAFETY: `from + n <= N`: within the record buffer; the helper faults safely.
    let src = unsafe { path.as_ptr().add(from) };
    if unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_buf(src, &mut buf[..n]) }.is_err() {
        return false;
    }
    gated_tail(buf, tail, intent)
}

/// `gated_suffix` on a buffer whose first `len` bytes end with the path's last byte.
#[inline(always)]
pub fn gated_tail(buf: &[u8; TAIL], len: usize, intent: u32) -> bool {
    if len < 2 || len > TAIL {
        return false;
    }
    let Some(keys) = SCRATCH_SUFFIX.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent user on this CPU.
    let keys = unsafe { &mut *keys };
    let m = TAIL - 1;
    let file_filter = may_match(FILTER_GATE_SUFFIX, buf[(len - 1) & m], buf[(len - 2) & m]);
    let n = if len < GATE_SUFFIX_MAX {
        len
    } else {
        GATE_SUFFIX_MAX
    };
    // Plain loops, each with one exit, so that the verifier walks each once; the keys are
    // built only when the filter lets their first bytes through, so an ordinary open pays
    // for one short scan back to its last `/`.
    if file_filter {
        let mut i = 0usize;
        while i < GATE_SUFFIX_MAX {
            if i >= n {
                break;
            }
            keys.file.data[i] = buf[(len - 1 - i) & m];
            i += 1;
        }
        keys.file.prefix_len = (n * 8) as u32;
        if let Some(g) = GATE_SUFFIX.get(&keys.file) {
            if intent_ok(g, intent) {
                return true;
            }
        }
    }
    // `found` is 64 when the path's last 64 bytes have no `/`: no directory key then.
    let mut found = 0usize;
    while found < GATE_SUFFIX_MAX {
        if found >= n || buf[(len - 1 - found) & m] == b'/' {
            break;
        }
        found += 1;
    }
    if found >= n || n - found < 2 {
        return false;
    }
    // Through memory, the position is one unknown value to the verifier rather than each of
    // its 64 values, so the loop below is walked once, not once per position.
    // SAFETY: plain volatile accesses to the per-CPU slot.
    let slash = unsafe {
        core::ptr::write_volatile(&raw mut keys.slash, found as u64);
        core::ptr::read_volatile(&raw const keys.slash) as usize & (GATE_SUFFIX_MAX - 1)
    };
    let before = buf[(len - 2 - slash) & m];
    if !may_match(FILTER_GATE_SUFFIX, b'/', before) {
        return false;
    }
    let mut j = 0usize;
    while j < GATE_SUFFIX_MAX {
        if slash + j >= n {
            break;
        }
        keys.dir.data[j] = buf[(len - 1 - slash - j) & m];
        j += 1;
    }
    keys.dir.prefix_len = ((n - slash) * 8) as u32;
    match GATE_SUFFIX.get(&keys.dir) {
        Some(g) => intent_ok(g, intent),
        None => false,
    }
}

/// Whether the file the current task just opened as `fd` is one the policy names
/// (`GATE_INODE`), with this intent: the same file under any other name (a symlink, a hard
/// link, a bind mount, `/proc/self/root/…`); its directory is `gated_parent`.
#[inline(always)]
pub fn gated_inode(task: Task, fd: i64, intent: u32) -> bool {
    if GATE_ALL.get(3).copied().unwrap_or(0) == 0 || fd < 0 {
        return false;
    }
    // The descriptor was just returned by this open, so it is within the table.
    let Some(file) = read_kernel::<*const u8>(task.fd_array(), (fd as u32).wrapping_mul(8))
        .filter(|f| !f.is_null())
    else {
        return false;
    };
    read_kernel::<*const u8>(file, off(&CONFIG.file_inode))
        .and_then(identity_of)
        .is_some_and(|id| inode_hit(id, 0, intent))
}

/// Whether the file the current task just opened as `fd` with an intent that may write is in a
/// directory the policy guards names in (`GATE_INODE`, by identity): a file made there since
/// the last refresh, reached through a symlinked directory, a relative name, or a path another
/// thread rewrote after the kernel copied it. (Reads are not looked up by directory: user
/// space still names them by it.)
#[inline(always)]
pub fn gated_parent(task: Task, fd: i64, intent: u32) -> bool {
    if intent & WRITES == 0 || GATE_ALL.get(3).copied().unwrap_or(0) == 0 || fd < 0 {
        return false;
    }
    file_of(task, fd as i32)
        .and_then(|f| read_kernel::<*const u8>(f, off(&CONFIG.file_dentry)))
        .and_then(|d| read_kernel::<*const u8>(d, off(&CONFIG.dentry_parent)))
        .and_then(dentry_identity)
        .is_some_and(|id| inode_hit(id, 1, intent))
}

/// Whether a relative name made or replaced through `dfd` may be in a directory the policy
/// guards names in (`GATE_INODE`, by identity): `dfd`'s, or the working directory's for
/// `AT_FDCWD`. Exact for a bare name; a name with a `/` under such a directory costs a gated
/// round trip (user space resolves it), and its tails are matched as well.
#[inline(always)]
pub fn gated_dir(task: Task, dfd: i32, intent: u32) -> bool {
    if GATE_ALL.get(3).copied().unwrap_or(0) == 0 {
        return false;
    }
    let dentry = if dfd == AT_FDCWD {
        Some(task.cwd_dentry()).filter(|d| !d.is_null())
    } else {
        file_of(task, dfd).and_then(|f| read_kernel::<*const u8>(f, off(&CONFIG.file_dentry)))
    };
    dentry
        .and_then(dentry_identity)
        .is_some_and(|id| inode_hit(id, 1, intent))
}

/// Remembers, for this CPU's program run, whether the call is in the gate by a file's or a
/// directory's identity (`gated_inode`, `gated_parent`, `gated_dir`), found before the record is written: the record's
/// code then reads an unknown value from the map, and the verifier walks its paths once rather
/// than once with each answer (which doubled the load time of the path programs).
#[inline(always)]
pub fn remember_by_identity(hit: bool) {
    if let Some(slot) = BY_IDENTITY.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; a program run is not preempted by another on this CPU.
        unsafe { *slot = hit as u32 };
    }
}

/// What `remember_by_identity` said in this program run.
#[inline(always)]
pub fn by_identity() -> bool {
    BY_IDENTITY.get(0).copied().unwrap_or(0) != 0
}

#[map]
static BY_IDENTITY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

const AT_FDCWD: i32 = -100;
const WRITES: u32 = INTENT_WRITE | INTENT_CREATE | INTENT_TRUNCATE;

/// (inode number, device) of an inode: its `GATE_INODE` identity.
#[inline(always)]
fn identity_of(inode: *const u8) -> Option<(u64, u32)> {
    let ino = read_kernel::<u64>(inode, off(&CONFIG.inode_ino))?;
    let sb = read_kernel::<*const u8>(inode, off(&CONFIG.inode_sb))?;
    Some((ino, read_kernel::<u32>(sb, off(&CONFIG.sb_dev))?))
}

#[inline(always)]
fn dentry_identity(dentry: *const u8) -> Option<(u64, u32)> {
    read_kernel::<*const u8>(dentry, off(&CONFIG.dentry_inode)).and_then(identity_of)
}

#[inline(always)]
fn inode_hit((ino, dev): (u64, u32), dir: u32, intent: u32) -> bool {
    let key = InodeKey { ino, dev, dir };
    // SAFETY: copied out at once.
    unsafe { GATE_INODE.get(&key) }.is_some_and(|g| intent_ok(g, intent))
}

/// Stops the current process at this hook for user space's verdict and tells user space at
/// once; returns the record flags that say so (a traced process is killed: `signal_stop`).
#[inline(always)]
pub fn stop(task: Task, session_id: u64, kind: EventKind) -> u32 {
    if signal_stop() {
        // Traced: killed rather than stopped (a tracer can resume a stopped tracee), so
        // there is nothing to answer.
        alert(kind, watcher_common::EVENT_FLAG_GATED);
        return watcher_common::EVENT_FLAG_GATED | watcher_common::EVENT_FLAG_TRACED;
    }
    wait_for_answer(task, session_id, kind, 0);
    alert(kind, watcher_common::EVENT_FLAG_GATED);
    watcher_common::EVENT_FLAG_GATED
}

/// The `GATED` entry of a process stopped for user space (`flags`: `GATED_*`).
#[inline(always)]
fn wait_for_answer(task: Task, session_id: u64, kind: EventKind, flags: u32) {
    let g = Gated {
        session_id,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        kind: kind as u32,
        flags,
    };
    let _ = GATED.insert(&task.tgid(), &g, 0);
}

/// A record of a watched session that the ring had no room for. One of a kind that could have
/// held the session stops its process here, as the gate would, marked lost (`GATED_LOST`): the
/// watcher did not see what the process did, so the process does not go on until a human
/// has decided. The session is frozen at once (the alert) and held by user space's sweep of
/// `GATED`; `LOST` counts the session's lost records.
#[inline(always)]
pub fn lost(task: Task, session_id: u64, kind: EventKind) {
    count_drop(kind);
    if HOLDS_IF_LOST & (1 << kind as u32) != 0 {
        hold_lost(task, session_id, kind);
    }
}

/// Stops the current process of session `session_id` for a human, marked lost: its record of
/// `kind` is lost, or its new process could not be watched.
#[inline(always)]
pub fn hold_lost(task: Task, session_id: u64, kind: EventKind) {
    match LOST.get_ptr_mut(&session_id) {
        // SAFETY: the map's value; a lost race undercounts, the stop below happens anyway.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = LOST.insert(&session_id, &1, 0);
        }
    }
    const NOW: u32 = watcher_common::EVENT_FLAG_GATED | watcher_common::EVENT_FLAG_STOPPED;
    if signal_stop() {
        alert(kind, NOW);
        return;
    }
    wait_for_answer(task, session_id, kind, watcher_common::GATED_LOST);
    // `STOPPED`: the alert thread freezes the session's cgroup at once.
    alert(kind, NOW);
}

/// Records of each session lost because the ring was full, or processes that could not be
/// watched (key: session id).
#[map]
pub static LOST: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

/// The kinds whose lost record holds its session (`lost`): what a rule could have held before
/// harm (an exec, an open for writing, a connect, a rename, link or truncate over a name, the
/// rare kinds). Not the bookkeeping ones (fork, exit, chdir, signal, dup), a DNS answer (from
/// no process), a delete (stopped by no hook, only counted), a memfd (its exec is held) or an
/// io_uring operation (stopped by no hook: its ring's setup is gated).
const HOLDS_IF_LOST: u32 = !((1 << EventKind::Fork as u32)
    | (1 << EventKind::Exit as u32)
    | (1 << EventKind::Chdir as u32)
    | (1 << EventKind::Signal as u32)
    | (1 << EventKind::Dup as u32)
    | (1 << EventKind::Dns as u32)
    | (1 << EventKind::Unlink as u32)
    | (1 << EventKind::Memfd as u32)
    | (1 << EventKind::IoUringOp as u32));
