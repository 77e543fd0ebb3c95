//! A session's task scope, pinned when it starts (`watcher launch --workdir … --allow-…`):
//! what the task may touch. Anything outside it is a `scope` finding; it grows only by an
//! approval with `--remember`, and each widening is recorded here.
use serde::{Deserialize, Serialize};

/// The scope as pinned. An absent list restricts nothing; a present one (even empty) allows
/// only what it names. Globs: absolute, `~/…` (the launching user's home) or relative to
/// `workdir`; `**` crosses directories, `*` does not.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Writes, creates, deletes, renames, mode and owner changes must be under it (or match
    /// `allow_write`, or be a scratch place: `/tmp`, `/var/tmp`, `/dev/null`, terminals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_write: Vec<String>,
    /// Reads in home directories outside `workdir` must match one (system files are always
    /// readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_read: Option<Vec<String>>,
    /// `HOST[:PORT]`: a DNS name (`*.` for any subdomain), an address or a CIDR. The system's
    /// resolvers (port 53) are always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_host: Option<Vec<String>>,
    /// Programs that may run, by path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_exec: Option<Vec<String>>,
    /// The home `~/` stands for (the launching user's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// What approvals with `--remember` added, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub widened: Vec<Widening>,
}

/// One widening of a session's scope by an approver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Widening {
    /// The scope field widened (`allow_write`, `allow_host`, …).
    pub entry: String,
    /// What was added to it.
    pub item: String,
    pub hold: String,
    pub by: String,
    pub at: String,
}

/// The scope fields a finding can name.
pub const ENTRIES: [&str; 5] = [
    "workdir",
    "allow_write",
    "allow_read",
    "allow_host",
    "allow_exec",
];

impl Scope {
    /// Whether it pins anything at all.
    pub fn is_pinned(&self) -> bool {
        self.workdir.is_some()
            || !self.allow_write.is_empty()
            || self.allow_read.is_some()
            || self.allow_host.is_some()
            || self.allow_exec.is_some()
    }

    /// `other`'s entries added to this one's (the command line on top of a scope file on top of
    /// the profile's defaults): `workdir` is replaced, lists are joined.
    pub fn merge(&mut self, other: Scope) {
        if other.workdir.is_some() {
            self.workdir = other.workdir;
        }
        self.allow_write.extend(other.allow_write);
        join(&mut self.allow_read, other.allow_read);
        join(&mut self.allow_host, other.allow_host);
        join(&mut self.allow_exec, other.allow_exec);
        if other.home.is_some() {
            self.home = other.home;
        }
    }

    /// A readable one-line summary, for `status` and `show-hold`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(w) = &self.workdir {
            parts.push(format!("workdir {w}"));
        }
        let list = |name: &str, v: &[String]| format!("{name} [{}]", v.join(", "));
        if !self.allow_write.is_empty() {
            parts.push(list("allow_write", &self.allow_write));
        }
        for (name, v) in [
            ("allow_read", &self.allow_read),
            ("allow_host", &self.allow_host),
            ("allow_exec", &self.allow_exec),
        ] {
            if let Some(v) = v {
                parts.push(list(name, v));
            }
        }
        for w in &self.widened {
            parts.push(format!(
                "+{} {} (hold {}, {})",
                w.entry, w.item, w.hold, w.by
            ));
        }
        parts.join("; ")
    }
}

fn join(into: &mut Option<Vec<String>>, more: Option<Vec<String>>) {
    if let Some(more) = more {
        into.get_or_insert_with(Vec::new).extend(more);
    }
}
