//! `cargo xtask fuzz`: every cargo-fuzz target under `fuzz/` for a bounded time (not part of the
//! test run). Each target starts from its seeds in `fuzz/corpus/<target>` and works in a copy
//! under `target/fuzz-corpus/`, so the repository's corpora stay small; a crash fails the task
//! and leaves its input in `fuzz/artifacts/<target>/`.
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::setup::root;

pub const TARGETS: [&str; 7] = [
    "record_decode",
    "sockaddr",
    "rule_compile",
    "control_request",
    "http_request",
    "profile_import",
    "scope_compile",
];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only this target (repeatable); all of them by default.
    #[arg(long = "target")]
    targets: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing cargo-fuzz (first use, about 2 min)");
        crate::cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}; the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let fuzz = root().join("fuzz");
    for t in targets {
        let work = root().join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let seeds = fuzz.join("corpus").join(t);
        for e in
            std::fs::read_dir(&seeds).with_context(|| format!("reading {}", seeds.display()))?
        {
            let e = e?;
            std::fs::copy(e.path(), work.join(e.file_name()))?;
        }
        eprintln!("xtask: fuzzing {t} for {} s", args.seconds);
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", t])
            .arg(&work)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-print_final_stats=1")
            .current_dir(&fuzz)
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {t} failed ({status}); the input is in fuzz/artifacts/{t}/");
        }
    }
    Ok(())
}
