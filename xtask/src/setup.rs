//! First-use setup: what the eBPF build and the daemon need, installed or mounted only when
//! missing, so a second run costs a few process spawns.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// bpf-linker 0.11+ links a system LLVM this Debian lacks; 0.10.1 uses the nightly's own LLVM.
const BPF_LINKER: &str = "0.10.1";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd} {}", args.join(" "));
    let status = Command::new(cmd)
        .args(args)
        .status()
        .with_context(|| format!("running {cmd}"))?;
    if !status.success() {
        bail!("{cmd} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn setup() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])
        .context("rustup is required (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER) {
        run(
            "cargo",
            &[
                "install",
                &format!("bpf-linker@{BPF_LINKER}"),
                "--locked",
                "--force",
            ],
        )?;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = |fs: &str, at: &str| {
        mounts.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(at) && l.split_whitespace().nth(2) == Some(fs)
        })
    };
    if !mounted("tracefs", "/sys/kernel/tracing")
        && !Path::new("/sys/kernel/tracing/events").exists()
    {
        run(
            "mount",
            &["-t", "tracefs", "tracefs", "/sys/kernel/tracing"],
        )?;
    }
    if !mounted("bpf", "/sys/fs/bpf") {
        run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }
    Ok(())
}

/// What the tests need beyond the build: Debian's prometheus (the metrics test runs a real
/// Prometheus and promtool), prometheus-alertmanager (amtool checks the Alertmanager
/// example) and PyPI's kubernetes-validate (the package test validates the DaemonSet).
pub fn test_tools() -> anyhow::Result<()> {
    debian_test_tools()?;
    kubernetes_validate()
}

/// The Kubernetes schema validator's version: it carries the schemas of Kubernetes 1.25 to 1.37,
/// so validating needs no network.
const KUBERNETES_VALIDATE: &str = "1.37.0";

/// A venv of its own under target/, so the system's Python is left alone; tests/package.rs runs
/// its `bin/kubernetes-validate`.
fn kubernetes_validate() -> anyhow::Result<()> {
    let venv = root().join("target/tools/kubernetes-validate");
    let venv = venv.to_str().context("a non-UTF-8 checkout path")?;
    if output(&format!("{venv}/bin/kubernetes-validate"), &["--version"])
        .is_some_and(|v| v.trim() == KUBERNETES_VALIDATE)
    {
        return Ok(());
    }
    eprintln!(
        "xtask: a venv with kubernetes-validate {KUBERNETES_VALIDATE} (for the package test)"
    );
    let venv_ok = || {
        Command::new("python3")
            .args(["-m", "venv", "--clear", venv])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !venv_ok() {
        // Debian's python3 makes venvs only with python3-venv (ensurepip).
        apt_install(&["python3-venv"], "for the package test's venv")?;
        if !venv_ok() {
            bail!("python3 -m venv {venv} failed");
        }
    }
    run(
        &format!("{venv}/bin/pip"),
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("kubernetes-validate=={KUBERNETES_VALIDATE}"),
        ],
    )
}

fn debian_test_tools() -> anyhow::Result<()> {
    let tools = [
        ("/usr/bin/promtool", "prometheus"),
        ("/usr/bin/prometheus", "prometheus"),
        ("/usr/bin/amtool", "prometheus-alertmanager"),
        // A terminal multiplexer's server outside the session (tests/evasion.rs).
        ("/usr/bin/tmux", "tmux"),
    ];
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| !Path::new(bin).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing, "for the metrics and evasion tests")
}

/// `apt-get install`, with one `apt-get update` first if the package lists are stale.
fn apt_install(packages: &[&str], why: &str) -> anyhow::Result<()> {
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    eprintln!("xtask: apt-get install {} ({why})", packages.join(" "));
    if !install().map(|s| s.success()).unwrap_or(false) {
        run("apt-get", &["update"])?;
        let st = install().context("apt-get")?;
        if !st.success() {
            bail!("apt-get install {} failed ({st})", packages.join(" "));
        }
    }
    Ok(())
}
