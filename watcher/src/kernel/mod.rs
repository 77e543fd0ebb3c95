//! Loading the kernel programs: feature checks, layout discovery, attach, and map access.
pub mod btf;
mod floor;
pub mod gate;
mod pins;
pub mod policy;
mod ring_fill;
pub mod tracefs;
mod watch_filter;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
    },
    programs::{
        cgroup_skb::CgroupSkbLinkId, links::CgroupAttachMode, links::FdLink, CgroupSkb,
        CgroupSkbAttachType, CgroupSockAddr, RawTracePoint, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use ipnet::IpNet;
use watcher_common::{
    net_filter_bit, path_filter_bit, AgentName, FastRule, ProbeConfig, Watch, AGENT_NAME_MAX,
    EVENT_KINDS, FAST_KILL, FAST_MARK, FAST_PATH_MAX, FAST_STOP, FILTER_EXEC, FILTER_OPEN,
    NET_FILTER_WORDS, PATH_FILTER_WORDS,
};

pub use self::floor::Floor;
use self::policy::{KernelAction, KernelPolicy, NetEntry, PathEntry};
use self::{btf::KernelBtf, pins::Pins, tracefs::Format, watch_filter::WatchFilter};
use crate::config::Config;
use crate::sys::cgroup::cgroup2_root;

/// The eBPF object, built by `build.rs` with aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/watcher"));

/// (program, category, tracepoint) for every hook.
pub const HOOKS: &[(&str, &str, &str)] = &[
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("task_newtask", "task", "task_newtask"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("sys_exit_openat", "syscalls", "sys_exit_openat"),
    ("sys_exit_openat2", "syscalls", "sys_exit_openat2"),
    (
        "sys_exit_open_by_handle_at",
        "syscalls",
        "sys_exit_open_by_handle_at",
    ),
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
    ("sys_exit_chdir", "syscalls", "sys_exit_chdir"),
    ("sys_exit_fchdir", "syscalls", "sys_exit_fchdir"),
    ("signal_generate", "signal", "signal_generate"),
    ("sys_exit_ptrace", "syscalls", "sys_exit_ptrace"),
    (
        "sys_exit_process_vm_writev",
        "syscalls",
        "sys_exit_process_vm_writev",
    ),
    (
        "sys_exit_process_vm_readv",
        "syscalls",
        "sys_exit_process_vm_readv",
    ),
    ("sys_exit_pidfd_getfd", "syscalls", "sys_exit_pidfd_getfd"),
    ("sys_exit_unlink", "syscalls", "sys_exit_unlink"),
    ("sys_exit_unlinkat", "syscalls", "sys_exit_unlinkat"),
    ("sys_exit_rmdir", "syscalls", "sys_exit_rmdir"),
    ("sys_exit_rename", "syscalls", "sys_exit_rename"),
    ("sys_exit_renameat", "syscalls", "sys_exit_renameat"),
    ("sys_exit_renameat2", "syscalls", "sys_exit_renameat2"),
    ("sys_exit_chmod", "syscalls", "sys_exit_chmod"),
    ("sys_exit_fchmod", "syscalls", "sys_exit_fchmod"),
    ("sys_exit_fchmodat", "syscalls", "sys_exit_fchmodat"),
    ("sys_exit_fchmodat2", "syscalls", "sys_exit_fchmodat2"),
    ("sys_exit_chown", "syscalls", "sys_exit_chown"),
    ("sys_exit_lchown", "syscalls", "sys_exit_lchown"),
    ("sys_enter_fchown", "syscalls", "sys_enter_fchown"),
    ("sys_exit_fchown", "syscalls", "sys_exit_fchown"),
    ("sys_enter_fchownat", "syscalls", "sys_enter_fchownat"),
    ("sys_exit_fchownat", "syscalls", "sys_exit_fchownat"),
    ("sys_exit_link", "syscalls", "sys_exit_link"),
    ("sys_exit_linkat", "syscalls", "sys_exit_linkat"),
    ("sys_exit_symlink", "syscalls", "sys_exit_symlink"),
    ("sys_exit_symlinkat", "syscalls", "sys_exit_symlinkat"),
    ("sys_exit_truncate", "syscalls", "sys_exit_truncate"),
    ("sys_exit_ftruncate", "syscalls", "sys_exit_ftruncate"),
    ("sys_enter_setuid", "syscalls", "sys_enter_setuid"),
    ("sys_exit_setuid", "syscalls", "sys_exit_setuid"),
    ("sys_enter_setgid", "syscalls", "sys_enter_setgid"),
    ("sys_exit_setgid", "syscalls", "sys_exit_setgid"),
    ("sys_enter_setreuid", "syscalls", "sys_enter_setreuid"),
    ("sys_exit_setreuid", "syscalls", "sys_exit_setreuid"),
    ("sys_enter_setregid", "syscalls", "sys_enter_setregid"),
    ("sys_exit_setregid", "syscalls", "sys_exit_setregid"),
    ("sys_enter_setresuid", "syscalls", "sys_enter_setresuid"),
    ("sys_exit_setresuid", "syscalls", "sys_exit_setresuid"),
    ("sys_enter_setresgid", "syscalls", "sys_enter_setresgid"),
    ("sys_exit_setresgid", "syscalls", "sys_exit_setresgid"),
    ("sys_enter_setfsuid", "syscalls", "sys_enter_setfsuid"),
    ("sys_exit_setfsuid", "syscalls", "sys_exit_setfsuid"),
    ("sys_enter_setfsgid", "syscalls", "sys_enter_setfsgid"),
    ("sys_exit_setfsgid", "syscalls", "sys_exit_setfsgid"),
    ("sys_enter_capset", "syscalls", "sys_enter_capset"),
    ("sys_exit_capset", "syscalls", "sys_exit_capset"),
    ("sys_exit_mount", "syscalls", "sys_exit_mount"),
    ("sys_exit_umount", "syscalls", "sys_exit_umount"),
    ("sys_exit_move_mount", "syscalls", "sys_exit_move_mount"),
    ("sys_exit_fsmount", "syscalls", "sys_exit_fsmount"),
    ("sys_exit_bpf", "syscalls", "sys_exit_bpf"),
    ("sys_exit_memfd_create", "syscalls", "sys_exit_memfd_create"),
    (
        "sys_exit_name_to_handle_at",
        "syscalls",
        "sys_exit_name_to_handle_at",
    ),
    (
        "sys_exit_io_uring_setup",
        "syscalls",
        "sys_exit_io_uring_setup",
    ),
    ("sys_exit_dup", "syscalls", "sys_exit_dup"),
    ("sys_exit_dup2", "syscalls", "sys_exit_dup2"),
    ("sys_exit_dup3", "syscalls", "sys_exit_dup3"),
    ("sys_exit_fcntl", "syscalls", "sys_exit_fcntl"),
];

/// Hooks attached only where the kernel has the tracepoint: module loads need CONFIG_MODULES,
/// the legacy open calls an architecture that has them (`status` lists what is missing as
/// `hooks_missing`).
pub const OPTIONAL_HOOKS: &[(&str, &str, &str)] = &[
    // The legacy open calls: x86_64 has them, aarch64 has only openat.
    ("sys_exit_open", "syscalls", "sys_exit_open"),
    ("sys_exit_creat", "syscalls", "sys_exit_creat"),
    ("sys_exit_init_module", "syscalls", "sys_exit_init_module"),
    ("sys_exit_finit_module", "syscalls", "sys_exit_finit_module"),
];

/// Checks everything the programs need and reports every missing piece at once.
pub fn preflight() -> anyhow::Result<PathBuf> {
    let mut missing = Vec::new();
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root: watcher loads eBPF programs and must run as root".to_string());
    }
    let tracefs = tracefs::find_tracefs().or_else(|| {
        // Mounting is what an operator would do by hand; try it once before giving up.
        let target = tracefs::TRACEFS_ROOTS[0];
        let ok = std::process::Command::new("mount")
            .args(["-t", "tracefs", "tracefs", target])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            tracefs::find_tracefs()
        } else {
            None
        }
    });
    if tracefs.is_none() {
        missing.push(format!(
            "tracefs: not mounted and could not be mounted (tried {}; `mount -t tracefs tracefs /sys/kernel/tracing`)",
            tracefs::TRACEFS_ROOTS.join(", ")
        ));
    }
    if !Path::new(btf::VMLINUX).exists() {
        missing.push(format!(
            "BTF: {} is missing (kernel built without CONFIG_DEBUG_INFO_BTF)",
            btf::VMLINUX
        ));
    }
    if let Some(t) = &tracefs {
        for (_, cat, name) in HOOKS {
            let f = t.join("events").join(cat).join(name);
            if !f.exists() {
                missing.push(format!("tracepoint {cat}:{name}: not in {}", t.display()));
            }
        }
    }
    if cgroup2_root().is_none() {
        missing.push(
            "cgroup v2: no cgroup2 file system is mounted (watcher refuses denied connects with a cgroup program; `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
                .to_string(),
        );
    }
    match (missing.is_empty(), tracefs) {
        (true, Some(t)) => Ok(t),
        _ => Err(anyhow!(
            "this host cannot run watcher; missing:\n  - {}",
            missing.join("\n  - ")
        )),
    }
}

/// Where `io_uring_submit_req` finds a request's opcode, its ring's flags, and an open's path
/// and directory. A kernel whose BTF lacks them gets no op records (opcode 0: the program
/// is not attached) or ops without paths, and says so in the log.
#[derive(Default)]
struct Uring {
    opcode: u32,
    ctx: u32,
    ctx_flags: u32,
    open_filename: u32,
    open_dfd: u32,
    filename_name: u32,
}

impl Uring {
    fn read(btf: &KernelBtf) -> Uring {
        let req = (|| -> Result<(u32, u32, u32), self::btf::BtfError> {
            Ok((
                btf.member_offset("io_kiocb", "opcode")?,
                btf.member_offset("io_kiocb", "ctx")?,
                btf.member_offset("io_ring_ctx", "flags")?,
            ))
        })();
        let Ok((opcode, ctx, ctx_flags)) = req.inspect_err(|e| {
            tracing::info!("io_uring operations are not recorded: {e}");
        }) else {
            return Uring::default();
        };
        // The request's command area holds the prepared open (`struct io_open`), whose
        // `filename` is the kernel's copy of the path.
        let open = (|| -> Result<(u32, u32, u32), self::btf::BtfError> {
            let cmd = btf.member_offset("io_kiocb", "cmd")?;
            Ok((
                cmd + btf.member_offset("io_open", "filename")?,
                cmd + btf.member_offset("io_open", "dfd")?,
                btf.member_offset("filename", "name")?,
            ))
        })();
        let (open_filename, open_dfd, filename_name) = open.unwrap_or_else(|e| {
            tracing::info!("io_uring opens are recorded without their path: {e}");
            (0, 0, 0)
        });
        Uring {
            opcode,
            ctx,
            ctx_flags,
            open_filename,
            open_dfd,
            filename_name,
        }
    }
}

/// Reads every offset the programs use from tracefs and BTF.
pub fn probe_config(tracefs: &Path) -> anyhow::Result<ProbeConfig> {
    let f = |cat: &str, name: &str| Format::read(tracefs, cat, name);
    let exec = f("sched", "sched_process_exec")?;
    let newtask = f("task", "task_newtask")?;
    let exit = f("sched", "sched_process_exit")?;
    let signal = f("signal", "signal_generate")?;
    let btf = KernelBtf::open()?;
    let uring = Uring::read(&btf);
    let sk = |member: &str| -> anyhow::Result<u32> {
        Ok(btf.member_offset("sock", "__sk_common")? + btf.member_offset("sock_common", member)?)
    };
    Ok(ProbeConfig {
        exec_filename: exec.offset("filename", 4)?,
        exec_pid: exec.offset("pid", 4)?,
        exec_old_pid: exec.offset("old_pid", 4)?,
        newtask_pid: newtask.offset("pid", 4)?,
        newtask_clone_flags: newtask.offset("clone_flags", 8)?,
        exit_group_dead: exit.offset("group_dead", 1)?,
        syscall_arg: btf.syscall_arg_offsets()?,
        syscall_arg4: btf.syscall_arg4_offset()?,
        syscall_ret: btf.syscall_ret_offset()?,
        signal_sig: signal.offset("sig", 4)?,
        signal_code: signal.offset("code", 4)?,
        signal_pid: signal.offset("pid", 4)?,
        signal_result: signal.offset("result", 4)?,
        task_real_parent: btf.member_offset("task_struct", "real_parent")?,
        task_pid: btf.member_offset("task_struct", "pid")?,
        task_tgid: btf.member_offset("task_struct", "tgid")?,
        task_comm: btf.member_offset("task_struct", "comm")?,
        // The credentials `bpf_get_current_uid_gid` reads (the subjective ones).
        task_cred: btf.member_offset("task_struct", "cred")?,
        cred_uid: btf.member_offset("cred", "uid")?,
        // The path `bpf_get_current_cgroup_id` takes: the task's cgroup on the v2 hierarchy.
        task_cgroups: btf.member_offset("task_struct", "cgroups")?,
        css_set_dfl_cgrp: btf.member_offset("css_set", "dfl_cgrp")?,
        cgroup_kn: btf.member_offset("cgroup", "kn")?,
        kernfs_node_id: btf.member_offset("kernfs_node", "id")?,
        task_exit_code: btf.member_offset("task_struct", "exit_code")?,
        task_mm: btf.member_offset("task_struct", "mm")?,
        mm_arg_start: btf.member_offset("mm_struct", "arg_start")?,
        mm_arg_end: btf.member_offset("mm_struct", "arg_end")?,
        task_files: btf.member_offset("task_struct", "files")?,
        files_fdt: btf.member_offset("files_struct", "fdt")?,
        fdtable_fd: btf.member_offset("fdtable", "fd")?,
        file_inode: btf.member_offset("file", "f_inode")?,
        file_dentry: btf.member_offset("file", "f_path")? + btf.member_offset("path", "dentry")?,
        dentry_parent: btf.member_offset("dentry", "d_parent")?,
        dentry_inode: btf.member_offset("dentry", "d_inode")?,
        inode_ino: btf.member_offset("inode", "i_ino")?,
        inode_sb: btf.member_offset("inode", "i_sb")?,
        sb_dev: btf.member_offset("super_block", "s_dev")?,
        fdtable_max_fds: btf.member_offset("fdtable", "max_fds")?,
        inode_uid: btf.member_offset("inode", "i_uid")?,
        task_ptrace: btf.member_offset("task_struct", "ptrace")?,
        cred_euid: btf.member_offset("cred", "euid")?,
        cred_suid: btf.member_offset("cred", "suid")?,
        cred_gid: btf.member_offset("cred", "gid")?,
        cred_egid: btf.member_offset("cred", "egid")?,
        cred_sgid: btf.member_offset("cred", "sgid")?,
        cred_cap_effective: btf.member_offset("cred", "cap_effective")?,
        file_private_data: btf.member_offset("file", "private_data")?,
        socket_sk: btf.member_offset("socket", "sk")?,
        sock_family: sk("skc_family")?,
        sock_daddr: sk("skc_daddr")?,
        sock_dport: sk("skc_dport")?,
        sock_v6_daddr: sk("skc_v6_daddr")?,
        unix_peer: btf.member_offset("unix_sock", "peer")?,
        unix_addr: btf.member_offset("unix_sock", "addr")?,
        unix_address_len: btf.member_offset("unix_address", "len")?,
        unix_address_name: btf.member_offset("unix_address", "name")?,
        file_flags: btf.member_offset("file", "f_flags")?,
        syscall_nr: btf.syscall_nr_offset()?,
        fence_calls: crate::sys::fence::CALLS.map(|c| c as u32),
        task_fs: btf.member_offset("task_struct", "fs")?,
        fs_pwd_dentry: btf.member_offset("fs_struct", "pwd")?
            + btf.member_offset("path", "dentry")?,
        uring_opcode: uring.opcode,
        uring_ctx: uring.ctx,
        uring_ctx_flags: uring.ctx_flags,
        uring_open_filename: uring.open_filename,
        uring_open_dfd: uring.open_dfd,
        filename_name: uring.filename_name,
        ready: 1,
    })
}

/// The loaded and attached programs and the maps user space works with.
pub struct Kernel {
    ebpf: Ebpf,
    /// Read it anywhere; add to it only through `watch`, which keeps `watch_filter` counting.
    pub watched: BpfHashMap<MapData, u32, Watch>,
    watch_filter: WatchFilter,
    drops: PerCpuArray<MapData, u64>,
    failures: PerCpuArray<MapData, u64>,
    /// The record ring's positions, once `take_rings` has handed the ring out.
    events_fill: Option<self::ring_fill::RingFill>,
    /// Optional hooks this kernel has no tracepoint for.
    pub hooks_missing: Vec<String>,
    /// The DNS programs' links on session cgroups outside the watcher's directory (which has
    /// its own): cgroup directory -> (ingress, egress).
    dns_links: std::collections::HashMap<PathBuf, Vec<(&'static str, CgroupSkbLinkId)>>,
    /// Where the maps and links outlive the daemon (`[daemon] bpffs`), if anywhere.
    pins: Option<Pins>,
    uring_ops: UringOps,
}

/// The io_uring operation hook: not on this kernel, loaded, or attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UringOps {
    Missing,
    Loaded,
    Attached,
}

/// The raw tracepoint program (and tracepoint) of io_uring operations.
const URING_OPS_PROG: &str = "io_uring_submit_req";

impl Kernel {
    pub fn load(cfg: &Config) -> anyhow::Result<Kernel> {
        let tracefs = preflight()?;
        let probe_cfg = probe_config(&tracefs).context("reading kernel layouts")?;
        let pins = match &cfg.daemon.bpffs {
            p if p.as_os_str().is_empty() => None,
            p => Some(Pins::open(
                p,
                OBJECT,
                &[
                    cfg.daemon.ring_buffer_bytes,
                    cfg.daemon.max_watched_processes,
                ],
            )?),
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global("CONFIG", &probe_cfg, true)
            .map_max_entries("EVENTS", cfg.daemon.ring_buffer_bytes)
            .map_max_entries("WATCHED", cfg.daemon.max_watched_processes);
        let names = match &pins {
            Some(_) => pins::map_names(OBJECT)?,
            None => Vec::new(),
        };
        if let Some(pins) = &pins {
            for name in &names {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
        if pins.as_ref().is_some_and(|p| p.reused) {
            tracing::info!("the maps of the daemon before are taken over: unread records, watched processes, the gate and the kill-switch as it left them");
        }
        let mut hooks_missing = Vec::new();
        for (prog, cat, name) in HOOKS.iter().chain(OPTIONAL_HOOKS) {
            if OPTIONAL_HOOKS.iter().any(|h| h.0 == *prog)
                && !tracefs.join("events").join(cat).join(name).exists()
            {
                tracing::info!("{cat}:{name} is not in this kernel; not attached");
                hooks_missing.push(format!("{cat}:{name}"));
                continue;
            }
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            if p.fd().is_err() {
                let t = std::time::Instant::now();
                p.load()
                    .with_context(|| format!("verifier rejected {prog}"))?;
                tracing::debug!(prog, ms = t.elapsed().as_millis() as u64, "loaded");
            }
            let id = p
                .attach(cat, name)
                .with_context(|| format!("attaching {prog} to {cat}:{name}"))?;
            if let Some(pins) = &pins {
                pins.pin(prog, FdLink::try_from(p.take_link(id)?)?)?;
            }
        }
        attach_connect_programs(
            &mut ebpf,
            &[
                "deny_connect4",
                "deny_connect6",
                "deny_sendmsg4",
                "deny_sendmsg6",
            ],
            pins.as_ref(),
        )?;
        // The raw tracepoint gives the target task itself: a signal to any thread of the
        // daemon is seen by its process id.
        load_raw(&mut ebpf, "guard_signal")?;
        attach_loaded_raw(&mut ebpf, "guard_signal", "signal_generate", pins.as_ref())?;
        // The operations of a ring a profile or scope allowed (CONFIG_IO_URING, and a BTF
        // that says where a request keeps its opcode). Loaded now, attached once a watched
        // process has a ring (`watch_uring_ops`): attached, it costs every io_uring operation
        // on the host about 0.17 us (BENCHMARKS.md), and most hosts' rings are no session's.
        let uring = tracefs.join("events/io_uring/io_uring_submit_req");
        let mut uring_ops = UringOps::Missing;
        if uring.exists() && probe_cfg.uring_ctx != 0 {
            load_raw(&mut ebpf, URING_OPS_PROG)?;
            uring_ops = UringOps::Loaded;
        } else {
            hooks_missing.push("io_uring:io_uring_submit_req".into());
        }
        // The daemon before had it attached: a ring it watched may still be in use.
        if uring_ops == UringOps::Loaded && pins.as_ref().is_some_and(|p| p.had(URING_OPS_PROG)) {
            attach_loaded_raw(&mut ebpf, URING_OPS_PROG, URING_OPS_PROG, pins.as_ref())?;
            uring_ops = UringOps::Attached;
        }
        // Taken-over maps may say "on" from the daemon before: true only once attached here
        // (or missing from this kernel: nothing to wait for).
        set_uring_ops_on(&mut ebpf, uring_ops != UringOps::Loaded)?;
        if let Some(pins) = &pins {
            // Every program of this daemon is attached for good: the earlier daemon's go.
            pins.retire_others();
        }
        let mut agents: BpfHashMap<_, AgentName, u32> = BpfHashMap::try_from(
            ebpf.map_mut("AGENTS")
                .ok_or_else(|| anyhow!("no AGENTS map"))?,
        )?;
        let mut keys = std::collections::HashSet::new();
        for (name, profile) in cfg.agent_names() {
            let mut key = AgentName([0; AGENT_NAME_MAX]);
            key.0[..name.len()].copy_from_slice(name.as_bytes());
            agents.insert(key, profile, 0)?;
            keys.insert(key.0);
        }
        // Taken-over maps: the names the configuration no longer has go, after the new are in.
        let stale: Vec<AgentName> = agents
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keys.contains(&k.0))
            .collect();
        for k in stale {
            let _ = agents.remove(&k);
        }
        // The earlier daemon's processes and threads are guarded no more (their ids are free
        // for others); this one guards its own in `standing::start`.
        let mut guarded: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(
            ebpf.map_mut("GUARDED")
                .ok_or_else(|| anyhow!("no GUARDED map"))?,
        )?;
        for k in guarded.keys().filter_map(Result::ok).collect::<Vec<_>>() {
            let _ = guarded.remove(&k);
        }
        let watched = BpfHashMap::try_from(
            ebpf.take_map("WATCHED")
                .ok_or_else(|| anyhow!("no WATCHED map"))?,
        )?;
        let watch_filter = WatchFilter::new(
            ebpf.take_map("WATCH_FILTER")
                .ok_or_else(|| anyhow!("no WATCH_FILTER map"))?,
        )?;
        let drops = PerCpuArray::try_from(
            ebpf.take_map("DROPS")
                .ok_or_else(|| anyhow!("no DROPS map"))?,
        )?;
        let failures = PerCpuArray::try_from(
            ebpf.take_map("FAILURES")
                .ok_or_else(|| anyhow!("no FAILURES map"))?,
        )?;
        Ok(Kernel {
            uring_ops,
            ebpf,
            watched,
            watch_filter,
            drops,
            failures,
            events_fill: None,
            hooks_missing,
            dns_links: Default::default(),
            pins,
        })
    }

    /// Watches the operations of every watched process's io_uring from now on (a watched
    /// process made a ring). Once attached it stays.
    pub fn watch_uring_ops(&mut self) -> anyhow::Result<()> {
        if self.uring_ops != UringOps::Loaded {
            return Ok(());
        }
        attach_loaded_raw(
            &mut self.ebpf,
            URING_OPS_PROG,
            URING_OPS_PROG,
            self.pins.as_ref(),
        )?;
        self.uring_ops = UringOps::Attached;
        set_uring_ops_on(&mut self.ebpf, true)?;
        tracing::info!("a watched process made an io_uring: its operations are watched");
        Ok(())
    }

    /// Whether the maps are an earlier daemon's, taken over from bpffs.
    pub fn took_over(&self) -> bool {
        self.pins.as_ref().is_some_and(|p| p.reused)
    }

    /// Leaves nothing in the kernel once the daemon exits: its programs detach, its maps go.
    pub fn unpin(&self) {
        if let Some(p) = &self.pins {
            p.remove();
        }
    }

    /// Attaches the DNS response reader to `dir`, the cgroup directory of every session: it
    /// sees the packets delivered to the sessions' sockets and nothing else. On failure, DNS
    /// names are missing (`hooks_missing` says so) and nothing else changes.
    /// Sees the DNS traffic of a session whose cgroup is not under the watcher's directory
    /// (one placed inside the cgroup that owned it), as `watch_dns` does for that directory.
    /// Links of session cgroups that are gone are let go here too.
    pub fn watch_dns_in(&mut self, dir: &Path) -> anyhow::Result<()> {
        let gone: Vec<PathBuf> = self
            .dns_links
            .keys()
            .filter(|d| !d.is_dir())
            .cloned()
            .collect();
        for d in gone {
            for (name, link) in self.dns_links.remove(&d).unwrap_or_default() {
                if let Some(p) = self.ebpf.program_mut(name) {
                    let p: Result<&mut CgroupSkb, _> = p.try_into();
                    if let Ok(p) = p {
                        let _ = p.detach(link);
                    }
                }
            }
        }
        if self.dns_links.contains_key(dir) {
            return Ok(());
        }
        let cgroup =
            std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        let mut links = Vec::new();
        for (name, how) in [
            ("dns_ingress", CgroupSkbAttachType::Ingress),
            ("dns_egress", CgroupSkbAttachType::Egress),
        ] {
            let p: &mut CgroupSkb = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
                .try_into()?;
            if p.fd().is_err() {
                anyhow::bail!("{name} is not loaded (no DNS observation on this host)");
            }
            let link = p
                .attach(&cgroup, how, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", dir.display()))?;
            links.push((name, link));
        }
        self.dns_links.insert(dir.to_path_buf(), links);
        Ok(())
    }

    pub fn watch_dns(&mut self, dir: &Path) -> anyhow::Result<()> {
        let attach = |ebpf: &mut Ebpf, name: &str, how| -> anyhow::Result<()> {
            let p: &mut CgroupSkb = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
                .try_into()?;
            p.load()
                .with_context(|| format!("verifier rejected {name}"))?;
            let cgroup =
                std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
            // A bpf_link coexists with other programs on the cgroup; it takes no mode flags.
            p.attach(&cgroup, how, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", dir.display()))?;
            Ok(())
        };
        attach(&mut self.ebpf, "dns_ingress", CgroupSkbAttachType::Ingress).inspect_err(|_| {
            self.hooks_missing.push("cgroup_skb/ingress (DNS)".into());
        })?;
        // Without the queries no answer can be matched to one: no names are learned (fail
        // closed: `--allow-host` names then allow nothing by name).
        attach(&mut self.ebpf, "dns_egress", CgroupSkbAttachType::Egress).inspect_err(|_| {
            self.hooks_missing
                .push("cgroup_skb/egress (DNS queries)".into());
        })
    }

    /// Guards `ids` (`GUARD_PROCESS` or `GUARD_THREAD` each): a watched process that signals
    /// or traces one is killed in the kernel and its session halted.
    pub fn guard(&mut self, ids: &[(u32, u32)]) -> anyhow::Result<()> {
        let mut m: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("GUARDED")
                .ok_or_else(|| anyhow!("no GUARDED map"))?,
        )?;
        for (id, what) in ids {
            m.insert(id, what, 0).context("adding to GUARDED")?;
        }
        Ok(())
    }

    /// Whether `pid` is a watched process, or one the kernel killed for signalling or tracing
    /// a guarded process (it may be gone from the watched map by now).
    pub fn watched_or_tamperer(&self, pid: u32) -> bool {
        if self.watched.get(&pid, 0).is_ok() {
            return true;
        }
        self.ebpf
            .map("TAMPERERS")
            .and_then(|m| BpfHashMap::<_, u32, u64>::try_from(m).ok())
            .is_some_and(|m| m.get(&pid, 0).is_ok())
    }

    /// No longer guards `id` (a guardian or thread that is gone).
    pub fn unguard(&mut self, id: u32) -> anyhow::Result<()> {
        let mut m: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("GUARDED")
                .ok_or_else(|| anyhow!("no GUARDED map"))?,
        )?;
        match m.remove(&id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing from GUARDED"),
        }
    }

    /// The ring buffer of records and the small one of alerts (see `watcher_common::Alert`).
    pub fn take_rings(&mut self) -> anyhow::Result<(RingBuf<MapData>, RingBuf<MapData>)> {
        let size = match self.ebpf.map("EVENTS") {
            Some(aya::maps::Map::RingBuf(m)) => m.info()?.max_entries(),
            _ => return Err(anyhow!("no EVENTS ring buffer map")),
        };
        let ebpf = &mut self.ebpf;
        let mut take = |name: &str| -> anyhow::Result<RingBuf<MapData>> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("{name} map already taken"))?;
            Ok(RingBuf::try_from(map)?)
        };
        let (events, alerts) = (take("EVENTS")?, take("ALERTS")?);
        // Without it only the fill gauge is missing; the records still flow.
        match self::ring_fill::RingFill::new(std::os::fd::AsFd::as_fd(&events), size) {
            Ok(f) => self.events_fill = Some(f),
            Err(e) => tracing::warn!("no ring buffer fill ratio: mapping EVENTS: {e}"),
        }
        Ok((events, alerts))
    }

    /// Makes the gate's maps hold exactly `g` (see `rules::gate`). As for the fast paths, new
    /// entries go in before stale ones go out.
    pub fn set_gate(&mut self, g: &self::policy::GateSet) -> anyhow::Result<()> {
        use watcher_common::{
            Gate, FILTER_GATE_COMM, FILTER_GATE_PREFIX, FILTER_GATE_SUFFIX, GATE_COMM_LEN,
            GATE_SUFFIX_MAX,
        };
        // Each entry's key bytes as its trie holds them (tails last byte first).
        let keys = |list: &[self::policy::GateEntry], reverse: bool| -> Vec<(Vec<u8>, Gate)> {
            list.iter()
                .map(|e| {
                    let mut key = e.key.as_bytes().to_vec();
                    if reverse {
                        key.reverse();
                    }
                    let gate = Gate {
                        kinds: e.kinds,
                        intent: e.intent,
                        exact_len: if e.prefix { 0 } else { key.len() as u32 },
                        _pad: 0,
                    };
                    (key, gate)
                })
                .collect()
        };
        fn entries<const N: usize>(keys: &[(Vec<u8>, Gate)]) -> Vec<(Key<[u8; N]>, Gate)> {
            keys.iter()
                .filter(|(k, _)| !k.is_empty() && k.len() <= N)
                .map(|(k, gate)| {
                    let mut data = [0u8; N];
                    data[..k.len()].copy_from_slice(k);
                    (Key::new(k.len() as u32 * 8, data), *gate)
                })
                .collect()
        }
        // The filter of a table: each key's first two bytes (a tail is always a prefix of the
        // reversed path).
        let filter = |keys: &[(Vec<u8>, Gate)], all_prefix: bool| {
            key_filter(
                keys.iter()
                    .map(|(k, g)| (k.as_slice(), all_prefix || g.exact_len == 0)),
            )
        };
        let (comm, prefix, suffix) = (
            keys(&g.comm, false),
            // Path prefixes are filtered on the two bytes after their `/`.
            keys(&g.prefix, false),
            keys(&g.suffix, true),
        );
        let prefix_rest: Vec<(Vec<u8>, Gate)> = prefix
            .iter()
            .map(|(k, gate)| (k.strip_prefix(b"/").unwrap_or(&[]).to_vec(), *gate))
            .collect();
        let tables = [
            (FILTER_GATE_PREFIX, filter(&prefix_rest, false)),
            (FILTER_GATE_SUFFIX, filter(&suffix, true)),
            (FILTER_GATE_COMM, filter(&comm, false)),
        ];
        for (table, words) in &tables {
            self.widen_filter("PATH_FILTER", table * PATH_FILTER_WORDS, words)?;
        }
        replace_trie(&mut self.ebpf, "GATE_COMM", entries::<GATE_COMM_LEN>(&comm))?;
        replace_trie(
            &mut self.ebpf,
            "GATE_PREFIX",
            entries::<FAST_PATH_MAX>(&prefix),
        )?;
        replace_trie(
            &mut self.ebpf,
            "GATE_SUFFIX",
            entries::<GATE_SUFFIX_MAX>(&suffix),
        )?;
        for (table, words) in &tables {
            self.set_filter_words("PATH_FILTER", table * PATH_FILTER_WORDS, words)?;
        }
        let mut all: aya::maps::Array<_, u32> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut("GATE_ALL")
                .ok_or_else(|| anyhow!("no GATE_ALL map"))?,
        )?;
        all.set(1, g.all_intent, 0).context("setting GATE_ALL")?;
        let fileless = if g.fileless {
            watcher_common::GATE_FILELESS
        } else {
            0
        };
        all.set(0, g.all | fileless, 0)
            .context("setting GATE_ALL")?;
        Ok(())
    }

    /// Run count and time of every program (see `control::Status::programs`).
    pub fn program_stats(&self) -> Vec<crate::model::protocol::ProgramStat> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(crate::model::protocol::ProgramStat {
                    name: name.to_string(),
                    runs: info.run_count(),
                    run_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }

    /// How full the record ring is, 0 to 1 (0 before `take_rings`).
    pub fn ring_fill(&self) -> f64 {
        self.events_fill.as_ref().map_or(0.0, |f| f.ratio())
    }

    /// Records the kernel could not reserve, per event kind, summed over CPUs.
    pub fn drops(&self) -> [u64; EVENT_KINDS as usize] {
        let mut out = [0; EVENT_KINDS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = self.drops.get(&(i as u32), 0) {
                *slot = per_cpu.iter().sum();
            }
        }
        out
    }

    /// Kernel-side failures per `watcher_common::FAIL_*` kind, summed over CPUs, by name.
    pub fn failures(&self) -> std::collections::BTreeMap<String, u64> {
        watcher_common::FAILURE_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let n = self
                    .failures
                    .get(&(i as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (name.to_string(), n)
            })
            .collect()
    }

    /// Watches `tgid` (its `ppid` is taken from /proc here).
    pub fn watch(&mut self, tgid: u32, w: Watch) -> anyhow::Result<()> {
        let w = Watch {
            ppid: crate::sys::procfs::ppid_of(tgid),
            ..w
        };
        // Counted before it goes in (see `WatchFilter`); a replaced entry is already counted.
        let new = self.watched.get(&tgid, 0).is_err();
        if new {
            self.watch_filter.add(tgid);
        }
        let r = self
            .watched
            .insert(tgid, w, 0)
            .with_context(|| format!("adding pid {tgid} to the kernel map"));
        if r.is_err() && new {
            self.watch_filter.undo_add(tgid);
        }
        r
    }

    /// Makes the kernel's fast-path maps hold exactly the policy's entries. New entries go in
    /// before stale ones go out, so a reload never opens a window with no policy at all.
    pub fn set_fast_paths(&mut self, kp: &KernelPolicy) -> anyhow::Result<()> {
        let path_entries = |list: &[PathEntry]| -> Vec<(Key<[u8; FAST_PATH_MAX]>, FastRule)> {
            list.iter()
                .filter(|e| !e.path.is_empty() && e.path.len() <= FAST_PATH_MAX)
                .map(|e| {
                    let mut data = [0u8; FAST_PATH_MAX];
                    data[..e.path.len()].copy_from_slice(e.path.as_bytes());
                    let rule = FastRule {
                        action: match e.action {
                            KernelAction::Kill => FAST_KILL,
                            KernelAction::Stop => FAST_STOP,
                            KernelAction::Mark => FAST_MARK,
                        },
                        intent: e.intent,
                        exact_len: if e.prefix { 0 } else { e.path.len() as u32 },
                        _pad: 0,
                    };
                    (Key::new(e.path.len() as u32 * 8, data), rule)
                })
                .collect()
        };
        // Each filter admits old and new entries while its trie changes, then only the new.
        let filters = [(FILTER_EXEC, &kp.exec), (FILTER_OPEN, &kp.open)];
        for (table, list) in filters {
            self.widen_filter("PATH_FILTER", table * PATH_FILTER_WORDS, &path_filter(list))?;
        }
        replace_trie(&mut self.ebpf, "FAST_EXEC", path_entries(&kp.exec))?;
        replace_trie(&mut self.ebpf, "FAST_OPEN", path_entries(&kp.open))?;
        for (table, list) in filters {
            self.set_filter_words("PATH_FILTER", table * PATH_FILTER_WORDS, &path_filter(list))?;
        }
        let (values, widened) = policy::deny_values(&kp.deny);
        for net in widened {
            tracing::warn!(
                %net,
                "more port ranges refused on this network than one kernel entry holds: the nearest are joined, and the ports between them are refused too"
            );
        }
        let v4 = values
            .iter()
            .filter_map(|(n, v)| match n {
                IpNet::V4(n) => Some((Key::new(n.prefix_len() as u32, n.network().octets()), *v)),
                IpNet::V6(_) => None,
            })
            .collect();
        let v6 = values
            .iter()
            .filter_map(|(n, v)| match n {
                IpNet::V6(n) => Some((Key::new(n.prefix_len() as u32, n.network().octets()), *v)),
                IpNet::V4(_) => None,
            })
            .collect();
        let nets = net_filter(&kp.deny);
        self.widen_filter("NET_FILTER", 0, &nets)?;
        replace_trie(&mut self.ebpf, "DENY_V4", v4)?;
        replace_trie(&mut self.ebpf, "DENY_V6", v6)?;
        self.set_filter_words("NET_FILTER", 0, &nets)?;
        let mut fast_kind: aya::maps::Array<_, u32> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut("FAST_KIND")
                .ok_or_else(|| anyhow!("no FAST_KIND map"))?,
        )?;
        for kind in [policy::KindEntry::Module, policy::KindEntry::Bpf] {
            let on = kp.kinds.iter().any(|(k, _)| *k == kind);
            fast_kind
                .set(kind.event_kind() as u32, if on { FAST_KILL } else { 0 }, 0)
                .context("setting FAST_KIND")?;
        }
        Ok(())
    }

    fn filter_map(&mut self, name: &str) -> anyhow::Result<aya::maps::Array<&mut MapData, u64>> {
        Ok(aya::maps::Array::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| anyhow!("no {name} map"))?,
        )?)
    }

    /// Words `first..first + n` of a filter map.
    fn filter_words(&mut self, name: &str, first: u32, n: u32) -> anyhow::Result<Vec<u64>> {
        let map = self.filter_map(name)?;
        (first..first + n)
            .map(|i| map.get(&i, 0).with_context(|| format!("reading {name}")))
            .collect()
    }

    /// Adds the bits of `words` to those the map holds from `first` on: while a trie changes,
    /// its filter must admit both its old and its new entries.
    fn widen_filter(&mut self, name: &str, first: u32, words: &[u64]) -> anyhow::Result<()> {
        let mut both = self.filter_words(name, first, words.len() as u32)?;
        for (b, w) in both.iter_mut().zip(words) {
            *b |= w;
        }
        self.set_filter_words(name, first, &both)
    }

    /// Writes the words from `first` on that differ from what the map holds.
    fn set_filter_words(&mut self, name: &str, first: u32, words: &[u64]) -> anyhow::Result<()> {
        let old = self.filter_words(name, first, words.len() as u32)?;
        let mut map = self.filter_map(name)?;
        for (i, (w, o)) in (first..).zip(words.iter().zip(old)) {
            if *w != o {
                map.set(i, *w, 0)
                    .with_context(|| format!("setting {name}"))?;
            }
        }
        Ok(())
    }

    /// The kill-switch for every watched process: 0 (off), `HALT_STOP` or `HALT_KILL`.
    pub fn set_halt_all(&mut self, mode: u32) -> anyhow::Result<()> {
        self.set_halt_slot(0, mode)
    }

    /// `HALT_ALL[slot]`: 0 is the mode for all, 1 the number of sessions in `HALTED`.
    fn set_halt_slot(&mut self, slot: u32, value: u32) -> anyhow::Result<()> {
        let mut a: aya::maps::Array<_, u32> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut("HALT_ALL")
                .ok_or_else(|| anyhow!("no HALT_ALL map"))?,
        )?;
        a.set(slot, value, 0).context("setting HALT_ALL")?;
        Ok(())
    }

    fn halted_map(&mut self) -> anyhow::Result<BpfHashMap<&mut MapData, u64, u32>> {
        Ok(BpfHashMap::try_from(
            self.ebpf
                .map_mut("HALTED")
                .ok_or_else(|| anyhow!("no HALTED map"))?,
        )?)
    }

    /// The kill-switch for one session (mode 0 removes it). The programs look in `HALTED` only
    /// while its count is not 0: the count goes up before an entry is added and down after one
    /// is removed, so a program never skips an entry that is there.
    pub fn set_halt_session(&mut self, session_id: u64, mode: u32) -> anyhow::Result<()> {
        if mode == 0 {
            let _ = self.halted_map()?.remove(&session_id);
            let count = self.halted_count()?;
            self.set_halt_slot(1, count)
        } else {
            let count = self.halted_count()?;
            self.set_halt_slot(1, count + 1)?;
            self.halted_map()?
                .insert(session_id, mode, 0)
                .context("setting HALTED")
        }
    }

    fn halted_count(&mut self) -> anyhow::Result<u32> {
        Ok(self.halted_map()?.keys().filter_map(Result::ok).count() as u32)
    }

    pub fn clear_halted_sessions(&mut self) -> anyhow::Result<()> {
        let mut m = self.halted_map()?;
        let keys: Vec<u64> = m.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
        self.set_halt_slot(1, 0)
    }

    /// A session ended: its kill-switch entry, if it had one, goes (it would only fill the map).
    pub fn session_ended(&mut self, session_id: u64) -> anyhow::Result<()> {
        if self.halted_map()?.get(&session_id, 0).is_ok() {
            self.set_halt_session(session_id, 0)?;
        }
        Ok(())
    }

    /// A second handle on the kernel's map of watched processes, for a thread that must not
    /// wait for the kernel lock or read /proc (the fanotify thread).
    pub fn watched_reader(&self) -> anyhow::Result<WatchedReader> {
        let id = aya::maps::IterableMap::map(&self.watched).info()?.id();
        let data = MapData::from_id(id).context("opening WATCHED again")?;
        Ok(WatchedReader(BpfHashMap::try_from(
            aya::maps::Map::HashMap(data),
        )?))
    }

    /// Whether `tgid` is in a watched session (the control socket refuses those).
    pub fn is_watched(&self, tgid: u32) -> bool {
        self.watched.get(&tgid, 0).is_ok()
    }

    /// The processes the kernel counts in a session.
    pub fn pids_of_session(&self, session_id: u64) -> Vec<u32> {
        self.watched
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, w)| w.session_id == session_id)
            .map(|(pid, _)| pid)
            .collect()
    }

    pub fn watched_pids(&self) -> Vec<u32> {
        self.watched.keys().filter_map(Result::ok).collect()
    }
}

/// The `PATH_FILTER` words of a fast-path table: the bit of every pair of bytes after the `/`
/// that an entry's path can begin with (all of them for an entry as short as `/` or a prefix
/// `/x`, which match any such pair).
fn path_filter(list: &[PathEntry]) -> Vec<u64> {
    key_filter(list.iter().filter(|e| e.path.len() <= FAST_PATH_MAX).map(
        |e| match e.path.as_bytes() {
            [b'/', rest @ ..] => (rest, e.prefix),
            // Not absolute: it may share its first bytes with any path.
            _ => (&[][..], true),
        },
    ))
}

/// The filter words of a trie whose keys start with these bytes (a path's after its `/`): the
/// bit of their first two bytes, of every second byte for a one-byte prefix, of every pair
/// for an empty prefix; a key of one byte, or none, exactly has 0 for the bytes it lacks.
fn key_filter<'a>(keys: impl IntoIterator<Item = (&'a [u8], bool)>) -> Vec<u64> {
    let mut words = vec![0u64; PATH_FILTER_WORDS as usize];
    let mut set = |b1: u8, b2: u8| {
        let (w, bit) = path_filter_bit(b1, b2);
        words[w as usize] |= bit;
    };
    for (key, prefix) in keys {
        match key {
            [b1, b2, ..] => set(*b1, *b2),
            [b1] if !prefix => set(*b1, 0),
            [b1] => (0..=255).for_each(|b2| set(*b1, b2)),
            [] if !prefix => set(0, 0),
            [] => (0..=255).for_each(|b1| (0..=255).for_each(|b2| set(b1, b2))),
        }
    }
    words
}

/// The `NET_FILTER` words for the deny entries: the bit of every first address byte a
/// network covers (a network shorter than /8 covers several).
fn net_filter(deny: &[NetEntry]) -> Vec<u64> {
    let mut words = vec![0u64; NET_FILTER_WORDS as usize];
    for e in deny {
        let (v6, first, len) = match e.net {
            IpNet::V4(n) => (false, n.network().octets()[0], n.prefix_len()),
            IpNet::V6(n) => (true, n.network().octets()[0], n.prefix_len()),
        };
        // A /len network fixes the top `len` bits of the first byte (all of them from /8 on).
        let span = 1u16 << (8 - len.min(8));
        for b in first as u16..(first as u16 + span).min(256) {
            let (w, bit) = net_filter_bit(v6, b as u8);
            words[w as usize] |= bit;
        }
    }
    words
}

fn replace_trie<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: Vec<(Key<K>, V)>,
) -> anyhow::Result<()> {
    let mut trie: LpmTrie<_, K, V> =
        LpmTrie::try_from(ebpf.map_mut(name).ok_or_else(|| anyhow!("no {name} map"))?)?;
    let old: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
    let key_bytes = |k: &Key<K>| -> Vec<u8> {
        // SAFETY: Key<K> is plain old data (K: Pod), read as bytes for comparison only.
        unsafe {
            std::slice::from_raw_parts(
                k as *const Key<K> as *const u8,
                std::mem::size_of::<Key<K>>(),
            )
            .to_vec()
        }
    };
    let new: std::collections::HashSet<Vec<u8>> =
        entries.iter().map(|(k, _)| key_bytes(k)).collect();
    for (k, v) in &entries {
        trie.insert(k, v, 0)
            .with_context(|| format!("updating {name}"))?;
    }
    for k in old.iter().filter(|k| !new.contains(&key_bytes(k))) {
        trie.remove(k).with_context(|| format!("updating {name}"))?;
    }
    Ok(())
}

/// Reads the kernel's map of watched processes (one bpf syscall per lookup, no lock).
pub struct WatchedReader(BpfHashMap<MapData, u32, Watch>);

impl WatchedReader {
    /// The session of a watched process.
    pub fn session_of(&self, tgid: u32) -> Option<u64> {
        self.0.get(&tgid, 0).ok().map(|w| w.session_id)
    }
}

/// Hook types for the syscall programs, compared by the benchmark's floors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallHooks {
    /// One `syscalls:sys_exit_*` tracepoint per syscall (what the watcher uses).
    Classic,
    /// One BTF tracepoint on `sys_exit`, run for every syscall.
    TpBtf,
    /// One raw tracepoint on `sys_exit`, run for every syscall.
    RawTp,
}

/// The root of the cgroup v2 hierarchy, where the connect programs attach, and its path.
fn open_cgroup2_root() -> anyhow::Result<(PathBuf, std::fs::File)> {
    let root = cgroup2_root().ok_or_else(|| {
        anyhow!("cgroup v2: no cgroup2 file system is mounted (needed to refuse connects in the kernel)")
    })?;
    let cgroup = std::fs::File::open(&root)
        .with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
    Ok((root, cgroup))
}

/// Loads (verifies) the raw tracepoint program `prog`.
fn load_raw(ebpf: &mut Ebpf, prog: &str) -> anyhow::Result<()> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
        .try_into()?;
    p.load()
        .with_context(|| format!("verifier rejected {prog}"))
}

/// Attaches the loaded raw tracepoint program `prog` to `tracepoint`, pinned if pinning.
fn attach_loaded_raw(
    ebpf: &mut Ebpf,
    prog: &str,
    tracepoint: &str,
    pins: Option<&Pins>,
) -> anyhow::Result<()> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
        .try_into()?;
    let id = p
        .attach(tracepoint)
        .with_context(|| format!("attaching {prog} to {tracepoint}"))?;
    if let Some(pins) = pins {
        pins.pin(prog, FdLink::from(p.take_link(id)?))?;
    }
    Ok(())
}

/// Says whether the io_uring op hook is attached (or missing: nothing to wait for), for the
/// io_uring setup hook, which stops a watched ring's process until it is.
fn set_uring_ops_on(ebpf: &mut Ebpf, on: bool) -> anyhow::Result<()> {
    let mut a: aya::maps::Array<_, u32> = aya::maps::Array::try_from(
        ebpf.map_mut("URING_OPS_ON")
            .ok_or_else(|| anyhow!("no URING_OPS_ON map"))?,
    )?;
    a.set(0, u32::from(on), 0).context("setting URING_OPS_ON")
}

/// Attaches the two cgroup connect programs to the root of the cgroup v2 hierarchy.
fn attach_connect_programs(
    ebpf: &mut Ebpf,
    progs: &[&str],
    pins: Option<&Pins>,
) -> anyhow::Result<()> {
    let (root, cgroup) = open_cgroup2_root()?;
    for &prog in progs {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
            .try_into()?;
        p.load()
            .with_context(|| format!("verifier rejected {prog}"))?;
        // A bpf_link (5.7+) always coexists with other programs; it takes no mode flags.
        let id = p
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {prog} to {}", root.display()))?;
        if let Some(pins) = pins {
            pins.pin(prog, FdLink::try_from(p.take_link(id)?)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, prefix: bool) -> PathEntry {
        PathEntry {
            path: path.to_string(),
            prefix,
            intent: 0,
            action: KernelAction::Mark,
            rule: "r".to_string(),
        }
    }

    /// What the kernel programs ask of the filter for an absolute path.
    fn admits(words: &[u64], path: &str) -> bool {
        let b = path.as_bytes();
        let (w, bit) = path_filter_bit(
            b.get(1).copied().unwrap_or(0),
            b.get(2).copied().unwrap_or(0),
        );
        words[w as usize] & bit != 0
    }

    #[test]
    fn the_path_filter_admits_every_path_an_entry_matches_and_few_others() {
        let paths = [
            "/",
            "/e",
            "/et",
            "/etc/shadow",
            "/etc/passwd",
            "/etcetera",
            "/root/.ssh/id_rsa",
            "/usr/lib/libc.so.6",
            "/tmp/x",
            "/home/a/.aws/credentials",
            "/x",
        ];
        let cases: [(&[PathEntry], &[&str]); 4] = [
            (
                &[entry("/etc/shadow", false), entry("/root/.ssh/", true)],
                &[
                    "/et",
                    "/etc/shadow",
                    "/etc/passwd",
                    "/etcetera",
                    "/root/.ssh/id_rsa",
                ],
            ),
            (&[entry("/e", false)], &["/e"]),
            (
                &[entry("/e", true)],
                &["/e", "/et", "/etc/shadow", "/etc/passwd", "/etcetera"],
            ),
            (&[entry("/", true)], &paths),
        ];
        for (entries, admitted) in cases {
            let words = path_filter(entries);
            for p in paths {
                let matched = entries.iter().any(|e| {
                    if e.prefix {
                        p.starts_with(&e.path)
                    } else {
                        p == e.path
                    }
                });
                assert!(
                    !matched || admits(&words, p),
                    "{p} matches {entries:?} but is filtered out"
                );
                assert_eq!(
                    admits(&words, p),
                    admitted.contains(&p),
                    "{p} with {entries:?}"
                );
            }
        }
        assert!(path_filter(&[]).iter().all(|w| *w == 0));
    }

    #[test]
    fn the_net_filter_admits_the_first_bytes_each_network_covers() {
        let deny = |nets: &[&str]| -> Vec<NetEntry> {
            nets.iter()
                .map(|n| NetEntry {
                    net: n.parse().unwrap(),
                    ports: (0, 65535),
                    rule: "r".to_string(),
                })
                .collect()
        };
        let admitted = |words: &[u64], v6: bool| -> Vec<u8> {
            (0..=255u8)
                .filter(|b| {
                    let (w, bit) = net_filter_bit(v6, *b);
                    words[w as usize] & bit != 0
                })
                .collect()
        };
        let w = net_filter(&deny(&[
            "169.254.169.254/32",
            "10.0.0.0/8",
            "224.0.0.0/4",
            "fd00::/8",
        ]));
        let mut v4 = vec![10, 169];
        v4.extend(224..=239);
        assert_eq!(admitted(&w, false), v4);
        assert_eq!(admitted(&w, true), [0xfd]);
        let w = net_filter(&deny(&["0.0.0.0/0", "fe80::/10"]));
        assert_eq!(admitted(&w, false).len(), 256);
        assert_eq!(admitted(&w, true), [0xfe]);
        assert!(net_filter(&[]).iter().all(|w| *w == 0));
    }
}
