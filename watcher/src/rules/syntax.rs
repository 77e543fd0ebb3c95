//! The rule files as written (YAML). Values that can be checked alone (globs, regexes, CIDRs,
//! ports) are checked while parsing, so their errors carry the file's line and column.
use std::collections::BTreeMap;

use serde::{de::Error as _, Deserialize, Deserializer};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Named lists, referenced as `$name` inside any pattern list.
    #[serde(default)]
    pub lists: BTreeMap<String, Vec<Item>>,
    /// Named conditions, included with `macro: name`.
    #[serde(default)]
    pub macros: BTreeMap<String, CondDef>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    #[serde(default)]
    pub tags: Vec<String>,
    pub action: Action,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub condition: Option<CondDef>,
    #[serde(default)]
    pub sequence: Option<SequenceDef>,
    /// The condition must hold this many times within a window before the rule matches
    /// (a burst of deletes); the finding carries the first and the last events.
    #[serde(default)]
    pub count: Option<CountDef>,
    #[serde(default)]
    pub examples: Examples,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountDef {
    /// How many matching events (at least 2).
    pub at_least: u32,
    #[serde(deserialize_with = "duration")]
    pub within: std::time::Duration,
    /// Counted per session (default) or per process.
    #[serde(default)]
    pub by: SequenceScope,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    /// Each item is one event, or a list of events (a stream) for sequences.
    #[serde(rename = "match", default)]
    pub matches: Vec<serde_json::Value>,
    #[serde(default)]
    pub no_match: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceDef {
    /// The whole sequence must happen within this time of its first step (e.g. `30s`).
    #[serde(deserialize_with = "duration")]
    pub within: std::time::Duration,
    /// Steps must come from the same session (default) or the same process.
    #[serde(default)]
    pub by: SequenceScope,
    /// `any`: two steps that may happen in either order (the two ends of a pipe).
    #[serde(default)]
    pub order: Order,
    pub steps: Vec<StepDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    #[serde(flatten)]
    pub condition: CondDef,
    /// `this_field: previous_step_field`: values that must be equal.
    #[serde(default)]
    pub same: BTreeMap<Field, Field>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SequenceScope {
    #[default]
    Session,
    Process,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Given,
    Any,
}

/// Event fields a sequence step can compare with the previous step.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    Pid,
    Ppid,
    /// Open path, exec path or unix socket path.
    Path,
    /// The process's executable.
    Exe,
    Addr,
    Port,
    Comm,
}

pub use crate::model::event::{Action, Mode, Severity};

/// A condition: every key present must hold (keys are ANDed).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct CondDef {
    #[serde(rename = "type", default)]
    pub kind: Option<OneOrMany<Kind>>,
    /// The process's executable (for `exec`: the new one). A pattern without `/` matches
    /// the basename.
    #[serde(default)]
    pub exe: Option<OneOrMany<Item>>,
    #[serde(default)]
    pub comm: Option<OneOrMany<Item>>,
    /// Glob on the whole command line (arguments joined by single spaces).
    #[serde(default)]
    pub cmdline: Option<OneOrMany<Item>>,
    /// Regex on the whole command line.
    #[serde(default)]
    pub cmdline_regex: Option<OneOrMany<Regex>>,
    /// Glob that must match at least one argument (argv[1..]).
    #[serde(default)]
    pub arg: Option<OneOrMany<Item>>,
    /// The path the event is about (absolute): opened, removed, renamed from, changed (chmod,
    /// chown, truncate), the new name of a link, a mount point, a module file. `~/` means
    /// every user's home.
    #[serde(default)]
    pub path: Option<OneOrMany<Item>>,
    /// Connect: the name the session resolved the destination from; dns: the name asked
    /// (glob; `*` crosses dots: `*.github.com`).
    #[serde(default)]
    pub host: Option<OneOrMany<Item>>,
    /// Rename: the new name (glob).
    #[serde(default)]
    pub new_path: Option<OneOrMany<Item>>,
    /// Link: what the new name points to (glob; a symlink's text as written).
    #[serde(default)]
    pub target: Option<OneOrMany<Item>>,
    /// Whether the event's path lies inside the session's work directory (where it started).
    #[serde(default)]
    pub in_workdir: Option<bool>,
    /// Chmod: mode bits that must all be set in the new mode, in octal (`"4000"`: setuid) or
    /// as a number; a list matches any of its masks.
    #[serde(default)]
    pub mode: Option<OneOrMany<ModeBits>>,
    /// Chown: the new owner or group; setid: the new effective uid or gid.
    #[serde(default)]
    pub to_uid: Option<OneOrMany<u32>>,
    #[serde(default)]
    pub to_gid: Option<OneOrMany<u32>>,
    #[serde(default)]
    pub intent: Option<OneOrMany<Intent>>,
    /// Whether the call succeeded.
    #[serde(default)]
    pub ok: Option<bool>,
    /// Exec: whether the program is no file on disk (a memfd, or deleted).
    #[serde(default)]
    pub fileless: Option<bool>,
    /// Connect destination address (CIDR or address).
    #[serde(default)]
    pub addr: Option<OneOrMany<Item>>,
    #[serde(default)]
    pub port: Option<OneOrMany<Item>>,
    /// Connect destination unix socket path (glob).
    #[serde(default)]
    pub unix: Option<OneOrMany<Item>>,
    #[serde(default)]
    pub family: Option<OneOrMany<Family>>,
    /// The session profile (glob).
    #[serde(default)]
    pub profile: Option<OneOrMany<Item>>,
    /// io_uring_op: the operation, by the kernel's name (`openat`, `connect`, `send`, ...).
    #[serde(default)]
    pub op: Option<OneOrMany<Item>>,
    /// The parent process must match this condition.
    #[serde(default)]
    pub parent: Option<Box<CondDef>>,
    /// Some ancestor (parent, grandparent, ...) must match this condition.
    #[serde(default)]
    pub ancestor: Option<Box<CondDef>>,
    #[serde(default)]
    pub any: Option<Vec<CondDef>>,
    #[serde(default)]
    pub all: Option<Vec<CondDef>>,
    #[serde(default)]
    pub not: Option<Box<CondDef>>,
    #[serde(rename = "macro", default)]
    pub macros: Option<OneOrMany<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Exec,
    Fork,
    Exit,
    Open,
    Connect,
    Signal,
    Ptrace,
    Unlink,
    Rename,
    Chmod,
    Chown,
    Link,
    Truncate,
    Setid,
    Mount,
    Module,
    Bpf,
    Memfd,
    Dns,
    #[serde(rename = "io_uring")]
    IoUring,
    #[serde(rename = "io_uring_op")]
    IoUringOp,
    #[serde(rename = "name_to_handle")]
    NameToHandle,
}

/// The number of `Kind`s (one bit each in a kind mask).
pub const KINDS: usize = 22;

/// Mode bits for `mode:`: an octal string (`"4000"`, `"0o6000"`) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeBits(pub u32);

impl<'de> Deserialize<'de> for ModeBits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u32),
        }
        let bits = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => {
                let digits = s.trim().trim_start_matches("0o");
                u32::from_str_radix(digits, 8).map_err(|_| {
                    D::Error::custom(format!(
                        "invalid mode {s:?} (expected octal bits such as \"4000\" or \"2000\")"
                    ))
                })?
            }
        };
        if bits == 0 || bits > 0o7777 {
            return Err(D::Error::custom(format!(
                "invalid mode {bits:o}: expected bits within 7777, not 0"
            )));
        }
        Ok(ModeBits(bits))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    Read,
    Write,
    Create,
    Truncate,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Inet6,
    Unix,
}

/// One value or a list. (Not `#[serde(untagged)]`: that would replace the value's own error,
/// e.g. "unknown variant `opne`", with "did not match any variant".)
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{value, IntoDeserializer, SeqAccess, Visitor};
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(value::SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(t) => std::slice::from_ref(t),
            OneOrMany::Many(v) => v,
        }
    }
}

/// One entry of a pattern list: a value, or `$name` for a named list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Value(String),
    List(String),
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u64),
        }
        let s = match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::N(n) => n.to_string(),
        };
        if let Some(name) = s.strip_prefix('$') {
            if name.is_empty() {
                return Err(D::Error::custom("`$` must be followed by a list name"));
            }
            return Ok(Item::List(name.to_string()));
        }
        Ok(Item::Value(s))
    }
}

/// A regex, compiled while parsing so a bad one is reported at its line.
#[derive(Debug, Clone)]
pub struct Regex(pub String);

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s).map_err(|e| D::Error::custom(format!("invalid regex: {e}")))?;
        Ok(Regex(s))
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        D::Error::custom(format!(
            "invalid duration {s:?}: {e} (expected e.g. `30s` or `5m`)"
        ))
    })
}
