//! `watcher baseline …` and the task scope of `watcher launch`: the command line's side.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand};
use watcher::{
    frontends::control::client::Client,
    model::{
        baseline::{ProfileExport, ProfileMode},
        ids::TraceId,
        protocol::{BaselineOp, Reply, Request},
        scope::Scope,
    },
};

/// What `launch` pins (all optional; none: no scope).
#[derive(Args, Debug, Default)]
pub struct ScopeArgs {
    /// The task's work directory: writes outside it are out of scope (CMD runs in it).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Also writable (repeatable): a glob, absolute, `~/…`, or relative to --workdir.
    #[arg(long = "allow-write", value_name = "GLOB")]
    pub allow_write: Vec<String>,
    /// Readable in home directories (repeatable); given once, other home reads are out of scope.
    #[arg(long = "allow-read", value_name = "GLOB")]
    pub allow_read: Vec<String>,
    /// A destination the task may connect to (repeatable): name, `*.name`, address or CIDR,
    /// with an optional `:PORT`; given once, every other destination is out of scope.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    pub allow_host: Vec<String>,
    /// A program the task may run (repeatable); given once, every other one is out of scope.
    #[arg(long = "allow-exec", value_name = "GLOB")]
    pub allow_exec: Vec<String>,
    /// A YAML file with the same fields (`workdir`, `allow_write`, ...); the flags add to it.
    #[arg(long, value_name = "FILE")]
    pub scope: Option<PathBuf>,
}

impl ScopeArgs {
    /// The scope to pin, None when nothing is asked.
    pub fn scope(&self) -> anyhow::Result<Option<Scope>> {
        let mut s = match &self.scope {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the scope file {}", f.display()))?;
                let s: Scope =
                    serde_yaml_ng::from_str(&text).map_err(|e| anyhow!("{}: {e}", f.display()))?;
                if !s.widened.is_empty() || s.home.is_some() {
                    return Err(anyhow!(
                        "{}: `widened` and `home` are set by the daemon, not by a scope file",
                        f.display()
                    ));
                }
                s
            }
            None => Scope::default(),
        };
        let list = |v: &[String]| (!v.is_empty()).then(|| v.to_vec());
        s.merge(Scope {
            workdir: match &self.workdir {
                Some(w) => Some(
                    std::fs::canonicalize(w)
                        .with_context(|| format!("--workdir {}", w.display()))?
                        .display()
                        .to_string(),
                ),
                None => None,
            },
            allow_write: self.allow_write.clone(),
            allow_read: list(&self.allow_read),
            allow_host: list(&self.allow_host),
            allow_exec: list(&self.allow_exec),
            home: None,
            widened: Vec::new(),
        });
        Ok(s.is_pinned().then_some(s))
    }
}

#[derive(Subcommand)]
pub enum BaselineCmd {
    /// Every profile in brief: mode, sessions, entries, whether it is stable.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One profile: its summary and what it learned.
    Show {
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// Switch a profile's mode (the daemon never does it by itself).
    Mode { profile: String, mode: ProfileMode },
    /// The profile as reviewable YAML (JSON with --json).
    Export {
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a profile with an exported one (YAML or JSON; `-`: stdin).
    Import {
        profile: String,
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Forget what a profile learned (it learns again from its next session).
    Reset {
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// What a session did that the profile had never seen.
    Diff {
        profile: String,
        #[arg(long)]
        trace: TraceId,
        #[arg(long)]
        json: bool,
    },
    /// What enforce would have held while the profile was in shadow.
    Report {
        profile: String,
        #[arg(long)]
        json: bool,
    },
}

fn request(op: BaselineOp, profile: Option<String>) -> Request {
    Request::Baseline {
        op,
        profile,
        mode: None,
        trace: None,
        import: None,
    }
}

/// How long a reply may take before a spinner says the daemon is still working on it.
const QUIET: std::time::Duration = std::time::Duration::from_millis(300);

/// The daemon's reply to `req`. A report over a profile's whole shadow history is one query
/// of the store, with no count to show until it is done: after `QUIET`, a spinner with the
/// time waited (on stderr, on a terminal only) until the reply arrives.
fn ask(socket: &std::path::Path, req: &Request) -> anyhow::Result<Reply> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            let _ = tx.send(Client::send(socket, req).and_then(Client::reply));
        });
        let waited = match rx.recv_timeout(QUIET) {
            Ok(reply) => return reply,
            Err(e) => e,
        };
        if waited == std::sync::mpsc::RecvTimeoutError::Disconnected {
            return Err(anyhow!("the request to the daemon failed"));
        }
        let bar = indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message("the daemon is working on it");
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        let reply = rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow!("the request to the daemon failed")));
        bar.finish_and_clear();
        reply
    })
}

pub fn run(cmd: BaselineCmd, socket: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (req, json) = match cmd {
        BaselineCmd::List { json } => (request(BaselineOp::List, None), json),
        BaselineCmd::Show { profile, json } => (request(BaselineOp::Show, Some(profile)), json),
        BaselineCmd::Mode { profile, mode } => (
            Request::Baseline {
                op: BaselineOp::Mode,
                profile: Some(profile),
                mode: Some(mode),
                trace: None,
                import: None,
            },
            false,
        ),
        BaselineCmd::Export { profile, json } => {
            let reply = ask(socket, &request(BaselineOp::Export, Some(profile)))?;
            let Reply::Profile { profile, .. } = reply else {
                return Err(anyhow!("unexpected reply from the daemon"));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&profile)?);
            } else {
                print!("{}", serde_yaml_ng::to_string(&profile)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        BaselineCmd::Import {
            profile,
            file,
            json,
        } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            // YAML is a superset of JSON: one parser for both, whose errors give line and column.
            let x: ProfileExport =
                serde_yaml_ng::from_str(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            (
                Request::Baseline {
                    op: BaselineOp::Import,
                    profile: Some(profile),
                    mode: None,
                    trace: None,
                    import: Some(Box::new(x)),
                },
                json,
            )
        }
        BaselineCmd::Reset { profile, json } => (request(BaselineOp::Reset, Some(profile)), json),
        BaselineCmd::Diff {
            profile,
            trace,
            json,
        } => (
            Request::Baseline {
                op: BaselineOp::Diff,
                profile: Some(profile),
                mode: None,
                trace: Some(trace),
                import: None,
            },
            json,
        ),
        BaselineCmd::Report { profile, json } => (request(BaselineOp::Report, Some(profile)), json),
    };
    let reply = ask(socket, &req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(ExitCode::SUCCESS);
    }
    match reply {
        Reply::Profiles { profiles } => {
            println!(
                "{:<20} {:<8} {:>8} {:>10} {:>8} {:>9} {:>7} {:>10}",
                "PROFILE",
                "MODE",
                "SESSIONS",
                "EVENTS",
                "ENTRIES",
                "LEARNING",
                "STABLE",
                "WOULD_HOLD"
            );
            for p in profiles {
                println!(
                    "{:<20} {:<8} {:>8} {:>10} {:>8} {:>9.1} {:>7} {:>10}",
                    p.profile,
                    p.mode.as_str(),
                    p.sessions,
                    p.events,
                    p.entries,
                    p.learning,
                    if p.stable { "yes" } else { "no" },
                    p.would_hold
                );
            }
        }
        Reply::Profile { summary, profile } => {
            println!(
                "profile {} ({}): {} sessions, {} events, {} entries, {:.1} new per session, {}; alert at {}, hold at {}",
                summary.profile,
                summary.mode.as_str(),
                summary.sessions,
                summary.events,
                summary.entries,
                summary.learning,
                if summary.stable { "stable" } else { "still learning" },
                summary.alert_at,
                summary.hold_at
            );
            let mut facet = String::new();
            for e in &profile.entries {
                if e.facet != facet {
                    facet.clone_from(&e.facet);
                    println!("{facet}:");
                }
                println!(
                    "  {:<60} {:>4} sessions {:>8} events",
                    e.value, e.sessions, e.events
                );
            }
            for r in &profile.rates {
                println!(
                    "rate {:<24} {:>6} minutes  p50 {:>7}  p99 {:>7}  max {:>7} /min",
                    r.kind, r.minutes, r.p50, r.p99, r.max
                );
            }
        }
        Reply::Diff {
            profile,
            trace_id,
            novel,
        } => {
            println!(
                "session {trace_id}: {} thing(s) profile {profile} had never seen",
                novel.len()
            );
            for n in novel {
                println!("  {:<14} {:<60} score {:.2}", n.facet, n.value, n.score);
            }
        }
        Reply::Report {
            profile,
            would_hold,
        } => {
            println!(
                "{} would_hold record(s) of profile {profile} in shadow mode",
                would_hold.len()
            );
            for w in would_hold {
                println!(
                    "  {} {} {:<28} score {:.2}  {}",
                    w.at, w.trace_id, w.rule, w.score, w.description
                );
            }
        }
        Reply::Done { done } => println!("{done}"),
        _ => return Err(anyhow!("unexpected reply from the daemon")),
    }
    Ok(ExitCode::SUCCESS)
}
