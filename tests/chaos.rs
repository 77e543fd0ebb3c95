//! The chaos suite (issue 31, item 8): agent work (git, python, now and then a storm of writes
//! that overflows a small kernel ring) with a held tool in every session, decided at random,
//! while faults come in turn at random moments: the daemon SIGKILLed and restarted, the audit
//! store and the hold store locked by another writer, the stores' disk full, the wall clock
//! stepped two hours. Afterwards: no held tool ran without a yes to its hold, every session
//! ended (each hold could be decided, nothing stayed frozen), no hold was denied by a deadline
//! it had not reached, every hold and every decision carried out is in the audit log and no
//! approval that failed is, nothing waits unwritten, and the log verifies. One minute in
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
    time::{Duration, Instant},
};

use common::{
    audit::verify,
    holds::{json_lines, launch_bg, state_of, verdict, wait_exit},
    rand_suffix, Daemon, TempDir, DEADLINE,
};

/// The rule that holds the tool, and the holds a restarted daemon makes for what it found
/// stopped or frozen with no record (their evidence is the process tree): a yes to any of
/// them lets the tool run.
const YES_RULES: [&str; 4] = [
    "chaos-held-tool",
    "watcher-recovered-hold",
    "watcher-unanswered-gate",
    "watcher-records-lost",
];

/// The faults, in turn (each comes at least once a minute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    /// SIGKILL, then 1 to 4 s with no daemon at all while the sessions go on.
    Crash,
    /// Another writer holds the audit store's lock for 1 to 6 s.
    BusyAudit,
    /// The stores' file system is full for 1 to 4 s.
    DiskFull,
    /// The wall clock is stepped two hours ahead (or back) for 1 to 4 s.
    ClockJump,
    /// Another writer holds the hold store's lock for 1 to 6 s.
    BusyHolds,
}

const FAULTS: [Fault; 5] = [
    Fault::Crash,
    Fault::BusyAudit,
    Fault::DiskFull,
    Fault::ClockJump,
    Fault::BusyHolds,
];

/// A small file system for the daemon's stores, unmounted when dropped.
struct Disk(TempDir);

impl Disk {
    fn new(size: &str) -> Disk {
        // A short name: the daemon's socket inside must fit a unix socket address.
        let d = TempDir(std::env::temp_dir().join(format!("wd{}", std::process::id())));
        std::fs::create_dir_all(&d.0).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&d.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs at {}", d.0.display());
        Disk(d)
    }

    /// Fills the file system at `dir` to the last byte; the filler is removed when dropped.
    fn fill_at(dir: &std::path::Path) -> Filler {
        use std::io::Write as _;
        let path = dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        Filler(path)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0 .0)
            .status();
    }
}

struct Filler(std::path::PathBuf);

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Another writer holding `db`'s write lock for `secs`.
fn lock_store(db: &std::path::Path, secs: f64) {
    let _ = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             time.sleep(float(sys.argv[2]))\n\
             c.execute('COMMIT')",
        ])
        .arg(db)
        .arg(secs.to_string())
        .status();
}

/// Whether the audit log (read from its file: the daemon may be down) has a `kind` record of
/// the session whose body's `field` is `id`.
fn in_log(config: &std::path::Path, trace: &str, kind: &str, field: &str, id: &str) -> bool {
    std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(config)
        .args(["audit", "query", "--trace", trace, "--kind", kind, "--json"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|r| r["body"][field] == id)
            })
        })
}

/// Centiseconds since boot (`/proc/uptime`'s clock): what the wall clock's steps do not move.
fn boot_cs() -> i128 {
    common::clock::clock_ns(libc::CLOCK_BOOTTIME) / 10_000_000
}

#[derive(Clone, Debug)]
struct Decision {
    hold: String,
    rule: String,
    verb: &'static str,
    /// When it was asked for, in centiseconds since boot.
    at: i128,
    /// Whether the CLI said it was carried out, and what it said when not.
    done: bool,
    err: String,
}

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
    // The marker says when the tool ran on the clock the wall clock's steps do not move.
    std::fs::write(
        &tool,
        format!("#!/bin/sh\nread up _ < /proc/uptime; echo $up > {w}/marker-$1\n"),
    )
    .unwrap();
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
    // The stores' disk, and the audit log bounded inside it (the storms write some 250 MB a
    // minute): full only when the test fills it, and retention keeps a few minutes of records,
    // more than the minute the checker below waits for a hold's record.
    let disk = Disk::new("1536m");
    // A small kernel ring: a storm session overflows it, and records that could hold are lost.
    let d = Arc::new(Mutex::new(Daemon::start_under(
        &format!(
            "[daemon]\nring_buffer_bytes = 262144\n[rules]\npath = \"{}\"\n[holds]\ntimeout = \"10m\"\n[audit]\nmax_bytes = 805306368\n",
            rules.display()
        ),
        &disk.0 .0,
    )));
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
    // trace -> every decision asked for (a yes counts from the moment it is asked: the daemon
    // may have died as it answered).
    type Asked = Vec<Decision>;
    let decisions: Arc<Mutex<HashMap<String, Asked>>> = Default::default();

    let faults: Arc<Mutex<HashMap<Fault, usize>>> = Default::default();
    let killer = std::thread::spawn({
        let (d, crashes, faults) = (d.clone(), crashes.clone(), faults.clone());
        let disk = disk.0 .0.clone();
        move || {
            for n in 0.. {
                std::thread::sleep(Duration::from_millis(1000 + rand_suffix() % 3000));
                if Instant::now() >= until {
                    break;
                }
                // At a moment a session is at work (not held): what a fault exposes.
                let (cgroup, dir) = {
                    let d = d.lock().unwrap();
                    (d.cgroup.clone(), d.dir.0.clone())
                };
                let soon = Instant::now() + Duration::from_secs(5);
                while !some_session_runs(&cgroup) && Instant::now() < soon {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let fault = FAULTS[n % FAULTS.len()];
                let secs = |from: u64, to: u64| {
                    from as f64 + (rand_suffix() % ((to - from) * 1000)) as f64 / 1000.0
                };
                match fault {
                    Fault::Crash => {
                        d.lock().unwrap().kill();
                        crashes.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_secs_f64(secs(1, 4)));
                        d.lock().unwrap().restart();
                    }
                    Fault::BusyAudit => lock_store(&dir.join("audit.db"), secs(1, 6)),
                    Fault::BusyHolds => lock_store(&dir.join("watcher.db"), secs(1, 6)),
                    Fault::DiskFull => {
                        let _full = Disk::fill_at(&disk);
                        std::thread::sleep(Duration::from_secs_f64(secs(1, 4)));
                    }
                    Fault::ClockJump => {
                        let by = if rand_suffix().is_multiple_of(2) {
                            7200
                        } else {
                            -7200
                        };
                        let _step = common::clock::ClockStep::new(by);
                        std::thread::sleep(Duration::from_secs_f64(secs(1, 4)));
                    }
                }
                *faults.lock().unwrap().entry(fault).or_default() += 1;
            }
        }
    });
    let (to_check, checks) = std::sync::mpsc::channel::<(String, Decision, Instant)>();
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
                    let mut asked = Decision {
                        hold: id.to_string(),
                        rule: h["rule"].as_str().unwrap_or("").to_string(),
                        verb,
                        at: boot_cs(),
                        done: false,
                        err: String::new(),
                    };
                    if let Ok(o) = cli().args([verb, id]).output() {
                        asked.done = o.status.success();
                        asked.err = String::from_utf8_lossy(&o.stderr).into_owned();
                    }
                    let _ = to_check.send((trace.to_string(), asked.clone(), Instant::now()));
                    decisions
                        .lock()
                        .unwrap()
                        .entry(trace.to_string())
                        .or_default()
                        .push(asked);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    // Each hold a person was shown, and each decision carried out, is in the audit log within
    // a minute (while it is still there: retention bounds the log, oldest first); an approval
    // that failed to be sealed (and so did not act) is not.
    let checker = std::thread::spawn({
        let (done, config) = (done.clone(), d.lock().unwrap().dir.0.join("watcher.toml"));
        move || {
            let mut failures = Vec::new();
            let mut waiting: Vec<(String, Decision, Instant)> = Vec::new();
            let (mut failed_approvals, mut approved) =
                (Vec::new(), std::collections::HashSet::new());
            let mut traces = HashMap::new();
            loop {
                let over = done.load(Ordering::Relaxed);
                for (trace, a, at) in checks.try_iter() {
                    traces.insert(a.hold.clone(), trace.clone());
                    waiting.push((trace, a, at));
                }
                waiting.retain(|(trace, a, at)| {
                    if at.elapsed() < Duration::from_secs(2) && !over {
                        return true;
                    }
                    let hold = in_log(&config, trace, "hold", "id", &a.hold);
                    let kind = if a.verb == "approve" {
                        "approval"
                    } else {
                        "denial"
                    };
                    let decision = in_log(&config, trace, kind, "hold", &a.hold);
                    if hold && (decision || !a.done) {
                        if a.verb == "approve" && a.err.contains("could not be sealed") {
                            failed_approvals.push(a.hold.clone());
                        }
                        if a.done && a.verb == "approve" {
                            approved.insert(a.hold.clone());
                        }
                        return false;
                    }
                    if at.elapsed() < Duration::from_secs(60) {
                        return true;
                    }
                    failures.push(format!(
                        "hold {} ({}): after a minute the audit log has {} of it",
                        a.hold,
                        a.rule,
                        if hold {
                            format!("no {kind}")
                        } else {
                            "no record".into()
                        }
                    ));
                    false
                });
                if over && waiting.is_empty() {
                    // A failed approval is tried again: only one no later approval carried out
                    // must be absent from the log.
                    for h in failed_approvals.iter().filter(|h| !approved.contains(*h)) {
                        if in_log(&config, &traces[h], "approval", "hold", h) {
                            failures.push(format!(
                                "hold {h}: an approval that failed is in the audit log"
                            ));
                        }
                    }
                    return failures;
                }
                std::thread::sleep(Duration::from_millis(200));
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
        // One session in four also writes a file 20,000 times at once: more than the small
        // ring holds, so records that could hold are lost (and hold the session).
        let storm = if id % 4 == 3 {
            "/usr/bin/python3 -c \"[open('w', 'w').close() for _ in range(20000)]\" && "
        } else {
            ""
        };
        let script = format!(
            "mkdir -p {w}/s{id} && cd {w}/s{id} && git init -q && echo a > f && git add f && \
             for i in 1 2 3 4 5 6 7 8; do echo $i > f; \
             git -c user.email=a@b -c user.name=n commit -qam $i; done && {storm}{w}/held-tool {id}; \
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
    failures.extend(checker.join().unwrap());

    // No held tool ran without a yes to a hold of its session that could stand for it.
    let decisions = decisions.lock().unwrap();
    let (mut ran, mut approved, mut denied) = (0, 0, 0);
    for s in &sessions {
        let asked = decisions.get(&s.trace).cloned().unwrap_or_default();
        approved += asked
            .iter()
            .filter(|a| a.verb == "approve" && a.done)
            .count();
        denied += asked.iter().filter(|a| a.verb == "deny" && a.done).count();
        // When the tool ran (boot clock, centiseconds). A yes asked for after it does not count.
        let Ok(marker) = std::fs::read_to_string(work.0.join(format!("marker-{}", s.id))) else {
            continue;
        };
        ran += 1;
        let ran_at = marker
            .trim()
            .replace('.', "")
            .parse::<i128>()
            .unwrap_or(i128::MAX);
        let yes = asked
            .iter()
            .any(|a| a.verb == "approve" && YES_RULES.contains(&a.rule.as_str()) && a.at <= ran_at);
        if !yes {
            failures.push(format!(
                "session {} ({}): the held tool ran without a yes (decisions {asked:?})",
                s.id, s.trace
            ));
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
    // No hold was denied by a deadline: none waited its ten minutes, whatever the wall clock said.
    let out = d.cli().args(["holds", "--all", "--json"]).output().unwrap();
    let every = json_lines(&out.stdout);
    for h in every.iter().filter(|h| h["decided_by"] == "deadline") {
        failures.push(format!(
            "hold {} was denied by its deadline after {}",
            h["id"], h["started"]
        ));
    }
    // Nothing waits unwritten once the faults are over.
    let until = Instant::now() + Duration::from_secs(10);
    let mut status = d.status();
    while status["audit"]["pending"].as_u64() != Some(0) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        status = d.status();
    }
    if status["audit"]["pending"].as_u64() != Some(0) {
        failures.push(format!("audit records still waiting: {}", status["audit"]));
    }
    let (ok, out) = verify(&d.dir.0, &[]);
    if !ok {
        failures.push(format!("watcher-verify: {out}"));
    }
    let crashes = crashes.load(Ordering::Relaxed);
    let lost_holds = every
        .iter()
        .filter(|h| h["rule"] == "watcher-records-lost")
        .count();
    let ring_drops: u64 = status["per_type"]
        .as_object()
        .map(|m| m.values().filter_map(|c| c["drops"].as_u64()).sum())
        .unwrap_or(0);
    let faults = faults.lock().unwrap();
    eprintln!(
        "chaos: {minutes} min, {} sessions ({refused} launches refused while the daemon was down), \
         faults {faults:?}, {approved} approvals, {denied} denials, {ran} held tools ran, \
         {lost_holds} sessions held for lost records; the last daemon: {ring_drops} kernel records lost, \
         audit {}",
        sessions.len(),
        status["audit"]
    );
    for f in FAULTS {
        assert!(
            faults.get(&f).copied().unwrap_or(0) > 0,
            "no {f:?} fault came"
        );
    }
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

/// The daemon dies after it stored a hold and before it sealed the hold's audit record, while
/// the wall clock stood two hours back: the restarted daemon (the clock put right) writes the
/// record all the same. It once skipped holds older than the log's oldest record by the wall
/// clock, to spare records retention had pruned: a clock stepped back made a lost record look
/// pruned (a chaos run found it). The store now marks the records it sealed; no clock is
/// compared. Here, beside the chaos run, because it steps the host's clock too.
#[test]
fn a_hold_stored_as_the_daemon_dies_is_in_the_audit_log_whatever_the_clock_said() {
    if !cfg!(feature = "fault-injection") {
        panic!("this test needs --features watcher/fault-injection (cargo xtask test does)");
    }
    let work = TempDir::new("chaos-clock");
    let (tool, rules) = common::audit::held_tool(&work.0);
    let mut d = Daemon::start_with_env(
        &format!("[rules]\npath = \"{}\"\n", rules.display()),
        &[("WATCHER_FAULT", "before-hold-seal")],
    );
    // A record in the log before the step: the log's oldest is then later than the hold.
    let (mut first, before) = launch_bg(&d, "true");
    wait_exit(&mut first);
    let start = Instant::now();
    while common::audit::audit_json(&d, &["query", "--json", "--trace", &before]).is_empty() {
        assert!(
            start.elapsed() < DEADLINE,
            "the first session left no record"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut child, trace) = {
        let _back = common::clock::ClockStep::new(-2 * 3600);
        let started = launch_bg(&d, &tool.display().to_string());
        let st = d.await_death();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL),
            "the daemon did not stop at its fault-injection point ({st:?})"
        );
        started
    };
    let logged = |d: &Daemon| {
        common::audit::audit_json(d, &["query", "--json", "--kind", "hold", "--trace", &trace])
            .len()
    };
    assert_eq!(logged(&d), 0, "the hold was sealed before the fault point");
    d.restart();
    let holds = json_lines(
        &d.cli()
            .args(["holds", "--all", "--json"])
            .output()
            .unwrap()
            .stdout,
    );
    let hold = holds
        .iter()
        .find(|h| h["trace_id"] == trace.as_str())
        .unwrap_or_else(|| panic!("the stored hold is not pending: {holds:?}"))
        .clone();
    assert_eq!(hold["rule"], "test-hold-exec", "{hold}");
    // Its deadline (a minute) is counted on the boot clock: the step back did not make it
    // two hours past.
    assert_eq!(hold["state"], "pending", "denied at restart: {hold}");
    // The record is written on a thread of its own once the daemon is up.
    let start = Instant::now();
    while logged(&d) == 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the restarted daemon did not write the hold's record"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(logged(&d), 1, "the hold's record was written twice");
    verdict(&d, "deny", &hold);
    wait_exit(&mut child);
    assert!(!work.0.join("marker").exists(), "the denied tool ran");
}
