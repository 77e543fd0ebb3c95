//! Developer and CI tasks: `cargo xtask run | test | bench | eval | fuzz | setup`.
mod bench;
mod deb;
mod eval;
mod fuzz;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF build prerequisites and mount tracefs/bpffs (idempotent).
    Setup,
    /// Set up, build, and run the daemon in the foreground with the embedded defaults.
    Run {
        /// Extra arguments for `watcher run` (e.g. --config FILE).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run every test (unit tests and the root tests that load the eBPF programs).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run the benchmarks (storms and a real build, watched and not).
    Bench(bench::Args),
    /// Run the Atomic Red Team items as watched sessions in sandboxes, rules on and rules off
    /// with a learned profile, and print what was caught per category (not part of `test`).
    Eval(eval::Args),
    /// Build the Debian package (target/debian/watcher_*.deb), cargo-deb installed on first use.
    Deb,
    /// Run every fuzz target for a bounded time (not part of `test`).
    Fuzz(fuzz::Args),
    /// The chaos suite for longer than the minute `test` gives it: agent work and held tools
    /// decided at random while faults come in turn (the daemon killed and restarted, the
    /// stores locked by another writer, their disk full, the wall clock stepped, the kernel
    /// ring overflowing) (tests/chaos.rs).
    Chaos {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// A storm, run by `bench` as the measured workload.
    #[command(hide = true)]
    Storm(bench::StormArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Run { args } => {
            setup::setup()?;
            build_release()?;
            let status = Command::new(setup::root().join("target/release/watcher"))
                .arg("run")
                .args(args)
                .status()
                .context("starting target/release/watcher")?;
            if !status.success() {
                bail!("watcher run exited with {status}");
            }
            Ok(())
        }
        Cmd::Test { args } => {
            setup::setup()?;
            setup::test_tools()?;
            // The audit test runs the verifier, a binary of another package, which `cargo test`
            // does not build for watcher's tests.
            cargo(&["build", "-p", "watcher-verify"])?;
            // The package test installs the .deb: built here, outside the test run's lock.
            deb::build()?;
            // The crash tests need the daemon's fault-injection points.
            let mut a = vec![
                "test",
                "--workspace",
                "--exclude",
                "watcher-ebpf",
                "--features",
                "watcher/fault-injection",
            ];
            a.extend(args.iter().map(String::as_str));
            cargo(&a)
        }
        Cmd::Bench(args) => {
            setup::setup()?;
            bench::run(args)
        }
        Cmd::Eval(args) => {
            setup::setup()?;
            eval::run(args)
        }
        Cmd::Deb => {
            setup::setup()?;
            println!("{}", deb::build()?.display());
            Ok(())
        }
        Cmd::Fuzz(args) => fuzz::run(args),
        Cmd::Chaos { minutes } => {
            setup::setup()?;
            cargo(&["build", "-p", "watcher-verify"])?;
            std::env::set_var("WATCHER_CHAOS_MINUTES", minutes.to_string());
            cargo(&[
                "test",
                "-p",
                "watcher",
                "--features",
                "watcher/fault-injection",
                "--test",
                "chaos",
                "--",
                "--nocapture",
            ])
        }
        Cmd::Storm(args) => bench::storm(args),
    }
}

/// The release daemon and verifier (what `run`, `bench` and `deb` use).
pub fn build_release() -> anyhow::Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "watcher",
        "-p",
        "watcher-verify",
    ])
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(setup::root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
