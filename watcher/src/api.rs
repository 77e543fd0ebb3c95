//! The HTTP API: holds, approve/deny, the kill-switch, and an Alertmanager receiver. Served on
//! a unix socket (callers identified by their kernel credentials, like the control socket) and,
//! when configured, on a loopback port (a bearer token from a file only root and the approver
//! group can read). A process of a watched session is refused on both, whatever it presents.
use std::{path::Path, sync::Arc};

use anyhow::{anyhow, Context as _};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UnixListener},
};

use crate::{
    approvals::HoldState,
    daemon::Shared,
    killswitch::HaltMode,
    model::ids::{HoldId, TraceId},
};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// Who is calling.
enum Caller {
    /// A unix-socket peer that passed the credential check: its user name.
    User(String),
    /// A loopback peer, to be checked against the token.
    Token,
}

pub async fn serve_unix(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                crate::control::server::accept_failed("API socket", &e, &shared).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let cred = match stream.peer_cred() {
                Ok(c) => c,
                Err(_) => return,
            };
            let refused = if !crate::control::server::authorized(&cred, &shared.config) {
                Some("permission denied: the API is for root and the approver group")
            } else if cred
                .pid()
                .is_some_and(|p| crate::control::server::in_a_session(&shared, p as u32))
            {
                Some("permission denied: this process is part of a watched session")
            } else {
                None
            };
            let who = crate::control::server::user_name(cred.uid());
            let _ = handle(stream, &shared, refused, Caller::User(who), None).await;
        });
    }
}

pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, token: String) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                crate::control::server::accept_failed("API port", &e, &shared).await;
                continue;
            }
        };
        let (shared, token) = (shared.clone(), token.clone());
        tokio::spawn(async move {
            let local = stream.local_addr().ok();
            // The peer's pid, from the kernel's socket table: a watched process is refused
            // even with the token.
            let watched = tokio::task::spawn_blocking({
                let shared = shared.clone();
                move || {
                    local
                        .and_then(|l| tcp_peer_pid(peer, l))
                        .is_some_and(|pid| crate::control::server::in_a_session(&shared, pid))
                }
            })
            .await
            .unwrap_or(true);
            let refused =
                watched.then_some("permission denied: this process is part of a watched session");
            let _ = handle(stream, &shared, refused, Caller::Token, Some(&token)).await;
        });
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_request<S: AsyncReadExt + Unpin>(s: &mut S) -> anyhow::Result<Request> {
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 4096];
    let head_len = loop {
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(anyhow!("connection closed before the request ended"));
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(anyhow!("request head over {MAX_HEAD} bytes"));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..head_len])
        .context("malformed HTTP request")?;
    let method = req.method.unwrap_or("").to_string();
    let path = req.path.unwrap_or("").to_string();
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    if len > MAX_BODY {
        return Err(anyhow!("request body over {MAX_BODY} bytes"));
    }
    let mut body = buf[head_len..].to_vec();
    while body.len() < len {
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    body.truncate(len);
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

async fn respond<S: AsyncWriteExt + Unpin>(
    s: &mut S,
    status: u16,
    body: &Value,
) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(body)?;
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&text).await?;
    s.flush().await?;
    Ok(())
}

async fn handle<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    mut s: S,
    shared: &Arc<Shared>,
    refused: Option<&str>,
    caller: Caller,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let req = match read_request(&mut s).await {
        Ok(r) => r,
        Err(e) => return respond(&mut s, 400, &json!({"error": e.to_string()})).await,
    };
    if let Some(why) = refused {
        tracing::warn!(path = %req.path, "API request refused: {why}");
        return respond(&mut s, 403, &json!({"error": why})).await;
    }
    let who = match (&caller, token) {
        (Caller::User(u), _) => u.clone(),
        (Caller::Token, Some(t)) => {
            let given = req
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.as_bytes(), t.as_bytes()) {
                return respond(
                    &mut s,
                    401,
                    &json!({"error": "missing or wrong bearer token"}),
                )
                .await;
            }
            match req.header("x-watcher-approver") {
                Some(name) => format!("api token ({name})"),
                None => "api token".into(),
            }
        }
        (Caller::Token, None) => "api".into(),
    };
    let (status, body) = route(shared, &req, who).await;
    respond(&mut s, status, &body).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn route(shared: &Arc<Shared>, req: &Request, who: String) -> (u16, Value) {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return (400, json!({"error": format!("body is not JSON: {e}")})),
        }
    };
    let path = req.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let s = shared.clone();
    let r = tokio::task::spawn_blocking({
        let method = req.method.clone();
        let parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        move || -> anyhow::Result<(u16, Value)> {
            let a = &s.approvals;
            let p: Vec<&str> = parts.iter().map(String::as_str).collect();
            // A hold id in the path is checked before anything looks it up.
            if let ["v1", "holds", id, ..] = p.as_slice() {
                if let Err(e) = HoldId::parse(id) {
                    return Ok((400, json!({"error": e.to_string()})));
                }
            }
            Ok(match (method.as_str(), p.as_slice()) {
                ("GET", ["v1", "holds"]) => {
                    (200, json!({"holds": a.list(Some(HoldState::Pending))?}))
                }
                ("GET", ["v1", "holds", id]) => match a.get(id) {
                    Ok(h) => (200, serde_json::to_value(h)?),
                    Err(e) => (404, json!({"error": e.to_string()})),
                },
                ("POST", ["v1", "holds", id, "approve"]) => {
                    let remember = body["remember"].as_bool().unwrap_or(false);
                    let profile = match body["remember_profile"].as_bool().unwrap_or(false) {
                        true => Some(crate::control::server::profile_of_hold(&s, id)?),
                        false => None,
                    };
                    match a.approve(id, &who, remember, profile) {
                        Ok(h) => (200, serde_json::to_value(h)?),
                        Err(e) => (409, json!({"error": e.to_string()})),
                    }
                }
                ("POST", ["v1", "holds", id, "deny"]) => match a.deny(id, &who) {
                    Ok(h) => (200, serde_json::to_value(h)?),
                    Err(e) => (409, json!({"error": e.to_string()})),
                },
                ("POST", ["v1", "kill-switch", "engage"]) => {
                    let traces = match trace_ids(&body["traces"]) {
                        Ok(t) => t,
                        Err(e) => return Ok((400, json!({"error": e}))),
                    };
                    let all = body["all"].as_bool().unwrap_or(false);
                    let mode = if body["mode"] == "kill" {
                        HaltMode::Kill
                    } else {
                        HaltMode::Freeze
                    };
                    match crate::killswitch::engage(&s, traces, all, mode, &who) {
                        Ok(e) => (200, serde_json::to_value(e)?),
                        Err(e) => (400, json!({"error": format!("{e:#}")})),
                    }
                }
                ("POST", ["v1", "kill-switch", "release"]) => (
                    200,
                    json!({"released": crate::killswitch::release(&s, &who)?}),
                ),
                ("GET", ["v1", "kill-switch"]) => (200, serde_json::to_value(a.kill_switch()?)?),
                ("POST", ["v1", "alertmanager"]) => alertmanager(&s, &body, &who)?,
                (_, ["v1", ..]) => (
                    405,
                    json!({"error": format!("no {method} {}", parts.join("/"))}),
                ),
                _ => (404, json!({"error": "not found; the API lives under /v1"})),
            })
        }
    })
    .await;
    match r {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => (500, json!({"error": format!("{e:#}")})),
        Err(e) => (500, json!({"error": e.to_string()})),
    }
}

/// An Alertmanager webhook: a firing alert with a `trace_id` label engages the kill-switch for
/// that session; `watcher_kill_switch: all` engages it for every session. `watcher_mode: kill`
/// kills instead of freezing. Resolved alerts do nothing (release is a human's call).
fn alertmanager(shared: &Shared, body: &Value, who: &str) -> anyhow::Result<(u16, Value)> {
    let mut traces: Vec<TraceId> = Vec::new();
    let mut all = false;
    let mut kill = false;
    for a in body["alerts"].as_array().into_iter().flatten() {
        if a["status"] != "firing" {
            continue;
        }
        let l = &a["labels"];
        if l["watcher_kill_switch"] == "all" {
            all = true;
        }
        match &l["trace_id"] {
            Value::Null => {}
            Value::String(t) => match TraceId::parse(t) {
                // Alertmanager repeats a session in every alert about it.
                Ok(t) if traces.contains(&t) => {}
                Ok(t) => traces.push(t),
                // One bad label refuses the whole notification: nothing is engaged on a
                // payload that someone may have crafted.
                Err(e) => return Ok((400, json!({"error": format!("label trace_id: {e}")}))),
            },
            other => {
                return Ok((
                    400,
                    json!({"error": format!("label trace_id: not a string: {other}")}),
                ))
            }
        }
        if l["watcher_mode"] == "kill" {
            kill = true;
        }
    }
    if !all && traces.is_empty() {
        return Ok((
            200,
            json!({"engaged": false, "why": "no firing alert names a trace_id or watcher_kill_switch=all"}),
        ));
    }
    let mode = if kill {
        HaltMode::Kill
    } else {
        HaltMode::Freeze
    };
    let by = format!("alertmanager via {who}");
    match crate::killswitch::engage(shared, traces, all, mode, &by) {
        Ok(e) => Ok((200, json!({"engaged": true, "result": e}))),
        Err(e) => Ok((400, json!({"engaged": false, "error": format!("{e:#}")}))),
    }
}

/// The `traces` of a kill-switch request: absent, or a list of trace ids.
fn trace_ids(v: &Value) -> Result<Vec<TraceId>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::String(t) => TraceId::parse(t).map_err(|e| format!("traces[{i}]: {e}")),
                other => Err(format!("traces[{i}]: not a string: {other}")),
            })
            .collect(),
        other => Err(format!("traces: not a list of trace ids: {other}")),
    }
}

/// The pid owning the local end of a loopback TCP connection whose other end is `peer`.
fn tcp_peer_pid(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Option<u32> {
    // The peer's socket has local address = `peer` and remote address = `local`.
    let want_local = format!("{:04X}", peer.port());
    let want_remote = format!("{:04X}", local.port());
    let mut inode = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let lp = f[1].rsplit(':').next().unwrap_or("");
            let rp = f[2].rsplit(':').next().unwrap_or("");
            if lp == want_local && rp == want_remote {
                inode = f[9].parse::<u64>().ok();
                break;
            }
        }
    }
    let needle = format!("socket:[{}]", inode?);
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The API token: read from `path`, or made (random, mode 0640, the approver group's) when
/// missing.
pub fn token(path: &Path, group: Option<u32>) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if t.len() >= 16 {
            return Ok(t);
        }
        return Err(anyhow!(
            "{}: the token is shorter than 16 characters",
            path.display()
        ));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut b = [0u8; 24];
    crate::sessions::fill_random(&mut b);
    let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
    std::fs::write(path, format!("{t}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o640))?;
    if let Some(g) = group {
        std::os::unix::fs::chown(path, Some(0), Some(g))?;
    }
    Ok(t)
}
