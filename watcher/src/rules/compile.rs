//! Turns rule files into a `Policy`: lists and macros expanded, `~` expanded to every home,
//! and the patterns of each field gathered into one automaton per field, so one pass over an
//! event's value answers every rule that looks at that field.
use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSetBuilder};
use ipnet::IpNet;

use super::{
    eval::{Cond, Count, FieldSets, Policy, Rule, SeqStep, Sequence, Slot, MAX_COUNT},
    syntax::{CondDef, Item, Kind, OneOrMany, Order, RuleFile},
    RuleError, Source,
};

/// Parses and compiles a set of rule files into one policy.
pub fn compile(sources: &[Source], homes: &[String]) -> Result<Policy, RuleError> {
    let mut files = Vec::new();
    for src in sources {
        let file: RuleFile = serde_yaml_ng::from_str(&src.text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            RuleError {
                file: src.name.clone(),
                line,
                column,
                message: strip_location(&e.to_string()),
            }
        })?;
        files.push((src, file));
    }
    let mut c = Compiler {
        sources,
        homes,
        lists: BTreeMap::new(),
        macros: BTreeMap::new(),
        sets: Default::default(),
    };
    for (src, f) in &files {
        for (name, items) in &f.lists {
            if c.lists.insert(name.clone(), items.clone()).is_some() {
                return Err(c.error_at(
                    src,
                    &format!("{name}:"),
                    format!("list {name:?} is defined twice"),
                ));
            }
        }
        for (name, m) in &f.macros {
            if c.macros.insert(name.clone(), m.clone()).is_some() {
                return Err(c.error_at(
                    src,
                    &format!("{name}:"),
                    format!("macro {name:?} is defined twice"),
                ));
            }
        }
    }
    let mut rules = Vec::new();
    let mut ids = BTreeMap::new();
    for (src, f) in &files {
        for def in &f.rules {
            let at = format!("id: {}", def.id);
            if def.id.is_empty() {
                return Err(c.error_at(src, "id:", "rule id is empty".into()));
            }
            if let Some(first) = ids.insert(def.id.clone(), src.name.clone()) {
                // Point at the second use (the last mention in this file).
                let (line, column) = locate_last(&src.text, &at);
                return Err(RuleError {
                    file: src.name.clone(),
                    line,
                    column,
                    message: format!("rule id {:?} is used twice (also in {first})", def.id),
                });
            }
            let ctx = |field: &str| format!("rule {:?}: {field}", def.id);
            let (cond, sequence) = match (&def.condition, &def.sequence) {
                (Some(cd), None) => (Some(c.cond(src, cd, &ctx("condition"), 0)?), None),
                (None, Some(sd)) => {
                    if sd.steps.len() > super::eval::MAX_STEPS {
                        return Err(c.error_at(
                            src,
                            &at,
                            ctx(&format!(
                                "sequence.steps: at most {} steps",
                                super::eval::MAX_STEPS
                            )),
                        ));
                    }
                    if sd.steps.len() < 2 {
                        return Err(c.error_at(
                            src,
                            &at,
                            ctx("sequence.steps: expected at least 2 steps"),
                        ));
                    }
                    let mut steps = Vec::new();
                    for (i, st) in sd.steps.iter().enumerate() {
                        if i == 0 && !st.same.is_empty() {
                            return Err(c.error_at(
                                src,
                                "same:",
                                ctx("sequence.steps[0].same: the first step has no previous step"),
                            ));
                        }
                        steps.push(SeqStep {
                            cond: c.cond(
                                src,
                                &st.condition,
                                &ctx(&format!("sequence.steps[{i}]")),
                                0,
                            )?,
                            same: st.same.iter().map(|(a, b)| (*a, *b)).collect(),
                        });
                    }
                    let seq = Sequence {
                        within_ns: sd.within.as_nanos() as u64,
                        by: sd.by,
                        steps,
                    };
                    let reverse = match sd.order {
                        Order::Given => None,
                        Order::Any if seq.steps.len() != 2 => {
                            return Err(c.error_at(
                                src,
                                "order:",
                                ctx("sequence.order: `any` needs exactly 2 steps"),
                            ));
                        }
                        Order::Any => Some(Sequence {
                            within_ns: seq.within_ns,
                            by: seq.by,
                            steps: vec![
                                SeqStep {
                                    cond: seq.steps[1].cond.clone(),
                                    same: Vec::new(),
                                },
                                SeqStep {
                                    cond: seq.steps[0].cond.clone(),
                                    same: seq.steps[1].same.iter().map(|(a, b)| (*b, *a)).collect(),
                                },
                            ],
                        }),
                    };
                    (None, Some((seq, reverse)))
                }
                _ => {
                    return Err(c.error_at(
                        src,
                        &at,
                        ctx("expected exactly one of `condition` or `sequence`"),
                    ));
                }
            };
            let count = match &def.count {
                None => None,
                Some(_) if sequence.is_some() => {
                    return Err(c.error_at(
                        src,
                        "count:",
                        ctx("count: applies to a `condition`, not to a `sequence`"),
                    ));
                }
                Some(cd) if !(2..=MAX_COUNT).contains(&cd.at_least) => {
                    return Err(c.error_at(
                        src,
                        "at_least:",
                        ctx(&format!(
                            "count.at_least: {} is outside 2..={MAX_COUNT}",
                            cd.at_least
                        )),
                    ));
                }
                Some(cd) => Some(Count {
                    at_least: cd.at_least,
                    within_ns: cd.within.as_nanos() as u64,
                    by: cd.by,
                }),
            };
            rules.push(Rule {
                count,
                id: def.id.clone(),
                description: def.description.clone(),
                severity: def.severity,
                tags: def.tags.clone(),
                action: def.action,
                mode: def.mode,
                cond,
                reverse: sequence.as_ref().and_then(|s| s.1.clone()),
                sequence: sequence.map(|s| s.0),
                file: src.name.clone(),
            });
        }
    }
    let sets = c.sets.build().map_err(|message| RuleError {
        file: "<policy>".into(),
        line: 0,
        column: 0,
        message,
    })?;
    Ok(Policy::new(rules, sets, super::version_of(sources)))
}

/// Pattern lists per field, before they are built into automata.
#[derive(Default)]
pub struct SetBuilders {
    pub fields: [Vec<globset::Glob>; Slot::COUNT],
}

impl SetBuilders {
    fn add(&mut self, slot: Slot, g: globset::Glob) -> usize {
        let v = &mut self.fields[slot as usize];
        v.push(g);
        v.len() - 1
    }

    fn build(self) -> Result<FieldSets, String> {
        let mut sets = Vec::new();
        let mut patterns = Vec::new();
        for globs in self.fields {
            let mut b = GlobSetBuilder::new();
            patterns.push(
                globs
                    .iter()
                    .map(|g| g.glob().to_string())
                    .collect::<Vec<_>>(),
            );
            for g in globs {
                b.add(g);
            }
            sets.push(b.build().map_err(|e| e.to_string())?);
        }
        Ok(FieldSets {
            sets: sets.try_into().map_err(|_| "field count".to_string())?,
            patterns: patterns.try_into().map_err(|_| "field count".to_string())?,
        })
    }
}

struct Compiler<'a> {
    sources: &'a [Source],
    homes: &'a [String],
    lists: BTreeMap<String, Vec<Item>>,
    macros: BTreeMap<String, CondDef>,
    sets: SetBuilders,
}

impl Compiler<'_> {
    /// An error for a value found after parsing: located by the first line that mentions it.
    fn error_at(&self, src: &Source, needle: &str, message: String) -> RuleError {
        let (line, column) = locate(&src.text, needle);
        RuleError {
            file: src.name.clone(),
            line,
            column,
            message,
        }
    }

    /// The file (and place) that mentions `needle`, preferring `src`.
    fn error_for(&self, src: &Source, needle: &str, message: String) -> RuleError {
        if locate(&src.text, needle).0 > 0 {
            return self.error_at(src, needle, message);
        }
        for s in self.sources {
            if locate(&s.text, needle).0 > 0 {
                return self.error_at(s, needle, message);
            }
        }
        self.error_at(src, needle, message)
    }

    /// Items with `$lists` expanded (lists may name other lists).
    fn expand(
        &self,
        src: &Source,
        items: &[Item],
        ctx: &str,
        depth: u32,
    ) -> Result<Vec<String>, RuleError> {
        let mut out = Vec::new();
        for it in items {
            match it {
                Item::Value(v) => out.push(v.clone()),
                Item::List(name) => {
                    let Some(list) = self.lists.get(name) else {
                        return Err(self.error_for(
                            src,
                            &format!("${name}"),
                            format!("{ctx}: unknown list ${name}"),
                        ));
                    };
                    if depth > 8 {
                        return Err(self.error_for(
                            src,
                            &format!("${name}"),
                            format!("{ctx}: lists nest more than 8 deep (a cycle?) at ${name}"),
                        ));
                    }
                    out.extend(self.expand(src, list, ctx, depth + 1)?);
                }
            }
        }
        Ok(out)
    }

    fn globs(
        &mut self,
        src: &Source,
        slot: Slot,
        items: &OneOrMany<Item>,
        ctx: &str,
    ) -> Result<Cond, RuleError> {
        let values = self.expand(src, items.as_slice(), ctx, 0)?;
        let mut ids = Vec::new();
        for v in &values {
            for pat in self.pattern_variants(slot, v) {
                let g = GlobBuilder::new(&pat)
                    .literal_separator(slot.is_path())
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| {
                        self.error_for(src, v, format!("{ctx}: invalid glob {v:?}: {}", e.kind()))
                    })?;
                ids.push(self.sets.add(slot, g));
            }
        }
        Ok(Cond::Glob { slot, ids })
    }

    /// `~/x` becomes one pattern per home; an executable pattern without `/` matches the basename.
    fn pattern_variants(&self, slot: Slot, v: &str) -> Vec<String> {
        if let Some(rest) = v.strip_prefix("~/") {
            return self
                .homes
                .iter()
                .map(|h| format!("{}/{rest}", h.trim_end_matches('/')))
                .collect();
        }
        if slot == Slot::Exe && !v.contains('/') {
            return vec![format!("**/{v}")];
        }
        vec![v.to_string()]
    }

    fn cond(
        &mut self,
        src: &Source,
        d: &CondDef,
        ctx: &str,
        depth: u32,
    ) -> Result<Cond, RuleError> {
        if depth > 16 {
            return Err(self.error_at(
                src,
                "macro:",
                format!("{ctx}: conditions nest more than 16 deep (a macro cycle?)"),
            ));
        }
        let mut all = Vec::new();
        if let Some(k) = &d.kind {
            let mut mask = 0u32;
            for k in k.as_slice() {
                mask |= kind_bit(*k);
            }
            all.push(Cond::Kind(mask));
        }
        let globs: [(&Option<OneOrMany<Item>>, Slot, &str); 9] = [
            (&d.exe, Slot::Exe, "exe"),
            (&d.comm, Slot::Comm, "comm"),
            (&d.cmdline, Slot::Cmdline, "cmdline"),
            (&d.arg, Slot::Arg, "arg"),
            (&d.path, Slot::Path, "path"),
            (&d.unix, Slot::Unix, "unix"),
            (&d.new_path, Slot::NewPath, "new_path"),
            (&d.target, Slot::Target, "target"),
            (&d.host, Slot::Host, "host"),
        ];
        for (items, slot, name) in globs {
            if let Some(items) = items {
                all.push(self.globs(src, slot, items, &format!("{ctx}.{name}"))?);
            }
        }
        if let Some(items) = &d.profile {
            all.push(self.globs(src, Slot::Profile, items, &format!("{ctx}.profile"))?);
        }
        if let Some(rs) = &d.cmdline_regex {
            let pats: Vec<&str> = rs.as_slice().iter().map(|r| r.0.as_str()).collect();
            let set = regex::RegexSet::new(&pats).map_err(|e| {
                self.error_at(src, "cmdline_regex", format!("{ctx}.cmdline_regex: {e}"))
            })?;
            all.push(Cond::CmdlineRegex(set));
        }
        if let Some(i) = &d.intent {
            let mut mask = 0u8;
            for i in i.as_slice() {
                mask |= 1 << (*i as u8);
            }
            all.push(Cond::Intent(mask));
        }
        if let Some(ok) = d.ok {
            all.push(Cond::Ok(ok));
        }
        if let Some(f) = d.fileless {
            all.push(Cond::Fileless(f));
        }
        if let Some(w) = d.in_workdir {
            all.push(Cond::InWorkdir(w));
        }
        if let Some(m) = &d.mode {
            all.push(Cond::Mode(m.as_slice().iter().map(|b| b.0).collect()));
        }
        if let Some(u) = &d.to_uid {
            all.push(Cond::ToUid(u.as_slice().to_vec()));
        }
        if let Some(g) = &d.to_gid {
            all.push(Cond::ToGid(g.as_slice().to_vec()));
        }
        if let Some(items) = &d.op {
            let mut ops = Vec::new();
            for v in self.expand(src, items.as_slice(), &format!("{ctx}.op"), 0)? {
                let Some(op) = crate::model::event::URING_OPS.iter().position(|o| *o == v) else {
                    return Err(self.error_for(
                        src,
                        &v,
                        format!(
                            "{ctx}.op: unknown io_uring operation {v:?} (expected one of {})",
                            crate::model::event::URING_OPS.join(", ")
                        ),
                    ));
                };
                ops.push(op as u8);
            }
            all.push(Cond::UringOp(ops));
        }
        if let Some(items) = &d.addr {
            let mut nets = Vec::new();
            for v in self.expand(src, items.as_slice(), &format!("{ctx}.addr"), 0)? {
                nets.push(
                    parse_net(&v)
                        .map_err(|m| self.error_for(src, &v, format!("{ctx}.addr: {m}")))?,
                );
            }
            all.push(Cond::Addr(nets));
        }
        if let Some(items) = &d.port {
            let mut ranges = Vec::new();
            for v in self.expand(src, items.as_slice(), &format!("{ctx}.port"), 0)? {
                ranges.push(
                    parse_ports(&v)
                        .map_err(|m| self.error_for(src, &v, format!("{ctx}.port: {m}")))?,
                );
            }
            all.push(Cond::Port(ranges));
        }
        if let Some(f) = &d.family {
            all.push(Cond::Family(f.as_slice().to_vec()));
        }
        if let Some(p) = &d.parent {
            all.push(Cond::Parent(Box::new(self.cond(
                src,
                p,
                &format!("{ctx}.parent"),
                depth + 1,
            )?)));
        }
        if let Some(p) = &d.ancestor {
            all.push(Cond::Ancestor(Box::new(self.cond(
                src,
                p,
                &format!("{ctx}.ancestor"),
                depth + 1,
            )?)));
        }
        if let Some(v) = &d.any {
            let mut any = Vec::new();
            for (i, c) in v.iter().enumerate() {
                any.push(self.cond(src, c, &format!("{ctx}.any[{i}]"), depth + 1)?);
            }
            all.push(Cond::Any(any));
        }
        if let Some(v) = &d.all {
            for (i, c) in v.iter().enumerate() {
                all.push(self.cond(src, c, &format!("{ctx}.all[{i}]"), depth + 1)?);
            }
        }
        if let Some(n) = &d.not {
            all.push(Cond::Not(Box::new(self.cond(
                src,
                n,
                &format!("{ctx}.not"),
                depth + 1,
            )?)));
        }
        if let Some(ms) = &d.macros {
            for name in ms.as_slice() {
                let Some(m) = self.macros.get(name).cloned() else {
                    return Err(self.error_for(
                        src,
                        name,
                        format!("{ctx}.macro: unknown macro {name:?}"),
                    ));
                };
                all.push(self.cond(src, &m, &format!("{ctx}.macro({name})"), depth + 1)?);
            }
        }
        if all.is_empty() {
            return Err(self.error_at(
                src,
                "condition",
                format!("{ctx}: empty condition (it would match every event)"),
            ));
        }
        // Flat, cheapest tests first, so most events are turned away by a bit test.
        let mut flat = Vec::new();
        for c in all {
            match c {
                Cond::All(v) => flat.extend(v),
                c => flat.push(c),
            }
        }
        let mut all = flat;
        all.sort_by_key(Cond::cost);
        Ok(if all.len() == 1 {
            all.pop().expect("one")
        } else {
            Cond::All(all)
        })
    }
}

pub fn kind_bit(k: Kind) -> u32 {
    1 << (k as u32)
}

fn parse_net(v: &str) -> Result<IpNet, String> {
    if let Ok(n) = v.parse::<IpNet>() {
        return Ok(n);
    }
    v.parse::<std::net::IpAddr>().map(IpNet::from).map_err(|_| {
        format!(
            "invalid address or CIDR {v:?} (expected e.g. 10.0.0.0/8, 169.254.169.254 or fd00::/8)"
        )
    })
}

fn parse_ports(v: &str) -> Result<(u16, u16), String> {
    let bad =
        || format!("invalid port {v:?} (expected a number 0-65535 or a range like 8000-8100)");
    let (a, b) = match v.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (v.trim(), v.trim()),
    };
    let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// serde_yaml appends " at line L column C"; the error already leads with the place.
pub fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

/// 1-based line and column of the last occurrence of `needle`, or (0, 0).
fn locate_last(text: &str, needle: &str) -> (usize, usize) {
    let mut out = (0, 0);
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = line.find(needle) {
            out = (i + 1, col + 1);
        }
    }
    out
}

/// 1-based line and column of the first occurrence of `needle`, or (0, 0).
fn locate(text: &str, needle: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = line.find(needle) {
            return (i + 1, col + 1);
        }
    }
    (0, 0)
}

/// Home directories: `/root`, `/home/*`, and the home of every account in /etc/passwd that can
/// log in. A system account's "home" that no one logs into (`sys` has /dev, `bin` has /bin) is
/// no one's home: a rule on `~/**` must not treat /dev/shm as one.
pub fn homes() -> Vec<String> {
    let mut out = vec!["/root".to_string(), "/home/*".to_string()];
    if let Ok(text) = std::fs::read_to_string("/etc/passwd") {
        for h in login_homes(&text) {
            if !out.contains(&h) && !h.starts_with("/home/") && std::path::Path::new(&h).is_dir() {
                out.push(h);
            }
        }
    }
    out
}

/// The homes in a passwd file of the accounts with a login shell, except system directories.
fn login_homes(passwd: &str) -> Vec<String> {
    const SYSTEM: [&str; 14] = [
        "/",
        "/bin",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/var/tmp",
        "/run",
        "/etc",
        "/var",
    ];
    passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let (home, shell) = (f.get(5)?.trim_end_matches('/'), *f.get(6)?);
            let no_login = shell.is_empty()
                || shell.ends_with("/nologin")
                || shell.ends_with("/false")
                || shell.ends_with("/sync");
            let home = if home.is_empty() { "/" } else { home };
            (!no_login && !SYSTEM.contains(&home)).then(|| home.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// Accounts that log in have homes; `sys` (/dev), `bin` (/bin) and a service with no shell
    /// do not, and neither does an account whose home is a system directory.
    #[test]
    fn only_accounts_that_log_in_have_homes() {
        let passwd = "root:x:0:0:root:/root:/bin/bash
sys:x:3:3:sys:/dev:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
irc:x:39:39:ircd:/run/ircd:/usr/sbin/nologin
systemd-network:x:998:998::/:/usr/sbin/nologin
postgres:x:105:110::/var/lib/postgresql:/bin/bash
odd:x:1001:1001::/tmp:/bin/sh
alice:x:1000:1000::/home/alice:/bin/bash
";
        assert_eq!(
            super::login_homes(passwd),
            ["/root", "/var/lib/postgresql", "/home/alice"]
        );
    }
}
