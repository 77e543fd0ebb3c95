use std::{ffi::OsString, os::unix::process::CommandExt, path::PathBuf, process::ExitCode};

// The command line's own modules live beside it in main/ (above every layer of the library).
#[path = "main/audit.rs"]
mod cli_audit;
#[path = "main/baseline.rs"]
mod cli_baseline;

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use watcher::{
    config::Config,
    frontends::control::client::Client,
    model::{
        event::Event,
        ids::{HoldId, TraceId},
        protocol::{Reply, Request, Skipped, Status},
    },
};

#[derive(Parser)]
#[command(
    name = "watcher",
    version,
    about = "Watches AI agent process trees from the kernel"
)]
struct Cli {
    /// Configuration file (TOML); the embedded defaults apply without one.
    #[arg(long, global = true, env = "WATCHER_CONFIG")]
    config: Option<PathBuf>,
    /// Control socket (overrides the configuration).
    #[arg(long, global = true, env = "WATCHER_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run,
    /// Run CMD as a new watched session; prints the trace id on stderr, exits with CMD's code.
    Launch {
        #[arg(long)]
        profile: Option<String>,
        /// The task scope to pin (defaults for the profile come from [profiles.NAME]).
        #[command(flatten)]
        scope: cli_baseline::ScopeArgs,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<OsString>,
    },
    /// Watch a running process and its descendants as a new session.
    Attach {
        pid: u32,
        #[arg(long)]
        profile: Option<String>,
        /// The task scope to pin (as for launch; the process keeps its working directory).
        #[command(flatten)]
        scope: cli_baseline::ScopeArgs,
    },
    /// Print events from the daemon.
    Events {
        #[arg(long)]
        json: bool,
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
        /// Only this session (its trace id, 32 hex digits).
        #[arg(long)]
        trace: Option<TraceId>,
    },
    /// Sessions, processes watched, events and drops per type.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Findings (rules that matched), with their evidence.
    Findings {
        #[arg(long)]
        json: bool,
        /// Keep printing new findings.
        #[arg(long)]
        follow: bool,
        /// Only this session (its trace id, 32 hex digits).
        #[arg(long)]
        trace: Option<TraceId>,
    },
    /// Pending holds: sessions frozen by a finding, waiting for a decision.
    Holds {
        #[arg(long)]
        json: bool,
        /// Decided holds too.
        #[arg(long)]
        all: bool,
    },
    /// The evidence of a hold: finding, triggering event, process tree, recent events.
    ShowHold {
        id: HoldId,
        #[arg(long)]
        json: bool,
    },
    /// Resume a held session.
    Approve {
        id: HoldId,
        /// Do not hold this session for the same rule again.
        #[arg(long)]
        remember: bool,
        /// Do not hold any session of this session's profile for the same rule again.
        #[arg(long, conflicts_with = "remember")]
        remember_profile: bool,
    },
    /// Stop a held session (or only its triggering process, by configuration).
    Deny { id: HoldId },
    /// The watcher is being removed (the package's prerm runs it): deny every pending hold now
    /// (no answer can come), and make the next stop leave running sessions running and detach
    /// the programs, instead of freezing them for a daemon that will not come. Root only.
    Retire {
        /// Stop the daemon once retired (where no service manager stops it).
        #[arg(long)]
        stop: bool,
    },
    /// Stop every watched process at once (incident response).
    KillSwitch {
        #[command(subcommand)]
        cmd: KillSwitchCmd,
    },
    /// Learned profiles: show, switch mode (learn, shadow, enforce), export, import, reset,
    /// diff a session against its profile, report what shadow mode would have held.
    Baseline {
        #[command(subcommand)]
        cmd: cli_baseline::BaselineCmd,
    },
    /// The signed audit log: the verifier key, a session's timeline.
    Audit {
        #[command(subcommand)]
        cmd: cli_audit::AuditCmd,
    },
    /// Test, check and reload detection rules.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Evaluate the rule pack over a recorded event stream (JSON lines) and print the rate.
    #[command(hide = true)]
    BenchRules {
        stream: PathBuf,
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// The detectors' cost per event over a recorded event stream, and a profile's size after
    /// 100 sessions.
    #[command(hide = true)]
    BenchDetectors {
        stream: PathBuf,
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long, default_value_t = 9)]
        rounds: u32,
    },
    /// The audit log's ingest rate, size and seal latency on the disk under DIR.
    #[command(hide = true)]
    BenchAudit {
        stream: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// The cost of one /metrics render with 100 sessions and 10,000 processes.
    #[command(hide = true)]
    BenchMetrics {
        #[arg(long, default_value_t = 15)]
        rounds: u32,
    },
    /// The daemon's guardian: continues PID whenever it is stopped (started by `watcher run`).
    #[command(hide = true)]
    Guard {
        #[arg(long)]
        pid: u32,
    },
    /// Attach empty programs to every hook until killed (the benchmark's kernel floor).
    #[command(hide = true)]
    BenchFloor {
        /// How the syscalls are hooked.
        #[arg(long, value_enum, default_value = "classic")]
        hooks: watcher::kernel::SyscallHooks,
        /// Take `off` and `on` lines on stdin (detach, attach again), answer each with `ok`,
        /// and exit at the end of input, instead of holding the programs until killed.
        #[arg(long)]
        toggle: bool,
    },
}

#[derive(Subcommand)]
enum KillSwitchCmd {
    /// Freeze (default) or kill the given sessions, or all of them.
    Engage {
        /// A session's trace id, 32 hex digits (repeatable).
        #[arg(long = "trace", conflicts_with = "all")]
        traces: Vec<TraceId>,
        #[arg(long)]
        all: bool,
        #[arg(long, conflicts_with = "kill")]
        freeze: bool,
        #[arg(long)]
        kill: bool,
    },
    /// Thaw what the kill-switch froze (sessions waiting on a hold stay frozen).
    Release,
    /// Whether it is engaged, by whom and since when.
    Status,
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Run every rule's examples (the shipped pack when PATH is omitted).
    Test { path: Option<PathBuf> },
    /// Validate rule files; errors give file, line and column.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Ask the daemon to load its rule files again now.
    Reload,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run) {
        // A command's output piped into `head` ends it quietly, as other tools do; the daemon
        // keeps Rust's default (ignored, errors returned).
        // SAFETY: signal(2) with the default disposition, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("watcher: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(s) = cli.socket {
        config.daemon.socket = s;
    }
    let socket = config.daemon.socket.clone();
    match cli.cmd {
        Cmd::Run => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(watcher::daemon::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Launch {
            profile,
            scope,
            cmd,
        } => {
            let pinned = scope.scope()?;
            let workdir = pinned.as_ref().and_then(|s| s.workdir.clone());
            let reply = Client::send(
                &socket,
                &Request::Launch {
                    profile,
                    scope: pinned,
                },
            )?
            .reply()?;
            let Reply::Started {
                trace_id, guarded, ..
            } = reply
            else {
                return Err(anyhow!("unexpected reply from the daemon"));
            };
            eprintln!("watcher: trace id {trace_id}");
            // As root, the session gets the fence before its first instruction; another user's
            // session cannot signal root's daemon in the first place.
            // SAFETY: geteuid(2) has no preconditions.
            if unsafe { libc::geteuid() } == 0 && !guarded.is_empty() {
                if let Err(e) = watcher::sys::fence::program(&guarded)
                    .and_then(|p| watcher::sys::fence::install(&p))
                {
                    eprintln!("watcher: warning: no seccomp fence for this session: {e}");
                }
            }
            // The agent's own logs and spans join ours: the trace id, and a W3C trace context
            // whose parent span is new (sampled).
            let mut span = [0u8; 8];
            watcher::model::ids::fill_random(&mut span);
            let span: String = span.iter().map(|b| format!("{b:02x}")).collect();
            // This process is watched now; exec keeps it (and its pid) as the session root.
            let mut command = std::process::Command::new(&cmd[0]);
            if let Some(w) = workdir {
                command.current_dir(w);
            }
            let err = command
                .args(&cmd[1..])
                .env("WATCHER_TRACE_ID", &trace_id)
                .env("TRACEPARENT", format!("00-{trace_id}-{span}-01"))
                .exec();
            Err(anyhow!("cannot run {:?}: {err}", cmd[0]))
        }
        Cmd::Attach {
            pid,
            profile,
            scope,
        } => {
            let req = Request::Attach {
                pid,
                profile,
                scope: scope.scope()?,
            };
            match Client::send(&socket, &req)?.reply()? {
                Reply::Started { trace_id, pids, .. } => {
                    eprintln!("watcher: watching {} process(es)", pids.len());
                    println!("{trace_id}");
                    Ok(ExitCode::SUCCESS)
                }
                _ => Err(anyhow!("unexpected reply from the daemon")),
            }
        }
        Cmd::Events {
            json,
            follow,
            trace,
        } => {
            let mut client = Client::send(&socket, &Request::Events { follow, trace })?;
            let stdout = std::io::stdout();
            while let Some(line) = client.next_line()? {
                if let Ok(s) = serde_json::from_str::<Skipped>(&line) {
                    eprintln!(
                        "watcher: {} events skipped: this client read too slowly",
                        s.skipped
                    );
                    continue;
                }
                let mut out = stdout.lock();
                use std::io::Write;
                let written = if json {
                    out.write_all(line.as_bytes())
                } else {
                    let ev: Event = serde_json::from_str(&line).context("malformed event")?;
                    writeln!(out, "{ev}")
                };
                // A closed pipe (`| head`) ends the command quietly.
                if written.and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => {
            let Reply::Status(st) = Client::send(&socket, &Request::Status)?.reply()? else {
                return Err(anyhow!("unexpected reply from the daemon"));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Findings {
            json,
            follow,
            trace,
        } => {
            let mut client = Client::send(&socket, &Request::Findings { follow, trace })?;
            let stdout = std::io::stdout();
            while let Some(line) = client.next_line()? {
                use std::io::Write;
                let mut out = stdout.lock();
                let written = if json {
                    out.write_all(line.as_bytes())
                } else {
                    let ev: Event = serde_json::from_str(&line).context("malformed finding")?;
                    write_finding(&mut out, &ev)
                };
                if written.and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rules { cmd } => rules_cmd(cmd, &socket),
        Cmd::Baseline { cmd } => cli_baseline::run(cmd, &socket),
        Cmd::Audit { cmd } => cli_audit::run(cmd, &config.audit),
        Cmd::Holds { json, all } => {
            let Reply::Holds { holds } = Client::send(&socket, &Request::Holds { all })?.reply()?
            else {
                return Err(anyhow!("unexpected reply from the daemon"));
            };
            if json {
                for h in &holds {
                    println!("{}", serde_json::to_string(h)?);
                }
            } else {
                print_holds(&holds);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ShowHold { id, json } => {
            let Reply::Hold { hold } = Client::send(&socket, &Request::ShowHold { id })?.reply()?
            else {
                return Err(anyhow!("unexpected reply from the daemon"));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&hold)?);
            } else {
                print_hold(&hold);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Approve {
            id,
            remember,
            remember_profile,
        } => {
            let Reply::Hold { hold } = Client::send(
                &socket,
                &Request::Approve {
                    id,
                    remember,
                    remember_profile,
                },
            )?
            .reply()?
            else {
                return Err(anyhow!("unexpected reply from the daemon"));
            };
            println!(
                "{} approved by {}: session {} resumed{}",
                hold.id,
                hold.decided_by.as_deref().unwrap_or("?"),
                hold.trace_id,
                if hold.remembered {
                    " (remembered: this rule no longer holds it)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Deny { id } => {
            let Reply::Hold { hold } = Client::send(&socket, &Request::Deny { id })?.reply()?
            else {
                return Err(anyhow!("unexpected reply from the daemon"));
            };
            println!(
                "{} denied by {}: {}",
                hold.id,
                hold.decided_by.as_deref().unwrap_or("?"),
                hold.result.as_deref().unwrap_or("")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Retire { stop } => match Client::send(&socket, &Request::Retire { stop })?.reply()? {
            Reply::Retired {
                denied,
                left_frozen,
            } => {
                for id in &denied {
                    println!("denied {id}: no answer can come once the watcher is removed");
                }
                for t in &left_frozen {
                    println!(
                        "session {t} stays frozen by the kill-switch: kill or thaw it by hand \
                         (its cgroup's cgroup.kill or cgroup.freeze)"
                    );
                }
                println!("retired: the next stop leaves running sessions running, unwatched");
                if stop {
                    // The daemon removes its socket as the last step of its stop.
                    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
                    while socket.exists() {
                        if std::time::Instant::now() > until {
                            return Err(anyhow!("the daemon did not stop within 30 s"));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    println!("stopped");
                }
                Ok(ExitCode::SUCCESS)
            }
            _ => Err(anyhow!("unexpected reply from the daemon")),
        },
        Cmd::KillSwitch { cmd } => {
            use watcher::model::{hold::HaltMode, protocol::KillSwitchOp};
            let req = match cmd {
                KillSwitchCmd::Engage {
                    traces,
                    all,
                    freeze: _,
                    kill,
                } => Request::KillSwitch {
                    op: KillSwitchOp::Engage,
                    traces,
                    all,
                    mode: Some(if kill {
                        HaltMode::Kill
                    } else {
                        HaltMode::Freeze
                    }),
                },
                KillSwitchCmd::Release => Request::KillSwitch {
                    op: KillSwitchOp::Release,
                    traces: Vec::new(),
                    all: false,
                    mode: None,
                },
                KillSwitchCmd::Status => Request::KillSwitch {
                    op: KillSwitchOp::Status,
                    traces: Vec::new(),
                    all: false,
                    mode: None,
                },
            };
            let is_release = matches!(
                req,
                Request::KillSwitch {
                    op: KillSwitchOp::Release,
                    ..
                }
            );
            let Reply::KillSwitch {
                kill_switch,
                engaged,
                released,
            } = Client::send(&socket, &req)?.reply()?
            else {
                return Err(anyhow!("unexpected reply from the daemon"));
            };
            if let Some(e) = engaged {
                println!(
                    "kill-switch engaged ({}): {} session(s), {} process(es), all stopped in {} us",
                    kill_switch.mode,
                    e.sessions.len(),
                    e.processes,
                    e.micros
                );
            } else if is_release {
                println!(
                    "kill-switch released: {} session(s) resumed",
                    released.len()
                );
            } else if kill_switch.engaged {
                println!(
                    "kill-switch ENGAGED ({}) by {} at {}: {}",
                    kill_switch.mode,
                    kill_switch.by,
                    kill_switch.at,
                    if kill_switch.all {
                        "all sessions".to_string()
                    } else {
                        kill_switch.traces.join(", ")
                    }
                );
            } else {
                println!("kill-switch not engaged");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchRules {
            stream,
            rules,
            rounds,
        } => {
            watcher::rules::bench::run(&stream, rules.as_deref(), rounds)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchDetectors {
            stream,
            rules,
            rounds,
        } => {
            watcher::pipeline::baseline::bench::run(&stream, rules.as_deref(), rounds)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Guard { pid } => {
            watcher::sys::guardian::guard(pid).context("watcher guard")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchAudit {
            stream,
            dir,
            events,
            rounds,
        } => {
            watcher::pipeline::audit::bench::run(&stream, &dir, events, rounds)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchMetrics { rounds } => {
            watcher::frontends::metrics::bench(rounds)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchFloor { hooks, toggle } => {
            let mut floor = watcher::kernel::Floor::load(hooks)?;
            println!("ready");
            if !toggle {
                // Held until the benchmark kills us.
                loop {
                    std::thread::park();
                }
            }
            for line in std::io::stdin().lines() {
                match line?.trim() {
                    "off" => floor.detach(),
                    "on" => floor.attach()?,
                    other => return Err(anyhow!("bench-floor: expected on or off, got {other:?}")),
                }
                println!("ok");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn rules_cmd(cmd: RulesCmd, socket: &std::path::Path) -> anyhow::Result<ExitCode> {
    use watcher::rules;
    match cmd {
        RulesCmd::Test { path } => {
            let (policy, sources) = rules::load(path.as_deref())?;
            let (n, failures) = rules::examples::run(&policy, &sources)?;
            for f in &failures {
                println!("FAIL {} ({}): {}", f.rule, f.file, f.message);
            }
            println!(
                "{} rules, {} examples, {} failed (policy {})",
                policy.rules.len(),
                n,
                failures.len(),
                policy.version
            );
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        RulesCmd::Check { paths } => {
            let mut sources = Vec::new();
            for p in &paths {
                sources.extend(rules::read_sources(p)?);
            }
            // A file may use the shipped lists and macros.
            let mut with_pack = rules::pack::sources();
            with_pack.retain(|s| s.name.ends_with("lists.yaml"));
            if sources.iter().any(|s| s.name.ends_with("lists.yaml")) {
                with_pack.clear();
            }
            with_pack.extend(sources);
            let policy = rules::compile::compile(&with_pack, &rules::compile::homes())?;
            println!(
                "ok: {} rules (policy {})",
                policy.rules.len(),
                policy.version
            );
            Ok(ExitCode::SUCCESS)
        }
        RulesCmd::Reload => match Client::send(socket, &Request::Reload)?.reply()? {
            Reply::Reloaded {
                policy_version,
                rules,
            } => {
                println!("reloaded: {rules} rules (policy {policy_version})");
                Ok(ExitCode::SUCCESS)
            }
            _ => Err(anyhow!("unexpected reply from the daemon")),
        },
    }
}

fn print_holds(holds: &[watcher::model::hold::Hold]) {
    println!(
        "{:<15}  {:<32}  {:<26}  {:<8}  {:<24}  {:<24}  TRIGGER",
        "ID", "TRACE ID", "RULE", "STATE", "STARTED", "DEADLINE"
    );
    for h in holds {
        println!(
            "{:<15}  {:<32}  {:<26}  {:<8}  {:<24}  {:<24}  pid {} {}",
            h.id,
            h.trace_id,
            h.rule,
            h.state.as_str(),
            h.started,
            h.deadline,
            h.trigger.pid,
            short(&h.trigger)
        );
    }
}

/// The trigger in a few words: what ran, opened or connected.
fn short(ev: &Event) -> String {
    let s = ev.to_string();
    // Drop the timestamp, trace id and type columns the table already has.
    s.splitn(4, ' ').nth(3).unwrap_or(&s).to_string()
}

fn print_hold(h: &watcher::model::hold::Hold) {
    println!("hold      {}", h.id);
    println!("state     {}", h.state.as_str());
    println!("trace id  {}", h.trace_id);
    println!("rule      {} (policy {})", h.rule, h.policy_version);
    if let watcher::model::event::Detail::Finding(f) = &h.finding.detail {
        println!("finding   {:?} {}: {}", f.severity, f.rule, f.description);
        println!("detector  {}", f.detector.as_str());
        if let Some(score) = f.score {
            println!("score     {score:.2}");
        }
        if let Some(a) = &f.anomaly {
            println!("new       {}: {}", a.facet, a.value);
            if !a.instead.is_empty() {
                println!("instead   {}", a.instead.join(", "));
            }
            if let Some(w) = &a.widen {
                println!("remember  approve --remember adds {w} to the session's scope");
            }
        }
        println!("tags      {}", f.tags.join(", "));
    }
    if let Some(scope) = &h.scope {
        println!("scope     {}", scope.summary());
    }
    for e in &h.also {
        if let watcher::model::event::Detail::Finding(f) = &e.detail {
            println!("and       {:?} {}: {}", f.severity, f.rule, f.description);
        }
    }
    println!("started   {}", h.started);
    println!("deadline  {} (no answer means deny)", h.deadline);
    if let Some(by) = &h.decided_by {
        println!(
            "decided   by {by} at {} {}",
            h.decided_at.as_deref().unwrap_or("?"),
            h.result.as_deref().unwrap_or("")
        );
    }
    println!("\ntrigger\n    {}", h.trigger);
    if let watcher::model::event::Detail::Finding(f) = &h.finding.detail {
        println!("\nevidence");
        for e in &f.evidence {
            println!("    {e}");
        }
    }
    println!("\nprocess tree ({} processes)", h.tree.len());
    for p in &h.tree {
        println!(
            "    {:>7} {:>7}  {}  {}",
            p.pid,
            p.ppid,
            p.exe,
            p.argv.join(" ")
        );
    }
    println!("\nrecent events of the session ({})", h.recent.len());
    for e in h.recent.iter().rev().take(30).rev() {
        println!("    {e}");
    }
}

fn write_finding(out: &mut impl std::io::Write, ev: &Event) -> std::io::Result<()> {
    let watcher::model::event::Detail::Finding(f) = &ev.detail else {
        return writeln!(out, "{ev}");
    };
    writeln!(
        out,
        "{} {} {:<8} {:<28} {:<5} {:<8} {:<18} pid={} {}",
        ev.ts,
        ev.trace_id.get(..8).unwrap_or(&ev.trace_id),
        format!("{:?}", f.severity).to_lowercase(),
        f.rule,
        format!("{:?}", f.action).to_lowercase(),
        format!("{:?}", f.mode).to_lowercase(),
        format!("{:?}", f.outcome),
        ev.pid,
        f.description
    )?;
    for e in &f.evidence {
        writeln!(out, "    {e}")?;
    }
    Ok(())
}

fn print_status(st: &Status) {
    println!(
        "{:<32}  {:<10}  {:<8}  {:>8}  {:>6}  {:>9}  STATE",
        "TRACE ID", "PROFILE", "BY", "ROOT PID", "PROCS", "EVENTS"
    );
    for s in &st.sessions {
        println!(
            "{:<32}  {:<10}  {:<8}  {:>8}  {:>6}  {:>9}  {}",
            s.trace_id,
            s.profile.as_deref().unwrap_or("-"),
            s.started_by,
            s.root_pid,
            s.processes,
            s.events,
            s.state.as_str()
        );
        if let Some(scope) = &s.scope {
            println!("{:<32}  scope: {}", "", scope.summary());
        }
    }
    println!();
    if !st.profiles.is_empty() {
        println!("profiles:");
        for p in &st.profiles {
            println!(
                "  {:<20} {:<8} {} sessions, {} entries, {:.1} new per session ({}), {} would_hold",
                p.profile,
                p.mode.as_str(),
                p.sessions,
                p.entries,
                p.learning,
                if p.stable { "stable" } else { "learning" },
                p.would_hold
            );
        }
    }
    println!("processes watched: {}", st.processes_watched);
    println!("{:<8}  {:>12}  {:>8}", "TYPE", "EVENTS", "DROPS");
    for (k, c) in &st.per_type {
        println!("{:<8}  {:>12}  {:>8}", k, c.events, c.drops);
    }
    println!("kernel ring: {:.1}% full", st.ring_fill_ratio * 100.0);
    println!("malformed records: {}", st.malformed_records);
    println!("events skipped by slow clients: {}", st.client_lag);
    let a = &st.audit;
    if a.enabled {
        println!(
            "audit log: {} records, {} checkpoints signed, {} events dropped, {} events unwritten, {} records waiting for the store, {} errors",
            a.records, a.checkpoints, a.dropped, a.unwritten, a.pending, a.errors
        );
    } else {
        println!("audit log: off");
    }
    let failures: Vec<String> = st
        .kernel_failures
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "kernel failures: {}",
        if failures.is_empty() {
            "none".to_string()
        } else {
            failures.join(", ")
        }
    );
    if !st.hooks_missing.is_empty() {
        println!("hooks this kernel lacks: {}", st.hooks_missing.join(", "));
    }
    match &st.pids_limit {
        Some(l) => println!("session process limit: {} ({})", l.max, l.place),
        None => println!("session process limit: none"),
    }
    println!("failed accepts: {}", st.accept_errors);
    println!(
        "kernel to user-space latency: p50 {} us, p99 {} us",
        st.latency_us_p50, st.latency_us_p99
    );
    let p = &st.policy;
    println!(
        "policy {} ({} rules from {}): {} findings; {} reloads, {} failed",
        p.version, p.rules, p.source, p.findings, p.reloads, p.reload_errors
    );
    println!(
        "kernel fast paths: {} exec paths, {} open paths, {} denied networks",
        p.kernel_exec, p.kernel_open, p.kernel_deny
    );
    let g = &st.gate;
    println!(
        "gate: {} entries{}; {} events stopped for a decision, {} unanswered; stop to answer p50 {} us, p99 {} us",
        g.entries,
        if g.every.is_empty() {
            String::new()
        } else {
            format!(", every {} gated", g.every.join(", "))
        },
        g.gated,
        g.unanswered,
        g.latency_us_p50,
        g.latency_us_p99
    );
    if let Some(e) = &p.last_error {
        println!("last reload error (the policy above stays in force): {e}");
    }
    let h = &st.holds;
    println!(
        "holds: {} pending, {} opened since start{}; event to frozen p50 {} us, p99 {} us",
        h.pending,
        h.opened,
        if h.enabled { "" } else { " (holds disabled)" },
        h.freeze_us_p50,
        h.freeze_us_p99
    );
    println!(
        "files: {} protected (every open waits), {} guarded (an open for writing waits)",
        h.protected_files, h.guarded_files
    );
    if h.kill_switch.engaged {
        println!(
            "KILL-SWITCH ENGAGED ({}) by {} at {}",
            h.kill_switch.mode, h.kill_switch.by, h.kill_switch.at
        );
    }
}
