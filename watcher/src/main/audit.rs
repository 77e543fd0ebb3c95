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
    /// Records that match every filter given, oldest first.
    Query {
        /// Sessions of this profile.
        #[arg(long)]
        profile: Option<String>,
        /// Findings and decisions of this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Findings and decisions of this detector (rules, scope, baseline, ...).
        #[arg(long)]
        detector: Option<String>,
        /// Decisions with this outcome (held, killed, alerted, ...).
        #[arg(long)]
        decision: Option<String>,
        /// Events and findings of processes with this name (comm).
        #[arg(long)]
        process: Option<String>,
        /// Records whose path contains this text.
        #[arg(long)]
        path: Option<String>,
        /// Records of this kind (event, finding, decision, hold, approval, ...).
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        trace: Option<watcher::model::ids::TraceId>,
        /// From this time: RFC 3339, or a duration ago (`10m`, `2h`).
        #[arg(long)]
        since: Option<String>,
        /// Up to this time: RFC 3339, or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Every record (or one session's, or from a time on) as OCSF JSON lines on stdout.
    Export {
        #[arg(long, value_enum, default_value = "ocsf")]
        format: ExportFormat,
        /// Go on with each record committed after, until interrupted.
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        trace: Option<watcher::model::ids::TraceId>,
        /// From this time: RFC 3339, or a duration ago (`10m`, `2h`).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// OCSF 1.3.0 (Process, File System, Network, DNS Activity, Detection Finding).
    Ocsf,
}

/// A time filter as the store's `ts` text (RFC 3339 UTC, microseconds).
fn time_arg(flag: &str, s: &str) -> anyhow::Result<String> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let d = humantime::parse_duration(s).map_err(|e| {
                anyhow::anyhow!("--{flag} {s:?}: want an RFC 3339 time or a duration ago ({e})")
            })?;
            std::time::SystemTime::now()
                .checked_sub(d)
                .with_context(|| format!("--{flag} {s:?}: before the epoch"))?
        }
    };
    Ok(humantime::format_rfc3339_micros(t).to_string())
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
        AuditCmd::Query {
            profile,
            rule,
            detector,
            decision,
            process,
            path,
            kind,
            trace,
            since,
            until,
            limit,
            json,
        } => {
            let mut conds = Vec::new();
            let mut params: Vec<String> = Vec::new();
            let mut add = |cond: &str, v: Option<String>| {
                if let Some(v) = v {
                    params.push(v);
                    conds.push(cond.replace('?', &format!("?{}", params.len())));
                }
            };
            add(
                "trace_id IN (SELECT trace_id FROM audit WHERE kind = 'session_start' AND json_extract(record, '$.body.profile') = ?)",
                profile,
            );
            add("json_extract(record, '$.body.rule') = ?", rule);
            add("json_extract(record, '$.body.detector') = ?", detector);
            add(
                "kind = 'decision' AND json_extract(record, '$.body.outcome') = ?",
                decision,
            );
            add("json_extract(record, '$.body.comm') = ?", process);
            add(
                "instr(coalesce(json_extract(record, '$.body.path'), ''), ?) > 0",
                path,
            );
            add("kind = ?", kind);
            add("trace_id = ?", trace.map(|t| t.as_str().to_string()));
            add("ts >= ?", since.map(|s| time_arg("since", &s)).transpose()?);
            add("ts <= ?", until.map(|s| time_arg("until", &s)).transpose()?);
            let sql = format!(
                "SELECT record FROM audit {} ORDER BY seq LIMIT {limit}",
                if conds.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", conds.join(" AND "))
                }
            );
            let db = watcher::pipeline::audit::export::open_store(&cfg.store)?;
            let mut q = db.prepare(&sql)?;
            let mut rows = q.query(rusqlite::params_from_iter(params.iter()))?;
            let mut n = 0;
            while let Some(r) = rows.next()? {
                let text: String = r.get(0)?;
                n += 1;
                if json {
                    println!("{text}");
                } else {
                    println!("{}", line(&serde_json::from_str(&text)?));
                }
            }
            if n == 0 {
                eprintln!("no audit records match");
            }
        }
        AuditCmd::Export {
            format: ExportFormat::Ocsf,
            follow,
            trace,
            since,
        } => {
            use watcher::pipeline::audit::export;
            let filter = export::Filter {
                trace: trace.map(|t| t.as_str().to_string()),
                since: since.map(|s| time_arg("since", &s)).transpose()?,
            };
            let db = export::open_store(&cfg.store)?;
            let host = export::host_name();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut after = 0;
            // What is there now (a busy log would otherwise never let a snapshot end); a bar on
            // stderr (on a terminal only) while the snapshot is written.
            let upto = export::last_seq(&db)?;
            let bar = indicatif::ProgressBar::new(upto).with_style(
                indicatif::ProgressStyle::with_template(
                    "exporting {bar:40} {human_pos}/{human_len} records, {eta} left",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            while after < upto {
                let step = upto.min(after + 65_536);
                export::write_since(&db, after, step, &filter, &mut out, &host)?;
                after = step;
                bar.set_position(after);
            }
            bar.finish_and_clear();
            std::io::Write::flush(&mut out)?;
            if follow {
                // Until interrupted (or stdout closes: the write fails).
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    let upto = export::last_seq(&db)?;
                    after = export::write_since(&db, after, upto, &filter, &mut out, &host)?.0;
                    std::io::Write::flush(&mut out)?;
                }
            }
        }
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
        "approval" | "denial" => format!(
            "hold {} by {} via {} at {}",
            s("hold"),
            s("by"),
            s("via"),
            s("at")
        ),
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
