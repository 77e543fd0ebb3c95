//! Detection rules: the YAML language (`syntax`), compiled into a `Policy` (`compile`) that
//! matches events and sequences of events (`eval`); the rule examples (`examples`); and the
//! subset the kernel can enforce alone (`kernel`). See `rules/README.md` for the language.
pub mod bench;
pub mod compile;
pub mod eval;
pub mod examples;
pub mod kernel;
pub mod pack;
pub mod syntax;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use self::eval::{Lineage, Match, Policy, ProcView, SeqState};

/// One rule file: its name (for errors) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// A rule file that cannot be used, with where and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}:{column}: {message}")]
pub struct RuleError {
    pub file: String,
    /// 1-based; 0 when the place is unknown.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl RuleError {
    fn io(path: &Path, e: std::io::Error) -> RuleError {
        RuleError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }
    }
}

/// The rule files of a path: a file, or every `*.yaml`/`*.yml` in a directory (sorted).
pub fn read_sources(path: &Path) -> Result<Vec<Source>, RuleError> {
    let mut files = Vec::new();
    if path.is_dir() {
        let rd = std::fs::read_dir(path).map_err(|e| RuleError::io(path, e))?;
        for entry in rd {
            let p = entry.map_err(|e| RuleError::io(path, e))?.path();
            if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) && p.is_file()
            {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| RuleError::io(&p, e))?;
            Ok(Source {
                name: p.display().to_string(),
                text,
            })
        })
        .collect()
}

/// The policy version: a hash of every file's name and content, so any edit changes it.
pub fn version_of(sources: &[Source]) -> String {
    let mut h = Sha256::new();
    for s in sources {
        let base = Path::new(&s.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        h.update((base.len() as u64).to_le_bytes());
        h.update(base.as_bytes());
        h.update((s.text.len() as u64).to_le_bytes());
        h.update(s.text.as_bytes());
    }
    let d = h.finalize();
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Loads the policy from `path`, or the shipped pack when `path` is None.
pub fn load(path: Option<&Path>) -> Result<(Policy, Vec<Source>), RuleError> {
    let sources = match path {
        Some(p) => read_sources(p)?,
        None => pack::sources(),
    };
    let policy = compile::compile(&sources, &compile::homes())?;
    Ok((policy, sources))
}
