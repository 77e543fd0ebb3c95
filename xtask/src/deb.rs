//! `cargo xtask deb`: the Debian package (cargo-deb, installed on first use) with the release
//! binaries, the systemd unit, the default configuration, the rules and the dashboards.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::setup::root;

/// Builds the package; returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing cargo-deb (first use, about 2 min)");
        crate::cargo(&["install", "cargo-deb", "--locked"])?;
    }
    crate::build_release()?;
    crate::cargo(&["deb", "-p", "watcher", "--no-build"])?;
    let dir = root().join("target/debian");
    let newest = std::fs::read_dir(&dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("watcher_") && n.ends_with(".deb"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    match newest {
        Some(p) => Ok(p),
        None => bail!("cargo deb made no package in {}", dir.display()),
    }
}
