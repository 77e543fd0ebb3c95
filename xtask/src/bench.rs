//! `cargo xtask bench`: exec, open and connect storms under four variants, interleaved run by
//! run so machine noise hits every variant alike, reported as medians of per-round ratios
//! against "off"; then a real `cargo build`, watched and not.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _};

use crate::setup::root;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds (each runs every variant once).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Rounds of the real-workload comparison.
    #[arg(long, default_value_t = 5)]
    build_rounds: usize,
}

#[derive(clap::Args)]
pub struct StormArgs {
    kind: String,
    ops: u64,
}

const STORMS: [(&str, u64); 3] = [("exec", 2000), ("open", 200_000), ("connect", 200_000)];
const VARIANTS: [&str; 5] = ["off", "floor", "unwatched", "watched", "watched, no rules"];

/// The measured loop, in its own process so it can be launched as a watched session.
/// Prints nanoseconds per operation.
pub fn storm(a: StormArgs) -> anyhow::Result<()> {
    let start;
    match a.kind.as_str() {
        "exec" => {
            start = Instant::now();
            for _ in 0..a.ops {
                Command::new("/bin/true").status()?;
            }
        }
        "open" => {
            let path = std::env::current_exe()?;
            start = Instant::now();
            for _ in 0..a.ops {
                drop(std::fs::File::open(&path)?);
            }
        }
        "connect" => {
            // One UDP socket connected over and over: the same syscall and hooks as a TCP
            // connect, without handshakes and TIME_WAIT sockets that make TCP storms erratic.
            let target = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let addr = target.local_addr()?;
            let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
            start = Instant::now();
            for _ in 0..a.ops {
                sock.connect(addr)?;
            }
        }
        k => bail!("unknown storm {k}"),
    }
    println!("{}", start.elapsed().as_nanos() as u64 / a.ops.max(1));
    Ok(())
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    /// `rules`: a rule path for the daemon; None for the shipped pack.
    fn start(bin: &Path, dir: &Path, rules: Option<&Path>) -> anyhow::Result<Daemon> {
        let socket = dir.join("bench.sock");
        let config = dir.join("bench.toml");
        let text = match rules {
            Some(r) => format!("[rules]\npath = \"{}\"\n", r.display()),
            None => String::new(),
        };
        std::fs::write(&config, text)?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["run", "--socket"])
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        wait_ready(&mut child)?;
        Ok(Daemon { child, socket })
    }

    fn status(&self, bin: &Path) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(bin)
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `watcher --socket S launch --`: what runs a command as a watched session.
    fn launch_prefix<'a>(&'a self, bin: &'a std::ffi::OsStr) -> [&'a std::ffi::OsStr; 5] {
        [
            bin,
            "--socket".as_ref(),
            self.socket.as_os_str(),
            "launch".as_ref(),
            "--".as_ref(),
        ]
    }

    /// utime + stime of the daemon, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let rest = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(child: &mut Child) -> anyhow::Result<()> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if !line.starts_with("ready") {
        bail!("daemon did not start: {line:?}");
    }
    Ok(())
}

fn totals(st: &serde_json::Value) -> (u64, u64) {
    let mut ev = 0;
    let mut drops = 0;
    if let Some(m) = st["per_type"].as_object() {
        for c in m.values() {
            ev += c["events"].as_u64().unwrap_or(0);
            drops += c["drops"].as_u64().unwrap_or(0);
        }
    }
    (ev, drops)
}

fn run_storm(prefix: &[&std::ffi::OsStr], kind: &str, ops: u64) -> anyhow::Result<f64> {
    let me = std::env::current_exe()?;
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(me.as_os_str()));
    if prefix.is_empty() {
        cmd.args(["storm", kind, &ops.to_string()]);
    } else {
        cmd.args(&prefix[1..])
            .arg(&me)
            .args(["storm", kind, &ops.to_string()]);
    }
    let out = cmd.stderr(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "storm {kind} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| anyhow!("storm output: {e}"))
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (
        median,
        *v.first().unwrap_or(&f64::NAN),
        *v.last().unwrap_or(&f64::NAN),
    )
}

pub fn run(a: Args) -> anyhow::Result<()> {
    crate::cargo(&["build", "--release", "-p", "watcher", "-p", "xtask"])?;
    let bin = root().join("target/release/watcher");
    let dir = std::env::temp_dir().join(format!("watcher-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let no_rules = dir.join("no-rules");
    std::fs::create_dir_all(&no_rules)?;
    // ns/op per storm, variant, round; events, drops, CPU per watched storm.
    let mut ns = vec![vec![Vec::new(); VARIANTS.len()]; STORMS.len()];
    let mut delivered = vec![(0u64, 0u64, 0u64, 0f64); STORMS.len()];
    let tick = 1e9 / ticks_per_sec();
    for round in 0..a.rounds {
        eprintln!("bench: round {}/{}", round + 1, a.rounds);
        for (s, (kind, ops)) in STORMS.iter().enumerate() {
            ns[s][0].push(run_storm(&[], kind, *ops)?);
        }
        {
            let mut floor = Command::new(&bin)
                .arg("bench-floor")
                .stdout(Stdio::piped())
                .spawn()?;
            wait_ready(&mut floor)?;
            for (s, (kind, ops)) in STORMS.iter().enumerate() {
                ns[s][1].push(run_storm(&[], kind, *ops)?);
            }
            let _ = floor.kill();
            let _ = floor.wait();
        }
        {
            // The same watched storms with no rules: what the rules (kernel fast paths and
            // user-space evaluation) add.
            let d = Daemon::start(&bin, &dir, Some(&no_rules))?;
            let launch = d.launch_prefix(bin.as_os_str());
            for (s, (kind, ops)) in STORMS.iter().enumerate() {
                ns[s][4].push(run_storm(&launch, kind, *ops)?);
            }
        }
        let d = Daemon::start(&bin, &dir, None)?;
        for (s, (kind, ops)) in STORMS.iter().enumerate() {
            ns[s][2].push(run_storm(&[], kind, *ops)?);
            let (ev0, dr0) = totals(&d.status(&bin)?);
            let cpu0 = d.cpu_ticks();
            let launch = d.launch_prefix(bin.as_os_str());
            let t = Instant::now();
            ns[s][3].push(run_storm(&launch, kind, *ops)?);
            let secs = t.elapsed().as_secs_f64();
            // Let intake finish what the storm produced before reading the counters.
            let mut st = d.status(&bin)?;
            for _ in 0..200 {
                let ended = st["sessions"]
                    .as_array()
                    .map(|v| v.iter().all(|s| s["ended"].is_string()))
                    .unwrap_or(false);
                if ended {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                st = d.status(&bin)?;
            }
            let (ev1, dr1) = totals(&st);
            let e = &mut delivered[s];
            e.0 += ev1 - ev0;
            e.1 += dr1 - dr0;
            e.2 += d.cpu_ticks() - cpu0;
            e.3 += secs;
        }
    }

    println!(
        "\n## Storms ({} rounds, interleaved; ratio = variant / off, per round)\n",
        a.rounds
    );
    println!("| storm | variant | ns/op (median) | ratio median | min | max |");
    println!("|---|---|---|---|---|---|");
    for (s, (kind, _)) in STORMS.iter().enumerate() {
        for (v, name) in VARIANTS.iter().enumerate() {
            let ratios: Vec<f64> = ns[s][v].iter().zip(&ns[s][0]).map(|(x, o)| x / o).collect();
            let (med, min, max) = stats(ratios);
            let (ns_med, _, _) = stats(ns[s][v].clone());
            println!("| {kind} | {name} | {ns_med:.0} | {med:.3} | {min:.3} | {max:.3} |");
        }
    }
    println!("\n| storm | variant | ratio vs floor (median) |");
    println!("|---|---|---|");
    for (s, (kind, _)) in STORMS.iter().enumerate() {
        for v in [2, 3] {
            let r: Vec<f64> = ns[s][v].iter().zip(&ns[s][1]).map(|(x, f)| x / f).collect();
            println!("| {kind} | {} | {:.3} |", VARIANTS[v], stats(r).0);
        }
    }
    println!("\n| storm | watched (shipped pack, kernel fast paths) vs watched with no rules (median) | min | max |");
    println!("|---|---|---|---|");
    for (s, (kind, _)) in STORMS.iter().enumerate() {
        let r: Vec<f64> = ns[s][3].iter().zip(&ns[s][4]).map(|(x, n)| x / n).collect();
        let (med, min, max) = stats(r);
        println!("| {kind} | {med:.3} | {min:.3} | {max:.3} |");
    }
    println!("\n| watched storm | events delivered | events/s | drops | daemon CPU per event |");
    println!("|---|---|---|---|---|");
    for (s, (kind, _)) in STORMS.iter().enumerate() {
        let (ev, drops, ticks, secs) = delivered[s];
        let cpu_ns = ticks as f64 * tick / ev.max(1) as f64;
        println!(
            "| {kind} | {ev} | {:.0} | {drops} | {cpu_ns:.0} ns |",
            ev as f64 / secs
        );
    }

    real_workload(&bin, &dir, a.build_rounds)?;
    rules_throughput(&bin)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The shipped pack's evaluation rate over a recorded agent session (one core, in-process
/// baseline: the same loop with an empty policy).
fn rules_throughput(bin: &Path) -> anyhow::Result<()> {
    let stream = root().join("bench/streams/agent-session.jsonl");
    let out = Command::new(bin)
        .arg("bench-rules")
        .arg(&stream)
        .args(["--rounds", "15"])
        .output()?;
    if !out.status.success() {
        bail!(
            "bench-rules failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("\n## Rule evaluation (shipped pack, recorded stream)\n");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// A `cargo build` of a small crate whose dependencies are in the local registry cache,
/// watched and unwatched, interleaved.
fn real_workload(bin: &Path, dir: &Path, rounds: usize) -> anyhow::Result<()> {
    let krate = dir.join("small");
    std::fs::create_dir_all(krate.join("src"))?;
    std::fs::write(
        krate.join("Cargo.toml"),
        "[package]\nname = \"small\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nlibc = \"0.2\"\nmemchr = \"2\"\nitoa = \"1\"\n\n[workspace]\n",
    )?;
    std::fs::write(
        krate.join("src/main.rs"),
        "fn main() { let mut b = itoa::Buffer::new(); println!(\"{} {:?} {}\", b.format(42), memchr::memchr(b'a', b\"cat\"), unsafe { libc::getpid() }); }\n",
    )?;
    let build = |prefix: &[&std::ffi::OsStr]| -> anyhow::Result<f64> {
        let _ = std::fs::remove_dir_all(krate.join("target"));
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("cargo");
                c
            }
            None => Command::new("cargo"),
        };
        let t = Instant::now();
        let st = cmd
            .args(["build", "--offline", "--quiet"])
            .current_dir(&krate)
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("cargo build of the sample crate failed (are libc, memchr, itoa in ~/.cargo?)");
        }
        Ok(t.elapsed().as_secs_f64())
    };
    // Warm the registry index and sources once.
    build(&[])?;
    let d = Daemon::start(bin, dir, None)?;
    let launch = d.launch_prefix(bin.as_os_str());
    let mut ratios = Vec::new();
    let mut plain = Vec::new();
    for r in 0..rounds {
        eprintln!("bench: cargo build round {}/{rounds}", r + 1);
        let (u, w) = if r % 2 == 0 {
            let u = build(&[])?;
            (u, build(&launch)?)
        } else {
            let w = build(&launch)?;
            (build(&[])?, w)
        };
        plain.push(u);
        ratios.push(w / u);
    }
    let st = d.status(bin)?;
    let (ev, drops) = totals(&st);
    let (med, min, max) = stats(ratios);
    println!("\n## Real workload: cargo build (3 deps, offline), daemon on\n");
    println!(
        "| rounds | unwatched s (median) | watched/unwatched median | min | max | events | drops |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {rounds} | {:.2} | {med:.3} | {min:.3} | {max:.3} | {ev} | {drops} |",
        stats(plain).0
    );
    Ok(())
}
