//! Helpers for tests that hold sessions: start one in the background, await its hold, decide.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{Daemon, DEADLINE};

/// A session started in the background: (launch process, trace id).
pub fn launch_bg(d: &Daemon, script: &str) -> (Child, String) {
    let mut c = d.cli();
    c.args(["launch", "--", "sh", "-c", script]);
    spawn_session(c)
}

/// Spawns a prepared `watcher launch ...` command; returns it with its session's trace id. The
/// rest of the session's stderr goes on being read (a closed pipe would kill the session).
pub fn spawn_session(mut c: std::process::Command) -> (Child, String) {
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    err.read_line(&mut line).unwrap();
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            eprintln!("  session: {l}");
        }
    });
    let trace = line
        .strip_prefix("watcher: trace id ")
        .unwrap_or_else(|| panic!("no trace id: {line:?}"))
        .trim()
        .to_string();
    (child, trace)
}

pub fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The first finding in the session's stream that `wanted` accepts (read as it arrives);
/// None when the stream ends first. Reaching the deadline fails the test.
pub fn first_finding(d: &Daemon, trace: &str, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
    let mut f = d
        .cli()
        .args(["findings", "--json", "--follow", "--trace", trace])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = super::lines_of(f.stdout.take().unwrap());
    let start = Instant::now();
    let mut seen = Vec::new();
    let found = loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line).unwrap();
                if wanted(&v) {
                    break Some(v);
                }
                seen.push(v);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = f.kill();
                panic!("no such finding of session {trace} within {DEADLINE:?}; saw {seen:#?}")
            }
        }
    };
    let _ = f.kill();
    let _ = f.wait();
    found
}

/// Waits (on the finding stream) for the session's hold and returns it once it is stored.
pub fn await_hold(d: &Daemon, trace: &str) -> Value {
    let id = first_finding(d, trace, |v| v["hold"].is_string())
        .and_then(|v| v["hold"].as_str().map(str::to_string));
    await_stored(d, &id.expect("the finding stream ended without a hold"))
}

/// The session's next hold after `after` (once `after` is decided, say).
pub fn next_hold(d: &Daemon, trace: &str, after: &Value) -> Value {
    let first = after["id"].clone();
    let next = first_finding(d, trace, |v| v["hold"].is_string() && v["hold"] != first)
        .expect("the finding stream ended without another hold");
    await_stored(d, next["hold"].as_str().expect("a hold id"))
}

/// The hold `id` once it is stored (the record is written right after its finding).
pub fn await_stored(d: &Daemon, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let out = d.cli().args(["show-hold", id, "--json"]).output().unwrap();
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        assert!(start.elapsed() < DEADLINE, "hold {id} was never stored");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process's state letter (`T`: stopped, `S`: asleep), None once it is gone.
pub fn state_of(pid: impl std::fmt::Display) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// A stored hold, as `watcher show-hold --json` prints it.
pub fn show_hold(d: &Daemon, id: &str) -> Value {
    let out = d.cli().args(["show-hold", id, "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `watcher approve|deny ID`, which must succeed.
pub fn verdict(d: &Daemon, verb: &str, hold: &Value) {
    let out = d
        .cli()
        .args([verb, hold["id"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{verb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(start.elapsed() < DEADLINE, "the session did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}
