//! `watcher bench-detectors STREAM`: what the detectors cost per event on one core, over a
//! recorded event stream (`watcher events --json` output), each against the bare loop in the
//! same process and the same rounds: the rule pack, the scope, the baseline (a profile learned
//! from the stream, in enforce mode), and all three. Then the size of a profile learned from
//! 100 sessions whose task names (crate, files) differ each time.
use std::{path::Path, sync::Arc, time::Instant};

use super::{Baselines, Ctx, Detector};
use crate::{
    config::Config,
    model::{baseline::ProfileMode, event::Event, scope::Scope},
    pipeline::{
        intake::tree::{Proc, Tree},
        scope::ScopeCheck,
    },
    rules::{SeqState, SessionView},
};

const WORKDIR: &str = "/work/repo";

pub fn run(stream: &Path, rules: Option<&Path>, rounds: u32) -> anyhow::Result<()> {
    let events = crate::rules::bench::read_stream(stream)?;
    let config = Config::load(None)?;
    let mut tree = Tree::default();
    for ev in &events {
        if tree.get(ev.pid).is_none() {
            tree.insert(
                ev.pid,
                Proc {
                    ppid: ev.ppid,
                    cwd: Some(WORKDIR.into()),
                    ..Default::default()
                },
            );
        }
    }
    let b = Baselines::open(&config, None)?;
    for s in 0..20u64 {
        let mut d = Detector::default();
        feed(&mut d, &b, &tree, &events, s);
        d.session_ended(&b, s, &format!("learn-{s}"), "bench");
    }
    b.set_mode("bench", ProfileMode::Enforce)
        .map_err(anyhow::Error::msg)?;
    let scope = ScopeCheck::compile(Scope {
        workdir: Some(WORKDIR.into()),
        home: Some("/root".into()),
        allow_write: vec!["~/.cargo/**".into(), "~/.cache/**".into()],
        ..Default::default()
    })?;
    let (policy, _) = crate::rules::load(rules)?;
    let view = SessionView {
        profile: Some("bench"),
        workdir: Some(WORKDIR),
    };
    #[derive(Clone, Copy, PartialEq)]
    enum Which {
        Bare,
        Rules,
        Scope,
        Baseline,
        All,
    }
    let mut found = 0usize;
    // One detector, as in the daemon: its cache of executables' hashes stays warm.
    let mut d = Detector::default();
    let mut pass = |w: Which| {
        let mut state = SeqState::default();
        let mut out = Vec::new();
        d.forget_sessions();
        let start = Instant::now();
        for (i, ev) in events.iter().enumerate() {
            let ts = i as u64 * 1000;
            if matches!(w, Which::Rules | Which::All) {
                policy.evaluate(ev, ts, view, &tree, &mut state, &mut out);
                found += out.len();
                out.clear();
            }
            if matches!(w, Which::Scope | Which::All) {
                found += scope.check(ev).is_some() as usize;
            }
            if matches!(w, Which::Baseline | Which::All) {
                let cx = Ctx {
                    session_id: 1_000,
                    trace_id: "bench",
                    profile: "bench",
                    workdir: Some(WORKDIR),
                    tree: &tree,
                    ts_ns: ts,
                };
                found += d.observe(&b, ev, &cx).len();
            }
            std::hint::black_box(&ev);
        }
        start.elapsed().as_secs_f64()
    };
    let kinds = [Which::Rules, Which::Scope, Which::Baseline, Which::All];
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut bare = Vec::new();
    pass(Which::All);
    for _ in 0..rounds {
        let base = pass(Which::Bare);
        bare.push(base);
        for (k, w) in kinds.iter().enumerate() {
            let t = pass(*w);
            ns[k].push((t - base).max(0.0) * 1e9 / events.len() as f64);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "detectors: {} events from {}, {} rules, profile learned from 20 sessions of the stream ({} entries), enforce mode",
        events.len(),
        stream.display(),
        policy.rules.len(),
        b.get("bench").entry_count()
    );
    println!("| detector | ns/event over the bare loop (median of {rounds}) | min | max |");
    println!("| --- | --- | --- | --- |");
    for (k, name) in ["rules", "scope", "baseline", "all three"]
        .iter()
        .enumerate()
    {
        let v = &mut ns[k];
        let m = med(v);
        println!("| {name} | {m:.0} | {:.0} | {:.0} |", v[0], v[v.len() - 1]);
    }
    println!(
        "bare loop: {:.0} ns/event; findings in the measured passes: {found}",
        med(&mut bare) * 1e9 / events.len() as f64
    );
    profile_size(&config, &events, &tree)
}

fn feed(d: &mut Detector, b: &Baselines, tree: &Tree, events: &[Arc<Event>], session: u64) {
    for (i, ev) in events.iter().enumerate() {
        let cx = Ctx {
            session_id: session,
            trace_id: "bench",
            profile: "bench",
            workdir: Some(WORKDIR),
            tree,
            ts_ns: i as u64 * 1000,
        };
        d.observe(b, ev, &cx);
    }
}

/// A profile learned from 100 sessions of the stream, each with its own task names (every
/// path component under the work directory renamed), stored in a real SQLite file.
fn profile_size(config: &Config, events: &[Arc<Event>], tree: &Tree) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("watcher-bench-profile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = dir.join("profiles.db");
    let b = Baselines::open(config, Some(db.clone()))?;
    let start = Instant::now();
    for s in 0..100u64 {
        let renamed: Vec<Arc<Event>> = events
            .iter()
            .map(|e| {
                let text = serde_json::to_string(e.as_ref()).expect("an event serialises");
                let text = text.replace("/work/repo/", &format!("/work/repo/task{s}-"));
                Arc::new(serde_json::from_str(&text).expect("and back"))
            })
            .collect();
        let mut d = Detector::default();
        feed(&mut d, &b, tree, &renamed, s);
        d.session_ended(&b, s, &format!("s{s}"), "bench");
    }
    b.flush();
    drop(b);
    let p = Baselines::open(config, Some(db.clone()))?.get("bench");
    let yaml = serde_yaml_ng::to_string(&p.export())?;
    let bytes: u64 = std::fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "profile after 100 sessions ({:.1} s to learn): {} entries ({:.1} new per session at the end, stable: {}), {} bytes as YAML, {} bytes of SQLite (with its WAL; read back from it)",
        start.elapsed().as_secs_f64(),
        p.entry_count(),
        p.learning(),
        p.stable(),
        yaml.len(),
        bytes
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
