//! Control socket server.
use std::{
    os::unix::fs::PermissionsExt,
    sync::{atomic::Ordering, Arc},
};

use anyhow::{anyhow, Context as _};
use tokio::{
    io::AsyncWriteExt,
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};
use watcher_common::{EventKind, Watch};

use crate::{
    config::Config,
    model::{
        event::{Detail, Event},
        hold::{HoldState, Via},
        protocol::{
            HoldsStatus, KillSwitchOp, KindCount, PidsLimitStatus, PolicyStatus, Reply, Request,
            Skipped, Status, MAX_LINE,
        },
        session::{new_session_id, new_trace_id, Session, SessionState},
    },
    pipeline::Seed,
    state::State,
    sys::{
        procfs::{descendants, ppid_of},
        users::{authorized, group_id, user_name},
    },
};

/// How long a client has to send its request line once connected.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn bind(cfg: &Config) -> anyhow::Result<UnixListener> {
    bind_at(&cfg.daemon.socket, cfg)
}

/// A unix socket at `path`, mode 0660, owned by root and the approver group.
pub fn bind_at(path: &std::path::Path, cfg: &Config) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(anyhow!(
                "{} is in use: another watcher daemon is running",
                path.display()
            ));
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // On the listener: a client's bytes carry its credentials only if the receiving socket
    // asked for them when they were sent, and an accepted socket inherits this.
    crate::sys::peer::pass_credentials(&listener)
        .with_context(|| format!("SO_PASSCRED on {}", path.display()))?;
    let gid = match &cfg.daemon.approver_group {
        Some(g) => Some(group_id(g)?),
        None => None,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, Some(0), Some(gid))?;
    }
    Ok(listener)
}

pub async fn serve(listener: UnixListener, shared: Arc<State>) {
    // One descriptor kept spare: out of descriptors, the server frees it to accept the waiting
    // client and tell it why, instead of leaving it hanging in the backlog.
    let mut spare = std::fs::File::open("/dev/null").ok();
    loop {
        // Another thread may have taken the descriptor the spare gave back: take one again as
        // soon as any is free.
        if spare.is_none() {
            spare = std::fs::File::open("/dev/null").ok();
        }
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // With the spare descriptor, each failed accept still serves the waiting
                // client (it is told why), so there is no spin to pause for.
                if out_of_descriptors(&e) && spare.is_some() {
                    count_accept_error("control socket", &e, &shared);
                    drop(spare.take());
                    refuse_busy(&listener).await;
                    spare = std::fs::File::open("/dev/null").ok();
                } else {
                    accept_failed("control socket", &e, &shared).await;
                }
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, shared).await {
                tracing::debug!("control client: {e:#}");
            }
        });
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Accepts the client waiting at the head of the backlog and tells it the daemon is out of
/// file descriptors.
async fn refuse_busy(listener: &UnixListener) {
    let wait = std::time::Duration::from_millis(100);
    if let Ok(Ok((mut s, _))) = tokio::time::timeout(wait, listener.accept()).await {
        let reply = Reply::Error {
            error: "the watcher daemon is out of file descriptors; try again".into(),
        };
        let _ = tokio::time::timeout(wait, write_json(&mut s, &reply)).await;
    }
}

/// A failed accept is logged and counted, and never ends a listener. Out of descriptors or
/// memory, the listener pauses briefly: accepting again at once would only spin on the same
/// error.
pub async fn accept_failed(what: &str, e: &std::io::Error, shared: &State) {
    count_accept_error(what, e, shared);
    if out_of_descriptors(e) || matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM)) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Logs and counts a failed accept.
fn count_accept_error(what: &str, e: &std::io::Error, shared: &State) {
    let n = shared
        .counters
        .accept_errors
        .fetch_add(1, Ordering::Relaxed);
    // The first of a burst at warn, the rest at debug: an EMFILE storm must not flood the log.
    if n.is_power_of_two() || n == 0 {
        tracing::warn!(errors = n + 1, "{what}: accept failed: {e}");
    } else {
        tracing::debug!(errors = n + 1, "{what}: accept failed: {e}");
    }
}

async fn write_json<T: serde::Serialize>(
    w: &mut (impl AsyncWriteExt + Unpin),
    v: &T,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    Ok(())
}

/// Why the writers of a request may not make it, if they may not: each process that sent a
/// byte of it must pass the checks the connecting process passed, and still be there to be
/// checked (one that exited cannot be told from a watched one).
pub fn refuse_senders(
    shared: &State,
    senders: &[Option<crate::sys::peer::Sender>],
) -> Option<String> {
    for s in senders {
        // pid 0: the kernel recorded no sender (sent before credentials were asked for).
        let Some(s) = s.filter(|s| s.pid != 0) else {
            return Some("permission denied: the request came with no credentials".into());
        };
        if !crate::sys::users::authorized_ids(s.uid, s.gid, Some(s.pid), &shared.config) {
            return Some(
                "permission denied: the control socket is for root and the approver group".into(),
            );
        }
        if !std::path::Path::new(&format!("/proc/{}", s.pid)).exists() {
            return Some("permission denied: the process that wrote the request is gone".into());
        }
        if in_a_session(shared, s.pid) {
            tracing::warn!(
                pid = s.pid,
                "control request written by a watched process refused"
            );
            return Some("permission denied: this process is part of a watched session".into());
        }
    }
    None
}

async fn handle(mut stream: UnixStream, shared: Arc<State>) -> anyhow::Result<()> {
    let cred = stream.peer_cred()?;
    if !authorized(&cred, &shared.config) {
        write_json(
            &mut stream,
            &Reply::Error {
                error: "permission denied: the control socket is for root and the approver group"
                    .into(),
            },
        )
        .await?;
        return Ok(());
    }
    // A process of a watched session may not use the control socket at all, root or not: it
    // could approve its own hold, resume itself or start a session outside its own.
    if let Some(pid) = cred.pid() {
        if in_a_session(&shared, pid as u32) {
            tracing::warn!(pid, "control request from a watched process refused");
            write_json(
                &mut stream,
                &Reply::Error {
                    error: "permission denied: this process is part of a watched session".into(),
                },
            )
            .await?;
            return Ok(());
        }
    }
    let who = user_name(cred.uid());
    let (line, senders) = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        crate::sys::peer::read_line(&stream, MAX_LINE),
    )
    .await
    {
        Err(_) => {
            let error = format!("no request line within {REQUEST_TIMEOUT:?}");
            return write_json(&mut stream, &Reply::Error { error }).await;
        }
        Ok(Err(e)) => {
            let error = format!("reading the request: {e}");
            return write_json(&mut stream, &Reply::Error { error }).await;
        }
        Ok(Ok(r)) => r,
    };
    // Removing the watcher (`retire`) is root's act, not an approver's: every writer is root.
    let by_root = cred.uid() == 0 && senders.iter().all(|s| s.is_some_and(|s| s.uid == 0));
    let s = shared.clone();
    let refused = tokio::task::spawn_blocking(move || refuse_senders(&s, &senders)).await?;
    if let Some(error) = refused {
        return write_json(&mut stream, &Reply::Error { error }).await;
    }
    let req = match crate::model::protocol::parse_request(&line) {
        Ok(req) => req,
        Err(error) => return write_json(&mut stream, &Reply::Error { error }).await,
    };
    let (_r, mut w) = stream.into_split();
    match req {
        Request::Status => {
            // The kernel maps, SQLite and /proc: off the async workers, which run intake.
            let s = shared.clone();
            let st = tokio::task::spawn_blocking(move || status(&s)).await?;
            write_json(&mut w, &Reply::Status(Box::new(st))).await
        }
        Request::Events { follow, trace } => {
            stream_events(&mut w, &shared, follow, trace, false).await
        }
        Request::Findings { follow, trace } => {
            stream_events(&mut w, &shared, follow, trace, true).await
        }
        Request::Holds { all } => {
            let state = (!all).then_some(HoldState::Pending);
            let a = shared.approvals.clone();
            let reply = match tokio::task::spawn_blocking(move || a.list(state)).await? {
                Ok(holds) => Reply::Holds { holds },
                Err(e) => Reply::Error {
                    error: e.to_string(),
                },
            };
            write_json(&mut w, &reply).await
        }
        Request::ShowHold { id } => {
            let a = shared.approvals.clone();
            let reply = match tokio::task::spawn_blocking(move || a.get(id.as_str())).await? {
                Ok(h) => Reply::Hold { hold: Box::new(h) },
                Err(e) => Reply::Error {
                    error: e.to_string(),
                },
            };
            write_json(&mut w, &reply).await
        }
        Request::Approve {
            id,
            remember,
            remember_profile,
        } => {
            let a = shared.enforce.clone();
            let profile = match remember_profile {
                true => match profile_of_hold(&shared, id.as_str()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        return write_json(
                            &mut w,
                            &Reply::Error {
                                error: e.to_string(),
                            },
                        )
                        .await;
                    }
                },
                false => None,
            };
            let r = tokio::task::spawn_blocking(move || {
                a.approve(id.as_str(), &who, Via::Cli, remember, profile)
            })
            .await?;
            let reply = match r {
                Ok(h) => {
                    tracing::warn!(hold = %h.id, by = ?h.decided_by, "hold approved: session resumed");
                    Reply::Hold { hold: Box::new(h) }
                }
                Err(e) => Reply::Error {
                    error: e.to_string(),
                },
            };
            write_json(&mut w, &reply).await
        }
        Request::Deny { id } => {
            let a = shared.approvals.clone();
            let r =
                tokio::task::spawn_blocking(move || a.deny(id.as_str(), &who, Via::Cli)).await?;
            let reply = match r {
                Ok(h) => {
                    tracing::warn!(hold = %h.id, by = ?h.decided_by, result = ?h.result, "hold denied");
                    Reply::Hold { hold: Box::new(h) }
                }
                Err(e) => Reply::Error {
                    error: e.to_string(),
                },
            };
            write_json(&mut w, &reply).await
        }
        Request::KillSwitch {
            op,
            traces,
            all,
            mode,
        } => {
            let s = shared.clone();
            let r = tokio::task::spawn_blocking(move || -> anyhow::Result<Reply> {
                let (engaged, released) = match op {
                    KillSwitchOp::Engage => (
                        Some(crate::enforce::killswitch::engage(
                            &s,
                            traces,
                            all,
                            mode.unwrap_or(crate::model::hold::HaltMode::Freeze),
                            &who,
                        )?),
                        Vec::new(),
                    ),
                    KillSwitchOp::Release => (None, crate::enforce::killswitch::release(&s, &who)?),
                    KillSwitchOp::Status => (None, Vec::new()),
                };
                Ok(Reply::KillSwitch {
                    kill_switch: s.approvals.kill_switch()?,
                    engaged,
                    released,
                })
            })
            .await?;
            write_json(&mut w, &reply_of(r)).await
        }
        Request::Retire { stop } => {
            if !by_root {
                let error = "permission denied: only root may retire the watcher".to_string();
                return write_json(&mut w, &Reply::Error { error }).await;
            }
            let (s, by) = (shared.clone(), format!("{who} (watcher retire)"));
            let (denied, left_frozen) = tokio::task::spawn_blocking(move || {
                crate::enforce::standing::retire(&s.enforce, &by)
            })
            .await?;
            write_json(
                &mut w,
                &Reply::Retired {
                    denied,
                    left_frozen,
                },
            )
            .await?;
            if stop {
                // The stop a service manager would send, from the daemon itself (the signal
                // thread obeys it: the sender is not a watched process).
                // SAFETY: kill(2) of this process.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            }
            Ok(())
        }
        Request::Reload => {
            let s = shared.clone();
            let reply = match tokio::task::spawn_blocking(move || s.reload("watcher rules reload"))
                .await?
            {
                Ok((policy_version, rules)) => Reply::Reloaded {
                    policy_version,
                    rules,
                },
                Err(e) => Reply::Error {
                    error: format!("rules not reloaded, the running policy stays in force: {e}"),
                },
            };
            write_json(&mut w, &reply).await
        }
        Request::Launch { profile, scope } => {
            let reply = match cred.pid() {
                Some(pid) => {
                    let s = shared.clone();
                    tokio::task::spawn_blocking(move || {
                        start_session(&s, pid as u32, profile, scope, "launch")
                    })
                    .await?
                }
                None => Err(anyhow!("cannot tell the caller's pid")),
            };
            write_json(&mut w, &reply_of(reply)).await
        }
        Request::Attach {
            pid,
            profile,
            scope,
        } => {
            let s = shared.clone();
            let caller = cred.uid();
            let reply = tokio::task::spawn_blocking(move || {
                attachable(&s, pid, caller)?;
                start_session(&s, pid, profile, scope, "attach")
            })
            .await?;
            write_json(&mut w, &reply_of(reply)).await
        }
        Request::Baseline {
            op,
            profile,
            mode,
            trace,
            import,
        } => {
            let s = shared.clone();
            let reply = tokio::task::spawn_blocking(move || {
                super::profiles::handle(&s, op, profile, mode, trace, import, &who)
            })
            .await?;
            write_json(&mut w, &reply).await
        }
    }
}

fn reply_of(r: anyhow::Result<Reply>) -> Reply {
    r.unwrap_or_else(|e| Reply::Error {
        error: format!("{e:#}"),
    })
}

/// The daemon's state as `watcher status` shows it (and `/metrics` renders it).
pub fn status(shared: &State) -> Status {
    let kernel = shared.kernel.lock().unwrap_or_else(|e| e.into_inner());
    let drops = kernel.drops();
    let per_type = EventKind::ALL
        .iter()
        .map(|k| {
            (
                k.name().to_string(),
                KindCount {
                    events: shared.counters.events[*k as usize].load(Ordering::Relaxed),
                    drops: drops[*k as usize],
                },
            )
        })
        .collect();
    let mut sessions = shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .all();
    for s in &mut sessions {
        s.state = if s.ended.is_some() {
            SessionState::Ended
        } else if shared.approvals.pending_for(&s.trace_id).is_some() {
            SessionState::Held
        } else if shared.cgroups.is_frozen(&s.trace_id) {
            SessionState::Frozen
        } else {
            SessionState::Running
        };
    }
    let (p50, p99) = shared
        .latency
        .lock()
        .map(|h| (h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
        .unwrap_or((0, 0));
    let kernel_watched = kernel.watched_pids();
    let programs = kernel.program_stats();
    Status {
        programs,
        hooks_missing: kernel.hooks_missing.clone(),
        pids_limit: shared.cgroups.pids_limit().map(|l| PidsLimitStatus {
            max: l.max,
            place: l.describe(),
        }),
        processes_watched: kernel_watched.len(),
        sessions,
        kernel_watched,
        per_type,
        malformed_records: shared.counters.malformed.load(Ordering::Relaxed),
        ring_fill_ratio: kernel.ring_fill(),
        client_lag: shared.counters.client_lag.load(Ordering::Relaxed),
        accept_errors: shared.counters.accept_errors.load(Ordering::Relaxed),
        kernel_failures: kernel.failures(),
        latency_us_p50: p50,
        latency_us_p99: p99,
        gate: gate_status(shared),
        policy: policy_status(shared),
        holds: holds_status(shared),
        profiles: shared.baselines.summaries(),
        audit: shared.audit.status(),
    }
}

/// The profile of the session a hold is about (for `approve --remember-profile`).
pub fn profile_of_hold(shared: &State, id: &str) -> anyhow::Result<String> {
    let h = shared.approvals.get(id)?;
    shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .all()
        .into_iter()
        .find(|s| s.trace_id == h.trace_id)
        .and_then(|s| s.profile)
        .ok_or_else(|| {
            anyhow!(
                "session {} has no profile to remember the approval for",
                h.trace_id
            )
        })
}

fn gate_status(shared: &State) -> crate::model::protocol::GateStatus {
    let (p50, p99) = shared
        .gate_latency
        .lock()
        .map(|h| (h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
        .unwrap_or((0, 0));
    let active = shared.policy.load();
    let g = &active.gate.set;
    let every = [
        (watcher_common::GATE_EXEC, "exec"),
        (watcher_common::GATE_OPEN, "open"),
        (watcher_common::GATE_CONNECT, "connect"),
    ]
    .iter()
    .filter(|(k, _)| g.all & k != 0)
    .map(|(_, n)| n.to_string())
    .collect();
    crate::model::protocol::GateStatus {
        gated: shared.counters.gated.load(Ordering::Relaxed),
        unanswered: shared.counters.gate_unanswered.load(Ordering::Relaxed),
        lost_holds: shared.counters.lost_holds.load(Ordering::Relaxed),
        latency_us_p50: p50,
        latency_us_p99: p99,
        entries: g.comm.len() + g.prefix.len() + g.suffix.len(),
        every,
    }
}

fn holds_status(shared: &State) -> HoldsStatus {
    let (p50, p99) = shared
        .hold_latency
        .lock()
        .map(|h| (h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
        .unwrap_or((0, 0));
    HoldsStatus {
        enabled: shared.config.holds.enabled,
        pending: shared
            .approvals
            .list(Some(HoldState::Pending))
            .map(|v| v.len())
            .unwrap_or(0),
        opened: shared.counters.holds.load(Ordering::Relaxed),
        kill_switch: shared.approvals.kill_switch().unwrap_or_default(),
        freeze_us_p50: p50,
        freeze_us_p99: p99,
        protected_files: shared.counters.protected_files.load(Ordering::Relaxed),
        guarded_files: shared.counters.guarded_files.load(Ordering::Relaxed),
    }
}

/// Whether `pid` belongs to a watched session: in the kernel's map, or in a session cgroup.
pub fn in_a_session(shared: &State, pid: u32) -> bool {
    if shared
        .kernel
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_watched(pid)
    {
        return true;
    }
    crate::pipeline::tamper::session_of(shared, pid).is_some()
}

/// Whether the process at the other end of a loopback TCP connection (`peer` -> `local`) is
/// part of a watched session. The kernel's socket table gives the peer socket's inode; only the
/// watched processes' descriptors are then searched for it, not every process on the host.
pub fn tcp_peer_in_a_session(
    shared: &State,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
) -> bool {
    let tables = [procfs::net::tcp(), procfs::net::tcp6()];
    let inode = tables
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.local_address == peer && e.remote_address == local)
        .map(|e| e.inode);
    let Some(inode) = inode else {
        // Gone already, or not in the table: nothing to refuse it by, and nothing to answer.
        return false;
    };
    let mut pids = shared
        .kernel
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .watched_pids();
    let cg = &shared.approvals.cgroups;
    for t in cg.sessions() {
        pids.extend(cg.pids(&t));
    }
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter().any(|pid| {
        procfs::process::Process::new(pid as i32)
            .and_then(|p| p.fd())
            .map(|fds| {
                fds.flatten().any(
                    |fd| matches!(fd.target, procfs::process::FDTarget::Socket(i) if i == inode),
                )
            })
            .unwrap_or(false)
    })
}

fn policy_status(shared: &State) -> PolicyStatus {
    let active = shared.policy.load();
    let c = &shared.counters;
    PolicyStatus {
        version: active.policy.version.clone(),
        rules: active.policy.rules.len(),
        source: shared
            .config
            .rules
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<shipped pack>".into()),
        findings: c.findings.load(Ordering::Relaxed),
        reloads: c.reloads.load(Ordering::Relaxed),
        reload_errors: c.reload_errors.load(Ordering::Relaxed),
        last_error: shared
            .rules_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        kernel_exec: active.kernel.exec.len(),
        kernel_open: active.kernel.open.len(),
        kernel_deny: active.kernel.deny.len(),
    }
}

/// Refuses to attach a tree that holds PID 1, the daemon or its guardian (a session would
/// freeze or kill them), or, for a caller other than root, a process of another user.
fn attachable(shared: &State, pid: u32, caller_uid: u32) -> anyhow::Result<()> {
    let tree: Vec<u32> = std::iter::once(pid).chain(descendants(pid)).collect();
    if let Some(p) = tree.iter().find(|p| **p == 1) {
        return Err(anyhow!(
            "attach {pid}: its tree holds PID 1 (pid {p}); refused"
        ));
    }
    if let Some(p) = tree.iter().find(|p| shared.is_guarded(**p)) {
        return Err(anyhow!(
            "attach {pid}: its tree holds the watcher itself (pid {p}); refused"
        ));
    }
    if caller_uid != 0 {
        if let Some(p) = tree
            .iter()
            .find(|p| crate::sys::procfs::uid_of(**p) != caller_uid)
        {
            return Err(anyhow!(
                "attach {pid}: process {p} of its tree is not yours (uid {}); refused",
                crate::sys::procfs::uid_of(*p)
            ));
        }
    }
    Ok(())
}

fn start_session(
    shared: &State,
    pid: u32,
    profile: Option<String>,
    scope: Option<crate::model::scope::Scope>,
    how: &str,
) -> anyhow::Result<Reply> {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(anyhow!("no process {pid}"));
    }
    if let Some(p) = &profile {
        crate::model::baseline::valid_profile_name(p).map_err(|e| anyhow!("--profile: {e}"))?;
    }
    // The scope is checked whole before anything is watched: a bad entry starts nothing.
    let scope = match scope {
        Some(s) => Some(super::profiles::pinned_scope(
            shared,
            pid,
            profile.as_deref(),
            s,
        )?),
        None => None,
    };
    let session_id = new_session_id();
    let trace_id = new_trace_id();
    let watch = Watch {
        session_id,
        profile: 0,
        ppid: 0,
    };
    let seeds = shared
        .seeds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let kernel = || shared.kernel.lock().unwrap_or_else(|e| e.into_inner());
    // Register with intake before the kernel can emit a record for the process.
    let seed = |p: u32| Seed {
        pid: p,
        ppid: ppid_of(p),
        session_id,
        cwd: std::fs::read_link(format!("/proc/{p}/cwd")).ok(),
    };
    {
        let mut k = kernel();
        if k.watched.get(&pid, 0).is_ok() {
            return Err(anyhow!("process {pid} is already watched"));
        }
        let _ = seeds.send(seed(pid));
        k.watch(pid, watch)?;
    }
    let mut pids = vec![pid];
    // Children forked from now on are added by the kernel; catch the ones that already exist,
    // repeating until a pass finds nothing new (a child may fork while we walk). The walk reads
    // /proc without the kernel lock, which intake and status need too.
    loop {
        let mut new = 0;
        for child in descendants(pid) {
            if !pids.contains(&child) {
                let _ = seeds.send(seed(child));
                let mut k = kernel();
                if k.watched.get(&child, 0).is_err() {
                    k.watch(child, watch)?;
                }
                pids.push(child);
                new += 1;
            }
        }
        if new == 0 {
            break;
        }
    }
    // The session's own cgroup: a hold freezes it whole, a deny kills it whole.
    shared.session_cgroup(&trace_id, &pids);
    let now = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    let session = Session {
        profile: profile.clone(),
        processes: pids.len() as u32,
        cgroup_id: shared.approvals.cgroups.id(&trace_id),
        workdir: scope
            .as_ref()
            .and_then(|s| s.scope.workdir.clone())
            .or_else(|| crate::sys::procfs::cwd(pid)),
        scope: scope.as_ref().map(|s| s.scope.clone()),
        ..Session::new(trace_id.clone(), session_id, how, pid, now)
    };
    shared.audit_session_start(&session);
    shared.approvals.remember_session(&session);
    // A session in a mount namespace of its own: the guarded files as it names them are in
    // the gate before its command runs, not at the next refresh.
    if crate::sys::procfs::mount_ns(pid) != crate::sys::procfs::mount_ns(std::process::id()) {
        shared.refresh_inodes();
    }
    shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .start(session);
    let scoped = scope.is_some();
    if let Some(s) = scope {
        tracing::info!(%trace_id, scope = %s.scope.summary(), "task scope pinned");
        shared.scopes.set(session_id, s);
    }
    // Before the reply: the command must not run one instruction ungated.
    if shared.session_enforced(profile.as_deref(), scoped) {
        shared.gate_enforced_session(session_id);
    }
    tracing::info!(%trace_id, pid, how, "session started");
    let mut guarded: Vec<u32> = std::iter::once(std::process::id())
        .chain(
            shared
                .guarded
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied(),
        )
        .collect();
    guarded.sort_unstable();
    guarded.dedup();
    Ok(Reply::Started {
        trace_id,
        pids,
        guarded,
    })
}

async fn stream_events(
    w: &mut (impl AsyncWriteExt + Unpin),
    shared: &State,
    follow: bool,
    trace: Option<crate::model::ids::TraceId>,
    findings_only: bool,
) -> anyhow::Result<()> {
    let keep = |e: &Event| {
        trace.as_ref().is_none_or(|t| e.trace_id == t.as_str())
            && (!findings_only || matches!(e.detail, Detail::Finding(_)))
    };
    // Subscribe before copying the backlog so nothing falls between the two.
    let mut rx = shared.live.subscribe();
    let source = if findings_only {
        &shared.findings
    } else {
        &shared.recent
    };
    let backlog: Vec<_> = source
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let last_seq = backlog.last().map(|e| e.seq);
    for ev in backlog.iter().filter(|e| keep(e)) {
        write_json(w, ev.as_ref()).await?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        match rx.recv().await {
            Ok(ev) => {
                // Events published between subscribe and the backlog copy are in both.
                if last_seq.is_some_and(|l| ev.seq <= l) {
                    continue;
                }
                if keep(&ev) {
                    write_json(w, ev.as_ref()).await?;
                }
            }
            Err(RecvError::Lagged(n)) => {
                shared.counters.client_lag.fetch_add(n, Ordering::Relaxed);
                write_json(w, &Skipped { skipped: n }).await?;
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}
