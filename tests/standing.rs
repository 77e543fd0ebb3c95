//! The watcher stands (issue 31): what the daemon keeps is its own, and no watched process
//! stops it. Root end-to-end tests on the real kernel.
mod common;
use std::{os::unix::fs::PermissionsExt as _, path::Path};

use common::{holds::spawn_session, Daemon, Ns, TempDir};

/// Every file of the daemon's that exists among `names` in `dir`, with its mode.
fn modes(dir: &Path, names: &[&str]) -> Vec<(String, u32)> {
    names
        .iter()
        .filter_map(|n| {
            let md = std::fs::symlink_metadata(dir.join(n)).ok()?;
            Some((n.to_string(), md.permissions().mode() & 0o7777))
        })
        .collect()
}

const STATE: [&str; 7] = [
    "watcher.db",
    "watcher.db-wal",
    "watcher.db-shm",
    "audit.db",
    "audit.db-wal",
    "audit.db-shm",
    "audit.key",
];

#[test]
fn the_stores_their_wal_and_shm_and_the_token_are_never_readable_by_others() {
    let tmp = TempDir::new("standing-modes");
    let token = tmp.0.join("api.token");
    let export = tmp.0.join("export.jsonl");
    let port = common::free_port();
    // A host whose umask is 0 would have every file made with the default mode world-readable.
    let mut d = Daemon::start_with_umask(
        &format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n[audit]\nexport = \"{}\"\n",
            token.display(),
            export.display()
        ),
        0,
    );
    let (_, code) = d.launch("true");
    assert_eq!(code, 0);
    // The export is written once a second: awaited, with a deadline.
    let start = std::time::Instant::now();
    while !export.exists() {
        assert!(
            start.elapsed() < common::DEADLINE,
            "no export within {:?}",
            common::DEADLINE
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let check = |d: &Daemon, when: &str| {
        let mut found = modes(&d.dir.0, &STATE);
        found.extend(modes(&tmp.0, &["api.token", "export.jsonl"]));
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        for must in STATE.iter().chain(&["api.token"]) {
            assert!(
                names.contains(must),
                "{when}: {must} missing among {names:?}"
            );
        }
        for (name, mode) in &found {
            assert_eq!(
                mode & 0o007,
                0,
                "{when}: {name} has mode {mode:o}: others may read it"
            );
        }
    };
    check(&d, "first start, umask 0");
    // Files an older version or a user left readable are closed at the next start.
    d.kill();
    for (dir, n) in STATE
        .iter()
        .map(|n| (&d.dir.0, *n))
        .chain([(&tmp.0, "api.token"), (&tmp.0, "export.jsonl")])
    {
        let p = dir.join(n);
        if p.exists() && n != "audit.key" {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    d.restart();
    check(&d, "restart over files left 0644");
}

/// The session's cgroup is frozen with processes in it, or the session is over (the sender
/// was its last process).
fn await_frozen(d: &Daemon, trace: &str, launch: &mut std::process::Child) {
    let start = std::time::Instant::now();
    let dir = d.cgroup.join(trace);
    loop {
        if launch.try_wait().unwrap().is_some() {
            return;
        }
        let frozen = std::fs::read_to_string(dir.join("cgroup.events"))
            .is_ok_and(|t| t.lines().any(|l| l == "frozen 1"));
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if frozen && procs > 0 {
            return;
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "session {trace} was not frozen"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The daemon's state letter in /proc (`T`: stopped).
fn state(pid: u32) -> char {
    common::holds::state_of(pid).unwrap_or('?')
}

/// The daemon's guardian: its one live child process.
fn guardian_of(d: &Daemon) -> u32 {
    let start = std::time::Instant::now();
    loop {
        // A child belongs to the thread that started it: every thread's list is read.
        let children: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .filter(|p| state(*p) != 'Z')
            .collect();
        if let [p] = children[..] {
            return p;
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "the daemon has no guardian"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// One way a watched process reaches the daemon, then tries a next step (the marker).
fn attacks(daemon: u32, guardian: u32, thread: u32, marker: &Path) -> Vec<(&'static str, String)> {
    let m = marker.display();
    let py = "/usr/bin/python3";
    vec![
        ("kill -STOP (the shell's own kill)", format!("kill -STOP {daemon}; touch {m}")),
        ("/bin/kill -STOP", format!("/bin/kill -STOP {daemon}; touch {m}")),
        ("tgkill SIGSTOP to one of its threads", format!(
            "{py} -c \"import ctypes; ctypes.CDLL(None).syscall(234, {daemon}, {thread}, 19); open('{m}', 'w')\""
        )),
        ("pidfd_send_signal SIGSTOP", format!(
            "{py} -c \"import os, signal; signal.pidfd_send_signal(os.pidfd_open({daemon}), signal.SIGSTOP); open('{m}', 'w')\""
        )),
        ("kill -TERM", format!("kill -TERM {daemon}; touch {m}")),
        ("kill -HUP", format!("kill -HUP {daemon}; touch {m}")),
        ("SIGSTOP to the guardian, then to the daemon", format!(
            "/bin/kill -STOP {guardian}; /bin/kill -STOP {daemon}; touch {m}"
        )),
        ("ptrace attach", format!(
            "{py} -c \"import ctypes; ctypes.CDLL(None).ptrace(16, {daemon}, 0, 0); open('{m}', 'w')\""
        )),
        // A pidfd from the daemon's /proc directory: no call the fence can see names the
        // daemon, so only the kernel-side check meets it (as it meets every signal of a
        // session with no fence: attached or matched ones).
        ("pidfd from /proc/PID, SIGSTOP", format!(
            "{py} -c \"import os, signal; signal.pidfd_send_signal(os.open('/proc/{daemon}', os.O_RDONLY), signal.SIGSTOP); open('{m}', 'w')\""
        )),
    ]
}

/// What the tamper finding's evidence is for an attack: the seccomp fence (`watcher launch`
/// as root) kills the caller in the call, and its exit is the evidence; a signal only the
/// kernel-side check sees is a signal.
fn evidence_of(what: &str) -> (&'static str, Option<&'static str>) {
    match what {
        "pidfd from /proc/PID, SIGSTOP" => ("signal", None),
        "kill -STOP (the shell's own kill)"
        | "/bin/kill -STOP"
        | "kill -TERM"
        | "kill -HUP"
        | "SIGSTOP to the guardian, then to the daemon" => ("exit", Some("kill")),
        "tgkill SIGSTOP to one of its threads" => ("exit", Some("tgkill")),
        "pidfd_send_signal SIGSTOP" => ("exit", Some("pidfd_open")),
        // The fence skips the call and the process dies of SIGSYS on its way out, but the
        // `ptrace` exit hook sees the skipped call first and kills it (its SIGKILL wins): the
        // call is the evidence.
        _ => ("ptrace", None),
    }
}

/// No watched process stops, ends or traces the daemon, by any call, to any of its threads or
/// through its guardian: the sender dies as it sends, its session is frozen, its next step
/// never runs, and the daemon goes on answering (a stop is undone by the guardian).
#[test]
fn no_watched_process_stops_the_daemon() {
    let d = Daemon::start();
    let tmp = TempDir::new("standing-signals");
    for ns in [Ns::Host, Ns::Private] {
        let guardian = guardian_of(&d);
        let thread = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|t| *t != d.pid())
            .expect("the daemon has threads");
        for (i, (what, script)) in attacks(d.pid(), guardian, thread, &tmp.0.join("m"))
            .into_iter()
            .enumerate()
        {
            let marker = tmp.0.join(format!("marker-{ns:?}-{i}"));
            let script = script.replace(
                &tmp.0.join("m").display().to_string(),
                &marker.display().to_string(),
            );
            let (mut child, trace) = spawn_session(d.launch_in(ns, "", &script));
            let f = common::holds::first_finding(&d, &trace, |f| f["rule"] == "watcher-tamper")
                .unwrap_or_else(|| panic!("{ns:?} {what}: no tamper finding"));
            let (kind, fenced) = evidence_of(what);
            assert_eq!(f["evidence"][0]["type"], kind, "{ns:?} {what}: {f}");
            if let Some(call) = fenced {
                assert_eq!(f["evidence"][0]["fenced"], call, "{ns:?} {what}: {f}");
            }
            await_frozen(&d, &trace, &mut child);
            // The daemon runs and answers (it decided the finding above, and answers now).
            let st = d.status();
            assert!(st["sessions"].is_array(), "{ns:?} {what}: {st}");
            assert_ne!(state(d.pid()), 'T', "{ns:?} {what}: the daemon is stopped");
            assert!(
                std::fs::read_to_string(format!("/proc/{}/status", d.pid()))
                    .unwrap()
                    .lines()
                    .any(|l| l == "TracerPid:\t0"),
                "{ns:?} {what}: the daemon is traced"
            );
            assert!(
                !marker.exists(),
                "{ns:?} {what}: the sender's next step ran"
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The guardian, killed by a watched process, is replaced, and the replacement continues a
/// daemon that anyone stopped; a stop sent by the operator (outside every session) is undone
/// too, and its SIGTERM still stops the daemon.
#[test]
fn a_killed_guardian_is_replaced_and_the_new_one_continues_the_daemon() {
    let mut d = Daemon::start();
    let tmp = TempDir::new("standing-guardian");
    let old = guardian_of(&d);
    let marker = tmp.0.join("marker");
    // Through a pidfd from /proc (a call the launch's seccomp fence cannot refuse: it names no
    // pid), so that the guardian does die.
    let script = format!(
        "/usr/bin/python3 -c \"import os, signal; signal.pidfd_send_signal(os.open('/proc/{old}', os.O_RDONLY), signal.SIGKILL)\"; touch {}",
        marker.display()
    );
    let (mut child, trace) = spawn_session(d.launch_in(Ns::Host, "", &script));
    common::holds::first_finding(&d, &trace, |f| f["rule"] == "watcher-tamper")
        .expect("no tamper finding");
    await_frozen(&d, &trace, &mut child);
    assert!(!marker.exists(), "the sender's next step ran");
    let start = std::time::Instant::now();
    let new = loop {
        let g = guardian_of(&d);
        if g != old {
            break g;
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "the guardian was not replaced"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(state(old), '?', "the old guardian lives on");
    // SAFETY: signals to the test's own daemon.
    unsafe { libc::kill(d.pid() as i32, libc::SIGSTOP) };
    // The stop takes effect asynchronously: seen stopped first (briefly), then running again.
    let start = std::time::Instant::now();
    let mut stopped_at = None;
    loop {
        let st = state(d.pid());
        if st == 'T' && stopped_at.is_none() {
            stopped_at = Some(std::time::Instant::now());
        }
        if st != 'T'
            && (stopped_at.is_some() || start.elapsed() > std::time::Duration::from_secs(1))
        {
            break;
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "guardian {new} did not continue the daemon"
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    if let Some(t) = stopped_at {
        eprintln!(
            "the stopped daemon ran again {:?} after it was seen stopped",
            t.elapsed()
        );
    }
    assert!(d.status()["sessions"].is_array());
    let _ = child.kill();
    let _ = child.wait();
    unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) };
    assert!(
        d.await_death().success(),
        "the operator's SIGTERM did not stop the daemon cleanly"
    );
    let start = std::time::Instant::now();
    while state(new) != '?' {
        assert!(
            start.elapsed() < common::DEADLINE,
            "the guardian outlived the daemon"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `attach` refuses a tree that holds PID 1 or the watcher itself (its parent's tree holds
/// the daemon), and a caller other than root a process of another user; what it refuses stays
/// unwatched.
#[test]
fn attach_refuses_the_watcher_pid_1_and_other_users_processes() {
    let d = Daemon::start_with("[daemon]\napprover_group = \"nogroup\"\n");
    let attach = |pid: u32, as_nobody: bool| {
        let mut c = if as_nobody {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                common::BIN,
            ]);
            c.arg("--socket").arg(&d.socket);
            c
        } else {
            d.cli()
        };
        let out = c.args(["attach", &pid.to_string()]).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // SAFETY: no preconditions.
    let me = unsafe { libc::getpid() } as u32;
    for (pid, what) in [
        (1, "PID 1"),
        (me, "the watcher itself"),
        (d.pid(), "the watcher itself"),
    ] {
        let (ok, err) = attach(pid, false);
        assert!(!ok, "attach {pid} was accepted");
        assert!(err.contains(what), "attach {pid}: {err}");
    }
    assert!(
        d.status()["sessions"].as_array().unwrap().is_empty(),
        "a session was started"
    );
    // A process of root's, attached by nobody (an approver by its group): refused.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let (ok, err) = attach(sleeper.id(), true);
    assert!(!ok && err.contains("is not yours"), "{err}");
    assert!(
        d.status()["sessions"].as_array().unwrap().is_empty(),
        "a session was started"
    );
    // Root may attach it.
    let (ok, err) = attach(sleeper.id(), false);
    assert!(ok, "{err}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// A fork bomb in a session cannot starve the host or the daemon: every session has a process
/// limit (`[holds] pids_max`), on whichever hierarchy this host's pids controller is (here a
/// cgroup v1 one, beside the session's v2 cgroup). The session's forks fail at the limit; the
/// daemon goes on answering.
#[test]
fn a_session_cannot_fork_past_its_process_limit() {
    common::require_root();
    let work = TempDir::new("standing-pids");
    let d = Daemon::start_with("[holds]\npids_max = 16\n");
    for ns in [Ns::Host, Ns::Private] {
        let out = work.0.join(format!("forked-{ns:?}"));
        // Forks children that wait on a pipe until a fork fails, writes how many it made and
        // why it stopped, and lets them go.
        let script = format!(
            "/usr/bin/python3 -c \"import os, errno
r, w = os.pipe()
n, why = 0, 'none'
while n < 200:
    try:
        pid = os.fork()
    except OSError as e:
        why = errno.errorcode.get(e.errno, str(e.errno)); break
    if pid == 0:
        os.close(w); os.read(r, 1); os._exit(0)
    n += 1
open('{}', 'w').write('%d %s' % (n, why))
os.close(w)
for _ in range(n): os.wait()\"",
            out.display()
        );
        let (mut child, _trace) = spawn_session(d.launch_in(ns, "", &script));
        common::holds::wait_exit(&mut child);
        let got = std::fs::read_to_string(&out).unwrap_or_default();
        let (n, why) = got.split_once(' ').unwrap_or(("", ""));
        let n: u32 = n.parse().unwrap_or(u32::MAX);
        assert!(
            n < 16 && why == "EAGAIN",
            "{ns:?}: the session forked {n} children ({why:?}) under a limit of 16"
        );
    }
    // Still answering, and saying where the limit is.
    let st = d.status();
    assert_eq!(st["pids_limit"]["max"], 16, "{st:#}");
}

/// `kill(-1, …)` from a session reaches no process: the seccomp fence kills the caller in the
/// call, before one signal is sent (a SIGSTOP there would stop the daemon and its guardian at
/// once, where the kernel-side check sees the first of them already sent). A harmless signal
/// stands in for the stop, and a process outside every session records whatever it gets.
#[test]
fn kill_minus_one_from_a_session_reaches_no_process() {
    use std::process::{Command, Stdio};
    let d = Daemon::start();
    let tmp = TempDir::new("standing-kill-all");
    let (got, ready) = (tmp.0.join("sentinel-got"), tmp.0.join("sentinel-ready"));
    let mut sentinel = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import signal, time\nsignal.signal(signal.SIGWINCH, lambda *a: open('{}', 'a').write('x'))\nopen('{}', 'w').close()\ntime.sleep(300)",
            got.display(),
            ready.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let start = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            start.elapsed() < common::DEADLINE,
            "the sentinel did not start"
        );
        assert!(sentinel.try_wait().unwrap().is_none(), "the sentinel died");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _sentinel = Reap(sentinel);
    for ns in [Ns::Host, Ns::Private] {
        let marker = tmp.0.join(format!("after-{ns:?}"));
        let script = format!(
            "/usr/bin/python3 -c \"import os, signal; os.kill(-1, signal.SIGWINCH); open('{}', 'w')\"",
            marker.display()
        );
        let (mut child, trace) = spawn_session(d.launch_in(ns, "", &script));
        let f = common::holds::first_finding(&d, &trace, |f| f["rule"] == "watcher-tamper")
            .unwrap_or_else(|| panic!("{ns:?}: no tamper finding"));
        assert_eq!(f["evidence"][0]["fenced"], "kill", "{ns:?}: {f}");
        await_frozen(&d, &trace, &mut child);
        assert!(!marker.exists(), "{ns:?}: the caller's next step ran");
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        !got.exists(),
        "a process outside every session got the session's kill(-1)"
    );
    assert_ne!(state(d.pid()), 'T', "the daemon is stopped");
}

/// Runs `script` as a session in `ns`, expects its first hold to be `watcher-records-lost`,
/// denies it and waits for the session's end; what went wrong (another rule, a marker of a
/// step after the hold that exists).
fn deny_records_lost(d: &Daemon, ns: Ns, script: &str, after: &[&Path]) -> Vec<String> {
    let mut failures = Vec::new();
    let (mut child, trace) = spawn_session(d.launch_in(ns, "", script));
    let hold = common::holds::await_hold(d, &trace);
    if hold["rule"] != "watcher-records-lost" {
        failures.push(format!("{ns:?}: held by {}", hold["rule"]));
    }
    common::holds::verdict(d, "deny", &hold);
    common::holds::wait_exit(&mut child);
    for m in after.iter().filter(|m| m.exists()) {
        failures.push(format!("{ns:?}: {} exists after deny", m.display()));
    }
    failures
}

/// A session whose records the watcher could not keep is held, not let go unseen: with the
/// ring full (a 4 KiB ring the intake has stopped reading), the first record of a kind that
/// could hold is lost, its process stops where it made the call, and the session is held for
/// a human (`watcher-records-lost`); deny kills it before its next step.
#[test]
fn a_record_lost_to_a_full_ring_holds_its_session() {
    common::require_root();
    let work = TempDir::new("standing-lost");
    let paused = work.0.join("paused");
    std::fs::write(&paused, "").unwrap();
    // Rules that gate nothing the session runs: the stop is the lost record's alone.
    let (_tool, rules) = common::audit::held_tool(&work.0);
    let d = Daemon::start_with_env(
        &format!(
            "[rules]\npath = \"{}\"\n[daemon]\nring_buffer_bytes = 4096\n[holds]\ntimeout = \"60s\"\n",
            rules.display()
        ),
        &[
            ("WATCHER_FAULT", "pause-intake"),
            ("WATCHER_FAULT_FILE", paused.to_str().unwrap()),
        ],
    );
    let mut failures = Vec::new();
    for ns in [Ns::Host, Ns::Private] {
        let marker = work.0.join(format!("went-on-{ns:?}"));
        let script = format!(
            "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done; touch {}",
            marker.display()
        );
        failures.extend(deny_records_lost(&d, ns, &script, &[&marker]));
    }
    std::fs::remove_file(&paused).unwrap();
    let st = d.status();
    assert!(st["gate"]["lost_holds"].as_u64() >= Some(2), "{st:#}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A new process that cannot be watched (the watched-process map is full) does not run
/// unwatched: its parent stops at the fork, the session is frozen with the child in it and
/// held; deny kills the session, the child included, before the script's next step.
#[test]
fn a_process_that_cannot_be_watched_holds_its_session() {
    common::require_root();
    let work = TempDir::new("standing-unwatched");
    let d = Daemon::start_with("[daemon]\nmax_watched_processes = 8\n[holds]\ntimeout = \"60s\"\n");
    let mut failures = Vec::new();
    for ns in [Ns::Host, Ns::Private] {
        let marker = work.0.join(format!("went-on-{ns:?}"));
        let ran = work.0.join(format!("unwatched-ran-{ns:?}"));
        // Each child waits a moment, then leaves a mark: a child frozen and killed leaves none.
        let script = format!(
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do (sleep 2; touch {}) & done; touch {}; wait",
            ran.display(),
            marker.display()
        );
        failures.extend(deny_records_lost(&d, ns, &script, &[&marker, &ran]));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The control socket and the API's unix socket ask who wrote each request, not only who
/// connected: a process outside every session connects and hands the connection into a session
/// (`SCM_RIGHTS`), and stays there so that its own check passes; the request the session writes
/// on it is refused.
#[test]
fn a_control_connection_passed_into_a_session_speaks_for_no_one() {
    use std::process::{Command, Stdio};
    common::require_root();
    let d = Daemon::start();
    let work = TempDir::new("standing-passed-fd");
    // The session: takes a descriptor from whoever connects to the hand-off socket, writes a
    // request on it, and keeps the answer.
    let session = work.0.join("session.py");
    std::fs::write(
        &session,
        "import socket, array, os, sys
# Bound under a temporary name and renamed once listening: the name appears only when a
# connect to it can succeed.
l = socket.socket(socket.AF_UNIX); l.bind(sys.argv[1] + '.tmp'); l.listen(1)
os.rename(sys.argv[1] + '.tmp', sys.argv[1])
c, _ = l.accept()
msg, anc, _, _ = c.recvmsg(1, socket.CMSG_SPACE(4))
s = socket.socket(fileno=array.array('i', anc[0][2][:4])[0])
s.sendall(sys.argv[3].encode().decode('unicode_escape').encode())
open(sys.argv[2], 'wb').write(s.recv(65536))
c.send(b'x')
",
    )
    .unwrap();
    // The outsider: connects to the daemon, passes the connection, waits to be told.
    let outsider = work.0.join("outsider.py");
    std::fs::write(
        &outsider,
        "import socket, array, os, sys, time
end = time.time() + 30
while not os.path.exists(sys.argv[1]) and time.time() < end: time.sleep(0.01)
d = socket.socket(socket.AF_UNIX); d.connect(sys.argv[2])
h = socket.socket(socket.AF_UNIX); h.connect(sys.argv[1])
h.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [d.fileno()]))])
h.settimeout(30); h.recv(1)
",
    )
    .unwrap();
    let api = d.dir.0.join("api.sock");
    let sockets = [
        ("control", d.socket.clone(), r#"{\"cmd\": \"status\"}\n"#),
        (
            "api",
            api,
            r"GET /v1/kill-switch HTTP/1.1\r\nHost: w\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (name, sock, request) in &sockets {
        for ns in [Ns::Host, Ns::Private] {
            let handoff = work.0.join(format!("handoff-{name}-{ns:?}"));
            let reply = work.0.join(format!("reply-{name}-{ns:?}"));
            let script = format!(
                "/usr/bin/python3 {} {} {} '{request}'",
                session.display(),
                handoff.display(),
                reply.display()
            );
            let (mut child, _trace) = spawn_session(d.launch_in(ns, "", &script));
            let out = Command::new("/usr/bin/python3")
                .arg(&outsider)
                .arg(&handoff)
                .arg(sock)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .unwrap();
            common::holds::wait_exit(&mut child);
            let got = String::from_utf8_lossy(&std::fs::read(&reply).unwrap_or_default())
                .chars()
                .take(400)
                .collect::<String>();
            if !out.success() || !got.contains("part of a watched session") {
                failures.push(format!(
                    "{name} {ns:?}: outsider {out}, the session got {got:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A clean stop (`systemctl stop`, `restart`, an upgrade) with a session running detaches
/// every program: by default (`on_stop = "freeze"`) the session is frozen until the next
/// daemon watches it again and thaws it, so nothing it does goes unseen; with `run` it goes on.
#[test]
fn a_clean_stop_freezes_running_sessions_for_the_next_daemon() {
    for (on_stop, frozen) in [("freeze", true), ("run", false)] {
        let work = TempDir::new("standing-stop");
        let w = work.0.display().to_string();
        let mut d = Daemon::start_with(&format!("[daemon]\non_stop = \"{on_stop}\"\n"));
        let go = work.0.join("go");
        assert!(std::process::Command::new("mkfifo")
            .arg(&go)
            .status()
            .unwrap()
            .success());
        // Waits on the FIFO, then leaves a mark: what it does after the stop.
        let (mut child, trace) = spawn_session(d.launch_in(
            Ns::Host,
            "",
            &format!("read x < {w}/go; echo after > {w}/after"),
        ));
        let dir = d.cgroup.join(&trace);
        let events =
            |d: &Path| std::fs::read_to_string(d.join("cgroup.events")).unwrap_or_default();
        d.stop();
        assert_eq!(
            events(&dir).lines().any(|l| l == "frozen 1"),
            frozen,
            "on_stop = {on_stop}: {}",
            events(&dir)
        );
        // The FIFO opened for writing: a frozen session cannot read it.
        let writer = std::thread::spawn({
            let go = go.clone();
            move || std::fs::write(go, "go\n")
        });
        let after = work.0.join("after");
        if frozen {
            assert!(
                !after.exists(),
                "the frozen session ran while no daemon watched it"
            );
            d.restart();
        }
        let until = std::time::Instant::now() + common::DEADLINE;
        while child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < until,
                "on_stop = {on_stop}: the session never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        writer.join().unwrap().unwrap();
        assert!(
            after.exists(),
            "on_stop = {on_stop}: the session did not go on"
        );
        if !frozen {
            d.restart();
        }
    }
}

/// The package's removal (`watcher retire --stop`, what its prerm runs where no service manager
/// stops the daemon) with the default `on_stop = "freeze"`: the held session is denied (no
/// answer can come: its tool never runs), the running session goes on instead of being frozen
/// for a daemon that will not come, nothing stays pinned, and the audit log says what was done.
/// A plain stop instead would leave both frozen for good once the package is gone.
#[test]
fn retiring_the_watcher_denies_its_holds_and_leaves_nothing_frozen() {
    let work = TempDir::new("standing-retire");
    let w = work.0.display().to_string();
    let (tool, rules) = common::audit::held_tool(&work.0);
    let mut d = Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()));
    let go = work.0.join("go");
    assert!(std::process::Command::new("mkfifo")
        .arg(&go)
        .status()
        .unwrap()
        .success());
    let (mut running, _) = spawn_session(d.launch_in(
        Ns::Host,
        "",
        &format!("read x < {w}/go; echo after > {w}/after"),
    ));
    let (mut held, held_trace) = common::holds::launch_bg(&d, &tool.display().to_string());
    let hold = common::holds::await_hold(&d, &held_trace);
    assert!(
        d.bpffs.exists(),
        "the daemon pinned nothing: the test would show nothing"
    );
    let out = d.cli().args(["retire", "--stop"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "watcher retire --stop: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(hold["id"].as_str().unwrap()), "{said}");
    assert!(d.await_death().success(), "the daemon did not stop cleanly");
    // The held session was killed before its tool ran.
    common::holds::wait_exit(&mut held);
    assert!(!work.0.join("marker").exists(), "the held tool ran");
    // The running session goes on: it reads the FIFO and finishes.
    let writer = std::thread::spawn(move || std::fs::write(go, "go\n"));
    let until = std::time::Instant::now() + common::DEADLINE;
    while running.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < until,
            "the running session never finished: frozen at the stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    writer.join().unwrap().unwrap();
    assert!(work.0.join("after").exists(), "the session did not go on");
    let pinned: Vec<_> = std::fs::read_dir(&d.bpffs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(pinned.is_empty(), "still pinned: {pinned:?}");
    let records = common::audit::audit_json(&d, &["query", "--json", "--kind", "retire"]);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["body"]["denied"][0], hold["id"], "{records:?}");
    let stops = common::audit::audit_json(&d, &["query", "--json", "--kind", "daemon_stop"]);
    let last = stops.last().expect("no daemon_stop record");
    assert_eq!(last["body"]["retiring"], true, "{last}");
    assert_eq!(last["body"]["frozen"], serde_json::json!([]), "{last}");
}
