//! The gate: a conservative superset of the events any enforce-mode `hold` or `kill` rule
//! could match, compiled into kernel maps so that the kernel stops such an event at its hook
//! and user space decides it before it takes effect. Rules the kernel decides alone (the fast
//! paths) and `alert` or monitor-mode rules gate nothing.
//!
//! Per rule and event kind, the set is anchored on what the kernel can test cheaply:
//! - exec and connect: the process name, from `exe:` patterns (their basenames);
//! - open: the path's literal tail (`/.aws/credentials`, `/.git/config`), the literal tail of
//!   its directory (`/.ssh/`, `/.git/hooks/`), or, for a pattern that spans directories
//!   (`~/.config/systemd/user/**`), its literal prefix; else the process name; with the rule's
//!   intents.
//!
//! A rule with no such anchor gates every event of its kind (logged at load). A sequence gates
//! its last step; when that step has no anchor, it gates its first step instead, and the
//! session's events of the next step's kind are gated while the sequence is under way
//! (`GatePlan::dynamic`, `step_kinds`).
use watcher_common::{
    GATE_BPF, GATE_CHMOD_SETID, GATE_CHOWN, GATE_COMM_LEN, GATE_CONNECT, GATE_EXEC, GATE_IO_URING,
    GATE_MODULE, GATE_MOUNT, GATE_OPEN, GATE_SETID, GATE_SUFFIX_MAX, GATE_UNLINK,
    GATE_UNLINK_SAMPLE, INTENT_CONNECT, INTENT_CREATE, INTENT_NAME, INTENT_TRUNCATE, INTENT_WRITE,
};

pub use crate::kernel::policy::{GateEntry, GateSet};

use super::{
    eval::{Cond, Policy, Rule, Sequence, Slot},
    kernel::{intent_bits, is_wild, through_homes, CONNECT, EXEC, OPEN},
    syntax::{Action, Kind, Mode},
};
use crate::kernel::policy::{merge_intent, KernelPolicy};

/// The gate of a policy: the kernel's part, and which sequence rules gate their next steps
/// per session.
#[derive(Debug, Default, Clone)]
pub struct GatePlan {
    pub set: GateSet,
    /// By rule index: a sequence whose later steps are gated per session while under way.
    pub dynamic: Vec<bool>,
    /// (rule, kind) pairs that gate every event of the kind.
    pub unanchored: Vec<(String, &'static str)>,
    /// The open-path patterns of the gated rules: the files and directories they name are
    /// gated by identity too (`sys::files::named`).
    pub named: Vec<Named>,
    /// The rare kinds gated whole (`GATE_CHMOD_SETID`, `GATE_CHOWN`, ...).
    pub rare: u32,
}

/// An open-path pattern of a gated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub pattern: String,
    /// `watcher_common::INTENT_*` bits (0: any open).
    pub intent: u32,
    /// The rule kills (no question is asked).
    pub kill: bool,
}

/// What a condition can match, per kind.
#[derive(Debug, Clone, Default)]
struct Cover {
    exec: Anchor,
    open: Anchor,
    connect: Anchor,
}

#[derive(Debug, Clone, Default)]
enum Anchor {
    /// Matches no event of the kind.
    #[default]
    Nothing,
    Items(Vec<Item>),
    /// Any event of the kind (opens: with one of these intents, 0: any).
    Every(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// A process name, or a name prefix.
    Comm {
        name: String,
        prefix: bool,
        intent: u32,
    },
    PathPrefix {
        path: String,
        exact: bool,
        intent: u32,
    },
    /// The tail of the path, or (ending in `/`) of the path's directory.
    Tail { text: String, intent: u32 },
    /// An exec through a descriptor (`fileless: true`).
    Fileless,
}

impl Anchor {
    fn is_every(&self) -> bool {
        matches!(self, Anchor::Every(_))
    }

    /// Without "any event of the kind".
    fn bounded(self) -> Anchor {
        if self.is_every() {
            Anchor::Nothing
        } else {
            self
        }
    }

    fn union(self, other: Anchor) -> Anchor {
        match (self, other) {
            (Anchor::Nothing, a) | (a, Anchor::Nothing) => a,
            (Anchor::Every(a), Anchor::Every(b)) => Anchor::Every(merge_intent(a, b)),
            (Anchor::Every(a), _) | (_, Anchor::Every(a)) => Anchor::Every(a),
            (Anchor::Items(mut a), Anchor::Items(b)) => {
                a.extend(b);
                Anchor::Items(a)
            }
        }
    }
}

impl Cover {
    fn every(kinds: u32, intent: u32) -> Cover {
        let a = |k: u32| {
            if kinds & k != 0 {
                Anchor::Every(if k == OPEN { intent } else { 0 })
            } else {
                Anchor::Nothing
            }
        };
        Cover {
            exec: a(EXEC),
            open: a(OPEN),
            connect: a(CONNECT),
        }
    }

    /// Whether every kind is named by something the kernel can test (or not matched at all).
    fn is_bounded(&self) -> bool {
        !(self.exec.is_every() || self.open.is_every() || self.connect.is_every())
    }

    fn bounded(self) -> Cover {
        Cover {
            exec: self.exec.bounded(),
            open: self.open.bounded(),
            connect: self.connect.bounded(),
        }
    }

    fn union(self, o: Cover) -> Cover {
        Cover {
            exec: self.exec.union(o.exec),
            open: self.open.union(o.open),
            connect: self.connect.union(o.connect),
        }
    }
}

impl GatePlan {
    /// `holds`: whether the daemon runs holds (without, only `kill` rules gate).
    pub fn of(policy: &Policy, kernel: &KernelPolicy, holds: bool) -> GatePlan {
        let mut plan = GatePlan {
            dynamic: vec![false; policy.rules.len()],
            ..Default::default()
        };
        let mut cover = Cover::default();
        for (i, r) in policy.rules.iter().enumerate() {
            if !gates(r, holds) {
                continue;
            }
            let first_named = plan.named.len();
            let c = match (&r.cond, &r.sequence) {
                // The fast path matches the name; its files are gated by identity too, so that
                // another name for them is decided in user space.
                (Some(cond), _) if kernel.has_rule(&r.id) => {
                    superset(cond, policy, &mut plan.named);
                    None
                }
                (Some(cond), _) => Some(superset(cond, policy, &mut plan.named)),
                (None, Some(seq)) => {
                    let (c, dynamic) =
                        sequence_cover(seq, r.reverse.is_some(), policy, &mut plan.named);
                    plan.dynamic[i] = dynamic;
                    Some(c)
                }
                (None, None) => None,
            };
            for n in &mut plan.named[first_named..] {
                n.kill = r.action == Action::Kill;
            }
            if !kernel.has_rule(&r.id) {
                plan.rare |= rare_kinds(r);
            }
            // A count's later events are gated per scope while it counts; for deletes, which
            // no hook can name by path, every `UNLINK_SAMPLE`th is gated until it counts.
            plan.dynamic[i] |= r.count.is_some();
            if r.count.is_some() && step_kinds(r, false, 0) & GATE_UNLINK != 0 {
                plan.rare |= GATE_UNLINK_SAMPLE;
            }
            let Some(c) = c else { continue };
            for (name, a) in [
                ("exec", &c.exec),
                ("open", &c.open),
                ("connect", &c.connect),
            ] {
                if a.is_every() {
                    plan.unanchored.push((r.id.clone(), name));
                }
            }
            cover = cover.union(c);
        }
        plan.set = build(cover, &plan.named);
        plan.set.all |= plan.rare;
        plan
    }
}

/// The `GATE_*` bits of the rare kinds a gated rule can match (gated whole: they are few). A
/// chmod is gated only when it sets the setuid or setgid bit, and only for rules that ask for
/// no other bits; other chmods, and unlink, rename, link and truncate, which builds do by the
/// thousand, are decided after the effect.
fn rare_kinds(r: &Rule) -> u32 {
    let conds: Vec<&Cond> = match (&r.cond, &r.sequence) {
        (Some(c), _) => vec![c],
        (None, Some(seq)) => seq.steps.iter().map(|st| &st.cond).collect(),
        _ => Vec::new(),
    };
    let mut bits = 0;
    for c in conds {
        let k = c.kinds();
        let parts = match c {
            Cond::All(v) => v.as_slice(),
            c => std::slice::from_ref(c),
        };
        let setid_only = parts.iter().any(|p| {
            matches!(p, Cond::Mode(masks) if masks.iter().all(|m| m & 0o6000 != 0 && m & !0o6000 == 0))
        });
        for (kind, bit) in [
            (Kind::Chown, GATE_CHOWN),
            (Kind::Setid, GATE_SETID),
            (Kind::Mount, GATE_MOUNT),
            (Kind::Bpf, GATE_BPF),
            (Kind::Module, GATE_MODULE),
            (Kind::IoUring, GATE_IO_URING),
        ] {
            if k & (1 << kind as u32) != 0 {
                bits |= bit;
            }
        }
        if k & (1 << Kind::Chmod as u32) != 0 && setid_only {
            bits |= GATE_CHMOD_SETID;
        }
    }
    bits
}

/// What a sequence can match at the steps that decide it: each direction's last step (for
/// `order: any`, the first is the other's last). A last step that names nothing gates the
/// start instead (true: the session's next steps are then gated while it is under way).
fn sequence_cover(
    seq: &Sequence,
    any_order: bool,
    policy: &Policy,
    named: &mut Vec<Named>,
) -> (Cover, bool) {
    let mut lasts = vec![seq.steps.len() - 1];
    if any_order {
        lasts.push(0);
    }
    let mut cover = Cover::default();
    let mut dynamic = false;
    for last in lasts {
        let mut step = superset(&seq.steps[last].cond, policy, named);
        if !step.is_bounded() {
            dynamic = true;
            let first = if last == 0 { seq.steps.len() - 1 } else { 0 };
            step = step
                .bounded()
                .union(superset(&seq.steps[first].cond, policy, named));
        }
        cover = cover.union(step);
    }
    (cover, dynamic)
}

/// Whether a rule's matches must be decided before they take effect.
fn gates(r: &Rule, holds: bool) -> bool {
    r.mode == Mode::Enforce && (r.action == Action::Kill || (holds && r.action == Action::Hold))
}

/// The `GATE_*` kinds of the step a sequence waits for next (0: none the gate knows).
pub fn step_kinds(r: &Rule, reversed: bool, next: usize) -> u32 {
    if let (Some(c), Some(_)) = (&r.cond, &r.count) {
        // A count: the next event it counts, of whichever kind.
        let k = c.kinds();
        return [
            (EXEC, GATE_EXEC),
            (OPEN, GATE_OPEN),
            (CONNECT, GATE_CONNECT),
            (1 << Kind::Unlink as u32, GATE_UNLINK),
        ]
        .iter()
        .filter(|(b, _)| k & b != 0)
        .fold(0, |m, (_, g)| m | g);
    }
    let seq = if reversed { &r.reverse } else { &r.sequence };
    let Some(step) = seq.as_ref().and_then(|s| s.steps.get(next)) else {
        return 0;
    };
    let k = step.cond.kinds();
    [
        (EXEC, GATE_EXEC),
        (OPEN, GATE_OPEN),
        (CONNECT, GATE_CONNECT),
    ]
    .iter()
    .filter(|(b, _)| k & b != 0)
    .fold(0, |m, (_, g)| m | g)
}

/// What `cond` can match, per kind: a superset.
fn superset(cond: &Cond, policy: &Policy, named: &mut Vec<Named>) -> Cover {
    match cond {
        Cond::Kind(m) => Cover::every(*m, 0),
        Cond::Any(v) => v
            .iter()
            .map(|c| superset(c, policy, named))
            .fold(Cover::default(), Cover::union),
        Cond::All(parts) => {
            let kinds = cond.kinds();
            let intent = parts
                .iter()
                .filter_map(|c| match c {
                    Cond::Intent(m) => Some(intent_bits(*m)),
                    _ => None,
                })
                .fold(0, |a, b| if a == 0 { b } else { a & b });
            let names = parts.iter().find_map(|c| match c {
                Cond::Glob {
                    slot: slot @ (Slot::Exe | Slot::Comm),
                    ids,
                } => comm_items(policy, *slot, ids, intent),
                _ => None,
            });
            let paths = parts.iter().find_map(|c| match c {
                Cond::Glob {
                    slot: Slot::Path,
                    ids,
                } => {
                    // Named by identity only where the gate's open hooks look for them: a
                    // chown's `/tmp/**` is no reason to stop every file made in /tmp.
                    if kinds & OPEN != 0 {
                        let pats = &policy.sets.patterns[Slot::Path as usize];
                        named.extend(ids.iter().map(|i| Named {
                            pattern: pats[*i].clone(),
                            intent,
                            kill: false,
                        }));
                    }
                    path_items(policy, Slot::Path, ids, intent)
                }
                _ => None,
            });
            // A unix socket's path: the gate's path tables, for connects.
            let sockets = parts.iter().find_map(|c| match c {
                Cond::Glob {
                    slot: Slot::Unix,
                    ids,
                } => path_items(policy, Slot::Unix, ids, INTENT_CONNECT),
                _ => None,
            });
            let fileless = parts
                .iter()
                .any(|c| matches!(c, Cond::Fileless(true)))
                .then(|| vec![Item::Fileless]);
            let pick = |k: u32, a: Option<&Vec<Item>>| {
                if kinds & k == 0 {
                    Anchor::Nothing
                } else if let Some(items) = a {
                    Anchor::Items(items.clone())
                } else {
                    Anchor::Every(if k == OPEN { intent } else { 0 })
                }
            };
            Cover {
                exec: pick(EXEC, fileless.as_ref().or(names.as_ref())),
                open: pick(OPEN, paths.as_ref().or(names.as_ref())),
                connect: pick(CONNECT, sockets.as_ref().or(names.as_ref())),
            }
        }
        // A negation, a parent or an ancestor says nothing about the event's own fields.
        _ => Cover::every(EXEC | OPEN | CONNECT, 0),
    }
}

/// Process-name items for executable patterns, or None when one has no literal name start.
fn comm_items(policy: &Policy, slot: Slot, ids: &[usize], intent: u32) -> Option<Vec<Item>> {
    let max = GATE_COMM_LEN - 1;
    ids.iter()
        .map(|i| {
            let p = policy.sets.patterns[slot as usize][*i].as_str();
            let base = if slot == Slot::Exe {
                p.rsplit('/').next().unwrap_or(p)
            } else {
                p
            };
            let lit: String = base.chars().take_while(|c| !is_wild(*c)).collect();
            let whole = lit.len() == base.len();
            if lit.is_empty() {
                return None;
            }
            // The kernel keeps the first 15 bytes of a name.
            let cut = lit.len() > max;
            let name = if cut {
                lit[..floor_char(&lit, max)].to_string()
            } else {
                lit
            };
            Some(Item::Comm {
                name,
                prefix: !whole || cut,
                intent,
            })
        })
        .collect()
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Path items for open-path patterns, or None when one has no usable literal part.
fn path_items(policy: &Policy, slot: Slot, ids: &[usize], intent: u32) -> Option<Vec<Item>> {
    let mut out = Vec::new();
    for i in ids {
        out.extend(path_item(&policy.sets.patterns[slot as usize][*i], intent)?);
    }
    Some(out)
}

fn path_item(p: &str, intent: u32) -> Option<Vec<Item>> {
    let tail = |t: &str| Item::Tail {
        text: last_bytes(t, GATE_SUFFIX_MAX),
        intent,
    };
    let Some(last_wild) = p.rfind(is_wild) else {
        return Some(vec![tail(p)]);
    };
    let slash = p.rfind('/')?;
    let (dir, base) = (&p[..=slash], &p[slash + 1..]);
    if !base.contains(is_wild) {
        return Some(vec![tail(&p[last_wild + 1..])]);
    }
    if !base.contains("**") {
        let dtail = match dir.rfind(is_wild) {
            Some(w) => &dir[w + 1..],
            None => dir,
        };
        if dtail.len() >= 3 {
            return Some(vec![tail(dtail)]);
        }
        let btail = &base[base.rfind(is_wild)? + 1..];
        if btail.len() >= 2 {
            return Some(vec![tail(btail)]);
        }
    }
    // Spans directories: a literal prefix, through each home for `/home/*/`.
    let mut out = Vec::new();
    for e in through_homes(p) {
        let first = e.find(is_wild).unwrap_or(e.len());
        let lit = &e[..first];
        // The prefix must name the directory the pattern spans, not a parent of it.
        if !lit.starts_with('/') || lit.len() < 2 || e[..first].matches('/').count() < 2 {
            return None;
        }
        out.push(Item::PathPrefix {
            path: lit.to_string(),
            exact: first == e.len(),
            intent,
        });
    }
    Some(out)
}

fn last_bytes(s: &str, n: usize) -> String {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// The maps' entries for a cover: equal keys merged, and every entry widened by the prefix
/// entries that cover it, because a trie lookup returns only the longest match.
fn build(c: Cover, named: &[Named]) -> GateSet {
    let mut set = GateSet::default();
    let mut add_every = |kind: u32, a: &Anchor| {
        if let Anchor::Every(intent) = a {
            if kind == GATE_OPEN {
                set.all_intent = if set.all & GATE_OPEN != 0 {
                    merge_intent(set.all_intent, *intent)
                } else {
                    *intent
                };
            }
            set.all |= kind;
        }
    };
    add_every(GATE_EXEC, &c.exec);
    add_every(GATE_OPEN, &c.open);
    add_every(GATE_CONNECT, &c.connect);
    // (list, key, prefix, kinds, open intent or None)
    let mut comm: Vec<(String, bool, u32, Option<u32>)> = Vec::new();
    let mut prefix = Vec::new();
    let mut suffix = Vec::new();
    for (kind, a) in [
        (GATE_EXEC, c.exec),
        (GATE_OPEN, c.open),
        (GATE_CONNECT, c.connect),
    ] {
        let Anchor::Items(items) = a else { continue };
        for it in items {
            match it {
                Item::Comm {
                    name,
                    prefix: p,
                    intent,
                } => comm.push((name, p, kind, (kind == GATE_OPEN).then_some(intent))),
                Item::PathPrefix {
                    path,
                    exact,
                    intent,
                } => prefix.push((path, !exact, kind, Some(intent))),
                Item::Fileless => set.fileless = true,
                Item::Tail { text, intent } => {
                    // Tails are prefixes of the reversed path.
                    suffix.push((
                        text.chars().rev().collect::<String>(),
                        true,
                        kind,
                        Some(intent),
                    ))
                }
            }
        }
    }
    // A guarded file's own name, whatever directory it is spelled through, for the calls
    // that make or change a name in place (`INTENT_NAME`): the kernel stops them there, and
    // user space names the directory by identity (an open is found by identity in the kernel).
    let writes = INTENT_WRITE | INTENT_CREATE | INTENT_TRUNCATE;
    for n in named
        .iter()
        .filter(|n| n.intent == 0 || n.intent & writes != 0)
    {
        let Some((_, base)) = n.pattern.rsplit_once('/') else {
            continue;
        };
        if base.len() >= 2 && !base.contains(is_wild) {
            let tail = last_bytes(&format!("/{base}"), GATE_SUFFIX_MAX);
            suffix.push((
                tail.chars().rev().collect::<String>(),
                true,
                GATE_OPEN,
                Some(INTENT_NAME),
            ));
        }
    }
    // The dynamic loader run as a program runs another program under the loader's name
    // (`ld-linux-x86-64.so.2 PROG`): when execs are gated by name, so is the loader, and user
    // space decides by PROG.
    if comm.iter().any(|(_, _, kind, _)| *kind == GATE_EXEC) {
        comm.push(("ld-".into(), true, GATE_EXEC, None));
        comm.push(("ld.so".into(), false, GATE_EXEC, None));
    }
    set.comm = merge(comm);
    set.prefix = merge(prefix);
    set.suffix = merge(suffix)
        .into_iter()
        .map(|mut e| {
            e.key = e.key.chars().rev().collect();
            e
        })
        .collect();
    set
}

fn merge(list: Vec<(String, bool, u32, Option<u32>)>) -> Vec<GateEntry> {
    let mut by_key: std::collections::BTreeMap<String, (bool, u32, Option<u32>)> =
        Default::default();
    let join = |a: Option<u32>, b: Option<u32>| match (a, b) {
        (Some(x), Some(y)) => Some(merge_intent(x, y)),
        (x, None) | (None, x) => x,
    };
    for (k, p, kinds, intent) in list {
        let e = by_key.entry(k).or_insert((p, 0, None));
        e.0 |= p;
        e.1 |= kinds;
        e.2 = join(e.2, intent);
    }
    let keys: Vec<(String, bool, u32, Option<u32>)> = by_key
        .iter()
        .map(|(k, (p, kinds, i))| (k.clone(), *p, *kinds, *i))
        .collect();
    keys.iter()
        .map(|(k, p, kinds, intent)| {
            let (mut p, mut kinds, mut intent) = (*p, *kinds, *intent);
            for (ok, op, okinds, ointent) in &keys {
                if *op && ok.len() < k.len() && k.starts_with(ok.as_str()) {
                    // A longer entry hides this one from the lookup: it answers for both.
                    p = true;
                    kinds |= okinds;
                    intent = join(intent, *ointent);
                }
            }
            GateEntry {
                key: k.clone(),
                prefix: p,
                kinds,
                intent: intent.unwrap_or(0),
            }
        })
        .collect()
}
