//! The audit log, end to end on the real daemon and kernel: a session with a hold and an
//! approval rebuilt from its trace id alone, and `watcher-verify` finding each kind of
//! tampering in copies of that store, and passing the untouched one. Needs root.
mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{
    holds::{await_hold, launch_bg, wait_exit},
    Daemon, TempDir, BIN,
};
use serde_json::Value;

fn verify_bin() -> std::path::PathBuf {
    Path::new(BIN).with_file_name("watcher-verify")
}

/// Runs watcher-verify on a store; (success, stdout).
fn verify(dir: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(verify_bin())
        .arg("--store")
        .arg(dir.join("audit.db"))
        .arg("--pubkey")
        .arg(dir.join("audit.key.pub"))
        .arg("--witness")
        .arg(dir.join("witness.jsonl"))
        .args(extra)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (`cargo xtask test` builds it; by hand: cargo build -p watcher-verify)",
                verify_bin().display()
            )
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn timeline(d: &Daemon, trace: &str) -> Vec<Value> {
    let out = d
        .cli()
        .arg("--config")
        .arg(d.dir.0.join("watcher.toml"))
        .args(["audit", "show", "--json", "--trace", trace])
        .output()
        .unwrap();
    common::holds::json_lines(&out.stdout)
}

/// A copy of the store, its key and its witness, changed by `sql` (the append-only triggers
/// dropped first, as an attacker would).
fn tampered(from: &Path, sql: &str) -> TempDir {
    let t = TempDir::new("tamper");
    for f in ["audit.db", "audit.db-wal", "audit.key.pub", "witness.jsonl"] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), t.0.join(f)).unwrap();
        }
    }
    let db = rusqlite::Connection::open(t.0.join("audit.db")).unwrap();
    db.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    db.execute_batch(sql).unwrap();
    t
}

/// A program that writes `marker` beside it, and a rule directory holding its exec.
fn held_tool(work: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let tool = work.join("held-tool");
    std::fs::write(
        &tool,
        format!("#!/bin/sh\necho ran >> {}/marker\n", work.display()),
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rules = work.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("hold.yaml"),
        format!(
            "rules:\n  - id: test-hold-exec\n    description: needs a yes\n    severity: high\n    action: hold\n    mode: enforce\n    condition: {{type: exec, exe: \"{0}\"}}\n    examples: {{match: [{{type: exec, path: \"{0}\"}}]}}\n",
            tool.display()
        ),
    )
    .unwrap();
    (tool, rules)
}

#[test]
fn a_session_is_rebuilt_from_its_trace_id_and_only_tampering_fails_verification() {
    let work = TempDir::new("audit");
    let w = work.0.display().to_string();
    let (tool, rules) = held_tool(&work.0);
    let mut d = Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut child, trace) = launch_bg(
        &d,
        &format!(
            "cat /etc/hostname > /dev/null; {} -c \"import socket; socket.create_connection(('127.0.0.1', {port})).close()\"; {w}/held-tool",
            common::python()
        ),
    );
    let hold = await_hold(&d, &trace);
    let id = hold["id"].as_str().unwrap().to_string();
    let out = d.cli().args(["approve", &id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert!(
        work.0.join("marker").exists(),
        "the approved program did not run"
    );

    // The session's end is recorded when its last process has gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let records = loop {
        let r = timeline(&d, &trace);
        if r.iter().any(|x| x["kind"] == "session_end") {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no session_end: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let kind = |k: &'static str| records.iter().filter(move |r| r["kind"] == k);
    let start = kind("session_start").next().expect("session_start");
    assert_eq!(start["body"]["started_by"], "launch");
    assert!(start["body"]["policy_version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    let events: Vec<&Value> = kind("event").map(|r| &r["body"]).collect();
    let has = |f: &dyn Fn(&Value) -> bool| events.iter().any(|e| f(e));
    assert!(has(&|e| e["type"] == "fork"), "no process tree");
    assert!(has(
        &|e| e["type"] == "exec" && e["path"] == tool.display().to_string()
    ));
    assert!(has(&|e| e["type"] == "open"
        && e["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/etc/hostname"))));
    assert!(
        has(&|e| e["type"] == "connect" && e["addr"] == "127.0.0.1" && e["port"] == port),
        "no connect"
    );
    let finding = kind("finding").next().expect("finding");
    assert_eq!(finding["body"]["rule"], "test-hold-exec");
    let decision = kind("decision").next().expect("decision");
    assert_eq!(decision["body"]["outcome"], "held");
    assert_eq!(decision["body"]["hold"], id.as_str());
    assert!(decision["body"]["reason"]
        .as_str()
        .unwrap()
        .contains("test-hold-exec"));
    // The decision names the event it was about, which is in the same timeline.
    let trigger = decision["body"]["trigger"].as_u64().expect("trigger seq");
    assert!(events
        .iter()
        .any(|e| e["seq"] == trigger && e["type"] == "exec"));
    let h = kind("hold").next().expect("hold record");
    assert_eq!(h["body"]["id"], id.as_str());
    assert!(
        !h["body"]["recent"].as_array().unwrap().is_empty(),
        "no evidence shown"
    );
    assert!(
        !h["body"]["tree"].as_array().unwrap().is_empty(),
        "no tree shown"
    );
    let approval = kind("approval").next().expect("approval");
    assert_eq!(approval["body"]["hold"], id.as_str());
    assert_eq!(approval["body"]["by"], "root");
    let at = |r: &Value| r["seq"].as_u64().unwrap();
    assert!(
        at(start) < at(finding) && at(h) < at(approval),
        "out of order"
    );
    // The approval was sealed before the session resumed: a checkpoint follows it at once.
    let text = d
        .cli()
        .arg("--config")
        .arg(d.dir.0.join("watcher.toml"))
        .args(["audit", "show", "--trace", &trace])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("approval"));

    d.kill();
    let dir = d.dir.0.clone();
    let (ok, out) = verify(&dir, &[]);
    assert!(ok, "the untouched store does not verify: {out}");
    assert!(out.starts_with("intact:"), "{out}");
    let (ok, out) = verify(&dir, &["inclusion", &at(approval).to_string()]);
    assert!(ok, "{out}");
    let witness = std::fs::read_to_string(dir.join("witness.jsonl")).unwrap();
    let sizes: Vec<u64> = witness
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["size"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(sizes.len() >= 2, "{witness}");
    let (ok, out) = verify(
        &dir,
        &[
            "consistency",
            &sizes[0].to_string(),
            &sizes[sizes.len() - 1].to_string(),
        ],
    );
    assert!(ok, "{out}");

    let ev = at(kind("event").nth(3).unwrap());
    let cases = [
        (
            format!("UPDATE audit SET record = replace(record, '\"pid\":', '\"pid\": ') WHERE seq = {ev}"),
            format!("record {ev} was edited"),
        ),
        (format!("DELETE FROM audit WHERE seq = {ev}"), format!("record {ev} is missing")),
        (
            format!(
                "UPDATE audit SET seq = -1 WHERE seq = {ev}; UPDATE audit SET seq = {ev} WHERE seq = {0}; UPDATE audit SET seq = {0} WHERE seq = -1;",
                ev + 1
            ),
            format!("record {ev} is out of place"),
        ),
        (
            "DELETE FROM audit WHERE seq >= (SELECT max(seq) FROM audit WHERE kind = 'checkpoint')"
                .to_string(),
            "the tail is missing".to_string(),
        ),
    ];
    for (sql, want) in cases {
        let t = tampered(&dir, &sql);
        let (ok, out) = verify(&t.0, &[]);
        assert!(
            !ok && out.contains(&want),
            "{sql}: want {want:?}, got {out}"
        );
    }
    // A record appended with a checkpoint signed by another key.
    let t = tampered(&dir, "");
    {
        let db = rusqlite::Connection::open(t.0.join("audit.db")).unwrap();
        let mut q = db.prepare("SELECT record FROM audit ORDER BY seq").unwrap();
        let texts: Vec<String> = q
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut f = watcher_tlog::Frontier::default();
        for x in &texts {
            f.push(watcher_tlog::leaf_hash(x.as_bytes()));
        }
        let last = watcher_tlog::leaf_hash(texts.last().unwrap().as_bytes());
        let n = texts.len() as u64;
        let forged = serde_json::json!({"seq": n + 1, "kind": "approval", "ts": "2026-01-01T00:00:00Z",
            "trace_id": trace, "prev": watcher_tlog::hex(&last), "body": {"hold": id, "by": "attacker"}})
        .to_string();
        f.push(watcher_tlog::leaf_hash(forged.as_bytes()));
        let name = std::fs::read_to_string(t.0.join("audit.key.pub")).unwrap();
        let name = name.split('+').next().unwrap();
        let other = watcher_tlog::NoteSigner::new(name, &[9; 32]);
        let c = watcher_tlog::Checkpoint {
            origin: name.into(),
            size: n + 1,
            root: f.root(),
        };
        let cp = serde_json::json!({"seq": n + 2, "kind": "checkpoint", "ts": "2026-01-01T00:00:00Z",
            "trace_id": null, "prev": watcher_tlog::hex(&watcher_tlog::leaf_hash(forged.as_bytes())),
            "body": {"size": n + 1, "root": watcher_tlog::hex(&c.root), "note": other.sign(&c), "frontier": []}})
        .to_string();
        for (s, k, tr, x) in [
            (n + 1, "approval", Some(trace.as_str()), &forged),
            (n + 2, "checkpoint", None, &cp),
        ] {
            db.execute(
                "INSERT INTO audit (seq, ts, kind, trace_id, record) VALUES (?1, 'x', ?2, ?3, ?4)",
                rusqlite::params![s as i64, k, tr, x],
            )
            .unwrap();
        }
    }
    let (ok, out) = verify(&t.0, &[]);
    assert!(
        !ok && out.contains("does not verify"),
        "forged checkpoint: {out}"
    );
}

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
    // Opens as fast as Python goes, until `stop` exists.
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
            "{py} {w}/storm.py & for i in 1 2 3; do while [ ! -e {w}/go$i ]; do sleep 0.01; done; {w}/held-tool; done; wait",
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
