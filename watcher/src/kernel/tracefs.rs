//! Tracepoint record layouts, read from tracefs `format` files at start-up.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no field `{field}`")]
    MissingField { path: PathBuf, field: String },
    #[error("{path}: field `{field}` has size {found}, expected {expected}")]
    Size {
        path: PathBuf,
        field: String,
        found: u32,
        expected: u32,
    },
}

/// Candidate tracefs mount points, most common first.
pub const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

pub fn find_tracefs() -> Option<PathBuf> {
    TRACEFS_ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events/sched/sched_process_exec/format").exists())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint.
#[derive(Debug)]
pub struct Format {
    path: PathBuf,
    fields: HashMap<String, Field>,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Format, FormatError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| FormatError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Format::parse(path, &text))
    }

    pub fn parse(path: PathBuf, text: &str) -> Format {
        let mut fields = HashMap::new();
        for line in text.lines() {
            // field:const char * filename;	offset:16;	size:8;	signed:0;
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.trim().split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.parse().ok();
                }
            }
            if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) {
                // The name is the last word, without any array suffix.
                let name = decl
                    .split_whitespace()
                    .last()
                    .unwrap_or("")
                    .split('[')
                    .next()
                    .unwrap_or("");
                fields.insert(name.to_string(), Field { offset, size });
            }
        }
        Format { path, fields }
    }

    /// Offset of `field`, checking its size (0: any size).
    pub fn offset(&self, field: &str, size: u32) -> Result<u32, FormatError> {
        let f = self
            .fields
            .get(field)
            .ok_or_else(|| FormatError::MissingField {
                path: self.path.clone(),
                field: field.to_string(),
            })?;
        if size != 0 && f.size != size {
            return Err(FormatError::Size {
                path: self.path.clone(),
                field: field.to_string(),
                found: f.size,
                expected: size,
            });
        }
        Ok(f.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXEC: &str = "name: sched_process_exec\nID: 300\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:char comm[16];\toffset:24;\tsize:16;\tsigned:0;\n";

    #[test]
    fn parses_offsets_and_checks_sizes() {
        let f = Format::parse(PathBuf::from("x/format"), EXEC);
        assert_eq!(f.offset("filename", 4).unwrap(), 8);
        assert_eq!(f.offset("pid", 4).unwrap(), 12);
        assert_eq!(f.offset("comm", 16).unwrap(), 24);
        let err = f.offset("pid", 8).unwrap_err().to_string();
        assert!(err.contains("x/format") && err.contains("pid"), "{err}");
        assert!(f.offset("nope", 0).is_err());
    }
}
