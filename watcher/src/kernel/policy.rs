//! The part of a policy the kernel decides alone, as the kernel maps take it. The rules layer
//! compiles it (`rules::kernel`); the loader writes it into the fast-path maps.
use ipnet::IpNet;
use watcher_common::{FastNet, FAST_NET_RANGES};

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

/// The deny list as the kernel's tries hold it: one value per network, with the port ranges
/// of every entry whose network covers it (the trie answers with the longest prefix only,
/// so a value must refuse what the shorter networks refuse too), merged where they meet.
/// Over `FAST_NET_RANGES` ranges, the two nearest are joined (refusing the ports between
/// them too: fail closed), and the network is named in the second value.
pub fn deny_values(deny: &[NetEntry]) -> (Vec<(IpNet, FastNet)>, Vec<IpNet>) {
    let mut nets: Vec<IpNet> = deny.iter().map(|e| e.net.trunc()).collect();
    nets.sort();
    nets.dedup();
    let mut widened = Vec::new();
    let out = nets
        .into_iter()
        .map(|net| {
            let mut ranges: Vec<(u16, u16)> = deny
                .iter()
                .filter(|e| e.net.trunc().contains(&net))
                .map(|e| e.ports)
                .collect();
            ranges.sort();
            let mut merged: Vec<(u16, u16)> = Vec::new();
            for (lo, hi) in ranges {
                match merged.last_mut() {
                    Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                    _ => merged.push((lo, hi)),
                }
            }
            if merged.len() > FAST_NET_RANGES {
                widened.push(net);
            }
            while merged.len() > FAST_NET_RANGES {
                let i = (0..merged.len() - 1)
                    .min_by_key(|i| merged[i + 1].0 - merged[*i].1)
                    .unwrap_or(0);
                merged[i].1 = merged[i + 1].1;
                merged.remove(i + 1);
            }
            let mut v = FastNet::default();
            for (slot, (lo, hi)) in v.ranges.iter_mut().zip(&merged) {
                *slot = [*lo, *hi];
            }
            v.n = merged.len() as u32;
            (net, v)
        })
        .collect();
    (out, widened)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(net: &str, ports: (u16, u16)) -> NetEntry {
        NetEntry {
            net: net.parse().unwrap(),
            ports,
            rule: "r".into(),
        }
    }

    fn ranges(v: &FastNet) -> Vec<(u16, u16)> {
        v.ranges[..v.n as usize]
            .iter()
            .map(|r| (r[0], r[1]))
            .collect()
    }

    #[test]
    fn rules_on_one_network_or_inside_it_all_refuse() {
        let deny = [
            entry("127.0.0.0/8", (2375, 2376)),
            entry("127.0.0.0/8", (22, 22)),
            entry("127.0.0.1/32", (10250, 10250)),
            entry("127.0.0.0/8", (2376, 2380)),
            entry("10.0.0.0/8", (0, 65535)),
        ];
        let (values, widened) = deny_values(&deny);
        assert!(widened.is_empty());
        let of = |n: &str| {
            let n: IpNet = n.parse().unwrap();
            ranges(&values.iter().find(|(k, _)| *k == n).unwrap().1)
        };
        assert_eq!(values.len(), 3);
        assert_eq!(of("127.0.0.0/8"), vec![(22, 22), (2375, 2380)]);
        // The longer prefix, which the trie answers for 127.0.0.1, refuses the /8's ports too.
        assert_eq!(
            of("127.0.0.1/32"),
            vec![(22, 22), (2375, 2380), (10250, 10250)]
        );
        assert_eq!(of("10.0.0.0/8"), vec![(0, 65535)]);
    }

    #[test]
    fn too_many_ranges_join_the_nearest_and_say_so() {
        let deny: Vec<_> = (0..10u16)
            .map(|i| entry("::1/128", (i * 100, i * 100 + (i == 3) as u16 * 40)))
            .collect();
        let (values, widened) = deny_values(&deny);
        assert_eq!(widened, vec!["::1/128".parse::<IpNet>().unwrap()]);
        let r = ranges(&values[0].1);
        assert_eq!(r.len(), FAST_NET_RANGES);
        // Every port asked is still refused.
        for i in 0..10u16 {
            assert!(
                r.iter().any(|(lo, hi)| *lo <= i * 100 && i * 100 <= *hi),
                "{i}: {r:?}"
            );
        }
    }
}
