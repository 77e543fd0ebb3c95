//! End-to-end: the real daemon loads the real eBPF programs into the running kernel, and real
//! processes exec, open and connect. Needs root (CI runs as root); fails loudly without it.
use std::{
    io::Write,
    net::TcpListener,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

mod common;
use common::{python, Daemon, TempDir};

/// The uid `workload` switches to (nobody's on Debian; any unused one would do).
const NOBODY: u32 = 65534;

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

/// A script that execs /bin/true, reads a file by a relative path, connects to a TCP listener
/// on 127.0.0.1 and to a unix socket, has a grandchild, and runs a program as `nobody`.
fn workload(dir: &Path, port: u16, unix: &Path) -> String {
    format!(
        "cd {dir} && /bin/true && cat ./data.txt >/dev/null && (/bin/echo grandchild >/dev/null; :) && \
         {py} -c 'import os; os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY}); os.execv(\"/bin/sh\", [\"/bin/sh\", \"-c\", \":\"])' && \
         {py} -c 'import socket; s=socket.create_connection((\"127.0.0.1\", {port})); u=socket.socket(socket.AF_UNIX); u.connect(\"{unix}\")'; exit 7",
        dir = dir.display(),
        py = python(),
        unix = unix.display(),
    )
}

struct Listeners {
    dir: TempDir,
    tcp: TcpListener,
    unix_path: PathBuf,
    _unix: UnixListener,
}

fn listeners() -> Listeners {
    let dir = TempDir::new("work");
    std::fs::write(dir.0.join("data.txt"), "secret-ish\n").unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let unix_path = dir.0.join("s.sock");
    let unix = UnixListener::bind(&unix_path).unwrap();
    Listeners {
        dir,
        tcp,
        unix_path,
        _unix: unix,
    }
}

#[test]
fn watched_session_produces_exactly_its_events() {
    let d = Daemon::start();
    let l = listeners();
    let port = l.tcp.local_addr().unwrap().port();
    let (trace, code) = d.launch(&workload(&l.dir.0, port, &l.unix_path));
    assert_eq!(code, 7, "launch returns the command's exit code");
    // The kernel counts its own failures by kind; a session's fork, exec and alerts cause
    // none.
    let failures = d.status()["kernel_failures"].clone();
    for kind in ["fork_watch", "session_watch", "config", "alert"] {
        assert_eq!(failures[kind], 0, "{kind}: {failures}");
    }
    let events = d.session_events(&trace, None);

    let execs = of_type(&events, "exec");
    let root = execs[0]["pid"].as_u64().unwrap();
    assert_eq!(execs[0]["argv"][0], "sh");

    let trues: Vec<_> = execs.iter().filter(|e| e["path"] == "/bin/true").collect();
    assert_eq!(trues.len(), 1, "{execs:#?}");
    assert_eq!(trues[0]["argv"], serde_json::json!(["/bin/true"]));
    assert_eq!(trues[0]["ppid"], root);

    // The relative open is reported with its absolute path and result.
    let data = l.dir.0.join("data.txt");
    let opens: Vec<_> = of_type(&events, "open")
        .into_iter()
        .filter(|e| e["path"] == data.to_str().unwrap())
        .collect();
    assert_eq!(opens.len(), 1, "one open of {}: {opens:#?}", data.display());
    assert_eq!(opens[0]["comm"], "cat");
    assert!(opens[0]["result"].as_i64().unwrap() >= 0, "{}", opens[0]);
    assert_eq!(opens[0]["flags"][0], "O_RDONLY");

    let connects = of_type(&events, "connect");
    let tcp: Vec<_> = connects.iter().filter(|e| e["family"] == "inet").collect();
    assert_eq!(tcp.len(), 1, "{connects:#?}");
    assert_eq!(tcp[0]["addr"], "127.0.0.1");
    assert_eq!(tcp[0]["port"], port);
    assert_eq!(tcp[0]["result"], 0);
    let unix: Vec<_> = connects.iter().filter(|e| e["family"] == "unix").collect();
    assert_eq!(unix.len(), 1, "{connects:#?}");
    assert_eq!(unix[0]["path"], l.unix_path.to_str().unwrap());
    assert_eq!(unix[0]["result"], 0);

    // The grandchild (sh -> subshell -> echo) is in the session.
    let echo = execs
        .iter()
        .find(|e| e["path"] == "/bin/echo")
        .expect("grandchild exec");
    let subshell = echo["ppid"].as_u64().unwrap();
    assert_ne!(subshell, root);
    let forks = of_type(&events, "fork");
    assert!(
        forks
            .iter()
            .any(|f| f["pid"] == root && f["child_pid"] == subshell),
        "the subshell was forked by the root: {forks:#?}"
    );
    // Opens and connects carry the parent recorded when the process was forked.
    let mut checked = 0;
    for o in of_type(&events, "open")
        .into_iter()
        .chain(of_type(&events, "connect"))
    {
        if let Some(f) = forks.iter().find(|f| f["child_pid"] == o["pid"]) {
            assert_eq!(o["ppid"], f["pid"], "{o}");
            checked += 1;
        }
    }
    assert!(checked > 0, "no open or connect by a forked process");

    // Exit codes are reported, and the root's is the command's.
    let root_exit = of_type(&events, "exit")
        .into_iter()
        .find(|e| e["pid"] == root)
        .unwrap();
    assert_eq!(root_exit["exit_code"], 7);

    // Every process of the session left the kernel map when it exited.
    let pids: Vec<u64> = events.iter().map(|e| e["pid"].as_u64().unwrap()).collect();
    let st = d.status();
    let kernel: Vec<u64> = st["kernel_watched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        pids.iter().all(|p| !kernel.contains(p)),
        "exited pids still in the kernel map: {kernel:?}"
    );
    let session = st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["trace_id"] == trace.as_str())
        .unwrap();
    assert_eq!(session["processes"], 0);
    assert!(session["ended"].is_string());

    // The header's uid and cgroup id, which the kernel side reads from the task itself: the
    // program run as nobody has nobody's uid and everything else root's (the tests run as
    // root); every record of the session carries the id of the cgroup the daemon made for it.
    let dropped: Vec<_> = execs
        .iter()
        .filter(|e| e["argv"] == serde_json::json!(["/bin/sh", "-c", ":"]))
        .collect();
    assert_eq!(dropped.len(), 1, "{execs:#?}");
    assert_eq!(dropped[0]["uid"], NOBODY, "{}", dropped[0]);
    let nobody = dropped[0]["pid"].clone();
    for e in events.iter().filter(|e| e["pid"] != nobody) {
        assert_eq!(e["uid"], 0, "{e}");
    }
    let cgroup = session["cgroup_id"]
        .as_u64()
        .expect("a launched session has a cgroup");
    for e in &events {
        assert_eq!(e["cgroup_id"], cgroup, "{e}");
    }
}

#[test]
fn unwatched_processes_produce_no_records() {
    let d = Daemon::start();
    let l = listeners();
    let port = l.tcp.local_addr().unwrap().port();
    let before = total_events(&d.status());
    assert_eq!(before, 0, "a fresh daemon with no session has seen nothing");
    // The same work, not launched through the watcher.
    let status = Command::new("sh")
        .args(["-c", &workload(&l.dir.0, port, &l.unix_path)])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    // A watched sentinel afterwards: once its exit is through, anything the unwatched run had
    // produced would have been delivered before it.
    let (trace, _) = d.launch("exit 0");
    let sentinel = d.session_events(&trace, None);
    let after = total_events(&d.status());
    assert_eq!(
        after,
        sentinel.len() as u64,
        "records beyond the sentinel session's own: {}",
        after - sentinel.len() as u64
    );
}

fn total_events(st: &Value) -> u64 {
    st["per_type"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["events"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_thread_is_not_a_process() {
    let d = Daemon::start();
    let l = listeners();
    let data = l.dir.0.join("data.txt");
    let script = format!(
        "{py} -c 'import threading; t=threading.Thread(target=lambda: open(\"{data}\").read()); t.start(); t.join()'",
        py = python(),
        data = data.display()
    );
    let (trace, code) = d.launch(&script);
    assert_eq!(code, 0);
    let events = d.session_events(&trace, None);
    let py_pid = of_type(&events, "exec").last().unwrap()["pid"].clone();
    let threads: Vec<_> = of_type(&events, "fork")
        .into_iter()
        .filter(|f| f["pid"] == py_pid && f["thread"] == true)
        .collect();
    assert!(!threads.is_empty(), "the thread's creation is reported");
    let tid = threads.last().unwrap()["child_pid"].clone();
    // The thread's open belongs to the process (pid) and names the thread (tid).
    let open = of_type(&events, "open")
        .into_iter()
        .find(|e| e["path"] == data.to_str().unwrap())
        .expect("the thread's open");
    assert_eq!(open["pid"], py_pid);
    assert_eq!(open["tid"], tid);
    // No process was created or ended for the thread.
    assert!(events.iter().all(|e| e["pid"] != tid));
    assert!(!of_type(&events, "fork")
        .iter()
        .any(|f| f["child_pid"] == tid && f["thread"] == false));
}

#[test]
fn attach_watches_a_running_process_and_its_children() {
    let d = Daemon::start();
    let l = listeners();
    // A shell that waits on stdin, then reads the file: attach while it waits.
    let mut sh = Command::new("sh")
        .args(["-c", "read line; cat ./data.txt >/dev/null; exit 4"])
        .current_dir(&l.dir.0)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let out = d
        .cli()
        .args(["attach", &sh.id().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = String::from_utf8(out.stdout).unwrap().trim().to_string();
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(sh.wait().unwrap().code(), Some(4));
    let events = d.session_events(&trace, Some(sh.id()));
    let data = l.dir.0.join("data.txt");
    assert!(
        of_type(&events, "open")
            .iter()
            .any(|e| e["path"] == data.to_str().unwrap() && e["comm"] == "cat"),
        "the child's relative open, resolved with the attached process's cwd: {events:#?}"
    );
    // Attaching an already watched process is refused with a clear error.
    let mut waiter = Command::new("sh")
        .args(["-c", "read line"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = waiter.id().to_string();
    let first = d.cli().args(["attach", &pid]).output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = d.cli().args(["attach", &pid]).output().unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already watched"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    waiter.stdin.take().unwrap().write_all(b"x\n").unwrap();
    waiter.wait().unwrap();
}

/// `watcher status` reports each kernel program's runs and run time while the kernel's BPF
/// run-time statistics are on (the benchmark prices every program with them).
#[test]
fn status_reports_what_each_kernel_program_costs() {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let d = Daemon::start();
    let runs = |st: &Value, name: &str| -> (u64, u64) {
        let p = st["programs"]
            .as_array()
            .expect("status has programs")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no program {name} in {st}"));
        (p["runs"].as_u64().unwrap(), p["run_ns"].as_u64().unwrap())
    };
    let before = std::fs::read_to_string(STATS)
        .unwrap_or_else(|e| panic!("{STATS}: {e} (BPF run-time statistics need Linux 5.1)"));
    // The syscall tracepoints fire for every process on the host, so the session makes a
    // syscall the host almost never makes, many times: ptrace on a pid that does not exist
    // (ESRCH, 2000 times). Anything else on the host ptracing meanwhile only adds runs.
    const CALLS: u64 = 2000;
    let (r0, t0) = runs(&d.status(), "sys_exit_ptrace");
    std::fs::write(STATS, "1").unwrap();
    let (_, code) = d.launch(&format!(
        "{} -c 'import ctypes; p = ctypes.CDLL(None).ptrace\nfor _ in range({CALLS}): p(3, 2147483646, 0, 0)'",
        common::python()
    ));
    std::fs::write(STATS, before.trim()).unwrap();
    assert_eq!(code, 0);
    let (r1, t1) = runs(&d.status(), "sys_exit_ptrace");
    assert!(
        r1 >= r0 + CALLS,
        "sys_exit_ptrace ran {} times for {CALLS} calls",
        r1 - r0
    );
    assert!(t1 > t0, "no run time counted");
}

/// An absolute path of exactly `len` bytes under `base`, its directories created.
fn path_of_len(base: &Path, len: usize) -> PathBuf {
    let mut p = base.to_path_buf();
    let mut n = 0;
    while len - p.as_os_str().len() > 80 {
        p.push(format!("{n:0>60}"));
        n += 1;
    }
    std::fs::create_dir_all(&p).unwrap();
    let rest = len - p.as_os_str().len() - 1;
    p.push("f".repeat(rest));
    assert_eq!(p.as_os_str().len(), len);
    p
}

#[test]
fn open_paths_of_every_length_arrive_whole_or_flagged() {
    let d = Daemon::start();
    let dir = TempDir::new("long");
    // Around the short record's end (150 bytes of path fit), a long record, and around the
    // longest record's end (510 bytes fit; from 511 on the path is cut and flagged, as the
    // kernel's copy cannot tell 511 bytes from more).
    let short = dir.0.as_os_str().len() + 10;
    assert!(short < 149, "temp dir too deep: {}", dir.0.display());
    let lens = [short, 149, 150, 151, 152, 300, 510, 511, 700];
    let paths: Vec<PathBuf> = lens.iter().map(|&n| path_of_len(&dir.0, n)).collect();
    for p in &paths {
        std::fs::write(p, "x").unwrap();
    }
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let (trace, code) = d.launch(&format!("cat {} >/dev/null", list.join(" ")));
    assert_eq!(code, 0);
    let events = d.session_events(&trace, None);
    let opens: Vec<_> = of_type(&events, "open")
        .into_iter()
        .filter(|e| e["comm"] == "cat" && e["result"].as_i64().unwrap_or(-1) >= 0)
        .collect();
    for (p, &len) in list.iter().zip(&lens) {
        if len <= 510 {
            let found: Vec<_> = opens.iter().filter(|e| e["path"] == p.as_str()).collect();
            assert_eq!(
                found.len(),
                1,
                "one open of the {len}-byte path: {opens:#?}"
            );
            assert!(found[0].get("path_truncated").is_none(), "{}", found[0]);
        } else {
            let cut = &p[..511];
            let found: Vec<_> = opens.iter().filter(|e| e["path"] == cut).collect();
            assert_eq!(found.len(), 1, "the {len}-byte path, cut: {opens:#?}");
            assert_eq!(found[0]["path_truncated"], true, "{}", found[0]);
        }
    }
}

/// `watcher launch` hands the agent its session's trace id, plainly and as a W3C trace
/// context, so the agent's own logs and spans join the watcher's records.
#[test]
fn launch_gives_the_agent_its_trace_id() {
    let d = Daemon::start();
    let dir = common::TempDir::new("traceparent");
    let out = dir.0.join("env");
    let (trace, code) = d.launch(&format!(
        "printf '%s\\n%s\\n' \"$WATCHER_TRACE_ID\" \"$TRACEPARENT\" > {}",
        out.display()
    ));
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(trace.as_str()), "{text}");
    let tp = lines.next().unwrap_or_default();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    assert_eq!(parts[1], trace, "{tp}");
    assert!(
        parts[2].len() == 16
            && parts[2].bytes().all(|b| b.is_ascii_hexdigit())
            && parts[2] != "0000000000000000",
        "{tp}"
    );
    assert_eq!(parts[3], "01", "{tp}");
}
