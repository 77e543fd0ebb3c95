//! Matching events against a compiled policy. Each pattern field (executable, command line,
//! path, ...) has one automaton for the whole policy; an event's value is run through it once,
//! lazily, and each rule then only tests which of its patterns hit.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
};

use globset::{Candidate, GlobSet};
use ipnet::IpNet;

use super::syntax::{Action, Family, Field, Intent, Kind, Mode, SequenceScope, Severity, KINDS};
use crate::model::event::{Detail, Event};

/// The pattern fields, each with its own automaton.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Exe,
    Comm,
    Cmdline,
    Arg,
    Path,
    Unix,
    Profile,
    NewPath,
    Target,
    Host,
}

impl Slot {
    pub const COUNT: usize = 10;
    /// In path fields `*` stops at `/` and `**` crosses it; elsewhere `*` matches anything.
    pub fn is_path(self) -> bool {
        matches!(
            self,
            Slot::Exe | Slot::Path | Slot::Unix | Slot::NewPath | Slot::Target
        )
    }
}

pub struct FieldSets {
    pub sets: [GlobSet; Slot::COUNT],
    /// The pattern text behind each automaton entry (for the kernel's fast paths).
    pub patterns: [Vec<String>; Slot::COUNT],
}

#[derive(Debug, Clone)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Kind(u32),
    Glob {
        slot: Slot,
        ids: Vec<usize>,
    },
    CmdlineRegex(regex::RegexSet),
    Intent(u8),
    Ok(bool),
    Fileless(bool),
    InWorkdir(bool),
    /// Any of these masks is wholly set in a chmod's new mode.
    Mode(Vec<u32>),
    ToUid(Vec<u32>),
    ToGid(Vec<u32>),
    /// io_uring_op: one of these opcodes.
    UringOp(Vec<u8>),
    Addr(Vec<IpNet>),
    Port(Vec<(u16, u16)>),
    Family(Vec<Family>),
    Parent(Box<Cond>),
    Ancestor(Box<Cond>),
}

impl Cond {
    pub fn cost(&self) -> u8 {
        match self {
            Cond::Kind(_)
            | Cond::Intent(_)
            | Cond::Ok(_)
            | Cond::Fileless(_)
            | Cond::Family(_)
            | Cond::Mode(_)
            | Cond::ToUid(_)
            | Cond::ToGid(_)
            | Cond::UringOp(_) => 0,
            Cond::Port(_) | Cond::Addr(_) | Cond::InWorkdir(_) => 1,
            Cond::Glob { .. } => 2,
            Cond::Not(_) | Cond::All(_) | Cond::Any(_) => 3,
            Cond::CmdlineRegex(_) => 4,
            Cond::Parent(_) | Cond::Ancestor(_) => 5,
        }
    }

    /// The open-path patterns of which one must match for this condition to hold: a top-level
    /// `type: open` with a `path` key.
    fn required_paths(&self) -> Option<&[usize]> {
        let Cond::All(parts) = self else { return None };
        let only_open = parts
            .iter()
            .any(|c| matches!(c, Cond::Kind(m) if *m == 1 << 3));
        let ids = parts.iter().find_map(|c| match c {
            Cond::Glob {
                slot: Slot::Path,
                ids,
            } => Some(ids.as_slice()),
            _ => None,
        })?;
        only_open.then_some(ids)
    }

    /// The event kinds this condition can match (a bit per kind).
    pub(crate) fn kinds(&self) -> u32 {
        match self {
            Cond::Kind(m) => *m,
            Cond::All(v) => v.iter().fold(ALL_KINDS, |m, c| m & c.kinds()),
            Cond::Any(v) => v.iter().fold(0, |m, c| m | c.kinds()),
            _ => ALL_KINDS,
        }
    }

    fn eval(&self, s: &mut Subject<'_>, sets: &FieldSets) -> bool {
        match self {
            Cond::All(v) => v.iter().all(|c| c.eval(s, sets)),
            Cond::Any(v) => v.iter().any(|c| c.eval(s, sets)),
            Cond::Not(c) => !c.eval(s, sets),
            Cond::Kind(m) => m & s.kind_bit != 0,
            Cond::Glob { slot, ids } => s
                .hits(*slot, sets)
                .iter()
                .any(|h| ids.binary_search(h).is_ok()),
            Cond::CmdlineRegex(set) => s.proc_.as_ref().is_some_and(|p| set.is_match(&p.cmdline())),
            Cond::Intent(m) => s.intent() & m != 0,
            Cond::Ok(ok) => s.result().is_some_and(|r| (r >= 0) == *ok),
            Cond::Fileless(f) => s.ev.is_some_and(
                |e| matches!(e.detail, Detail::Exec { fileless, .. } if fileless == *f),
            ),
            Cond::InWorkdir(want) => s.in_workdir() == Some(*want),
            Cond::Mode(masks) => s.ev.is_some_and(|e| match e.detail {
                Detail::Chmod { mode, .. } => masks.iter().any(|m| mode & m == *m),
                _ => false,
            }),
            Cond::ToUid(ids) => s.to_ids().0.is_some_and(|u| ids.contains(&u)),
            Cond::ToGid(ids) => s.to_ids().1.is_some_and(|g| ids.contains(&g)),
            Cond::UringOp(ops) => s.ev.is_some_and(
                |e| matches!(&e.detail, Detail::IoUringOp { opcode, .. } if ops.contains(opcode)),
            ),
            Cond::Addr(nets) => s
                .addr()
                .is_some_and(|a| nets.iter().any(|n| n.contains(&a))),
            Cond::Port(ranges) => s
                .port()
                .is_some_and(|p| ranges.iter().any(|(a, b)| (*a..=*b).contains(&p))),
            Cond::Family(fs) => s.family().is_some_and(|f| fs.contains(&f)),
            Cond::Parent(c) => {
                let Some(pp) = s.proc_.as_ref().map(|p| p.ppid) else {
                    return false;
                };
                s.lineage
                    .get(pp)
                    .is_some_and(|p| c.eval(&mut Subject::of_process(p, s), sets))
            }
            Cond::Ancestor(c) => {
                let mut pid = s.proc_.as_ref().map(|p| p.ppid);
                // Bounded: a corrupt tree (a cycle) must not hang the pipeline.
                for _ in 0..64 {
                    let Some(p) = pid.and_then(|pid| s.lineage.get(pid)) else {
                        return false;
                    };
                    pid = Some(p.ppid);
                    if c.eval(&mut Subject::of_process(p, s), sets) {
                        return true;
                    }
                }
                false
            }
        }
    }
}

const ALL_KINDS: u32 = (1 << KINDS) - 1;

/// The event's bit in a kind mask: `1 << Kind as u32`, the rule language's order.
fn kind_bit(d: &Detail) -> u32 {
    let k = match d {
        Detail::Exec { .. } => Kind::Exec,
        Detail::Fork { .. } => Kind::Fork,
        Detail::Exit { .. } => Kind::Exit,
        Detail::Open { .. } => Kind::Open,
        Detail::Connect { .. } => Kind::Connect,
        Detail::Signal { .. } => Kind::Signal,
        Detail::Ptrace { .. } => Kind::Ptrace,
        Detail::Unlink { .. } => Kind::Unlink,
        Detail::Rename { .. } => Kind::Rename,
        Detail::Chmod { .. } => Kind::Chmod,
        Detail::Chown { .. } => Kind::Chown,
        Detail::Link { .. } => Kind::Link,
        Detail::Truncate { .. } => Kind::Truncate,
        Detail::Setid { .. } => Kind::Setid,
        Detail::Mount { .. } => Kind::Mount,
        Detail::Module { .. } => Kind::Module,
        Detail::Bpf { .. } => Kind::Bpf,
        Detail::Memfd { .. } => Kind::Memfd,
        Detail::Dns { .. } => Kind::Dns,
        Detail::IoUring { .. } => Kind::IoUring,
        Detail::IoUringOp { .. } => Kind::IoUringOp,
        Detail::NameToHandle { .. } => Kind::NameToHandle,
        Detail::Finding(_) => return 0,
    };
    1 << k as u32
}

/// What the rules know of the event's session.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionView<'a> {
    pub profile: Option<&'a str>,
    /// Where the session started (its root process's working directory).
    pub workdir: Option<&'a str>,
}

/// What the rules know of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcView<'a> {
    pub ppid: u32,
    pub exe: &'a str,
    pub comm: &'a str,
    pub argv: &'a [String],
}

impl ProcView<'_> {
    pub fn cmdline(&self) -> String {
        self.argv.join(" ")
    }
}

/// The process tree, as far as rules need it.
pub trait Lineage {
    fn get(&self, pid: u32) -> Option<ProcView<'_>>;
}

/// One event (or, inside `parent:`/`ancestor:`, one process) being matched, with the
/// automaton results computed so far.
pub struct Subject<'a> {
    ev: Option<&'a Event>,
    proc_: Option<ProcView<'a>>,
    profile: Option<&'a str>,
    workdir: Option<&'a str>,
    lineage: &'a dyn Lineage,
    kind_bit: u32,
    /// Open intent bits, parsed once.
    intent: u8,
    addr: Option<std::net::IpAddr>,
    hits: [Option<Vec<usize>>; Slot::COUNT],
    memo: Option<&'a mut Memo>,
}

impl<'a> Subject<'a> {
    pub fn new(
        ev: &'a Event,
        session: SessionView<'a>,
        lineage: &'a dyn Lineage,
        memo: Option<&'a mut Memo>,
    ) -> Subject<'a> {
        let proc_ = match &ev.detail {
            Detail::Exec { path, argv, .. } => Some(ProcView {
                ppid: ev.ppid,
                exe: path,
                comm: &ev.comm,
                argv,
            }),
            _ => lineage.get(ev.pid),
        };
        Subject {
            ev: Some(ev),
            proc_,
            profile: session.profile,
            workdir: session.workdir,
            lineage,
            kind_bit: kind_bit(&ev.detail),
            intent: Self::intent_of(ev),
            addr: match &ev.detail {
                Detail::Connect { addr: Some(a), .. } => a.parse().ok(),
                _ => None,
            },
            hits: Default::default(),
            memo,
        }
    }

    fn of_process(p: ProcView<'a>, outer: &Subject<'a>) -> Subject<'a> {
        Subject {
            ev: None,
            proc_: Some(p),
            profile: outer.profile,
            workdir: outer.workdir,
            lineage: outer.lineage,
            kind_bit: 0,
            intent: 0,
            addr: None,
            hits: Default::default(),
            memo: None,
        }
    }

    #[inline]
    fn hits(&mut self, slot: Slot, sets: &FieldSets) -> &[usize] {
        if self.hits[slot as usize].is_none() {
            self.compute_hits(slot, sets);
        }
        self.hits[slot as usize].as_deref().unwrap_or(&[])
    }

    /// Runs the field's automaton (or asks the memo); kept out of line so the hot `eval`
    /// stays small.
    #[inline(never)]
    fn compute_hits(&mut self, slot: Slot, sets: &FieldSets) {
        {
            let set = &sets.sets[slot as usize];
            let mut out = Vec::new();
            if !set.is_empty() {
                match slot {
                    Slot::Arg => {
                        let mut tmp = Vec::new();
                        for a in self
                            .proc_
                            .as_ref()
                            .map(|p| p.argv)
                            .unwrap_or(&[])
                            .iter()
                            .skip(1)
                        {
                            set.matches_candidate_into(&Candidate::new(a), &mut tmp);
                            out.extend_from_slice(&tmp);
                        }
                        out.sort_unstable();
                        out.dedup();
                    }
                    Slot::Cmdline => {
                        if let Some(p) = &self.proc_ {
                            set.matches_into(p.cmdline(), &mut out);
                        }
                    }
                    _ => {
                        if let Some(v) = self.text(slot) {
                            match (Memo::index(slot), self.memo.as_deref_mut()) {
                                (Some(m), Some(memo)) => {
                                    let map = &mut memo.by_slot[m];
                                    if let Some(h) = map.get(v) {
                                        out.extend_from_slice(h);
                                    } else {
                                        set.matches_into(v, &mut out);
                                        if map.len() >= MEMO_MAX {
                                            map.clear();
                                        }
                                        map.insert(v.into(), out.clone().into());
                                    }
                                }
                                _ => set.matches_into(v, &mut out),
                            }
                        }
                    }
                }
            }
            self.hits[slot as usize] = Some(out);
        }
    }

    fn text(&self, slot: Slot) -> Option<&'a str> {
        match slot {
            Slot::Exe => self.proc_.map(|p| p.exe),
            Slot::Comm => self.proc_.map(|p| p.comm),
            Slot::Profile => self.profile,
            Slot::Path => self.ev?.detail.path(),
            Slot::Unix => match &self.ev?.detail {
                Detail::Connect { path, .. } => path.as_deref(),
                _ => None,
            },
            Slot::NewPath => match &self.ev?.detail {
                Detail::Rename { new_path, .. } => Some(new_path),
                _ => None,
            },
            Slot::Target => match &self.ev?.detail {
                Detail::Link { target, .. } => Some(target),
                _ => None,
            },
            Slot::Host => match &self.ev?.detail {
                Detail::Connect { host, .. } => host.as_deref(),
                Detail::Dns { query, .. } => Some(query),
                _ => None,
            },
            Slot::Cmdline | Slot::Arg => None,
        }
    }

    fn intent(&self) -> u8 {
        self.intent
    }

    fn intent_of(ev: &Event) -> u8 {
        let Detail::Open { flags, .. } = &ev.detail else {
            return 0;
        };
        [
            (flags.reads(), Intent::Read),
            (flags.writes(), Intent::Write),
            (flags.creates(), Intent::Create),
            (flags.truncates(), Intent::Truncate),
        ]
        .into_iter()
        .fold(0, |m, (on, i)| if on { m | 1 << i as u8 } else { m })
    }

    fn result(&self) -> Option<i64> {
        match &self.ev?.detail {
            Detail::Exit { exit_code, .. } => Some(if *exit_code == Some(0) { 0 } else { -1 }),
            d => d.result(),
        }
    }

    /// Whether the event's path is inside the session's work directory (None: no path or
    /// no work directory known).
    fn in_workdir(&self) -> Option<bool> {
        let path = self.ev?.detail.path()?;
        // A path that could not be made absolute is neither inside nor outside.
        if !path.starts_with('/') {
            return None;
        }
        let wd = self.workdir?.trim_end_matches('/');
        Some(
            wd.is_empty()
                || path
                    .strip_prefix(wd)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        )
    }

    /// The owner and group an event gives: chown's, or setid's new effective ids.
    fn to_ids(&self) -> (Option<u32>, Option<u32>) {
        match self.ev.map(|e| &e.detail) {
            Some(Detail::Chown { to_uid, to_gid, .. }) => (*to_uid, *to_gid),
            Some(Detail::Setid { new, .. }) => (Some(new.euid), Some(new.egid)),
            _ => (None, None),
        }
    }

    fn addr(&self) -> Option<std::net::IpAddr> {
        self.addr
    }

    fn port(&self) -> Option<u16> {
        match &self.ev?.detail {
            Detail::Connect { port, .. } => *port,
            _ => None,
        }
    }

    fn family(&self) -> Option<Family> {
        match &self.ev?.detail {
            Detail::Connect { family, .. } => match family.as_str() {
                "inet" => Some(Family::Inet),
                "inet6" => Some(Family::Inet6),
                "unix" => Some(Family::Unix),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether field `f` of this event has the value `v` (a previous step's): an
    /// interpreter's exec has two paths, the interpreter's and the file it runs.
    fn same(&self, f: Field, v: &str) -> bool {
        if let (
            Field::Path,
            Some(Detail::Exec {
                script: Some(s), ..
            }),
        ) = (f, self.ev.map(|e| &e.detail))
        {
            if s == v {
                return true;
            }
        }
        self.field(f).as_deref() == Some(v)
    }

    /// A field's value, for sequence `same:` comparisons.
    fn field(&self, f: Field) -> Option<String> {
        let ev = self.ev?;
        Some(match f {
            Field::Pid => ev.pid.to_string(),
            Field::Ppid => ev.ppid.to_string(),
            Field::Comm => ev.comm.clone(),
            Field::Exe => self.proc_?.exe.to_string(),
            Field::Addr => self.addr()?.to_string(),
            Field::Port => self.port()?.to_string(),
            Field::Path => match &ev.detail {
                Detail::Exec { path, .. } => path.clone(),
                Detail::Connect { path: Some(p), .. } => p.clone(),
                d => d.path()?.to_string(),
            },
        })
    }
}

#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    pub tags: Vec<String>,
    pub action: Action,
    pub mode: Mode,
    pub cond: Option<Cond>,
    pub sequence: Option<Sequence>,
    /// For `order: any`: the steps the other way round.
    pub reverse: Option<Sequence>,
    /// The condition must hold this often within a window.
    pub count: Option<Count>,
    pub file: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Count {
    pub at_least: u32,
    pub within_ns: u64,
    pub by: SequenceScope,
}

/// The largest `count.at_least` (each counted event is kept until the window passes it).
pub const MAX_COUNT: u32 = 10_000;

/// Events a counted finding carries: the first and the last of the window.
const COUNT_EVIDENCE: usize = 5;

#[derive(Debug, Clone)]
pub struct Sequence {
    pub within_ns: u64,
    pub by: SequenceScope,
    pub steps: Vec<SeqStep>,
}

#[derive(Debug, Clone)]
pub struct SeqStep {
    pub cond: Cond,
    pub same: Vec<(Field, Field)>,
}

pub struct Policy {
    pub version: String,
    pub rules: Vec<Rule>,
    pub sets: FieldSets,
    /// Per event kind: the rules (and sequences) that can match it, except those in `by_path`.
    by_kind: [Vec<usize>; KINDS],
    /// Per path pattern: the rules that need it to match.
    by_path: Vec<Vec<usize>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Policy({} rules, version {})",
            self.rules.len(),
            self.version
        )
    }
}

/// A rule that matched, with the events that made it match (in order).
#[derive(Debug, Clone)]
pub struct Match {
    pub rule: usize,
    pub evidence: Vec<Arc<Event>>,
}

impl Policy {
    pub fn new(rules: Vec<Rule>, sets: FieldSets, version: String) -> Policy {
        let mut by_kind: [Vec<usize>; KINDS] = Default::default();
        let mut by_path = vec![Vec::new(); sets.patterns[Slot::Path as usize].len()];
        for (i, r) in rules.iter().enumerate() {
            // A plain rule that needs an open path is reached through the patterns it needs,
            // so an open that no path pattern matches costs no rule at all.
            if let Some(ids) = r.cond.as_ref().and_then(Cond::required_paths) {
                for id in ids {
                    by_path[*id].push(i);
                }
                continue;
            }
            let mask = match (&r.cond, &r.sequence) {
                (Some(c), _) => c.kinds(),
                (_, Some(s)) => s.steps.iter().fold(0, |m, st| m | st.cond.kinds()),
                _ => 0,
            };
            for (k, list) in by_kind.iter_mut().enumerate() {
                if mask & (1 << k) != 0 {
                    list.push(i);
                }
            }
        }
        Policy {
            version,
            rules,
            sets,
            by_kind,
            by_path,
        }
    }

    pub fn empty() -> Policy {
        let sets = FieldSets {
            sets: std::array::from_fn(|_| GlobSet::empty()),
            patterns: Default::default(),
        };
        Policy::new(Vec::new(), sets, "empty".into())
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Every rule the event completes. `state` carries sequences between calls and must be
    /// reset when the policy changes.
    pub fn evaluate(
        &self,
        ev: &Arc<Event>,
        ts_ns: u64,
        session: SessionView<'_>,
        lineage: &dyn Lineage,
        state: &mut SeqState,
        out: &mut Vec<Match>,
    ) {
        let bit = kind_bit(&ev.detail);
        if bit == 0 {
            return;
        }
        let candidates = &self.by_kind[bit.trailing_zeros() as usize];
        let is_open = matches!(ev.detail, Detail::Open { .. });
        if candidates.is_empty() && (!is_open || self.by_path.is_empty()) {
            return;
        }
        let SeqState {
            partial,
            memo,
            process_rules,
            session_rules,
            advanced,
            counts,
        } = state;
        let mut s = Subject::new(ev, session, lineage, Some(memo));
        let session_key = fnv(ev.trace_id.as_bytes());
        let mut by_path = Vec::new();
        if is_open && !self.by_path.is_empty() {
            for h in s.hits(Slot::Path, &self.sets) {
                by_path.extend_from_slice(&self.by_path[*h]);
            }
            by_path.sort_unstable();
            by_path.dedup();
        }
        for &i in candidates.iter().chain(&by_path) {
            let r = &self.rules[i];
            if let Some(c) = &r.cond {
                if c.eval(&mut s, &self.sets) {
                    let evidence = match &r.count {
                        None => Some(vec![ev.clone()]),
                        Some(n) => {
                            let key = match n.by {
                                SequenceScope::Session => ScopeKey::Session(session_key),
                                SequenceScope::Process => ScopeKey::Process(ev.pid),
                            };
                            let made = counted(counts, (i, key), n, ev, ts_ns);
                            if made.is_none() {
                                // Counting: the gate may stop the scope's next events.
                                advanced.push((i, false, 0));
                            }
                            made
                        }
                    };
                    if let Some(evidence) = evidence {
                        out.push(Match { rule: i, evidence });
                    }
                }
            } else {
                // `order: any` runs the steps the other way round as a second sequence.
                for (reversed, seq) in [(false, &r.sequence), (true, &r.reverse)] {
                    if let Some(seq) = seq {
                        SeqState::step(
                            partial,
                            (process_rules, session_rules, advanced),
                            (i, reversed),
                            seq,
                            session_key,
                            ev,
                            ts_ns,
                            &mut s,
                            &self.sets,
                            out,
                        );
                    }
                }
            }
        }
    }
}

/// A sequence that has matched its first steps.
#[derive(Debug)]
struct Partial {
    next: usize,
    start_ns: u64,
    /// `start_ns` plus the sequence's window: past it the partial can never complete.
    expires_ns: u64,
    evidence: Vec<Arc<Event>>,
    /// `same:` values of the last matched step, by field.
    last: Vec<(Field, Option<String>)>,
}

/// Partial sequence matches, per rule and session (or process).
#[derive(Debug, Default)]
pub struct SeqState {
    partial: PartialMap,
    memo: Memo,
    /// The (rule, reversed) pairs that have held partials, per scope, so that a process's exit
    /// or a session's end removes its partials without scanning the whole map.
    process_rules: RuleList,
    session_rules: RuleList,
    /// (rule, reversed, next step) for each partial the last events started or moved on; the
    /// caller drains it (the gate of sequences' next steps).
    pub advanced: Vec<(usize, bool, usize)>,
    /// The events of `count:` rules inside their window, per rule and scope, oldest first.
    counts: CountMap,
}

type CountMap = HashMap<(usize, ScopeKey), Window, BuildHasherDefault<FnvHasher>>;

#[derive(Debug, Default)]
struct Window {
    within_ns: u64,
    events: std::collections::VecDeque<(u64, Arc<Event>)>,
}

/// Counts one match of a `count:` rule; the evidence when it makes the count.
fn counted(
    counts: &mut CountMap,
    key: (usize, ScopeKey),
    n: &Count,
    ev: &Arc<Event>,
    ts_ns: u64,
) -> Option<Vec<Arc<Event>>> {
    let w = counts.entry(key).or_default();
    w.within_ns = n.within_ns;
    while w
        .events
        .front()
        .is_some_and(|(t, _)| ts_ns.saturating_sub(*t) > n.within_ns)
    {
        w.events.pop_front();
    }
    w.events.push_back((ts_ns, ev.clone()));
    if w.events.len() < n.at_least as usize {
        return None;
    }
    // The count is made: the window starts over, so a long burst is one finding per
    // `at_least` events, not one per event.
    let all = std::mem::take(&mut w.events);
    let len = all.len();
    Some(
        all.into_iter()
            .enumerate()
            .filter(|(i, _)| *i < COUNT_EVIDENCE || *i >= len.saturating_sub(COUNT_EVIDENCE))
            .map(|(_, (_, e))| e)
            .collect(),
    )
}

/// Whose partial match it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ScopeKey {
    /// A hash of the session's trace id.
    Session(u64),
    Process(u32),
}

/// (rule, reversed) pairs.
type RuleList = Vec<(usize, bool)>;

type PartialMap = HashMap<(usize, bool, ScopeKey), Vec<Partial>, BuildHasherDefault<FnvHasher>>;

/// Automaton results for values seen before (a build opens the same files over and over).
#[derive(Debug)]
pub struct Memo {
    by_slot: [MemoMap; 2],
}

type MemoMap = HashMap<Box<str>, Box<[usize]>, BuildHasherDefault<FnvHasher>>;

/// Values remembered per slot before the memo starts over.
const MEMO_MAX: usize = 16384;

impl Default for Memo {
    fn default() -> Self {
        // Sized for a build's working set up front: growing a map rehashes every entry.
        let map = || MemoMap::with_capacity_and_hasher(4096, Default::default());
        Memo {
            by_slot: [map(), map()],
        }
    }
}

impl Memo {
    fn index(slot: Slot) -> Option<usize> {
        match slot {
            Slot::Path => Some(0),
            Slot::Exe => Some(1),
            _ => None,
        }
    }
}

/// Partial matches kept per rule and key; the oldest go first.
const MAX_PARTIAL: usize = 32;

impl SeqState {
    pub fn clear(&mut self) {
        self.counts.clear();
        self.partial.clear();
        self.memo = Memo::default();
        self.process_rules.clear();
        self.session_rules.clear();
        self.advanced.clear();
    }

    /// The process exited: its per-process partials can never complete (and a new process
    /// with its pid must not complete them).
    pub fn process_exited(&mut self, pid: u32) {
        for &(r, rev) in &self.process_rules {
            self.partial.remove(&(r, rev, ScopeKey::Process(pid)));
        }
        if !self.counts.is_empty() {
            self.counts.retain(|(_, k), _| *k != ScopeKey::Process(pid));
        }
    }

    /// The session ended: its partials go.
    pub fn session_ended(&mut self, trace_id: &str) {
        let key = ScopeKey::Session(fnv(trace_id.as_bytes()));
        for &(r, rev) in &self.session_rules {
            self.partial.remove(&(r, rev, key));
        }
        if !self.counts.is_empty() {
            self.counts.retain(|(_, k), _| *k != key);
        }
    }

    /// Drops the partials whose window has passed at `now_ns` (kernel time).
    pub fn sweep(&mut self, now_ns: u64) {
        self.partial.retain(|_, list| {
            list.retain(|p| p.expires_ns >= now_ns);
            !list.is_empty()
        });
        self.counts.retain(|_, w| {
            while w
                .events
                .front()
                .is_some_and(|(t, _)| now_ns.saturating_sub(*t) > w.within_ns)
            {
                w.events.pop_front();
            }
            !w.events.is_empty()
        });
    }

    /// Partial matches and counted events held.
    pub fn len(&self) -> usize {
        self.partial.values().map(Vec::len).sum::<usize>()
            + self.counts.values().map(|w| w.events.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        partial: &mut PartialMap,
        scoped: (&mut RuleList, &mut RuleList, &mut Vec<(usize, bool, usize)>),
        rule: (usize, bool),
        seq: &Sequence,
        session_key: u64,
        ev: &Arc<Event>,
        ts_ns: u64,
        s: &mut Subject<'_>,
        sets: &FieldSets,
        out: &mut Vec<Match>,
    ) {
        let key = match seq.by {
            SequenceScope::Session => ScopeKey::Session(session_key),
            SequenceScope::Process => ScopeKey::Process(ev.pid),
        };
        // Each step's condition is evaluated at most once per event (0: not yet).
        let mut matched = [0u8; MAX_STEPS];
        let mut step_matches = |i: usize, s: &mut Subject<'_>| -> bool {
            if matched[i] == 0 {
                matched[i] = 1 + seq.steps[i].cond.eval(s, sets) as u8;
            }
            matched[i] == 2
        };
        let k = (rule.0, rule.1, key);
        if let Some(list) = partial.get_mut(&k) {
            list.retain(|p| ts_ns.saturating_sub(p.start_ns) <= seq.within_ns);
            let mut completed = None;
            for (idx, p) in list.iter_mut().enumerate() {
                let st = &seq.steps[p.next];
                let same_ok = st.same.iter().all(|(this, prev)| {
                    let prev_v = p
                        .last
                        .iter()
                        .find(|(f, _)| f == prev)
                        .and_then(|(_, v)| v.as_ref());
                    prev_v.is_some_and(|v| s.same(*this, v))
                });
                if same_ok && step_matches(p.next, s) {
                    p.evidence.push(ev.clone());
                    p.next += 1;
                    if p.next == seq.steps.len() {
                        completed = Some(idx);
                        break;
                    }
                    p.last = wanted(seq, p.next)
                        .iter()
                        .map(|f| (*f, s.field(*f)))
                        .collect();
                    scoped.2.push((rule.0, rule.1, p.next));
                }
            }
            if let Some(idx) = completed {
                let p = list.remove(idx);
                if list.is_empty() {
                    partial.remove(&k);
                }
                out.push(Match {
                    rule: rule.0,
                    evidence: p.evidence,
                });
                return;
            }
        }
        if step_matches(0, s) {
            let last: Vec<(Field, Option<String>)> =
                wanted(seq, 1).iter().map(|f| (*f, s.field(*f))).collect();
            let list = partial.entry(k).or_default();
            // A first step like one already waiting replaces it: the latest start leaves the
            // longest window, and a storm of first steps stays one entry.
            if let Some(p) = list.iter_mut().find(|p| p.next == 1 && p.last == last) {
                p.start_ns = ts_ns;
                p.expires_ns = ts_ns.saturating_add(seq.within_ns);
                p.evidence.clear();
                p.evidence.push(ev.clone());
                scoped.2.push((rule.0, rule.1, 1));
                return;
            }
            if list.len() >= MAX_PARTIAL {
                list.remove(0);
            }
            let rules = match key {
                ScopeKey::Session(_) => scoped.1,
                ScopeKey::Process(_) => scoped.0,
            };
            if !rules.contains(&rule) {
                rules.push(rule);
            }
            scoped.2.push((rule.0, rule.1, 1));
            list.push(Partial {
                next: 1,
                start_ns: ts_ns,
                expires_ns: ts_ns.saturating_add(seq.within_ns),
                evidence: vec![ev.clone()],
                last,
            });
        } else if partial.get(&k).is_some_and(Vec::is_empty) {
            partial.remove(&k);
        }
    }
}

/// Steps a sequence may have (checked when rules are compiled).
pub const MAX_STEPS: usize = 8;

/// FNV-1a: keys here are our own trace ids and pids, so a fast hash is safe.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Default)]
pub struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(v as u64);
    }
}

/// The previous-step fields step `i` compares against.
fn wanted(seq: &Sequence, i: usize) -> Vec<Field> {
    seq.steps
        .get(i)
        .map(|st| st.same.iter().map(|(_, prev)| *prev).collect())
        .unwrap_or_default()
}
