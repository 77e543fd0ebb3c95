//! `watcher run`: loads the programs, starts intake and the control socket, runs until
//! SIGINT or SIGTERM.
use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::sync::broadcast;
use watcher_common::EVENT_KINDS;

use arc_swap::ArcSwap;

use crate::{approvals::Approvals, freeze::Cgroups};

use crate::{
    config::Config,
    control,
    event::{Detail, Event},
    intake,
    kernel::Kernel,
    reload,
    rules::{self, kernel::KernelPolicy, Policy, RuleError},
    sessions::Sessions,
};

/// A process registered by `launch` or `attach`, handed to intake before it can run.
#[derive(Debug)]
pub struct Seed {
    pub pid: u32,
    pub ppid: u32,
    pub session_id: u64,
    pub cwd: Option<PathBuf>,
}

#[derive(Default)]
pub struct Counters {
    /// Records decoded, per `EventKind`.
    pub events: [AtomicU64; EVENT_KINDS as usize],
    /// Records that could not be decoded.
    pub malformed: AtomicU64,
    /// Events a slow `watcher events --follow` client missed.
    pub client_lag: AtomicU64,
    /// Events published (the last sequence number).
    pub published: AtomicU64,
    pub findings: AtomicU64,
    pub holds: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
    /// Files with a fanotify mark (protected paths).
    pub protected_files: AtomicU64,
    /// Failed accepts on the control socket and the API (e.g. EMFILE); each is logged and the
    /// listener goes on.
    pub accept_errors: AtomicU64,
}

/// The policy in force, with the part compiled into the kernel.
pub struct ActivePolicy {
    pub policy: Policy,
    pub kernel: KernelPolicy,
}

pub struct Shared {
    pub config: Config,
    pub sessions: Mutex<Sessions>,
    pub recent: Mutex<VecDeque<Arc<Event>>>,
    pub live: broadcast::Sender<Arc<Event>>,
    pub counters: Counters,
    pub kernel: Mutex<Kernel>,
    pub seeds: Mutex<std::sync::mpsc::Sender<Seed>>,
    /// Kernel event to user-space event, microseconds.
    pub latency: Mutex<Histogram<u64>>,
    /// Swapped whole on reload: intake sees the old policy or the new one, never a mix.
    pub policy: ArcSwap<ActivePolicy>,
    pub findings: Mutex<VecDeque<Arc<Event>>>,
    /// The last reload error, until a reload succeeds.
    pub rules_error: Mutex<Option<String>>,
    /// Serialises reloads (file watcher, SIGHUP, control socket).
    reload_lock: Mutex<()>,
    /// Holds, their store, the session cgroups and the kill-switch state.
    pub approvals: Arc<Approvals>,
    /// Kernel event to "whole session frozen", microseconds.
    pub hold_latency: Mutex<Histogram<u64>>,
    /// Calls the hold webhook, off every path that holds a process or a request.
    pub announcer: crate::worker::Worker,
}

impl Shared {
    /// Numbers the event and hands it to `recent` and to live followers, in one order.
    pub fn publish(&self, mut ev: Event) -> Arc<Event> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        ev.seq = self.counters.published.fetch_add(1, Ordering::Relaxed) + 1;
        let ev = Arc::new(ev);
        if recent.len() >= self.config.daemon.recent_events {
            recent.pop_front();
        }
        recent.push_back(ev.clone());
        if matches!(ev.detail, Detail::Finding(_)) {
            self.counters.findings.fetch_add(1, Ordering::Relaxed);
            let mut f = self.findings.lock().unwrap_or_else(|e| e.into_inner());
            if f.len() >= self.config.rules.recent_findings {
                f.pop_front();
            }
            f.push_back(ev.clone());
        }
        // No subscriber is fine: the event is kept in `recent`.
        let _ = self.live.send(ev.clone());
        ev
    }

    /// Loads the rule files again and swaps the policy (and the kernel's fast paths) in whole.
    /// On error the running policy stays in force; the error is logged, counted and kept for
    /// `watcher status`.
    pub fn reload(&self, why: &str) -> Result<(String, usize), RuleError> {
        let _one = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = rules::load(self.config.rules.path.as_deref()).and_then(|(policy, _)| {
            let kernel = KernelPolicy::of(&policy, self.config.holds.enabled);
            self.kernel
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_fast_paths(&kernel)
                .map_err(|e| RuleError {
                    file: "<kernel>".into(),
                    line: 0,
                    column: 0,
                    message: format!("updating the kernel fast paths: {e:#}"),
                })?;
            Ok(ActivePolicy { policy, kernel })
        });
        match result {
            Ok(active) => {
                let out = (active.policy.version.clone(), active.policy.rules.len());
                let old = self.policy.swap(Arc::new(active));
                self.counters.reloads.fetch_add(1, Ordering::Relaxed);
                *self.rules_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(why, version = %out.0, previous = %old.policy.version, rules = out.1, "policy loaded");
                Ok(out)
            }
            Err(e) => {
                self.counters.reload_errors.fetch_add(1, Ordering::Relaxed);
                *self.rules_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                tracing::error!(
                    why,
                    "rules not reloaded, the running policy stays in force: {e}"
                );
                Err(e)
            }
        }
    }
}

async fn start_api(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let api = &shared.config.api;
    if let Some(path) = &api.socket {
        let l = control::server::bind_at(path, &shared.config)?;
        tracing::info!(socket = %path.display(), "HTTP API on a unix socket");
        tokio::spawn(crate::api::serve_unix(l, shared.clone()));
    }
    if let Some(addr) = api.listen {
        let gid = match &shared.config.daemon.approver_group {
            Some(g) => Some(control::server::group_id(g)?),
            None => None,
        };
        let token = crate::api::token(&api.token_file, gid)?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("api.listen {addr}"))?;
        tracing::info!(%addr, token_file = %api.token_file.display(), "HTTP API on loopback");
        tokio::spawn(crate::api::serve_tcp(l, shared.clone(), token));
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one: every control client, API client and
/// protected-file mark holds a descriptor, and the default soft limit (1024) is a few hundred
/// idle clients away.
fn raise_nofile_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit out-pointer, then the same struct in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                tracing::warn!(
                    "cannot raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    raise_nofile_limit();
    // A broken rule file at start-up is an error, not a daemon without rules.
    let (policy, _) = rules::load(config.rules.path.as_deref())?;
    let kernel_policy = KernelPolicy::of(&policy, config.holds.enabled);
    let mut kernel = Kernel::load(&config)?;
    kernel.set_fast_paths(&kernel_policy)?;
    let rings = kernel.take_rings()?;
    let approvals = Arc::new(Approvals::open(
        &config.holds.store,
        Cgroups::open_named(&config.holds.cgroup)?,
        config.holds.timeout,
        config.holds.deny,
    )?);
    let (seed_tx, seed_rx) = std::sync::mpsc::channel();
    let (live, _) = broadcast::channel(16384);
    let shared = Arc::new(Shared {
        sessions: Mutex::new(Sessions::default()),
        recent: Mutex::new(VecDeque::new()),
        live,
        counters: Counters::default(),
        kernel: Mutex::new(kernel),
        seeds: Mutex::new(seed_tx),
        latency: Mutex::new(Histogram::new(3).context("histogram")?),
        policy: ArcSwap::from_pointee(ActivePolicy {
            policy,
            kernel: kernel_policy,
        }),
        findings: Mutex::new(VecDeque::new()),
        rules_error: Mutex::new(None),
        reload_lock: Mutex::new(()),
        approvals,
        hold_latency: Mutex::new(Histogram::new(3).context("histogram")?),
        announcer: crate::worker::Worker::start("announce")?,
        config,
    });
    // Sessions of an earlier daemon (its cgroups are still there): watched again, same trace
    // ids; frozen ones stay frozen until their hold is decided.
    crate::decide::adopt_sessions(&shared);
    crate::decide::restore_kill_switch(&shared);
    tokio::spawn(crate::approvals::deadlines(shared.approvals.clone()));
    tokio::spawn(crate::approvals::prune(
        shared.approvals.clone(),
        shared.config.holds.retention,
    ));
    let _protect = if shared.config.holds.enabled {
        crate::protect::Protect::start(shared.clone())?
    } else {
        None
    };
    tokio::spawn(crate::decide::sweep_cgroups(shared.clone()));
    tracing::info!(version = %shared.policy.load().policy.version, rules = shared.policy.load().policy.rules.len(), "policy loaded");
    let _watcher = reload::watch_files(shared.clone())?;
    tokio::spawn(reload::on_sighup(shared.clone()));
    intake::spawn(rings, shared.clone(), seed_rx)?;
    let listener = control::server::bind(&shared.config)?;
    tracing::info!(
        socket = %shared.config.daemon.socket.display(),
        "watcher ready"
    );
    // Tests and supervisors wait for this line instead of polling.
    println!("ready {}", shared.config.daemon.socket.display());
    let server = tokio::spawn(control::server::serve(listener, shared.clone()));
    start_api(&shared).await?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        r = server => {
            // The server loops until the daemon stops; it ending is a bug, not a shutdown.
            r?;
            return Err(anyhow::anyhow!("the control socket server stopped"));
        }
    }
    tracing::info!("shutting down");
    // Ended sessions leave empty cgroups; running (and frozen) ones stay for the next start.
    for t in shared.approvals.cgroups.sessions() {
        shared.approvals.cgroups.remove_if_empty(&t);
    }
    let _ = std::fs::remove_file(&shared.config.daemon.socket);
    if let Some(p) = &shared.config.api.socket {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
