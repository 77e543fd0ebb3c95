//! The audit log, end to end on the real daemon and kernel: a session with a hold and an
//! approval rebuilt from its trace id alone, and `watcher-verify` finding each kind of
//! tampering in copies of that store, and passing the untouched one. Needs root.
mod common;

use std::{path::Path, time::Duration};

use common::{
    audit::{audit_cmd, audit_json, held_tool, timeline, verify},
    holds::{await_hold, launch_bg, wait_exit},
    Daemon, TempDir,
};
use serde_json::Value;

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

#[test]
fn a_session_is_rebuilt_from_its_trace_id_and_only_tampering_fails_verification() {
    let work = TempDir::new("audit");
    let w = work.0.display().to_string();
    let (tool, rules) = held_tool(&work.0);
    let mut d = Daemon::start_with(&format!(
        "[rules]\npath = \"{}\"\n[audit]\nexport = \"{w}/ocsf.jsonl\"\n",
        rules.display()
    ));
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
    assert_eq!(approval["body"]["via"], "cli");
    let at = |r: &Value| r["seq"].as_u64().unwrap();
    assert!(
        at(start) < at(finding) && at(h) < at(approval),
        "out of order"
    );
    // The approval was sealed before the session resumed: a checkpoint follows it at once.
    let text = audit_cmd(&d, &["show", "--trace", &trace]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("approval"));

    // Queries by rule, decision, path and process.
    let query = |args: &[&str]| audit_json(&d, &[&["query", "--json"], args].concat());
    let by_rule = query(&["--rule", "test-hold-exec"]);
    let kinds: Vec<&str> = by_rule
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"finding") && kinds.contains(&"decision") && kinds.contains(&"hold"),
        "{kinds:?}"
    );
    assert!(query(&["--rule", "no-such-rule"]).is_empty());
    let held = query(&["--decision", "held", "--trace", &trace]);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["body"]["hold"], id.as_str());
    let opens = query(&["--kind", "event", "--path", "/etc/hostname"]);
    assert!(
        !opens.is_empty() && opens.iter().all(|r| r["body"]["type"] == "open"),
        "{opens:?}"
    );
    assert!(query(&["--process", "cat", "--kind", "event"])
        .iter()
        .all(|r| r["body"]["comm"] == "cat"));
    assert!(query(&["--since", "1h", "--kind", "approval"]).len() == 1);
    assert!(query(&["--until", "1h", "--kind", "approval"]).is_empty());

    // The OCSF export of the session: one line per record, each valid against the vendored
    // OCSF 1.3.0 subset, the four classes there, each line naming the session.
    let lines = audit_json(&d, &["export", "--format", "ocsf", "--trace", &trace]);
    let schema: Value =
        serde_json::from_str(include_str!("ocsf/ocsf-1.3.0-subset.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(
        lines.len() >= records.len(),
        "{} lines for {} records",
        lines.len(),
        records.len()
    );
    for l in &lines {
        if let Err(e) = validator.validate(l) {
            panic!("not OCSF: {e} at {}: {l}", e.instance_path);
        }
        let class = l["class_uid"].as_u64().unwrap();
        assert_eq!(
            l["type_uid"].as_u64().unwrap(),
            class * 100 + l["activity_id"].as_u64().unwrap()
        );
        assert_eq!(l["metadata"]["correlation_uid"], trace.as_str());
        assert!(l["actor"]["process"].is_object(), "{l}");
    }
    let class = |c: u64| lines.iter().filter(move |l| l["class_uid"] == c);
    assert!(class(1007).any(
        |l| l["activity_id"] == 1 && l["process"]["file"]["path"] == tool.display().to_string()
    ));
    assert!(class(1001).any(|l| l["file"]["path"]
        .as_str()
        .is_some_and(|p| p.ends_with("/etc/hostname"))));
    assert!(class(4001).any(|l| l["dst_endpoint"]["port"] == port));
    assert!(class(2004).any(|l| l["finding_info"]["uid"] == id.as_str()
        && l["finding_info"]["title"] == "test-hold-exec"));
    assert!(class(2004).any(|l| l["status"] == "approved" && l["action_id"] == 1));
    // The continuous export (`[audit] export`) has the same session, position saved.
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let exported = loop {
        let text = std::fs::read_to_string(work.0.join("ocsf.jsonl")).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|l: &Value| l["metadata"]["correlation_uid"] == trace.as_str())
            .collect();
        if lines.iter().any(|l| l["status"] == "approved") {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the export has no approval"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for l in &exported {
        assert!(validator.is_valid(l), "{l}");
    }
    assert!(std::fs::read_to_string(work.0.join("ocsf.jsonl.pos"))
        .unwrap()
        .trim()
        .parse::<u64>()
        .is_ok_and(|p| p > 0));
    // The schema is no rubber stamp: a process event without its process fails it.
    let mut bad = class(1007).next().unwrap().clone();
    bad.as_object_mut().unwrap().remove("process");
    assert!(!validator.is_valid(&bad));

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

#[test]
fn retention_prunes_whole_checkpoint_ranges_and_the_log_still_verifies() {
    let mut d = Daemon::start_with("[audit]\nmax_bytes = 262144\ncheckpoint_interval = \"20ms\"\n");
    // About 3 MB of records, over several checkpoints.
    let (_, code) = d.launch(&format!(
        "{} -c \"import os, time\nfor i in range(5000):\n    os.close(os.open('/etc/hostname', os.O_RDONLY))\n    i % 500 or time.sleep(0.03)\"",
        common::python()
    ));
    assert_eq!(code, 0);
    let dir = d.dir.0.clone();
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while d.status()["audit"]["records"].as_u64().unwrap() < 5000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the events never reached the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill();
    let (ok, out) = verify(&dir, &[]);
    assert!(ok && !out.contains("pruned"), "{out}");
    // The same store, its oldest range removed by hand: no retention record says so.
    let anchor: i64 = rusqlite::Connection::open(dir.join("audit.db"))
        .unwrap()
        .query_row(
            "SELECT min(seq) FROM audit WHERE kind = 'checkpoint' AND seq > 100",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let t = tampered(&dir, &format!("DELETE FROM audit WHERE seq < {anchor}"));
    let (ok, out) = verify(&t.0, &[]);
    assert!(
        !ok && out.contains("removed without a sealed retention record"),
        "{out}"
    );

    // A start prunes what max_bytes no longer keeps (on the writer's thread, after the daemon
    // is up), and records it.
    d.restart();
    let st = d.status();
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let pruned = || {
        rusqlite::Connection::open(dir.join("audit.db"))
            .and_then(|db| {
                db.query_row(
                    "SELECT count(*) FROM audit WHERE kind = 'retention'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap_or(0)
            > 0
    };
    while !pruned() {
        assert!(
            std::time::Instant::now() < deadline,
            "no retention after the start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill();
    let db = rusqlite::Connection::open(dir.join("audit.db")).unwrap();
    let first: i64 = db
        .query_row("SELECT min(seq) FROM audit", [], |r| r.get(0))
        .unwrap();
    let kind: String = db
        .query_row("SELECT kind FROM audit WHERE seq = ?1", [first], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        first > 1 && kind == "checkpoint",
        "first kept {first} {kind}"
    );
    let retention: String = db
        .query_row(
            "SELECT record FROM audit WHERE kind = 'retention' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let retention: Value = serde_json::from_str(&retention).unwrap();
    assert_eq!(retention["body"]["reason"], "size");
    assert_eq!(retention["body"]["pruned_through"], first - 1);
    let (ok, out) = verify(&dir, &[]);
    assert!(
        ok && out.contains(&format!(
            "records 1..{} were pruned by retention",
            first - 1
        )),
        "{out} (status {st})"
    );
    let last: i64 = db
        .query_row(
            "SELECT max(seq) FROM audit WHERE kind <> 'checkpoint'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (ok, out) = verify(&dir, &["inclusion", &last.to_string()]);
    assert!(ok, "{out}");
    let (ok, out) = verify(&dir, &["inclusion", "1"]);
    assert!(!ok && out.contains("pruned"), "{out}");
}

/// The audit store refuses writes (another writer holds its lock) while a session is held, so
/// the finding's records wait; then the daemon is killed. Kept only in memory they were lost
/// with it; they wait on disk beside the store (`audit.db-unwritten`, root's only), and the
/// restarted daemon writes them first.
#[test]
fn records_the_store_refused_outlive_a_killed_daemon() {
    let work = TempDir::new("audit-refused");
    let (tool, rules) = held_tool(&work.0);
    let mut d = Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()));
    let lock = rusqlite::Connection::open(d.dir.0.join("audit.db")).unwrap();
    lock.busy_timeout(Duration::from_secs(10)).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (mut child, trace) = launch_bg(&d, &tool.display().to_string());
    let hold = await_hold(&d, &trace);
    // The finding's record waits, in memory and on disk.
    let kept = d.dir.0.join("audit.db-unwritten");
    let until = std::time::Instant::now() + common::DEADLINE;
    while !std::fs::read_to_string(&kept).is_ok_and(|t| t.contains("\"kind\":\"finding\"")) {
        assert!(
            std::time::Instant::now() < until,
            "the finding's record did not wait for the locked store ({}: {})",
            kept.display(),
            d.status()["audit"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.status()["audit"]["pending"].as_u64().unwrap_or(0) > 0);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "{} is {mode:o}", kept.display());
    d.kill();
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    d.restart();
    let findings = |d: &Daemon| {
        audit_json(
            d,
            &["query", "--json", "--kind", "finding", "--trace", &trace],
        )
    };
    let until = std::time::Instant::now() + common::DEADLINE;
    while findings(&d).is_empty() || kept.exists() {
        assert!(
            std::time::Instant::now() < until,
            "the finding refused by the locked store was lost with the daemon (kept: {}): {:?}",
            kept.exists(),
            audit_json(&d, &["query", "--json", "--trace", &trace])
                .iter()
                .map(|r| r["kind"].as_str().unwrap_or("?").to_string())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out) = verify(&d.dir.0, &[]);
    assert!(ok, "{out}");
    common::holds::verdict(&d, "deny", &hold);
    wait_exit(&mut child);
    assert!(!work.0.join("marker").exists(), "the held tool ran");
}
