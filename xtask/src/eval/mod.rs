//! `cargo xtask eval`: the Atomic Red Team Linux items (`eval/atomic-red-team-linux.yaml`) run as
//! watched sessions, each in a sandbox of its own (`eval/sandbox.sh`: mount and network
//! namespaces, an overlay over `/` that vanishes, a tmpfs home with fake secrets). Every hold is
//! denied. Three passes: the rule pack on; the rules off with a learned profile in enforce
//! mode; both together. Per category: items with a finding, items held or killed, and false
//! holds of the discovery items. `--normal`: the normal-work corpus instead (normal.rs).
mod normal;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;

use crate::setup::root;

#[derive(clap::Args)]
pub struct Args {
    /// The rule directory of the rules-on pass (default: the shipped pack).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// A profile (`watcher baseline export`) for the rules-off pass, instead of learning one
    /// from the normal-work sessions.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// The items (default: eval/atomic-red-team-linux.yaml).
    #[arg(long)]
    items: Option<PathBuf>,
    /// Only these item ids.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Learning sessions of normal work before the rules-off pass.
    #[arg(long, default_value_t = 4)]
    learn: usize,
    /// An item still running after this many seconds is killed.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Only this pass: `rules` (the pack), `baseline` (rules off, a learned profile) or `both`.
    #[arg(long)]
    pass: Option<String>,
    /// The normal-work corpus (eval/normal-work.yaml) instead of the attack items: holds per
    /// 100 sessions, rules alone and rules with a profile learned from part of it.
    #[arg(long)]
    normal: bool,
    /// The corpus of `--normal` (default: eval/normal-work.yaml).
    #[arg(long)]
    corpus: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct Item {
    id: String,
    test_name: String,
    command: String,
    #[serde(default)]
    prereq: Option<String>,
    category: String,
    #[serde(default)]
    executor: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    findings: usize,
    stopped: bool,
    rules: Vec<String>,
    /// What the first finding that stopped it was about (a baseline or scope anomaly).
    why: Option<String>,
    /// The session's exit code (None: killed, or still running at the timeout).
    code: Option<i32>,
    /// How long it ran.
    took: Duration,
}

/// Normal work of an agent in a sandbox: a C program, git on a local repository, the shell
/// tools an agent uses to look around its task (listing, searching, reading, `uname`, `id`,
/// `ps`, `env`).
const NORMAL_WORK: &str = r#"set -e
mkdir -p proj/src && cd proj
printf '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n' > src/main.c
cc -O1 -o app src/main.c && ./app >/dev/null
printf 'app: src/main.c\n\tcc -o app src/main.c\n' > Makefile
make -s -B >/dev/null
git init -q . && git config user.email dev@example.invalid && git config user.name dev
git add -A && git commit -qm first
sed -i s/hi/hello/ src/main.c && git diff --stat >/dev/null && git commit -qam second
git log --oneline | head -5 >/dev/null
ls -la . src >/dev/null; cat src/main.c | grep -c main >/dev/null; find . -name '*.c' | wc -l >/dev/null
head -3 Makefile >/dev/null; tail -1 Makefile >/dev/null; sort Makefile | uniq >/dev/null
cp src/main.c src/main.c.bak && mv src/main.c.bak src/old.c && rm src/old.c
tar czf /tmp/proj.tgz src && rm /tmp/proj.tgz
uname -a >/dev/null; id >/dev/null; whoami >/dev/null; hostname >/dev/null; ps aux >/dev/null
env | grep -c PATH >/dev/null; pwd >/dev/null; date >/dev/null; which cc >/dev/null
cat /etc/os-release >/dev/null
rm -rf app
"#;

pub fn run(a: Args) -> anyhow::Result<()> {
    crate::cargo(&["build", "-p", "watcher"])?;
    let bin = root().join("target/debug/watcher");
    if a.normal {
        return normal::run(&a, &bin);
    }
    let items_file = a
        .items
        .clone()
        .unwrap_or_else(|| root().join("eval/atomic-red-team-linux.yaml"));
    let text = std::fs::read_to_string(&items_file)
        .with_context(|| format!("reading {}", items_file.display()))?;
    let mut items: Vec<Item> =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow!("{}: {e}", items_file.display()))?;
    if !a.only.is_empty() {
        items.retain(|i| a.only.contains(&i.id));
    }
    anyhow::ensure!(!items.is_empty(), "no items to run");
    let dir = std::env::temp_dir().join(format!("watcher-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sandbox = root().join("eval/sandbox.sh");
    let mut passes: Vec<(&str, Vec<Outcome>)> = Vec::new();
    let want = |p: &str| a.pass.as_deref().is_none_or(|x| x == p);
    // The daemons' rules come from a copy in the host's /tmp, which the sandboxes do not see:
    // an item's `find /` reading the watcher's own rules would be tampering.
    let rules = copy_rules(
        &a.rules.clone().unwrap_or_else(|| root().join("rules")),
        &dir.join("rule-pack"),
    )?;
    if want("rules") {
        let d = EvalDaemon::start(&bin, &dir.join("rules-on"), &rules)?;
        eprintln!(
            "eval: rules on ({}), {} items",
            rules.display(),
            items.len()
        );
        let out = items
            .iter()
            .map(|i| d.run_item(&sandbox, i, a.timeout))
            .collect::<anyhow::Result<Vec<_>>>()?;
        passes.push(("rules on", out));
    }
    let empty = dir.join("no-rules");
    std::fs::create_dir_all(&empty)?;
    // The rules off with the baseline; then both, as a host would run them.
    for (pass, rule_dir, name) in [
        ("baseline", &empty, "rules off, baseline"),
        ("both", &rules, "rules and baseline"),
    ] {
        if !want(pass) {
            continue;
        }
        let d = EvalDaemon::start(&bin, &dir.join(pass), rule_dir)?;
        match &a.profile {
            Some(p) => {
                d.cli(&["baseline", "import", "eval"])
                    .arg(p)
                    .status_ok()
                    .context("importing the profile")?;
                eprintln!("eval: {name}, profile imported from {}", p.display());
            }
            None => {
                for i in 0..a.learn {
                    // The items run under sh or bash: so does the normal work.
                    let shell = if i % 2 == 0 { "sh" } else { "bash" };
                    let o = d.run(&sandbox, NORMAL_WORK, None, shell, a.timeout * 3)?;
                    if o.stopped {
                        bail!("learning session {i} was stopped: {:?}", o.rules);
                    }
                }
                d.await_sessions("eval", a.learn as u64)?;
                eprintln!("eval: {name}, profile learned from {} sessions", a.learn);
            }
        }
        d.cli(&["baseline", "mode", "eval", "enforce"])
            .status_ok()?;
        let out = items
            .iter()
            .map(|i| d.run_item(&sandbox, i, a.timeout))
            .collect::<anyhow::Result<Vec<_>>>()?;
        passes.push((name, out));
    }
    report(&items, &passes);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The rule files of `from` (a file or a directory of `*.yaml`) copied into `to`.
fn copy_rules(from: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(to)?;
    let files: Vec<PathBuf> = if from.is_dir() {
        std::fs::read_dir(from)
            .with_context(|| format!("reading {}", from.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect()
    } else {
        vec![from.to_path_buf()]
    };
    for f in files {
        std::fs::copy(&f, to.join(f.file_name().unwrap()))
            .with_context(|| format!("copying {}", f.display()))?;
    }
    Ok(to.to_path_buf())
}

fn report(items: &[Item], passes: &[(&str, Vec<Outcome>)]) {
    let mut cats: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        cats.entry(it.category.as_str()).or_default().push(i);
    }
    print!("\n| category | items |");
    for (name, _) in passes {
        print!(" {name}: finding | {name}: held or killed |");
    }
    println!();
    print!("| --- | --- |");
    for _ in passes {
        print!(" --- | --- |");
    }
    println!();
    for (cat, idx) in &cats {
        print!("| {cat} | {} |", idx.len());
        for (_, out) in passes {
            let f = idx.iter().filter(|i| out[**i].findings > 0).count();
            let s = idx.iter().filter(|i| out[**i].stopped).count();
            print!(" {f} | {s} |");
        }
        println!();
    }
    let attacks: Vec<usize> = (0..items.len())
        .filter(|i| items[*i].category != "discovery")
        .collect();
    let discovery: Vec<usize> = (0..items.len())
        .filter(|i| items[*i].category == "discovery")
        .collect();
    println!();
    for (name, out) in passes {
        let stopped = attacks.iter().filter(|i| out[**i].stopped).count();
        let false_holds = discovery.iter().filter(|i| out[**i].stopped).count();
        println!(
            "{name}: {stopped} of {} attack items held or killed ({:.0}%); {false_holds} of {} discovery items held",
            attacks.len(),
            100.0 * stopped as f64 / attacks.len().max(1) as f64,
            discovery.len()
        );
    }
    println!("\nper item (H: held or killed, f: finding only, -: nothing):");
    for (i, it) in items.iter().enumerate() {
        let marks: Vec<String> = passes
            .iter()
            .map(|(_, out)| {
                let o = &out[i];
                let m = if o.stopped {
                    "H"
                } else if o.findings > 0 {
                    "f"
                } else {
                    "-"
                };
                format!(
                    "{m} {:<40}",
                    o.rules.join(",").chars().take(40).collect::<String>()
                )
            })
            .collect();
        println!(
            "  {:<14} {:<22} {:<44} {}",
            it.id,
            it.category,
            it.test_name.chars().take(44).collect::<String>(),
            marks.join(" | ")
        );
    }
}

struct EvalDaemon {
    child: Child,
    bin: PathBuf,
    socket: PathBuf,
    dir: PathBuf,
    cgroup: PathBuf,
    /// The sessions' process limits on a cgroup v1 hierarchy, as the daemon said (`status`).
    pids_v1: Option<PathBuf>,
}

trait StatusOk {
    fn status_ok(&mut self) -> anyhow::Result<()>;
}

impl StatusOk for Command {
    fn status_ok(&mut self) -> anyhow::Result<()> {
        let out = self.output()?;
        if !out.status.success() {
            bail!("{:?}: {}", self, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl EvalDaemon {
    fn start(bin: &Path, dir: &Path, rules: &Path) -> anyhow::Result<EvalDaemon> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("ctl.sock");
        let cgroup = format!(
            "watcher-eval-{}-{}",
            std::process::id(),
            dir.file_name().unwrap().to_string_lossy()
        );
        let config = dir.join("eval.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nbpffs = \"\"\n[rules]\npath = \"{}\"\nwatch = false\n[holds]\nstore = \"{}\"\ncgroup = \"{cgroup}\"\ntimeout = \"1m\"\n[api]\nsocket = \"{}\"\n[audit]\nstore = \"{d}/audit.db\"\nkey = \"{d}/audit.key\"\nwitness = \"{d}/witness.jsonl\"\n[metrics]\nlisten = \"\"\n",
                rules.display(),
                dir.join("eval.db").display(),
                dir.join("api.sock").display(),
                d = dir.display()
            ),
        )?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["run", "--socket"])
            .arg(&socket)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the daemon")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        if !line.starts_with("ready") {
            bail!("the daemon did not start: {line:?}");
        }
        let mut d = EvalDaemon {
            child,
            bin: bin.to_path_buf(),
            socket,
            dir: dir.to_path_buf(),
            cgroup: cgroup_root().join(cgroup),
            pids_v1: None,
        };
        let out = d.cli(&["status", "--json"]).output()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        d.pids_v1 = status["pids_limit"]["place"]
            .as_str()
            .and_then(|p| p.strip_prefix("cgroup v1 "))
            .map(PathBuf::from);
        Ok(d)
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }

    /// The profile's summary (`baseline list`) once it has learned `n` sessions.
    fn await_sessions(&self, profile: &str, n: u64) -> anyhow::Result<serde_json::Value> {
        let start = Instant::now();
        loop {
            let out = self.cli(&["baseline", "list", "--json"]).output()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let learned = v["profiles"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["profile"] == profile && p["sessions"].as_u64() >= Some(n));
            if let Some(p) = learned {
                return Ok(p.clone());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("profile {profile} did not learn {n} sessions: {v}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run_item(&self, sandbox: &Path, it: &Item, timeout: u64) -> anyhow::Result<Outcome> {
        let shell = match it.executor.as_deref() {
            Some("bash") => "bash",
            _ => "sh",
        };
        let o = self.run(sandbox, &it.command, it.prereq.as_deref(), shell, timeout)?;
        eprintln!(
            "  {:<14} {:<22} {} {}",
            it.id,
            it.category,
            if o.stopped {
                "held/killed"
            } else if o.findings > 0 {
                "finding    "
            } else {
                "-          "
            },
            o.why.clone().unwrap_or_else(|| o.rules.join(","))
        );
        Ok(o)
    }

    /// Runs `command` as a watched session (profile `eval`) in a fresh sandbox; denies every
    /// hold as it comes.
    fn run(
        &self,
        sandbox: &Path,
        command: &str,
        prereq: Option<&str>,
        shell: &str,
        timeout: u64,
    ) -> anyhow::Result<Outcome> {
        let sb = self.dir.join("sandbox");
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--net", "--fork"])
            .arg(sandbox)
            .arg(&sb)
            .arg(&self.dir)
            .arg(&self.bin)
            .args([
                "--socket",
                "/run/watcher-eval/ctl.sock",
                "launch",
                "--profile",
                "eval",
                "--",
                shell,
                "-c",
                command,
            ])
            .env("PREREQ", prereq.unwrap_or(""));
        self.session(cmd, timeout)
    }

    /// Runs `cmd`, which launches one watched session (it prints the trace id); denies every
    /// hold as it comes; kills the session at the timeout. What the session's findings were.
    fn session(&self, mut cmd: Command, timeout: u64) -> anyhow::Result<Outcome> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut trace = None;
        let mut seen = String::new();
        let mut line = String::new();
        while err.read_line(&mut line)? > 0 {
            if let Some(t) = line.strip_prefix("watcher: trace id ") {
                trace = Some(t.trim().to_string());
                break;
            }
            seen.push_str(&line);
            line.clear();
        }
        let Some(trace) = trace else {
            let _ = child.wait();
            bail!("no session started: {seen}");
        };
        std::thread::spawn(move || for _ in err.lines() {});
        // Deny each hold as it comes.
        let mut follow = self
            .cli(&["findings", "--json", "--follow", "--trace", &trace])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = follow.stdout.take().unwrap();
        let (bin, socket) = (self.bin.clone(), self.socket.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
                if let Some(id) = v["hold"].as_str() {
                    // Stored right after its finding: retry briefly until it is.
                    for _ in 0..100 {
                        let ok = Command::new(&bin)
                            .arg("--socket")
                            .arg(&socket)
                            .args(["deny", id])
                            .output()
                            .map(|o| {
                                o.status.success()
                                    || String::from_utf8_lossy(&o.stderr).contains("decided")
                            })
                            .unwrap_or(false);
                        if ok {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        });
        let start = Instant::now();
        let mut code = None;
        loop {
            if let Some(status) = child.try_wait()? {
                code = status.code();
                break;
            }
            if start.elapsed() > Duration::from_secs(timeout) {
                // Still running (a `find /`, a loop): the whole session goes.
                let _ = std::fs::write(self.cgroup.join(&trace).join("cgroup.kill"), "1");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = follow.kill();
        let _ = follow.wait();
        let out = self
            .cli(&["findings", "--json", "--trace", &trace])
            .output()?;
        let mut o = Outcome {
            code,
            took: start.elapsed(),
            ..Outcome::default()
        };
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            o.findings += 1;
            let stopped = matches!(
                v["outcome"].as_str(),
                Some("held" | "killed" | "killed_in_kernel" | "refused_in_kernel")
            );
            if stopped && o.why.is_none() {
                o.why = Some(match v["anomaly"]["value"].as_str() {
                    Some(a) => format!("{} {a}", v["rule"].as_str().unwrap_or("")),
                    None => v["rule"].as_str().unwrap_or("").to_string(),
                });
            }
            o.stopped |= stopped;
            if let Some(r) = v["rule"].as_str() {
                if !o.rules.iter().any(|x| x == r) {
                    o.rules.push(r.to_string());
                }
            }
        }
        Ok(o)
    }
}

impl Drop for EvalDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(rd) = std::fs::read_dir(&self.cgroup) {
            for e in rd.flatten() {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        // Emptied with the sessions above; the daemon keeps its directory for the next one.
        if let Some(base) = &self.pids_v1 {
            for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
            let _ = std::fs::remove_dir(base);
        }
    }
}

fn cgroup_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}
