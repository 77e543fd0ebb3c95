//! Learned profiles as users see them: `watcher baseline show|export|import|diff|report`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a profile does with its sessions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProfileMode {
    /// Every session teaches the profile; nothing is flagged.
    #[default]
    Learn,
    /// Nothing is learned; what enforce would hold is recorded as `would_hold`, nothing stops.
    Shadow,
    /// Nothing is learned; findings alert or hold by their score.
    Enforce,
}

impl ProfileMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileMode::Learn => "learn",
            ProfileMode::Shadow => "shadow",
            ProfileMode::Enforce => "enforce",
        }
    }
}

impl std::str::FromStr for ProfileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "learn" => Ok(ProfileMode::Learn),
            "shadow" => Ok(ProfileMode::Shadow),
            "enforce" => Ok(ProfileMode::Enforce),
            _ => Err(format!("{s:?}: expected learn, shadow or enforce")),
        }
    }
}

/// One thing a profile learned (an executable, a file area for an intent, a destination, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub facet: String,
    pub value: String,
    /// Sessions that did it.
    pub sessions: u64,
    /// Times it was seen, over all of them.
    pub events: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// Executables: the content's SHA-256 when learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Events per minute of one kind, as learned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub kind: String,
    /// Session-minutes learned from.
    pub minutes: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// The distribution: (events in a minute, how many minutes), for import.
    #[serde(default)]
    pub histogram: Vec<(u64, u64)>,
}

/// A whole profile, as exported (reviewable YAML) and imported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileExport {
    pub profile: String,
    pub mode: ProfileMode,
    pub sessions: u64,
    pub events: u64,
    #[serde(default)]
    pub first_seen: Option<String>,
    #[serde(default)]
    pub last_seen: Option<String>,
    /// New entries each of the last sessions taught, oldest first.
    #[serde(default)]
    pub learned_per_session: Vec<u64>,
    /// Of those, the entries that would have held had the profile been enforced.
    #[serde(default)]
    pub holding_per_session: Vec<u64>,
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub rates: Vec<Rate>,
}

/// A profile in brief (`baseline show`, `status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProfileSummary {
    pub profile: String,
    pub mode: ProfileMode,
    pub sessions: u64,
    pub events: u64,
    pub entries: u64,
    pub per_facet: BTreeMap<String, u64>,
    /// Mean new entries per session over the last sessions learned.
    pub learning: f64,
    /// Learned from enough sessions, they hardly teach it anything new any more, and none of
    /// the last ones taught it anything that would have held.
    pub stable: bool,
    pub alert_at: f32,
    pub hold_at: f32,
    /// What enforce would have held while in shadow (`baseline report`).
    pub would_hold: u64,
}

/// Something a session did that its profile had not seen (`baseline diff`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Novelty {
    pub facet: String,
    pub value: String,
    /// Times the session did it.
    pub events: u64,
    /// The score it got (0 in learn mode, where nothing is scored).
    pub score: f32,
}

/// What enforce would have held, recorded in shadow mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WouldHold {
    pub at: String,
    pub trace_id: String,
    pub rule: String,
    pub facet: String,
    pub value: String,
    pub score: f32,
    pub description: String,
}

/// A profile name: it becomes a key in the store and a label, never a path.
pub fn valid_profile_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{name:?}: a profile name has 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || name.starts_with('.')
    {
        return Err(format!(
            "{name:?}: a profile name has only letters, digits, `-`, `_` and `.`, and does not start with `.`"
        ));
    }
    Ok(())
}
