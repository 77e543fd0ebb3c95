//! The audit log survives a SIGKILL of the daemon in a busy session (at least 20,000 events a
//! second): on restart the store verifies and every decision that took effect is in it. In its
//! own test binary, so no other test competes for the CPU while it measures the rate. Needs
//! root.
mod common;

use std::time::Duration;

use common::{
    audit::{held_tool, timeline, verify},
    holds::{await_hold, launch_bg, wait_exit},
    Daemon, TempDir,
};
use serde_json::Value;

/// Events the kernel produced, all types: received by the daemon, and dropped in the kernel
/// ring when the daemon fell behind (a debug build does, at this rate).
fn events_produced(d: &Daemon) -> (u64, u64) {
    let st = d.status();
    let per_type = st["per_type"].as_object().unwrap();
    let sum = |k: &str| per_type.values().map(|c| c[k].as_u64().unwrap()).sum();
    (sum("events"), sum("drops"))
}

#[test]
fn a_daemon_killed_in_a_busy_session_restarts_on_a_log_that_verifies_with_every_decision() {
    let work = TempDir::new("audit-crash");
    let w = work.0.display().to_string();
    let (_tool, rules) = held_tool(&work.0);
    // Opens as fast as Python goes (two of them run), until `stop` exists.
    std::fs::write(
        work.0.join("storm.py"),
        format!(
            "import os\nwhile not os.path.exists('{w}/stop'):\n    for _ in range(1000):\n        os.close(os.open('/etc/hostname', os.O_RDONLY))\n"
        ),
    )
    .unwrap();
    let mut d = Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()));
    // Three held execs, each once the test touches its `go` file, with the storm running
    // throughout.
    let (mut child, trace) = launch_bg(
        &d,
        &format!(
            "{py} {w}/storm.py & {py} {w}/storm.py & for i in 1 2 3; do while [ ! -e {w}/go$i ]; do sleep 0.01; done; {w}/held-tool; done; wait",
            py = common::python()
        ),
    );
    let mut approved: Vec<String> = Vec::new();
    for i in 1..=3 {
        std::fs::write(work.0.join(format!("go{i}")), "").unwrap();
        let id = common::holds::first_finding(&d, &trace, |v| {
            v["hold"]
                .as_str()
                .is_some_and(|h| !approved.iter().any(|a| a == h))
        })
        .expect("the finding stream ended without a new hold")["hold"]
            .as_str()
            .unwrap()
            .to_string();
        let hold = common::holds::await_stored(&d, &id);
        common::holds::verdict(&d, "approve", &hold);
        approved.push(id);
    }
    // Every approved program ran: the approvals took effect.
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while std::fs::read_to_string(work.0.join("marker"))
        .unwrap_or_default()
        .lines()
        .count()
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the approved programs did not run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The session is busy when the daemon dies: measured over one second just before.
    let (ev0, dr0) = events_produced(&d);
    let t = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let (ev1, dr1) = events_produced(&d);
    let secs = t.elapsed().as_secs_f64();
    let rate = (ev1 - ev0 + dr1 - dr0) as f64 / secs;
    eprintln!(
        "busy session: {:.0} events/s received, {:.0}/s dropped in the kernel",
        (ev1 - ev0) as f64 / secs,
        (dr1 - dr0) as f64 / secs
    );
    let audit = d.status()["audit"].clone();
    d.kill();
    assert!(
        rate >= 20_000.0,
        "the session made {rate:.0} events/s; this test needs at least 20,000"
    );
    std::fs::write(work.0.join("stop"), "").unwrap();
    assert_eq!(wait_exit(&mut child).code(), Some(0));

    let dir = d.dir.0.clone();
    let (ok, out) = verify(&dir, &[]);
    assert!(ok, "the store does not verify after SIGKILL: {out}");
    // Every sealed decision is there: each hold and each approval.
    let records = |d: &Daemon| timeline(d, &trace);
    let had = records(&d);
    for id in &approved {
        for kind in ["hold", "approval"] {
            assert!(
                had.iter().any(|r| r["kind"] == kind
                    && (r["body"]["id"] == id.as_str() || r["body"]["hold"] == id.as_str())),
                "no {kind} record of hold {id} after the crash"
            );
        }
    }
    // Nothing the writer had committed is lost (events still in the ring at the kill are:
    // they had not taken effect anywhere).
    let stored: u64 = rusqlite::Connection::open(dir.join("audit.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    let written = audit["records"].as_u64().unwrap();
    assert!(
        stored >= written && had.iter().any(|r| r["kind"] == "event"),
        "the store has {stored} records; the writer had {written} before the kill"
    );

    // The restarted daemon goes on from the recovered tree: its next decision is sealed in a
    // log that still verifies, consistent with the checkpoints witnessed before the crash.
    d.restart();
    let before_restart = std::fs::read_to_string(dir.join("witness.jsonl")).unwrap();
    let old_size = serde_json::from_str::<Value>(before_restart.lines().last().unwrap()).unwrap()
        ["size"]
        .as_u64()
        .unwrap();
    let (mut child, trace2) = launch_bg(&d, &format!("{w}/held-tool"));
    let hold = await_hold(&d, &trace2);
    common::holds::verdict(&d, "approve", &hold);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    let status = d.status();
    d.kill();
    let (ok, out) = verify(&dir, &[]);
    assert!(
        ok,
        "the store does not verify after the restart: {out} ({status})"
    );
    let witness = std::fs::read_to_string(dir.join("witness.jsonl")).unwrap();
    let new_size = serde_json::from_str::<Value>(witness.lines().last().unwrap()).unwrap()["size"]
        .as_u64()
        .unwrap();
    assert!(new_size > old_size, "no checkpoint after the restart");
    let (ok, out) = verify(
        &dir,
        &["consistency", &old_size.to_string(), &new_size.to_string()],
    );
    assert!(ok, "{out}");
    let after = timeline(&d, &trace2);
    assert!(
        after
            .iter()
            .any(|r| r["kind"] == "approval" && r["body"]["hold"] == hold["id"]),
        "the approval after the restart is not in the log"
    );
}
