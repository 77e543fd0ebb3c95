//! The daemon's configuration file (TOML). Embedded defaults make `watcher run` work with no file.
use std::path::{Path, PathBuf};

use serde::Deserialize;
use watcher_common::AGENT_NAME_MAX;

pub const DEFAULT_CONFIG: &str = include_str!("../default-config.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: Daemon,
    #[serde(default)]
    pub agents: Vec<Agent>,
    #[serde(default)]
    pub rules: Rules,
    #[serde(default)]
    pub holds: Holds,
    #[serde(default)]
    pub api: Api,
    #[serde(default)]
    pub baseline: Baseline,
    #[serde(default)]
    pub audit: Audit,
    #[serde(default)]
    pub metrics: Metrics,
    /// Per profile: detector thresholds and the default task scope of its sessions.
    #[serde(default)]
    pub profiles: std::collections::BTreeMap<String, ProfileConfig>,
    /// The file this configuration came from (None: the embedded defaults).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// HTTP on a unix socket; callers are identified by their kernel credentials (root or the
    /// approver group). Unset: no unix-socket API.
    pub socket: Option<PathBuf>,
    /// HTTP on a loopback address (e.g. `127.0.0.1:7380`) with a bearer token, for
    /// Alertmanager and chat bots. Unset: not served.
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token (made when missing; mode 0640, group `approver_group`).
    pub token_file: PathBuf,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            socket: Some(PathBuf::from("/run/watcher/api.sock")),
            listen: None,
            token_file: PathBuf::from("/var/lib/watcher/api.token"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Holds {
    /// Carry out `hold` (freeze and ask) and `kill` decisions. Off: they are recorded as what
    /// would have been done (`outcome: not_enforced`).
    pub enabled: bool,
    /// The SQLite file with holds, decisions, exceptions and the kill-switch state.
    pub store: PathBuf,
    /// No answer within this time means deny (e.g. `10m`, `30s`).
    #[serde(deserialize_with = "duration")]
    pub timeout: std::time::Duration,
    /// What deny stops: `session` (every process, `cgroup.kill`) or `process` (the trigger).
    pub deny: crate::model::hold::DenyScope,
    /// Decided holds are deleted from the store this long after their decision (e.g. `30d`);
    /// pending holds are never deleted.
    #[serde(deserialize_with = "duration")]
    pub retention: std::time::Duration,
    /// The directory under the cgroup v2 root that holds the cgroup of each session nothing
    /// else owns (a session started in another cgroup gets its own inside that one).
    pub cgroup: String,
    /// Processes (and threads) a session may have at once (`pids.max`); 0: no limit. Where
    /// the host's pids controller is on a cgroup v1 hierarchy, each session also gets a v1
    /// cgroup of this name there.
    pub pids_max: u64,
    /// Files whose open by a watched process waits for a verdict (fanotify). `~/` means every
    /// home; `*` may appear in the last component. Files must exist when the daemon starts.
    pub protected: Vec<String>,
    /// What tampering with the watcher does to the offending session: `freeze` (kill-switch),
    /// `kill` (kill-switch) or `alert`.
    pub tamper: crate::model::hold::TamperAction,
    /// A URL that gets a POST for every new hold.
    pub webhook: Option<String>,
    /// `json` (the hold record, generic) or `slack` (a Slack-compatible `{"text": ...}`).
    pub webhook_format: WebhookFormat,
}

/// `/metrics` for Prometheus (`frontends::metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `host:port` to serve `/metrics` on; `""` turns it off. No authentication: keep it on
    /// loopback (or behind the node's firewall) and let Prometheus scrape it there.
    pub listen: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: "127.0.0.1:9740".into(),
        }
    }
}

/// The append-only, signed audit log (`pipeline::audit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    pub enabled: bool,
    /// The SQLite file of the log (table `audit`).
    pub store: PathBuf,
    /// The Ed25519 signing key of the checkpoints, created at first start (mode 0600); the
    /// verifier key is written beside it as `<key>.pub`.
    pub key: PathBuf,
    /// A file outside the store that every checkpoint is appended to (JSON lines).
    pub witness: Option<PathBuf>,
    /// A URL every checkpoint is POSTed to (`{"size": N, "note": "..."}`), off the writer.
    pub witness_url: Option<String>,
    /// A checkpoint is written at least this often while records come (and before every
    /// decision takes effect).
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: std::time::Duration,
    /// Events waiting for the writer at most; beyond, events (never decisions) are dropped and
    /// counted.
    pub ring_events: usize,
    /// A continuous OCSF export of every record: `"stdout"`, or a file (rotated by size).
    pub export: Option<String>,
    /// The export file is rotated to `.1` .. `.N` when it reaches this size.
    pub export_max_bytes: u64,
    /// Rotated export files kept.
    pub export_keep: u32,
    /// Records older than this are pruned, in whole checkpoint ranges (e.g. `90d`); unset:
    /// kept for ever.
    #[serde(deserialize_with = "opt_duration")]
    pub retain: Option<std::time::Duration>,
    /// The oldest checkpoint ranges are pruned while the records take more than this (bytes;
    /// 4 GiB by default, about 13 million events); 0: no limit.
    pub max_bytes: Option<u64>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            enabled: true,
            store: PathBuf::from("/var/lib/watcher/audit.db"),
            key: PathBuf::from("/var/lib/watcher/audit.key"),
            witness: Some(PathBuf::from("/var/log/watcher/witness.jsonl")),
            witness_url: None,
            checkpoint_interval: std::time::Duration::from_secs(1),
            ring_events: 262_144,
            export: None,
            export_max_bytes: 100 << 20,
            export_keep: 5,
            retain: None,
            max_bytes: Some(4 << 30),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

impl Default for Holds {
    fn default() -> Self {
        Holds {
            enabled: true,
            store: PathBuf::from("/var/lib/watcher/watcher.db"),
            timeout: std::time::Duration::from_secs(600),
            deny: crate::model::hold::DenyScope::Session,
            retention: std::time::Duration::from_secs(30 * 24 * 3600),
            cgroup: "watcher".into(),
            pids_max: 4096,
            protected: [
                "~/.ssh/id_*",
                "~/.aws/credentials",
                "~/.kube/config",
                "~/.netrc",
                "~/.git-credentials",
                "~/.docker/config.json",
            ]
            .map(String::from)
            .to_vec(),
            tamper: crate::model::hold::TamperAction::Freeze,
            webhook: None,
            webhook_format: WebhookFormat::Json,
        }
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("invalid duration {s:?}: {e} (expected e.g. `10m`)"))
    })
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    duration(d).map(Some)
}

/// The baseline detector's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Baseline {
    /// A finding scored at least this (0..1) alerts.
    pub alert_at: f32,
    /// A finding scored at least this holds (in enforce mode; `would_hold` in shadow).
    pub hold_at: f32,
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline {
            alert_at: 0.3,
            hold_at: 0.6,
        }
    }
}

/// `[profiles.NAME]`: one kind of agent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub alert_at: Option<f32>,
    pub hold_at: Option<f32>,
    /// The scope a session of this profile gets when `launch` pins one (`--workdir`, ...):
    /// these lists come first, the scope file and the command line add to them.
    #[serde(default)]
    pub allow_write: Vec<String>,
    pub allow_read: Option<Vec<String>>,
    pub allow_host: Option<Vec<String>>,
    pub allow_exec: Option<Vec<String>>,
}

impl ProfileConfig {
    pub fn scope(&self) -> crate::model::scope::Scope {
        crate::model::scope::Scope {
            allow_write: self.allow_write.clone(),
            allow_read: self.allow_read.clone(),
            allow_host: self.allow_host.clone(),
            allow_exec: self.allow_exec.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// A rule file or a directory of `*.yaml` files; the shipped pack when unset.
    pub path: Option<PathBuf>,
    /// Reload when a file under `path` changes (SIGHUP and `watcher rules reload` always work).
    pub watch: bool,
    /// Findings kept for `watcher findings` (without --follow).
    pub recent_findings: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            path: None,
            watch: true,
            recent_findings: 10000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// Control socket (mode 0660, owned by root and `approver_group`).
    pub socket: PathBuf,
    /// A group whose members may use the control socket besides root.
    pub approver_group: Option<String>,
    /// Kernel ring buffer size, a power of two and a multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// Most processes watched at once (kernel map size).
    pub max_watched_processes: u32,
    /// Events kept for `watcher events` without `--follow`.
    pub recent_events: usize,
    /// While records keep coming, the intake reader wakes at most once per this interval and
    /// takes what has arrived as one batch: a wake-up per record would cost more CPU than the
    /// record. A hold the kernel decided is frozen at once regardless (it has a thread of its
    /// own). `0s`: wake per record.
    #[serde(deserialize_with = "duration")]
    pub batch_wait: std::time::Duration,
    /// What a clean stop (SIGTERM: `systemctl stop`, `restart`, an upgrade) does to the
    /// sessions still running, whose programs it detaches. Recorded in the audit log either way.
    pub on_stop: OnStop,
    /// A directory on a bpf file system where the programs' links and the maps are pinned, so
    /// enforcement outlives the daemon (a crash, a restart, an upgrade): gated processes stay
    /// stopped and their records wait for the next daemon. `""` pins nothing: the programs
    /// detach when the daemon exits.
    pub bpffs: PathBuf,
}

/// `[daemon] on_stop`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// Frozen until the next daemon watches them again and thaws them: nothing a session
    /// does goes unseen (fail closed; with no daemon they stay frozen).
    #[default]
    Freeze,
    /// They go on, unobserved and ungated, until a daemon adopts them.
    Run,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            socket: PathBuf::from("/run/watcher/control.sock"),
            approver_group: None,
            ring_buffer_bytes: 16 * 1024 * 1024,
            max_watched_processes: 65536,
            recent_events: 10000,
            batch_wait: std::time::Duration::from_millis(1),
            on_stop: OnStop::Freeze,
            bpffs: PathBuf::from("/sys/fs/bpf/watcher"),
        }
    }
}

/// An agent matcher: an exec whose executable basename matches starts a session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub profile: String,
    /// `NAME` or `*/NAME`: matched in the kernel against the executable's basename.
    #[serde(rename = "match")]
    pub matches: Vec<String>,
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let mut cfg = Self::parse(&text, p)?;
                cfg.source = Some(p.to_path_buf());
                Ok(cfg)
            }
            None => Self::parse(DEFAULT_CONFIG, Path::new("<embedded default config>")),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        let rb = self.daemon.ring_buffer_bytes;
        if !rb.is_power_of_two() || rb < 4096 {
            return Err(invalid(
                "daemon.ring_buffer_bytes".into(),
                format!("{rb} is not a power of two of at least 4096"),
            ));
        }
        if self.daemon.max_watched_processes == 0 {
            return Err(invalid(
                "daemon.max_watched_processes".into(),
                "must be at least 1".into(),
            ));
        }
        if let Some(l) = &self.api.listen {
            if !l.ip().is_loopback() {
                return Err(invalid(
                    "api.listen".into(),
                    format!("{l}: only a loopback address (the API is for this host)"),
                ));
            }
        }
        if let Some(w) = &self.holds.webhook {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                return Err(invalid(
                    "holds.webhook".into(),
                    format!("{w:?}: expected an http:// or https:// URL"),
                ));
            }
        }
        let cg = &self.holds.cgroup;
        if cg.is_empty() || cg.contains('/') || cg == "." || cg == ".." {
            return Err(invalid(
                "holds.cgroup".into(),
                format!("{cg:?}: expected one directory name"),
            ));
        }
        let unit = |field: String, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(invalid(field, format!("{v} is not between 0 and 1")))
            }
        };
        unit("baseline.alert_at".into(), self.baseline.alert_at)?;
        unit("baseline.hold_at".into(), self.baseline.hold_at)?;
        for (name, p) in &self.profiles {
            crate::model::baseline::valid_profile_name(name)
                .map_err(|m| invalid(format!("profiles.{name}"), m))?;
            if let Some(v) = p.alert_at {
                unit(format!("profiles.{name}.alert_at"), v)?;
            }
            if let Some(v) = p.hold_at {
                unit(format!("profiles.{name}.hold_at"), v)?;
            }
        }
        for (i, agent) in self.agents.iter().enumerate() {
            if agent.profile.is_empty() {
                return Err(invalid(format!("agents[{i}].profile"), "is empty".into()));
            }
            for (j, m) in agent.matches.iter().enumerate() {
                matcher_basename(m)
                    .map_err(|msg| invalid(format!("agents[{i}].match[{j}]"), msg))?;
            }
        }
        Ok(())
    }

    /// (basename, profile index + 1) for the kernel's `AGENTS` map.
    pub fn agent_names(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for (i, agent) in self.agents.iter().enumerate() {
            for m in &agent.matches {
                if let Ok(name) = matcher_basename(m) {
                    out.push((name.to_string(), i as u32 + 1));
                }
            }
        }
        out
    }
}

/// The kernel matches basenames exactly, so only `NAME` and `*/NAME` are accepted.
pub fn matcher_basename(m: &str) -> Result<&str, String> {
    let name = m.strip_prefix("*/").unwrap_or(m);
    if name.is_empty() {
        return Err(format!("{m:?}: empty name"));
    }
    if name.contains(['/', '*', '?', '[', ']']) {
        return Err(format!(
            "{m:?}: expected NAME or */NAME (the executable's basename, matched exactly in the kernel)"
        ));
    }
    if name.len() > AGENT_NAME_MAX {
        return Err(format!(
            "{m:?}: names longer than {AGENT_NAME_MAX} bytes cannot be matched in the kernel"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let cfg = Config::load(None).unwrap();
        let names: Vec<_> = cfg.agent_names().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"claude".to_string()), "{names:?}");
        assert!(names.contains(&"aider".to_string()), "{names:?}");
    }

    #[test]
    fn unknown_field_names_file_and_line() {
        let err = Config::parse(
            "[daemon]\nsocket = \"/x\"\nbogus = 1\n",
            Path::new("w.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("w.toml: "), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn bad_matcher_is_rejected_with_field() {
        let err = Config::parse(
            "[[agents]]\nprofile = \"x\"\nmatch = [\"ok\", \"*/a*b\"]\n",
            Path::new("w.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("agents[0].match[1]"), "{err}");
    }

    #[test]
    fn ring_buffer_must_be_power_of_two() {
        let err = Config::parse("[daemon]\nring_buffer_bytes = 5000\n", Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.ring_buffer_bytes"), "{err}");
    }
}
