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

mod metrics_cost;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds (each runs every variant once).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Rounds of the real-workload comparison.
    #[arg(long, default_value_t = 5)]
    build_rounds: usize,
    /// Holds per session size in the hold-latency benchmark.
    #[arg(long, default_value_t = 20)]
    hold_rounds: usize,
    /// Rounds of the profile part (perf record of the floor, unwatched and watched storms).
    #[arg(long, default_value_t = 3)]
    profile_rounds: usize,
    /// Chunk pairs per storm of the paired part (watched and unwatched alternated chunk by chunk).
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Session sizes (processes) of the hold-latency benchmark.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100])]
    hold_sizes: Vec<usize>,
    /// Run only these parts (storms, pairs, build, rules, detectors, rmrf, holds, gate, uring, audit,
    /// metrics, profile); all but profile when omitted.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(clap::Args)]
pub struct StormArgs {
    kind: String,
    ops: u64,
    /// Run `ops` operations each time a line arrives on stdin and print each run's ns/op,
    /// until stdin closes: how the paired part alternates two storms chunk by chunk.
    #[arg(long)]
    chunked: bool,
}

const STORMS: [(&str, u64); 12] = [
    ("exec", 2000),
    ("open", 200_000),
    ("connect", 200_000),
    ("getppid", 2_000_000),
    ("unlink", 100_000),
    ("rename", 200_000),
    ("chmod", 200_000),
    ("setid", 1_000_000),
    ("dns", 100_000),
    ("open-legacy", 200_000),
    ("sendto", 500_000),
    ("signal", 1_000_000),
];
const VARIANTS: [&str; 7] = [
    "off",
    "floor",
    "unwatched",
    "watched",
    "watched, no rules",
    "floor, tp_btf sys_exit",
    "floor, raw_tp sys_exit",
];
/// `bench-floor --hooks` of the floor variants (`floor` and the two after `watched, no rules`).
const FLOORS: [(usize, &str); 3] = [(1, "classic"), (5, "tp-btf"), (6, "raw-tp")];

/// One operation of a storm, with whatever it needs set up first.
fn storm_op(kind: &str) -> anyhow::Result<Box<dyn FnMut() -> std::io::Result<()>>> {
    Ok(match kind {
        "exec" => Box::new(|| Command::new("/bin/true").status().map(drop)),
        // A shell, which the shipped pack's gate stops at every exec in a watched session.
        "sh" => Box::new(|| {
            Command::new("/bin/sh")
                .args(["-c", "true"])
                .status()
                .map(drop)
        }),
        // A syscall no program hooks: what the hooks cost every other syscall on the host.
        "getppid" => Box::new(|| {
            // SAFETY: no preconditions.
            unsafe { libc::getppid() };
            Ok(())
        }),
        "open" => {
            let path = std::env::current_exe()?;
            Box::new(move || std::fs::File::open(&path).map(drop))
        }
        "connect" => {
            // One UDP socket connected over and over: the same syscall and hooks as a TCP
            // connect, without handshakes and TIME_WAIT sockets that make TCP storms erratic.
            let target = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let addr = target.local_addr()?;
            let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
            Box::new(move || {
                let _open = &target;
                sock.connect(addr)
            })
        }
        // A file made and removed: an open (O_CREAT) and an unlink.
        "unlink" => {
            let path = std::env::temp_dir().join(format!("watcher-storm-{}", std::process::id()));
            Box::new(move || {
                std::fs::File::create(&path)?;
                std::fs::remove_file(&path)
            })
        }
        "rename" => {
            let a = std::env::temp_dir().join(format!("watcher-storm-{}-a", std::process::id()));
            let b = a.with_extension("b");
            std::fs::File::create(&a)?;
            let mut there = false;
            Box::new(move || {
                let r = if there {
                    std::fs::rename(&b, &a)
                } else {
                    std::fs::rename(&a, &b)
                };
                there = !there;
                r
            })
        }
        "chmod" => {
            use std::os::unix::fs::PermissionsExt as _;
            let path = std::env::temp_dir().join(format!("watcher-storm-{}-m", std::process::id()));
            std::fs::File::create(&path)?;
            Box::new(move || {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            })
        }
        // A DNS query to a responder on 127.0.0.2:53 in this process and its answer back: a
        // watched storm's answers go through the DNS program and the daemon's parser.
        "dns" => {
            let server = std::net::UdpSocket::bind("127.0.0.2:53")?;
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok((n, peer)) = server.recv_from(&mut buf) {
                    let mut r = buf[..n].to_vec();
                    r[2] = 0x81;
                    r[3] = 0x80;
                    r[6..8].copy_from_slice(&1u16.to_be_bytes());
                    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 3]);
                    let _ = server.send_to(&r, peer);
                }
            });
            let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
            client.connect("127.0.0.2:53")?;
            let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            query.extend_from_slice(b"\x05storm\x07example\x00\x00\x01\x00\x01");
            let mut buf = [0u8; 512];
            Box::new(move || {
                client.send(&query)?;
                client.recv(&mut buf).map(drop)
            })
        }
        // setresuid(-1, -1, -1): changes nothing, through both the entry and the exit hook.
        "setid" => Box::new(|| {
            // SAFETY: no preconditions; -1 leaves every id as it is.
            match unsafe { libc::setresuid(u32::MAX, u32::MAX, u32::MAX) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        }),
        // The legacy open(2) (no libc wrapper calls it any more): its own hook.
        "open-legacy" => {
            let path = std::ffi::CString::new(
                std::env::current_exe()?
                    .into_os_string()
                    .into_encoded_bytes(),
            )?;
            Box::new(move || {
                // SAFETY: a NUL-terminated path; the descriptor is closed at once.
                let fd = unsafe { libc::syscall(libc::SYS_open, path.as_ptr(), libc::O_RDONLY) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: our own descriptor.
                unsafe { libc::close(fd as i32) };
                Ok(())
            })
        }
        // A datagram with a destination on an unconnected socket: the cgroup sendmsg4 program
        // runs for every one on the host.
        "sendto" => {
            let target = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let addr = target.local_addr()?;
            let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let mut buf = [0u8; 16];
            target.set_nonblocking(true)?;
            Box::new(move || {
                sock.send_to(b"x", addr)?;
                // Drained as it goes, so the receive queue never fills and drops.
                let _ = target.recv(&mut buf);
                Ok(())
            })
        }
        // A signal the process ignores by default (SIGURG), to itself: signal_generate runs,
        // with the guard program on it.
        "signal" => Box::new(|| {
            // SAFETY: SIGURG's default action is to ignore it.
            match unsafe { libc::kill(libc::getpid(), libc::SIGURG) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        }),
        // A no-op through an io_uring, submitted and awaited: one io_uring_submit_req each.
        "uring" => {
            let mut ring = io_uring::IoUring::new(8)?;
            Box::new(move || {
                let nop = io_uring::opcode::Nop::new().build();
                // SAFETY: a NOP references no buffer.
                unsafe { ring.submission().push(&nop) }
                    .map_err(|_| std::io::Error::other("the submission queue is full"))?;
                ring.submit_and_wait(1)?;
                ring.completion().for_each(drop);
                Ok(())
            })
        }
        k => bail!("unknown storm {k}"),
    })
}

/// The measured loop, in its own process so it can be launched as a watched session.
/// Prints nanoseconds per operation (per chunk with `--chunked`).
pub fn storm(a: StormArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut op = storm_op(&a.kind)?;
    let mut run = || -> anyhow::Result<()> {
        let start = Instant::now();
        for _ in 0..a.ops {
            op()?;
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", start.elapsed().as_nanos() as u64 / a.ops.max(1))?;
        out.flush()?;
        Ok(())
    };
    if !a.chunked {
        return run();
    }
    for line in std::io::stdin().lines() {
        line?;
        run()?;
    }
    Ok(())
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

fn wanted(a: &Args, part: &str) -> bool {
    (a.only.is_empty() && part != "profile") || a.only.iter().any(|p| p == part)
}

impl Daemon {
    /// `rules`: a rule path for the daemon; None for the shipped pack.
    fn start(bin: &Path, dir: &Path, rules: Option<&Path>) -> anyhow::Result<Daemon> {
        Self::start_serving(bin, dir, rules, "")
    }

    /// As `start`, with `/metrics` on `metrics` (`""`: off, as for every other part).
    fn start_serving(
        bin: &Path,
        dir: &Path,
        rules: Option<&Path>,
        metrics: &str,
    ) -> anyhow::Result<Daemon> {
        let socket = dir.join("bench.sock");
        let config = dir.join("bench.toml");
        let mut text = match rules {
            Some(r) => format!("[rules]\npath = \"{}\"\n", r.display()),
            None => String::new(),
        };
        // Its own store, cgroups and API socket: a benchmark must not touch a running daemon's.
        // A ring the storms do not fill (128 MiB): a lost record that could have held holds its
        // session (fail closed), which would stop the storm; with the default 16 MiB a 1M-call
        // setid storm run beside another lost one on this machine.
        // Nothing pinned: a killed bench daemon leaves no program behind to slow the next run.
        text.push_str("[daemon]\nring_buffer_bytes = 134217728\nbpffs = \"\"\n");
        text.push_str(&format!(
            "[holds]\nstore = \"{}\"\ncgroup = \"watcher-bench\"\n[api]\nsocket = \"{}\"\n[audit]\nstore = \"{d}/audit.db\"\nkey = \"{d}/audit.key\"\nwitness = \"{d}/witness.jsonl\"\n[metrics]\nlisten = \"{metrics}\"\n",
            dir.join("bench.db").display(),
            dir.join("api.sock").display(),
            d = dir.display()
        ));
        std::fs::write(&config, text)?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["run", "--socket"])
            .arg(&socket)
            .env("RUST_LOG", "error")
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

    /// The status once every session has ended: intake has finished what a storm produced.
    fn settled(&self, bin: &Path) -> anyhow::Result<serde_json::Value> {
        let mut st = self.status(bin)?;
        for _ in 0..200 {
            let ended = st["sessions"]
                .as_array()
                .map(|v| v.iter().all(|s| s["ended"].is_string()))
                .unwrap_or(false);
            if ended {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            st = self.status(bin)?;
        }
        Ok(st)
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

/// Another watcher daemon or a leftover `bench-floor` keeps its programs attached through every
/// variant, "off" included, which quietly shrinks every ratio: refuse to measure beside one.
fn refuse_other_watchers() -> anyhow::Result<()> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "watcher" {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("{pid}: {}", cmdline.trim()));
        }
    }
    if !found.is_empty() {
        bail!(
            "other watcher processes are running; their programs would run in every variant, \
             \"off\" too. Stop them first:\n  {}",
            found.join("\n  ")
        );
    }
    Ok(())
}

/// `watcher bench-floor --toggle`: the empty programs (per-syscall tracepoints), attached
/// and detached on request; attached at start.
struct FloorSwitch {
    child: Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
    on: bool,
}

impl FloorSwitch {
    fn start(bin: &Path) -> anyhow::Result<FloorSwitch> {
        let mut child = Command::new(bin)
            .args(["bench-floor", "--toggle"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut output = BufReader::new(child.stdout.take().context("stdout")?);
        if let Err(e) = read_ready(&mut output) {
            let _ = child.kill();
            return Err(e);
        }
        Ok(FloorSwitch {
            input: child.stdin.take().context("stdin")?,
            output,
            child,
            on: true,
        })
    }

    /// Attaches or detaches the programs; whether that changed anything. Returns once the
    /// kernel has done it.
    fn set(&mut self, on: bool) -> anyhow::Result<bool> {
        use std::io::Write as _;
        if on == self.on {
            return Ok(false);
        }
        self.input.write_all(if on { b"on\n" } else { b"off\n" })?;
        self.input.flush()?;
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        if line.trim() != "ok" {
            bail!("bench-floor: {line:?}");
        }
        self.on = on;
        Ok(true)
    }
}

impl Drop for FloorSwitch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `watcher bench-floor --hooks H`: empty programs attached until dropped.
struct Floor(Child);

impl Floor {
    fn start(bin: &Path, hooks: &str) -> anyhow::Result<Floor> {
        let mut child = Command::new(bin)
            .args(["bench-floor", "--hooks", hooks])
            .stdout(Stdio::piped())
            .spawn()?;
        wait_ready(&mut child)?;
        Ok(Floor(child))
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(child: &mut Child) -> anyhow::Result<()> {
    read_ready(&mut BufReader::new(child.stdout.take().context("stdout")?))
}

/// Waits for the `ready` line a daemon or `bench-floor` prints once its programs are attached.
fn read_ready(out: &mut impl BufRead) -> anyhow::Result<()> {
    let mut line = String::new();
    out.read_line(&mut line)?;
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

/// `xtask storm ARGS...`, run under `prefix` (e.g. `perf record --` or `watcher launch --`).
fn storm_command(prefix: &[&std::ffi::OsStr], args: &[&str]) -> anyhow::Result<Command> {
    let me = std::env::current_exe()?;
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&me);
            c
        }
        None => Command::new(&me),
    };
    // cargo puts its toolchain and target directories on LD_LIBRARY_PATH; inherited, every
    // exec of the storm would search them for libc first (78 failed opens per /bin/true).
    cmd.arg("storm")
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .stderr(Stdio::null());
    Ok(cmd)
}

fn run_storm(prefix: &[&std::ffi::OsStr], kind: &str, ops: u64) -> anyhow::Result<f64> {
    let out = storm_command(prefix, &[kind, &ops.to_string()])?.output()?;
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
    refuse_other_watchers()?;
    crate::build_release()?;
    crate::cargo(&["build", "--release", "-p", "xtask"])?;
    let bin = root().join("target/release/watcher");
    let dir = std::env::temp_dir().join(format!("watcher-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let no_rules = dir.join("no-rules");
    std::fs::create_dir_all(&no_rules)?;
    // ns/op per storm, variant, round; events, drops, CPU per watched storm.
    let mut ns = vec![vec![Vec::new(); VARIANTS.len()]; STORMS.len()];
    let mut delivered = vec![(0u64, 0u64, 0u64, 0f64); STORMS.len()];
    let tick = 1e9 / ticks_per_sec();
    let storm_rounds = if wanted(&a, "storms") { a.rounds } else { 0 };
    for round in 0..storm_rounds {
        eprintln!("bench: round {}/{}", round + 1, a.rounds);
        for (s, (kind, ops)) in STORMS.iter().enumerate() {
            ns[s][0].push(run_storm(&[], kind, *ops)?);
        }
        for (v, hooks) in FLOORS {
            let _floor = Floor::start(&bin, hooks)?;
            for (s, (kind, ops)) in STORMS.iter().enumerate() {
                ns[s][v].push(run_storm(&[], kind, *ops)?);
            }
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
            let (ev1, dr1) = totals(&d.settled(&bin)?);
            eprintln!(
                "bench: watched {kind}: {} events, {} drops",
                ev1 - ev0,
                dr1 - dr0
            );
            let e = &mut delivered[s];
            e.0 += ev1 - ev0;
            e.1 += dr1 - dr0;
            e.2 += d.cpu_ticks() - cpu0;
            e.3 += secs;
        }
    }

    if storm_rounds > 0 {
        print_storms(&ns, &delivered, a.rounds, tick);
        program_costs(&bin, &dir, &ns)?;
    }
    let paired = if wanted(&a, "pairs") {
        pairs(&bin, &dir, a.pairs)?
    } else {
        Vec::new()
    };
    if wanted(&a, "build") {
        real_workload(&bin, &dir, a.build_rounds)?;
    }
    if wanted(&a, "rules") {
        rules_throughput(&bin)?;
    }
    if wanted(&a, "detectors") {
        detectors(&bin)?;
    }
    if wanted(&a, "rmrf") {
        rm_rf(&bin, &dir, a.rounds)?;
    }
    if wanted(&a, "holds") {
        holds(&bin, &dir, a.hold_rounds, &a.hold_sizes, false)?;
    }
    if wanted(&a, "gate") {
        gate(&bin, &dir, a.rounds)?;
        holds(&bin, &dir, a.hold_rounds, &[1, 10], true)?;
    }
    if wanted(&a, "uring") {
        uring(&bin, &dir, a.rounds)?;
    }
    if wanted(&a, "audit") {
        audit(&bin, a.rounds.min(5))?;
    }
    if wanted(&a, "metrics") {
        let out = Command::new(&bin)
            .args(["bench-metrics", "--rounds", "15"])
            .output()?;
        if !out.status.success() {
            bail!(
                "bench-metrics failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("\n## Metrics\n");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        metrics_cost::run(&bin, &dir, a.rounds)?;
    }
    if wanted(&a, "profile") {
        let direct = profile(&bin, &dir, a.profile_rounds)?;
        if !paired.is_empty() {
            print_composed(&paired, &direct);
        }
    }
    remove_bench_cgroups();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A storm started with `--chunked`: one chunk of operations per `run`.
struct Chunked {
    child: Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl Chunked {
    fn start(prefix: &[&std::ffi::OsStr], kind: &str, ops: u64) -> anyhow::Result<Chunked> {
        let mut child = storm_command(prefix, &["--chunked", kind, &ops.to_string()])?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Chunked {
            input: child.stdin.take().context("stdin")?,
            output: BufReader::new(child.stdout.take().context("stdout")?),
            child,
        })
    }

    /// Runs one chunk; its ns/op.
    fn run(&mut self) -> anyhow::Result<f64> {
        use std::io::Write as _;
        self.input.write_all(b"\n")?;
        self.input.flush()?;
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        line.trim()
            .parse()
            .map_err(|e| anyhow!("chunked storm output {line:?}: {e}"))
    }
}

impl Drop for Chunked {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Storms taken in turns chunk by chunk (ABBA order, ~20 ms each): the machine's speed
/// drifts over seconds, so a chunk pair sees the same machine, which separate runs do not.
///
/// First the kernel's floor against nothing: one storm process, with the empty programs
/// attached for one chunk of each pair and not for the other (`bench-floor --toggle`; an attach
/// takes ~1 ms, a detach ~0.45 s, so this part takes ~1.5 minutes per storm at 200 pairs).
/// Then watched against
/// unwatched, with the daemon on, as two storm processes. What the daemon does on the other
/// core while a watched chunk runs is counted; its tail spills into the next chunk, which makes
/// that a slight underestimate. Returns, per storm, (watched / unwatched, floor / off).
fn pairs(bin: &Path, dir: &Path, pairs: usize) -> anyhow::Result<Vec<(&'static str, f64, f64)>> {
    const CHUNKS: [(&str, u64); 3] = [("exec", 40), ("open", 15_000), ("connect", 40_000)];
    let mut out = Vec::new();
    println!("\n## Paired chunks: the empty programs' floor / off, daemon off ({pairs} pairs per storm)\n");
    println!("| storm | ops per chunk | off ns/op (median) | floor ns/op (median) | ratio median | min | max | ratio of totals |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut floors = Vec::new();
    for (kind, ops) in CHUNKS {
        eprintln!("bench: paired floor {kind}");
        let mut storm = Chunked::start(&[], kind, ops)?;
        storm.run()?;
        // ABBA order keeps the floor as it is across the two chunks in a row that want it so
        // (detaching waits out RCU grace periods, ~0.45 s here). The kernel's work after a
        // switch spills into the next chunk: after each switch an unmeasured chunk runs first.
        let mut switch = FloorSwitch::start(bin)?;
        let (mut off, mut floor) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
        for i in 0..pairs {
            let order = if i % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for on in order {
                if switch.set(on)? {
                    storm.run()?;
                }
                let ns = storm.run()?;
                if on {
                    floor.push(ns)
                } else {
                    off.push(ns)
                }
            }
        }
        drop(switch);
        floors.push(print_pair_row(kind, ops, off, floor));
    }
    let d = Daemon::start(bin, dir, None)?;
    let launch = d.launch_prefix(bin.as_os_str());
    println!("\n## Paired chunks: watched / unwatched, daemon on, shipped rules ({pairs} pairs per storm)\n");
    println!("| storm | ops per chunk | unwatched ns/op (median) | watched ns/op (median) | ratio median | min | max | ratio of totals |");
    println!("|---|---|---|---|---|---|---|---|");
    for ((kind, ops), floor_off) in CHUNKS.into_iter().zip(floors) {
        eprintln!("bench: paired {kind}");
        let mut plain = Chunked::start(&[], kind, ops)?;
        let mut watched = Chunked::start(&launch, kind, ops)?;
        // Warm both (first exec of the binary, page cache, the daemon's session set-up).
        plain.run()?;
        watched.run()?;
        let (mut a, mut b) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
        for i in 0..pairs {
            if i % 2 == 0 {
                a.push(plain.run()?);
                b.push(watched.run()?);
            } else {
                b.push(watched.run()?);
                a.push(plain.run()?);
            }
        }
        out.push((kind, print_pair_row(kind, ops, a, b), floor_off));
    }
    Ok(out)
}

/// Prints one row of a paired-chunks table; returns the median ratio `b / a`.
fn print_pair_row(kind: &str, ops: u64, a: Vec<f64>, b: Vec<f64>) -> f64 {
    let ratios: Vec<f64> = b.iter().zip(&a).map(|(x, y)| x / y).collect();
    let (med, min, max) = stats(ratios);
    let total = b.iter().sum::<f64>() / a.iter().sum::<f64>();
    println!(
        "| {kind} | {ops} | {:.0} | {:.0} | {med:.3} | {min:.3} | {max:.3} | {total:.3} |",
        stats(a).0,
        stats(b).0
    );
    med
}

/// Watched / off from the steady measures alone: the paired floor / off, the profile's direct
/// unwatched / floor (the daemon cannot be switched on and off chunk by chunk; unwatched, its
/// programs stop after two loads), and the paired watched / unwatched.
fn print_composed(pairs: &[(&str, f64, f64)], profile: &[(&str, f64)]) {
    println!("\n## Watched / off, composed from the paired and profile measures\n");
    println!("| storm | floor / off (pairs) | unwatched / floor (profile, direct) | watched / unwatched (pairs) | watched / off |");
    println!("|---|---|---|---|---|");
    for (kind, wu, floor_off) in pairs {
        if let Some((_, uf)) = profile.iter().find(|(k, _)| k == kind) {
            println!(
                "| {kind} | {floor_off:.3} | {uf:.3} | {wu:.3} | {:.3} |",
                floor_off * uf * wu
            );
        }
    }
}

/// Kernel symbols of the watcher's path: its programs and their helpers, the ring, the maps,
/// and the syscall tracepoint machinery. (`bpf_lsm_*` are the kernel's LSM stubs, there
/// without any program; an unhooked open+close has none of the others.)
fn watcher_symbol(sym: &str) -> bool {
    const PREFIXES: [&str; 20] = [
        "bpf_",
        "__bpf_",
        "trie_",
        "htab_",
        "__htab_",
        "lookup_nulls_elem_raw",
        "copy_from_kernel_nofault",
        "strncpy_from_user_nofault",
        "sized_strscpy",
        "read_tsc",
        "ktime_get",
        "perf_syscall_",
        "perf_trace_",
        "perf_swevent_",
        "trace_call_bpf",
        "syscall_exit_work",
        "syscall_trace_enter",
        "map_id_range_up",
        "irq_work",
        "native_write_msr",
    ];
    !sym.starts_with("bpf_lsm_") && PREFIXES.iter().any(|p| sym.starts_with(p))
}

/// The share of a storm's own CPU samples (`perf record`) spent in the watcher's kernel path,
/// for the floor, the unwatched and the watched storm. Machine noise slows every function alike, so a share
/// within one run is steadier than a time against another run; `1 / (1 - share)` is the
/// overhead over the same storm without any of it. A lower bound: what the programs cost the
/// kernel's own code through the caches is not counted.
/// Returns, per storm, the direct unwatched / floor ratio.
fn profile(bin: &Path, dir: &Path, rounds: usize) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let perf = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("perf"))
                .find(|f| f.exists())
        })
        .context("perf not found: the profile part needs it (apt-get install linux-perf)")?;
    let data = dir.join("profile.data");
    let share = |prefix: &[&std::ffi::OsStr], kind: &str, ops: u64| -> anyhow::Result<f64> {
        let mut full: Vec<&std::ffi::OsStr> = vec![
            perf.as_os_str(),
            "record".as_ref(),
            "-q".as_ref(),
            "-F".as_ref(),
        ];
        full.extend([
            "10000".as_ref(),
            "-o".as_ref(),
            data.as_os_str(),
            "--".as_ref(),
        ]);
        full.extend_from_slice(prefix);
        run_storm(&full, kind, ops)?;
        let out = Command::new(&perf)
            .arg("report")
            .arg("-i")
            .arg(&data)
            .args([
                "--comm",
                "xtask",
                "--no-children",
                "--sort",
                "sym",
                "-g",
                "none",
                "-q",
            ])
            .args(["--percentage", "relative"])
            .output()?;
        if !out.status.success() {
            bail!(
                "perf report failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut total = 0.0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "    3.27%  [k] trie_lookup_elem"
            let mut f = line.split_whitespace();
            let (Some(pct), Some("[k]"), Some(sym)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let (Some(p), true) = (pct.strip_suffix('%'), watcher_symbol(sym)) {
                total += p.parse::<f64>().unwrap_or(0.0);
            }
        }
        Ok(total / 100.0)
    };
    let storms = [("open", 300_000u64), ("connect", 300_000)];
    const NAMES: [&str; 3] = ["floor", "unwatched", "watched"];
    let mut shares = vec![[Vec::new(), Vec::new(), Vec::new()]; storms.len()];
    for round in 0..rounds {
        eprintln!("bench: profile round {}/{rounds}", round + 1);
        {
            let _floor = Floor::start(bin, "classic")?;
            for (s, (kind, ops)) in storms.iter().enumerate() {
                shares[s][0].push(share(&[], kind, *ops)?);
            }
        }
        let d = Daemon::start(bin, dir, None)?;
        let launch = d.launch_prefix(bin.as_os_str());
        for (s, (kind, ops)) in storms.iter().enumerate() {
            shares[s][1].push(share(&[], kind, *ops)?);
            shares[s][2].push(share(&launch, kind, *ops)?);
        }
    }
    println!("\n## Profile: share of the storm's samples in the watcher's kernel path ({rounds} rounds; direct cost, a lower bound)\n");
    println!("| storm | variant | share (median) | min | max | implied overhead 1 / (1 - share) |");
    println!("|---|---|---|---|---|---|");
    for (s, (kind, _)) in storms.iter().enumerate() {
        for (v, name) in NAMES.iter().enumerate() {
            let (med, min, max) = stats(shares[s][v].clone());
            println!(
                "| {kind} | {name} | {:.1}% | {:.1}% | {:.1}% | {:.3} |",
                med * 100.0,
                min * 100.0,
                max * 100.0,
                1.0 / (1.0 - med)
            );
        }
    }
    // The rest of the storm (the kernel's own open or connect, user space) is the same work in
    // every variant, so the ratio of the rests gives one variant's direct cost over another's.
    println!(
        "\n| storm | unwatched / floor, direct (median) | watched / unwatched, direct (median) |"
    );
    println!("|---|---|---|");
    let mut out = Vec::new();
    for (s, (kind, _)) in storms.iter().enumerate() {
        let rest = |v: usize| 1.0 - stats(shares[s][v].clone()).0;
        println!(
            "| {kind} | {:.3} | {:.3} |",
            rest(0) / rest(1),
            rest(1) / rest(2)
        );
        out.push((*kind, rest(0) / rest(1)));
    }
    Ok(out)
}

#[allow(clippy::type_complexity)]
fn print_storms(
    ns: &[Vec<Vec<f64>>],
    delivered: &[(u64, u64, u64, f64)],
    rounds: usize,
    tick: f64,
) {
    println!(
        "\n## Storms ({} rounds, interleaved; ratio = variant / off, per round)\n",
        rounds
    );
    // Noise on these machines only ever adds time, so the fastest run of each variant is a
    // second, steadier estimate of its cost beside the paired medians.
    println!(
        "| storm | variant | ns/op (median) | ratio median | min | max | fastest / fastest off |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (s, (kind, _)) in STORMS.iter().enumerate() {
        for (v, name) in VARIANTS.iter().enumerate() {
            let ratios: Vec<f64> = ns[s][v].iter().zip(&ns[s][0]).map(|(x, o)| x / o).collect();
            let (med, min, max) = stats(ratios);
            let (ns_med, ns_min, _) = stats(ns[s][v].clone());
            let best = ns_min / stats(ns[s][0].clone()).1;
            println!(
                "| {kind} | {name} | {ns_med:.0} | {med:.3} | {min:.3} | {max:.3} | {best:.3} |"
            );
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
    println!("\n| storm | floor: tp_btf sys_exit vs per-syscall tracepoints (median) | raw_tp sys_exit vs per-syscall |");
    println!("|---|---|---|");
    for (s, (kind, _)) in STORMS.iter().enumerate() {
        let vs = |v: usize| {
            let r: Vec<f64> = ns[s][v].iter().zip(&ns[s][1]).map(|(x, f)| x / f).collect();
            stats(r).0
        };
        println!("| {kind} | {:.3} | {:.3} |", vs(5), vs(6));
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
}

/// What the kernel programs themselves cost per run, from the kernel's BPF run-time statistics
/// (switched on only for this pass: they add two clock reads per run), in one watched run of
/// each storm, against the median "off" time of an operation in the rounds above.
fn program_costs(bin: &Path, dir: &Path, ns: &[Vec<Vec<f64>>]) -> anyhow::Result<()> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(STATS)
        .with_context(|| format!("reading {STATS}"))?
        .trim()
        .to_string();
    let d = Daemon::start(bin, dir, None)?;
    let launch = d.launch_prefix(bin.as_os_str());
    let per_prog = |st: &serde_json::Value| -> std::collections::BTreeMap<String, (u64, u64)> {
        st["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["name"].as_str()?.to_string(),
                    (p["runs"].as_u64()?, p["run_ns"].as_u64()?),
                ))
            })
            .collect()
    };
    println!("\n## Kernel programs: cost per run (BPF run-time statistics, one watched run)\n");
    println!("| storm | program | runs per op | ns per run | ns per op | off ns/op (median) | programs / off |");
    println!("|---|---|---|---|---|---|---|");
    std::fs::write(STATS, "1").with_context(|| format!("writing {STATS}"))?;
    let result = (|| -> anyhow::Result<()> {
        for (s, (kind, ops)) in STORMS.iter().enumerate() {
            let a = per_prog(&d.status(bin)?);
            run_storm(&launch, kind, *ops)?;
            let b = per_prog(&d.status(bin)?);
            let off = stats(ns[s][0].clone()).0;
            let mut total = 0.0;
            for (name, (runs, run_ns)) in &b {
                let (r0, t0) = a.get(name).copied().unwrap_or((0, 0));
                let (runs, t) = (runs - r0, run_ns - t0);
                if runs < *ops / 2 {
                    continue;
                }
                let per_op = t as f64 / *ops as f64;
                total += per_op;
                println!(
                    "| {kind} | {name} | {:.2} | {:.0} | {per_op:.0} | | |",
                    runs as f64 / *ops as f64,
                    t as f64 / runs as f64
                );
            }
            println!(
                "| {kind} | all | | | {total:.0} | {off:.0} | {:.3} |",
                total / off
            );
        }
        Ok(())
    })();
    let _ = std::fs::write(STATS, &before);
    result
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

/// Every detector's cost per event over the recorded stream (rules, scope, a baseline learned
/// from it in enforce mode), against the bare loop, interleaved; and a profile's size after
/// 100 sessions.
fn detectors(bin: &Path) -> anyhow::Result<()> {
    let stream = root().join("bench/streams/agent-session.jsonl");
    let out = Command::new(bin)
        .arg("bench-detectors")
        .arg(&stream)
        .args(["--rounds", "15"])
        .output()?;
    if !out.status.success() {
        bail!(
            "bench-detectors failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("\n## Detectors (recorded stream, one core)\n");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// The audit log (ingest against plain inserts, size, seal latency) on the checkout's disk
/// (a temp dir may be a tmpfs, where a sync costs nothing), then `watcher-verify` over the
/// store it leaves.
fn audit(bin: &Path, rounds: usize) -> anyhow::Result<()> {
    let dir = root().join("target/bench-audit");
    let _ = std::fs::remove_dir_all(&dir);
    let stream = root().join("bench/streams/agent-session.jsonl");
    println!("\n## Audit log (recorded stream, shipped durability)\n");
    let out = Command::new(bin)
        .arg("bench-audit")
        .arg(&stream)
        .arg("--dir")
        .arg(&dir)
        .args(["--rounds", &rounds.to_string()])
        .env("RUST_LOG", "error")
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "bench-audit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(root().join("target/release/watcher-verify"))
        .arg("--store")
        .arg(dir.join("audit.db"))
        .arg("--pubkey")
        .arg(dir.join("audit.key.pub"))
        .args(["bench", "--rounds", &rounds.max(3).to_string()])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "watcher-verify bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
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
    let gated = st["gate"]["gated"].as_u64().unwrap_or(0);
    let (med, min, max) = stats(ratios);
    println!("\n## Real workload: cargo build (3 deps, offline), daemon on, gate on\n");
    println!(
        "| rounds | unwatched s (median) | watched/unwatched median | min | max | events | drops | gated |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {rounds} | {:.2} | {med:.3} | {min:.3} | {max:.3} | {ev} | {drops} | {gated} |",
        stats(plain).0
    );
    Ok(())
}

/// Event-to-frozen latency of holds, and kill-switch engage-to-frozen, for sessions of 1, 10
/// and 100 processes. Baseline in the same run: freezing an equal cgroup by hand (write
/// `cgroup.freeze`, wait for `frozen 1`), i.e. the kernel's own cost.
/// The gate, with the shipped pack: `sh -c true` in a loop (every exec of a shell is gated),
/// watched against unwatched, round by round; then the daemon's stop-to-answer latency.
fn gate(bin: &Path, dir: &Path, rounds: usize) -> anyhow::Result<()> {
    const OPS: u64 = 2000;
    let d = Daemon::start(bin, dir, None)?;
    let launch = d.launch_prefix(bin.as_os_str());
    let before = d.status(bin)?["gate"]["gated"].as_u64().unwrap_or(0);
    let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        eprintln!("bench: gate round {}/{rounds}", r + 1);
        let (u, w) = if r % 2 == 0 {
            let u = run_storm(&[], "sh", OPS)?;
            (u, run_storm(&launch, "sh", OPS)?)
        } else {
            let w = run_storm(&launch, "sh", OPS)?;
            (run_storm(&[], "sh", OPS)?, w)
        };
        off.push(u);
        on.push(w);
        ratios.push(w / u);
    }
    let st = d.status(bin)?;
    let g = &st["gate"];
    let gated = g["gated"].as_u64().unwrap_or(0) - before;
    let (med, min, max) = stats(ratios);
    println!("\n## Gate: `sh -c true` x {OPS}, shipped pack (a shell exec is gated)\n");
    println!("| rounds | unwatched us/op | watched us/op | watched/unwatched median | min | max | gated | stop to answer p50 | p99 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {rounds} | {:.0} | {:.0} | {med:.3} | {min:.3} | {max:.3} | {gated} | {} us | {} us |",
        stats(off).0 / 1e3,
        stats(on).0 / 1e3,
        g["latency_us_p50"],
        g["latency_us_p99"]
    );
    Ok(())
}

/// Kernel event to whole session frozen. `gated`: the rule is one the kernel cannot decide
/// alone (the gate stops the exec, user space decides and freezes), else a fast-path hold.
fn holds(
    bin: &Path,
    dir: &Path,
    rounds: usize,
    sizes: &[usize],
    gated: bool,
) -> anyhow::Result<()> {
    let tool = dir.join("held-tool");
    std::fs::write(&tool, "#!/bin/sh\ntrue\n")?;
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let rules = dir.join("hold-rules");
    std::fs::create_dir_all(&rules)?;
    // A `not:` the kernel cannot test takes the rule off the fast path and into the gate.
    let unless = if gated { ", not: {arg: --never}" } else { "" };
    std::fs::write(
        rules.join("hold.yaml"),
        format!(
            "rules:\n  - id: bench-hold\n    description: bench\n    severity: low\n    action: hold\n    mode: enforce\n    condition: {{type: exec, exe: \"{}\"{unless}}}\n    examples: {{match: [{{type: exec, path: \"{}\"}}]}}\n",
            tool.display(),
            tool.display()
        ),
    )?;
    let d = Daemon::start(bin, dir, Some(&rules))?;
    let sock = d.socket.clone();
    let cli = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(bin)
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()?)
    };
    if gated {
        println!("\n## Holds through the gate: kernel stop to whole session frozen, and the kill-switch\n");
    } else {
        println!("\n## Holds: kernel event to whole session frozen, and the kill-switch\n");
    }
    println!("| processes | holds | event to frozen p50 | p99 | max | hand-made freeze p50 (baseline) | p50 ratio |");
    println!("|---|---|---|---|---|---|---|");
    let mut ks_rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &n in sizes {
        let mut lat = hdrhistogram::Histogram::<u64>::new(3)?;
        let mut base = hdrhistogram::Histogram::<u64>::new(3)?;
        let mut ks = hdrhistogram::Histogram::<u64>::new(3)?;
        for _ in 0..rounds {
            // n - 1 sleepers; once they all run, the shell becomes the held program: a
            // settled session of n processes.
            let fifo = dir.join("go");
            let _ = std::fs::remove_file(&fifo);
            let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes())?;
            // SAFETY: valid C string.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                bail!("mkfifo {}", fifo.display());
            }
            let script = format!(
                "i=1; while [ $i -lt {n} ]; do sleep 600 & i=$((i+1)); done; read x < {}; exec {}",
                fifo.display(),
                tool.display()
            );
            let mut child = Command::new(bin)
                .arg("--socket")
                .arg(&sock)
                .args(["launch", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            wait_for_processes(&d, bin, n)?;
            // Follow the findings before the trigger, so the hold is read, not polled for:
            // a polling loop would compete with the daemon for the two CPUs.
            let mut follow = Command::new(bin)
                .arg("--socket")
                .arg(&sock)
                .args(["findings", "--json", "--follow"])
                .stdout(Stdio::piped())
                .spawn()?;
            let mut lines = BufReader::new(follow.stdout.take().context("stdout")?).lines();
            // The backlog of earlier rounds comes first; only a new hold counts.
            std::fs::write(&fifo, "go\n")?;
            let mut id = None;
            for line in lines.by_ref() {
                let v: serde_json::Value = serde_json::from_str(&line?)?;
                if let Some(h) = v["hold"].as_str() {
                    if !seen.contains(h) {
                        id = Some(h.to_string());
                        break;
                    }
                }
            }
            let _ = follow.kill();
            let _ = follow.wait();
            let id = id.ok_or_else(|| anyhow!("no hold"))?;
            seen.insert(id.clone());
            let hold = wait_for_record(&cli, &id)?;
            let us = hold["frozen_us"]
                .as_u64()
                .ok_or_else(|| anyhow!("hold {id} has no frozen_us"))?;
            eprintln!("bench: {n} processes, hold {id}: frozen {us} us after the event");
            lat.record(us)?;
            cli(&["deny", &id])?;
            let _ = child.wait();
            base.record(hand_freeze(n)?)?;
            // Kill-switch over the same number of processes, in one running session.
            let mut child = Command::new(bin)
                .arg("--socket")
                .arg(&sock)
                .args([
                    "launch",
                    "--",
                    "sh",
                    "-c",
                    &format!("i=1; while [ $i -lt {n} ]; do sleep 600 & i=$((i+1)); done; exec sleep 600"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            wait_for_processes(&d, bin, n)?;
            let out = cli(&["kill-switch", "engage", "--all", "--freeze"])?;
            let text = String::from_utf8_lossy(&out.stdout);
            let us: u64 = text
                .split(" in ")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| anyhow!("kill-switch output: {text}"))?;
            ks.record(us)?;
            cli(&["kill-switch", "engage", "--all", "--kill"])?;
            let _ = child.wait();
            cli(&["kill-switch", "release"])?;
        }
        println!(
            "| {n} | {rounds} | {} us | {} us | {} us | {} us | {:.2} |",
            lat.value_at_quantile(0.5),
            lat.value_at_quantile(0.99),
            lat.max(),
            base.value_at_quantile(0.5),
            lat.value_at_quantile(0.5) as f64 / base.value_at_quantile(0.5).max(1) as f64
        );
        ks_rows.push((n, ks));
    }
    println!("\n| processes | kill-switch engage to all frozen p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (n, ks) in ks_rows {
        println!(
            "| {n} | {} us | {} us | {} us |",
            ks.value_at_quantile(0.5),
            ks.value_at_quantile(0.99),
            ks.max()
        );
    }
    Ok(())
}

/// The stored hold record (written just after its finding).
fn wait_for_record(
    cli: &dyn Fn(&[&str]) -> anyhow::Result<std::process::Output>,
    id: &str,
) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    loop {
        let out = cli(&["show-hold", id, "--json"])?;
        if out.status.success() {
            return Ok(serde_json::from_slice(&out.stdout)?);
        }
        if start.elapsed().as_secs() > 30 {
            bail!("hold {id} was never stored");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn wait_for_processes(d: &Daemon, bin: &Path, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let st = d.status(bin)?;
        if st["processes_watched"].as_u64().unwrap_or(0) as usize >= n {
            return Ok(());
        }
        if start.elapsed().as_secs() > 30 {
            bail!("the session's {n} processes did not start");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The benchmark daemons' session cgroups (ended sessions leave empty directories).
fn remove_bench_cgroups() {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Some(root) = text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or("")))
    }) else {
        return;
    };
    let base = root.join("watcher-bench");
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(&base);
}

/// Microseconds to freeze a cgroup of `n` sleeping processes by hand.
fn hand_freeze(n: usize) -> anyhow::Result<u64> {
    let root = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or("")))
        })
        .ok_or_else(|| anyhow!("no cgroup2 mount"))?;
    let cg = root.join(format!("watcher-bench-baseline-{}", std::process::id()));
    std::fs::create_dir_all(&cg)?;
    let mut kids = Vec::new();
    for _ in 0..n {
        kids.push(Command::new("sleep").arg("600").spawn()?);
    }
    for k in &kids {
        std::fs::write(cg.join("cgroup.procs"), k.id().to_string())?;
    }
    let t = Instant::now();
    std::fs::write(cg.join("cgroup.freeze"), "1")?;
    while !std::fs::read_to_string(cg.join("cgroup.events"))?.contains("frozen 1") {
        std::hint::spin_loop();
    }
    let us = t.elapsed().as_micros() as u64;
    std::fs::write(cg.join("cgroup.kill"), "1")?;
    for mut k in kids {
        let _ = k.wait();
    }
    for _ in 0..100 {
        if std::fs::remove_dir(&cg).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(us)
}

/// `rm -rf` of 100,000 files, watched (shipped rules, default ring) and not, alternated per
/// round: every delete is a record, and none may be dropped.
fn rm_rf(bin: &Path, dir: &Path, rounds: usize) -> anyhow::Result<()> {
    const FILES: usize = 100_000;
    let tree = dir.join("rmrf");
    let make = || -> anyhow::Result<()> {
        for d in 0..100 {
            let sub = tree.join(format!("d{d}"));
            std::fs::create_dir_all(&sub)?;
            for f in 0..FILES / 100 {
                std::fs::File::create(sub.join(format!("f{f}")))?;
            }
        }
        Ok(())
    };
    let d = Daemon::start(bin, dir, None)?;
    let launch = d.launch_prefix(bin.as_os_str());
    let (mut plain, mut watched) = (Vec::new(), Vec::new());
    let (mut events, mut drops) = (0, 0);
    for round in 0..rounds {
        eprintln!("bench: rm -rf round {}/{rounds}", round + 1);
        for watch in [round % 2 == 0, round % 2 != 0] {
            make()?;
            let mut cmd = match watch {
                true => {
                    let mut c = Command::new(launch[0]);
                    c.args(&launch[1..]);
                    c.arg("rm");
                    c
                }
                false => Command::new("rm"),
            };
            cmd.arg("-rf").arg(&tree).stderr(Stdio::null());
            let (ev0, dr0) = totals(&d.status(bin)?);
            let t = Instant::now();
            let st = cmd.status()?;
            let secs = t.elapsed().as_secs_f64();
            if !st.success() || tree.exists() {
                bail!("rm -rf {} failed (watched: {watch})", tree.display());
            }
            if watch {
                // Intake drains what the session produced before the counters are read.
                let mut last = totals(&d.status(bin)?);
                for _ in 0..500 {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let now = totals(&d.status(bin)?);
                    if now == last {
                        break;
                    }
                    last = now;
                }
                events += last.0 - ev0;
                drops += last.1 - dr0;
                watched.push(secs);
            } else {
                plain.push(secs);
            }
        }
    }
    let (p, w) = (stats(plain).0, stats(watched.clone()).0);
    println!("\n## rm -rf of {FILES} files ({rounds} rounds each, alternated)\n");
    println!(
        "| unwatched s (median) | watched s (median) | ratio | records per watched run | drops |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {p:.3} | {w:.3} | {:.3} | {} | {drops} |",
        w / p,
        events / watched.len().max(1) as u64
    );
    Ok(())
}

/// What the io_uring op hook costs a process outside every session: a storm of no-ops through a
/// ring with the daemon off and on (its `io_uring_submit_req` program attached), in alternating
/// order round by round. A watched storm is not run: the shipped pack holds a watched process's
/// ring as it is made.
fn uring(bin: &Path, dir: &Path, rounds: usize) -> anyhow::Result<()> {
    const OPS: u64 = 500_000;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("bench: io_uring round {}/{rounds}", round + 1);
        for daemon in [round % 2 == 0, round % 2 != 0] {
            if daemon {
                let _d = Daemon::start(bin, dir, None)?;
                on.push(run_storm(&[], "uring", OPS)?);
            } else {
                off.push(run_storm(&[], "uring", OPS)?);
            }
        }
    }
    let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
    let (r, lo, hi) = stats(ratios);
    let (o, n) = (stats(off).0, stats(on).0);
    println!("\n## io_uring no-ops outside every session ({rounds} rounds, {OPS} ops each, alternated)\n");
    println!(
        "| daemon off ns/op (median) | daemon on ns/op (median) | on / off median | min | max |"
    );
    println!("|---|---|---|---|---|");
    println!("| {o:.0} | {n:.0} | {r:.3} | {lo:.3} | {hi:.3} |");
    Ok(())
}
