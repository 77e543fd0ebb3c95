//! The chaos suite (issue 31, item 8): agent work (git, python) with a held tool in every
//! session, decided at random, while the daemon is SIGKILLed and restarted at random moments.
//! Afterwards: no held tool ran without a yes to its hold, every session ended (each hold could
//! be decided, nothing stayed frozen), and the audit log verifies. One minute in
//! `cargo xtask test`; `cargo xtask chaos --minutes N` (`WATCHER_CHAOS_MINUTES`) for longer.
mod common;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use common::{
    audit::verify,
    holds::{json_lines, state_of},
    rand_suffix, Daemon, TempDir,
};

/// The rule that holds the tool, and the holds a restarted daemon makes for what it found
/// stopped or frozen with no record (their evidence is the process tree): a yes to any of
/// them lets the tool run.
const YES_RULES: [&str; 4] = [
    "chaos-held-tool",
    "watcher-recovered-hold",
    "watcher-unanswered-gate",
    "watcher-lost-record",
];

struct Session {
    id: usize,
    trace: String,
    child: Child,
}

#[test]
fn chaos_no_held_tool_runs_without_a_yes() {
    common::require_root();
    let minutes: f64 = std::env::var("WATCHER_CHAOS_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(1.0);
    let work = TempDir::new("chaos");
    let w = work.0.display().to_string();
    let tool = work.0.join("held-tool");
    std::fs::write(&tool, format!("#!/bin/sh\necho ran > {w}/marker-$1\n")).unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rules = common::pack_dir(&work.0);
    std::fs::write(
        rules.join("chaos.yaml"),
        format!(
            "rules:\n  - id: chaos-held-tool\n    description: a tool that needs a human's yes\n    severity: high\n    action: hold\n    mode: enforce\n    condition: {{type: exec, exe: \"{0}\"}}\n    examples: {{match: [{{type: exec, path: \"{0}\"}}]}}\n",
            tool.display()
        ),
    )
    .unwrap();
    let d = Arc::new(Mutex::new(Daemon::start_with(&format!(
        "[rules]\npath = \"{}\"\n[holds]\ntimeout = \"10m\"\n",
        rules.display()
    ))));
    // The CLI as a user runs it: it fails while no daemon runs, and never waits for the harness.
    let socket = d.lock().unwrap().socket.clone();
    let cli = move || {
        let mut c = std::process::Command::new(common::BIN);
        c.arg("--socket").arg(&socket);
        c
    };
    let until = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let done = Arc::new(AtomicBool::new(false));
    let crashes = Arc::new(AtomicUsize::new(0));
    // trace -> (rule, verdict, when) of every decision asked for (a yes counts from the moment
    // it is asked: the daemon may have died as it answered).
    type Asked = Vec<(String, String, SystemTime)>;
    let decisions: Arc<Mutex<HashMap<String, Asked>>> = Default::default();

    let killer = std::thread::spawn({
        let (d, crashes) = (d.clone(), crashes.clone());
        move || {
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2000 + rand_suffix() % 6000));
                if Instant::now() >= until {
                    break;
                }
                // At a moment a session is at work (not held): what a crash exposes.
                let cgroup = d.lock().unwrap().cgroup.clone();
                let soon = Instant::now() + Duration::from_secs(5);
                while !some_session_runs(&cgroup) && Instant::now() < soon {
                    std::thread::sleep(Duration::from_millis(5));
                }
                // SIGKILL, then 1 to 4 s with no daemon at all while the sessions go on.
                d.lock().unwrap().kill();
                crashes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1000 + rand_suffix() % 3000));
                d.lock().unwrap().restart();
            }
        }
    });
    let decider = std::thread::spawn({
        let (cli, done, decisions) = (cli.clone(), done.clone(), decisions.clone());
        move || {
            while !done.load(Ordering::Relaxed) {
                let out = cli().args(["holds", "--json"]).output();
                let pending = out.map(|o| json_lines(&o.stdout)).unwrap_or_default();
                for h in pending.iter().filter(|h| h["state"] == "pending") {
                    let (Some(id), Some(trace)) = (h["id"].as_str(), h["trace_id"].as_str()) else {
                        continue;
                    };
                    let verb = if rand_suffix().is_multiple_of(2) {
                        "approve"
                    } else {
                        "deny"
                    };
                    decisions
                        .lock()
                        .unwrap()
                        .entry(trace.to_string())
                        .or_default()
                        .push((
                            h["rule"].as_str().unwrap_or("").to_string(),
                            verb.into(),
                            SystemTime::now(),
                        ));
                    let _ = cli().args([verb, id]).output();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });

    // Three agents at a time, each session: a repository made and committed to eight times
    // (long enough that a crash often comes while it works, not only while it is held), the
    // held tool, a python run.
    let mut sessions: Vec<Session> = Vec::new();
    let mut refused = 0;
    while Instant::now() < until {
        let running = sessions
            .iter_mut()
            .filter_map(|s| matches!(s.child.try_wait(), Ok(None)).then_some(()))
            .count();
        if running >= 3 {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let id = sessions.len() + refused;
        let script = format!(
            "mkdir -p {w}/s{id} && cd {w}/s{id} && git init -q && echo a > f && git add f && \
             for i in 1 2 3 4 5 6 7 8; do echo $i > f; \
             git -c user.email=a@b -c user.name=n commit -qam $i; done && {w}/held-tool {id}; \
             /usr/bin/python3 -c 'print(1)' > out"
        );
        let mut child = cli()
            .args(["launch", "--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        let _ = err.read_line(&mut first);
        let trace = first
            .strip_prefix("watcher: trace id ")
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        if trace.is_empty() {
            // The daemon was down: the launch is refused, as it would be for a user.
            let _ = child.wait();
            refused += 1;
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        // The rest of stderr is drained, or the session would block on a full pipe.
        std::thread::spawn(move || err.lines().for_each(drop));
        sessions.push(Session { id, trace, child });
    }
    killer.join().unwrap();

    // Every session ends: its holds are decided (the decider goes on), none stays frozen.
    let mut failures = Vec::new();
    let end = Instant::now() + Duration::from_secs(120);
    for s in &mut sessions {
        while matches!(s.child.try_wait(), Ok(None)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(s.child.try_wait(), Ok(None)) {
            failures.push(format!("session {} ({}) never ended", s.id, s.trace));
            let _ = s.child.kill();
        }
    }
    done.store(true, Ordering::Relaxed);
    decider.join().unwrap();

    // No held tool ran without a yes to a hold of its session that could stand for it.
    let decisions = decisions.lock().unwrap();
    let (mut ran, mut approved, mut denied) = (0, 0, 0);
    for s in &sessions {
        let asked = decisions.get(&s.trace).cloned().unwrap_or_default();
        approved += asked.iter().filter(|(_, v, _)| v == "approve").count();
        denied += asked.iter().filter(|(_, v, _)| v == "deny").count();
        // When the tool ran: its marker's time. A yes asked for after it does not count.
        if let Ok(ran_at) =
            std::fs::metadata(work.0.join(format!("marker-{}", s.id))).and_then(|m| m.modified())
        {
            ran += 1;
            let yes = asked.iter().any(|(rule, verb, at)| {
                verb == "approve" && YES_RULES.contains(&rule.as_str()) && *at <= ran_at
            });
            if !yes {
                failures.push(format!(
                    "session {} ({}): the held tool ran without a yes (decisions {asked:?})",
                    s.id, s.trace
                ));
            }
        }
    }
    let d = d.lock().unwrap();
    for e in std::fs::read_dir(&d.cgroup).into_iter().flatten().flatten() {
        let events = std::fs::read_to_string(e.path().join("cgroup.events")).unwrap_or_default();
        let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
        if events.lines().any(|l| l == "frozen 1") && !procs.trim().is_empty() {
            failures.push(format!("{} stayed frozen", e.path().display()));
        }
    }
    let (ok, out) = verify(&d.dir.0, &[]);
    if !ok {
        failures.push(format!("watcher-verify: {out}"));
    }
    let crashes = crashes.load(Ordering::Relaxed);
    eprintln!(
        "chaos: {minutes} min, {} sessions ({refused} launches refused while the daemon was down), \
         {crashes} crashes, {approved} approvals, {denied} denials, {ran} held tools ran",
        sessions.len()
    );
    // A run with no crash, or no decision either way, would show nothing.
    assert!(crashes > 0, "the daemon was never killed");
    assert!(
        approved > 0 && denied > 0,
        "no decision of one kind: {approved} approvals, {denied} denials"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Whether a session under `base` is at work: not frozen, and with no process stopped at a
/// hook (waiting for the daemon's answer).
fn some_session_runs(base: &std::path::Path) -> bool {
    std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let ev = std::fs::read_to_string(e.path().join("cgroup.events")).unwrap_or_default();
            let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
            ev.lines().any(|l| l == "frozen 0")
                && !procs.trim().is_empty()
                && procs.lines().all(|p| state_of(p) != Some('T'))
        })
}
