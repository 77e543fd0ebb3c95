//! Translation: a kernel record into the event's detail, with the process tree kept up to
//! date on the way.
use super::*;

impl Intake {
    /// A rename, link or truncate that wrote a name the policy names by another spelling (a
    /// symlinked directory, `..` after one, a symlink to the file for a truncate) is matched
    /// under the policy's name, as a gated open is. `written`: the name as the process wrote it.
    pub(super) fn named_by_identity(
        &self,
        hdr: &EventHeader,
        mut detail: Option<Detail>,
        written: Option<String>,
        follow: bool,
    ) -> Option<Detail> {
        let (Some(d), Some(written)) = (detail.as_mut(), written) else {
            return detail;
        };
        let Some(name) = d.written_name_mut() else {
            return detail;
        };
        // The caller is stopped at the gate, or may have exited: its session's other
        // processes name the same files.
        let pids = std::iter::once(hdr.tgid).chain(self.tree.session_pids(hdr.session_id));
        if let Some(policy) = self
            .shared
            .policy_name_written(pids, &written, name, follow)
        {
            *name = policy;
        }
        detail
    }

    /// Updates the tree and builds the user-facing detail (None for internal records).
    /// Takes the record by value so its strings move into the event instead of being copied.
    pub(super) fn apply(&mut self, rec: Record, hdr: &EventHeader, comm: &str) -> Option<Detail> {
        let pid = hdr.tgid;
        match rec {
            Record::Exec {
                filename,
                argv,
                truncated,
                argv_missing,
                profile,
                ..
            } => {
                let fileless = crate::sys::procfs::runs_fileless(pid, &filename);
                self.tree.entry(pid, hdr.ppid, hdr.session_id);
                let (path, argv, loader) = match self
                    .loaders
                    .is_loader(pid, &filename)
                    .then(|| runs::loader_program(&argv))
                    .flatten()
                {
                    Some((prog, rest)) => (
                        self.tree.resolve(pid, tree::AT_FDCWD, prog).0,
                        rest,
                        Some(filename),
                    ),
                    None => (filename, argv, None),
                };
                let script = runs::script(
                    &path,
                    &argv,
                    || self.tree.fd_path(pid, 0),
                    |f| self.tree.resolve(pid, tree::AT_FDCWD, f).0,
                );
                let p = self.tree.entry(pid, hdr.ppid, hdr.session_id);
                p.exe = Some(path.clone());
                p.execed = true;
                p.argv = argv.clone();
                p.comm = comm.to_string();
                let profile = (hdr.flags & EVENT_FLAG_SESSION_START != 0 || profile != 0)
                    .then(|| {
                        self.shared
                            .config
                            .agents
                            .get((profile as usize).wrapping_sub(1))
                            .map(|a| a.profile.clone())
                    })
                    .flatten();
                Some(Detail::Exec {
                    path,
                    argv,
                    argv_truncated: truncated,
                    argv_missing,
                    profile,
                    fileless,
                    loader,
                    script,
                })
            }
            Record::Fork {
                child, is_thread, ..
            } => {
                if !is_thread {
                    self.tree.entry(pid, hdr.ppid, hdr.session_id);
                    self.tree.fork(pid, child);
                }
                Some(Detail::Fork {
                    child_pid: child,
                    thread: is_thread,
                })
            }
            Record::Exit {
                exit_code,
                fenced_call,
                ..
            } => {
                self.tree.exit(pid);
                let sig = (exit_code & 0x7f) as i32;
                let fenced =
                    (fenced_call != 0).then(|| crate::sys::fence::call_name(fenced_call).into());
                Some(if sig == 0 {
                    Detail::Exit {
                        exit_code: Some(((exit_code >> 8) & 0xff) as i32),
                        signal: None,
                        fenced,
                    }
                } else {
                    Detail::Exit {
                        exit_code: None,
                        signal: Some(sig),
                        fenced,
                    }
                })
            }
            Record::Open {
                call,
                dfd,
                path,
                flags,
                mode,
                result,
                truncated,
                ..
            } => {
                self.tree.entry(pid, hdr.ppid, hdr.session_id);
                // open_by_handle_at names no path: the file is the descriptor it returned.
                let (abs, resolved) = if call == OPEN_CALL_BY_HANDLE {
                    match (result >= 0).then(|| self.tree.fd_path(pid, dfd)).flatten() {
                        Some(p) => (p, true),
                        None => (format!("fd:{dfd}"), false),
                    }
                } else {
                    self.tree.resolve(pid, dfd, path)
                };
                if result >= 0 && resolved {
                    self.tree.opened(pid, result, &abs);
                }
                // A gated open is matched as the file it opened, by the policy's name for it.
                let renamed = (hdr.flags & EVENT_FLAG_GATED != 0 && result >= 0)
                    .then(|| self.shared.policy_name(pid, result, &abs))
                    .flatten();
                let (path, opened_as) = match renamed {
                    Some(name) => (name, Some(abs)),
                    None => (abs, None),
                };
                Some(Detail::Open {
                    // Absent for openat, the common case (every event stays as it was).
                    syscall: (call != OPEN_CALL_OPENAT)
                        .then(|| EventKind::Open.calls().get(call as usize))
                        .flatten()
                        .map(|n| (*n).into()),
                    path,
                    flags: OpenFlags(flags),
                    mode,
                    result,
                    error: errno_name(result),
                    resolved,
                    path_truncated: truncated,
                    opened_as,
                })
            }
            Record::Connect { addr, result, .. } => {
                let host = match &addr {
                    SockAddr::Inet { addr, .. } => {
                        self.names.host(hdr.session_id, *addr).map(String::from)
                    }
                    _ => None,
                };
                let (family, addr, port, path) = match addr {
                    SockAddr::Inet { addr, port } => (
                        if addr.is_ipv4() { "inet" } else { "inet6" },
                        Some(addr.to_string()),
                        Some(port),
                        None,
                    ),
                    SockAddr::Unix { path } => ("unix", None, None, Some(path)),
                    SockAddr::Other { .. } => ("other", None, None, None),
                };
                Some(Detail::Connect {
                    syscall: (hdr.flags & EVENT_FLAG_SEND != 0).then_some("sendmsg".into()),
                    family: family.into(),
                    addr,
                    host,
                    port,
                    path,
                    result,
                    error: errno_name(result),
                })
            }
            Record::Signal {
                target,
                sig,
                result,
                ..
            } => Some(Detail::Signal {
                target_pid: target,
                signal: sig,
                result,
            }),
            Record::Ptrace {
                target,
                request,
                result,
                ..
            } => {
                let (syscall, target_pid, request) = match request {
                    PTRACE_REQ_VM_WRITE => (Some("process_vm_writev"), target, 0),
                    PTRACE_REQ_VM_READ => (Some("process_vm_readv"), target, 0),
                    // The target is whoever the pidfd names (0 when it cannot be read: no
                    // session, so outside the caller's).
                    PTRACE_REQ_PIDFD_GETFD => (
                        Some("pidfd_getfd"),
                        crate::sys::procfs::pidfd_target(pid, target as i32).unwrap_or(0),
                        0,
                    ),
                    r => (None, target, r),
                };
                Some(Detail::Ptrace {
                    syscall: syscall.map(Into::into),
                    target_pid,
                    request,
                    result,
                })
            }
            Record::Chdir { fd, path, .. } => {
                self.tree.entry(pid, hdr.ppid, hdr.session_id);
                self.tree.chdir(pid, fd, &path);
                None
            }
            Record::Path {
                kind,
                call,
                dfd,
                path,
                args,
                result,
                ..
            } => {
                // truncate(2) by name follows a final symlink: the file is found by identity.
                let written = (kind == EventKind::Truncate && result == 0)
                    .then(|| self.tree.as_written(pid, dfd, &path))
                    .flatten();
                let d = changes::path_detail(
                    &mut self.tree,
                    hdr,
                    (kind, call, dfd),
                    path,
                    args,
                    result,
                );
                self.named_by_identity(hdr, d, written, true)
            }
            Record::Pair {
                kind,
                call,
                dfd,
                path,
                new_dfd,
                new_path,
                fstype,
                flags,
                result,
                ..
            } => {
                // The name written, as the process wrote it: its directory by identity.
                let written = match kind {
                    EventKind::Rename if result == 0 => {
                        self.tree.as_written(pid, new_dfd, &new_path)
                    }
                    EventKind::Link if result == 0 => self.tree.as_written(pid, dfd, &path),
                    _ => None,
                };
                let d = changes::pair_detail(
                    &mut self.tree,
                    hdr,
                    changes::Pair {
                        kind,
                        call,
                        dfd,
                        path,
                        new_dfd,
                        new_path,
                        fstype,
                        flags,
                        result,
                    },
                );
                self.named_by_identity(hdr, d, written, false)
            }
            // Handled before the session lookup (`process`).
            Record::Dns { .. } => None,
            Record::Dup { old_fd, new_fd, .. } => {
                self.tree.entry(pid, hdr.ppid, hdr.session_id);
                self.tree.dup(pid, old_fd, new_fd);
                None
            }
            Record::Setid {
                call,
                args,
                old,
                new,
                result,
                ..
            } => Some(changes::setid_detail(call, args, (old, new), result)),
        }
    }
}
