//! A learned profile: per facet, what its sessions did, how often and when; per kind of event,
//! how many a minute.
use std::collections::{BTreeMap, HashMap, HashSet};

use hdrhistogram::Histogram;

use super::facets::{Facet, FACETS};
use crate::model::baseline::{Entry, ProfileExport, ProfileMode, Rate};

#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub sessions: u64,
    pub events: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub sha256: Option<String>,
}

/// Event kinds whose per-minute rate is learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    Exec,
    Read,
    Write,
    Connect,
    /// Deletes in the work directory (`rm -rf target/` is normal work).
    Delete,
    /// Deletes anywhere else.
    DeleteOutside,
}

pub const RATE_KINDS: usize = 6;

impl RateKind {
    pub const ALL: [RateKind; RATE_KINDS] = [
        RateKind::Exec,
        RateKind::Read,
        RateKind::Write,
        RateKind::Connect,
        RateKind::Delete,
        RateKind::DeleteOutside,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Exec => "exec",
            RateKind::Read => "read",
            RateKind::Write => "write",
            RateKind::Connect => "connect",
            RateKind::Delete => "delete",
            RateKind::DeleteOutside => "delete_outside_workdir",
        }
    }

    /// A minute with fewer events than this is never far above normal, however little the
    /// profile has seen: a short learning must not make every busy minute an anomaly.
    pub fn floor(self) -> u64 {
        match self {
            RateKind::Exec => 3_000,
            RateKind::Read => 300_000,
            RateKind::Write => 60_000,
            RateKind::Connect => 1_200,
            RateKind::Delete => 100_000,
            RateKind::DeleteOutside => 500,
        }
    }
}

/// How many times the learned maximum a minute must reach to be far above normal.
pub const RATE_FACTOR: u64 = 4;

#[derive(Clone)]
pub struct Profile {
    pub name: String,
    pub mode: ProfileMode,
    pub sessions: u64,
    pub events: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub entries: [HashMap<String, Stat>; FACETS],
    pub rates: [Histogram<u64>; RATE_KINDS],
    /// New entries each of the last sessions taught (at most `LEARNED_KEPT`).
    pub learned_per_session: Vec<u64>,
    /// Of those, the entries that would have held had the profile been enforced.
    pub holding_per_session: Vec<u64>,
}

pub const LEARNED_KEPT: usize = 20;
/// A profile is stable after this many sessions when the last `STABLE_WINDOW` of them taught
/// it at most `STABLE_NEW` new entries each on average and none that would have held: enforced
/// then, none of those sessions would have been held, which is what "stable" promises of the
/// next ones.
pub const STABLE_SESSIONS: u64 = 5;
pub const STABLE_WINDOW: usize = 5;
pub const STABLE_NEW: f64 = 2.0;

/// What one session did, by facet: value -> events (and an executable's hash).
#[derive(Default)]
pub struct Learned {
    pub values: [HashMap<String, (u64, Option<String>)>; FACETS],
    /// Per rate kind: the session's per-minute counts.
    pub minutes: [Vec<u64>; RATE_KINDS],
    pub events: u64,
    /// Values this session saw that the profile did not know and that would have held
    /// (their score reaches the hold threshold), by facet.
    pub holding: [HashSet<String>; FACETS],
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 2).expect("static bounds")
}

impl Profile {
    pub fn new(name: &str) -> Profile {
        Profile {
            name: name.into(),
            mode: ProfileMode::Learn,
            sessions: 0,
            events: 0,
            first_ms: None,
            last_ms: None,
            entries: Default::default(),
            rates: std::array::from_fn(|_| histogram()),
            learned_per_session: Vec::new(),
            holding_per_session: Vec::new(),
        }
    }

    pub fn knows(&self, facet: Facet, value: &str) -> Option<&Stat> {
        self.entries[facet as usize].get(value)
    }

    /// Events a minute far above what this profile does.
    pub fn rate_threshold(&self, kind: RateKind) -> u64 {
        let h = &self.rates[kind as usize];
        let max = if h.is_empty() { 0 } else { h.max() };
        kind.floor().max(max.saturating_mul(RATE_FACTOR))
    }

    /// Adds one session's learning; returns the entries it added or changed (to store).
    pub fn merge(&mut self, l: &Learned, now_ms: i64) -> Vec<(Facet, String)> {
        let mut changed = Vec::new();
        let (mut new, mut holding) = (0u64, 0u64);
        for f in Facet::ALL {
            for (value, (events, sha)) in &l.values[f as usize] {
                let e = self.entries[f as usize]
                    .entry(value.clone())
                    .or_insert_with(|| {
                        new += 1;
                        holding += u64::from(l.holding[f as usize].contains(value));
                        Stat {
                            sessions: 0,
                            events: 0,
                            first_ms: now_ms,
                            last_ms: now_ms,
                            sha256: None,
                        }
                    });
                e.sessions += 1;
                e.events += events;
                e.last_ms = now_ms;
                if sha.is_some() {
                    e.sha256.clone_from(sha);
                }
                changed.push((f, value.clone()));
            }
        }
        for k in RateKind::ALL {
            for &n in &l.minutes[k as usize] {
                let _ = self.rates[k as usize].record(n.max(1));
            }
        }
        self.sessions += 1;
        self.events += l.events;
        self.first_ms.get_or_insert(now_ms);
        self.last_ms = Some(now_ms);
        for (kept, n) in [
            (&mut self.learned_per_session, new),
            (&mut self.holding_per_session, holding),
        ] {
            kept.push(n);
            if kept.len() > LEARNED_KEPT {
                kept.remove(0);
            }
        }
        changed
    }

    /// Mean new entries per session over the last `STABLE_WINDOW` sessions.
    pub fn learning(&self) -> f64 {
        let recent: Vec<u64> = self
            .learned_per_session
            .iter()
            .rev()
            .take(STABLE_WINDOW)
            .copied()
            .collect();
        if recent.is_empty() {
            return 0.0;
        }
        recent.iter().sum::<u64>() as f64 / recent.len() as f64
    }

    pub fn stable(&self) -> bool {
        // A profile from before this was counted earns it again over the next sessions.
        let held = &self.holding_per_session;
        self.sessions >= STABLE_SESSIONS
            && self.learning() <= STABLE_NEW
            && held.len() >= STABLE_WINDOW
            && held.iter().rev().take(STABLE_WINDOW).all(|&n| n == 0)
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.iter().map(|m| m.len() as u64).sum()
    }

    pub fn per_facet(&self) -> BTreeMap<String, u64> {
        Facet::ALL
            .iter()
            .map(|f| {
                (
                    f.as_str().to_string(),
                    self.entries[*f as usize].len() as u64,
                )
            })
            .collect()
    }

    /// Up to `n` values of `facet` the profile has, nearest to `value` first (the longest
    /// common prefix), for a finding's "what the profile has instead".
    pub fn nearest(&self, facet: Facet, value: &str, n: usize) -> Vec<String> {
        let mut v: Vec<(usize, &String)> = self.entries[facet as usize]
            .keys()
            .map(|k| {
                let common = k
                    .bytes()
                    .zip(value.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                (common, k)
            })
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        v.into_iter().take(n).map(|(_, k)| k.clone()).collect()
    }

    pub fn entry(&self, facet: Facet, value: &str) -> Option<Entry> {
        self.knows(facet, value).map(|s| Entry {
            facet: facet.as_str().into(),
            value: value.into(),
            sessions: s.sessions,
            events: s.events,
            first_seen: rfc3339(s.first_ms),
            last_seen: rfc3339(s.last_ms),
            sha256: s.sha256.clone(),
        })
    }

    pub fn export(&self) -> ProfileExport {
        let mut entries = Vec::new();
        for f in Facet::ALL {
            let mut values: Vec<&String> = self.entries[f as usize].keys().collect();
            values.sort();
            entries.extend(values.into_iter().filter_map(|v| self.entry(f, v)));
        }
        let rates = RateKind::ALL
            .iter()
            .map(|k| {
                let h = &self.rates[*k as usize];
                let empty = h.is_empty();
                Rate {
                    kind: k.as_str().into(),
                    minutes: h.len(),
                    p50: if empty { 0 } else { h.value_at_quantile(0.5) },
                    p99: if empty { 0 } else { h.value_at_quantile(0.99) },
                    max: if empty { 0 } else { h.max() },
                    histogram: h
                        .iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect(),
                }
            })
            .collect();
        ProfileExport {
            profile: self.name.clone(),
            mode: self.mode,
            sessions: self.sessions,
            events: self.events,
            first_seen: self.first_ms.map(rfc3339),
            last_seen: self.last_ms.map(rfc3339),
            learned_per_session: self.learned_per_session.clone(),
            holding_per_session: self.holding_per_session.clone(),
            entries,
            rates,
        }
    }

    /// A profile from its export; the error names the field.
    pub fn import(x: &ProfileExport) -> Result<Profile, String> {
        let mut p = Profile::new(&x.profile);
        super::valid_name(&x.profile).map_err(|e| format!("profile: {e}"))?;
        p.mode = x.mode;
        p.sessions = x.sessions;
        p.events = x.events;
        let time = |field: String, t: &str| {
            parse_ms(t).ok_or_else(|| format!("{field}: {t:?} is not an RFC 3339 time"))
        };
        p.first_ms = x
            .first_seen
            .as_deref()
            .map(|t| time("first_seen".into(), t))
            .transpose()?;
        p.last_ms = x
            .last_seen
            .as_deref()
            .map(|t| time("last_seen".into(), t))
            .transpose()?;
        p.learned_per_session = x.learned_per_session.clone();
        p.holding_per_session = x.holding_per_session.clone();
        for (i, e) in x.entries.iter().enumerate() {
            let f = Facet::parse(&e.facet).ok_or_else(|| {
                format!(
                    "entries[{i}].facet: {:?} is not a facet (expected one of {})",
                    e.facet,
                    Facet::ALL.map(|f| f.as_str()).join(", ")
                )
            })?;
            if e.value.is_empty() {
                return Err(format!("entries[{i}].value: empty"));
            }
            if let Some(h) = &e.sha256 {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("entries[{i}].sha256: not 64 hex digits"));
                }
            }
            let stat = Stat {
                sessions: e.sessions,
                events: e.events,
                first_ms: time(format!("entries[{i}].first_seen"), &e.first_seen)?,
                last_ms: time(format!("entries[{i}].last_seen"), &e.last_seen)?,
                sha256: e.sha256.clone(),
            };
            p.entries[f as usize].insert(e.value.clone(), stat);
        }
        for (i, r) in x.rates.iter().enumerate() {
            let k = RateKind::ALL
                .into_iter()
                .find(|k| k.as_str() == r.kind)
                .ok_or_else(|| format!("rates[{i}].kind: {:?} is not a rate kind", r.kind))?;
            for (value, count) in &r.histogram {
                p.rates[k as usize]
                    .record_n((*value).max(1), *count)
                    .map_err(|e| format!("rates[{i}].histogram: {value}: {e}"))?;
            }
        }
        Ok(p)
    }
}

pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn parse_ms(t: &str) -> Option<i64> {
    let st = humantime::parse_rfc3339_weak(t).ok()?;
    Some(st.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_counts_sessions_and_stability_follows_what_is_new() {
        let mut p = Profile::new("t");
        for i in 0..6 {
            let mut l = Learned::default();
            l.values[Facet::Exec as usize].insert("/usr/bin/git".into(), (3, None));
            if i < 2 {
                l.values[Facet::Read as usize].insert(format!("/area{i}"), (1, None));
            }
            l.minutes[RateKind::Exec as usize].push(10);
            p.merge(&l, 1000 + i);
        }
        let s = p.knows(Facet::Exec, "/usr/bin/git").unwrap();
        assert_eq!((s.sessions, s.events), (6, 18));
        assert_eq!(p.learned_per_session, vec![2, 1, 0, 0, 0, 0]);
        assert!(p.stable());
        // One session that brings a single entry that would have held: not stable for the
        // next five, however few entries they bring.
        let mut l = Learned::default();
        l.values[Facet::Destination as usize].insert("evil.example:443".into(), (1, None));
        l.holding[Facet::Destination as usize].insert("evil.example:443".into());
        p.merge(&l, 2000);
        assert_eq!(p.holding_per_session.last(), Some(&1));
        assert!(!p.stable(), "{:?}", p.holding_per_session);
        for i in 0..STABLE_WINDOW as i64 {
            assert!(!p.stable());
            p.merge(&Learned::default(), 3000 + i);
        }
        assert!(p.stable());
        assert_eq!(p.rate_threshold(RateKind::Exec), RateKind::Exec.floor());
    }

    #[test]
    fn export_and_import_round_trip_and_bad_fields_are_named() {
        let mut p = Profile::new("t");
        let mut l = Learned::default();
        l.values[Facet::Destination as usize].insert("example.com:443".into(), (2, None));
        l.minutes[RateKind::Connect as usize].push(2000);
        p.merge(&l, 1_700_000_000_000);
        let x = p.export();
        let yaml = serde_yaml_ng::to_string(&x).unwrap();
        let back: ProfileExport = serde_yaml_ng::from_str(&yaml).unwrap();
        let q = Profile::import(&back).unwrap();
        assert_eq!(q.export(), x);
        // A learned rate above the floor sets the threshold (to the histogram's precision).
        let t = q.rate_threshold(RateKind::Connect);
        assert_eq!(t, p.rate_threshold(RateKind::Connect));
        assert!((2000 * RATE_FACTOR..2100 * RATE_FACTOR).contains(&t), "{t}");
        let mut bad = x.clone();
        bad.entries[0].facet = "nope".into();
        let e = Profile::import(&bad).err().unwrap();
        assert!(e.starts_with("entries[0].facet"), "{e}");
    }
}
