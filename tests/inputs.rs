//! The daemon against hostile input: path-like ids at every entry point, oversize requests,
//! floods of idle clients and running out of file descriptors. Root, the real daemon, real
//! cgroups and real sockets.
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Instant,
};

use serde_json::{json, Value};

use common::{cgroup2_root, curl, rand_suffix, Daemon, TempDir, DEADLINE};

/// A cgroup beside the daemon's own directory with a live process in it: what a trace id of
/// `../<name>` would name if it ever became a path.
struct Canary {
    dir: PathBuf,
    child: Child,
}

impl Canary {
    fn new() -> Canary {
        let dir = cgroup2_root().join(format!(
            "watcher-canary-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir(&dir).unwrap();
        let child = Command::new("sleep").arg("300").spawn().unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        Canary { dir, child }
    }

    fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// The path-like id that points at this cgroup from the daemon's directory.
    fn id(&self) -> String {
        format!("../{}", self.name())
    }

    /// Untouched: not frozen, not asked to freeze, its process alive and in it.
    fn assert_untouched(&mut self, after: &str) {
        let freeze = std::fs::read_to_string(self.dir.join("cgroup.freeze")).unwrap();
        assert_eq!(
            freeze.trim(),
            "0",
            "{after}: the canary cgroup was asked to freeze"
        );
        let events = std::fs::read_to_string(self.dir.join("cgroup.events")).unwrap();
        assert!(events.contains("frozen 0"), "{after}: {events}");
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{after}: the canary process was killed"
        );
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.contains(&self.child.id().to_string()),
            "{after}: {procs}"
        );
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let start = Instant::now();
        while std::fs::remove_dir(&self.dir).is_err() && start.elapsed() < DEADLINE {
            std::thread::yield_now();
        }
    }
}

/// One request line on the control socket; the reply line.
fn control(socket: &Path, line: &[u8]) -> Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(line).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

#[test]
fn path_like_ids_are_refused_everywhere() {
    let mut canary = Canary::new();
    let api_port = common::free_port();
    let tmp = TempDir::new("ids");
    let token_file = tmp.0.join("api.token");
    let mut d = Daemon::start_with(&format!(
        "[api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    let bad = canary.id();
    let unknown = "0123456789abcdef0123456789abcdef";

    // The CLI refuses before it sends anything.
    for args in [
        vec!["kill-switch", "engage", "--trace", &bad, "--kill"],
        vec!["kill-switch", "engage", "--trace", &bad, "--freeze"],
        vec!["events", "--trace", &bad],
        vec!["findings", "--trace", &bad],
        vec!["approve", &bad],
        vec!["deny", &bad],
        vec!["show-hold", &bad],
    ] {
        let out = d.cli().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("invalid trace id") || err.contains("invalid hold id"),
            "{args:?}: {err}"
        );
        canary.assert_untouched(&format!("{args:?}"));
    }
    // A well-formed id of no session is an error too, and engages nothing.
    let out = d
        .cli()
        .args(["kill-switch", "engage", "--trace", unknown])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such session"),
        "{out:?}"
    );

    // The control socket, spoken to directly.
    for req in [
        json!({"cmd": "kill_switch", "op": "engage", "traces": [bad], "mode": "kill"}),
        json!({"cmd": "kill_switch", "op": "engage", "traces": [bad], "mode": "freeze"}),
        json!({"cmd": "events", "follow": false, "trace": bad}),
        json!({"cmd": "deny", "id": bad}),
        json!({"cmd": "approve", "id": bad, "remember": false}),
    ] {
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        let reply = control(&d.socket, &line);
        let err = reply["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{req}: {reply}"));
        assert!(
            err.contains("invalid trace id") || err.contains("invalid hold id"),
            "{req}: {err}"
        );
        canary.assert_untouched(&req.to_string());
    }

    // The HTTP API, on its unix socket and on loopback with the token.
    let api_sock = d.dir.0.join("api.sock").display().to_string();
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let base = format!("http://127.0.0.1:{api_port}");
    let engage = json!({"traces": [bad], "mode": "kill"}).to_string();
    let alert = json!({
        "status": "firing",
        "alerts": [{"status": "firing", "labels": {"alertname": "x", "trace_id": bad, "watcher_mode": "kill"}}]
    })
    .to_string();
    let encoded = bad.replace('/', "%2F");
    let requests: Vec<Vec<String>> = vec![
        vec![
            "--unix-socket".into(),
            api_sock.clone(),
            "-X".into(),
            "POST".into(),
            "-d".into(),
            engage.clone(),
            "http://watcher/v1/kill-switch/engage".into(),
        ],
        vec![
            "-H".into(),
            auth.clone(),
            "-X".into(),
            "POST".into(),
            "-d".into(),
            engage.clone(),
            format!("{base}/v1/kill-switch/engage"),
        ],
        vec![
            "--unix-socket".into(),
            api_sock.clone(),
            "-X".into(),
            "POST".into(),
            "-d".into(),
            alert.clone(),
            "http://watcher/v1/alertmanager".into(),
        ],
        vec![
            "-H".into(),
            auth.clone(),
            "-X".into(),
            "POST".into(),
            "-d".into(),
            alert.clone(),
            format!("{base}/v1/alertmanager"),
        ],
        vec![
            "-H".into(),
            auth.clone(),
            "-X".into(),
            "POST".into(),
            format!("{base}/v1/holds/{encoded}/deny"),
        ],
        vec!["-H".into(), auth.clone(), format!("{base}/v1/holds/h-zz")],
    ];
    for args in &requests {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, v) = curl(&a);
        assert_eq!(code, 400, "{args:?}: {v}");
        let err = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{args:?}: {v}"));
        assert!(
            err.contains("invalid trace id") || err.contains("invalid hold id"),
            "{args:?}: {err}"
        );
        canary.assert_untouched(&format!("{args:?}"));
    }
    // A well-formed but unknown session from Alertmanager: refused, nothing engaged.
    let alert =
        json!({"alerts": [{"status": "firing", "labels": {"trace_id": unknown}}]}).to_string();
    let (code, v) = curl(&[
        "-H",
        &auth,
        "-X",
        "POST",
        "-d",
        &alert,
        &format!("{base}/v1/alertmanager"),
    ]);
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["engaged"], false, "{v}");

    // Nothing was engaged, so nothing is re-applied at restart.
    assert_eq!(d.status()["holds"]["kill_switch"]["engaged"], false);
    d.crash_and_restart();
    assert_eq!(d.status()["holds"]["kill_switch"]["engaged"], false);
    canary.assert_untouched("a restart");
}

#[test]
fn oversize_requests_are_refused_with_a_clear_error() {
    let d = Daemon::start();
    // A 10 MiB line on the control socket.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    let line = vec![b'a'; 10 << 20];
    // The daemon answers after 8 MiB and closes: the rest of the write may fail, and is not
    // the point.
    let _ = s.write_all(&line);
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    let v: Value = serde_json::from_str(&reply).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("request line is over 8388608 bytes"),
        "{v}"
    );
    // Still answering.
    assert!(d.status()["sessions"].is_array());
}

/// The command's output; not done by the deadline fails the test (the CLI itself waits as long
/// as the daemon takes).
fn output_within(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// The daemon's open descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn set_nofile(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: 20_000,
    };
    // SAFETY: valid pointers; prlimit on a child of ours, as root.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, &mut old) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Raises this test process's own soft limit so it can hold thousands of client sockets.
fn raise_own_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    assert!(
        l.rlim_cur >= 8000,
        "this test needs 8000 open files; the hard limit is {}",
        l.rlim_cur
    );
}

#[test]
fn the_daemon_survives_running_out_of_descriptors() {
    raise_own_nofile();
    let d = Daemon::start();
    let pid = d.pid();
    let limit = open_fds(pid) as u64 + 16;
    set_nofile(pid, limit);
    // Idle clients take every descriptor the daemon has left; the rest wait in the backlog.
    let idle: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    // A client that arrives now waits its turn in the backlog and is then told why it cannot
    // be served (the spare descriptor), instead of hanging.
    let out = output_within(d.cli().args(["status", "--json"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("out of file descriptors"),
        "not told it is out of descriptors: {err}"
    );
    drop(idle);
    set_nofile(pid, 20_000);
    // The idle clients are gone: the daemon answers again and counted what failed.
    let start = Instant::now();
    let status = loop {
        let out = d.cli().args(["status", "--json"]).output().unwrap();
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).unwrap();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert!(status["accept_errors"].as_u64().unwrap() > 0, "{status}");
}

#[test]
fn thousands_of_idle_clients_leave_status_answering() {
    raise_own_nofile();
    let d = Daemon::start();
    let api = d.dir.0.join("api.sock");
    let mut idle = Vec::new();
    for _ in 0..3000 {
        idle.push(UnixStream::connect(&d.socket).unwrap());
        idle.push(UnixStream::connect(&api).unwrap());
    }
    let out = d.cli().args(["status", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the idle clients are let go: a client that never sends its request is dropped.
    let mut first = idle.swap_remove(0);
    first.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    let n = first.read_to_end(&mut rest).unwrap();
    let v: Value = serde_json::from_slice(&rest[..n]).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("no request line"),
        "{v}"
    );
}

#[test]
fn the_api_checks_the_caller_first_and_bounds_what_it_reads() {
    let api_port = common::free_port();
    let tmp = TempDir::new("api-limits");
    let token_file = tmp.0.join("api.token");
    let d = Daemon::start_with(&format!(
        "[api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let base = format!("http://127.0.0.1:{api_port}");
    let api_sock = d.dir.0.join("api.sock").display().to_string();
    let big = tmp.0.join("big.json");
    std::fs::write(&big, vec![b' '; 10 << 20]).unwrap();
    let big_arg = format!("@{}", big.display());
    let engage = format!("{base}/v1/kill-switch/engage");

    // No token: refused before the body is looked at.
    let (code, v) = curl(&["-X", "POST", "--data-binary", &big_arg, &engage]);
    assert_eq!(code, 401, "{v}");
    // With the token, or on the unix socket: the body is over the limit, said so.
    for args in [
        vec![
            "-H",
            &auth,
            "-X",
            "POST",
            "--data-binary",
            &big_arg,
            &engage,
        ],
        vec![
            "--unix-socket",
            &api_sock,
            "-X",
            "POST",
            "--data-binary",
            &big_arg,
            "http://watcher/v1/kill-switch/engage",
        ],
    ] {
        let (code, v) = curl(&args);
        assert_eq!(code, 413, "{args:?}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("request body over 1048576 bytes"),
            "{v}"
        );
    }
    // A 64 KiB header.
    let huge = format!("X-Padding: {}", "a".repeat(64 << 10));
    let (code, _) = curl(&["-H", &auth, "-H", &huge, &format!("{base}/v1/holds")]);
    assert_eq!(code, 431, "a 64 KiB header was accepted");
    // A watched process with the right token is refused all the same.
    let out = tmp.0.join("code");
    let (_, rc) = d.launch(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -H '{auth}' {base}/v1/holds > {}",
        out.display()
    ));
    assert_eq!(rc, 0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "403");
    // And a caller that is not watched gets its answer.
    let (code, v) = curl(&["-H", &auth, &format!("{base}/v1/holds")]);
    assert_eq!(code, 200, "{v}");
    assert!(v["holds"].is_array(), "{v}");
}
