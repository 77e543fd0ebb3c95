//! Decoded data that reaches a program which runs what it reads: `base64 -d | sh` runs what
//! it decodes, `base64 -d | cmp - blob` only compares it. A new decoder holds when its output
//! goes to such a program, and otherwise only alerts.
//!
//! The pipe is followed as the session's processes hold it now (`/proc/PID/fd`), through
//! programs that pass data on (`| gunzip | sh`). A shell sets a pipeline up one process at a
//! time, so when the decoder starts its reader may not have run its program yet: the pipes
//! are then remembered, and the reader is judged when it runs its program (every exec of an
//! enforced session is stopped until answered, so that is still before it reads a byte).
//! A reader that never runs a program (a subshell's `while read; eval`) is not followed: what
//! the decoded text then does is judged on its own.
use std::collections::HashSet;

use super::facets;
use crate::pipeline::intake::tree::Tree;

/// Programs passing data on that are followed, at most.
const HOPS: usize = 4;
/// Pipes remembered per session.
pub const PIPES_MAX: usize = 64;

/// A program that runs what it reads on its input.
pub fn runs_input(prog: &str) -> bool {
    facets::program_class(prog) == Some("interpreter")
        || matches!(
            prog,
            "awk" | "gawk" | "mawk" | "nawk" | "busybox" | "xargs" | "parallel"
        )
}

/// The pipes a process holds, by inode: (read ends, write ends).
pub fn pipes(pid: u32) -> (Vec<u64>, Vec<u64>) {
    let (mut r, mut w) = (Vec::new(), Vec::new());
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (r, w);
    };
    for e in dir.flatten() {
        let Some(ino) = std::fs::read_link(e.path()).ok().and_then(|l| {
            l.to_str()?
                .strip_prefix("pipe:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        }) else {
            continue;
        };
        // The access mode is in the low bits of `flags` (octal): 0 read, 1 write.
        let write = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        })
        .is_some_and(|f| f & 3 != 0);
        if write { &mut w } else { &mut r }.push(ino);
    }
    (r, w)
}

/// Where a decoder's output goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Reach {
    /// A program that runs what it reads has it (its name).
    Runs(String),
    /// Nothing that runs it has it now; these pipes carry it on (remember them).
    Carried(Vec<u64>),
}

/// Follows the output of `pid` (a decoder that has not run yet) to its readers among the
/// session's processes. The decoder's ancestors are not readers: the shell that set the
/// pipeline up holds a read end only until it starts the next stage.
pub fn reach(tree: &Tree, session_id: u64, pid: u32) -> Reach {
    let mut ancestors = HashSet::from([pid]);
    let mut p = pid;
    while let Some(parent) = tree.get(p).map(|x| x.ppid).filter(|&q| q > 1) {
        if !ancestors.insert(parent) {
            break;
        }
        p = parent;
    }
    let holders: Vec<(u32, Vec<u64>, Vec<u64>)> = tree
        .session_pids(session_id)
        .into_iter()
        .filter(|p| !ancestors.contains(p))
        .map(|p| {
            let (r, w) = pipes(p);
            (p, r, w)
        })
        .collect();
    let mut carried: Vec<u64> = Vec::new();
    let mut frontier = pipes(pid).1;
    for _ in 0..HOPS {
        let mut next = Vec::new();
        for &ino in &frontier {
            if carried.contains(&ino) {
                continue;
            }
            carried.push(ino);
            for (reader, _, out) in holders.iter().filter(|(_, r, _)| r.contains(&ino)) {
                let Some(proc_) = tree.get(*reader).filter(|p| p.execed) else {
                    continue;
                };
                let name = proc_.exe.as_deref().map_or(&*proc_.comm, facets::basename);
                if runs_input(name) {
                    return Reach::Runs(name.to_string());
                }
                next.extend(out.iter().copied());
            }
        }
        frontier = next;
    }
    Reach::Carried(carried)
}

/// A process that just ran its program: whether it reads one of `carried` (decoded data), and
/// runs what it reads. A program that passes the data on adds its own output pipes.
pub fn arrives(carried: &mut Vec<u64>, pid: u32, prog: &str) -> bool {
    let (r, w) = pipes(pid);
    if !r.iter().any(|i| carried.contains(i)) {
        return false;
    }
    if runs_input(prog) {
        return true;
    }
    for i in w {
        if carried.len() < PIPES_MAX && !carried.contains(&i) {
            carried.push(i);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_that_run_their_input() {
        assert!(runs_input("sh"));
        assert!(runs_input("python3"));
        assert!(runs_input("xargs"));
        assert!(!runs_input("cmp"));
        assert!(!runs_input("gunzip"));
    }

    #[test]
    fn a_pipe_is_seen_from_both_ends() {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (r, w) = pipes(std::process::id());
        let ino = |fd: i32| {
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
            st.st_ino
        };
        assert!(r.contains(&ino(fds[0])), "{r:?}");
        assert!(w.contains(&ino(fds[1])), "{w:?}");
        let mut carried = vec![ino(fds[0])];
        // This test process reads the pipe and is not an interpreter: it passes it on.
        assert!(!arrives(&mut carried, std::process::id(), "cmp"));
        assert!(arrives(&mut carried, std::process::id(), "sh"));
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
