//! Sessions: one agent process tree, one trace id.
use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Ended sessions kept for `watcher status`.
const ENDED_KEPT: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    pub trace_id: String,
    pub session_id: u64,
    pub profile: Option<String>,
    /// launch, attach or matcher.
    pub started_by: String,
    pub root_pid: u32,
    pub started: String,
    /// Processes of the session alive now.
    pub processes: u32,
    pub events: u64,
    pub ended: Option<String>,
    /// The session cgroup's id (see `sys::cgroup::Cgroups::id`); None without a cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// What the session is doing now, as `status` found it.
    #[serde(default)]
    pub state: SessionState,
    /// The work directory: its root process's working directory when it started (rules:
    /// `in_workdir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The task scope pinned at launch (with what approvals widened it by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<crate::model::scope::Scope>,
}

impl Session {
    /// A session `started_by` (launch, attach, matcher, restart) at `started` (RFC 3339) with
    /// its root process: one process, no events yet, no profile, cgroup, work directory or
    /// scope (set those on the value).
    pub fn new(
        trace_id: String,
        session_id: u64,
        started_by: impl Into<String>,
        root_pid: u32,
        started: String,
    ) -> Session {
        Session {
            trace_id,
            session_id,
            profile: None,
            started_by: started_by.into(),
            root_pid,
            started,
            processes: 1,
            events: 0,
            ended: None,
            cgroup_id: None,
            state: SessionState::default(),
            workdir: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    #[default]
    Running,
    /// Frozen, waiting on a hold (approve or deny it).
    Held,
    /// Frozen by the kill-switch (or otherwise) with no hold pending.
    Frozen,
    Ended,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Running => "running",
            SessionState::Held => "held",
            SessionState::Frozen => "frozen",
            SessionState::Ended => "ended",
        }
    }
}

#[derive(Debug, Default)]
pub struct Sessions {
    by_id: HashMap<u64, Session>,
    ended: VecDeque<u64>,
}

/// A random 128-bit trace id, as 32 hex digits (W3C trace-context form).
pub fn new_trace_id() -> String {
    crate::model::ids::TraceId::random().into()
}

/// A session id for user-space-started sessions; the top bit keeps them apart from the ids the
/// kernel draws for agent matchers.
pub fn new_session_id() -> u64 {
    let mut b = [0u8; 8];
    fill_random(&mut b);
    u64::from_ne_bytes(b) | (1 << 63)
}

pub use crate::model::ids::fill_random;

impl Sessions {
    pub fn start(&mut self, s: Session) {
        self.by_id.insert(s.session_id, s);
    }

    pub fn get(&self, id: u64) -> Option<&Session> {
        self.by_id.get(&id)
    }

    /// The running session whose cgroup has this id.
    pub fn by_cgroup(&self, cgroup_id: u64) -> Option<&Session> {
        self.by_id
            .values()
            .find(|s| s.cgroup_id == Some(cgroup_id) && s.ended.is_none())
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Session> {
        self.by_id.get_mut(&id)
    }

    /// A process of the session ended; the session ends with its last process.
    pub fn process_exited(&mut self, id: u64, now: &str) {
        let Some(s) = self.by_id.get_mut(&id) else {
            return;
        };
        s.processes = s.processes.saturating_sub(1);
        if s.processes == 0 && s.ended.is_none() {
            s.ended = Some(now.to_string());
            self.ended.push_back(id);
            while self.ended.len() > ENDED_KEPT {
                if let Some(old) = self.ended.pop_front() {
                    self.by_id.remove(&old);
                }
            }
        }
    }

    pub fn all(&self) -> Vec<Session> {
        let mut v: Vec<_> = self.by_id.values().cloned().collect();
        v.sort_by(|a, b| a.started.cmp(&b.started));
        v
    }
}
