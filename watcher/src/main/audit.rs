//! `watcher audit`: the audit log, read from its SQLite file (no daemon needed; the file is
//! root's, so root or whoever it was given to can read it).
use std::path::Path;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Print the verifier key of the checkpoints (for `watcher-verify --pubkey`).
    Pubkey,
    /// A session's timeline from its trace id: start, process tree, execs, opens, connects,
    /// findings, decisions, holds with the evidence shown, approvals, denials, end.
    Show {
        #[arg(long)]
        trace: watcher::model::ids::TraceId,
        /// One record per line, as stored (each has its `kind`).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: AuditCmd, cfg: &watcher::config::Audit) -> anyhow::Result<std::process::ExitCode> {
    match cmd {
        AuditCmd::Pubkey => {
            let k = watcher::pipeline::audit::read_vkey(&cfg.key).with_context(|| {
                format!(
                    "reading {} (the daemon writes it at its first start)",
                    watcher::pipeline::audit::vkey_path(&cfg.key).display()
                )
            })?;
            println!("{k}");
        }
        AuditCmd::Show { trace, json } => show(&cfg.store, trace.as_str(), json)?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn show(store: &Path, trace: &str, json: bool) -> anyhow::Result<()> {
    let db =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening the audit store {}", store.display()))?;
    let mut q = db.prepare("SELECT record FROM audit WHERE trace_id = ?1 ORDER BY seq")?;
    let rows = q
        .query_map([trace], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        anyhow::bail!("no audit records of session {trace} in {}", store.display());
    }
    for text in rows {
        if json {
            println!("{text}");
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&text)?;
        println!("{}", line(&v));
    }
    Ok(())
}

/// One timeline line: seq, time, kind and what matters of the body.
fn line(v: &serde_json::Value) -> String {
    let b = &v["body"];
    let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
    let what = match v["kind"].as_str().unwrap_or("") {
        "event" => {
            let mut t = format!("{} pid {} ppid {}", s("type"), b["pid"], b["ppid"]);
            for k in ["filename", "path", "addr", "host", "query"] {
                if let Some(x) = b[k].as_str() {
                    t.push_str(&format!(" {x}"));
                }
            }
            if let Some(a) = b["argv"].as_array() {
                let a: Vec<&str> = a.iter().filter_map(|x| x.as_str()).collect();
                t.push_str(&format!(" [{}]", a.join(" ")));
            }
            t
        }
        "session_start" => format!(
            "by {} uid {} profile {} command {} policy {}",
            s("started_by"),
            b["uid"],
            b["profile"],
            b["command"],
            s("policy_version")
        ),
        "finding" => format!(
            "{} {} ({}) outcome {}",
            b["detector"].as_str().unwrap_or(""),
            b["rule"].as_str().unwrap_or(""),
            b["severity"].as_str().unwrap_or(""),
            b["outcome"].as_str().unwrap_or("")
        ),
        "decision" => format!("{} (policy {})", s("reason"), s("policy_version")),
        "hold" => format!(
            "hold {} rule {} ({} recent events shown)",
            s("id"),
            s("rule"),
            b["recent"].as_array().map_or(0, |r| r.len())
        ),
        "approval" | "denial" => format!("hold {} by {} at {}", s("hold"), s("by"), s("at")),
        _ => b.to_string(),
    };
    format!(
        "{:>8} {} {:<13} {}",
        v["seq"],
        v["ts"].as_str().unwrap_or(""),
        v["kind"].as_str().unwrap_or(""),
        what
    )
}
