//! The Debian package (`cargo xtask deb`; `cargo xtask test` builds it first): installed with
//! dpkg, `watcher --version` runs from /usr/bin, `systemd-analyze verify` passes on the installed
//! unit, the approver group exists, and the package removes and purges cleanly. Needs root; it
//! installs into the host, so it refuses to run where a watcher package is already installed.
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

/// No Kubernetes schema validator is in the registries this project uses (kubeconform and
/// kubeval are Go binaries outside them), so the manifest is parsed and its required fields
/// checked.
#[test]
fn the_daemonset_manifest_has_what_a_node_agent_needs() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml"),
    )
    .unwrap();
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
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
