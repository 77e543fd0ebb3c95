//! End-to-end holds: a rule freezes a watched session before harm, a human approves or denies
//! it (or the deadline denies it), the freeze survives SIGCONT and a daemon crash, and the
//! kill-switch stops every session at once. Root, the real kernel, real processes.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;
use common::{
    curl,
    holds::{
        await_hold, first_finding, json_lines, launch_bg, next_hold, show_hold, spawn_session,
        state_of, verdict, wait_exit,
    },
    Daemon, Ns, OwnerCgroup, TempDir, DEADLINE,
};

/// Stopped by the kernel at the hook: in state T, or, when the session's freeze won the race
/// with the stop, frozen (state S in the freezer) with the SIGSTOP still pending.
fn stopped_by_kernel(pid: u64) -> bool {
    if state_of(pid) == Some('T') {
        return true;
    }
    const SIGSTOP_BIT: u64 = 1 << (libc::SIGSTOP - 1);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let pending = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|m| m & SIGSTOP_BIT != 0)
    };
    state_of(pid) == Some('S') && (pending("SigPnd:") || pending("ShdPnd:"))
}

fn wchan(pid: u64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok()
}

/// Asleep where the cgroup v2 freezer parks a task (its signal-delivery trap).
fn in_freezer_trap(pid: u64) -> bool {
    state_of(pid) == Some('S')
        && wchan(pid).is_some_and(|w| w == "get_signal" || w == "do_freezer_trap")
}

/// The session's state as `watcher status` shows it.
fn session_state(d: &Daemon, trace: &str) -> String {
    let st = d.status();
    st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["trace_id"] == trace)
        .unwrap_or_else(|| panic!("no session {trace} in {st}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn frozen(d: &Daemon, trace: &str) -> bool {
    std::fs::read_to_string(d.cgroup.join(trace).join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "frozen 1"))
        .unwrap_or(false)
}

/// A rules directory with one rule: holding an exec of `tool` (a kernel fast path: SIGSTOP
/// before the program's first instruction).
fn hold_setup(extra_config: &str) -> (TempDir, Daemon, String) {
    hold_setup_env(extra_config, &[])
}

/// `hold_setup` with `env` in the first daemon's environment.
fn hold_setup_env(extra_config: &str, env: &[(&str, &str)]) -> (TempDir, Daemon, String) {
    let work = TempDir::new("holds");
    let tool = work.0.join("held-tool");
    std::fs::write(
        &tool,
        format!("#!/bin/sh\necho ran > {}/marker-$1\n", work.0.display()),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&tool).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rules = work.0.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("hold.yaml"),
        format!(
            "rules:\n  - id: test-hold-exec\n    description: a tool that needs a human's yes\n    severity: high\n    action: hold\n    mode: enforce\n    condition: {{type: exec, exe: \"{}\"}}\n    examples: {{match: [{{type: exec, path: \"{}\"}}]}}\n",
            tool.display(),
            tool.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with_env(
        &format!("[rules]\npath = \"{}\"\n{extra_config}", rules.display()),
        env,
    );
    let w = work.0.display().to_string();
    (work, d, w)
}

fn marker(dir: &str, name: &str) -> bool {
    Path::new(dir).join(format!("marker-{name}")).exists()
}

#[test]
fn a_held_exec_waits_for_approval() {
    let (_work, d, w) = hold_setup("");
    let (mut child, trace) = launch_bg(
        &d,
        &format!("echo > {w}/marker-before; {w}/held-tool a; echo > {w}/marker-after"),
    );
    let hold = await_hold(&d, &trace);
    assert!(marker(&w, "before"));
    assert_eq!(hold["state"], "pending");
    assert_eq!(hold["rule"], "test-hold-exec");
    assert_eq!(hold["trigger"]["type"], "exec");
    let pid = hold["trigger"]["pid"].as_u64().unwrap();
    // Stopped at exec, before the new program's first instruction, and the session frozen.
    assert!(
        stopped_by_kernel(pid),
        "held process not stopped: state {:?}",
        state_of(pid)
    );
    assert!(frozen(&d, &trace), "session cgroup not frozen");
    assert_eq!(session_state(&d, &trace), "held");
    assert!(!marker(&w, "a"), "the held program ran");
    assert!(
        hold["tree"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid),
        "{hold}"
    );
    assert!(
        hold["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "open"),
        "no recent events: {hold}"
    );
    let id = hold["id"].as_str().unwrap();
    // Listed as pending.
    let list = json_lines(&d.cli().args(["holds", "--json"]).output().unwrap().stdout);
    assert!(list.iter().any(|h| h["id"] == id));

    let out = d.cli().args(["approve", id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = wait_exit(&mut child);
    assert_eq!(st.code(), Some(0));
    assert!(
        marker(&w, "a") && marker(&w, "after"),
        "did not complete after approve"
    );
    let h = show_hold(&d, id);
    assert_eq!(h["state"], "approved");
    assert_eq!(h["decided_by"], "root");
}

#[test]
fn deny_kills_and_no_answer_is_deny() {
    let (_work, d, w) = hold_setup("[holds]\ntimeout = \"2s\"\n");
    // Deny.
    let (mut child, trace) = launch_bg(
        &d,
        &format!("{w}/held-tool denied; echo > {w}/marker-after-deny"),
    );
    let hold = await_hold(&d, &trace);
    verdict(&d, "deny", &hold);
    let st = wait_exit(&mut child);
    assert!(st.code().is_none(), "the session was not killed: {st:?}");
    assert!(!marker(&w, "denied") && !marker(&w, "after-deny"));

    // No answer: denied at the deadline.
    let (mut child, trace) = launch_bg(&d, &format!("{w}/held-tool late"));
    let hold = await_hold(&d, &trace);
    let st = wait_exit(&mut child);
    assert!(st.code().is_none(), "not killed at the deadline: {st:?}");
    assert!(!marker(&w, "late"));
    let h = show_hold(&d, hold["id"].as_str().unwrap());
    assert_eq!(h["state"], "denied");
    assert_eq!(h["decided_by"], "deadline");
}

#[test]
fn sigcont_does_not_release_a_held_session() {
    let (_work, d, w) = hold_setup("");
    let (mut child, trace) = launch_bg(&d, &format!("{w}/held-tool cont"));
    let hold = await_hold(&d, &trace);
    let pid = hold["trigger"]["pid"].as_u64().unwrap();
    // SIGCONT from outside the session (root, unwatched): the cgroup freezer keeps it.
    assert!(Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    // kill(2) has cleared the kernel's stop by the time it returns; the woken task then traps
    // into the freezer again. Awaited: the task asleep in the freezer's trap (not stopped, not
    // running, not in any other wait) with the session reporting frozen. Had SIGCONT released
    // it, it would be running the program or gone, and the marker would follow.
    let start = Instant::now();
    while !(in_freezer_trap(pid) && frozen(&d, &trace)) {
        assert!(
            start.elapsed() < DEADLINE,
            "after SIGCONT: state {:?}, wchan {:?}",
            state_of(pid),
            wchan(pid)
        );
        std::thread::yield_now();
    }
    assert!(!marker(&w, "cont"), "SIGCONT resumed a held process");
    verdict(&d, "approve", &hold);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert!(marker(&w, "cont"));
}

#[test]
fn a_hold_survives_a_daemon_crash() {
    let (_work, mut d, w) = hold_setup("");
    let (mut child, trace) = launch_bg(&d, &format!("{w}/held-tool crash"));
    let hold = await_hold(&d, &trace);
    let id = hold["id"].as_str().unwrap().to_string();
    d.crash_and_restart();
    // Still frozen (fail closed), still listed, and it can be approved.
    assert!(
        frozen(&d, &trace),
        "the session thawed when the daemon died"
    );
    assert!(!marker(&w, "crash"));
    let list = json_lines(&d.cli().args(["holds", "--json"]).output().unwrap().stdout);
    assert!(list.iter().any(|h| h["id"] == id.as_str()), "{list:?}");
    let st = d.status();
    assert!(
        st["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["trace_id"] == trace.as_str()),
        "the session was not watched again: {st}"
    );
    let out = d.cli().args(["approve", &id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert!(marker(&w, "crash"));
}

/// The daemon dies (SIGKILL: a crash, an OOM kill) with a session running, and the session
/// runs a held tool before any daemon is back. The programs and maps pinned in bpffs stay in
/// force: the tool's exec is stopped at the gate, its record waits in the ring, and the next
/// daemon holds it under the rule that names it; deny kills it before it ran. Without pinning
/// the tool runs unseen while no daemon watches.
#[test]
fn a_held_action_while_no_daemon_runs_is_stopped_and_decided_by_the_next() {
    for ns in [Ns::Host, Ns::Private] {
        let (_work, mut d, w) = hold_setup("");
        let go = Path::new(&w).join("go");
        assert!(Command::new("mkfifo").arg(&go).status().unwrap().success());
        let (mut child, trace) = spawn_session(d.launch_in(
            ns,
            "",
            &format!("read x < {w}/go; {w}/held-tool down; true"),
        ));
        // The session's shell is watched once its trace id is out; then no daemon runs.
        d.kill();
        let writer = std::thread::spawn({
            let go = go.clone();
            move || std::fs::write(go, "go\n")
        });
        // Awaited: a process of the session stopped at a hook (the exec of the tool).
        let procs = d.cgroup.join(&trace).join("cgroup.procs");
        let start = Instant::now();
        let stopped = loop {
            let pids = std::fs::read_to_string(&procs).unwrap_or_default();
            if let Some(p) = pids.lines().find(|p| state_of(p) == Some('T')) {
                break p.to_string();
            }
            assert!(
                start.elapsed() < DEADLINE && !marker(&w, "down"),
                "{ns:?}: with no daemon the held tool ran (marker {}), nothing of the session \
                 was stopped",
                marker(&w, "down")
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        writer.join().unwrap().unwrap();
        assert!(!marker(&w, "down"), "{ns:?}: the held tool ran");
        d.restart();
        // The next daemon reads the record the programs wrote and holds it as the rule says.
        let start = Instant::now();
        let hold = loop {
            let list = json_lines(&d.cli().args(["holds", "--json"]).output().unwrap().stdout);
            if let Some(h) = list.into_iter().find(|h| h["trace_id"] == trace.as_str()) {
                break h;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{ns:?}: no hold for the process stopped while no daemon ran (pid {stopped})"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(hold["rule"], "test-hold-exec", "{ns:?}: {hold}");
        assert_eq!(hold["state"], "pending", "{ns:?}: {hold}");
        verdict(&d, "deny", &hold);
        wait_exit(&mut child);
        assert!(!marker(&w, "down"), "{ns:?}: the denied tool ran");
    }
}

/// The daemon dies (SIGKILL, at a fault-injection point) after it froze a session for a hold
/// and before it stored the hold: the restarted daemon finds the frozen session without a hold,
/// lists a hold for it, and approving it lets the session finish.
#[test]
fn a_crash_between_freeze_and_store_leaves_a_decidable_hold() {
    if !cfg!(feature = "fault-injection") {
        panic!(
            "this test needs the daemon's fault-injection points: build with --features \
             watcher/fault-injection (cargo xtask test does)"
        );
    }
    // The webhook hears of the hold made at start-up too (it announced none before).
    let (port, hooks) = webhook_receiver();
    let (_work, mut d, w) = hold_setup_env(
        &format!("[holds]\nwebhook = \"http://127.0.0.1:{port}/\"\n"),
        &[("WATCHER_FAULT", "before-hold-store")],
    );
    let (mut child, trace) = launch_bg(&d, &format!("{w}/held-tool unrecorded"));
    let st = d.await_death();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "the daemon did not stop at its fault-injection point ({st:?}); the crash tests need \
         the watcher built with --features watcher/fault-injection (cargo xtask test does)"
    );
    await_frozen(&d, &trace);
    assert!(!marker(&w, "unrecorded"));
    d.restart();
    let list = json_lines(&d.cli().args(["holds", "--json"]).output().unwrap().stdout);
    let hold = list
        .iter()
        .find(|h| h["trace_id"] == trace.as_str())
        .unwrap_or_else(|| panic!("no hold for the frozen session: {list:?}"))
        .clone();
    assert_eq!(hold["rule"], "watcher-recovered-hold", "{hold}");
    assert_eq!(hold["state"], "pending");
    let posted = hooks
        .recv_timeout(DEADLINE)
        .expect("the recovered hold was not sent to the webhook");
    let posted: Value = serde_json::from_str(&posted).unwrap();
    assert_eq!(posted["hold"]["id"], hold["id"], "{posted}");
    assert!(frozen(&d, &trace), "the session thawed");
    assert!(!marker(&w, "unrecorded"));
    verdict(&d, "approve", &hold);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert!(marker(&w, "unrecorded"));
}

/// The first finding of `rule` in the session's stream (read as it arrives).
fn await_finding(d: &Daemon, trace: &str, rule: &str) -> Value {
    first_finding(d, trace, |v| v["rule"] == rule).unwrap_or_else(|| panic!("no {rule} finding"))
}

/// Waits until the session's cgroup reports frozen with processes in it (an empty cgroup
/// reports frozen too).
fn await_frozen(d: &Daemon, trace: &str) {
    let start = Instant::now();
    let procs = || {
        std::fs::read_to_string(d.cgroup.join(trace).join("cgroup.procs"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    while !(frozen(d, trace) && procs() > 0) {
        assert!(start.elapsed() < DEADLINE, "session {trace} was not frozen");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_watched_process_cannot_approve_its_hold() {
    let (_work, d, w) = hold_setup("");
    let (_held, trace) = launch_bg(&d, &format!("{w}/held-tool self"));
    let hold = await_hold(&d, &trace);
    let id = hold["id"].as_str().unwrap();
    // Another watched session (root, too) tries to approve it through the control socket: it
    // is refused, and touching the socket is tampering, which freezes that session.
    let (mut approver, trace2) = launch_bg(
        &d,
        &format!(
            "{} --socket {} approve {id} 2> {w}/approve-err; echo $? > {w}/approve-rc; sleep 300",
            common::BIN,
            d.socket.display()
        ),
    );
    let f = await_finding(&d, &trace2, "watcher-tamper");
    assert!(
        f["description"]
            .as_str()
            .unwrap()
            .contains("control socket"),
        "{f}"
    );
    await_frozen(&d, &trace2);
    let h = show_hold(&d, id);
    assert_eq!(h["state"], "pending");
    // Let the approver's session go (the kill-switch froze it) and read what it was told; the
    // held session has its hold pending and stays frozen.
    let out = d.cli().args(["kill-switch", "release"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rc = Path::new(&w).join("approve-rc");
    let start = Instant::now();
    while !std::fs::read_to_string(&rc).is_ok_and(|t| t.ends_with('\n')) {
        assert!(
            start.elapsed() < DEADLINE,
            "the refused approver never finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_ne!(
        std::fs::read_to_string(&rc).unwrap().trim(),
        "0",
        "approve succeeded"
    );
    let err = std::fs::read_to_string(Path::new(&w).join("approve-err")).unwrap();
    assert!(err.contains("part of a watched session"), "{err}");
    assert_eq!(show_hold(&d, id)["state"], "pending");
    assert!(frozen(&d, &trace), "the held session was released");
    let _ = approver.kill();
}

#[test]
fn a_watched_sigcont_to_a_held_process_is_tampering() {
    let (_work, d, w) = hold_setup("");
    let (_held, trace) = launch_bg(&d, &format!("{w}/held-tool sib"));
    let hold = await_hold(&d, &trace);
    let pid = hold["trigger"]["pid"].as_u64().unwrap();
    let (_sender, trace2) = launch_bg(&d, &format!("kill -CONT {pid}; sleep 300"));
    let f = await_finding(&d, &trace2, "watcher-tamper");
    assert!(
        f["description"].as_str().unwrap().contains("held session"),
        "{f}"
    );
    assert_eq!(f["evidence"][0]["type"], "signal");
    await_frozen(&d, &trace2);
    assert!(frozen(&d, &trace), "the held session was released");
    assert!(!marker(&w, "sib"));
}

#[test]
fn the_kill_switch_stops_every_session_and_nothing_else() {
    let d = Daemon::start();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(launch_bg(&d, "sleep 300 & sleep 300; wait"));
    }
    let mut bystander = Command::new("sleep").arg("300").spawn().unwrap();
    // Every session has its processes in place (each has two sleeps under its shell).
    for (_, trace) in &sessions {
        let start = Instant::now();
        while std::fs::read_to_string(d.cgroup.join(trace).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .count()
            < 3
        {
            assert!(start.elapsed() < DEADLINE, "session {trace} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let out = d
        .cli()
        .args(["kill-switch", "engage", "--all", "--freeze"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (_, trace) in &sessions {
        assert!(frozen(&d, trace), "session {trace} not frozen");
    }
    assert_eq!(
        state_of(bystander.id() as u64),
        Some('S'),
        "an unwatched process was touched"
    );
    let st = d.status();
    assert_eq!(st["holds"]["kill_switch"]["engaged"], true);
    for (_, trace) in &sessions {
        assert_eq!(session_state(&d, trace), "frozen");
    }

    let out = d.cli().args(["kill-switch", "release"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (_, trace) in &sessions {
        assert!(
            !frozen(&d, trace),
            "session {trace} still frozen after release"
        );
    }

    let out = d
        .cli()
        .args(["kill-switch", "engage", "--all", "--kill"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (child, _) in &mut sessions {
        assert!(
            wait_exit(child).code().is_none(),
            "a session survived --kill"
        );
    }
    assert_eq!(
        bystander.try_wait().unwrap(),
        None,
        "an unwatched process was killed"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    let _ = d.cli().args(["kill-switch", "release"]).output();
}

/// An agent started outside the watcher is matched at exec and becomes a session. A child it
/// forks before the daemon has seen the session still ends up in the session's cgroup, where a
/// hold freezes it with the rest.
#[test]
fn a_matched_agent_is_a_session_with_every_child_in_its_cgroup() {
    let work = TempDir::new("matcher");
    let w = work.0.display().to_string();
    let name = format!("fake-agent-{}", common::rand_suffix() % 1_000_000);
    let agent = work.0.join(&name);
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\nsleep 600 &\necho $! > {w}/child.tmp\nmv {w}/child.tmp {w}/child\nwait\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut d = Daemon::start_with(&format!(
        "[[agents]]\nprofile = \"fake\"\nmatch = [\"{name}\"]\n"
    ));
    // Not this test's stdout: a process left behind must not hold the harness's pipes.
    let root = Command::new(&agent)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reap = Reap(root, None);
    let start = Instant::now();
    let waited = || {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    };
    let child: u32 = loop {
        if let Ok(t) = std::fs::read_to_string(format!("{w}/child")) {
            break t.trim().parse().unwrap();
        }
        waited();
    };
    reap.1 = Some(child);
    let root = reap.0.id();
    let trace = loop {
        let st = d.status();
        let found = st["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["root_pid"] == root && s["started_by"] == "matcher");
        if let Some(s) = found {
            assert_eq!(s["profile"], "fake");
            break s["trace_id"].as_str().unwrap().to_string();
        }
        waited();
    };
    let in_session = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_default()
            .contains(&format!("/{trace}"))
    };
    while !(in_session(root) && in_session(child)) {
        waited();
    }
    // A daemon that dies and comes back adopts the session as the kernel started it: same
    // trace, same profile, and the kernel's records of it (here its end) are that session's,
    // not a second one's.
    d.crash_and_restart();
    let matched = |d: &Daemon| -> Vec<Value> {
        d.status()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["root_pid"] == root && s["started_by"] == "matcher")
            .cloned()
            .collect()
    };
    let after = matched(&d);
    assert!(
        after.len() == 1 && after[0]["trace_id"] == trace.as_str() && after[0]["profile"] == "fake",
        "after a restart: {after:?}"
    );
    // SAFETY: plain syscall on a process this test started.
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
    let start = Instant::now();
    loop {
        let now: Vec<Value> = d.status()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["started_by"] == "matcher")
            .cloned()
            .collect();
        assert!(
            now.iter().all(|s| s["trace_id"] == trace.as_str()),
            "the adopted session's records made another session: {now:?}"
        );
        if now.iter().any(|s| s["ended"].is_string()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the adopted session never ended: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the agent and its child when the test ends, passed or not.
struct Reap(Child, Option<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(pid) = self.1 {
            // SAFETY: plain syscall on a process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_protected_file_created_after_start_is_protected_too() {
    let work = TempDir::new("protect-new");
    let keys = work.0.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let d = Daemon::start_with(&format!(
        "[holds]\nprotected = [\"{}/id_*\"]\n",
        keys.display()
    ));
    let protected = |d: &Daemon| d.status()["holds"]["protected_files"].as_u64().unwrap();
    assert_eq!(protected(&d), 0, "no key exists yet");
    // A key written later, by the usual write-then-rename.
    let key = keys.join("id_new");
    std::fs::write(keys.join(".tmp-key"), "new-secret\n").unwrap();
    std::fs::rename(keys.join(".tmp-key"), &key).unwrap();
    let start = Instant::now();
    while protected(&d) != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new key was not marked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let w = work.0.display().to_string();
    let (mut child, trace) = launch_bg(
        &d,
        &format!(
            "cat {} > {w}/out 2> {w}/err; echo \"rc=$?\" > {w}/rc",
            key.display()
        ),
    );
    let hold = await_hold(&d, &trace);
    assert_eq!(hold["kind"], "protected_open");
    assert_eq!(hold["trigger"]["path"], key.display().to_string());
    verdict(&d, "deny", &hold);
    // Denied, the session was stopped before the open returned: nothing after it ran.
    wait_exit(&mut child);
    assert!(!std::path::Path::new(&format!("{w}/rc")).exists());
    assert_eq!(std::fs::read_to_string(format!("{w}/out")).unwrap(), "");
}

#[test]
fn a_protected_open_waits_for_the_verdict() {
    let work = TempDir::new("protect");
    let w = work.0.display().to_string();
    let secret = work.0.join("secret.txt");
    std::fs::write(&secret, "the-secret\n").unwrap();
    let d = Daemon::start_with(&format!(
        "[holds]\nprotected = [\"{}\"]\n",
        secret.display()
    ));
    // Approve: the open completes and the reader gets the contents.
    let (mut child, trace) = launch_bg(&d, &format!("cat {} > {w}/out-approved", secret.display()));
    let hold = await_hold(&d, &trace);
    assert_eq!(hold["kind"], "protected_open");
    assert_eq!(hold["trigger"]["path"], secret.display().to_string());
    // Meanwhile an unwatched process opens the same file at once.
    let out = Command::new("cat").arg(&secret).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "the-secret\n");
    assert_eq!(
        std::fs::read_to_string(format!("{w}/out-approved")).unwrap(),
        "",
        "read before the verdict"
    );
    verdict(&d, "approve", &hold);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(format!("{w}/out-approved")).unwrap(),
        "the-secret\n"
    );

    // Deny (`deny = "session"`, the default): the session is stopped while the open still
    // waits, so nothing after it runs; the reader never got the data.
    let (mut child, trace) = launch_bg(
        &d,
        &format!(
            "cat {} > {w}/out-denied 2> {w}/err-denied; echo \"rc=$?\" > {w}/rc-denied",
            secret.display()
        ),
    );
    let hold = await_hold(&d, &trace);
    verdict(&d, "deny", &hold);
    wait_exit(&mut child);
    assert!(
        !std::path::Path::new(&format!("{w}/rc-denied")).exists(),
        "the session ran its next command after the denied open"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{w}/out-denied")).unwrap(),
        ""
    );
    let denied = show_hold(&d, hold["id"].as_str().unwrap());
    assert!(
        denied["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("killed the session")),
        "{denied}"
    );
}

/// A protected file that a hold rule also names: reading it is one action, so it is one
/// question. The open waits for the verdict (fanotify); after approve, the rule's finding on
/// that same open is covered by the approval (outcome `approved`), not a second hold.
#[test]
fn a_protected_read_is_one_question() {
    let work = TempDir::new("one-question");
    let keys = work.0.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = keys.join("id_test");
    std::fs::write(&key, "the-key\n").unwrap();
    let rules = work.0.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("keys.yaml"),
        format!(
            "rules:\n  - id: test-key-read\n    description: a key read\n    severity: high\n    action: hold\n    mode: enforce\n    condition: {{type: open, path: \"{k}/id_*\", not: {{exe: ssh}}}}\n    examples: {{match: [{{type: open, path: \"{k}/id_a\", exe: /bin/cat}}]}}\n",
            k = keys.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with(&format!(
        "[rules]\npath = \"{}\"\n[holds]\nprotected = [\"{}/id_*\"]\n",
        rules.display(),
        keys.display()
    ));
    let out = work.0.join("out");
    let (mut child, trace) = launch_bg(&d, &format!("cat {} > {}", key.display(), out.display()));
    let hold = await_hold(&d, &trace);
    assert_eq!(hold["kind"], "protected_open", "{hold}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "",
        "read before the verdict"
    );
    verdict(&d, "approve", &hold);
    assert_eq!(
        wait_exit(&mut child).code(),
        Some(0),
        "one approve did not let it finish"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "the-key\n");
    let f =
        first_finding(&d, &trace, |v| v["rule"] == "test-key-read").expect("the rule saw the open");
    assert_eq!(f["outcome"], "approved", "{f}");
    assert_eq!(f["hold"], hold["id"], "{f}");
    let all = json_lines(
        &d.cli()
            .args(["holds", "--all", "--json"])
            .output()
            .unwrap()
            .stdout,
    );
    let of_session: Vec<&Value> = all
        .iter()
        .filter(|h| h["trace_id"] == trace.as_str())
        .collect();
    assert_eq!(
        of_session.len(),
        1,
        "more than one question: {of_session:#?}"
    );
}

/// A held open that created a file (a new systemd unit, say): deny removes it, so the host is
/// as it was; approve keeps it whole. A file that existed before is never deleted.
#[test]
fn deny_removes_what_the_held_open_created() {
    let work = TempDir::new("created");
    let units = work.0.join("units");
    std::fs::create_dir_all(&units).unwrap();
    // Made before the daemon starts, so well before any session writes it.
    std::fs::write(
        units.join("old.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let rules = work.0.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("units.yaml"),
        format!(
            "rules:\n  - id: test-unit-write\n    description: a unit written\n    severity: high\n    action: hold\n    mode: enforce\n    condition: {{type: open, intent: [write, create, truncate], path: \"{u}/*.service\", not: {{exe: systemctl}}}}\n    examples: {{match: [{{type: open, path: \"{u}/a.service\", flags: [O_WRONLY, O_CREAT, O_TRUNC], exe: /bin/sh}}]}}\n",
            u = units.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()));
    let unit = "[Service]\\nExecStart=/bin/sh -c evil\\n";

    // Deny: the new unit is gone, also when the session made it in a mount namespace of its
    // own, through a name the daemon's namespace does not have (the units directory bound at
    // `/root/u` on a private tmpfs home).
    for ns in [Ns::Host, Ns::Private] {
        let new = units.join(format!("new-{ns:?}.service"));
        let (setup, path) = match ns {
            Ns::Host => (String::new(), new.display().to_string()),
            Ns::Private => (
                format!(
                    "mkdir /root/u && mount --bind {} /root/u &&",
                    units.display()
                ),
                format!("/root/u/new-{ns:?}.service"),
            ),
        };
        let (mut child, trace) =
            spawn_session(d.launch_in(ns, &setup, &format!("printf '{unit}' > {path}")));
        let hold = await_hold(&d, &trace);
        assert_eq!(hold["created"][0]["path"], path, "{ns:?}: {hold}");
        verdict(&d, "deny", &hold);
        // The hold is decided in user space, so the shell may have finished before the freeze
        // (issue 12); what matters here is the file.
        wait_exit(&mut child);
        assert!(
            !new.exists(),
            "{ns:?}: the unit the denied open created is still there"
        );
        let h = show_hold(&d, hold["id"].as_str().unwrap());
        assert!(
            h["result"].as_str().unwrap().contains("removed"),
            "{ns:?}: {h}"
        );
    }

    // Approve: it stays, whole.
    let kept = units.join("kept.service");
    let (mut child, trace) = launch_bg(&d, &format!("printf '{unit}' > {}", kept.display()));
    let hold = await_hold(&d, &trace);
    verdict(&d, "approve", &hold);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        "[Service]\nExecStart=/bin/sh -c evil\n"
    );

    // A file that existed is not deleted by a deny (what was written to it stays: see README).
    let old = units.join("old.service");
    let (mut child, trace) = launch_bg(&d, &format!("printf '{unit}' > {}", old.display()));
    let hold = await_hold(&d, &trace);
    assert!(
        hold["created"].is_null(),
        "an existing file counted as created: {hold}"
    );
    verdict(&d, "deny", &hold);
    wait_exit(&mut child);
    assert!(old.exists(), "a file that existed before was deleted");
}

/// A protected file is held under every other name it has: a symlink, a hard link,
/// `/proc/self/root/…`, `..` and `//` in the path, and a bind mount (fanotify marks the inode,
/// not the name). Each read is denied and gets nothing.
#[test]
fn a_protected_file_is_held_under_any_name() {
    let work = TempDir::new("names");
    let w = work.0.display().to_string();
    let dir = work.0.join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("id_key");
    std::fs::write(&secret, "the-key\n").unwrap();
    std::os::unix::fs::symlink(&secret, work.0.join("symlink")).unwrap();
    std::fs::hard_link(&secret, work.0.join("hardlink")).unwrap();
    std::fs::create_dir_all(work.0.join("bound")).unwrap();
    let d = Daemon::start_with(&format!(
        "[holds]\nprotected = [\"{}\"]\n",
        secret.display()
    ));
    let names = [
        ("symlink", format!("{w}/symlink")),
        ("hardlink", format!("{w}/hardlink")),
        ("proc-root", format!("/proc/self/root{}", secret.display())),
        ("dotdot", format!("{w}/keys/../keys//id_key")),
        // A private mount namespace: the bind mount goes with the session.
        ("bind", format!("{w}/bound/id_key")),
    ];
    for (name, path) in names {
        let read = if name == "bind" {
            format!(
                "unshare -m sh -c 'mount --bind {w}/keys {w}/bound && cat {path}' > {w}/out-{name} 2>/dev/null; true"
            )
        } else {
            format!("cat {path} > {w}/out-{name} 2>/dev/null; true")
        };
        let (mut child, trace) = launch_bg(&d, &read);
        let mut hold = await_hold(&d, &trace);
        if name == "bind" && hold["rule"] == "agent-mount" {
            // The mount itself is asked about first (the pack's changes.yaml); let it through.
            verdict(&d, "approve", &hold);
            hold = next_hold(&d, &trace, &hold);
        }
        assert_eq!(hold["kind"], "protected_open", "{name}: {hold}");
        verdict(&d, "deny", &hold);
        wait_exit(&mut child);
        assert_eq!(
            std::fs::read_to_string(format!("{w}/out-{name}")).unwrap(),
            "",
            "{name}: the key was read through {path}"
        );
    }
}

/// A one-request HTTP receiver on loopback: returns its port and the body it will get.
fn webhook_receiver() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            // Head, then as much body as Content-Length says.
            loop {
                let n = s.read(&mut tmp).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= i + 4 + len {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                        let _ = tx.send(text[i + 4..].to_string());
                        break;
                    }
                }
            }
        }
    });
    (port, rx)
}

#[test]
fn the_http_api_webhook_and_alertmanager() {
    let (hook_port, hook) = webhook_receiver();
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = TempDir::new("api");
    let token_file = tmp.0.join("api.token");
    let (_work, d, w) = hold_setup(&format!(
        "[holds]\nwebhook = \"http://127.0.0.1:{hook_port}/hook\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    let (mut child, trace) = launch_bg(&d, &format!("{w}/held-tool api"));
    // The webhook announces the hold.
    let body: Value =
        serde_json::from_str(&hook.recv_timeout(DEADLINE).expect("no webhook call")).unwrap();
    assert_eq!(body["event"], "hold");
    assert_eq!(body["hold"]["trace_id"], trace.as_str());
    let id = body["hold"]["id"].as_str().unwrap().to_string();
    // Unix socket: listed (peer credentials: root).
    let api_sock = d.dir.0.join("api.sock").display().to_string();
    let (code, v) = curl(&["--unix-socket", &api_sock, "http://watcher/v1/holds"]);
    assert_eq!(code, 200);
    assert!(
        v["holds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == id.as_str()),
        "{v}"
    );
    // Loopback: no token, no entry.
    let base = format!("http://127.0.0.1:{api_port}");
    let (code, _) = curl(&["-X", "POST", &format!("{base}/v1/holds/{id}/approve")]);
    assert_eq!(code, 401);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let (code, v) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "X-Watcher-Approver: alice",
        &format!("{base}/v1/holds/{id}/approve"),
    ]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "approved");
    assert_eq!(v["decided_by"], "api token (alice)");
    assert_eq!(v["decided_via"], "api");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    // The audit log's approval says it came by the API.
    let out = d
        .cli()
        .arg("--config")
        .arg(d.dir.0.join("watcher.toml"))
        .args([
            "audit", "query", "--json", "--kind", "approval", "--trace", &trace,
        ])
        .output()
        .unwrap();
    let approvals = common::holds::json_lines(&out.stdout);
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(approvals[0]["body"]["via"], "api");
    assert_eq!(approvals[0]["body"]["by"], "api token (alice)");
    assert!(marker(&w, "api"));

    // Alertmanager: a firing alert naming the session engages the kill-switch for it.
    let (_running, trace) = launch_bg(&d, "sleep 300");
    let alert = serde_json::json!({
        "status": "firing",
        "alerts": [{"status": "firing", "labels": {"alertname": "AgentExfil", "trace_id": trace}}]
    })
    .to_string();
    let (code, v) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-d",
        &alert,
        &format!("{base}/v1/alertmanager"),
    ]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["engaged"], true);
    assert!(frozen(&d, &trace));
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("{base}/v1/kill-switch/release"),
    ]);
    assert_eq!(code, 200);
    assert!(!frozen(&d, &trace));
}

#[test]
fn ptrace_outside_the_session_is_tampering() {
    let d = Daemon::start();
    let mut victim = Command::new("sleep").arg("300").spawn().unwrap();
    let (_tracer, trace) = launch_bg(
        &d,
        &format!(
            "{} -c 'import ctypes; ctypes.CDLL(None).ptrace(16, {}, None, None)'; sleep 300",
            common::python(),
            victim.id()
        ),
    );
    let f = await_finding(&d, &trace, "watcher-tamper");
    assert!(
        f["description"]
            .as_str()
            .unwrap()
            .contains("outside its session"),
        "{f}"
    );
    let ev = &f["evidence"][0];
    assert_eq!(ev["type"], "ptrace", "{f}");
    // Arguments and result as the kernel saw them at the call's exit: root may attach.
    assert_eq!(ev["target_pid"], victim.id(), "{f}");
    assert_eq!(ev["request"], 16, "{f}");
    assert_eq!(ev["result"], 0, "{f}");
    await_frozen(&d, &trace);
    // The frozen tracer still holds the victim: end the tracer's session first, or the victim's
    // exit would be reported to the tracer and never to us.
    let out = d
        .cli()
        .args(["kill-switch", "engage", "--trace", &trace, "--kill"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = victim.kill();
    let _ = victim.wait();
}

/// A session stays in the cgroup that owns it (a pod's, a service's, a login scope's): its
/// cgroup is made inside that one, so the owner's limits go on applying and stopping the owner
/// stops it; it is frozen and killed there, and the owner's other processes are untouched.
#[test]
fn a_session_stays_inside_the_cgroup_that_owns_it() {
    let (_work, mut d, w) = hold_setup("");
    let owner = OwnerCgroup::new(&d);
    let sib = owner.sibling.id();
    let procs = owner.dir.join("cgroup.procs");
    let c = owner.launch(
        &d,
        &format!("{w}/held-tool placed; echo > {w}/marker-after"),
    );
    let (mut child, trace) = spawn_session(c);
    let hold = await_hold(&d, &trace);
    let session = owner.dir.join(format!("watcher-{trace}"));
    assert!(session.is_dir(), "no session cgroup inside the owner");
    assert!(
        !d.cgroup.join(&trace).exists(),
        "the session was moved out of its owner into the watcher's directory"
    );
    let pid = hold["trigger"]["pid"].as_u64().unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own.lines().any(|l| l.starts_with("0::/")
            && l.ends_with(&format!(
                "/{}/watcher-{trace}",
                owner.dir.file_name().unwrap().to_str().unwrap()
            ))),
        "the held process is elsewhere: {own}"
    );
    let events = |p: &Path| std::fs::read_to_string(p.join("cgroup.events")).unwrap();
    assert!(
        events(&session).lines().any(|l| l == "frozen 1"),
        "{}",
        events(&session)
    );
    assert!(
        events(&owner.dir).lines().any(|l| l == "frozen 0"),
        "the owner was frozen"
    );
    assert_ne!(
        state_of(sib),
        Some('T'),
        "the owner's own process was stopped"
    );
    assert!(!marker(&w, "placed"), "the held program ran");

    // A restarted daemon finds the session where it is, and decides it there.
    d.crash_and_restart();
    let st = d.status();
    assert!(
        st["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["trace_id"] == trace.as_str()),
        "the restarted daemon did not find the session: {st}"
    );
    verdict(&d, "deny", &hold);
    let st = wait_exit(&mut child);
    assert!(st.code().is_none(), "the session was not killed: {st:?}");
    assert!(!marker(&w, "placed") && !marker(&w, "after"));
    assert!(
        std::fs::read_to_string(&procs)
            .unwrap()
            .lines()
            .any(|l| l == sib.to_string()),
        "the owner's own process was killed with the session"
    );
    assert!(
        matches!(state_of(sib), Some('S') | Some('R')),
        "{:?}",
        state_of(sib)
    );
}

/// A kill decided in user space freezes the session at once and kills the process once the
/// decision is sealed (on a thread of its own: the intake never waits for the disk); the rest
/// of the session then goes on.
#[test]
fn a_kill_decided_in_user_space_kills_the_process_and_the_session_goes_on() {
    let work = TempDir::new("userkill");
    let w = work.0.display().to_string();
    let rules = work.0.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("kill.yaml"),
        format!(
            "rules:\n  - id: test-kill-chmod\n    description: a chmod of the marked file\n    severity: high\n    action: kill\n    mode: enforce\n    condition: {{type: chmod, path: \"{w}/target\"}}\n    examples: {{match: [{{type: chmod, path: \"{w}/target\", mode: 384}}]}}\n"
        ),
    )
    .unwrap();
    let d = Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()));
    std::fs::write(work.0.join("target"), "x").unwrap();
    // The chmod's process is killed; its shell goes on (its status is the killed child's).
    let (trace, code) = d.launch(&format!(
        "python3 -c \"import os, time; os.chmod('{w}/target', 0o600); time.sleep(30); open('{w}/survived', 'w')\"; echo $? > {w}/after"
    ));
    let f = first_finding(&d, &trace, |f| f["rule"] == "test-kill-chmod").expect("no finding");
    assert_eq!(f["outcome"], "killed", "{f}");
    assert_eq!(code, 0, "the session did not go on after the kill");
    assert!(
        !work.0.join("survived").exists(),
        "the killed process went on"
    );
    assert_eq!(
        std::fs::read_to_string(work.0.join("after"))
            .unwrap()
            .trim(),
        "137",
        "the process was not killed by SIGKILL"
    );
    assert!(!frozen(&d, &trace), "the session was left frozen");
}
