//! `watcher rules test`: every rule's `examples` run through the compiled policy. An example
//! is one event as `watcher events --json` prints it (most fields may be left out), or a list
//! of events for sequences. Two extra keys describe the process: `exe`/`argv` (the process's
//! executable and command line, on events other than exec) and `ancestors` (parent first).
//! Two more describe the stream: `workdir` (the session's work directory) and `repeat` (the
//! event happens that many times, for `count:` rules).
use std::{collections::HashMap, sync::Arc};

use serde_json::{json, Map, Value};

use super::{
    eval::{SeqState, SessionView},
    Lineage, Policy, ProcView,
};

/// The ids a `setid` example's process has after the call unless it says otherwise.
fn ids() -> Value {
    json!({"uid": 1000, "euid": 1000, "suid": 1000, "gid": 1000, "egid": 1000, "sgid": 1000, "caps": 0})
}
use crate::model::event::Event;

#[derive(Debug, Default)]
struct OwnedProc {
    ppid: u32,
    exe: String,
    comm: String,
    argv: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ExampleLineage {
    procs: HashMap<u32, OwnedProc>,
}

impl Lineage for ExampleLineage {
    fn get(&self, pid: u32) -> Option<ProcView<'_>> {
        self.procs.get(&pid).map(|p| ProcView {
            ppid: p.ppid,
            exe: &p.exe,
            comm: &p.comm,
            argv: &p.argv,
        })
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// One example event, with the defaults filled in, and what it says about its process tree.
pub fn example_event(
    v: &Value,
    seq: u64,
    lineage: &mut ExampleLineage,
) -> Result<(Event, u64), String> {
    let Value::Object(obj) = v else {
        return Err(format!("expected an event object, found {v}"));
    };
    let mut o: Map<String, Value> = obj.clone();
    let exe = o.remove("exe").and_then(|v| v.as_str().map(String::from));
    let ancestors = o.remove("ancestors");
    o.remove("workdir");
    o.remove("repeat");
    let kind = o
        .get("type")
        .and_then(Value::as_str)
        .ok_or("missing \"type\"")?
        .to_string();
    // On an exec `argv` is the event's own; on other events it describes the process.
    let argv = if kind == "exec" {
        None
    } else {
        o.remove("argv")
    };
    let pid = o.get("pid").and_then(Value::as_u64).unwrap_or(1000) as u32;
    let ppid = o.get("ppid").and_then(Value::as_u64).unwrap_or(999) as u32;
    let path = o.get("path").and_then(Value::as_str).map(String::from);
    let name = match (&kind[..], &path, &exe) {
        ("exec", Some(p), _) => basename(p).to_string(),
        (_, _, Some(e)) => basename(e).to_string(),
        _ => "example".into(),
    };
    let defaults = json!({
        "seq": seq, "ts": "2026-01-01T00:00:00Z", "pid": pid, "tid": pid, "ppid": ppid, "uid": 1000,
        "trace_id": "example", "comm": name.chars().take(15).collect::<String>(), "cgroup_id": 0,
    });
    for (k, d) in defaults.as_object().expect("object") {
        o.entry(k.clone()).or_insert_with(|| d.clone());
    }
    match &kind[..] {
        "exec" => {
            o.entry("argv").or_insert_with(|| json!([name]));
        }
        "open" => {
            o.entry("flags").or_insert_with(|| json!(["O_RDONLY"]));
            o.entry("mode").or_insert(json!(0));
            o.entry("result").or_insert(json!(3));
        }
        "connect" => {
            let fam = if o.contains_key("path") {
                "unix"
            } else if o
                .get("addr")
                .and_then(Value::as_str)
                .is_some_and(|a| a.contains(':'))
            {
                "inet6"
            } else {
                "inet"
            };
            o.entry("family").or_insert(json!(fam));
            o.entry("result").or_insert(json!(0));
        }
        "fork" => {
            o.entry("child_pid").or_insert(json!(pid + 1));
            o.entry("thread").or_insert(json!(false));
        }
        "exit" => {
            o.entry("exit_code").or_insert(json!(0));
        }
        "ptrace" => {
            o.entry("target_pid").or_insert(json!(1));
            o.entry("request").or_insert(json!(16));
        }
        "signal" => {
            o.entry("target_pid").or_insert(json!(1));
            o.entry("signal").or_insert(json!(15));
            o.entry("result").or_insert(json!(0));
        }
        "unlink" | "rename" | "chmod" | "chown" | "link" | "truncate" | "setid" | "mount"
        | "module" => {
            let (syscall, more) = match &kind[..] {
                "unlink" => ("unlinkat", json!({"dir": false})),
                "rename" => ("renameat2", json!({})),
                "chmod" => ("fchmodat", json!({})),
                "chown" => ("fchownat", json!({})),
                "link" => ("symlinkat", json!({"symbolic": true})),
                "truncate" => ("truncate", json!({"length": 0})),
                "setid" => ("setuid", json!({"asked": [], "new": ids()})),
                "mount" => ("mount", json!({"flags": 0})),
                _ => ("finit_module", json!({"params": ""})),
            };
            o.entry("syscall").or_insert(json!(syscall));
            for (k, v) in more.as_object().expect("object") {
                o.entry(k.clone()).or_insert_with(|| v.clone());
            }
            if let Some(Value::Object(new)) = o.get_mut("new") {
                for (k, v) in ids().as_object().expect("object") {
                    new.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            o.entry("result").or_insert(json!(0));
        }
        "bpf" => {
            o.entry("prog_type").or_insert(json!(1));
            o.entry("instructions").or_insert(json!(2));
            o.entry("result").or_insert(json!(3));
        }
        "dns" => {
            o.entry("qtype").or_insert(json!("A"));
            o.entry("rcode").or_insert(json!("NOERROR"));
            o.entry("answers").or_insert(json!([]));
        }
        "io_uring" => {
            o.entry("entries").or_insert(json!(8));
            o.entry("setup_flags").or_insert(json!(0));
            o.entry("result").or_insert(json!(3));
        }
        "io_uring_op" => {
            let op = o.entry("op").or_insert(json!("nop")).clone();
            let code = crate::model::event::URING_OPS
                .iter()
                .position(|n| op == json!(n))
                .ok_or_else(|| format!("unknown io_uring operation {op}"))?;
            o.entry("opcode").or_insert(json!(code));
        }
        "name_to_handle" => {
            o.entry("result").or_insert(json!(0));
        }
        "memfd" => {
            o.entry("name").or_insert(json!("x"));
            o.entry("flags").or_insert(json!([]));
            o.entry("result").or_insert(json!(3));
        }
        _ => {}
    }
    let ev: Event =
        serde_json::from_value(Value::Object(o)).map_err(|e| format!("not an event: {e}"))?;
    let ts_ns = ev.ts.unix_ns();
    // The process itself, then its ancestors with made-up pids above it.
    let own_argv: Vec<String> = match (&ev.detail, argv) {
        (crate::model::event::Detail::Exec { argv, .. }, _) => argv.clone(),
        (_, Some(a)) => serde_json::from_value(a).map_err(|e| format!("argv: {e}"))?,
        (_, None) => vec![name.clone()],
    };
    let own_exe = match &ev.detail {
        crate::model::event::Detail::Exec { path, .. } => path.clone(),
        _ => exe.unwrap_or_default(),
    };
    lineage.procs.insert(
        ev.pid,
        OwnedProc {
            ppid: ev.ppid,
            comm: basename(&own_exe).to_string(),
            exe: own_exe,
            argv: own_argv,
        },
    );
    if let Some(Value::Array(list)) = ancestors {
        let mut pid = ev.ppid;
        for (i, a) in list.iter().enumerate() {
            let exe = a
                .get("exe")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let argv: Vec<String> = a
                .get("argv")
                .map(|v| serde_json::from_value(v.clone()))
                .transpose()
                .map_err(|e| format!("ancestors[{i}].argv: {e}"))?
                .unwrap_or_else(|| vec![basename(&exe).to_string()]);
            let parent = 500_000 + pid + i as u32;
            lineage.procs.insert(
                pid,
                OwnedProc {
                    ppid: parent,
                    comm: basename(&exe).to_string(),
                    exe,
                    argv,
                },
            );
            pid = parent;
        }
    }
    Ok((ev, ts_ns))
}

/// Rule ids that the stream (one event or a list) makes fire.
pub fn fired(policy: &Policy, example: &Value) -> Result<Vec<String>, String> {
    let items: Vec<&Value> = match example {
        Value::Array(v) => v.iter().collect(),
        v => vec![v],
    };
    let mut lineage = ExampleLineage::default();
    let mut state = SeqState::default();
    let mut out = Vec::new();
    for (i, v) in items.iter().enumerate() {
        let (ev, ts) = example_event(v, i as u64 + 1, &mut lineage)
            .map_err(|e| format!("event {}: {e}", i + 1))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        let (profile, workdir) = (text("profile"), text("workdir"));
        let session = SessionView {
            profile: profile.as_deref(),
            workdir: workdir.as_deref(),
        };
        let repeat = v.get("repeat").and_then(Value::as_u64).unwrap_or(1);
        if !(1..=100_000).contains(&repeat) {
            return Err(format!("event {}: repeat must be 1..=100000", i + 1));
        }
        let ev = Arc::new(ev);
        for _ in 0..repeat {
            policy.evaluate(&ev, ts, session, &lineage, &mut state, &mut out);
        }
    }
    let mut ids: Vec<String> = out
        .into_iter()
        .map(|m| policy.rules[m.rule].id.clone())
        .collect();
    ids.dedup();
    Ok(ids)
}

/// One failed example.
#[derive(Debug)]
pub struct Failure {
    pub rule: String,
    pub file: String,
    pub message: String,
}

/// Runs every rule's examples; returns (examples run, failures).
pub fn run(
    policy: &Policy,
    sources: &[super::Source],
) -> Result<(usize, Vec<Failure>), super::RuleError> {
    let mut n = 0;
    let mut failures = Vec::new();
    for src in sources {
        let file: super::syntax::RuleFile =
            serde_yaml_ng::from_str(&src.text).map_err(|e| super::RuleError {
                file: src.name.clone(),
                line: e.location().map(|l| l.line()).unwrap_or(0),
                column: e.location().map(|l| l.column()).unwrap_or(0),
                message: super::compile::strip_location(&e.to_string()),
            })?;
        for def in &file.rules {
            let fail = |message: String| Failure {
                rule: def.id.clone(),
                file: src.name.clone(),
                message,
            };
            if def.examples.matches.is_empty() {
                failures.push(fail(
                    "no `examples.match`: every rule needs at least one".into(),
                ));
            }
            for (want, list) in [
                (true, &def.examples.matches),
                (false, &def.examples.no_match),
            ] {
                for (i, ex) in list.iter().enumerate() {
                    n += 1;
                    let which = if want { "match" } else { "no_match" };
                    match fired(policy, ex) {
                        Err(e) => failures.push(fail(format!("examples.{which}[{i}]: {e}"))),
                        Ok(ids) if ids.contains(&def.id) != want => failures.push(fail(format!(
                            "examples.{which}[{i}]: {} (rules that fired: {ids:?})",
                            if want { "did not match" } else { "matched" }
                        ))),
                        Ok(_) => {}
                    }
                }
            }
        }
    }
    Ok((n, failures))
}
