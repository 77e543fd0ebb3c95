//! The HTTP API: holds, approve/deny, the kill-switch, and an Alertmanager receiver, on axum
//! (hyper). Served on a unix socket (callers identified by their kernel credentials, like the
//! control socket) and, when configured, on a loopback port (a bearer token from a file only
//! root and the approver group can read). A process of a watched session is refused on both,
//! whatever it presents.
//!
//! The caller is authenticated before anything costly: on the unix socket by its credentials
//! when the connection is accepted, on TCP by the token before the body is read and before the
//! one /proc lookup (is the peer a watched process?). Connections are capped, each serves one
//! request, headers and bodies are bounded and every request has a deadline.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{anyhow, Context as _};
use axum::{
    body::Bytes,
    extract::{Path as UrlPath, Request, State},
    http::{header, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};

use crate::{
    model::{
        hold::{HaltMode, HoldState, Via},
        ids::{HoldId, TraceId},
    },
    state::State as Daemon,
    sys::users::{authorized, user_name},
};

/// What the API asks of the daemon, in the API's own terms (JSON values). The daemon's shared
/// state implements it; the fuzzer drives the same router with a stand-in.
pub trait Backend: Send + Sync + 'static {
    /// Pending holds.
    fn holds(&self) -> anyhow::Result<Value>;
    /// One hold; Err: there is none.
    fn hold(&self, id: &HoldId) -> anyhow::Result<Result<Value, String>>;
    /// Err inside: the decision was refused (decided already, say).
    fn approve(
        &self,
        id: &HoldId,
        who: &str,
        remember: bool,
        remember_profile: bool,
    ) -> anyhow::Result<Result<Value, String>>;
    fn deny(&self, id: &HoldId, who: &str) -> anyhow::Result<Result<Value, String>>;
    fn kill_switch(&self) -> anyhow::Result<Value>;
    /// Err: refused (no such session, nothing named).
    fn engage(
        &self,
        traces: Vec<TraceId>,
        all: bool,
        mode: HaltMode,
        who: &str,
    ) -> Result<Value, String>;
    fn release(&self, who: &str) -> anyhow::Result<Value>;
    /// Whether the other end of a loopback connection is a watched process.
    fn tcp_peer_watched(&self, peer: SocketAddr, local: SocketAddr) -> bool;
    /// Why the processes that wrote a unix-socket request may not make it, if they may not.
    fn senders_refused(&self, senders: &[Option<crate::sys::peer::Sender>]) -> Option<String>;
}

impl Backend for Daemon {
    fn holds(&self) -> anyhow::Result<Value> {
        Ok(json!({"holds": self.approvals.list(Some(HoldState::Pending))?}))
    }

    fn hold(&self, id: &HoldId) -> anyhow::Result<Result<Value, String>> {
        Ok(match self.approvals.get(id.as_str()) {
            Ok(h) => Ok(serde_json::to_value(h)?),
            Err(e) => Err(e.to_string()),
        })
    }

    fn approve(
        &self,
        id: &HoldId,
        who: &str,
        remember: bool,
        remember_profile: bool,
    ) -> anyhow::Result<Result<Value, String>> {
        let profile = match remember_profile {
            true => Some(crate::frontends::control::server::profile_of_hold(
                self,
                id.as_str(),
            )?),
            false => None,
        };
        Ok(
            match self
                .enforce
                .approve(id.as_str(), who, Via::Api, remember, profile)
            {
                Ok(h) => Ok(serde_json::to_value(h)?),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    fn deny(&self, id: &HoldId, who: &str) -> anyhow::Result<Result<Value, String>> {
        Ok(match self.approvals.deny(id.as_str(), who, Via::Api) {
            Ok(h) => Ok(serde_json::to_value(h)?),
            Err(e) => Err(e.to_string()),
        })
    }

    fn kill_switch(&self) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(self.approvals.kill_switch()?)?)
    }

    fn engage(
        &self,
        traces: Vec<TraceId>,
        all: bool,
        mode: HaltMode,
        who: &str,
    ) -> Result<Value, String> {
        crate::enforce::killswitch::engage(self, traces, all, mode, who)
            .map_err(|e| format!("{e:#}"))
            .and_then(|e| serde_json::to_value(e).map_err(|e| e.to_string()))
    }

    fn release(&self, who: &str) -> anyhow::Result<Value> {
        Ok(json!({"released": crate::enforce::killswitch::release(self, who)?}))
    }

    fn tcp_peer_watched(&self, peer: SocketAddr, local: SocketAddr) -> bool {
        crate::frontends::control::server::tcp_peer_in_a_session(self, peer, local)
    }

    fn senders_refused(&self, senders: &[Option<crate::sys::peer::Sender>]) -> Option<String> {
        crate::frontends::control::server::refuse_senders(self, senders)
    }
}

/// Request head (request line and headers), bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Request body, bytes.
pub const MAX_BODY: usize = 1024 * 1024;
/// Connections served at once per listener; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// From accept to the end of the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling, as established for the connection.
#[derive(Clone)]
pub enum Caller {
    /// A unix-socket peer that passed the credential check: its user name, and who wrote the
    /// bytes of the connection (each writer is checked as the peer was, per request).
    User(String, crate::sys::peer::Senders),
    /// A loopback peer: checked against the token on each request, then against the sessions.
    Tcp { peer: SocketAddr, local: SocketAddr },
    /// Refused when the connection was accepted (the reason).
    Refused(&'static str),
}

#[derive(Clone)]
struct Ctx {
    backend: Arc<dyn Backend>,
    caller: Caller,
    token: Option<Arc<String>>,
}

/// The caller's name for the record of who decided, set by `authenticate`.
#[derive(Clone)]
struct Who(String);

pub async fn serve_unix(listener: UnixListener, shared: Arc<Daemon>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                crate::frontends::control::server::accept_failed("API socket", &e, &shared).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(cred) = stream.peer_cred() else { return };
            let Ok((stream, senders)) = crate::sys::peer::SenderStream::new(stream) else {
                return;
            };
            let caller = if !authorized(&cred, &shared.config) {
                Caller::Refused("permission denied: the API is for root and the approver group")
            } else if cred
                .pid()
                .is_some_and(|p| crate::frontends::control::server::in_a_session(&shared, p as u32))
            {
                Caller::Refused("permission denied: this process is part of a watched session")
            } else {
                Caller::User(user_name(cred.uid()), senders)
            };
            serve_connection(stream, router(shared, caller, None)).await;
        });
    }
}

pub async fn serve_tcp(listener: TcpListener, shared: Arc<Daemon>, token: String) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let token = Arc::new(token);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                crate::frontends::control::server::accept_failed("API port", &e, &shared).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let app = router(
            shared.clone(),
            Caller::Tcp { peer, local },
            Some(token.clone()),
        );
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(stream, app).await;
        });
    }
}

/// One request on the connection, within `REQUEST_TIMEOUT`, head at most `MAX_HEAD` bytes.
pub async fn serve_connection<S>(stream: S, app: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    match tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("API connection: {e}"),
        Err(_) => tracing::debug!("API connection: over {REQUEST_TIMEOUT:?}, closed"),
    }
}

/// The API's routes for one connection's caller.
pub fn router(backend: Arc<dyn Backend>, caller: Caller, token: Option<Arc<String>>) -> Router {
    let ctx = Ctx {
        backend,
        caller,
        token,
    };
    Router::new()
        .route("/v1/holds", get(list_holds))
        .route("/v1/holds/{id}", get(show_hold))
        .route("/v1/holds/{id}/approve", post(approve))
        .route("/v1/holds/{id}/deny", post(deny))
        .route("/v1/kill-switch", get(kill_switch_status))
        .route("/v1/kill-switch/engage", post(engage))
        .route("/v1/kill-switch/release", post(release))
        .route("/v1/alertmanager", post(alertmanager_receiver))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(middleware::from_fn_with_state(ctx.clone(), authenticate))
        .with_state(ctx)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

/// Who may call, decided before the body is read or /proc is looked at.
async fn authenticate(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let who = match &ctx.caller {
        Caller::Refused(why) => {
            tracing::warn!(path = %req.uri().path(), "API request refused: {why}");
            return error(StatusCode::FORBIDDEN, *why);
        }
        Caller::User(u, senders) => {
            // The whole request first, then its writers: a passed descriptor's bytes are
            // theirs, whoever connected.
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                let why = format!("request body over {MAX_BODY} bytes, or unreadable");
                return error(StatusCode::PAYLOAD_TOO_LARGE, why);
            };
            let list = std::mem::take(&mut *senders.lock().unwrap_or_else(|e| e.into_inner()));
            let backend = ctx.backend.clone();
            let refused = tokio::task::spawn_blocking(move || backend.senders_refused(&list))
                .await
                .unwrap_or_else(|_| Some("permission denied: the check failed".into()));
            if let Some(why) = refused {
                tracing::warn!(path = %parts.uri.path(), "API request refused: {why}");
                return error(StatusCode::FORBIDDEN, why);
            }
            req = Request::from_parts(parts, axum::body::Body::from(bytes));
            u.clone()
        }
        Caller::Tcp { peer, local } => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            let expected = ctx.token.as_deref().map(String::as_str).unwrap_or("");
            if expected.is_empty() || !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            }
            // Only now the peer's pid (a token leaked into a session must not help it).
            let (backend, peer, local) = (ctx.backend.clone(), *peer, *local);
            let watched =
                tokio::task::spawn_blocking(move || backend.tcp_peer_watched(peer, local))
                    .await
                    .unwrap_or(true);
            if watched {
                let why = "permission denied: this process is part of a watched session";
                tracing::warn!(path = %req.uri().path(), "API request refused: {why}");
                return error(StatusCode::FORBIDDEN, why);
            }
            match req
                .headers()
                .get("x-watcher-approver")
                .and_then(|v| v.to_str().ok())
            {
                Some(name) => format!("api token ({name})"),
                None => "api token".into(),
            }
        }
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_BODY as u64 {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {MAX_BODY} bytes"),
            );
        }
    }
    req.extensions_mut().insert(Who(who));
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("request not done within {REQUEST_TIMEOUT:?}"),
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found; the API lives under /v1")
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("no {method} {}", uri.path()),
    )
}

/// A request refused with 400 and why.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

/// The body as JSON (an empty body is `{}`).
fn json_body(body: &Bytes) -> Result<Value, BadRequest> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| BadRequest(format!("body is not JSON: {e}")))
}

fn hold_id(id: &str) -> Result<HoldId, BadRequest> {
    HoldId::parse(id).map_err(|e| BadRequest(e.to_string()))
}

/// Runs `f` off the async workers (SQLite, cgroup writes, waits for a freeze).
async fn blocking(
    f: impl FnOnce() -> anyhow::Result<(StatusCode, Value)> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok((status, v))) => (status, Json(v)).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `Ok(value)` as 200 and `Err(why)` as `refused`.
fn answer(r: Result<Value, String>, refused: StatusCode) -> (StatusCode, Value) {
    match r {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => (refused, json!({"error": e})),
    }
}

async fn list_holds(State(ctx): State<Ctx>) -> Response {
    blocking(move || Ok((StatusCode::OK, ctx.backend.holds()?))).await
}

async fn show_hold(State(ctx): State<Ctx>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match hold_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    blocking(move || Ok(answer(ctx.backend.hold(&id)?, StatusCode::NOT_FOUND))).await
}

async fn approve(
    State(ctx): State<Ctx>,
    UrlPath(id): UrlPath<String>,
    axum::Extension(Who(who)): axum::Extension<Who>,
    body: Bytes,
) -> Response {
    let (id, body) = match (hold_id(&id), json_body(&body)) {
        (Ok(id), Ok(b)) => (id, b),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let remember = body["remember"].as_bool().unwrap_or(false);
    let remember_profile = body["remember_profile"].as_bool().unwrap_or(false);
    blocking(move || {
        let r = ctx.backend.approve(&id, &who, remember, remember_profile)?;
        Ok(answer(r, StatusCode::CONFLICT))
    })
    .await
}

async fn deny(
    State(ctx): State<Ctx>,
    UrlPath(id): UrlPath<String>,
    axum::Extension(Who(who)): axum::Extension<Who>,
) -> Response {
    let id = match hold_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    blocking(move || Ok(answer(ctx.backend.deny(&id, &who)?, StatusCode::CONFLICT))).await
}

async fn kill_switch_status(State(ctx): State<Ctx>) -> Response {
    blocking(move || Ok((StatusCode::OK, ctx.backend.kill_switch()?))).await
}

async fn engage(
    State(ctx): State<Ctx>,
    axum::Extension(Who(who)): axum::Extension<Who>,
    body: Bytes,
) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let traces = match trace_ids(&body["traces"]) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let all = body["all"].as_bool().unwrap_or(false);
    let mode = if body["mode"] == "kill" {
        HaltMode::Kill
    } else {
        HaltMode::Freeze
    };
    blocking(move || {
        let r = ctx.backend.engage(traces, all, mode, &who);
        Ok(answer(r, StatusCode::BAD_REQUEST))
    })
    .await
}

async fn release(
    State(ctx): State<Ctx>,
    axum::Extension(Who(who)): axum::Extension<Who>,
) -> Response {
    blocking(move || Ok((StatusCode::OK, ctx.backend.release(&who)?))).await
}

/// An Alertmanager webhook: a firing alert with a `trace_id` label engages the kill-switch for
/// that session; `watcher_kill_switch: all` engages it for every session. `watcher_mode: kill`
/// kills instead of freezing. Resolved alerts do nothing (release is a human's call).
async fn alertmanager_receiver(
    State(ctx): State<Ctx>,
    axum::Extension(Who(who)): axum::Extension<Who>,
    body: Bytes,
) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let (traces, all, mode) = match alerts(&body) {
        Ok(Some(x)) => x,
        Ok(None) => {
            return (
                StatusCode::OK,
                Json(json!({"engaged": false, "why": "no firing alert names a trace_id or watcher_kill_switch=all"})),
            )
                .into_response()
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let by = format!("alertmanager via {who}");
    blocking(move || {
        Ok(match ctx.backend.engage(traces, all, mode, &by) {
            Ok(e) => (StatusCode::OK, json!({"engaged": true, "result": e})),
            Err(e) => (
                StatusCode::BAD_REQUEST,
                json!({"engaged": false, "error": e}),
            ),
        })
    })
    .await
}

/// What an Alertmanager notification asks for: the sessions, all, the mode; None: nothing
/// (no firing alert names a session). One bad `trace_id` label refuses the whole
/// notification: nothing is engaged on a payload that someone may have crafted.
fn alerts(body: &Value) -> Result<Option<(Vec<TraceId>, bool, HaltMode)>, String> {
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
            Value::String(t) => {
                let t = TraceId::parse(t).map_err(|e| format!("label trace_id: {e}"))?;
                // Alertmanager repeats a session in every alert about it.
                if !traces.contains(&t) {
                    traces.push(t);
                }
            }
            other => return Err(format!("label trace_id: not a string: {other}")),
        }
        if l["watcher_mode"] == "kill" {
            kill = true;
        }
    }
    if !all && traces.is_empty() {
        return Ok(None);
    }
    let mode = if kill {
        HaltMode::Kill
    } else {
        HaltMode::Freeze
    };
    Ok(Some((traces, all, mode)))
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

/// The API token: read from `path`, or made (random, mode 0640, the approver group's) when
/// missing.
pub fn token(path: &Path, group: Option<u32>) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        // A token others can read is no secret: taken out of their reach before it is used.
        crate::sys::files::close_to_others(path)
            .with_context(|| format!("making {} unreadable by others", path.display()))?;
        let t = t.trim().to_string();
        if t.len() >= 16 {
            return Ok(t);
        }
        return Err(anyhow!(
            "{}: the token is shorter than 16 characters",
            path.display()
        ));
    }
    let mut b = [0u8; 24];
    crate::model::session::fill_random(&mut b);
    let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
    // Created 0640, never wider for an instant: the token decides holds.
    crate::sys::files::write_private(path, format!("{t}\n").as_bytes(), 0o640)
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(g) = group {
        std::os::unix::fs::chown(path, Some(0), Some(g))?;
    }
    Ok(t)
}
