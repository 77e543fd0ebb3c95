//! The daemon's modules are layers along the path of an event, and every import points down:
//! a module may use the layers before it in `LAYERS`, never one after it. This reads every
//! source file under `watcher/src` and fails on any `crate::` path that points up.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Bottom first.
const LAYERS: &[&str] = &[
    "model",
    "config",
    "sys",
    "kernel",
    "rules",
    "pipeline",
    "enforce",
    "state",
    "frontends",
    "daemon",
];

/// The source without comments and string literals (a path in a doc comment or a message is
/// not an import).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"' or '\n'); lifetimes ('a) are left alone.
            let close = src[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            i = close;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The top-level modules a file's code names through `crate::`: `crate::a::b`, and each
/// first name in a `use crate::{a::x, b}` group.
fn crate_imports(src: &str) -> BTreeSet<String> {
    let code = code_only(src);
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        // `watcher_crate::` or `mycrate::` are other names.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[j..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_alphanumeric() || c == '_') => {
                        let name: String = group[j..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// (file's layer, imported layer, file) for every import that points up or sideways out of
/// the layer list.
fn violations(src_dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    files.sort();
    let layer = |name: &str| LAYERS.iter().position(|l| *l == name);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src_dir).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        // The crate root declares the layers; the binary is above them all.
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = layer(&top) else {
            bad.push(format!("{}: module {top:?} is in no layer", rel.display()));
            continue;
        };
        for m in crate_imports(&std::fs::read_to_string(&f).unwrap()) {
            match layer(&m) {
                Some(l) if l <= own => {}
                Some(_) => bad.push(format!(
                    "{}: {top} (layer {own}) imports {m}, a layer above it",
                    rel.display()
                )),
                None => bad.push(format!(
                    "{}: imports crate::{m}, which is in no layer",
                    rel.display()
                )),
            }
        }
    }
    bad
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "imports that point up:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_upward_imports_in_every_form() {
    let dir = std::env::temp_dir().join(format!("watcher-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipeline")).unwrap();
    std::fs::create_dir_all(dir.join("model")).unwrap();
    std::fs::write(
        dir.join("model/ok.rs"),
        "// crate::daemon in a comment\nfn f() { let s = \"crate::daemon\"; }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("pipeline/a.rs"),
        "use crate::{model::x, enforce::{y, z}};\nfn g() { crate::state::h(); }\nuse super::b;\n",
    )
    .unwrap();
    std::fs::write(dir.join("widgets.rs"), "").unwrap();
    let bad = violations(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(
        bad.iter().any(|b| b.contains("imports enforce")),
        "{bad:#?}"
    );
    assert!(bad.iter().any(|b| b.contains("imports state")), "{bad:#?}");
    assert!(
        bad.iter().any(|b| b.contains("\"widgets\" is in no layer")),
        "{bad:#?}"
    );
}
