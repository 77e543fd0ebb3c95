//! The scope detector: each action of a session with a pinned task scope is checked against
//! it, and one outside it is a `scope` finding naming the entry it broke.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use ipnet::IpNet;

use crate::model::{
    event::{Detail, Event},
    scope::Scope,
};

#[derive(Debug, thiserror::Error)]
#[error("{field}[{index}]: {value:?}: {message}")]
pub struct ScopeError {
    pub field: &'static str,
    pub index: usize,
    pub value: String,
    pub message: String,
}

/// A scope compiled for checking.
pub struct ScopeCheck {
    pub scope: Scope,
    workdir: Option<PathBuf>,
    write: GlobSet,
    read: Option<GlobSet>,
    hosts: Option<Vec<HostRule>>,
    exec: Option<GlobSet>,
    resolvers: Vec<IpAddr>,
    home_prefixes: Vec<String>,
}

/// An action outside the scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    /// The scope field it broke (`workdir`, `allow_host`, ...).
    pub entry: &'static str,
    /// What the action touched.
    pub value: String,
    /// What the entry allows.
    pub allowed: Vec<String>,
    /// What `approve --remember` adds, and to which field.
    pub widen: (&'static str, String),
}

#[derive(Debug, Clone)]
struct HostRule {
    host: HostPat,
    port: Option<u16>,
}

#[derive(Debug, Clone)]
enum HostPat {
    Net(IpNet),
    Name(String),
    /// `*.example.com`: the suffix `.example.com`.
    Suffix(String),
}

/// Files a pinned session may always write: scratch places and terminals.
const SCRATCH: [&str; 10] = [
    "/dev/fd/*",
    "/tmp/**",
    "/var/tmp/**",
    "/dev/null",
    "/dev/zero",
    "/dev/tty",
    "/dev/pts/*",
    "/dev/stdout",
    "/dev/stderr",
    "/proc/self/fd/*",
];

fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

impl ScopeCheck {
    pub fn compile(scope: Scope) -> Result<ScopeCheck, ScopeError> {
        let workdir = scope.workdir.as_ref().map(PathBuf::from);
        let home = scope.home.clone();
        let expand = |p: &str| -> String {
            if let (Some(rest), Some(h)) = (p.strip_prefix("~/"), &home) {
                format!("{}/{rest}", h.trim_end_matches('/'))
            } else if p.starts_with('/') {
                p.to_string()
            } else if let Some(w) = &workdir {
                w.join(p).display().to_string()
            } else {
                p.to_string()
            }
        };
        let set =
            |field: &'static str, v: &[String], extra: &[&str]| -> Result<GlobSet, ScopeError> {
                let mut b = GlobSetBuilder::new();
                for (index, p) in v.iter().enumerate() {
                    let err = |message: String| ScopeError {
                        field,
                        index,
                        value: p.clone(),
                        message,
                    };
                    if p.is_empty() {
                        return Err(err("empty pattern".into()));
                    }
                    if p.starts_with("~/") && home.is_none() {
                        return Err(err("`~/` but the session has no home".into()));
                    }
                    if !p.starts_with('/') && !p.starts_with("~/") && workdir.is_none() {
                        return Err(err("a relative pattern needs --workdir".into()));
                    }
                    let full = expand(p);
                    b.add(glob(&full).map_err(|e| err(e.to_string()))?);
                    // A plain directory allows what is under it.
                    if !full.contains(['*', '?', '[', '{']) {
                        let under = format!("{}/**", full.trim_end_matches('/'));
                        b.add(glob(&under).map_err(|e| err(e.to_string()))?);
                    }
                }
                for p in extra {
                    b.add(glob(p).expect("built-in pattern"));
                }
                b.build().map_err(|e| ScopeError {
                    field,
                    index: 0,
                    value: String::new(),
                    message: e.to_string(),
                })
            };
        let write = set("allow_write", &scope.allow_write, &SCRATCH)?;
        let read = match &scope.allow_read {
            Some(v) => Some(set("allow_read", v, &[])?),
            None => None,
        };
        let exec = match &scope.allow_exec {
            Some(v) => Some(set("allow_exec", v, &[])?),
            None => None,
        };
        let hosts = match &scope.allow_host {
            Some(v) => Some(
                v.iter()
                    .enumerate()
                    .map(|(index, h)| {
                        parse_host(h).map_err(|message| ScopeError {
                            field: "allow_host",
                            index,
                            value: h.clone(),
                            message,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let mut check = ScopeCheck {
            workdir,
            write,
            read,
            hosts,
            exec,
            resolvers: resolvers(),
            home_prefixes: vec!["/home/".into(), "/root/".into()],
            scope,
        };
        for w in check.scope.widened.clone() {
            check.widen_in_memory(&w.entry, &w.item)?;
        }
        Ok(check)
    }

    /// Adds `item` to `entry` (a remembered approval); the recorded widening is the caller's.
    fn widen_in_memory(&mut self, entry: &str, item: &str) -> Result<(), ScopeError> {
        let mut s = self.scope.clone();
        match entry {
            "allow_write" => s.allow_write.push(item.into()),
            "allow_read" => s.allow_read.get_or_insert_with(Vec::new).push(item.into()),
            "allow_host" => s.allow_host.get_or_insert_with(Vec::new).push(item.into()),
            "allow_exec" => s.allow_exec.get_or_insert_with(Vec::new).push(item.into()),
            _ => {
                return Err(ScopeError {
                    field: "widened",
                    index: 0,
                    value: entry.into(),
                    message: "not a scope field".into(),
                })
            }
        }
        let widened = std::mem::take(&mut s.widened);
        let mut c = ScopeCheck::compile(s)?;
        c.scope.widened = widened;
        *self = c;
        Ok(())
    }

    /// The first scope entry the event breaks, if any.
    pub fn check(&self, ev: &Event) -> Option<Breach> {
        match &ev.detail {
            Detail::Exec { path, .. } => self.exec_breach(path),
            Detail::Open {
                path,
                flags,
                result,
                resolved,
                ..
            } if *result >= 0 && *resolved => {
                if flags.may_change() {
                    self.write_breach(path)
                } else {
                    self.read_breach(path)
                }
            }
            Detail::Unlink {
                path,
                result: 0,
                resolved: true,
                ..
            }
            | Detail::Chmod {
                path,
                result: 0,
                resolved: true,
                ..
            }
            | Detail::Chown {
                path,
                result: 0,
                resolved: true,
                ..
            }
            | Detail::Truncate {
                path,
                result: 0,
                resolved: true,
                ..
            }
            | Detail::Link {
                path,
                result: 0,
                resolved: true,
                ..
            } => self.write_breach(path),
            Detail::Rename {
                path,
                new_path,
                result: 0,
                resolved: true,
                ..
            } => self
                .write_breach(path)
                .or_else(|| self.write_breach(new_path)),
            Detail::Connect {
                family,
                addr: Some(addr),
                port: Some(port),
                host,
                result,
                ..
            } if (family == "inet" || family == "inet6")
                && (*result == 0 || *result == -(libc::EINPROGRESS as i64)) =>
            {
                self.host_breach(addr, *port, host.as_deref())
            }
            _ => None,
        }
    }

    fn in_workdir(&self, path: &str) -> bool {
        self.workdir
            .as_ref()
            .is_some_and(|w| Path::new(path).starts_with(w))
    }

    fn write_breach(&self, path: &str) -> Option<Breach> {
        let w = self.workdir.as_ref()?;
        if self.in_workdir(path) || self.write.is_match(path) {
            return None;
        }
        let mut allowed = vec![format!("{}/**", w.display())];
        allowed.extend(self.scope.allow_write.iter().cloned());
        Some(Breach {
            entry: if self.scope.allow_write.is_empty() {
                "workdir"
            } else {
                "allow_write"
            },
            value: path.into(),
            allowed,
            widen: ("allow_write", path.into()),
        })
    }

    fn read_breach(&self, path: &str) -> Option<Breach> {
        let read = self.read.as_ref()?;
        let in_home = self
            .home_prefixes
            .iter()
            .any(|h| path.starts_with(h.as_str()));
        if !in_home || self.in_workdir(path) || read.is_match(path) || self.write.is_match(path) {
            return None;
        }
        Some(Breach {
            entry: "allow_read",
            value: path.into(),
            allowed: self.scope.allow_read.clone().unwrap_or_default(),
            widen: ("allow_read", path.into()),
        })
    }

    fn exec_breach(&self, path: &str) -> Option<Breach> {
        let exec = self.exec.as_ref()?;
        if exec.is_match(path) {
            return None;
        }
        Some(Breach {
            entry: "allow_exec",
            value: path.into(),
            allowed: self.scope.allow_exec.clone().unwrap_or_default(),
            widen: ("allow_exec", path.into()),
        })
    }

    fn host_breach(&self, addr: &str, port: u16, host: Option<&str>) -> Option<Breach> {
        let rules = self.hosts.as_ref()?;
        let ip: Option<IpAddr> = addr.parse().ok();
        if port == 53 && ip.is_some_and(|ip| self.resolvers.contains(&ip)) {
            return None;
        }
        let ok = rules.iter().any(|r| {
            r.port.is_none_or(|p| p == port)
                && match &r.host {
                    HostPat::Net(n) => ip.is_some_and(|ip| n.contains(&ip)),
                    HostPat::Name(n) => host.is_some_and(|h| h.eq_ignore_ascii_case(n)),
                    HostPat::Suffix(s) => host.is_some_and(|h| {
                        h.len() > s.len() && h.to_ascii_lowercase().ends_with(s.as_str())
                    }),
                }
        });
        if ok {
            return None;
        }
        let shown = match host {
            Some(h) => format!("{h}:{port}"),
            None if addr.contains(':') => format!("[{addr}]:{port}"),
            None => format!("{addr}:{port}"),
        };
        Some(Breach {
            entry: "allow_host",
            value: format!("{shown} ({addr})"),
            allowed: self.scope.allow_host.clone().unwrap_or_default(),
            widen: ("allow_host", shown),
        })
    }
}

/// `HOST[:PORT]`: a name, `*.suffix`, an address (`[v6]` with a port), or a CIDR.
fn parse_host(s: &str) -> Result<HostRule, String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or("`[` without `]` (expected [ADDR]:PORT)")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("expected `:PORT` after `]`".into()),
        };
        (h, port)
    } else {
        match s.rsplit_once(':') {
            // A bare IPv6 address has several colons and no port.
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))?,
        ),
        None => None,
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    let pat = if let Ok(n) = host.parse::<IpNet>() {
        HostPat::Net(n)
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        HostPat::Net(IpNet::from(ip))
    } else if let Some(suffix) = host.strip_prefix("*.") {
        valid_name(suffix)?;
        HostPat::Suffix(format!(".{}", suffix.to_ascii_lowercase()))
    } else {
        valid_name(host)?;
        HostPat::Name(host.to_ascii_lowercase())
    };
    Ok(HostRule { host: pat, port })
}

fn valid_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err("not a host name, an address or a CIDR".into())
    }
}

/// The system's DNS resolvers (`/etc/resolv.conf`).
fn resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// The compiled scopes of the running sessions.
#[derive(Default)]
pub struct Scopes {
    by_session: Mutex<HashMap<u64, Arc<ScopeCheck>>>,
}

impl Scopes {
    pub fn set(&self, session_id: u64, check: ScopeCheck) {
        self.lock().insert(session_id, Arc::new(check));
    }

    pub fn get(&self, session_id: u64) -> Option<Arc<ScopeCheck>> {
        self.lock().get(&session_id).cloned()
    }

    pub fn ended(&self, session_id: u64) {
        self.lock().remove(&session_id);
    }

    /// Adds `item` to the session's `entry`; returns the widened scope (to record).
    pub fn widen(
        &self,
        session_id: u64,
        w: crate::model::scope::Widening,
    ) -> Result<Scope, ScopeError> {
        let mut map = self.lock();
        let Some(cur) = map.get(&session_id) else {
            return Err(ScopeError {
                field: "session",
                index: 0,
                value: session_id.to_string(),
                message: "the session has no scope (or has ended)".into(),
            });
        };
        let mut s = cur.scope.clone();
        s.widened.push(w);
        let c = ScopeCheck::compile(s)?;
        let scope = c.scope.clone();
        map.insert(session_id, Arc::new(c));
        Ok(scope)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ScopeCheck>>> {
        self.by_session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(detail: Detail) -> Event {
        Event {
            seq: 0,
            ts: crate::model::event::Ts(std::time::SystemTime::now()),
            pid: 1,
            tid: 1,
            ppid: 0,
            uid: 0,
            trace_id: "t".into(),
            comm: "x".into(),
            cgroup_id: 0,
            detail,
        }
    }

    fn open(path: &str, flags: &[&'static str]) -> Event {
        ev(Detail::Open {
            syscall: None,
            path: path.into(),
            flags: crate::model::event::OpenFlags::from_names(flags).unwrap(),
            mode: 0,
            result: 3,
            error: None,
            resolved: true,
            path_truncated: false,
            opened_as: None,
        })
    }

    fn connect(addr: &str, port: u16, host: Option<&str>) -> Event {
        ev(Detail::Connect {
            syscall: None,
            family: "inet".into(),
            addr: Some(addr.into()),
            host: host.map(Into::into),
            port: Some(port),
            path: None,
            result: 0,
            error: None,
        })
    }

    fn scope(yaml: &str) -> ScopeCheck {
        ScopeCheck::compile(serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn writes_outside_the_workdir_break_it_and_scratch_places_do_not() {
        let s = scope("workdir: /w\nhome: /home/u\nallow_write: ['~/.cache/**']\n");
        assert_eq!(
            s.check(&open("/w/src/a.rs", &["O_WRONLY", "O_CREAT"])),
            None
        );
        assert_eq!(s.check(&open("/tmp/x", &["O_WRONLY"])), None);
        assert_eq!(s.check(&open("/dev/null", &["O_WRONLY"])), None);
        assert_eq!(s.check(&open("/home/u/.cache/a/b", &["O_WRONLY"])), None);
        assert_eq!(s.check(&open("/etc/passwd", &["O_RDONLY"])), None);
        let b = s.check(&open("/home/u/.bashrc", &["O_WRONLY"])).unwrap();
        assert_eq!(b.entry, "allow_write");
        assert_eq!(b.widen, ("allow_write", "/home/u/.bashrc".to_string()));
        // `/w2` is not under `/w`.
        let b = scope("workdir: /w\n")
            .check(&open("/w2/x", &["O_CREAT", "O_WRONLY"]))
            .unwrap();
        assert_eq!(b.entry, "workdir");
    }

    #[test]
    fn hosts_match_by_name_address_cidr_and_port() {
        let s = scope("allow_host: [registry.npmjs.org, '*.github.com:443', '10.0.0.0/8', '127.0.0.1:8080']\n");
        assert_eq!(
            s.check(&connect("1.2.3.4", 443, Some("registry.npmjs.org"))),
            None
        );
        assert_eq!(
            s.check(&connect("1.2.3.4", 443, Some("api.github.com"))),
            None
        );
        assert!(s
            .check(&connect("1.2.3.4", 80, Some("api.github.com")))
            .is_some());
        assert!(s
            .check(&connect("1.2.3.4", 443, Some("github.com")))
            .is_some());
        assert_eq!(s.check(&connect("10.9.8.7", 22, None)), None);
        assert_eq!(s.check(&connect("127.0.0.1", 8080, None)), None);
        let b = s.check(&connect("127.0.0.1", 9, None)).unwrap();
        assert_eq!(b.entry, "allow_host");
        assert_eq!(b.widen.1, "127.0.0.1:9");
    }

    #[test]
    fn a_widening_allows_exactly_what_it_names() {
        let s = Scopes::default();
        s.set(1, scope("workdir: /w\nallow_host: []\n"));
        assert!(s
            .get(1)
            .unwrap()
            .check(&connect("127.0.0.1", 9, None))
            .is_some());
        let w = crate::model::scope::Widening {
            entry: "allow_host".into(),
            item: "127.0.0.1:9".into(),
            hold: "h".into(),
            by: "root".into(),
            at: "now".into(),
        };
        let widened = s.widen(1, w).unwrap();
        assert_eq!(widened.widened.len(), 1);
        assert_eq!(
            s.get(1).unwrap().check(&connect("127.0.0.1", 9, None)),
            None
        );
        assert!(s
            .get(1)
            .unwrap()
            .check(&connect("127.0.0.1", 10, None))
            .is_some());
    }

    #[test]
    fn bad_entries_name_their_field_and_index() {
        let bad: Scope = serde_yaml_ng::from_str("allow_host: [ok.example, 'x:99999']\n").unwrap();
        let e = ScopeCheck::compile(bad).err().unwrap().to_string();
        assert!(e.starts_with("allow_host[1]"), "{e}");
        let bad: Scope = serde_yaml_ng::from_str("allow_write: ['rel/**']\n").unwrap();
        let e = ScopeCheck::compile(bad).err().unwrap().to_string();
        assert!(e.contains("needs --workdir"), "{e}");
    }
}
