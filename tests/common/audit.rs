//! Helpers of the audit tests: run watcher-verify, read a session's timeline, a held tool.
use std::{path::Path, process::Command};

use serde_json::Value;

use super::{Daemon, BIN};

pub fn verify_bin() -> std::path::PathBuf {
    Path::new(BIN).with_file_name("watcher-verify")
}

/// Runs watcher-verify on a store; (success, stdout).
pub fn verify(dir: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(verify_bin())
        .arg("--store")
        .arg(dir.join("audit.db"))
        .arg("--pubkey")
        .arg(dir.join("audit.key.pub"))
        .arg("--witness")
        .arg(dir.join("witness.jsonl"))
        .args(extra)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (`cargo xtask test` builds it; by hand: cargo build -p watcher-verify)",
                verify_bin().display()
            )
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `watcher audit ARGS` on the daemon's store (read from the file: the daemon may be down).
pub fn audit_cmd(d: &Daemon, args: &[&str]) -> std::process::Output {
    d.cli()
        .arg("--config")
        .arg(d.dir.0.join("watcher.toml"))
        .arg("audit")
        .args(args)
        .output()
        .unwrap()
}

/// The JSON lines of `watcher audit ARGS`, which must succeed.
pub fn audit_json(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let out = audit_cmd(d, args);
    assert!(
        out.status.success(),
        "watcher audit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    super::holds::json_lines(&out.stdout)
}

/// A session's records so far (none yet is no error).
pub fn timeline(d: &Daemon, trace: &str) -> Vec<Value> {
    super::holds::json_lines(&audit_cmd(d, &["show", "--json", "--trace", trace]).stdout)
}

/// A program that writes `marker` beside it, and a rule directory holding its exec.
pub fn held_tool(work: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let tool = work.join("held-tool");
    std::fs::write(
        &tool,
        format!("#!/bin/sh\necho ran >> {}/marker\n", work.display()),
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rules = work.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("hold.yaml"),
        format!(
            "rules:\n  - id: test-hold-exec\n    description: needs a yes\n    severity: high\n    action: hold\n    mode: enforce\n    condition: {{type: exec, exe: \"{0}\"}}\n    examples: {{match: [{{type: exec, path: \"{0}\"}}]}}\n",
            tool.display()
        ),
    )
    .unwrap();
    (tool, rules)
}
