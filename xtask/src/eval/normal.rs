//! `cargo xtask eval --normal`: the normal-work corpus (`eval/normal-work.yaml`) as watched
//! sessions, each workload as root and as an unprivileged user, in the host's mount namespace
//! and in a private one (a tmpfs home), every hold denied. Two passes: the rule pack alone
//! (every session a new profile's, which only learns); the pack with a profile learned from
//! the even-numbered workloads and enforced on the odd-numbered ones, which it never saw.
//! Printed: holds per 100 sessions and per agent-hour, and what held which workload.
use std::{os::unix::fs::chown, path::Path, process::Command};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use super::{copy_rules, Args, EvalDaemon, Outcome, StatusOk as _};
use crate::setup::root;

#[derive(Debug, Deserialize)]
struct Workload {
    id: String,
    category: String,
    script: String,
    /// `root` when only root can run it here; `any` (default) otherwise.
    #[serde(rename = "as", default)]
    run_as: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum User {
    Root,
    /// `nobody` (65534): a user with no other privilege.
    Agent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ns {
    Host,
    /// `unshare -m` with a tmpfs over the home: the agents' own sandboxes and containers.
    Private,
}

const VARIANTS: [(User, Ns); 4] = [
    (User::Root, Ns::Host),
    (User::Root, Ns::Private),
    (User::Agent, Ns::Host),
    (User::Agent, Ns::Private),
];

const NOBODY: u32 = 65534;
/// The profile every session of the corpus belongs to.
const PROFILE: &str = "normal";

/// One session's result.
struct Run<'a> {
    w: &'a Workload,
    user: User,
    ns: Ns,
    o: Outcome,
}

pub fn run(a: &Args, bin: &Path) -> anyhow::Result<()> {
    let corpus = a
        .corpus
        .clone()
        .unwrap_or_else(|| root().join("eval/normal-work.yaml"));
    let text = std::fs::read_to_string(&corpus)
        .with_context(|| format!("reading {}", corpus.display()))?;
    let mut all: Vec<Workload> =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", corpus.display()))?;
    for w in &all {
        if !matches!(w.run_as.as_deref(), None | Some("any" | "root")) {
            bail!(
                "{}: workload {}: `as` is `any` or `root`, not {:?}",
                corpus.display(),
                w.id,
                w.run_as
            );
        }
    }
    if !a.only.is_empty() {
        all.retain(|w| a.only.contains(&w.id));
    }
    anyhow::ensure!(!all.is_empty(), "no workloads to run");
    let dir = std::env::temp_dir().join(format!("watcher-eval-normal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // The work directories must be reachable by the unprivileged user.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let rules = copy_rules(
        &a.rules.clone().unwrap_or_else(|| root().join("rules")),
        &dir.join("rule-pack"),
    )?;
    let want = |p: &str| a.pass.as_deref().is_none_or(|x| x == p);
    let mut table = Vec::new();
    if want("rules") {
        let d = EvalDaemon::start(bin, &dir.join("rules"), &rules)?;
        eprintln!("eval --normal: rules alone, {} workloads", all.len());
        let runs = run_all(&d, &all.iter().collect::<Vec<_>>(), &dir.join("w-rules"), a)?;
        table.push(("rules alone", runs));
    }
    if want("both") {
        let d = EvalDaemon::start(bin, &dir.join("both"), &rules)?;
        let (learn, unseen): (Vec<_>, Vec<_>) =
            all.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let learn: Vec<&Workload> = learn.into_iter().map(|(_, w)| w).collect();
        let unseen: Vec<&Workload> = unseen.into_iter().map(|(_, w)| w).collect();
        eprintln!(
            "eval --normal: learning a profile from {} workloads",
            learn.len()
        );
        let learned = run_all(&d, &learn, &dir.join("w-learn"), a)?;
        // A held session (denied, killed) teaches nothing.
        let clean = learned.iter().filter(|r| !r.o.stopped).count() as u64;
        let summary = d.await_sessions(PROFILE, clean)?;
        let export = d.cli(&["baseline", "export", PROFILE]).output()?;
        let export: serde_json::Value =
            serde_yaml_ng::from_slice(&export.stdout).context("reading the profile's export")?;
        let holding = export["holding_per_session"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!(
            "eval --normal: the profile after {} sessions: stable {} (new entries per session, last five: {}; entries that would have held, per session: [{holding}])",
            summary["sessions"], summary["stable"], summary["learning"]
        );
        d.cli(&["baseline", "mode", PROFILE, "enforce"])
            .status_ok()?;
        eprintln!(
            "eval --normal: the profile enforced on {} unseen workloads",
            unseen.len()
        );
        let runs = run_all(&d, &unseen, &dir.join("w-unseen"), a)?;
        table.push(("rules and the learned profile, unseen work", runs));
    }
    report(&table);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn run_all<'a>(
    d: &EvalDaemon,
    work: &[&'a Workload],
    dir: &Path,
    a: &Args,
) -> anyhow::Result<Vec<Run<'a>>> {
    let mut runs = Vec::new();
    for w in work {
        for (user, ns) in VARIANTS {
            if user == User::Agent && w.run_as.as_deref() == Some("root") {
                continue;
            }
            let place = dir.join(format!("{user:?}-{ns:?}-{}", w.id).to_lowercase());
            let o = d.session(command(d, w, user, ns, &place)?, a.timeout * 3)?;
            eprintln!(
                "  {:<28} {:<12} {:<6} {:<8} {:>5.1}s {}",
                w.id,
                w.category,
                format!("{user:?}").to_lowercase(),
                format!("{ns:?}").to_lowercase(),
                o.took.as_secs_f64(),
                if o.stopped {
                    format!("HELD {}", o.why.clone().unwrap_or_default())
                } else if o.code != Some(0) {
                    format!("exit {:?} (the workload failed: see its script)", o.code)
                } else {
                    String::new()
                }
            );
            runs.push(Run { w, user, ns, o });
            let _ = std::fs::remove_dir_all(&place);
        }
    }
    Ok(runs)
}

/// The command that launches workload `w` as `user` in namespace `ns`, in `place/work` with
/// `place/home` as its home.
fn command(
    d: &EvalDaemon,
    w: &Workload,
    user: User,
    ns: Ns,
    place: &Path,
) -> anyhow::Result<Command> {
    let (work, home) = (place.join("work"), place.join("home"));
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&home)?;
    let owner = match user {
        User::Root => 0,
        User::Agent => NOBODY,
    };
    for p in [place, &work, &home] {
        chown(p, Some(owner), Some(owner)).with_context(|| format!("chown {}", p.display()))?;
    }
    // Inside the session: a clean environment, root's toolchain for root, then the user.
    let mut inner: Vec<String> = vec!["env".into(), "-i".into()];
    inner.push(format!("HOME={}", home.display()));
    inner.push("LANG=C.UTF-8".into());
    match user {
        User::Root => {
            inner.push("PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
            inner.push("CARGO_HOME=/root/.cargo".into());
            inner.push("RUSTUP_HOME=/root/.rustup".into());
        }
        User::Agent => {
            inner.push("PATH=/usr/local/bin:/usr/bin:/bin".into());
            inner.extend(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                ]
                .map(String::from),
            );
        }
    }
    inner.extend(["sh", "-e", "-c"].map(String::from));
    inner.push(w.script.clone());
    let launch: Vec<String> = [
        d.bin.display().to_string(),
        "--socket".into(),
        d.socket.display().to_string(),
        "launch".into(),
        "--profile".into(),
        PROFILE.into(),
        "--".into(),
    ]
    .into_iter()
    .chain(inner)
    .collect();
    let mut cmd = match ns {
        Ns::Host => {
            let mut c = Command::new(&launch[0]);
            c.args(&launch[1..]);
            c
        }
        Ns::Private => {
            // The namespace is made before the session: its setup is not the agent's work.
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount -t tmpfs -o mode=0755 tmpfs "$1" && chown "$2:$2" "$1" && shift 2 && exec "$@""#)
                .arg("sh")
                .arg(&home)
                .arg(owner.to_string())
                .args(&launch);
            c
        }
    };
    cmd.current_dir(&work);
    Ok(cmd)
}

fn report(table: &[(&str, Vec<Run>)]) {
    println!();
    println!("| pass | sessions | held | holds per 100 sessions | agent-hours | holds per agent-hour | workloads that failed |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, runs) in table {
        let held = runs.iter().filter(|r| r.o.stopped).count();
        let hours: f64 = runs.iter().map(|r| r.o.took.as_secs_f64()).sum::<f64>() / 3600.0;
        let failed = runs
            .iter()
            .filter(|r| !r.o.stopped && r.o.code != Some(0))
            .count();
        println!(
            "| {name} | {} | {held} | {:.1} | {hours:.3} | {:.0} | {failed} |",
            runs.len(),
            100.0 * held as f64 / runs.len().max(1) as f64,
            held as f64 / hours.max(f64::EPSILON),
        );
    }
    for (name, runs) in table {
        let held: Vec<&Run> = runs.iter().filter(|r| r.o.stopped).collect();
        if held.is_empty() {
            continue;
        }
        println!();
        println!("{name}: held");
        for r in held {
            println!(
                "- {} ({:?}, {:?} namespace): {}",
                r.w.id,
                r.user,
                r.ns,
                r.o.why.clone().unwrap_or_else(|| r.o.rules.join(", "))
            );
        }
    }
}
