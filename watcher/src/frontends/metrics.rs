//! `/metrics` for Prometheus (`[metrics] listen`, default `127.0.0.1:9740`), on the API's HTTP
//! stack. Every scrape builds the metrics from the same snapshot as `watcher status` and the
//! daemon's histograms: nothing is counted per event for it. No label is ever a pid, a path or
//! a trace id: types, rules, detectors, outcomes, profiles and programs are bounded sets.
use std::sync::Arc;

use axum::{extract::State as Ax, http::header, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, MetricType},
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;

use crate::{model::hold::HoldState, state::State};

type Labels = Vec<(&'static str, String)>;

/// Serves `/metrics` until the daemon stops.
pub async fn serve(listener: TcpListener, shared: Arc<State>) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(shared.clone());
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                crate::frontends::control::server::accept_failed("metrics port", &e, &shared).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(crate::frontends::api::serve_connection(stream, app));
    }
}

/// OpenMetrics to a scraper that asks for it (Prometheus does), else the Prometheus text
/// format 0.0.4 (curl, promtool, older tools).
async fn scrape(
    Ax(shared): Ax<Arc<State>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let open_metrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    match tokio::task::spawn_blocking(move || render(&shared)).await {
        Ok(Ok(text)) if open_metrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            prometheus_text(&text),
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!("rendering /metrics: {e}");
            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn counter(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    match unit {
        Some(u) => r.register_with_unit(name, help, u, c),
        None => r.register(name, help, c),
    }
}

fn gauge(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, v: f64) {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(v);
    match unit {
        Some(u) => r.register_with_unit(name, help, u, g),
        None => r.register(name, help, g),
    }
}

fn counters(
    r: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) {
    let f = Family::<Labels, Counter<u64>>::default();
    for (labels, v) in rows {
        f.get_or_create(&labels).inc_by(v);
    }
    match unit {
        Some(u) => r.register_with_unit(name, help, u, f),
        None => r.register(name, help, f),
    }
}

fn gauges(r: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, i64)>) {
    let f = Family::<Labels, Gauge>::default();
    for (labels, v) in rows {
        f.get_or_create(&labels).set(v);
    }
    r.register(name, help, f);
}

/// A histogram read from one of the daemon's HDR histograms (microseconds), in seconds.
#[derive(Debug)]
struct Hdr {
    name: &'static str,
    help: &'static str,
    sum: f64,
    count: u64,
    /// (upper bound in seconds, observations in this bucket).
    buckets: Vec<(f64, u64)>,
}

/// Bucket bounds, seconds: 10 µs to an hour (a person's answer to a hold takes minutes).
const BOUNDS: [f64; 18] = [
    1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 1.0, 10.0, 60.0,
    600.0, 1800.0, 3600.0,
];

impl Hdr {
    fn of(
        name: &'static str,
        help: &'static str,
        h: &std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    ) -> Hdr {
        let h = h.lock().unwrap_or_else(|e| e.into_inner());
        let mut buckets = Vec::with_capacity(BOUNDS.len() + 1);
        let mut below = 0;
        for b in BOUNDS {
            let upto = h.count_between(0, (b * 1e6) as u64);
            buckets.push((b, upto - below));
            below = upto;
        }
        buckets.push((f64::INFINITY, h.len() - below));
        Hdr {
            name,
            help,
            sum: h.mean() * h.len() as f64 / 1e6,
            count: h.len(),
            buckets,
        }
    }
}

impl Collector for Hdr {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(
            self.name,
            self.help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What one scrape shows: the status snapshot and what `/metrics` adds to it.
pub struct Snapshot {
    pub status: crate::model::protocol::Status,
    pub findings: Vec<([String; 4], u64)>,
    pub decisions: Vec<(String, u64)>,
    /// The oldest pending hold's wait, seconds.
    pub oldest_hold: f64,
    histograms: Vec<Hdr>,
}

impl Snapshot {
    /// A snapshot without the daemon (the benchmark's).
    pub fn of(
        status: crate::model::protocol::Status,
        findings: Vec<([String; 4], u64)>,
        decisions: Vec<(String, u64)>,
        oldest_hold: f64,
    ) -> Snapshot {
        Snapshot {
            status,
            findings,
            decisions,
            oldest_hold,
            histograms: Vec::new(),
        }
    }
}

/// The text of one scrape.
pub fn render(shared: &State) -> Result<String, std::fmt::Error> {
    let c = &shared.counters;
    let snap = Snapshot {
        status: crate::frontends::control::server::status(shared),
        findings: c
            .findings_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect(),
        decisions: c
            .decisions_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect(),
        oldest_hold: shared
            .approvals
            .list(Some(HoldState::Pending))
            .unwrap_or_default()
            .iter()
            .filter_map(|h| humantime::parse_rfc3339(&h.started).ok())
            .filter_map(|t| t.elapsed().ok())
            .map(|d| d.as_secs_f64())
            .fold(0.0, f64::max),
        histograms: vec![
            Hdr::of(
                "pipeline_latency",
                "Kernel timestamp to decision in user space (a sample of events).",
                &shared.latency,
            ),
            Hdr::of(
                "gate_latency",
                "A gated event's stop in the kernel to its verdict.",
                &shared.gate_latency,
            ),
            Hdr::of(
                "hold_freeze_latency",
                "A hold's kernel event to its whole session frozen.",
                &shared.hold_latency,
            ),
            Hdr::of(
                "approval_latency",
                "A hold's start to its decision: approved, denied or timed out.",
                &shared.approvals.decision_latency,
            ),
        ],
    };
    encode(snap)
}

/// The OpenMetrics text of a snapshot.
pub fn encode(snap: Snapshot) -> Result<String, std::fmt::Error> {
    let st = &snap.status;
    let mut root = Registry::default();
    let r = root.sub_registry_with_prefix("watcher");
    counters(
        r,
        "events",
        "Kernel records received, by event type.",
        None,
        st.per_type
            .iter()
            .map(|(k, c)| (vec![("type", k.clone())], c.events)),
    );
    counters(
        r,
        "events_dropped",
        "Kernel ring reservations that failed (events lost before user space), by type.",
        None,
        st.per_type
            .iter()
            .map(|(k, c)| (vec![("type", k.clone())], c.drops)),
    );
    counter(
        r,
        "malformed_records",
        "Kernel records that could not be decoded.",
        None,
        st.malformed_records,
    );
    gauge(
        r,
        "ring_buffer_fill",
        "How full the kernel's record ring is, 0 to 1 (reserved bytes not yet read).",
        // Prometheus's unit for a 0-1 fraction is "ratio" (prometheus-client's `Ratios` is
        // plural).
        Some(Unit::Other("ratio".into())),
        st.ring_fill_ratio,
    );
    counters(
        r,
        "findings",
        "Findings, by detector, rule, severity and action.",
        None,
        snap.findings.iter().map(|([d, rule, sev, act], n)| {
            (
                vec![
                    ("detector", d.clone()),
                    ("rule", rule.clone()),
                    ("severity", sev.clone()),
                    ("action", act.clone()),
                ],
                *n,
            )
        }),
    );
    counters(
        r,
        "decisions",
        "What was done about findings, by outcome.",
        None,
        snap.decisions
            .iter()
            .map(|(o, n)| (vec![("outcome", o.clone())], *n)),
    );
    gauge(
        r,
        "holds_pending",
        "Holds waiting for a human now.",
        None,
        st.holds.pending as f64,
    );
    gauge(
        r,
        "hold_age",
        "How long the oldest pending hold has waited (0 when none).",
        Some(Unit::Seconds),
        snap.oldest_hold,
    );
    let mut by_profile = std::collections::BTreeMap::<String, i64>::new();
    for s in st.sessions.iter().filter(|s| s.ended.is_none()) {
        *by_profile
            .entry(s.profile.clone().unwrap_or_else(|| "none".into()))
            .or_default() += 1;
    }
    gauges(
        r,
        "sessions_active",
        "Sessions being watched, by profile (`none`: no profile).",
        by_profile
            .into_iter()
            .map(|(p, n)| (vec![("profile", p)], n)),
    );
    gauge(
        r,
        "processes_watched",
        "Processes in the kernel's watched map.",
        None,
        st.processes_watched as f64,
    );
    gauge(
        r,
        "kill_switch_engaged",
        "1 while the kill-switch is engaged.",
        None,
        if st.holds.kill_switch.engaged {
            1.0
        } else {
            0.0
        },
    );
    counters(
        r,
        "rule_reloads",
        "Rule reloads, by result.",
        None,
        [
            (vec![("result", "ok".to_string())], st.policy.reloads),
            (
                vec![("result", "error".to_string())],
                st.policy.reload_errors,
            ),
        ],
    );
    // Info metrics as gauges of 1 (the OpenMetrics `info` type is not in Prometheus's text
    // format, which promtool checks).
    gauges(
        r,
        "policy_info",
        "The policy in force.",
        [(vec![("version", st.policy.version.clone())], 1)],
    );
    gauges(
        r,
        "build_info",
        "The watcher build and the kernel it runs on.",
        [(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("kernel", kernel_release()),
            ],
            1,
        )],
    );
    counter(
        r,
        "audit_records",
        "Records in the audit log.",
        None,
        st.audit.records,
    );
    counter(
        r,
        "audit_events_dropped",
        "Events the audit writer's ring had no room for (never a decision).",
        None,
        st.audit.dropped,
    );
    counter(
        r,
        "audit_events_unwritten",
        "Events the audit store refused to take (busy, disk full).",
        None,
        st.audit.unwritten,
    );
    gauge(
        r,
        "audit_records_pending",
        "Findings, decisions and holds waiting in memory for the audit store to take writes again.",
        None,
        st.audit.pending as f64,
    );
    counter(
        r,
        "gate_lost_holds",
        "Sessions held because a record that could have held them was lost (a full ring, a full watched map).",
        None,
        st.gate.lost_holds,
    );
    counter(
        r,
        "audit_checkpoints",
        "Signed checkpoints of the audit log since start.",
        None,
        st.audit.checkpoints,
    );
    counter(
        r,
        "audit_errors",
        "Failed audit writes, encodings and witness posts since start.",
        None,
        st.audit.errors,
    );
    counters(
        r,
        "bpf_program_run",
        "Time in each kernel program (counted while kernel.bpf_stats_enabled=1).",
        Some(Unit::Seconds),
        st.programs
            .iter()
            .map(|p| (vec![("program", p.name.clone())], p.run_ns / 1_000_000_000)),
    );
    counters(
        r,
        "bpf_program_runs",
        "Runs of each kernel program (counted while kernel.bpf_stats_enabled=1).",
        None,
        st.programs
            .iter()
            .map(|p| (vec![("program", p.name.clone())], p.runs)),
    );
    for h in snap.histograms {
        r.register_collector(Box::new(h));
    }
    process(root.sub_registry_with_prefix("process"));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &root)?;
    Ok(out)
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's HELP and TYPE name its
/// `_total` samples, and there is no UNIT or EOF line.
pub fn prometheus_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut help: Option<&str> = None;
    for line in open_metrics.lines() {
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            };
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|r| r.split_once(' '))
                    .map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The daemon's own process, under the usual `process_` names.
fn process(r: &mut Registry) {
    let Ok(me) = procfs::process::Process::myself() else {
        return;
    };
    let tps = procfs::ticks_per_second() as f64;
    if let Ok(stat) = me.stat() {
        let cpu = (stat.utime + stat.stime) as f64 / tps;
        let c = prometheus_client::metrics::counter::Counter::<f64, std::sync::atomic::AtomicU64>::default();
        c.inc_by(cpu);
        r.register_with_unit("cpu", "User and system CPU time.", Unit::Seconds, c);
        gauge(
            r,
            "resident_memory",
            "Resident memory.",
            Some(Unit::Bytes),
            (stat.rss * procfs::page_size()) as f64,
        );
        if let Ok(boot) = procfs::boot_time_secs() {
            gauge(
                r,
                "start_time",
                "Start time since the epoch.",
                Some(Unit::Seconds),
                boot as f64 + stat.starttime as f64 / tps,
            );
        }
    }
    if let Ok(n) = me.fd_count() {
        gauge(r, "open_fds", "Open file descriptors.", None, n as f64);
    }
}

/// `watcher bench-metrics`: one scrape's encoding with 100 sessions (10 profiles) and 10,000
/// watched processes, 60 rules with findings and 40 kernel programs, against encoding the same
/// status snapshot as JSON (`watcher status --json`), interleaved; and the text's size.
pub fn bench(rounds: u32) -> anyhow::Result<()> {
    use crate::model::{
        protocol::{HoldsStatus, KindCount, PolicyStatus, ProgramStat, Status},
        session::{Session, SessionState},
    };
    let status = || Status {
        sessions: (0..100)
            .map(|i| Session {
                trace_id: format!("{i:032x}"),
                session_id: i,
                profile: Some(format!("agent-{}", i % 10)),
                started_by: "launch".into(),
                root_pid: 1000 + i as u32,
                started: "2026-12-02T00:00:00Z".into(),
                processes: 100,
                events: 1_000_000,
                ended: None,
                cgroup_id: Some(i),
                state: SessionState::Running,
                workdir: Some("/work/repo".into()),
                scope: None,
            })
            .collect(),
        processes_watched: 10_000,
        kernel_watched: (0..10_000).collect(),
        per_type: watcher_common::EventKind::ALL
            .iter()
            .map(|k| {
                (
                    k.name().to_string(),
                    KindCount {
                        events: 123_456_789,
                        drops: 12,
                    },
                )
            })
            .collect(),
        malformed_records: 0,
        ring_fill_ratio: 0.25,
        client_lag: 0,
        kernel_failures: Default::default(),
        accept_errors: 0,
        latency_us_p50: 40,
        latency_us_p99: 400,
        gate: Default::default(),
        policy: PolicyStatus {
            version: "0123456789abcdef".into(),
            rules: 60,
            source: "<shipped pack>".into(),
            findings: 6000,
            reloads: 3,
            reload_errors: 1,
            last_error: None,
            kernel_exec: 96,
            kernel_open: 133,
            kernel_deny: 4,
        },
        holds: HoldsStatus {
            enabled: true,
            pending: 3,
            opened: 40,
            kill_switch: Default::default(),
            freeze_us_p50: 900,
            freeze_us_p99: 5000,
            protected_files: 10,
            guarded_files: 13,
        },
        profiles: Vec::new(),
        programs: (0..40)
            .map(|i| ProgramStat {
                name: format!("program_{i}"),
                runs: 1_000_000,
                run_ns: 2_000_000_000,
            })
            .collect(),
        audit: Default::default(),
        hooks_missing: Vec::new(),
        pids_limit: None,
    };
    let findings: Vec<([String; 4], u64)> = (0..60)
        .map(|i| {
            (
                [
                    "rules".to_string(),
                    format!("rule-{i}"),
                    "high".to_string(),
                    "hold".to_string(),
                ],
                100,
            )
        })
        .collect();
    let decisions = vec![("held".to_string(), 40), ("alerted".to_string(), 5960)];
    let snap = || Snapshot::of(status(), findings.clone(), decisions.clone(), 12.5);
    let (mut render_us, mut json_us, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut size = (0, 0, 0);
    for _ in 0..rounds.max(1) {
        let s = snap();
        let t = std::time::Instant::now();
        let text = encode(s).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t_render = t.elapsed().as_secs_f64();
        let st = status();
        let t = std::time::Instant::now();
        let json = serde_json::to_string(&st)?;
        let t_json = t.elapsed().as_secs_f64();
        let plain = prometheus_text(&text);
        size = (
            text.len(),
            plain.lines().filter(|l| !l.starts_with('#')).count(),
            json.len(),
        );
        render_us.push(t_render * 1e6);
        json_us.push(t_json * 1e6);
        ratios.push(t_render / t_json);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "metrics render (100 sessions, 10,000 watched processes, 60 rules, 40 programs): {:.0} µs median of {rounds}, {} bytes, {} series; status JSON {:.0} µs, {} bytes; {:.2}x the JSON's time",
        med(&mut render_us),
        size.0,
        size.1,
        med(&mut json_us),
        size.2,
        med(&mut ratios)
    );
    Ok(())
}
