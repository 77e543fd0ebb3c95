//! Audit records as OCSF 1.3.0 events, one JSON object per record, for SIEM pipelines
//! (`watcher audit export --format ocsf`, `[audit] export`).
//!
//! | record | OCSF class | activity |
//! | --- | --- | --- |
//! | exec, fork, exit, ptrace, setid events | Process Activity (1007) | Launch, Launch, Terminate, Inject, Set User ID |
//! | open, unlink, rename, chmod, chown, link, truncate, mount, memfd, name_to_handle events | File System Activity (1001) | Open, Delete, Rename, Set Security, Set Security, Create, Update, Mount, Create, Get Attributes |
//! | connect events | Network Activity (4001) | Open |
//! | dns events | DNS Activity (4003) | Response |
//! | finding, decision, hold, approval, denial | Detection Finding (2004) | Create, then Update |
//! | everything else (session start and end, checkpoints, kill-switch, reloads, other events) | Base Event (0) | Other |
//!
//! Every line has `class_uid`, `category_uid`, `activity_id`, `type_uid` (class * 100 +
//! activity), `severity_id`, `time` (ms), `metadata` (`version` 1.3.0, the product,
//! `uid` = the audit seq, `correlation_uid` = the trace id), `device`, `actor.process`, and
//! the whole audit record under `unmapped.watcher` so nothing is lost in the mapping.
use serde_json::{json, Value};

pub const OCSF_VERSION: &str = "1.3.0";

/// One audit record (as stored) as an OCSF event.
pub fn map(record: &Value, host: &str) -> Value {
    let kind = record["kind"].as_str().unwrap_or("");
    let b = &record["body"];
    let (class, activity, mut out) = match kind {
        "event" => event(b),
        "finding" | "decision" | "hold" | "approval" | "denial" => finding(kind, b),
        _ => (0, 99, json!({})),
    };
    let time = time_ms(if kind == "event" || kind == "finding" {
        &b["ts"]
    } else {
        &record["ts"]
    })
    .or_else(|| time_ms(&record["ts"]))
    .unwrap_or(0);
    let trace = record["trace_id"].as_str();
    let o = out.as_object_mut().expect("an object");
    o.insert("class_uid".into(), json!(class));
    o.insert("category_uid".into(), json!(class / 1000));
    o.insert("activity_id".into(), json!(activity));
    o.insert("type_uid".into(), json!(class * 100 + activity));
    o.entry("severity_id").or_insert(json!(1));
    o.insert("time".into(), json!(time));
    o.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "product": {
                "name": "watcher",
                "vendor_name": "watcher",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "uid": record["seq"].to_string(),
            "correlation_uid": trace,
            "log_name": "audit",
            "sequence": record["seq"],
        }),
    );
    o.insert(
        "device".into(),
        json!({"hostname": host, "type_id": 1, "os": {"name": "Linux", "type_id": 200}}),
    );
    o.entry("actor").or_insert_with(|| actor_of(kind, b));
    o.insert("message".into(), json!(kind));
    o.insert("unmapped".into(), json!({ "watcher": record }));
    out
}

fn time_ms(ts: &Value) -> Option<i64> {
    let t = humantime::parse_rfc3339(ts.as_str()?).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// The process that made a kernel event.
fn process_of(b: &Value) -> Value {
    json!({
        "pid": b["pid"],
        "tid": b["tid"],
        "name": b["comm"],
        "user": {"uid": b["uid"].to_string()},
        "parent_process": {"pid": b["ppid"]},
    })
}

/// Who acted when no kernel event says: the session's root, or the watcher itself.
fn actor_of(kind: &str, b: &Value) -> Value {
    match kind {
        "session_start" => json!({"process": {
            "pid": b["root_pid"],
            "cmd_line": cmd_line(&b["command"]),
            "file": {"path": b["exe"], "name": file_name(&b["exe"]), "type_id": 1},
            "user": {"uid": b["uid"].to_string()},
        }}),
        "approval" | "denial" => json!({
            "process": {"name": "watcher"},
            "user": {"name": b["by"]},
        }),
        _ => json!({"process": {"name": "watcher", "pid": std::process::id()}}),
    }
}

/// argv as one line (OCSF's `cmd_line` is a string).
fn cmd_line(argv: &Value) -> Value {
    match argv.as_array() {
        Some(a) => json!(a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ")),
        None => Value::Null,
    }
}

fn file_name(path: &Value) -> Value {
    match path.as_str() {
        Some(p) => json!(p.rsplit('/').next().unwrap_or(p)),
        None => Value::Null,
    }
}

fn file(path: &Value) -> Value {
    json!({"path": path, "name": file_name(path), "type_id": 0})
}

fn status(b: &Value) -> Value {
    match b["result"].as_i64() {
        Some(r) if r < 0 => {
            json!({"status_id": 2, "status": "Failure", "status_detail": b["error"]})
        }
        _ => json!({"status_id": 1, "status": "Success"}),
    }
}

fn event(b: &Value) -> (u32, u32, Value) {
    let actor = json!({ "process": process_of(b) });
    let mut out = json!({ "actor": actor });
    let t = b["type"].as_str().unwrap_or("");
    let (class, activity) = match t {
        "exec" => {
            out["process"] = json!({
                "pid": b["pid"],
                "name": file_name(&b["path"]),
                "cmd_line": cmd_line(&b["argv"]),
                "file": file(&b["path"]),
                "user": {"uid": b["uid"].to_string()},
                "parent_process": {"pid": b["ppid"]},
            });
            (1007, 1)
        }
        "fork" => {
            out["process"] = json!({"pid": b["child_pid"], "parent_process": {"pid": b["pid"]}});
            (1007, 1)
        }
        "exit" => {
            out["process"] = process_of(b);
            out["exit_code"] = b["exit_code"].clone();
            (1007, 2)
        }
        "ptrace" => {
            out["process"] = json!({"pid": b["target_pid"]});
            (1007, 4)
        }
        "setid" => {
            out["process"] = process_of(b);
            (1007, 5)
        }
        // A ring made: Other process activity (what it submits is not seen).
        "io_uring" => {
            out["process"] = process_of(b);
            (1007, 99)
        }
        "open" | "unlink" | "rename" | "chmod" | "chown" | "link" | "truncate" | "mount"
        | "memfd" | "name_to_handle" => {
            let path = match t {
                "memfd" => json!(format!("memfd:{}", b["name"].as_str().unwrap_or(""))),
                _ => b["path"].clone(),
            };
            out["file"] = file(&path);
            match t {
                "rename" => out["file_result"] = file(&b["new_path"]),
                "link" => out["file_result"] = file(&b["target"]),
                _ => {}
            }
            let activity = match t {
                "open" => 14,
                "unlink" => 4,
                "rename" => 5,
                "chmod" | "chown" => 7,
                "link" | "memfd" => 1,
                "truncate" => 3,
                // A handle made for the file: Get Attributes (nothing is opened yet).
                "name_to_handle" => 8,
                _ => 12,
            };
            (1001, activity)
        }
        "connect" => {
            out["dst_endpoint"] = json!({
                "ip": b["addr"],
                "port": b["port"],
                "hostname": b["host"],
                "path": b["path"],
            });
            out["connection_info"] = json!({"direction_id": 2, "protocol_name": b["family"]});
            (4001, 1)
        }
        "dns" => {
            out["query"] = json!({"hostname": b["query"], "type": b["qtype"]});
            out["rcode"] = b["rcode"].clone();
            out["answers"] = json!(b["answers"]
                .as_array()
                .map(|a| a.iter().map(|x| json!({"rdata": x})).collect::<Vec<_>>())
                .unwrap_or_default());
            (4003, 2)
        }
        _ => (0, 99),
    };
    if class != 0 {
        let s = status(b);
        for (k, v) in s.as_object().into_iter().flatten() {
            out[k] = v.clone();
        }
    }
    (class, activity, out)
}

fn severity_id(s: &Value) -> u32 {
    match s.as_str() {
        Some("low") => 2,
        Some("medium") => 3,
        Some("high") => 4,
        Some("critical") => 5,
        _ => 1,
    }
}

/// A finding is created; its decision, its hold and the human's verdict update it (one
/// `finding_info.uid`: the hold's id when there is a hold, else the finding's audit seq).
fn finding(kind: &str, b: &Value) -> (u32, u32, Value) {
    let rule = b["rule"].as_str().unwrap_or("");
    let hold = match kind {
        "hold" => b["id"].as_str(),
        _ => b["hold"].as_str(),
    };
    let uid = match (hold, kind) {
        (Some(h), _) => h.to_string(),
        (None, "decision") => format!("finding-{}", b["event"]),
        (None, _) => format!("finding-{}", b["seq"]),
    };
    let mut out = json!({
        "finding_info": {
            "uid": uid,
            "title": if rule.is_empty() { kind } else { rule },
            "types": [b["detector"]],
            "analytic": {"name": rule, "uid": rule, "type_id": 1, "type": "Rule"},
        },
        "severity_id": severity_id(&b["severity"]),
    });
    if kind == "finding" {
        out["actor"] = json!({ "process": process_of(b) });
        out["finding_info"]["desc"] = b["description"].clone();
        out["evidences"] = json!([{"process": process_of(b)}]);
    }
    let (action_id, action) = match kind {
        "approval" => (1, "Allowed"),
        "denial" => (2, "Denied"),
        _ => match b["outcome"].as_str() {
            Some(
                "monitored" | "alerted" | "not_enforced" | "excepted" | "approved" | "would_hold",
            ) => (1, "Allowed"),
            Some("killed" | "killed_in_kernel" | "refused_in_kernel" | "refused") => (2, "Denied"),
            Some(o) => (99, o),
            None => (0, "Unknown"),
        },
    };
    out["action_id"] = json!(action_id);
    out["action"] = json!(action);
    out["status"] = json!(match kind {
        "approval" => "approved",
        "denial" => "denied",
        "hold" => "held",
        _ => b["outcome"].as_str().unwrap_or("new"),
    });
    (2004, if kind == "finding" { 1 } else { 2 }, out)
}
