//! The control socket's protocol: one JSON request line, then JSON reply lines.

use serde::{Deserialize, Serialize};

use super::{
    baseline::{Novelty, ProfileExport, ProfileMode, ProfileSummary, WouldHold},
    hold::{Engaged, HaltMode, Hold, KillSwitchState},
    ids::{HoldId, TraceId},
    scope::Scope,
    session::Session,
};

/// The longest request line a client may send; longer ones are refused with an error. Big
/// enough for a profile to import (`baseline import`, some 50,000 entries); only root and the
/// approver group can send one at all.
pub const MAX_LINE: usize = 8 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Recent events, then (with `follow`) live ones.
    Events {
        follow: bool,
        trace: Option<TraceId>,
    },
    /// Watch a running process and its descendants as a new session.
    Attach {
        pid: u32,
        profile: Option<String>,
        /// The task scope to pin (see `model::scope`).
        #[serde(default)]
        scope: Option<Scope>,
    },
    /// Watch the calling process (which then execs the agent) as a new session.
    Launch {
        profile: Option<String>,
        #[serde(default)]
        scope: Option<Scope>,
    },
    /// Learned profiles: see `BaselineOp`.
    Baseline {
        op: BaselineOp,
        #[serde(default)]
        profile: Option<String>,
        #[serde(default)]
        mode: Option<ProfileMode>,
        #[serde(default)]
        trace: Option<TraceId>,
        /// `import`: the profile.
        #[serde(default)]
        import: Option<Box<ProfileExport>>,
    },
    /// Recent findings, then (with `follow`) live ones.
    Findings {
        follow: bool,
        trace: Option<TraceId>,
    },
    /// Load the rule files again.
    Reload,
    /// Holds (pending only unless `all`).
    Holds {
        all: bool,
    },
    ShowHold {
        id: HoldId,
    },
    Approve {
        id: HoldId,
        remember: bool,
        /// Remember for every session of this session's profile.
        #[serde(default)]
        remember_profile: bool,
    },
    Deny {
        id: HoldId,
    },
    /// The watcher is being removed (the package's prerm): pending holds are denied now (no
    /// answer can come), and the stop that follows leaves running sessions running and
    /// detaches the programs instead of freezing for a next daemon. Root only.
    Retire {
        /// Stop the daemon once retired (where no service manager stops it).
        #[serde(default)]
        stop: bool,
    },
    KillSwitch {
        op: KillSwitchOp,
        #[serde(default)]
        traces: Vec<TraceId>,
        #[serde(default)]
        all: bool,
        #[serde(default)]
        mode: Option<HaltMode>,
    },
}

/// A request line as the server reads it (at most `MAX_LINE` bytes): UTF-8 JSON of one
/// `Request`. The error says what is wrong, for the client.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_LINE {
        return Err(format!(
            "bad request: the request line is over {} bytes",
            MAX_LINE
        ));
    }
    let text =
        std::str::from_utf8(line).map_err(|_| "bad request: the request line is not UTF-8")?;
    serde_json::from_str(text).map_err(|e| format!("bad request: {e}"))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BaselineOp {
    /// Every profile in brief (or one, with `profile`).
    List,
    Show,
    Mode,
    Export,
    Import,
    Reset,
    Diff,
    Report,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KillSwitchOp {
    Engage,
    Release,
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Error {
        error: String,
    },
    Started {
        trace_id: String,
        pids: Vec<u32>,
        /// The daemon's process and thread ids and its guardian's: what `launch`'s seccomp
        /// fence keeps the session off (`sys::fence`).
        #[serde(default)]
        guarded: Vec<u32>,
    },
    Reloaded {
        policy_version: String,
        rules: usize,
    },
    Holds {
        holds: Vec<Hold>,
    },
    Hold {
        hold: Box<Hold>,
    },
    KillSwitch {
        kill_switch: KillSwitchState,
        #[serde(default)]
        engaged: Option<Engaged>,
        #[serde(default)]
        released: Vec<String>,
    },
    Retired {
        /// Holds denied, no answer being able to come.
        denied: Vec<String>,
        /// Sessions the kill-switch holds: left frozen for a person (their cgroups stay).
        left_frozen: Vec<String>,
    },
    Status(Box<Status>),
    Profiles {
        profiles: Vec<ProfileSummary>,
    },
    Profile {
        summary: ProfileSummary,
        profile: Box<ProfileExport>,
    },
    Diff {
        profile: String,
        trace_id: String,
        novel: Vec<Novelty>,
    },
    Report {
        profile: String,
        would_hold: Vec<WouldHold>,
    },
    Done {
        done: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KindCount {
    pub events: u64,
    pub drops: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub sessions: Vec<Session>,
    /// Processes in the user-space tree.
    pub processes_watched: usize,
    /// Entries of the kernel's watched-process map.
    pub kernel_watched: Vec<u32>,
    /// Per event type: records received and records the kernel could not reserve.
    pub per_type: std::collections::BTreeMap<String, KindCount>,
    pub malformed_records: u64,
    /// How full the kernel's record ring was at this snapshot, 0 to 1.
    #[serde(default)]
    pub ring_fill_ratio: f64,
    pub client_lag: u64,
    /// Kernel-side failures by kind (`fork_watch`: a watched process's child could not be
    /// watched; `session_watch`: a matcher's session could not start; `config`; `alert`: an
    /// urgent alert was lost). None should ever be counted.
    #[serde(default)]
    pub kernel_failures: std::collections::BTreeMap<String, u64>,
    /// Failed accepts on the control socket and the API since the daemon started.
    #[serde(default)]
    pub accept_errors: u64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    #[serde(default)]
    pub gate: GateStatus,
    pub policy: PolicyStatus,
    pub holds: HoldsStatus,
    /// The learned profiles.
    #[serde(default)]
    pub profiles: Vec<ProfileSummary>,
    /// Each kernel program's run count and time; they count only while BPF run-time
    /// statistics are on (`sysctl kernel.bpf_stats_enabled=1`), which costs a little per run.
    #[serde(default)]
    pub programs: Vec<ProgramStat>,
    /// The audit log's writer.
    #[serde(default)]
    pub audit: AuditStatus,
    /// Optional hooks this kernel has no tracepoint for (module loads without CONFIG_MODULES).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks_missing: Vec<String>,
    /// Each session's process limit (`[holds] pids_max`) and where it is set; None: sessions
    /// have none (no pids controller on this host, or `pids_max = 0`).
    #[serde(default)]
    pub pids_limit: Option<PidsLimitStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PidsLimitStatus {
    pub max: u64,
    /// `cgroup v2`, or `cgroup v1 DIR`.
    pub place: String,
}

/// The audit log (`[audit]`): what the writer appended, and what it could not.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AuditStatus {
    pub enabled: bool,
    /// Records in the log (this daemon's and before).
    pub records: u64,
    /// Events dropped because the ring to the writer was full (never a decision).
    pub dropped: u64,
    /// Checkpoints signed since the daemon started.
    pub checkpoints: u64,
    /// Failed writes, encodings or witness posts since the daemon started (each is logged).
    pub errors: u64,
    /// Events not in the log because the store refused the write (busy, disk full).
    #[serde(default)]
    pub unwritten: u64,
    /// Records (findings, decisions, holds) waiting in memory for the store to take writes
    /// again; written first when it does.
    #[serde(default)]
    pub pending: u64,
}

/// The gate: events stopped at their hook until the policy decided them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GateStatus {
    /// Gated events answered since the daemon started.
    pub gated: u64,
    /// Gated processes that got no answer in time and became holds.
    pub unanswered: u64,
    /// Sessions held because a record of theirs was lost (the ring was full) or a new process
    /// of theirs could not be watched.
    #[serde(default)]
    pub lost_holds: u64,
    /// Kernel stop to answer.
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    /// Entries in the kernel's gate maps (names, path prefixes, path tails) and the kinds
    /// gated whatever they name.
    pub entries: usize,
    pub every: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProgramStat {
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HoldsStatus {
    pub enabled: bool,
    pub pending: usize,
    /// Holds opened since the daemon started.
    pub opened: u64,
    pub kill_switch: KillSwitchState,
    /// Kernel event to "whole session frozen".
    pub freeze_us_p50: u64,
    pub freeze_us_p99: u64,
    /// Protected files whose opens wait for a verdict (found at start or created since).
    #[serde(default)]
    pub protected_files: u64,
    /// Existing files whose change is the harm (persistence files the gated rules name for
    /// writing): an open of one for writing waits for a verdict, before the file changes.
    #[serde(default)]
    pub guarded_files: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub version: String,
    pub rules: usize,
    /// Where the rules come from (`<shipped pack>` or a path).
    pub source: String,
    pub findings: u64,
    pub reloads: u64,
    pub reload_errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Entries in the kernel's fast-path maps: exec paths, open paths, denied networks.
    pub kernel_exec: usize,
    pub kernel_open: usize,
    pub kernel_deny: usize,
}

/// A line that says the stream skipped events (slow client), sent in place of them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Skipped {
    pub skipped: u64,
}
