//! The test harness shared by the end-to-end tests: the real daemon binary, started as root
//! with its own socket (and optionally its own config), driven through its CLI.
#![allow(dead_code)]
pub mod audit;
pub mod clock;
pub mod holds;
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_watcher");
/// Upper bound for an awaited event; reaching it fails the test (it is not a sleep).
pub const DEADLINE: Duration = Duration::from_secs(30);
/// For a daemon started again while sessions work: loading and verifying the programs takes
/// about 15 s of a debug build on an idle machine, and the chaos suite's agents leave it half
/// of the two cores at most.
pub const RESTART_DEADLINE: Duration = Duration::from_secs(90);

pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load eBPF programs into the kernel and must run as root (cargo xtask test does)"
    );
}

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub dir: TempDir,
    config_path: PathBuf,
    /// This daemon's directory of session cgroups (one per test daemon, so parallel tests and a
    /// restarted daemon see only their own sessions).
    pub cgroup: PathBuf,
    umask: Option<u32>,
    /// Where it pins its programs and maps (`[daemon] bpffs`).
    pub bpffs: PathBuf,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with("")
    }

    /// Starts the daemon with `config` (TOML text) as its configuration file. The hold store
    /// and the cgroup directory are this daemon's own.
    pub fn start_with(config: &str) -> Daemon {
        Self::start_with_env(config, &[])
    }

    /// As `start_with`, with `env` in the first daemon's environment only (a restart goes
    /// without it).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_opts(config, env, None)
    }

    /// As `start_with`, the daemon started (and restarted) with file mode creation mask
    /// `umask` (a host where it is 0 must not make its files readable by others).
    pub fn start_with_umask(config: &str, umask: u32) -> Daemon {
        Self::start_opts(config, &[], Some(umask))
    }

    /// As `start_with`, its directory (stores, key, socket) made under `parent` (a small
    /// file system whose disk a test fills, say).
    pub fn start_under(config: &str, parent: &std::path::Path) -> Daemon {
        Self::start_opts_in(config, &[], None, Some(parent))
    }

    fn start_opts(config: &str, env: &[(&str, &str)], umask: Option<u32>) -> Daemon {
        Self::start_opts_in(config, env, umask, None)
    }

    fn start_opts_in(
        config: &str,
        env: &[(&str, &str)],
        umask: Option<u32>,
        parent: Option<&std::path::Path>,
    ) -> Daemon {
        require_root();
        let dir = match parent {
            Some(p) => TempDir::new_in(p, "daemon"),
            None => TempDir::new("daemon"),
        };
        let socket = dir.0.join("ctl.sock");
        let config_path = dir.0.join("watcher.toml");
        let cgroup_name = format!("watcher-test-{}-{}", std::process::id(), rand_suffix());
        let own = format!(
            "store = \"{}\"\ncgroup = \"{cgroup_name}\"\n",
            dir.0.join("watcher.db").display()
        );
        let config = with_section(config, "[holds]", &own);
        let api = format!("socket = \"{}\"\n", dir.0.join("api.sock").display());
        let config = with_section(&config, "[api]", &api);
        let audit = format!(
            "store = \"{0}/audit.db\"\nkey = \"{0}/audit.key\"\nwitness = \"{0}/witness.jsonl\"\n",
            dir.0.display()
        );
        let config = with_section(&config, "[audit]", &audit);
        // Each daemon pins its programs in its own directory (removed with it, below).
        remove_stale_pins();
        let bpffs = PathBuf::from("/sys/fs/bpf").join(&cgroup_name);
        let config = if config.contains("bpffs") {
            config
        } else {
            with_section(
                &config,
                "[daemon]",
                &format!("bpffs = \"{}\"\n", bpffs.display()),
            )
        };
        // Parallel test daemons cannot share the default metrics port: off unless asked for.
        let config = if config.contains("[metrics]") {
            config
        } else {
            format!("{config}\n[metrics]\nlisten = \"\"\n")
        };
        std::fs::write(&config_path, config).unwrap();
        let cgroup = cgroup2_root().join(cgroup_name);
        let child = spawn_daemon(&config_path, &socket, env, umask, DEADLINE);
        Daemon {
            child,
            socket,
            dir,
            config_path,
            cgroup,
            umask,
            bpffs,
        }
    }

    /// Kills the daemon with SIGKILL (no clean-up at all) and starts it again, same
    /// configuration, store and cgroups.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.restart();
    }

    /// Stops the daemon cleanly (SIGTERM, as `systemctl stop` does) and waits for it to exit.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) of the daemon this harness started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = std::time::Instant::now() + DEADLINE;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < until,
                "the daemon did not stop on SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL and waits for it; its files stay.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the daemon again after it died (same configuration, store and cgroups).
    pub fn restart(&mut self) {
        self.child = spawn_daemon(
            &self.config_path,
            &self.socket,
            &[],
            self.umask,
            RESTART_DEADLINE,
        );
    }

    pub fn cli(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--socket").arg(&self.socket);
        c
    }

    /// Runs `sh -c script` as a watched session; returns (trace id, exit code).
    pub fn launch(&self, script: &str) -> (String, i32) {
        let out = self
            .cli()
            .args(["launch", "--", "sh", "-c", script])
            .output()
            .unwrap();
        (trace_of(&out.stderr), out.status.code().unwrap_or(-1))
    }

    /// The session's events, read from `watcher events --follow` until the exit of `root`.
    pub fn session_events(&self, trace: &str, root: Option<u32>) -> Vec<Value> {
        let mut child = self
            .cli()
            .args(["events", "--json", "--follow", "--trace", trace])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = lines_of(child.stdout.take().unwrap());
        let mut events = Vec::new();
        let mut root = root;
        loop {
            let line = rx
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("session {trace} did not end; saw {events:#?}"));
            let ev: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(ev["trace_id"], trace, "event of another session: {ev}");
            if root.is_none() && ev["type"] == "exec" {
                root = ev["pid"].as_u64().map(|p| p as u32);
            }
            let done = ev["type"] == "exit" && root.is_some_and(|r| ev["pid"] == r);
            events.push(ev);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        events
    }

    pub fn status(&self) -> Value {
        let out = self.cli().args(["status", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its pinned programs detach: nothing of it stops a later test's processes.
        let _ = std::fs::remove_dir_all(&self.bpffs);
        // Whatever a test left in its sessions (a held process, say) goes with it.
        if let Ok(rd) = std::fs::read_dir(&self.cgroup) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    let _ = std::fs::write(p.join("cgroup.kill"), "1");
                    for _ in 0..100 {
                        if std::fs::remove_dir(&p).is_ok() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        // The sessions' process limits on a cgroup v1 hierarchy (`sys::pids`), emptied above.
        if let Some(name) = self.cgroup.file_name() {
            for base in v1_pids_mounts().iter().map(|m| m.join(name)) {
                for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                    let _ = std::fs::remove_dir(e.path());
                }
                let _ = std::fs::remove_dir(&base);
            }
        }
    }
}

/// Removes what test daemons of a test process that is gone pinned (a run that was killed).
fn remove_stale_pins() {
    for e in std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("watcher-test-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The mount points of cgroup v1 hierarchies with the pids controller.
fn v1_pids_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split_whitespace();
            if r.next()? != "cgroup" || !r.nth(1)?.split(',').any(|o| o == "pids") {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect()
}

/// `config` with `lines` at the top of `section` (added when missing).
fn with_section(config: &str, section: &str, lines: &str) -> String {
    let header = format!("{section}\n");
    if config.contains(&header) {
        config.replacen(&header, &format!("{header}{lines}"), 1)
    } else {
        format!("{config}\n{header}{lines}")
    }
}

fn spawn_daemon(
    config: &std::path::Path,
    socket: &std::path::Path,
    env: &[(&str, &str)],
    umask: Option<u32>,
    deadline: Duration,
) -> Child {
    let mut cmd = Command::new(BIN);
    if let Some(mask) = umask {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: umask is async-signal-safe and touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .arg("--config")
        .arg(config)
        .args(["run", "--socket"])
        .arg(socket)
        // `WATCHER_TEST_LOG=info` (or debug) when a failure needs the daemon's whole story.
        .env(
            "RUST_LOG",
            std::env::var("WATCHER_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn watcher run");
    // The daemon prints "ready" once its programs are attached and the socket listens.
    let lines = lines_of(child.stdout.take().unwrap());
    match lines.recv_timeout(deadline) {
        Ok(line) => assert!(line.starts_with("ready"), "daemon did not start: {line:?}"),
        Err(e) => {
            let _ = child.kill();
            panic!("the daemon printed no ready line within {deadline:?} ({e})")
        }
    }
    child
}

/// The cgroup v2 mount point, from the mount table.
pub fn cgroup2_root() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("no cgroup2 file system is mounted; the hold tests need cgroup v2")
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        Self::new_in(&std::env::temp_dir(), tag)
    }

    pub fn new_in(parent: &std::path::Path, tag: &str) -> TempDir {
        let p = parent.join(format!(
            "watcher-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An address of this host that is not loopback, for a test's "remote" listener: a connect to
/// it never leaves the host, and is not a loopback destination either (which the baseline
/// tells apart). The source address of the default route; with none, 198.18.0.1 (a benchmark
/// address) on a dummy interface made for the tests.
pub fn local_addr() -> std::net::IpAddr {
    static ADDR: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        // A UDP connect sends nothing: it only picks the route and its source.
        let routed = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("203.0.113.1:9").and_then(|()| s.local_addr()))
            .map(|a| a.ip());
        match routed {
            Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => ip,
            _ => {
                for args in [
                    &["link", "add", "watcher-test0", "type", "dummy"][..],
                    &["addr", "add", "198.18.0.1/32", "dev", "watcher-test0"],
                    &["link", "set", "watcher-test0", "up"],
                ] {
                    let _ = Command::new("ip").args(args).status();
                }
                std::net::Ipv4Addr::new(198, 18, 0, 1).into()
            }
        }
    })
}

pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The real interpreter behind any `python3` shim, so the tree under test stays small.
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed by this test");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Daemon {
    /// The session's findings (after `session_events` saw its end, all of them are in).
    pub fn findings(&self, trace: &str) -> Vec<Value> {
        let out = self
            .cli()
            .args(["findings", "--json", "--trace", trace])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        holds::json_lines(&out.stdout)
    }

    /// Runs `script` as a session and returns (its events, its findings, exit code).
    pub fn run_session(&self, script: &str) -> (Vec<Value>, Vec<Value>, i32) {
        let (trace, code) = self.launch(script);
        let events = self.session_events(&trace, None);
        (events, self.findings(&trace), code)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the daemon to exit by itself (a fault-injection point, say).
    pub fn await_death(&mut self) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(start.elapsed() < DEADLINE, "the daemon did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs curl with `args`; returns (HTTP status, JSON body or null).
pub fn curl(args: &[&str]) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is needed by this test");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The lines of `r`, read on a thread, so that a wait for one can have a deadline.
pub fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A fake user's home under /home (so `~/` rules apply), removed afterwards.
pub struct FakeHome(pub PathBuf);

impl FakeHome {
    pub fn new() -> FakeHome {
        let p = PathBuf::from(format!(
            "/home/watcher-e2e-{}-{}",
            std::process::id(),
            rand_suffix() % 100_000
        ));
        for d in [".ssh", ".aws", ".kube", ".claude"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        for (f, body) in [
            (".ssh/id_rsa", "-----BEGIN FAKE KEY-----\n"),
            (".aws/credentials", "[default]\naws_access_key_id=FAKE\n"),
            (".kube/config", "apiVersion: v1\n"),
            (".netrc", "machine example.com login x password fake\n"),
            (".npmrc", "//registry.example.com/:_authToken=fake\n"),
            (".bashrc", "# fake\n"),
        ] {
            std::fs::write(p.join(f), body).unwrap();
        }
        FakeHome(p)
    }
}

impl Drop for FakeHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shipped rule pack, copied into `into/rules`.
pub fn pack_dir(into: &std::path::Path) -> PathBuf {
    let dir = into.join("rules");
    std::fs::create_dir_all(&dir).unwrap();
    let pack = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    for e in std::fs::read_dir(pack).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Where a threat case runs: the host's mount namespace, or a private one with its own /root
/// (a tmpfs), as agents in sandboxes and containers do.
#[derive(Clone, Copy, Debug)]
pub enum Ns {
    Host,
    Private,
}

impl Daemon {
    /// `watcher launch -- sh -c script` in `ns`; in a private namespace `setup` (shell) runs
    /// first, inside it, before the session starts.
    pub fn launch_in(&self, ns: Ns, setup: &str, script: &str) -> Command {
        match ns {
            Ns::Host => {
                let mut c = self.cli();
                c.args(["launch", "--", "sh", "-c", script]);
                c
            }
            Ns::Private => {
                let mut c = Command::new("unshare");
                c.args(["-m", "sh", "-c"])
                    .arg(format!(
                        "mount -t tmpfs tmpfs /root && {{ {setup} true; }} && exec \"$0\" --socket \"$1\" launch -- sh -c \"$2\""
                    ))
                    .arg(BIN)
                    .arg(&self.socket)
                    .arg(script);
                c
            }
        }
    }
}

/// The trace id `watcher launch` printed first on stderr.
pub fn trace_of(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("watcher: trace id "))
        .unwrap_or_else(|| panic!("no trace id on stderr: {stderr}"))
        .trim()
        .to_string()
}

/// What must be true of the host after a threat case.
pub fn absent(p: &std::path::Path) -> Result<(), String> {
    match p.exists() {
        true => Err(format!("{} exists", p.display())),
        false => Ok(()),
    }
}

/// `p` holds `before`, byte for byte.
pub fn unchanged(p: &std::path::Path, before: &[u8]) -> Result<(), String> {
    match std::fs::read(p) {
        Ok(now) if now == before => Ok(()),
        Ok(now) => Err(format!(
            "{} changed: {:?}",
            p.display(),
            String::from_utf8_lossy(&now)
        )),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A cgroup of the test's own in the v2 hierarchy, with a process of its own, as a pod, a
/// service or a login scope owns its processes; removed (any session made in it first) when
/// dropped, however the test ends.
pub struct OwnerCgroup {
    pub dir: PathBuf,
    pub sibling: std::process::Child,
}

impl OwnerCgroup {
    pub fn new(d: &Daemon) -> OwnerCgroup {
        let root = d.cgroup.parent().unwrap();
        let dir = root.join(format!(
            "watcher-test-owner-{}-{}",
            std::process::id(),
            OWNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let procs = dir.join("cgroup.procs");
        let sibling = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec sleep 600", procs.display()))
            .spawn()
            .unwrap();
        let owner = OwnerCgroup { dir, sibling };
        let until = std::time::Instant::now() + DEADLINE;
        while !owner.holds(owner.sibling.id()) {
            assert!(
                std::time::Instant::now() < until,
                "the owner's own process never entered it"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        owner
    }

    /// Whether `pid` is in the owner cgroup itself (not in a session inside it).
    pub fn holds(&self, pid: u32) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|l| l == pid.to_string())
    }

    /// `watcher launch -- sh -c script`, started from inside the owner cgroup.
    pub fn launch(&self, d: &Daemon, script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {} && exec \"$0\" --socket \"$1\" launch -- sh -c \"$2\"",
                self.dir.join("cgroup.procs").display()
            ))
            .arg(BIN)
            .arg(&d.socket)
            .arg(script);
        c
    }
}

static OWNERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for OwnerCgroup {
    fn drop(&mut self) {
        let _ = self.sibling.kill();
        let _ = self.sibling.wait();
        let until = std::time::Instant::now() + DEADLINE;
        while std::time::Instant::now() < until {
            let sessions: Vec<_> = std::fs::read_dir(&self.dir)
                .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).collect())
                .unwrap_or_default();
            for s in &sessions {
                let _ = std::fs::write(s.path().join("cgroup.kill"), "1");
                let _ = std::fs::remove_dir(s.path());
            }
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
