//! `watcher bench-rules STREAM`: the policy's evaluation rate over a recorded event stream
//! (`watcher events --json` output), on one core, against an empty policy run in the same
//! process as the baseline (the cost of the loop itself).
use std::{path::Path, sync::Arc, time::Instant};

use anyhow::Context as _;

use super::{examples::ExampleLineage, Policy, SeqState, SessionView};
use crate::model::event::{Detail, Event};

pub fn run(stream: &Path, rules: Option<&Path>, rounds: u32) -> anyhow::Result<()> {
    let events = read_stream(stream)?;
    let (policy, _) = super::load(rules)?;
    // Processes as the daemon's tree would know them: the last exec of each pid.
    let mut lineage = ExampleLineage::default();
    for ev in &events {
        if let Detail::Exec { .. } = ev.detail {
            let v = serde_json::to_value(ev.as_ref())?;
            let _ = super::examples::example_event(&v, 0, &mut lineage);
        }
    }
    let empty = Policy::empty();
    let pass = |p: &Policy| {
        let mut state = SeqState::default();
        let mut out = Vec::new();
        let start = Instant::now();
        for (i, ev) in events.iter().enumerate() {
            p.evaluate(
                ev,
                i as u64 * 1000,
                SessionView {
                    profile: Some("claude"),
                    workdir: Some("/work/repo"),
                },
                &lineage,
                &mut state,
                &mut out,
            );
            out.clear();
        }
        start.elapsed()
    };
    let mut findings = Vec::new();
    {
        let mut state = SeqState::default();
        for (i, ev) in events.iter().enumerate() {
            policy.evaluate(
                ev,
                i as u64 * 1000,
                SessionView {
                    profile: Some("claude"),
                    workdir: Some("/work/repo"),
                },
                &lineage,
                &mut state,
                &mut findings,
            );
        }
    }
    pass(&policy);
    let mut rates = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let base = pass(&empty);
        let t = pass(&policy);
        rates.push(events.len() as f64 / t.as_secs_f64());
        ratios.push(t.as_secs_f64() / base.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    let med = |v: &[f64]| v[v.len() / 2];
    println!(
        "rules: {} rules (policy {}), {} events from {}, {} findings in the stream",
        policy.rules.len(),
        policy.version,
        events.len(),
        stream.display(),
        findings.len()
    );
    println!(
        "rules: {:.0} events/s on one core (median of {rounds}; min {:.0}, max {:.0}), {:.0} ns/event; {:.1}x the empty-policy loop",
        med(&rates),
        rates[0],
        rates[rates.len() - 1],
        1e9 / med(&rates),
        med(&ratios)
    );
    Ok(())
}

/// The events of a recorded stream (`watcher events --json` lines), findings left out; an error
/// names the file and line.
pub fn read_stream(stream: &Path) -> anyhow::Result<Vec<Arc<Event>>> {
    let text =
        std::fs::read_to_string(stream).with_context(|| format!("reading {}", stream.display()))?;
    let mut events = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let ev: Event = serde_json::from_str(line)
            .with_context(|| format!("{}:{}", stream.display(), i + 1))?;
        if !matches!(ev.detail, Detail::Finding(_)) {
            events.push(Arc::new(ev));
        }
    }
    anyhow::ensure!(!events.is_empty(), "{}: no events", stream.display());
    Ok(events)
}
