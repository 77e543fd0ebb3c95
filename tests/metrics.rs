//! `/metrics` against a real Prometheus: the daemon is scraped while a watched session has a
//! finding and a pending hold; promtool checks the text; PromQL over the scraped series gives
//! what the session did. Needs root and Debian's `prometheus` (`cargo xtask test` installs it).
mod common;

use std::{
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    audit::held_tool,
    holds::{await_hold, launch_bg, verdict, wait_exit},
    Daemon, TempDir, DEADLINE,
};
use serde_json::Value;

/// GET on loopback; (status line, body).
fn http_get(port: u16, path_and_query: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn tool(name: &str) -> std::path::PathBuf {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} is missing: `cargo xtask test` installs Debian's prometheus and prometheus-alertmanager packages")
        })
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PromQL instant query's result vector; Err: Prometheus refused the expression.
fn query(port: u16, expr: &str) -> Result<Vec<Value>, String> {
    let enc: String = expr
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = http_get(port, &format!("/api/v1/query?query={enc}"));
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{expr}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn value(r: &[Value]) -> Option<f64> {
    r.first()?["value"][1].as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_through_a_finding_and_a_hold() {
    let started = Instant::now();
    let (promtool, prometheus) = (tool("promtool"), tool("prometheus"));
    let work = TempDir::new("metrics");
    let (_tool, rules) = held_tool(&work.0);
    let mport = common::free_port();
    let d = Daemon::start_with(&format!(
        "[rules]\npath = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n",
        rules.display()
    ));
    let (mut child, trace) = launch_bg(&d, &format!("{}/held-tool", work.0.display()));
    let hold = await_hold(&d, &trace);

    // The text as any scraper without OpenMetrics gets it passes promtool's checks.
    let (status, text) = http_get(mport, "/metrics");
    assert!(status.contains("200"), "{status}");
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Bounded labels: no trace id, no pid.
    assert!(!text.contains(&trace), "a trace id is a label");
    assert!(text.contains("watcher_holds_pending 1"), "{text}");

    // A real Prometheus scraping every second.
    let pport = common::free_port();
    let config = work.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: watcher\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"
        ),
    )
    .unwrap();
    let _p = Prometheus(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.0.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        let up = std::net::TcpStream::connect(("127.0.0.1", pport)).is_ok()
            && query(pport, "watcher_holds_pending")
                .ok()
                .and_then(|r| value(&r))
                == Some(1.0);
        if up {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE * 2,
            "Prometheus never scraped a pending hold"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let one = |e: &str| value(&query(pport, e).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(one("up{job=\"watcher\"}"), Some(1.0));
    assert!(one("watcher_findings_total{rule=\"test-hold-exec\",action=\"hold\"}") >= Some(1.0));
    assert!(one("watcher_decisions_total{outcome=\"held\"}") >= Some(1.0));
    assert!(one("sum(watcher_events_total{type=\"exec\"})") >= Some(1.0));
    assert!(one("watcher_sessions_active{profile=\"none\"}") >= Some(1.0));
    assert!(one("watcher_hold_age_seconds") > Some(0.0));
    assert!(one("watcher_audit_records_total") > Some(0.0));
    assert_eq!(one("watcher_kill_switch_engaged"), Some(0.0));
    assert!(one("process_resident_memory_bytes") > Some(0.0));
    let build = query(pport, "watcher_build_info").unwrap();
    assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    // Histograms are histograms to PromQL.
    query(
        pport,
        "histogram_quantile(0.99, rate(watcher_pipeline_latency_seconds_bucket[1m]))",
    )
    .unwrap();

    // The alert rules, checked and unit-tested by promtool.
    let dashboards = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    for args in [
        vec!["check", "rules", "watcher.rules.yml"],
        vec!["test", "rules", "watcher.rules_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(&dashboards)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every expression of every dashboard panel evaluates, with data, once a minute's rates
    // have samples.
    let start = Instant::now();
    while one("count_over_time(up{job=\"watcher\"}[1m])") < Some(5.0) {
        assert!(start.elapsed() < DEADLINE, "Prometheus scrapes too rarely");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(&dashboards).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let vars: Vec<&str> = dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "overview.json" || name == "sessions-findings.json" {
            assert!(vars.contains(&"profile"), "{name}: no $profile variable");
        }
        for p in dash["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let e = expr
                    .replace("$instance", ".*")
                    .replace("$profile", ".*")
                    .replace("$__rate_interval", "1m");
                assert!(!e.contains('$'), "{name}: an unknown variable in {expr}");
                let r = query(pport, &e)
                    .unwrap_or_else(|err| panic!("{name} panel {:?}: {err}", p["title"]));
                assert!(
                    !r.is_empty(),
                    "{name} panel {:?}: no data for {e}",
                    p["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "only {checked} panel expressions");
    // The Alertmanager example is a valid config (amtool, Debian's prometheus-alertmanager)
    // and routes the chosen alert, and only it, to the daemon's kill-switch webhook.
    let amtool = tool("amtool");
    let am_file = dashboards.join("alertmanager.yml");
    let out = Command::new(&amtool)
        .arg("check-config")
        .arg(&am_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "amtool check-config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let route_of = |labels: &[&str]| {
        let out = Command::new(&amtool)
            .args(["config", "routes", "test"])
            .arg(format!("--config.file={}", am_file.display()))
            .args(labels)
            .output()
            .unwrap();
        assert!(out.status.success(), "amtool config routes test {labels:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        route_of(&["alertname=WatcherExfil", "watcher_action=kill_switch"]),
        "watcher-kill-switch"
    );
    assert_eq!(route_of(&["alertname=WatcherEventsDropped"]), "default");
    let am: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dashboards.join("alertmanager.yml")).unwrap(),
    )
    .unwrap();
    let route = &am["route"]["routes"][0];
    let receiver = route["receiver"].as_str().unwrap();
    let r = am["receivers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["name"].as_str() == Some(receiver))
        .expect("the route's receiver");
    assert!(r["webhook_configs"][0]["url"]
        .as_str()
        .unwrap()
        .ends_with("/v1/alertmanager"));

    verdict(&d, "approve", &hold);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    let start = Instant::now();
    while query(pport, "watcher_holds_pending")
        .ok()
        .and_then(|r| value(&r))
        != Some(0.0)
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the approved hold is still pending"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The decision's wait is in the approval histogram, in seconds, no longer than the test.
    while one("watcher_approval_latency_seconds_count") != Some(1.0) {
        assert!(
            start.elapsed() < DEADLINE,
            "the decision is not in watcher_approval_latency_seconds"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let sum = one("watcher_approval_latency_seconds_sum").unwrap();
    assert!(
        sum > 0.0 && sum < started.elapsed().as_secs_f64(),
        "approval latency {sum} s"
    );
}

/// A sample's value in the Prometheus text, by its name and labels as printed.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

#[test]
fn the_ring_fill_ratio_is_what_the_kernel_wrote_and_user_space_has_not_read() {
    let work = TempDir::new("ring-fill");
    let paused = work.0.join("paused");
    std::fs::write(&paused, "").unwrap();
    let mport = common::free_port();
    // Rules that gate nothing the session runs (the shipped pack gates some execs, which would
    // wait, stopped, for the paused intake), a 4 MiB ring (room for the session's records, so
    // none is dropped and the ratio is neither 0 nor 1), and an intake that stops reading it
    // while `paused` exists.
    let (_tool, rules) = held_tool(&work.0);
    let d = Daemon::start_with_env(
        &format!(
            "[rules]\npath = \"{}\"\n[daemon]\nring_buffer_bytes = 4194304\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n",
            rules.display()
        ),
        &[
            ("WATCHER_FAULT", "pause-intake"),
            ("WATCHER_FAULT_FILE", paused.to_str().unwrap()),
        ],
    );
    let scrape = || {
        let (status, text) = http_get(mport, "/metrics");
        assert!(status.contains("200"), "{status}");
        text
    };
    let exec = "watcher_events_total{type=\"exec\"}";
    let fill = "watcher_ring_buffer_fill_ratio";
    assert_eq!(
        sample(&scrape(), fill),
        Some(0.0),
        "a fresh ring is not empty"
    );
    let (mut child, _trace) = launch_bg(&d, "for i in $(seq 20); do /bin/true; done");
    assert!(wait_exit(&mut child).success());
    // Every record of the session is in the ring, none read.
    let text = scrape();
    let dropped: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("watcher_events_dropped_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(dropped.is_empty(), "the ring overflowed: {dropped:?}");
    let full = sample(&text, fill).unwrap_or_else(|| panic!("no {fill} in {text}"));
    assert!(
        full > 0.0 && full < 1.0,
        "{fill} {full} with 20 execs unread"
    );
    assert_eq!(
        sample(&text, exec),
        Some(0.0),
        "the paused intake read records"
    );

    // Reading resumes: the ring empties and the records are counted.
    std::fs::remove_file(&paused).unwrap();
    let start = Instant::now();
    loop {
        let text = scrape();
        if sample(&text, fill) == Some(0.0) && sample(&text, exec) >= Some(20.0) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the ring never drained: {:?} {:?}",
            sample(&text, fill),
            sample(&text, exec)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
