//! Holds, decisions and the kill-switch as records: what the store keeps, the API returns and
//! the pipeline hands to enforcement.
use serde::{Deserialize, Serialize};

use super::event::{Event, Outcome};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HoldState {
    Pending,
    Approved,
    Denied,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Pending => "pending",
            HoldState::Approved => "approved",
            HoldState::Denied => "denied",
        }
    }
}

/// What is held.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HoldKind {
    /// The session is frozen (a rule's hold).
    #[default]
    Session,
    /// An open of a protected path waits in the kernel (fanotify); deny refuses it (EPERM).
    ProtectedOpen,
}

/// A process of the held session when the hold began.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub exe: String,
    pub argv: Vec<String>,
}

/// A time on one boot's clock (CLOCK_BOOTTIME, milliseconds), comparable only within the boot
/// `boot_id` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootDeadline {
    pub boot_id: String,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hold {
    pub id: String,
    #[serde(default)]
    pub kind: HoldKind,
    pub trace_id: String,
    pub rule: String,
    pub policy_version: String,
    pub state: HoldState,
    /// The finding event (its `evidence` holds the events that matched).
    pub finding: Event,
    /// The other findings of the same action (one action is one question).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Event>,
    /// The event that completed the rule.
    pub trigger: Event,
    pub tree: Vec<ProcInfo>,
    /// The session's events before the hold, oldest first.
    pub recent: Vec<Event>,
    pub started: String,
    pub deadline: String,
    pub deadline_ms: i64,
    /// The deadline on the boot clock, which a step of the wall clock does not move: a
    /// restarted daemon of the same boot counts from it (holds stored before it was kept
    /// have none, and count from `deadline_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_boot: Option<BootDeadline>,
    /// Processes the kernel stopped (SIGSTOP) at the hook: they get SIGCONT on approve.
    #[serde(default)]
    pub stopped: Vec<u32>,
    /// Gated actions of the session that came while this hold was pending: they wait on
    /// the same decision (approve lets them go too, deny stops them), so an approval releases
    /// nothing it did not show.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Event>,
    /// From the kernel event to the whole session frozen, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// How the decision came: the CLI (control socket), the HTTP API, or the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_via: Option<Via>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// `approve --remember`: an exception was recorded.
    #[serde(default)]
    pub remembered: bool,
    /// What deny did (`killed session`, `killed process 123`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Files the held open itself created: deny removes them (if they are still the same
    /// files), so the host is as it was; approve keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<CreatedFile>,
    /// The file whose setuid/setgid bits the held chmod set, by identity when it was held:
    /// deny clears those bits again (if the name still names that file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setid_bits: Option<SetidBits>,
    /// The session's task scope when it was held (`scope` findings name an entry of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<super::scope::Scope>,
}

/// The setuid and setgid bits a held chmod set on a file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetidBits {
    pub file: CreatedFile,
    /// `S_ISUID` and/or `S_ISGID`.
    pub bits: u32,
}

/// A file a held open created, by name and identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreatedFile {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
}

/// What a new hold is made of; `Approvals::record` adds the times and the state.
pub struct HoldDraft {
    pub id: String,
    pub kind: HoldKind,
    pub finding: Event,
    pub also: Vec<Event>,
    pub trigger: Event,
    pub tree: Vec<ProcInfo>,
    pub recent: Vec<Event>,
    pub stopped: Vec<u32>,
    pub rule: String,
    pub policy_version: String,
    pub frozen_us: Option<u64>,
    /// The session's task scope when it was held.
    pub scope: Option<super::scope::Scope>,
}

/// `approve --remember`: the same rule does not hold this session (or profile) again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Exception {
    pub rule: String,
    /// `trace` or `profile`.
    pub scope: String,
    pub value: String,
    pub by: String,
    pub at: String,
    pub hold: String,
}

/// One engagement of the kill-switch: who, when, how and for what.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KillSwitchEntry {
    pub by: String,
    pub at: String,
    pub mode: String,
    #[serde(default)]
    pub traces: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

/// The kill-switch, as stored (so a restart keeps it engaged). Engagements add up: the
/// sessions are the union of every engagement's, `kill` wins over `freeze`, and each
/// engagement is kept in `entries` until a release.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KillSwitchState {
    /// Every engagement since the last release, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<KillSwitchEntry>,
    pub engaged: bool,
    /// `freeze` or `kill`.
    #[serde(default)]
    pub mode: String,
    /// Sessions it applies to; empty with `all`.
    #[serde(default)]
    pub traces: Vec<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub at: String,
}

/// What deny stops.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DenyScope {
    /// Every process of the session (`cgroup.kill`).
    #[default]
    Session,
    /// Only the triggering process; the rest of the session resumes.
    Process,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HaltMode {
    Freeze,
    Kill,
}

impl HaltMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HaltMode::Freeze => "freeze",
            HaltMode::Kill => "kill",
        }
    }
}

/// What an engage did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Engaged {
    pub sessions: Vec<String>,
    pub processes: usize,
    /// From the request to every session frozen (or killed).
    pub micros: u64,
}

/// What a tamper finding does to the session.
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TamperAction {
    /// Kill-switch (freeze) for the offending session.
    #[default]
    Freeze,
    /// Kill-switch (kill) for the offending session.
    Kill,
    /// Record the finding only.
    Alert,
}

/// What happened to a finding, and the hold it opened or joined.
#[derive(Debug)]
pub struct Decision {
    pub outcome: Outcome,
    pub hold: Option<String>,
    /// A hold this finding opened (the caller records it).
    pub new_hold: bool,
}

/// How a decision on a hold came.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `watcher approve|deny` over the control socket.
    Cli,
    /// The HTTP API (`POST /v1/holds/ID/approve|deny`).
    Api,
    /// No answer before the hold's deadline.
    Deadline,
    /// The watcher retired (`watcher retire`, the package's removal): no answer can come.
    Retire,
}
