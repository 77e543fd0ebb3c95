//! `watcher run`: loads the programs, starts intake and the control socket, runs until
//! SIGINT or SIGTERM from outside every session.
use std::sync::Arc;

use anyhow::Context as _;

use crate::{
    config::Config,
    enforce::{holds::Approvals, Enforce},
    frontends::{api, control},
    kernel::Kernel,
    pipeline::{intake, reload, ActivePolicy, Core},
    rules,
    state::State,
    sys::{cgroup::Cgroups, users::group_id},
};

async fn start_api(shared: &Arc<State>) -> anyhow::Result<()> {
    let api = &shared.config.api;
    if let Some(path) = &api.socket {
        let l = control::server::bind_at(path, &shared.config)?;
        tracing::info!(socket = %path.display(), "HTTP API on a unix socket");
        tokio::spawn(api::serve_unix(l, shared.clone()));
    }
    let m = &shared.config.metrics.listen;
    if !m.is_empty() {
        let addr: std::net::SocketAddr = m
            .parse()
            .with_context(|| format!("[metrics] listen {m:?}: want host:port, or \"\" for off"))?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("[metrics] listen {addr}"))?;
        tracing::info!(%addr, "metrics at /metrics");
        tokio::spawn(crate::frontends::metrics::serve(l, shared.clone()));
    }
    if let Some(addr) = api.listen {
        let gid = match &shared.config.daemon.approver_group {
            Some(g) => Some(group_id(g)?),
            None => None,
        };
        let token = api::token(&api.token_file, gid)?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("api.listen {addr}"))?;
        tracing::info!(%addr, token_file = %api.token_file.display(), "HTTP API on loopback");
        tokio::spawn(api::serve_tcp(l, shared.clone(), token));
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
    let active = ActivePolicy::new(policy, config.holds.enabled);
    let mut kernel = Kernel::load(&config)?;
    active.apply(&mut kernel)?;
    let rings = kernel.take_rings()?;
    let cgroups = Arc::new(
        Cgroups::open_named(&config.holds.cgroup)?
            .with_pids_max(&config.holds.cgroup, config.holds.pids_max),
    );
    // DNS answers to the sessions' sockets (every session cgroup is under the base).
    if let Err(e) = kernel.watch_dns(cgroups.base()) {
        tracing::warn!("no DNS names for connects: {e:#}");
    }
    let audit = Arc::new(crate::pipeline::audit::Audit::open(&config.audit)?);
    let approvals = Arc::new(Approvals::open(
        &config.holds.store,
        cgroups.clone(),
        config.holds.timeout,
        config.holds.deny,
    )?);
    approvals.set_audit(audit.clone());
    approvals.audit_missing();
    let (seed_tx, seed_rx) = std::sync::mpsc::channel();
    let core = Arc::new(
        Core::new(config, kernel, active, cgroups, seed_tx, audit).context("the pipeline")?,
    );
    approvals.set_kept(core.kept.clone());
    // Before anything can be held: from here no watched process stops or signals the daemon.
    crate::enforce::standing::start(core.clone())?;
    let stop = crate::enforce::standing::await_stop(core.clone())?;
    let enforce = Enforce::new(core.clone(), approvals)?;
    let shared = Arc::new(State {
        enforce: enforce.clone(),
    });
    // Sessions of an earlier daemon (its cgroups are still there): watched again, same trace
    // ids; frozen ones stay frozen until their hold is decided.
    crate::enforce::decide::adopt_sessions(&enforce);
    crate::enforce::decide::restore_kill_switch(&enforce);
    tokio::spawn(crate::enforce::holds::deadlines(shared.approvals.clone()));
    tokio::spawn(crate::enforce::decide::unanswered_gates(enforce.clone()));
    tokio::spawn(crate::enforce::holds::prune(
        shared.approvals.clone(),
        shared.config.holds.retention,
    ));
    let _protect = if shared.config.holds.enabled {
        crate::enforce::protect::Protect::start(enforce.clone())?
    } else {
        None
    };
    tokio::spawn(crate::enforce::decide::sweep_cgroups(enforce.clone()));
    tracing::info!(version = %shared.policy.load().policy.version, rules = shared.policy.load().policy.rules.len(), "policy loaded");
    let _watcher = reload::watch_files(core.clone())?;
    crate::pipeline::identity::spawn_refresh(core.clone())?;
    intake::spawn(rings, core.clone(), seed_rx)?;
    let listener = control::server::bind(&shared.config)?;
    tracing::info!(
        socket = %shared.config.daemon.socket.display(),
        "watcher ready"
    );
    start_api(&shared).await?;
    let server = tokio::spawn(control::server::serve(listener, shared.clone()));
    // Tests and supervisors wait for this line instead of polling: every socket listens.
    println!("ready {}", shared.config.daemon.socket.display());

    tokio::select! {
        _ = stop => {},
        r = server => {
            // The server loops until the daemon stops; it ending is a bug, not a shutdown.
            r?;
            return Err(anyhow::anyhow!("the control socket server stopped"));
        }
    }
    tracing::info!("shutting down");
    // Running sessions: frozen for the next daemon, or left running (`[daemon] on_stop`).
    crate::enforce::standing::on_stop(&enforce);
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
