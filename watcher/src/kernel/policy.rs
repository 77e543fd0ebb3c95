//! The part of a policy the kernel decides alone, as the kernel maps take it. The rules layer
//! compiles it (`rules::kernel`); the loader writes it into the fast-path maps.
use ipnet::IpNet;

/// What the kernel does when a fast-path entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelAction {
    /// Flag the record only (holds, when the daemon runs with holds disabled).
    Mark,
    /// SIGSTOP at the hook; the daemon freezes the session and opens a hold.
    Stop,
    Kill,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathEntry {
    pub path: String,
    /// A prefix (`/dir/` or `/dir/name_`) rather than one exact path.
    pub prefix: bool,
    /// `watcher_common::INTENT_*` bits the open must have one of (0: any open).
    pub intent: u32,
    pub action: KernelAction,
    pub rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetEntry {
    pub net: IpNet,
    pub ports: (u16, u16),
    pub rule: String,
}

/// An event kind the kernel kills on whatever it names (`FAST_KIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindEntry {
    Module,
    Bpf,
}

impl KindEntry {
    pub fn event_kind(self) -> watcher_common::EventKind {
        match self {
            KindEntry::Module => watcher_common::EventKind::Module,
            KindEntry::Bpf => watcher_common::EventKind::Bpf,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelPolicy {
    pub exec: Vec<PathEntry>,
    pub open: Vec<PathEntry>,
    pub deny: Vec<NetEntry>,
    /// Kill on every event of the kind, with the rule that asks it.
    pub kinds: Vec<(KindEntry, String)>,
}

impl KernelPolicy {
    pub fn has_rule(&self, id: &str) -> bool {
        self.exec.iter().chain(&self.open).any(|e| e.rule == id)
            || self.deny.iter().any(|e| e.rule == id)
            || self.kinds.iter().any(|(_, r)| r == id)
    }
}

/// Two open-intent masks of one entry together (0 stands for any open, so it absorbs).
pub fn merge_intent(a: u32, b: u32) -> u32 {
    if a == 0 || b == 0 {
        0
    } else {
        a | b
    }
}

/// One entry of a gate trie: a key (a process name, a path prefix, or a path tail written
/// forwards; the loader reverses tails), the kinds it gates and, for opens, the intents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateEntry {
    pub key: String,
    /// A prefix of the looked-up key rather than all of it.
    pub prefix: bool,
    /// `watcher_common::GATE_*` bits.
    pub kinds: u32,
    /// `watcher_common::INTENT_*` bits an open must have one of (0: any open).
    pub intent: u32,
}

/// The events user space must decide before they take effect, as the kernel's gate maps take
/// them (see `rules::gate`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GateSet {
    /// By process name (`comm`).
    pub comm: Vec<GateEntry>,
    /// By absolute path prefix (opens).
    pub prefix: Vec<GateEntry>,
    /// By the tail of the path or of its directory (opens).
    pub suffix: Vec<GateEntry>,
    /// Kinds gated whatever they name, and the open intents of that (0: any).
    pub all: u32,
    pub all_intent: u32,
    /// Execs through a descriptor (`/dev/fd/N`, `/proc/…/fd/N`), which may run a memfd.
    pub fileless: bool,
}
