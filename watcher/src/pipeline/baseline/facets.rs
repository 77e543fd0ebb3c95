//! What a profile learns from an event, generalised so that the same work in another
//! directory, on another crate or with other file names looks the same: file areas relative to
//! the work directory and the home (not file names), executables by location class where their
//! names vary, destinations by host name or network.
use std::path::Path;

/// The facets a profile learns, each a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Facet {
    /// A program by path (system and home programs, not written by the session).
    Exec,
    /// Where programs run from (`system`, `workdir`, `tmp+written`, `devshm`, `fileless`, ...).
    ExecLocation,
    /// A program and its subcommand (`git commit`, `cargo build`).
    Command,
    /// Parent program to child program.
    Edge,
    /// Grandparent > parent > child.
    Ancestry,
    Read,
    Write,
    Create,
    Delete,
    Destination,
    /// A rare kind of action (`setid`, `mount`, `bpf`, `module`, `memfd`, `ptrace`, ...).
    Kind,
}

pub const FACETS: usize = 11;

impl Facet {
    pub const ALL: [Facet; FACETS] = [
        Facet::Exec,
        Facet::ExecLocation,
        Facet::Command,
        Facet::Edge,
        Facet::Ancestry,
        Facet::Read,
        Facet::Write,
        Facet::Create,
        Facet::Delete,
        Facet::Destination,
        Facet::Kind,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Facet::Exec => "exec",
            Facet::ExecLocation => "exec_location",
            Facet::Command => "command",
            Facet::Edge => "edge",
            Facet::Ancestry => "ancestry",
            Facet::Read => "read",
            Facet::Write => "write",
            Facet::Create => "create",
            Facet::Delete => "delete",
            Facet::Destination => "destination",
            Facet::Kind => "kind",
        }
    }

    pub fn parse(s: &str) -> Option<Facet> {
        Facet::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// Where a path lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Work,
    Home,
    Tmp,
    DevShm,
    Dev,
    Proc,
    System,
    /// A relative path that could not be resolved.
    Unknown,
}

impl Base {
    pub fn as_str(self) -> &'static str {
        match self {
            Base::Work => "workdir",
            Base::Home => "home",
            Base::Tmp => "tmp",
            Base::DevShm => "devshm",
            Base::Dev => "dev",
            Base::Proc => "proc",
            Base::System => "system",
            Base::Unknown => "unknown",
        }
    }
}

/// The base of `path` and the rest of it below the base (no leading `/`).
pub fn base<'a>(path: &'a str, workdir: Option<&str>) -> (Base, &'a str) {
    if !path.starts_with('/') {
        return (Base::Unknown, path);
    }
    if let Some(w) = workdir {
        let w = w.trim_end_matches('/');
        if !w.is_empty() {
            if path == w {
                return (Base::Work, "");
            }
            if let Some(rest) = path.strip_prefix(w).and_then(|r| r.strip_prefix('/')) {
                return (Base::Work, rest);
            }
        }
    }
    if let Some(rest) = path.strip_prefix("/home/") {
        // /home/USER/...
        return (Base::Home, rest.split_once('/').map_or("", |(_, r)| r));
    }
    if path == "/root" {
        return (Base::Home, "");
    }
    if let Some(rest) = path.strip_prefix("/root/") {
        return (Base::Home, rest);
    }
    for (p, b) in [
        ("/tmp/", Base::Tmp),
        ("/var/tmp/", Base::Tmp),
        ("/dev/shm/", Base::DevShm),
        ("/dev/", Base::Dev),
        ("/proc/", Base::Proc),
    ] {
        if let Some(rest) = path.strip_prefix(p) {
            return (b, rest);
        }
        // The directory itself (an `O_TMPFILE` open names it): that place, not a name in `/`.
        if path == &p[..p.len() - 1] {
            return (b, "");
        }
    }
    (Base::System, &path[1..])
}

/// The area of a path, as a profile keeps it: up to two directories below the work directory
/// (`$WORK/src`, `$WORK/target/debug`), the home (`$HOME/.cargo/registry`) or `/`
/// (`/usr/include`); a dot file, or a file directly in a dot directory, keeps its name
/// (`$HOME/.ssh/id_rsa`, `$WORK/.git/config`, `$HOME/.bashrc`), because there the name is
/// what matters. Scratch places are one area each (`/tmp`, `/dev/shm`). `tool`: the writing
/// program's name, which tags areas in a dot directory named after it (`.git` written by
/// git is git's own business; by anything else it is not).
pub fn area(path: &str, workdir: Option<&str>, tool: Option<&str>) -> (Base, String) {
    let (b, rest) = base(path, workdir);
    let (root, depth) = match b {
        Base::Work => return (b, work_area(rest, tool)),
        Base::Home => ("$HOME", 2),
        Base::Tmp => return (b, "/tmp".into()),
        Base::DevShm => return (b, "/dev/shm".into()),
        Base::Dev => ("/dev", 1),
        Base::Proc => return (b, proc_area(rest)),
        Base::System => ("", 2),
        Base::Unknown => return (b, "?".into()),
    };
    let comps: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
    let mut out = String::with_capacity(root.len() + rest.len().min(64));
    out.push_str(root);
    let Some((file, dirs)) = comps.split_last() else {
        if out.is_empty() {
            out.push('/');
        }
        return (b, out);
    };
    for d in dirs.iter().take(depth) {
        out.push('/');
        out.push_str(generic(d));
    }
    if dirs.len() <= depth {
        let in_dot_dir = dirs.last().is_some_and(|d| d.starts_with('.'));
        if file.starts_with('.') || in_dot_dir || (b == Base::Dev && dirs.is_empty()) {
            out.push('/');
            out.push_str(file);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    (b, out)
}

/// Within the work directory the task's own names (crates, sources, build output) are one
/// area, `$WORK`; what matters there is what lies under a dot name: `$WORK/**/.git/hooks`,
/// `$WORK/**/.git/config`, `$WORK/**/.mcp.json`, `$WORK/**/.vscode/settings.json`. A dot
/// directory written by the program it is named after is that program's own business, one
/// area: `$WORK/**/.git [git]`.
fn work_area(rest: &str, tool: Option<&str>) -> String {
    let comps: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
    let Some(first_dot) = comps.iter().position(|c| c.starts_with('.')) else {
        return "$WORK".into();
    };
    let dot = comps[first_dot];
    if generic(dot) == "*" {
        return "$WORK/**/*".into();
    }
    if let Some(tool) = tool {
        let name = &dot[1..];
        let own = tool == name || tool.strip_prefix(name).is_some_and(|r| r.starts_with('-'));
        if own && first_dot + 1 < comps.len() {
            return format!("$WORK/**/{dot} [{tool}]");
        }
    }
    let mut out = String::from("$WORK/**/");
    out.push_str(dot);
    if let Some(next) = comps.get(first_dot + 1) {
        out.push('/');
        out.push_str(generic(next));
    }
    out
}

/// A name made by a program rather than a person (a hash, a counter) is `*`: `omega-b306c6c7e558dfbb`,
/// `tmp.1234567`.
fn generic(name: &str) -> &str {
    if name.starts_with(".tmp") {
        return "*";
    }
    let mut hex = 0;
    let mut digits = 0;
    // A random token (`mkstemp`'s `JBtoDd`): letters whose case keeps switching.
    let mut run = 0;
    let mut switches = 0;
    let mut last_upper: Option<bool> = None;
    for b in name.bytes() {
        hex = if b.is_ascii_hexdigit() { hex + 1 } else { 0 };
        digits = if b.is_ascii_digit() { digits + 1 } else { 0 };
        if b.is_ascii_alphanumeric() {
            run += 1;
            if b.is_ascii_alphabetic() {
                let upper = b.is_ascii_uppercase();
                if last_upper.is_some_and(|l| l != upper) {
                    switches += 1;
                }
                last_upper = Some(upper);
            }
        } else {
            run = 0;
            switches = 0;
            last_upper = None;
        }
        if hex >= 8 || digits >= 5 || (run >= 6 && switches >= 3) {
            return "*";
        }
    }
    name
}

/// `/proc/1234/status` and `/proc/self/status` are `/proc/PID/status`; `/proc/cpuinfo` stays.
fn proc_area(rest: &str) -> String {
    let mut it = rest.split('/');
    let first = it.next().unwrap_or("");
    let pid_like = first == "self"
        || first == "thread-self"
        || (!first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()));
    if pid_like {
        match it.next() {
            // /proc/PID/task/TID/... and /proc/PID/fd/N: the directory is the area.
            Some(n) if !n.is_empty() => format!("/proc/PID/{n}"),
            _ => "/proc/PID".into(),
        }
    } else {
        format!("/proc/{first}")
    }
}

/// A program's name for edges and ancestry: its basename, or its location class when it lives
/// where names vary (the work directory, scratch places, a file the session wrote).
pub fn node(path: &str, workdir: Option<&str>, written: bool) -> String {
    let (b, _) = base(path, workdir);
    match b {
        Base::System | Base::Home if !written => basename(path).to_string(),
        _ => format!("[{}]", location(b, written)),
    }
}

/// Where a program runs from.
pub fn location(b: Base, written: bool) -> String {
    if written && b != Base::Work {
        format!("{}+written", b.as_str())
    } else {
        b.as_str().to_string()
    }
}

pub fn basename(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}

/// A program and its subcommand: `git commit`, `cargo build`; only the program when the first
/// argument is an option, a path or a file name.
pub fn command(path: &str, argv: &[String]) -> String {
    let prog = basename(path);
    let sub = argv.get(1).map(String::as_str).filter(|a| {
        (2..=24).contains(&a.len())
            && a.as_bytes()[0].is_ascii_lowercase()
            && a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    match sub {
        Some(s) if !is_interpreter(prog) => format!("{prog} {s}"),
        _ => prog.to_string(),
    }
}

pub fn is_interpreter(prog: &str) -> bool {
    matches!(
        prog,
        "sh" | "bash" | "dash" | "zsh" | "env" | "node" | "perl" | "ruby" | "nice" | "timeout"
    ) || prog.starts_with("python")
}

/// Programs whose first use from a new parent is worth a hold: they move data off the host.
pub fn is_network_tool(prog: &str) -> bool {
    program_class(prog) == Some("network")
}

/// What a program can do beyond looking around, for how much its first use weighs: it moves
/// data over the network, runs code it is given, decodes hidden text, or changes the system
/// (privileges, services, mounts, kernel, disks). A new program of none of these (`file`,
/// `netstat`, `lsmod`) only alerts.
/// Whether a dot name under the work directory (`$WORK/**/.name...`, as `area` keeps it) is
/// one a program run there reads and acts on: git's hooks and configuration, direnv, editors'
/// tasks, agents' settings and MCP servers, package managers' and CI's configuration.
pub fn runs_from_work(value: &str) -> bool {
    const NAMES: [&str; 27] = [
        ".git/hooks",
        ".git/config",
        ".gitattributes",
        ".gitmodules",
        ".envrc",
        ".vscode",
        ".idea",
        ".claude",
        ".cursor",
        ".windsurf",
        ".continue",
        ".codex",
        ".goose",
        ".roo",
        ".clinerules",
        ".mcp.json",
        ".aider.conf.yml",
        ".npmrc",
        ".yarnrc",
        ".yarnrc.yml",
        ".pypirc",
        ".cargo",
        ".github",
        ".gitlab-ci.yml",
        ".pre-commit-config.yaml",
        ".husky",
        ".devcontainer",
    ];
    let Some(rest) = value.strip_prefix("$WORK/**/") else {
        return false;
    };
    NAMES
        .iter()
        .any(|n| rest == *n || rest.strip_prefix(n).is_some_and(|r| r.starts_with('/')))
}

pub fn program_class(prog: &str) -> Option<&'static str> {
    // `python3.11`, `perl5.36`: the name without its version, when the name itself is none.
    class_of(prog)
        .or_else(|| class_of(prog.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')))
}

fn class_of(p: &str) -> Option<&'static str> {
    Some(match p {
        "curl" | "wget" | "nc" | "ncat" | "netcat" | "nc.openbsd" | "nc.traditional" | "socat"
        | "telnet" | "ssh" | "scp" | "sftp" | "ftp" | "tftp" | "rsync" | "dig" | "nslookup"
        | "host" | "getent" | "whois" | "aria2c" | "lftp" => "network",
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "fish" | "busybox" | "python" | "perl"
        | "ruby" | "node" | "php" | "lua" | "tclsh" | "expect" => "interpreter",
        "base64" | "base32" | "basenc" | "xxd" | "uudecode" | "openssl" | "gpg" => "decoder",
        "sudo" | "su" | "doas" | "pkexec" | "chattr" | "setcap" | "docker" | "podman"
        | "nerdctl" | "kubectl" | "nsenter" | "unshare" | "chroot" | "mount" | "umount"
        | "insmod" | "modprobe" | "rmmod" | "crontab" | "at" | "systemctl" | "useradd"
        | "usermod" | "userdel" | "passwd" | "chpasswd" | "visudo" | "iptables" | "nft"
        | "shred" | "wipefs" | "dd" | "mkfs" | "bpftool" => "system",
        _ => return None,
    })
}

/// A destination as a profile keeps it: `host:port` when the session resolved the name,
/// otherwise the /24 (IPv4) or /48 (IPv6) network and the port; loopback as `loopback:PORT`
/// below 1024 and `loopback:1024+` above (a dev server's port is new each run).
pub fn destination(addr: &str, port: u16, host: Option<&str>) -> String {
    if let Some(h) = host {
        return format!("{}:{port}", h.to_ascii_lowercase());
    }
    if addr
        .parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.to_canonical().is_loopback())
    {
        return if port >= 1024 {
            "loopback:1024+".into()
        } else {
            format!("loopback:{port}")
        };
    }
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24:{port}", o[0], o[1], o[2])
        }
        Ok(std::net::IpAddr::V6(a)) => {
            let s = a.segments();
            format!("[{:x}:{:x}:{:x}::/48]:{port}", s[0], s[1], s[2])
        }
        Err(_) => format!("{addr}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_one_destination_per_privileged_port_and_one_above() {
        assert_eq!(destination("127.0.0.1", 22, None), "loopback:22");
        assert_eq!(destination("127.0.0.53", 41067, None), "loopback:1024+");
        assert_eq!(destination("::1", 8080, None), "loopback:1024+");
        assert_eq!(
            destination("::ffff:127.0.0.1", 9000, None),
            "loopback:1024+"
        );
        assert_eq!(destination("192.0.2.7", 4444, None), "192.0.2.0/24:4444");
    }

    #[test]
    fn the_dot_names_programs_run_from_are_told_from_other_dot_files() {
        for v in [
            "$WORK/**/.git/hooks",
            "$WORK/**/.git/config",
            "$WORK/**/.vscode/settings.json",
            "$WORK/**/.mcp.json",
            "$WORK/**/.github/workflows/ci.yml",
            "$WORK/**/.envrc",
        ] {
            assert!(runs_from_work(v), "{v}");
        }
        for v in [
            "$WORK/**/.env",
            "$WORK/**/.package-lock.json",
            "$WORK/**/.config/tool",
            "$WORK/**/.git/index",
            "$WORK/**/.mcp.json.bak",
            "$HOME/.bashrc",
        ] {
            assert!(!runs_from_work(v), "{v}");
        }
    }

    #[test]
    fn areas_generalise_names_but_keep_dot_files() {
        let w = Some("/src/p");
        let a = |p: &str| area(p, w, None).1;
        assert_eq!(a("/src/p/src/main.rs"), "$WORK");
        assert_eq!(a("/src/p/crate/target/debug/deps/x-1.d"), "$WORK");
        assert_eq!(a("/src/p/Cargo.toml"), "$WORK");
        assert_eq!(a("/src/p/.git/config"), "$WORK/**/.git/config");
        assert_eq!(a("/src/p/r/.git/hooks/pre-commit"), "$WORK/**/.git/hooks");
        assert_eq!(a("/src/p/.mcp.json"), "$WORK/**/.mcp.json");
        assert_eq!(
            a("/src/p/c/target/.rustc_info.json"),
            "$WORK/**/.rustc_info.json"
        );
        assert_eq!(
            a("/src/p/c/target/debug/.fingerprint/c-b306c6c7e558dfbb/x"),
            "$WORK/**/.fingerprint/*"
        );
        assert_eq!(a("/src/p/c/.tmpJBtoDd.temp-archive/tmp.a"), "$WORK/**/*");
        assert_eq!(generic("tU2XgxZ"), "*");
        assert_eq!(generic("settings.json"), "settings.json");
        assert_eq!(generic("CACHEDIR.TAG"), "CACHEDIR.TAG");
        assert_eq!(a("/home/u/.ssh/id_rsa"), "$HOME/.ssh/id_rsa");
        assert_eq!(a("/root/.bashrc"), "$HOME/.bashrc");
        // An O_TMPFILE open names the directory: /tmp's area, not `/`.
        assert_eq!(a("/tmp"), "/tmp");
        assert_eq!(a("/dev/shm"), "/dev/shm");
        assert_eq!(
            a("/home/u/.cargo/registry/cache/x.crate"),
            "$HOME/.cargo/registry"
        );
        assert_eq!(
            a("/home/u/.config/systemd/user/x.service"),
            "$HOME/.config/systemd"
        );
        assert_eq!(a("/usr/include/stdio.h"), "/usr/include");
        assert_eq!(a("/etc/passwd"), "/etc");
        assert_eq!(a("/tmp/cc1234.s"), "/tmp");
        assert_eq!(a("/dev/null"), "/dev/null");
        assert_eq!(a("/dev/pts/3"), "/dev/pts");
        assert_eq!(a("/proc/1234/status"), "/proc/PID/status");
        assert_eq!(a("/proc/self/fd/3"), "/proc/PID/fd");
        assert_eq!(a("relative/x"), "?");
        // Another project in another directory has the same areas.
        assert_eq!(
            area("/other/q/src/lib.rs", Some("/other/q"), None).1,
            "$WORK"
        );
        // `.git` written by git is git's own; by anything else it is another area.
        assert_eq!(
            area("/src/p/.git/tU2Xg", w, Some("git")).1,
            "$WORK/**/.git [git]"
        );
        assert_eq!(
            area("/src/p/r/.git/x", w, Some("git-receive-pack")).1,
            "$WORK/**/.git [git-receive-pack]"
        );
        assert_eq!(
            area("/src/p/.git/config", w, Some("sh")).1,
            "$WORK/**/.git/config"
        );
        assert_eq!(
            area("/src/p/r/.git/hooks/x", w, Some("sh")).1,
            "$WORK/**/.git/hooks"
        );
    }

    #[test]
    fn commands_keep_subcommands_only() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command("/usr/bin/git", &argv(&["git", "commit", "-m", "x"])),
            "git commit"
        );
        assert_eq!(command("/usr/bin/cc", &argv(&["cc", "-c", "a.c"])), "cc");
        assert_eq!(command("/usr/bin/cc", &argv(&["cc", "hello.c"])), "cc");
        assert_eq!(command("/bin/sh", &argv(&["sh", "-c", "x"])), "sh");
        assert_eq!(
            command("/usr/bin/python3", &argv(&["python3", "setup"])),
            "python3"
        );
    }

    #[test]
    fn program_classes() {
        assert_eq!(program_class("python3.11"), Some("interpreter"));
        assert_eq!(program_class("curl"), Some("network"));
        assert_eq!(program_class("base64"), Some("decoder"));
        assert_eq!(program_class("docker"), Some("system"));
        assert_eq!(program_class("netstat"), None);
        assert_eq!(program_class("file"), None);
    }

    #[test]
    fn destinations_by_name_or_network() {
        assert_eq!(
            destination("93.184.216.34", 443, Some("Example.com")),
            "example.com:443"
        );
        assert_eq!(destination("10.1.2.3", 22, None), "10.1.2.0/24:22");
        assert_eq!(
            destination("2001:db8:1::5", 80, None),
            "[2001:db8:1::/48]:80"
        );
    }

    #[test]
    fn nodes_name_system_programs_and_classify_the_rest() {
        assert_eq!(node("/usr/bin/curl", None, false), "curl");
        assert_eq!(
            node("/src/p/target/debug/x", Some("/src/p"), true),
            "[workdir]"
        );
        assert_eq!(node("/tmp/x", None, true), "[tmp+written]");
        assert_eq!(node("/usr/local/bin/x", None, true), "[system+written]");
    }
}
