//! What an exec really runs when the file executed is not the code: the dynamic loader run as
//! a program (`ld-linux-x86-64.so.2 PROG ARGS` maps and runs PROG, which is never exec'd), and
//! an interpreter given a file (`bash FILE`, `python3 FILE`, `sh < FILE`).
use std::{
    collections::HashSet,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

/// Where distributions keep the dynamic loaders.
const LOADER_DIRS: &[&str] = &[
    "/lib64",
    "/lib",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
];

/// A loader's options that take a value (glibc's `ld.so --help`).
const LOADER_VALUE_OPTIONS: &[&str] = &[
    "--library-path",
    "--inhibit-rpath",
    "--audit",
    "--preload",
    "--argv0",
    "--glibc-hwcaps-prepend",
    "--glibc-hwcaps-mask",
];

/// The host's dynamic loaders, by name and by identity: a hard link has the loader's inode,
/// and a copy under another name its size and content.
#[derive(Debug, Default)]
pub struct Loaders {
    inodes: HashSet<(u64, u64)>,
    /// (size, SHA-256) of each loader's content.
    contents: Vec<(u64, [u8; 32])>,
}

impl Loaders {
    pub fn of_host() -> Loaders {
        let mut l = Loaders::default();
        for dir in LOADER_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !is_loader_name(&e.file_name().to_string_lossy()) {
                    continue;
                }
                let Ok(md) = std::fs::metadata(e.path()) else {
                    continue;
                };
                if !md.is_file() || !l.inodes.insert((md.dev(), md.ino())) {
                    continue;
                }
                if let Some(h) = digest(&e.path(), md.len()) {
                    if !l.contents.contains(&(md.len(), h)) {
                        l.contents.push((md.len(), h));
                    }
                }
            }
        }
        l
    }

    /// Whether the program `pid` runs now (its `/proc/PID/exe`, or `path` when the process
    /// is gone) is a dynamic loader, by name, inode or content.
    pub fn is_loader(&self, pid: u32, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        if is_loader_name(name) {
            return true;
        }
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(md) = std::fs::metadata(&exe).or_else(|_| std::fs::metadata(path)) else {
            return false;
        };
        if self.inodes.contains(&(md.dev(), md.ino())) {
            return true;
        }
        // Only a file of a loader's exact size is read.
        self.contents.iter().any(|(len, h)| {
            *len == md.len()
                && digest(&exe, *len).or_else(|| digest(Path::new(path), *len)) == Some(*h)
        })
    }
}

fn is_loader_name(name: &str) -> bool {
    name.starts_with("ld-linux") || name.starts_with("ld-musl") || name == "ld.so"
}

fn digest(path: &Path, len: u64) -> Option<[u8; 32]> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0u64;
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        seen += n as u64;
        if seen > len {
            return None;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().into())
}

/// The program a loader runs and its argv (from the program's name on), or None when the
/// loader was only asked about itself (`--help`, `--version`, ...).
pub fn loader_program(argv: &[String]) -> Option<(String, Vec<String>)> {
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].as_str();
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with("--") {
            break;
        }
        i += if LOADER_VALUE_OPTIONS.contains(&a) {
            2
        } else {
            1
        };
    }
    let prog = argv.get(i)?;
    Some((prog.clone(), argv[i..].to_vec()))
}

/// Interpreters that run a file named as their first operand, or read one on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interpreter {
    Shell,
    Python,
    /// perl, ruby, node, php: `-e` gives code inline.
    Other,
}

fn interpreter(name: &str) -> Option<Interpreter> {
    let shells = ["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash"];
    if shells.contains(&name) {
        return Some(Interpreter::Shell);
    }
    let version = |rest: &str| rest.chars().all(|c| c.is_ascii_digit() || c == '.');
    if let Some(rest) = name.strip_prefix("python") {
        return version(rest).then_some(Interpreter::Python);
    }
    for base in ["perl", "ruby", "node", "nodejs", "php"] {
        if let Some(rest) = name.strip_prefix(base) {
            if version(rest) {
                return Some(Interpreter::Other);
            }
        }
    }
    None
}

/// What an interpreter's argv says it runs: `Some(Some(file))` a file, `Some(None)` its
/// standard input, None code given inline (`-c`, `-e`, `-m`) or no interpreter.
fn script_operand(kind: Interpreter, argv: &[String]) -> Option<Option<String>> {
    let inline: &[&str] = match kind {
        Interpreter::Shell => &["-c"],
        Interpreter::Python => &["-c", "-m"],
        Interpreter::Other => &["-e", "-E", "-r", "--eval", "-p", "--print"],
    };
    let with_value: &[&str] = match kind {
        Interpreter::Shell => &["-o", "+o", "-O", "+O"],
        Interpreter::Python => &["-W", "-X", "--check-hash-based-pycs"],
        Interpreter::Other => &["-I", "-r", "--require", "-d", "-f", "-c"],
    };
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].as_str();
        if a == "--" {
            return Some(argv.get(i + 1).cloned());
        }
        if a == "-" {
            return Some(None);
        }
        let flag = a.starts_with('-') || (kind == Interpreter::Shell && a.starts_with('+'));
        if !flag {
            return Some(Some(a.to_string()));
        }
        // A flag cluster that ends in an inline-code flag (`bash -ec CMD`, `python3 -Ic`).
        let last = a
            .chars()
            .last()
            .map(|c| format!("-{c}"))
            .unwrap_or_default();
        if inline.contains(&a) || (!a.starts_with("--") && inline.contains(&last.as_str())) {
            return None;
        }
        i += if with_value.contains(&a) { 2 } else { 1 };
    }
    Some(None)
}

/// The file an interpreter runs: the operand its argv names, or the regular file on its
/// standard input (`stdin`, as the tree knows descriptor 0), resolved by `resolve`.
pub fn script(
    path: &str,
    argv: &[String],
    stdin: impl FnOnce() -> Option<String>,
    resolve: impl FnOnce(&str) -> String,
) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let kind = interpreter(name)?;
    match script_operand(kind, argv)? {
        Some(file) => Some(resolve(&file)),
        None => stdin()
            .filter(|p| p.starts_with('/') && !p.starts_with("/dev/") && !p.starts_with("/proc/")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_loader_runs_its_first_operand() {
        assert_eq!(
            loader_program(&v(&[
                "ld.so",
                "--library-path",
                "/x",
                "--inhibit-cache",
                "/tmp/p",
                "a"
            ])),
            Some(("/tmp/p".into(), v(&["/tmp/p", "a"])))
        );
        assert_eq!(loader_program(&v(&["ld.so", "--version"])), None);
    }

    #[test]
    fn an_interpreter_runs_its_file_or_stdin_not_inline_code() {
        let r = |p: &str| format!("/w/{p}");
        let none = || None;
        let s = |p: &str, a: &[&str]| script(p, &v(a), none, r);
        assert_eq!(
            s("/bin/bash", &["bash", "-e", "x.sh"]),
            Some("/w/x.sh".into())
        );
        assert_eq!(s("/bin/bash", &["bash", "-ec", "echo"]), None);
        assert_eq!(
            s("/usr/bin/python3.11", &["python3", "-W", "ignore", "a.py"]),
            Some("/w/a.py".into())
        );
        assert_eq!(s("/usr/bin/python3", &["python3", "-m", "pip"]), None);
        assert_eq!(s("/usr/bin/node", &["node", "-e", "1"]), None);
        assert_eq!(s("/usr/bin/git", &["git", "x"]), None);
        let stdin = || Some("/tmp/payload".to_string());
        assert_eq!(
            script("/bin/sh", &v(&["sh"]), stdin, r),
            Some("/tmp/payload".into())
        );
        let tty = || Some("/dev/pts/0".to_string());
        assert_eq!(script("/bin/sh", &v(&["sh"]), tty, r), None);
    }
}
