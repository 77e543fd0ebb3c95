//! The Debian package (`cargo xtask deb`; `cargo xtask test` builds it first): installed with
//! dpkg, `watcher --version` runs from /usr/bin, `systemd-analyze verify` passes on the installed
//! unit, the approver group exists, and the package removes and purges cleanly. Needs root; it
//! installs into the host, so it refuses to run where a watcher package is already installed.
//! The DaemonSet manifest is validated against the Kubernetes schemas and checked for what a node
//! agent needs.
mod common;

use std::{path::Path, process::Command};

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_debian_package_installs_runs_verifies_and_removes_cleanly() {
    common::require_root();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let deb = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build the package: cargo xtask deb)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("no .deb (build the package: cargo xtask deb)");
    let (installed, status) = run("dpkg-query", &["-W", "-f=${Status}", "watcher"]);
    assert!(
        !(installed && status.contains("installed") && !status.contains("not-installed")),
        "a watcher package is installed on this machine ({status}); this test installs and removes its own"
    );

    let (ok, out) = run("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i: {out}");
    let (ok, out) = run("/usr/bin/watcher", &["--version"]);
    assert!(ok && out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let (ok, out) = run("/usr/bin/watcher-verify", &["--help"]);
    assert!(ok && out.contains("--store"), "{out}");
    let (ok, out) = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/watcher.service"],
    );
    assert!(ok, "systemd-analyze verify: {out}");
    assert!(!out.contains("Unknown"), "systemd-analyze verify: {out}");
    // The installed unit lets deny undo what it must (this machine's PID 1 is not systemd, so
    // the unit's settings are read, not run): nothing in homes or /etc made read-only, the
    // capabilities to remove and restore files of any user, real-time priority allowed.
    let unit = std::fs::read_to_string("/lib/systemd/system/watcher.service").unwrap();
    let setting = |key: &str| {
        unit.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    };
    for (key, blocks) in [
        ("ProtectHome", "deny's clean-up in homes"),
        ("ProtectSystem", "deny's clean-up in /etc"),
        ("RestrictRealtime", "the alert thread's real-time priority"),
    ] {
        let v = setting(key);
        assert!(
            v.as_deref().is_none_or(|v| v == "no" || v == "false"),
            "{key}={v:?} in the unit blocks {blocks}"
        );
    }
    let caps = setting("CapabilityBoundingSet").unwrap_or_default();
    for cap in [
        "CAP_DAC_OVERRIDE",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_KILL",
        "CAP_SYS_NICE",
    ] {
        assert!(
            caps.split_whitespace().any(|c| c == cap),
            "{cap} missing from {caps}"
        );
    }
    let (ok, _) = run("getent", &["group", "watcher"]);
    assert!(ok, "the postinst made no approver group");
    for f in [
        "/etc/watcher/watcher.toml",
        "/usr/share/watcher/rules/secrets.yaml",
        "/usr/share/watcher/dashboards/overview.json",
        "/usr/share/watcher/dashboards/watcher.rules.yml",
        "/usr/share/doc/watcher/README.md",
    ] {
        assert!(Path::new(f).exists(), "{f} is not in the package");
    }
    // The packaged configuration is the daemon's own default, and it parses.
    let (ok, out) = run(
        "/usr/bin/watcher",
        &["--config", "/etc/watcher/watcher.toml", "audit", "pubkey"],
    );
    assert!(
        !out.contains("watcher.toml"),
        "the packaged configuration does not load: {out} ({ok})"
    );

    let (ok, out) = run("dpkg", &["-r", "watcher"]);
    assert!(ok, "dpkg -r: {out}");
    assert!(!Path::new("/usr/bin/watcher").exists());
    assert!(
        Path::new("/etc/watcher/watcher.toml").exists(),
        "a remove keeps the configuration"
    );
    let (ok, out) = run("dpkg", &["--purge", "watcher"]);
    assert!(ok, "dpkg --purge: {out}");
    assert!(!Path::new("/etc/watcher/watcher.toml").exists());
    let (_, status) = run("dpkg-query", &["-W", "-f=${Status}", "watcher"]);
    assert!(!status.contains(" installed"), "{status}");
}

fn daemonset() -> (std::path::PathBuf, Vec<serde_yaml_ng::Value>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    (path, docs)
}

/// kubernetes-validate (PyPI; `cargo xtask test` installs it in a venv under target/tools) on
/// one manifest, strict (a field Kubernetes does not know is an error), against one version's
/// schemas.
fn kubernetes_validate(manifest: &Path, version: &str) -> (bool, String) {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/kubernetes-validate/bin/kubernetes-validate");
    assert!(
        bin.exists(),
        "{}: missing; `cargo xtask test` installs it (python3 -m venv, pip install kubernetes-validate)",
        bin.display()
    );
    run(
        bin.to_str().unwrap(),
        &[
            "--strict",
            "--no-warn",
            "-k",
            version,
            manifest.to_str().unwrap(),
        ],
    )
}

/// Every resource of the manifest against the Kubernetes schemas of an older release still in
/// wide use and of the newest the validator carries.
#[test]
fn the_daemonset_manifest_validates_against_the_kubernetes_schemas() {
    let (path, docs) = daemonset();
    for version in ["1.28.0", "1.37.0"] {
        let (ok, out) = kubernetes_validate(&path, version);
        assert!(ok, "kubernetes-validate -k {version}: {out}");
        assert_eq!(
            out.matches("passed for resource").count(),
            docs.len(),
            "not every resource was validated against {version}: {out}"
        );
    }
    // The validator is no rubber stamp: a misspelt field and a port that is not a number fail.
    let tmp = common::TempDir::new("daemonset");
    let text = std::fs::read_to_string(&path).unwrap();
    for (what, from, to) in [
        ("hostPIDs", "hostPID: true", "hostPIDs: true"),
        ("'nine'", "containerPort: 9740", "containerPort: nine"),
    ] {
        assert!(text.contains(from), "the manifest has no `{from}`");
        let bad = tmp.0.join("bad.yaml");
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        let (ok, out) = kubernetes_validate(&bad, "1.37.0");
        assert!(!ok, "`{to}` passed: {out}");
        assert!(
            out.contains(what),
            "`{to}` failed for another reason: {out}"
        );
    }
}

/// What the schemas cannot say: the pod runs in the host's pid namespace, privileged, with the
/// mounts the daemon needs and a configuration the daemon accepts.
#[test]
fn the_daemonset_manifest_has_what_a_node_agent_needs() {
    let (_, docs) = daemonset();
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{d:?}"
        );
        assert!(d["metadata"]["name"].is_string(), "{d:?}");
    }
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let spec = &ds["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            &labels[k], v,
            "the selector does not match the pod's labels"
        );
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    assert!(c["image"].is_string());
    assert_eq!(c["securityContext"]["privileged"], true);
    assert!(c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p["containerPort"] == 9740));
    let volumes: Vec<&str> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mounts: Vec<(&str, &str)> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    for (name, _) in &mounts {
        assert!(volumes.contains(name), "mount {name} has no volume");
    }
    for path in [
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/sys/fs/cgroup",
        "/var/lib/watcher",
    ] {
        assert!(
            mounts.iter().any(|(_, p)| *p == path),
            "{path} is not mounted"
        );
    }
    // The configuration it mounts is one the daemon accepts.
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let toml_text = cm["data"]["watcher.toml"].as_str().unwrap();
    let cfg: watcher::config::Config = toml::from_str(toml_text).unwrap();
    assert_eq!(cfg.metrics.listen, "0.0.0.0:9740");
}
