//! An approval releases what it showed, nothing more (issue 31, item 4): a gated action of a
//! session that already waits on a hold waits with it and is in its evidence; approving never
//! lifts a kill-switch; and the kill-switch adds up its engagements instead of keeping only the
//! last. Root, the real kernel and the shipped pack.
mod common;
use std::time::{Duration, Instant};

use common::{
    absent,
    holds::{await_hold, launch_bg, next_hold, show_hold, verdict, wait_exit},
    pack_dir, Daemon, FakeHome, TempDir, DEADLINE,
};

/// `watcher ARGS`, which must succeed.
fn cli_ok(d: &Daemon, args: &[&str]) {
    let out = d.cli().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rules_config(w: &std::path::Path, extra: &str) -> String {
    format!(
        "[rules]\npath = \"{}\"\n[holds]\ntimeout = \"60s\"\n{extra}",
        pack_dir(w).display()
    )
}

/// A session of two processes that each copy `h`'s token file into `w` (`first`, then,
/// half a second later, `second`).
fn two_reads(h: &std::path::Path, w: &std::path::Path) -> String {
    let copy = |to: &str| {
        format!(
            "fd = os.open('{}/.npmrc', os.O_RDONLY); open('{}/{to}', 'wb').write(os.read(fd, 4096))",
            h.display(),
            w.display()
        )
    };
    format!(
        "/usr/bin/python3 -c \"import os, time\nif os.fork() == 0:\n    time.sleep(0.5)\n    {}\n    os._exit(0)\n{}\nos.wait()\"",
        copy("second"),
        copy("first")
    )
}

/// Two processes of one session read a token file at about the same time; the daemon answers
/// two seconds late, so the second read is stopped by the gate while the first one's hold is
/// pending. The second joins that hold (it is in `waiting`), and deny with `deny = "process"`
/// stops both: neither copy is made. (Before, the second was let go with SIGCONT, ran on once
/// the session thawed, and no approver had seen it.)
#[test]
fn a_gated_action_of_a_held_session_waits_with_the_hold() {
    common::require_root();
    let home = FakeHome::new();
    let h = home.0.clone();
    let work = TempDir::new("decisions-join");
    let w = work.0.clone();
    let config = rules_config(&w, "").replace("[holds]\n", "[holds]\ndeny = \"process\"\n");
    let d = Daemon::start_with_env(&config, &[("WATCHER_FAULT", "slow-gate-answer")]);
    let script = two_reads(&h, &w);
    let (mut child, trace) = launch_bg(&d, &script);
    let hold = await_hold(&d, &trace);
    assert_eq!(hold["rule"], "token-file-read", "{hold}");
    let id = hold["id"].as_str().unwrap().to_string();
    // The second read joins the pending hold once the daemon reaches it.
    let start = Instant::now();
    let joined = loop {
        let h = show_hold(&d, &id);
        if let Some(w) = h["waiting"].as_array().filter(|w| !w.is_empty()) {
            break w.clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the second read never joined: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        joined
            .iter()
            .any(|e| e["type"] == "open" && e["path"].as_str().unwrap_or("").ends_with("/.npmrc")),
        "{joined:?}"
    );
    verdict(&d, "deny", &hold);
    wait_exit(&mut child);
    absent(&w.join("first")).unwrap();
    absent(&w.join("second")).unwrap();
}

/// As above, but the hold store refuses the second read's join. The second process stays
/// stopped when the hold is approved (the approver did not see it), and it is not left stopped
/// with nothing to decide: the gate sweeper asks about it in a hold of its own, and approving
/// that one lets it make its copy. (Before, its gate entry went when it joined, so a refused
/// join, or a daemon that died before storing it, left the process stopped for good.)
#[test]
fn a_gated_action_whose_join_is_not_stored_is_asked_about_again() {
    common::require_root();
    let home = FakeHome::new();
    let h = home.0.clone();
    let work = TempDir::new("decisions-join-refused");
    let w = work.0.clone();
    let d = Daemon::start_with_env(
        &rules_config(&w, ""),
        &[("WATCHER_FAULT", "slow-gate-answer,join-refused")],
    );
    let script = two_reads(&h, &w);
    let (mut child, trace) = launch_bg(&d, &script);
    let first = await_hold(&d, &trace);
    assert_eq!(first["rule"], "token-file-read", "{first}");
    // The second read reaches the daemon (two seconds after the first) while the first
    // hold is pending; its finding names that hold, and its join (refused) follows within
    // the same step of the intake, well before an approval from the command line arrives.
    let pid = first["trigger"]["pid"].clone();
    common::holds::first_finding(&d, &trace, |v| v["hold"] == first["id"] && v["pid"] != pid)
        .expect("the second read never reached the daemon");
    verdict(&d, "approve", &first);
    let second = next_hold(&d, &trace, &first);
    assert_eq!(second["rule"], "watcher-unanswered-gate", "{second}");
    assert!(w.join("first").exists(), "the approved read did not go on");
    absent(&w.join("second")).unwrap();
    verdict(&d, "approve", &second);
    assert!(wait_exit(&mut child).success());
    assert!(
        w.join("second").exists(),
        "the second read was never let go"
    );
}

/// A session the kill-switch froze stays frozen when one of its holds is approved: only
/// `kill-switch release` lets it go.
#[test]
fn approving_a_hold_never_lifts_the_kill_switch() {
    common::require_root();
    let home = FakeHome::new();
    let work = TempDir::new("decisions-switch");
    let w = work.0.clone();
    let d = Daemon::start_with(&rules_config(&w, ""));
    let marker = w.join("after-approve");
    let (mut child, trace) = launch_bg(
        &d,
        &format!(
            "cat {}/.npmrc > /dev/null; touch {}",
            home.0.display(),
            marker.display()
        ),
    );
    let hold = await_hold(&d, &trace);
    cli_ok(
        &d,
        &["kill-switch", "engage", "--trace", &trace, "--freeze"],
    );
    verdict(&d, "approve", &hold);
    // The approval returned: had it thawed the session, `cgroup.freeze` would read 0 now.
    let freeze = std::fs::read_to_string(d.cgroup.join(&trace).join("cgroup.freeze")).unwrap();
    assert_eq!(
        freeze.trim(),
        "1",
        "the approval thawed a session the kill-switch froze"
    );
    absent(&marker).unwrap();
    cli_ok(&d, &["kill-switch", "release"]);
    assert!(wait_exit(&mut child).success());
    assert!(marker.exists(), "the released session did not go on");
}

/// Two engagements for two sessions: both are kept (the second does not replace the first),
/// each with who and when, and a restarted daemon applies both.
#[test]
fn the_kill_switch_keeps_every_engagement() {
    common::require_root();
    let mut d = Daemon::start();
    let (mut a, ta) = launch_bg(&d, "sleep 300");
    let (mut b, tb) = launch_bg(&d, "sleep 300");
    for t in [&ta, &tb] {
        cli_ok(&d, &["kill-switch", "engage", "--trace", t, "--freeze"]);
    }
    let check = |d: &Daemon| {
        let k = &d.status()["holds"]["kill_switch"];
        assert_eq!(k["engaged"], true, "{k}");
        let traces: Vec<&str> = k["traces"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        assert!(
            traces.contains(&ta.as_str()) && traces.contains(&tb.as_str()),
            "{k}"
        );
        assert_eq!(k["entries"].as_array().map(Vec::len), Some(2), "{k}");
        for t in [&ta, &tb] {
            let f = std::fs::read_to_string(d.cgroup.join(t).join("cgroup.freeze")).unwrap();
            assert_eq!(f.trim(), "1", "session {t} is not frozen");
        }
    };
    check(&d);
    d.crash_and_restart();
    check(&d);
    cli_ok(&d, &["kill-switch", "release"]);
    for (c, t) in [(&mut a, &ta), (&mut b, &tb)] {
        std::fs::write(d.cgroup.join(t).join("cgroup.kill"), "1").unwrap();
        wait_exit(c);
    }
}

/// The kill-switch is stored before its audit record is sealed: a daemon killed between the
/// two left an engaged kill-switch the log never heard of. The next daemon writes it at start
/// (from the stored engagement: who and when) and applies it.
#[test]
fn a_kill_switch_engaged_as_the_daemon_dies_is_in_the_audit_log() {
    common::require_root();
    let mut d = Daemon::start_with_env("", &[("WATCHER_FAULT", "before-kill-switch-seal")]);
    let (mut child, trace) = launch_bg(&d, "sleep 300");
    // The daemon dies answering it: the command fails, the engagement is stored.
    let _ = d
        .cli()
        .args(["kill-switch", "engage", "--trace", &trace, "--freeze"])
        .output()
        .unwrap();
    let st = d.await_death();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "the daemon did not stop at its fault-injection point ({st:?})"
    );
    let logged = |d: &Daemon| {
        common::audit::audit_json(d, &["query", "--json", "--kind", "kill_switch"])
            .into_iter()
            .filter(|r| {
                r["body"]["traces"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == trace.as_str()))
            })
            .count()
    };
    assert_eq!(
        logged(&d),
        0,
        "the engagement was sealed before the fault point"
    );
    d.restart();
    let k = &d.status()["holds"]["kill_switch"];
    assert_eq!(k["engaged"], true, "{k}");
    assert_eq!(
        logged(&d),
        1,
        "the restarted daemon did not write the engagement"
    );
    cli_ok(&d, &["kill-switch", "release"]);
    std::fs::write(d.cgroup.join(&trace).join("cgroup.kill"), "1").unwrap();
    wait_exit(&mut child);
}
