//! The baseline detector: one profile per kind of agent, learned from its sessions in `learn`
//! mode; in `shadow` and `enforce` mode each event is compared with it, and what the profile
//! never saw (a program, where programs run from, a file area for an intent, a destination, a
//! parent-child edge, a tree shape, a kind of action), a minute far above the learned rate, or
//! a new read followed by a new destination is a finding with a score. The daemon never moves
//! a profile to `enforce` by itself: only `watcher baseline mode` does.
pub mod bench;
pub mod decoded;
pub mod facets;
pub mod profile;
pub mod store;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use self::{
    facets::{Base, Facet, FACETS},
    profile::{Learned, Profile, RateKind, RATE_KINDS},
    store::ProfileStore,
};
use super::intake::tree::{Tree, AT_FDCWD};
use crate::{
    config::Config,
    model::{
        baseline::{Novelty, ProfileExport, ProfileMode, ProfileSummary, WouldHold},
        event::{Anomaly, Detail, Event},
    },
    sys::worker::Worker,
};

/// Sessions whose novelties are kept for `baseline diff`.
const DIFF_SESSIONS: usize = 100;
/// Novelties kept per session (the rest are counted, not listed).
const DIFF_MAX: usize = 10_000;
/// Paths a session wrote that are remembered (to tell a program it wrote itself).
const WRITTEN_MAX: usize = 100_000;
/// Executables larger than this are not hashed.
const HASH_MAX: u64 = 64 << 20;
/// A new read, then a new destination within this time: the sequence detector.
const SEQUENCE_NS: u64 = 120_000_000_000;

pub use crate::model::baseline::valid_profile_name as valid_name;

/// The profiles, shared by intake (which reads them per event) and the control socket.
pub struct Baselines {
    profiles: Mutex<HashMap<String, Arc<Profile>>>,
    /// Bumped on every change of a profile, so intake picks up the new one.
    generation: AtomicU64,
    store: Option<Arc<Mutex<ProfileStore>>>,
    worker: Option<Worker>,
    thresholds: HashMap<String, (f32, f32)>,
    default_thresholds: (f32, f32),
    diffs: Mutex<VecDeque<(String, String, Vec<Novelty>)>>,
    /// Counted: every `would_hold` a profile recorded since the daemon started is in the store.
    would_hold: Mutex<HashMap<String, u64>>,
}

impl Baselines {
    /// Loads the profiles from `store` (None: in memory only, for tools and tests).
    pub fn open(config: &Config, store: Option<PathBuf>) -> anyhow::Result<Baselines> {
        let (store, profiles) = match store {
            Some(path) => {
                let s = ProfileStore::open(&path)?;
                let loaded = s.load()?;
                (Some(Arc::new(Mutex::new(s))), loaded)
            }
            None => (None, Vec::new()),
        };
        let worker = match store {
            Some(_) => Some(Worker::start("watcher-baseline")?),
            None => None,
        };
        let thresholds = config
            .profiles
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    (
                        p.alert_at.unwrap_or(config.baseline.alert_at),
                        p.hold_at.unwrap_or(config.baseline.hold_at),
                    ),
                )
            })
            .collect();
        Ok(Baselines {
            profiles: Mutex::new(
                profiles
                    .into_iter()
                    .map(|p| (p.name.clone(), Arc::new(p)))
                    .collect(),
            ),
            generation: AtomicU64::new(1),
            store,
            worker,
            thresholds,
            default_thresholds: (config.baseline.alert_at, config.baseline.hold_at),
            diffs: Mutex::new(VecDeque::new()),
            would_hold: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Profile>>> {
        self.profiles.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// (alert_at, hold_at) of a profile.
    pub fn thresholds(&self, profile: &str) -> (f32, f32) {
        self.thresholds
            .get(profile)
            .copied()
            .unwrap_or(self.default_thresholds)
    }

    /// The profile as it is now (a new, empty one in `learn` mode if it has none yet).
    pub fn get(&self, name: &str) -> Arc<Profile> {
        self.lock()
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::new(Profile::new(name)))
    }

    fn existing(&self, name: &str) -> Result<Arc<Profile>, String> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no profile {name:?} (it learns from its first session)"))
    }

    /// Replaces a profile and stores it (off the caller's thread when `changed` lists only
    /// some entries).
    fn put(&self, p: Profile, changed: Option<Vec<(Facet, String)>>) {
        let p = Arc::new(p);
        self.lock().insert(p.name.clone(), p.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let (Some(store), Some(worker)) = (self.store.clone(), &self.worker) {
            worker.submit(move || {
                let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = s.save(&p, changed.as_deref()) {
                    tracing::error!("storing profile {}: {e}", p.name);
                }
            });
        }
    }

    /// Adds a session's learning to its profile (if the profile still learns).
    fn learned(&self, name: &str, l: &Learned) -> u64 {
        let mut p = self.get(name).as_ref().clone();
        if p.mode != ProfileMode::Learn {
            return 0;
        }
        let before = p.entry_count();
        let changed = p.merge(l, profile::now_ms());
        let new = p.entry_count() - before;
        self.put(p, Some(changed));
        new
    }

    /// Teaches the profile one value (an approval with `--remember` of a baseline finding).
    pub fn teach(&self, name: &str, facet: &str, value: &str) -> Result<(), String> {
        let f = Facet::parse(facet).ok_or_else(|| format!("{facet:?} is not a facet"))?;
        let mut p = self.get(name).as_ref().clone();
        let now = profile::now_ms();
        let e = p.entries[f as usize]
            .entry(value.to_string())
            .or_insert(profile::Stat {
                sessions: 0,
                events: 0,
                first_ms: now,
                last_ms: now,
                sha256: None,
            });
        e.sessions += 1;
        e.events += 1;
        e.last_ms = now;
        self.put(p, Some(vec![(f, value.to_string())]));
        Ok(())
    }

    pub fn set_mode(&self, name: &str, mode: ProfileMode) -> Result<ProfileSummary, String> {
        valid_name(name)?;
        let mut p = self.get(name).as_ref().clone();
        p.mode = mode;
        tracing::warn!(
            profile = name,
            mode = mode.as_str(),
            "baseline mode changed"
        );
        self.put(p, Some(Vec::new()));
        Ok(self.summary(&self.get(name)))
    }

    pub fn summary(&self, p: &Profile) -> ProfileSummary {
        let (alert_at, hold_at) = self.thresholds(&p.name);
        ProfileSummary {
            profile: p.name.clone(),
            mode: p.mode,
            sessions: p.sessions,
            events: p.events,
            entries: p.entry_count(),
            per_facet: p.per_facet(),
            learning: p.learning(),
            stable: p.stable(),
            alert_at,
            hold_at,
            would_hold: self
                .would_hold
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&p.name)
                .copied()
                .unwrap_or(0),
        }
    }

    pub fn summaries(&self) -> Vec<ProfileSummary> {
        let mut v: Vec<Arc<Profile>> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.iter().map(|p| self.summary(p)).collect()
    }

    pub fn export(&self, name: &str) -> Result<ProfileExport, String> {
        Ok(self.existing(name)?.export())
    }

    pub fn import(&self, x: &ProfileExport) -> Result<ProfileSummary, String> {
        let p = Profile::import(x)?;
        let name = p.name.clone();
        self.put(p, None);
        Ok(self.summary(&self.get(&name)))
    }

    pub fn reset(&self, name: &str) -> Result<(), String> {
        self.existing(name)?;
        self.lock().remove(name);
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let (Some(store), Some(worker)) = (self.store.clone(), &self.worker) {
            let name = name.to_string();
            worker.submit(move || {
                if let Err(e) = store
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .delete(&name)
                {
                    tracing::error!("resetting profile {name}: {e}");
                }
            });
        }
        Ok(())
    }

    /// What the session did that its profile had not seen.
    pub fn diff(&self, trace: &str) -> Result<(String, Vec<Novelty>), String> {
        self.diffs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(t, _, _)| t == trace)
            .map(|(_, p, n)| (p.clone(), n.clone()))
            .ok_or_else(|| {
                format!("no baseline record of session {trace} (it has not ended, had no profile, or is older than the last {DIFF_SESSIONS} sessions)")
            })
    }

    pub fn report(&self, name: &str) -> Result<Vec<WouldHold>, String> {
        match &self.store {
            Some(s) => s
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .would_hold(name)
                .map_err(|e| e.to_string()),
            None => Ok(Vec::new()),
        }
    }

    fn record_would_hold(&self, profile: &str, w: WouldHold) {
        *self
            .would_hold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(profile.to_string())
            .or_default() += 1;
        if let (Some(store), Some(worker)) = (self.store.clone(), &self.worker) {
            let profile = profile.to_string();
            worker.submit(move || {
                let s = store.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = s.add_would_hold(&profile, &w) {
                    tracing::error!("recording a would_hold of {profile}: {e}");
                }
            });
        }
    }

    /// Waits until every queued store write is done (tests, shutdown).
    pub fn flush(&self) {
        if let Some(w) = &self.worker {
            let (tx, rx) = std::sync::mpsc::channel();
            w.submit(move || {
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
        }
    }
}

/// How much a finding weighs: alert or hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Alert,
    Hold,
}

/// One baseline finding, for intake to decide and publish.
#[derive(Debug, Clone)]
pub struct Found {
    pub rule: &'static str,
    pub description: String,
    pub score: f32,
    pub level: Level,
    pub mode: ProfileMode,
    pub anomaly: Anomaly,
    /// Earlier events that belong to the finding (a sequence's first step); the event itself
    /// comes last.
    pub before: Vec<Event>,
}

/// What the baseline keeps per running session (intake's own, no lock).
struct SessionState {
    profile: Arc<Profile>,
    generation: u64,
    /// The profile's (alert_at, hold_at), from the configuration.
    thresholds: (f32, f32),
    learned: Learned,
    /// Values of each facet already reported (or, in learn mode, counted) this session.
    flagged: [HashSet<String>; FACETS],
    novel: Vec<Novelty>,
    written: HashSet<String>,
    /// Program node names by pid (for edges and ancestry).
    nodes: HashMap<u32, String>,
    minute_start_ns: u64,
    minute: [u64; RATE_KINDS],
    rate_flagged: [bool; RATE_KINDS],
    /// The last new read outside the work directory: (time, area, event).
    new_read: Option<(u64, String, Event)>,
    /// Pipes carrying what a new decoder wrote (`decoded`), by inode, and the decoder.
    decoded: Vec<u64>,
    decoder: Option<String>,
}

/// The detector, owned by intake.
#[derive(Default)]
pub struct Detector {
    sessions: HashMap<u64, SessionState>,
    /// SHA-256 of executables by (device, inode, size, mtime).
    hashes: HashMap<(u64, u64, u64, i64), Option<String>>,
}

/// What the detector needs to know about the event's session.
pub struct Ctx<'a> {
    pub session_id: u64,
    pub trace_id: &'a str,
    pub profile: &'a str,
    pub workdir: Option<&'a str>,
    pub tree: &'a Tree,
    pub ts_ns: u64,
}

impl Detector {
    /// The mode of the session's profile (for the gate: an enforced session is gated).
    pub fn mode(&self, session_id: u64) -> Option<ProfileMode> {
        self.sessions.get(&session_id).map(|s| s.profile.mode)
    }

    /// Looks at one event of a session with a profile; returns its findings (none in learn
    /// mode).
    pub fn observe(&mut self, b: &Baselines, ev: &Event, cx: &Ctx<'_>) -> Vec<Found> {
        let generation = b.generation();
        let Detector { sessions, hashes } = self;
        let st = sessions
            .entry(cx.session_id)
            .or_insert_with(|| SessionState {
                profile: b.get(cx.profile),
                thresholds: b.thresholds(cx.profile),
                generation,
                learned: Learned::default(),
                flagged: Default::default(),
                novel: Vec::new(),
                written: HashSet::new(),
                nodes: HashMap::new(),
                minute_start_ns: cx.ts_ns,
                minute: [0; RATE_KINDS],
                rate_flagged: [false; RATE_KINDS],
                new_read: None,
                decoded: Vec::new(),
                decoder: None,
            });
        if st.generation != generation {
            st.profile = b.get(cx.profile);
            st.generation = generation;
        }
        let learn = st.profile.mode == ProfileMode::Learn;
        let mut values: Vec<(Facet, String, Option<Base>)> = Vec::new();
        let mut rate: Option<RateKind> = None;
        let mut exe_hash: Option<(String, String)> = None;
        extract(st, ev, cx, &mut values, &mut rate);
        // The content hash of a system program: learned, and compared with what was learned.
        if let Some((_, path, _)) = values.iter().find(|(f, _, _)| *f == Facet::Exec) {
            let known = st.profile.knows(Facet::Exec, path);
            if learn || known.is_some_and(|s| s.sha256.is_some()) {
                if let Some(real) = exec_path(ev, cx) {
                    if let Some(h) = hash(hashes, &real) {
                        exe_hash = Some((path.clone(), h));
                    }
                }
            }
        }
        // Rates: the current minute of the session.
        if cx.ts_ns.saturating_sub(st.minute_start_ns) >= 60_000_000_000 {
            if learn {
                for k in RateKind::ALL {
                    if st.minute[k as usize] > 0 {
                        st.learned.minutes[k as usize].push(st.minute[k as usize]);
                    }
                }
            }
            st.minute = [0; RATE_KINDS];
            st.rate_flagged = [false; RATE_KINDS];
            st.minute_start_ns = cx.ts_ns;
        }
        if let Some(k) = rate {
            st.minute[k as usize] += 1;
        }
        if learn {
            st.learned.events += 1;
            let hold_at = st.thresholds.1;
            for (f, v, base) in values {
                if st.profile.knows(f, &v).is_none() && score(f, base, &v) >= hold_at {
                    st.learned.holding[f as usize].insert(v.clone());
                }
                let sha = exe_hash
                    .as_ref()
                    .filter(|(p, _)| f == Facet::Exec && *p == v)
                    .map(|(_, h)| h.clone());
                let e = st.learned.values[f as usize].entry(v).or_insert((0, None));
                e.0 += 1;
                if sha.is_some() {
                    e.1 = sha;
                }
            }
            return Vec::new();
        }
        let (alert_at, hold_at) = st.thresholds;
        let mut found = Vec::new();
        let mode = st.profile.mode;
        let sessions = st.profile.sessions;
        let level = |score: f32| {
            if score >= hold_at {
                Some(Level::Hold)
            } else if score >= alert_at {
                Some(Level::Alert)
            } else {
                None
            }
        };
        for (f, v, base) in values {
            if let Some(stat) = st.profile.knows(f, &v) {
                if let (Some(learned), Some((p, now))) = (&stat.sha256, &exe_hash) {
                    if *p == v && learned != now && st.flagged[f as usize].insert(format!("#{v}")) {
                        let score = 0.5;
                        if let Some(l) = level(score) {
                            found.push(Found {
                                rule: "baseline-changed-program",
                                description: format!("{v} is not the program this profile learned (its content changed)"),
                                score,
                                level: l,
                                mode,
                                anomaly: Anomaly {
                                    facet: "exec".into(),
                                    value: format!("{v} sha256:{now}"),
                                    instead: vec![format!("sha256:{learned}")],
                                    sessions: Some(sessions),
                                    widen: None,
                                },
                                before: Vec::new(),
                            });
                        }
                    }
                }
                continue;
            }
            if !st.flagged[f as usize].insert(v.clone()) {
                continue;
            }
            let mut score = score(f, base, &v);
            let mut description = describe(f, &v);
            if f == Facet::Exec && facets::program_class(facets::basename(&v)) == Some("decoder") {
                match decoded::reach(cx.tree, cx.session_id, ev.pid) {
                    decoded::Reach::Runs(reader) => {
                        score = score.max(0.75);
                        description = format!("{description}, and {reader} runs what it decodes");
                    }
                    decoded::Reach::Carried(pipes) => {
                        st.decoder = Some(v.clone());
                        for i in pipes {
                            if st.decoded.len() < decoded::PIPES_MAX && !st.decoded.contains(&i) {
                                st.decoded.push(i);
                            }
                        }
                    }
                }
            }
            if f == Facet::Read && score > 0.3 {
                // A directory opened without O_DIRECTORY (`find` saving its place) is still a
                // listing. Looked at only for what is new, so rarely.
                if let Detail::Open { path, .. } = &ev.detail {
                    if std::path::Path::new(path).is_dir() {
                        score = 0.3;
                    }
                }
            }
            if st.novel.len() < DIFF_MAX {
                st.novel.push(Novelty {
                    facet: f.as_str().into(),
                    value: v.clone(),
                    events: 1,
                    score,
                });
            }
            let before = match f {
                Facet::Read if score >= alert_at => {
                    st.new_read = Some((cx.ts_ns, v.clone(), ev.clone()));
                    Vec::new()
                }
                _ => Vec::new(),
            };
            let Some(l) = level(score) else { continue };
            found.push(Found {
                rule: rule_of(f),
                description,
                score,
                level: l,
                mode,
                anomaly: Anomaly {
                    facet: f.as_str().into(),
                    value: v.clone(),
                    instead: st.profile.nearest(f, &v, 5),
                    sessions: Some(sessions),
                    widen: None,
                },
                before,
            });
            // A new read outside the work directory, then a new destination: the sequence.
            if f == Facet::Destination {
                if let Some((t, area, read)) = &st.new_read {
                    if cx.ts_ns.saturating_sub(*t) <= SEQUENCE_NS {
                        let score = 0.95;
                        found.push(Found {
                            rule: "baseline-read-then-send",
                            description: format!(
                                "read {area}, which this profile never reads, then connected to {v}, where it never connects"
                            ),
                            score,
                            level: level(score).unwrap_or(Level::Hold),
                            mode,
                            anomaly: Anomaly {
                                facet: "sequence".into(),
                                value: format!("{area} -> {v}"),
                                instead: Vec::new(),
                                sessions: Some(sessions),
                                widen: None,
                            },
                            before: vec![read.clone()],
                        });
                    }
                }
            }
        }
        // The reader of a new decoder's output runs its program: before it reads a byte.
        if let (Detail::Exec { .. }, Some(decoder)) = (&ev.detail, &st.decoder) {
            let prog = exec_path(ev, cx);
            let prog = prog.as_deref().map_or(ev.comm.as_str(), facets::basename);
            if decoded::arrives(&mut st.decoded, ev.pid, prog) {
                let score = 0.9;
                found.push(Found {
                    rule: "baseline-decoded-run",
                    description: format!(
                        "{prog} runs what {decoder}, a decoder this profile never runs, decoded"
                    ),
                    score,
                    level: level(score).unwrap_or(Level::Hold),
                    mode,
                    anomaly: Anomaly {
                        facet: "sequence".into(),
                        value: format!("{} | {prog}", facets::basename(decoder)),
                        instead: Vec::new(),
                        sessions: Some(sessions),
                        widen: None,
                    },
                    before: Vec::new(),
                });
            }
        }
        if let Some(k) = rate {
            let n = st.minute[k as usize];
            let limit = st.profile.rate_threshold(k);
            if n > limit && !st.rate_flagged[k as usize] {
                st.rate_flagged[k as usize] = true;
                let score = 0.7;
                let h = &st.profile.rates[k as usize];
                if let Some(l) = level(score) {
                    found.push(Found {
                        rule: "baseline-rate",
                        description: format!(
                            "{n} {} events within a minute: far above this profile's rate (at most {} a minute learned)",
                            k.as_str(),
                            if h.is_empty() { 0 } else { h.max() }
                        ),
                        score,
                        level: l,
                        mode,
                        anomaly: Anomaly {
                            facet: "rate".into(),
                            value: format!("{}: {n}/min", k.as_str()),
                            instead: vec![format!("threshold {limit}/min")],
                            sessions: Some(sessions),
                            widen: None,
                        },
                        before: Vec::new(),
                    });
                }
            }
        }
        if mode == ProfileMode::Shadow {
            for f in &found {
                if f.level == Level::Hold {
                    b.record_would_hold(
                        cx.profile,
                        WouldHold {
                            at: ev.ts.to_string(),
                            trace_id: cx.trace_id.to_string(),
                            rule: f.rule.into(),
                            facet: f.anomaly.facet.clone(),
                            value: f.anomaly.value.clone(),
                            score: f.score,
                            description: f.description.clone(),
                        },
                    );
                }
            }
        }
        found
    }

    /// Forgets every session (keeps the executables' hashes, as a running daemon does).
    pub fn forget_sessions(&mut self) {
        self.sessions.clear();
    }

    /// A process exited: its node name goes.
    pub fn process_exited(&mut self, session_id: u64, pid: u32) {
        if let Some(st) = self.sessions.get_mut(&session_id) {
            st.nodes.remove(&pid);
        }
    }

    /// The session ended: in learn mode it teaches its profile; its novelties are kept for
    /// `baseline diff`.
    pub fn session_ended(&mut self, b: &Baselines, session_id: u64, trace: &str, profile: &str) {
        let Some(mut st) = self.sessions.remove(&session_id) else {
            return;
        };
        if st.profile.mode == ProfileMode::Learn {
            for k in RateKind::ALL {
                if st.minute[k as usize] > 0 {
                    st.learned.minutes[k as usize].push(st.minute[k as usize]);
                }
            }
            // In learn mode the diff is what the session taught.
            let before = b.get(profile);
            st.novel = Facet::ALL
                .iter()
                .flat_map(|f| {
                    st.learned.values[*f as usize]
                        .iter()
                        .filter(|(v, _)| before.knows(*f, v).is_none())
                        .map(|(v, (n, _))| Novelty {
                            facet: f.as_str().into(),
                            value: v.clone(),
                            events: *n,
                            score: 0.0,
                        })
                })
                .take(DIFF_MAX)
                .collect();
            let new = b.learned(profile, &st.learned);
            tracing::info!(
                profile,
                trace_id = trace,
                new,
                "the session taught its profile"
            );
        }
        st.novel
            .sort_by(|a, b| (&a.facet, &a.value).cmp(&(&b.facet, &b.value)));
        let mut d = b.diffs.lock().unwrap_or_else(|e| e.into_inner());
        if d.len() >= DIFF_SESSIONS {
            d.pop_front();
        }
        d.push_back((trace.to_string(), profile.to_string(), st.novel));
    }
}

fn hash(hashes: &mut HashMap<(u64, u64, u64, i64), Option<String>>, path: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() || m.len() > HASH_MAX {
        return None;
    }
    let key = (
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
    );
    if let Some(h) = hashes.get(&key) {
        return h.clone();
    }
    let h = sha256_file(path);
    if hashes.len() > 65_536 {
        hashes.clear();
    }
    hashes.insert(key, h.clone());
    h
}

fn sha256_file(path: &str) -> Option<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The executable's absolute path.
fn exec_path(ev: &Event, cx: &Ctx<'_>) -> Option<String> {
    let Detail::Exec { path, .. } = &ev.detail else {
        return None;
    };
    let (p, ok) = cx.tree.resolve(ev.pid, AT_FDCWD, path.as_str());
    ok.then_some(p)
}

/// The values the event gives each facet, and the rate it counts in.
fn extract(
    st: &mut SessionState,
    ev: &Event,
    cx: &Ctx<'_>,
    out: &mut Vec<(Facet, String, Option<Base>)>,
    rate: &mut Option<RateKind>,
) {
    let w = cx.workdir;
    let tool = || {
        cx.tree
            .get(ev.pid)
            .and_then(|p| p.exe.as_deref())
            .map(facets::basename)
    };
    let area = |f: Facet, path: &str, out: &mut Vec<_>| {
        let t = if f == Facet::Read { None } else { tool() };
        let (b, a) = facets::area(path, w, t);
        out.push((f, a, Some(b)));
        b
    };
    match &ev.detail {
        Detail::Exec { argv, fileless, .. } => {
            *rate = Some(RateKind::Exec);
            let Some(path) = exec_path(ev, cx) else {
                out.push((Facet::ExecLocation, "unknown".into(), None));
                return;
            };
            let written = st.written.contains(&path);
            let (b, _) = facets::base(&path, w);
            let loc = if *fileless {
                "fileless".to_string()
            } else {
                facets::location(b, written)
            };
            out.push((Facet::ExecLocation, loc, Some(b)));
            // `sh /tmp/x.sh` runs /tmp/x.sh: a script the interpreter is given counts where it
            // lives, as the program would (`./x.sh`).
            if facets::is_interpreter(facets::basename(&path)) {
                if let Some(script) = argv.get(1).filter(|a| !a.starts_with('-')) {
                    let (p, ok) = cx.tree.resolve(ev.pid, AT_FDCWD, script.as_str());
                    if ok && st.written.contains(&p) {
                        let (sb, _) = facets::base(&p, w);
                        out.push((Facet::ExecLocation, facets::location(sb, true), Some(sb)));
                    }
                }
            }
            if matches!(b, Base::System | Base::Home) && !written && !*fileless {
                let shown = match b {
                    Base::Home => home_relative(&path),
                    _ => path.clone(),
                };
                out.push((Facet::Exec, shown, Some(b)));
            }
            let me = if *fileless {
                "[fileless]".to_string()
            } else {
                facets::node(&path, w, written)
            };
            // A program of the work directory or a scratch place goes by its class: its name
            // is the task's, not the agent's habit.
            let command = if me.starts_with('[') {
                me.clone()
            } else {
                facets::command(&path, argv)
            };
            out.push((Facet::Command, command, Some(b)));
            let parent = st
                .nodes
                .get(&ev.ppid)
                .cloned()
                .or_else(|| {
                    cx.tree
                        .get(ev.ppid)
                        .and_then(|p| p.exe.as_deref())
                        .map(|e| facets::basename(e).to_string())
                })
                .unwrap_or_else(|| "[outside]".into());
            let grand = cx
                .tree
                .get(ev.ppid)
                .and_then(|p| st.nodes.get(&p.ppid).cloned())
                .unwrap_or_else(|| "[outside]".into());
            out.push((Facet::Edge, format!("{parent} > {me}"), Some(b)));
            out.push((
                Facet::Ancestry,
                format!("{grand} > {parent} > {me}"),
                Some(b),
            ));
            st.nodes.insert(ev.pid, me);
        }
        Detail::Fork {
            child_pid,
            thread: false,
        } => {
            if let Some(n) = st.nodes.get(&ev.pid).cloned() {
                st.nodes.insert(*child_pid, n);
            }
        }
        Detail::Open {
            path,
            flags,
            result,
            resolved: true,
            ..
        } if *result >= 0 => {
            let creates = flags.creates();
            if flags.may_change() {
                *rate = Some(RateKind::Write);
                area(
                    if creates { Facet::Create } else { Facet::Write },
                    path,
                    out,
                );
                if st.written.len() < WRITTEN_MAX {
                    st.written.insert(path.clone());
                }
            } else {
                *rate = Some(RateKind::Read);
                if flags.directory() {
                    // A listing shows names, not contents: the directory itself, as `AREA/`.
                    let (b, mut a) = facets::area(&format!("{path}/."), w, None);
                    if !a.ends_with('/') {
                        a.push('/');
                    }
                    out.push((Facet::Read, a, Some(b)));
                } else {
                    area(Facet::Read, path, out);
                }
            }
        }
        Detail::Unlink {
            path,
            result: 0,
            resolved: true,
            ..
        } => {
            let b = area(Facet::Delete, path, out);
            *rate = Some(if b == Base::Work {
                RateKind::Delete
            } else {
                RateKind::DeleteOutside
            });
        }
        Detail::Rename {
            path,
            new_path,
            result: 0,
            resolved: true,
            ..
        } => {
            area(Facet::Delete, path, out);
            area(Facet::Create, new_path, out);
            if st.written.len() < WRITTEN_MAX {
                st.written.insert(new_path.clone());
            }
        }
        Detail::Link {
            path,
            result: 0,
            resolved: true,
            ..
        } => {
            area(Facet::Create, path, out);
        }
        Detail::Truncate {
            path,
            result: 0,
            resolved: true,
            ..
        }
        | Detail::Chmod {
            path,
            result: 0,
            resolved: true,
            ..
        } => {
            area(Facet::Write, path, out);
            if let Detail::Chmod { mode, .. } = &ev.detail {
                if mode & 0o6000 != 0 {
                    out.push((Facet::Kind, "chmod-setid".into(), None));
                }
            }
        }
        Detail::Chown {
            result: 0, path, ..
        } => {
            area(Facet::Write, path, out);
            out.push((Facet::Kind, "chown".into(), None));
        }
        Detail::Connect {
            family,
            addr,
            host,
            port,
            path,
            result,
            ..
        } if *result == 0 || *result == -(libc::EINPROGRESS as i64) => {
            *rate = Some(RateKind::Connect);
            match (family.as_str(), addr, port, path) {
                ("inet" | "inet6", Some(a), Some(p), _) => out.push((
                    Facet::Destination,
                    facets::destination(a, *p, host.as_deref()),
                    None,
                )),
                ("unix", _, _, Some(p)) => {
                    let (_, a) = facets::area(p, w, None);
                    out.push((Facet::Destination, format!("unix:{a}"), Some(Base::Dev)));
                }
                _ => {}
            }
        }
        Detail::Setid { result: 0, .. } => out.push((Facet::Kind, "setid".into(), None)),
        Detail::Mount { result: 0, .. } => out.push((Facet::Kind, "mount".into(), None)),
        Detail::Bpf { result, .. } if *result >= 0 => out.push((Facet::Kind, "bpf".into(), None)),
        Detail::Module { result: 0, .. } => out.push((Facet::Kind, "module".into(), None)),
        Detail::Memfd { result, .. } if *result >= 0 => {
            out.push((Facet::Kind, "memfd".into(), None))
        }
        Detail::IoUring { result, .. } if *result >= 0 => {
            out.push((Facet::Kind, "io_uring".into(), None))
        }
        // Into a process of the same session (a sanitizer's leak check, a debugger the agent
        // started on its own program): nothing it could not reach already. Into any other
        // process: the tamper check's (outside every session) or a new reach.
        Detail::Ptrace { target_pid, .. } => {
            let inside = cx
                .tree
                .get(*target_pid)
                .is_some_and(|p| p.session_id == cx.session_id);
            out.push((
                Facet::Kind,
                if inside {
                    "ptrace-in-session"
                } else {
                    "ptrace"
                }
                .into(),
                None,
            ))
        }
        _ => {}
    }
}

/// `$HOME/…` for a program under a home directory.
fn home_relative(path: &str) -> String {
    let (_, rest) = facets::base(path, None);
    format!("$HOME/{rest}")
}

/// How far from normal a new value of `facet` is (0..1).
fn score(f: Facet, base: Option<Base>, value: &str) -> f32 {
    // Under a dot name, and not that dot directory's own program.
    let dot_in_work = || value.starts_with("$WORK/**/.") && !value.ends_with(']');
    match f {
        Facet::ExecLocation => 0.9,
        // A program never run before, from a place this profile runs programs from: new
        // network reach or a new privilege holds; a decoder holds only when what it decodes
        // is run (`decoded`: `base64 -d | sh`); another interpreter (`perl -pi`) or any other
        // tool alerts (code from a new place is `ExecLocation`'s, a newly written file the
        // rules').
        Facet::Exec => match facets::program_class(facets::basename(value)) {
            Some("network" | "system") => 0.75,
            _ => 0.5,
        },
        Facet::Command => 0.35,
        Facet::Edge => {
            let child = value.rsplit(" > ").next().unwrap_or("");
            match facets::program_class(child) {
                // A known program that now moves data.
                Some("network") => 0.75,
                // A shell from a parent that never started one (`awk 'BEGIN {system("sh")}'`)
                // is worth an alert, not a hold: shells start shells all the time.
                Some("interpreter") => 0.5,
                _ => 0.4,
            }
        }
        Facet::Ancestry => 0.3,
        // A directory listed, not a file read.
        Facet::Read if value.ends_with('/') => 0.3,
        Facet::Read => match base {
            Some(Base::Home) => 0.65,
            Some(Base::System | Base::Dev | Base::Proc) => 0.3,
            Some(Base::DevShm) => 0.5,
            _ => 0.1,
        },
        Facet::Write | Facet::Create | Facet::Delete => match base {
            Some(Base::Home | Base::System) => 0.8,
            Some(Base::DevShm) => 0.7,
            Some(Base::Dev | Base::Proc) => 0.5,
            // What a program run here will read and act on (hooks, editor tasks, an agent's
            // settings, CI) holds as a start-up file does; other dot files (`.env`, a
            // package manager's lock or cache) alert.
            Some(Base::Work) if dot_in_work() && facets::runs_from_work(value) => 0.7,
            Some(Base::Work) if dot_in_work() => 0.5,
            Some(Base::Work) => 0.15,
            Some(Base::Tmp) => 0.2,
            _ => 0.1,
        },
        Facet::Destination => {
            // Loopback cannot leave the host (after a new read of a secret area it still
            // holds: the sequence); the services on it that run commands for whoever asks are
            // the pack's (`local-container-engine-connect`).
            if value.starts_with("unix:") || value.starts_with("loopback:") {
                0.4
            } else {
                0.8
            }
        }
        Facet::Kind if value == "ptrace-in-session" => 0.5,
        Facet::Kind => 0.8,
    }
}

fn rule_of(f: Facet) -> &'static str {
    match f {
        Facet::Exec => "baseline-new-program",
        Facet::ExecLocation => "baseline-new-exec-location",
        Facet::Command => "baseline-new-command",
        Facet::Edge => "baseline-new-edge",
        Facet::Ancestry => "baseline-new-ancestry",
        Facet::Read => "baseline-new-read-area",
        Facet::Write => "baseline-new-write-area",
        Facet::Create => "baseline-new-create-area",
        Facet::Delete => "baseline-new-delete-area",
        Facet::Destination => "baseline-new-destination",
        Facet::Kind => "baseline-new-kind",
    }
}

fn describe(f: Facet, v: &str) -> String {
    match f {
        Facet::Exec => match facets::program_class(facets::basename(v)) {
            Some(class) => format!("ran {v} ({class}), a program this profile never runs"),
            None => format!("ran {v}, a program this profile never runs"),
        },
        Facet::ExecLocation => {
            format!("ran a program from {v}, where this profile never runs programs from")
        }
        Facet::Command => format!("ran `{v}`, a command this profile never runs"),
        Facet::Edge => format!("{v}: a parent this program never had in this profile"),
        Facet::Ancestry => format!("{v}: a process-tree shape this profile never had"),
        Facet::Read => format!("read in {v}, which this profile never reads"),
        Facet::Write => format!("wrote in {v}, where this profile never writes"),
        Facet::Create => format!("created a file in {v}, where this profile never creates files"),
        Facet::Delete => format!("deleted in {v}, where this profile never deletes"),
        Facet::Destination => format!("connected to {v}, where this profile never connects"),
        Facet::Kind => format!("a {v} action, which this profile never does"),
    }
}

#[cfg(test)]
mod tests;
