//! What else changes the host: deletes, renames, mode and owner changes, links, truncates, id
//! changes, mounts, BPF loads and memfds are events with their fields, from real syscalls of
//! real processes in watched sessions (and none from unwatched ones); the pack's rules for them
//! act on their threat cases. Root and the real kernel; loopback and temporary directories only.
use std::{os::unix::fs::MetadataExt, path::Path, process::Command};

use serde_json::{json, Value};

mod common;
use common::{
    holds::{await_hold, launch_bg, verdict, wait_exit},
    pack_dir, python, Daemon, FakeHome, TempDir,
};

/// A daemon with one rule that matches nothing here, so no change is held or killed.
fn quiet_daemon(work: &TempDir) -> Daemon {
    let rules = work.0.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("quiet.yaml"),
        "rules:\n  - {id: quiet, description: d, severity: low, action: alert, condition: {type: exec, exe: /nonexistent}, examples: {match: [{type: exec, path: /nonexistent}]}}\n",
    )
    .unwrap();
    Daemon::start_with(&format!("[rules]\npath = \"{}\"\n", rules.display()))
}

/// Python that loads a two-instruction socket filter named `probe` (x86_64 `bpf` is 321).
const BPF_LOAD: &str = r#"import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
insns = struct.pack("<BBhi", 0xb7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
ibuf = ctypes.create_string_buffer(insns)
lic = ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(128)
struct.pack_into("<IIQQ", attr, 0, 1, 2, ctypes.addressof(ibuf), ctypes.addressof(lic))
attr[48:54] = b"probe\0"
assert libc.syscall(321, 5, attr, 128) >= 0, ctypes.get_errno()"#;

/// Every kind of change, by relative paths, descriptors and directory descriptors, in `dir`.
fn workload(dir: &Path) -> String {
    let ops = format!(
        r#"
import os, ctypes, struct
os.chdir("{dir}")
open("a", "w").write("x")
os.chmod("a", 0o4755)
fd = os.open("a", os.O_RDWR)
os.fchmod(fd, 0o640)
os.ftruncate(fd, 0)
os.fchown(fd, 0, 0)
os.fchown(fd, 65534, 0)
os.close(fd)
os.truncate("a", 1)
os.chown("a", 65534, -1)
os.link("a", "b")
os.symlink("/dev/null", "c")
os.rename("b", "d")
os.unlink("d")
os.mkdir("e"); os.rmdir("e")
os.mkdir("sub"); open("sub/f", "w").close()
dfd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
os.unlink("f", dir_fd=dfd)
os.unlink("c")
os.memfd_create("payload", os.MFD_CLOEXEC)
os.setresuid(0, 65534, 0)
os.setresuid(0, 0, 0)
{BPF_LOAD}
"#,
        dir = dir.display()
    );
    std::fs::write(dir.join("ops.py"), ops).unwrap();
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    // rm -rf walks a tree by directory descriptors it copies (fcntl F_DUPFD).
    for f in ["t/a/b/f1", "t/a/f2", "t/f3"] {
        let f = dir.join(f);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "x").unwrap();
    }
    format!(
        "{py} {d}/ops.py && unshare -m sh -c 'mount -t tmpfs none {d}/mnt && umount {d}/mnt' && cd {d} && rm -rf t",
        py = python(),
        d = dir.display()
    )
}

/// The one event of `kind` whose fields include all of `want`'s.
fn one<'a>(events: &'a [Value], kind: &str, want: Value) -> &'a Value {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == kind)
        .filter(|e| {
            want.as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &e[k.as_str()] == v)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{kind} {want}: expected one, found {found:#?} among {:#?}",
        events
            .iter()
            .filter(|e| e["type"] == kind)
            .collect::<Vec<_>>()
    );
    found[0]
}

#[test]
fn every_change_is_an_event_with_absolute_paths_and_its_fields() {
    let work = TempDir::new("changes");
    let d = quiet_daemon(&work);
    let dir = work.0.join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let w = dir.display().to_string();
    let (trace, code) = d.launch(&workload(&dir));
    assert_eq!(code, 0, "the workload failed");
    let ev = d.session_events(&trace, None);
    let p = |rel: &str| format!("{w}/{rel}");

    one(
        &ev,
        "chmod",
        json!({"syscall": "chmod", "path": p("a"), "mode": 0o4755, "result": 0}),
    );
    // By descriptor: the path the tree saw the descriptor opened with.
    one(
        &ev,
        "chmod",
        json!({"syscall": "fchmod", "path": p("a"), "mode": 0o640}),
    );
    one(
        &ev,
        "truncate",
        json!({"syscall": "ftruncate", "path": p("a"), "length": 0}),
    );
    one(
        &ev,
        "truncate",
        json!({"syscall": "truncate", "path": p("a"), "length": 1}),
    );
    // The owner the file already had (read by the kernel before a call by descriptor) is no
    // new owner; another is.
    one(
        &ev,
        "chown",
        json!({"syscall": "fchown", "path": p("a"), "to_uid": null, "to_gid": 0}),
    );
    one(
        &ev,
        "chown",
        json!({"syscall": "fchown", "path": p("a"), "to_uid": 65534, "to_gid": 0}),
    );
    let c = one(
        &ev,
        "chown",
        json!({"syscall": "chown", "path": p("a"), "to_uid": 65534}),
    );
    assert!(c.get("to_gid").is_none(), "-1 is no group: {c}");
    one(
        &ev,
        "link",
        json!({"path": p("b"), "target": p("a"), "symbolic": false}),
    );
    one(
        &ev,
        "link",
        json!({"path": p("c"), "target": "/dev/null", "symbolic": true}),
    );
    one(
        &ev,
        "rename",
        json!({"path": p("b"), "new_path": p("d"), "result": 0}),
    );
    one(&ev, "unlink", json!({"path": p("d"), "dir": false}));
    one(
        &ev,
        "unlink",
        json!({"syscall": "rmdir", "path": p("e"), "dir": true}),
    );
    // Relative to a directory descriptor.
    one(&ev, "unlink", json!({"path": p("sub/f")}));
    one(&ev, "unlink", json!({"path": p("c")}));
    let m = one(&ev, "memfd", json!({"name": "payload"}));
    assert_eq!(m["flags"], json!(["MFD_CLOEXEC"]));
    assert!(m["result"].as_i64().unwrap() >= 0);
    let s = one(
        &ev,
        "setid",
        json!({"syscall": "setresuid", "asked": [0, 65534, 0]}),
    );
    assert_eq!(
        (&s["old"]["euid"], &s["new"]["euid"]),
        (&json!(0), &json!(65534)),
        "{s}"
    );
    assert_eq!(s["new"]["uid"], 0);
    let b = one(
        &ev,
        "bpf",
        json!({"name": "probe", "prog_type": 1, "instructions": 2}),
    );
    assert!(b["result"].as_i64().unwrap() >= 0, "{b}");
    one(
        &ev,
        "mount",
        json!({"syscall": "mount", "source": "none", "fstype": "tmpfs", "path": p("mnt"), "result": 0}),
    );
    one(
        &ev,
        "mount",
        json!({"syscall": "umount2", "path": p("mnt"), "result": 0}),
    );
    for f in ["t/a/b/f1", "t/a/f2", "t/f3"] {
        one(&ev, "unlink", json!({"path": p(f), "dir": false}));
    }
    for d in ["t/a/b", "t/a", "t"] {
        one(&ev, "unlink", json!({"path": p(d), "dir": true}));
    }
    let unresolved: Vec<_> = ev.iter().filter(|e| e["resolved"] == false).collect();
    assert!(unresolved.is_empty(), "{unresolved:#?}");
    // The daemon's own view: nothing was lost.
    let st = d.status();
    for kind in [
        "unlink", "rename", "chmod", "chown", "link", "truncate", "setid", "mount", "bpf", "memfd",
    ] {
        assert_eq!(
            st["per_type"][kind]["drops"], 0,
            "{kind}: {}",
            st["per_type"]
        );
        assert!(
            st["per_type"][kind]["events"].as_u64().unwrap() > 0,
            "{kind}"
        );
    }
}

#[test]
fn an_unwatched_process_doing_the_same_makes_no_event() {
    let work = TempDir::new("changes-unwatched");
    let d = quiet_daemon(&work);
    let dir = work.0.join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("sh")
        .args(["-c", &workload(&dir)])
        .status()
        .unwrap();
    assert!(st.success(), "the workload failed unwatched");
    // A watched sentinel afterwards: anything the unwatched run made would come before it.
    let (trace, _) = d.launch("exit 0");
    let sentinel = d.session_events(&trace, None);
    let st = d.status();
    let total: u64 = st["per_type"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["events"].as_u64().unwrap())
        .sum();
    assert_eq!(total, sentinel.len() as u64, "{}", st["per_type"]);
}

/// How many entries `dir` has.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |r| r.count())
}

#[test]
fn the_pack_acts_on_each_changes_threat_case() {
    common::require_root();
    let home = FakeHome::new();
    let docs = home.0.join("Documents");
    std::fs::create_dir_all(&docs).unwrap();
    const FILES: usize = 2000;
    for i in 0..FILES {
        std::fs::write(docs.join(format!("note-{i}.txt")), "x").unwrap();
    }
    let work = TempDir::new("changes-pack");
    let w = work.0.display().to_string();
    let rules = pack_dir(&work.0);
    let d = Daemon::start_with(&format!(
        "[rules]\npath = \"{}\"\n[holds]\ntimeout = \"60s\"\n",
        rules.display()
    ));
    let hold_then_deny = |script: &str, rule: &str| {
        let (mut child, trace) = launch_bg(&d, script);
        let hold = await_hold(&d, &trace);
        assert_eq!(hold["rule"], rule, "{hold}");
        verdict(&d, "deny", &hold);
        wait_exit(&mut child);
    };

    // A wipe of a home directory: held at the 20th delete, the rest stays.
    hold_then_deny(&format!("rm -rf {}", docs.display()), "home-wipe");
    let left = count_files(&docs);
    eprintln!("home wipe: {left} of {FILES} files left after the hold");
    // Every 32nd delete is gated, and once a count is under way all of them: the burst stops
    // within 32 deletes of the 20th.
    assert!(
        left >= FILES - 20 - 32,
        "only {left} of {FILES} files are left"
    );

    // Setuid: the gate stops the chmod before the process can run the file, and deny clears
    // the bits it set: the file is as it was (0755, as copied).
    let sh2 = work.0.join("sh2");
    std::fs::copy("/bin/sh", &sh2).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    let before = mode(&sh2);
    hold_then_deny(
        &format!("chmod 4755 {w}/sh2 && {w}/sh2 -c 'touch {w}/marker-setuid'"),
        "setuid-bit-set",
    );
    assert!(
        !work.0.join("marker-setuid").exists(),
        "the setuid program ran"
    );
    assert_eq!(mode(&sh2), before, "the mode after deny");

    // A mount: stopped at the call, the process that mounted never goes on.
    std::fs::create_dir_all(work.0.join("mnt")).unwrap();
    hold_then_deny(
        &format!("unshare -m sh -c 'mount -t tmpfs none {w}/mnt && touch {w}/marker-mount'"),
        "agent-mount",
    );
    assert!(
        !work.0.join("marker-mount").exists(),
        "the mount's next step ran"
    );

    // A file in /tmp given to root: stopped before the process can use it.
    let planted = work.0.join("planted");
    std::fs::write(&planted, "x").unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    hold_then_deny(
        &format!("chown 0 {} && touch {w}/marker-chown", planted.display()),
        "chown-to-root",
    );
    assert!(
        !work.0.join("marker-chown").exists(),
        "the chown's next step ran"
    );
    assert_eq!(
        std::fs::metadata(&planted).unwrap().uid(),
        0,
        "the chown itself happened (after-the-fact)"
    );
    // The same by descriptor (the call an in-place editor uses): the kernel read the owner
    // before the call, nobody, so this is a change of owner and is held like the path call.
    let planted = work.0.join("planted-fd");
    std::fs::write(&planted, "x").unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    hold_then_deny(
        &format!(
            "{} -c \"import os; fd = os.open('{}', os.O_RDONLY); os.fchown(fd, 0, 0); open('{w}/marker-fchown', 'w')\"",
            python(),
            planted.display()
        ),
        "chown-to-root",
    );
    assert!(
        !work.0.join("marker-fchown").exists(),
        "the fchown's next step ran"
    );

    // A BPF program load: killed in the kernel as the call returns, before the program can
    // be attached (the descriptor goes with the process).
    std::fs::write(
        work.0.join("bpf.py"),
        format!("{BPF_LOAD}\nopen('{w}/marker-bpf', 'w')\n"),
    )
    .unwrap();
    let bpf_only = format!("{} {w}/bpf.py", python());
    let (trace, _) = d.launch(&bpf_only);
    let _ = d.session_events(&trace, None);
    assert!(
        !work.0.join("marker-bpf").exists(),
        "the loader went on after the load"
    );
    let f = d.findings(&trace);
    assert!(
        f.iter()
            .any(|f| f["rule"] == "bpf-program-load" && f["outcome"] == "killed_in_kernel"),
        "{f:#?}"
    );

    // History relinked to /dev/null by a command: held before `ln` runs; deny leaves the
    // history as it was.
    let hist = home.0.join(".bash_history");
    std::fs::write(&hist, "ls\n").unwrap();
    let (mut child, trace) =
        common::holds::launch_bg(&d, &format!("ln -sf /dev/null {}", hist.display()));
    let hold = common::holds::await_hold(&d, &trace);
    assert_eq!(hold["rule"], "history-wipe-command", "{hold:#}");
    common::holds::verdict(&d, "deny", &hold);
    common::holds::wait_exit(&mut child);
    let md = std::fs::symlink_metadata(&hist).unwrap();
    assert!(!md.file_type().is_symlink(), "the history was relinked");
    assert_eq!(std::fs::read_to_string(&hist).unwrap(), "ls\n");
    // Emptied by the shell itself (no command to stop): an alert, after the fact.
    let (trace, _) = d.launch(&format!(": > {}", hist.display()));
    let _ = d.session_events(&trace, None);
    let f = d.findings(&trace);
    assert!(f.iter().any(|f| f["rule"] == "history-wipe"), "{f:#?}");
}

/// A DNS server on `addr` (port 53) that answers every A query with `answer`, until dropped.
fn dns_server(addr: &str, answer: [u8; 4]) -> std::net::UdpSocket {
    let sock = std::net::UdpSocket::bind((addr, 53)).expect("binding a loopback port 53");
    let s = sock.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // The query's id and question back, a response flag, one answer: a pointer to the
            // question's name, type A, class IN, TTL 60, the address.
            let mut r = buf[..n].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[6..8].copy_from_slice(&1u16.to_be_bytes());
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(&answer);
            let _ = s.send_to(&r, peer);
        }
    });
    sock
}

/// Python that resolves `name` at `server`:53 (A) by hand and connects to the answer's `port`.
fn resolve_and_connect(server: &str, name: &str, port: u16) -> String {
    let script = format!(
        r#"import socket, struct
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in "{name}".split(".")) + b"\0" + struct.pack(">HH", 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
u.sendto(q, ("{server}", 53))
r, _ = u.recvfrom(512)
addr = socket.inet_ntoa(r[-4:])
c = socket.create_connection((addr, {port}), timeout=10)
c.close()
"#
    );
    format!("{} -c '{}'", python(), script.replace('\'', "'\\''"))
}

#[test]
fn a_connect_carries_the_host_the_session_resolved() {
    let work = TempDir::new("changes-dns");
    let d = quiet_daemon(&work);
    let _server = dns_server("127.0.0.2", [127, 0, 0, 3]);
    let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let name = "api.agent-test.example";
    let (trace, code) = d.launch(&resolve_and_connect("127.0.0.2", name, port));
    assert_eq!(code, 0, "the resolve and connect failed");
    let ev = d.session_events(&trace, None);
    let dns = one(&ev, "dns", json!({"query": name}));
    assert_eq!(dns["answers"], json!(["127.0.0.3"]), "{dns}");
    assert_eq!(
        (&dns["qtype"], &dns["rcode"]),
        (&json!("A"), &json!("NOERROR"))
    );
    one(
        &ev,
        "connect",
        json!({"addr": "127.0.0.3", "port": port, "host": name}),
    );
    // A session whose cgroup is inside the cgroup that owned it (not under the watcher's
    // directory) is seen the same.
    let owner = common::OwnerCgroup::new(&d);
    let out = owner
        .launch(&d, &resolve_and_connect("127.0.0.2", name, port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let placed = common::trace_of(&out.stderr);
    let ev = d.session_events(&placed, None);
    let dns = one(&ev, "dns", json!({"query": name}));
    assert_eq!(dns["answers"], json!(["127.0.0.3"]), "{dns}");
    one(
        &ev,
        "connect",
        json!({"addr": "127.0.0.3", "port": port, "host": name}),
    );
    drop(owner);
    // The same from outside every session: no DNS event (the program sits on the sessions'
    // cgroups only).
    let st = Command::new("sh")
        .args(["-c", &resolve_and_connect("127.0.0.2", name, port)])
        .status()
        .unwrap();
    assert!(st.success());
    let (trace, _) = d.launch("exit 0");
    let _ = d.session_events(&trace, None);
    // Four records: each session's query and its answer; none from outside.
    assert_eq!(
        d.status()["per_type"]["dns"]["events"],
        4,
        "{}",
        d.status()["per_type"]
    );
}

/// A name counts only from the answer to a query the session sent. Here the session forges
/// the answer itself (from a socket it bound to port 53, to its own other socket, with no
/// query asked) naming the address it wants as the host its scope allows: the DNS event says
/// `unsolicited`, the connect carries no host, and the scope holds it before a byte is sent.
#[test]
fn a_forged_dns_answer_teaches_no_name() {
    let work = TempDir::new("changes-dns-forged");
    let d = quiet_daemon(&work);
    let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let name = "allowed.agent-test.example";
    let script = format!(
        r#"import socket, struct
qname = b"".join(bytes([len(l)]) + l.encode() for l in "{name}".split(".")) + b"\0"
r = struct.pack(">HHHHHH", 0x4242, 0x8180, 1, 1, 0, 0) + qname + struct.pack(">HH", 1, 1)
r += bytes([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 3])
f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
f.bind(("127.0.0.6", 53))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", 0))
u.settimeout(10)
f.sendto(r, u.getsockname())
u.recvfrom(512)
c = socket.create_connection(("127.0.0.3", {port}), timeout=10)
c.send(b"x")
"#
    );
    let mut cmd = d.cli();
    // Loopback's 127.0.0.1 is allowed too: the forged answer is sent there.
    cmd.args(["launch", "--allow-host", &format!("{name}:{port}")])
        .args(["--allow-host", "127.0.0.1", "--"])
        .arg(python())
        .args(["-c", &script]);
    let (mut child, trace) = common::holds::spawn_session(cmd);
    let hold = await_hold(&d, &trace);
    assert_eq!(hold["rule"], "scope-allow-host", "{hold}");
    verdict(&d, "deny", &hold);
    wait_exit(&mut child);
    // The connect may have gone through (it is stopped after it), but nothing was sent.
    listener.set_nonblocking(true).unwrap();
    if let Ok((mut c, _)) = listener.accept() {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(common::DEADLINE)).unwrap();
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut c, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the listener got {:?}", &buf[..n]);
    }
    let ev = d.session_events(&trace, None);
    let dns = one(&ev, "dns", json!({"query": name}));
    assert_eq!(dns["unsolicited"], true, "{dns}");
    let connect = one(&ev, "connect", json!({"addr": "127.0.0.3", "port": port}));
    assert!(connect.get("host").is_none(), "{connect}");
}
