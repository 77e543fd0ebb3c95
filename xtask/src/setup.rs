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
/// Prometheus and promtool) and prometheus-alertmanager (amtool checks the Alertmanager
/// example).
pub fn test_tools() -> anyhow::Result<()> {
    let tools = [
        ("/usr/bin/promtool", "prometheus"),
        ("/usr/bin/prometheus", "prometheus"),
        ("/usr/bin/amtool", "prometheus-alertmanager"),
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
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    eprintln!(
        "xtask: apt-get install {} (for the metrics test)",
        missing.join(" ")
    );
    if !install().map(|s| s.success()).unwrap_or(false) {
        run("apt-get", &["update"])?;
        let st = install().context("apt-get")?;
        if !st.success() {
            bail!("apt-get install {} failed ({st})", missing.join(" "));
        }
    }
    Ok(())
}
