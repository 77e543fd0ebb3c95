//! The part of a policy the kernel can decide alone, at the hook, before the process runs
//! another instruction: enforce-mode `hold`/`kill` rules whose whole condition is an exec of
//! given paths, an open of given paths or path prefixes, or a connect to given networks and
//! ports. Everything else is decided in user space.

pub use crate::kernel::policy::{KernelAction, KernelPolicy, KindEntry, NetEntry, PathEntry};

use super::{
    eval::{Cond, Policy, Slot},
    syntax::{Action, Intent, Kind, Mode},
};

/// Directories an executable named without a path is looked for in.
const BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];
/// Event-kind bits of the rule language (`Cond::Kind`) that the kernel parts act on.
pub(crate) const EXEC: u32 = 1 << Kind::Exec as u32;
pub(crate) const OPEN: u32 = 1 << Kind::Open as u32;
pub(crate) const CONNECT: u32 = 1 << Kind::Connect as u32;
/// Kinds the kernel can kill on alone (`FAST_KIND`): a rule that names nothing else.
const MODULE: u32 = 1 << Kind::Module as u32;
const BPF: u32 = 1 << Kind::Bpf as u32;

impl KernelPolicy {
    /// `holds`: whether a hold stops the process (the daemon runs holds) or only marks it.
    pub fn of(policy: &Policy, holds: bool) -> KernelPolicy {
        let mut kp = KernelPolicy::default();
        for r in &policy.rules {
            if r.mode != Mode::Enforce || r.action == Action::Alert || r.count.is_some() {
                continue;
            }
            if let (Some(Cond::Kind(m)), Action::Kill) = (&r.cond, r.action) {
                if *m & !(MODULE | BPF) == 0 {
                    for (bit, kind) in [(MODULE, KindEntry::Module), (BPF, KindEntry::Bpf)] {
                        if m & bit != 0 {
                            kp.kinds.push((kind, r.id.clone()));
                        }
                    }
                }
                continue;
            }
            let Some(Cond::All(parts)) = &r.cond else {
                continue;
            };
            let action = match r.action {
                Action::Kill => KernelAction::Kill,
                _ if holds => KernelAction::Stop,
                _ => KernelAction::Mark,
            };
            match parts.as_slice() {
                [Cond::Kind(EXEC), Cond::Glob {
                    slot: Slot::Exe,
                    ids,
                }] => {
                    let pats: Vec<&str> = ids
                        .iter()
                        .map(|i| policy.sets.patterns[Slot::Exe as usize][*i].as_str())
                        .collect();
                    if let Some(paths) = exec_paths(&pats) {
                        kp.exec.extend(paths.into_iter().map(|path| PathEntry {
                            path,
                            prefix: false,
                            intent: 0,
                            action,
                            rule: r.id.clone(),
                        }));
                    }
                }
                [Cond::Kind(OPEN), Cond::Glob {
                    slot: Slot::Path,
                    ids,
                }]
                | [Cond::Kind(OPEN), Cond::Intent(_), Cond::Glob {
                    slot: Slot::Path,
                    ids,
                }] => {
                    let intent = match parts.as_slice() {
                        [_, Cond::Intent(m), _] => intent_bits(*m),
                        _ => 0,
                    };
                    let pats: Vec<&str> = ids
                        .iter()
                        .map(|i| policy.sets.patterns[Slot::Path as usize][*i].as_str())
                        .collect();
                    if let Some(entries) = open_prefixes(&pats) {
                        kp.open
                            .extend(entries.into_iter().map(|(path, prefix)| PathEntry {
                                path,
                                prefix,
                                intent,
                                action,
                                rule: r.id.clone(),
                            }));
                    }
                }
                [Cond::Kind(CONNECT), rest @ ..] => {
                    let (mut nets, mut ports) = (None, None);
                    let mut ok = true;
                    for c in rest {
                        match c {
                            Cond::Addr(n) => nets = Some(n.clone()),
                            Cond::Port(p) => ports = Some(p.clone()),
                            _ => ok = false,
                        }
                    }
                    if !ok || (nets.is_none() && ports.is_none()) {
                        continue;
                    }
                    let nets = nets.unwrap_or_else(|| {
                        vec![
                            "0.0.0.0/0".parse().expect("net"),
                            "::/0".parse().expect("net"),
                        ]
                    });
                    let ports = ports.unwrap_or_else(|| vec![(0, 65535)]);
                    for net in nets {
                        for p in &ports {
                            kp.deny.push(NetEntry {
                                net,
                                ports: *p,
                                rule: r.id.clone(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        kp
    }
}

/// The rule language's intent mask (bit = `Intent as u8`) as the kernel's `INTENT_*` bits.
pub(crate) fn intent_bits(m: u8) -> u32 {
    use watcher_common::{INTENT_CREATE, INTENT_READ, INTENT_TRUNCATE, INTENT_WRITE};
    [
        (Intent::Read, INTENT_READ),
        (Intent::Write, INTENT_WRITE),
        (Intent::Create, INTENT_CREATE),
        (Intent::Truncate, INTENT_TRUNCATE),
    ]
    .iter()
    .filter(|(i, _)| m & (1 << *i as u8) != 0)
    .fold(0, |acc, (_, b)| acc | b)
}

/// A glob's special characters.
pub(crate) fn is_wild(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\')
}

fn is_literal(s: &str) -> bool {
    !s.contains(is_wild)
}

/// Exact executable paths, or None when a pattern is not a plain path or name.
fn exec_paths(pats: &[&str]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for p in pats {
        if let Some(name) = p.strip_prefix("**/") {
            if !is_literal(name) || name.contains('/') {
                return None;
            }
            out.extend(BIN_DIRS.iter().map(|d| format!("{d}/{name}")));
        } else if is_literal(p) && p.starts_with('/') {
            out.push(p.to_string());
        } else {
            return None;
        }
    }
    Some(out)
}

/// (path, is_prefix) for patterns that are a literal path, or a literal prefix followed by a
/// final `*` or `**`. `/home/*/` (a `~/` pattern) becomes each existing home directory.
fn open_prefixes(pats: &[&str]) -> Option<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for p in pats {
        for e in through_homes(p) {
            if is_literal(&e) {
                out.push((e, false));
            } else if let Some(pre) = e.strip_suffix("**").or_else(|| e.strip_suffix('*')) {
                if !is_literal(pre) {
                    return None;
                }
                out.push((pre.to_string(), true));
            } else {
                return None;
            }
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// A pattern with `/home/*/` (a `~/` pattern) made into one per existing home directory.
pub(crate) fn through_homes(p: &str) -> Vec<String> {
    match p.strip_prefix("/home/*/") {
        Some(rest) => home_dirs()
            .iter()
            .map(|h| format!("{}/{rest}", h.trim_end_matches('/')))
            .collect(),
        None => vec![p.to_string()],
    }
}

/// The directories under /home now (what `/home/*/` stands for in a kernel map).
pub(crate) fn home_dirs() -> Vec<String> {
    std::fs::read_dir("/home")
        .map(|rd| {
            rd.filter_map(|e| Some(e.ok()?.path().to_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default()
}
