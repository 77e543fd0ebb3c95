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
    approvals::HoldState,
    daemon::Shared,
    killswitch::HaltMode,
    model::ids::{HoldId, TraceId},
};

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
enum Caller {
    /// A unix-socket peer that passed the credential check: its user name.
    User(String),
    /// A loopback peer: checked against the token on each request, then against the sessions.
    Tcp { peer: SocketAddr, local: SocketAddr },
    /// Refused when the connection was accepted (the reason).
    Refused(&'static str),
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    caller: Caller,
    token: Option<Arc<String>>,
}

/// The caller's name for the record of who decided, set by `authenticate`.
#[derive(Clone)]
struct Who(String);

pub async fn serve_unix(listener: UnixListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                crate::control::server::accept_failed("API socket", &e, &shared).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(cred) = stream.peer_cred() else { return };
            let caller = if !crate::control::server::authorized(&cred, &shared.config) {
                Caller::Refused("permission denied: the API is for root and the approver group")
            } else if cred
                .pid()
                .is_some_and(|p| crate::control::server::in_a_session(&shared, p as u32))
            {
                Caller::Refused("permission denied: this process is part of a watched session")
            } else {
                Caller::User(crate::control::server::user_name(cred.uid()))
            };
            let ctx = Ctx {
                shared,
                caller,
                token: None,
            };
            serve_connection(stream, router(ctx)).await;
        });
    }
}

pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, token: String) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let token = Arc::new(token);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                crate::control::server::accept_failed("API port", &e, &shared).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let ctx = Ctx {
            shared: shared.clone(),
            caller: Caller::Tcp { peer, local },
            token: Some(token.clone()),
        };
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(stream, router(ctx)).await;
        });
    }
}

/// One request on the connection, within `REQUEST_TIMEOUT`, head at most `MAX_HEAD` bytes.
async fn serve_connection<S>(stream: S, app: Router)
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

fn router(ctx: Ctx) -> Router {
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
        Caller::User(u) => u.clone(),
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
            let (shared, peer, local) = (ctx.shared.clone(), *peer, *local);
            let watched = tokio::task::spawn_blocking(move || {
                crate::control::server::tcp_peer_in_a_session(&shared, peer, local)
            })
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

async fn list_holds(State(ctx): State<Ctx>) -> Response {
    let a = ctx.shared.approvals.clone();
    blocking(move || {
        Ok((
            StatusCode::OK,
            json!({"holds": a.list(Some(HoldState::Pending))?}),
        ))
    })
    .await
}

async fn show_hold(State(ctx): State<Ctx>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match hold_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let a = ctx.shared.approvals.clone();
    blocking(move || {
        Ok(match a.get(id.as_str()) {
            Ok(h) => (StatusCode::OK, serde_json::to_value(h)?),
            Err(e) => (StatusCode::NOT_FOUND, json!({"error": e.to_string()})),
        })
    })
    .await
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
    let s = ctx.shared.clone();
    blocking(move || {
        let remember = body["remember"].as_bool().unwrap_or(false);
        let profile = match body["remember_profile"].as_bool().unwrap_or(false) {
            true => Some(crate::control::server::profile_of_hold(&s, id.as_str())?),
            false => None,
        };
        Ok(
            match s.approvals.approve(id.as_str(), &who, remember, profile) {
                Ok(h) => (StatusCode::OK, serde_json::to_value(h)?),
                Err(e) => (StatusCode::CONFLICT, json!({"error": e.to_string()})),
            },
        )
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
    let a = ctx.shared.approvals.clone();
    blocking(move || {
        Ok(match a.deny(id.as_str(), &who) {
            Ok(h) => (StatusCode::OK, serde_json::to_value(h)?),
            Err(e) => (StatusCode::CONFLICT, json!({"error": e.to_string()})),
        })
    })
    .await
}

async fn kill_switch_status(State(ctx): State<Ctx>) -> Response {
    let a = ctx.shared.approvals.clone();
    blocking(move || Ok((StatusCode::OK, serde_json::to_value(a.kill_switch()?)?))).await
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
    let s = ctx.shared.clone();
    blocking(
        move || match crate::killswitch::engage(&s, traces, all, mode, &who) {
            Ok(e) => Ok((StatusCode::OK, serde_json::to_value(e)?)),
            Err(e) => Ok((StatusCode::BAD_REQUEST, json!({"error": format!("{e:#}")}))),
        },
    )
    .await
}

async fn release(
    State(ctx): State<Ctx>,
    axum::Extension(Who(who)): axum::Extension<Who>,
) -> Response {
    let s = ctx.shared.clone();
    blocking(move || {
        Ok((
            StatusCode::OK,
            json!({"released": crate::killswitch::release(&s, &who)?}),
        ))
    })
    .await
}

async fn alertmanager_receiver(
    State(ctx): State<Ctx>,
    axum::Extension(Who(who)): axum::Extension<Who>,
    body: Bytes,
) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let s = ctx.shared.clone();
    blocking(move || {
        let (status, v) = alertmanager(&s, &body, &who)?;
        Ok((StatusCode::from_u16(status)?, v))
    })
    .await
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
