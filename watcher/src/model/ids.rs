//! Ids that come from outside (the CLI, the control socket, the HTTP API, Alertmanager labels,
//! the store) and name a path or a kernel object. A trace id becomes a cgroup directory name, so
//! it is checked before anything else sees it: `../system.slice` must never reach a `join`.
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid trace id {0:?}: a trace id is exactly 32 lowercase hex digits")]
    Trace(String),
    #[error("invalid hold id {0:?}: a hold id is \"h-\" and 12 lowercase hex digits")]
    Hold(String),
}

/// How much of a refused id an error repeats: enough to recognise it, never a 10 MiB line.
const SHOWN: usize = 80;

fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A session's trace id: 128 random bits as 32 lowercase hex digits (the W3C trace-context
/// form). Only this form is ever accepted, so it is always a single, plain path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TraceId(String);

impl TraceId {
    pub const LEN: usize = 32;

    pub fn parse(s: &str) -> Result<TraceId, IdError> {
        Self::check(s).map(|()| TraceId(s.to_string()))
    }

    /// Whether `s` is a trace id, without making one (for paths checked on every use).
    pub fn check(s: &str) -> Result<(), IdError> {
        if is_lower_hex(s, Self::LEN) {
            Ok(())
        } else {
            Err(IdError::Trace(shown(s)))
        }
    }

    /// A new random trace id.
    pub fn random() -> TraceId {
        let mut b = [0u8; 16];
        fill_random(&mut b);
        TraceId(hex(&b))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TraceId {
    type Error = IdError;
    fn try_from(s: String) -> Result<TraceId, IdError> {
        TraceId::parse(&s)
    }
}

impl From<TraceId> for String {
    fn from(t: TraceId) -> String {
        t.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TraceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<TraceId, IdError> {
        TraceId::parse(s)
    }
}

impl AsRef<str> for TraceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A hold's id: `h-` and 48 random bits as 12 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HoldId(String);

impl HoldId {
    pub fn parse(s: &str) -> Result<HoldId, IdError> {
        match s.strip_prefix("h-") {
            Some(hex) if is_lower_hex(hex, 12) => Ok(HoldId(s.to_string())),
            _ => Err(IdError::Hold(shown(s))),
        }
    }

    pub fn random() -> HoldId {
        let mut b = [0u8; 6];
        fill_random(&mut b);
        HoldId(format!("h-{}", hex(&b)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HoldId {
    type Error = IdError;
    fn try_from(s: String) -> Result<HoldId, IdError> {
        HoldId::parse(&s)
    }
}

impl From<HoldId> for String {
    fn from(h: HoldId) -> String {
        h.0
    }
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HoldId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<HoldId, IdError> {
        HoldId::parse(s)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fills `buf` from the kernel's random source.
pub fn fill_random(buf: &mut [u8]) {
    // getrandom(2) blocks only before the pool is first initialised, which is long past by the
    // time a daemon runs; an error here means no random source at all, which nothing survives.
    getrandom::fill(buf).expect("the kernel's random source (getrandom) failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_exactly_32_lowercase_hex_digits() {
        let good = "0123456789abcdef0123456789abcdef";
        assert_eq!(TraceId::parse(good).unwrap().as_str(), good);
        for bad in [
            "",
            "../x",
            "../system.slice",
            "0123456789abcdef0123456789abcde",   // 31
            "0123456789abcdef0123456789abcdef0", // 33
            "0123456789ABCDEF0123456789ABCDEF",  // upper case
            "0123456789abcdef0123456789abcde/",
            "0123456789abcdef/../456789abcdef",
            "0123456789abcdef0123456789abcd\u{e9}",
            ".",
            "..",
        ] {
            let e = TraceId::parse(bad).unwrap_err();
            assert!(matches!(e, IdError::Trace(_)), "{bad:?}");
            assert!(e.to_string().contains("32 lowercase hex"), "{e}");
        }
    }

    #[test]
    fn serde_refuses_a_bad_trace_id() {
        let e = serde_json::from_str::<TraceId>("\"../x\"").unwrap_err();
        assert!(e.to_string().contains("invalid trace id"), "{e}");
        let t = TraceId::random();
        let back: TraceId = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn hold_ids_have_their_format() {
        let h = HoldId::random();
        assert_eq!(HoldId::parse(h.as_str()).unwrap(), h);
        for bad in [
            "",
            "h-",
            "h-0123456789a",
            "h-0123456789abc",
            "x-0123456789ab",
            "h-../../etc",
        ] {
            assert!(HoldId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_huge_id_is_not_repeated_whole() {
        let huge = "a".repeat(10 << 20);
        let e = TraceId::parse(&huge).unwrap_err().to_string();
        assert!(e.len() < 300, "{} bytes", e.len());
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(TraceId::random(), TraceId::random());
        TraceId::parse(TraceId::random().as_str()).unwrap();
    }
}
