//! Detection rules: the YAML language (`syntax`), compiled into a `Policy` (`compile`) that
//! matches events and sequences of events (`eval`); the rule examples (`examples`); and the
//! subset the kernel can enforce alone (`kernel`). See `rules/README.md` for the language.
pub mod bench;
pub mod compile;
pub mod eval;
pub mod examples;
pub mod gate;
pub mod kernel;
pub mod pack;
pub mod syntax;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use self::eval::{Lineage, Match, Policy, ProcView, SeqState, SessionView};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_one(text: &str) -> Result<Policy, RuleError> {
        let src = Source {
            name: "t.yaml".into(),
            text: text.into(),
        };
        compile::compile(&[src], &["/root".to_string(), "/home/*".to_string()])
    }

    const HEAD: &str =
        "rules:\n  - id: r\n    description: d\n    severity: low\n    action: alert\n";

    #[test]
    fn errors_name_file_line_column_and_what_was_expected() {
        let cases = [
            // Unclosed: the parser notices at the end of the input.
            ("rules:\n  - id: [x\n", 0, "t.yaml:"),
            (
                &format!("{HEAD}    colour: red\n"),
                6,
                "unknown field `colour`, expected one of",
            ),
            (
                &format!("{HEAD}    condition:\n      path: \"/a/[b\"\n"),
                7,
                "invalid glob \"/a/[b\"",
            ),
            (
                &format!("{HEAD}    condition:\n      addr: [10.0.0.0/33]\n"),
                7,
                "invalid address or CIDR",
            ),
            (
                &format!("{HEAD}    condition:\n      port: 70000\n"),
                7,
                "invalid port \"70000\"",
            ),
            (
                &format!("{HEAD}    condition:\n      cmdline_regex: \"(\"\n"),
                7,
                "invalid regex",
            ),
            (
                &format!("{HEAD}    condition:\n      exe: $nope\n"),
                7,
                "unknown list $nope",
            ),
            (
                &format!("{HEAD}    condition:\n      macro: nope\n"),
                7,
                "unknown macro \"nope\"",
            ),
            (
                &format!("{HEAD}    condition:\n      type: opne\n"),
                7,
                "unknown variant `opne`",
            ),
            (
                &format!("{HEAD}    condition:\n      type: open\n{}", &HEAD[7..]),
                8,
                "rule id \"r\" is used twice",
            ),
            (
                &format!("{HEAD}    sequence:\n      within: soon\n      steps: []\n"),
                7,
                "invalid duration \"soon\"",
            ),
            (HEAD, 2, "expected exactly one of `condition` or `sequence`"),
            (
                &format!("{HEAD}    condition:\n      type: chmod\n      mode: \"9\"\n"),
                8,
                "invalid mode \"9\"",
            ),
            (
                &format!("{HEAD}    condition:\n      type: chmod\n      mode: 0\n"),
                8,
                "expected bits within 7777, not 0",
            ),
            (
                &format!("{HEAD}    count: {{at_least: 1, within: 5s}}\n    condition:\n      type: unlink\n"),
                6,
                "count.at_least: 1 is outside 2..=10000",
            ),
            (
                &format!("{HEAD}    count: {{at_least: 5, within: 5s}}\n    sequence:\n      within: 5s\n      steps: [{{type: open}}, {{type: unlink}}]\n"),
                6,
                "count: applies to a `condition`",
            ),
        ];
        for (text, line, want) in cases {
            let e = compile_one(text).unwrap_err();
            assert_eq!(e.file, "t.yaml");
            if line == 0 {
                assert!(e.line > 0, "{e}");
            } else {
                assert_eq!(e.line, line, "{e}");
            }
            assert!(e.column > 0, "{e}");
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        }
    }

    #[test]
    fn counts_fire_once_per_burst_within_the_window_and_per_scope() {
        let p = compile_one(&format!(
            "{HEAD}    count: {{at_least: 3, within: 10s, by: process}}\n    condition:\n      type: unlink\n"
        ))
        .unwrap();
        let ev = |pid: u32, ts: &str| serde_json::json!({"type": "unlink", "path": "/x", "pid": pid, "ts": ts});
        let fired = |events: &[serde_json::Value]| {
            let mut lineage = examples::ExampleLineage::default();
            let mut state = SeqState::default();
            let mut out = Vec::new();
            for (i, v) in events.iter().enumerate() {
                let (e, ts) = examples::example_event(v, i as u64 + 1, &mut lineage).unwrap();
                p.evaluate(
                    &std::sync::Arc::new(e),
                    ts,
                    SessionView::default(),
                    &lineage,
                    &mut state,
                    &mut out,
                );
            }
            (
                out.len(),
                out.first().map_or(0, |m| m.evidence.len()),
                state.len(),
            )
        };
        let t = |s: u32| format!("2026-01-01T00:00:{s:02}Z");
        // Three in the window: one finding with the three as evidence, and the window starts
        // over (nothing held).
        assert_eq!(
            fired(&[ev(1, &t(0)), ev(1, &t(1)), ev(1, &t(2))]),
            (1, 3, 0)
        );
        // Six in a row: two findings, not four.
        let six: Vec<_> = (0..6).map(|i| ev(1, &t(i))).collect();
        assert_eq!(fired(&six).0, 2);
        // Spread over more than the window: none.
        assert_eq!(fired(&[ev(1, &t(0)), ev(1, &t(11)), ev(1, &t(22))]).0, 0);
        // Per process: three processes, one each, none.
        assert_eq!(fired(&[ev(1, &t(0)), ev(2, &t(1)), ev(3, &t(2))]).0, 0);
    }

    #[test]
    fn new_event_fields_match_as_written() {
        let p = compile_one(
            "rules:\n  - {id: suid, description: d, severity: low, action: alert, condition: {type: chmod, mode: \"4000\"}}\n  - {id: root, description: d, severity: low, action: alert, condition: {type: [chown, setid], to_uid: 0}}\n  - {id: out, description: d, severity: low, action: alert, condition: {type: unlink, in_workdir: false}}\n  - {id: null, description: d, severity: low, action: alert, condition: {type: link, target: /dev/null, path: \"**/.bash_history\"}}\n  - {id: moved, description: d, severity: low, action: alert, condition: {type: rename, new_path: \"/etc/**\"}}\n  - {id: gh, description: d, severity: low, action: alert, condition: {type: [connect, dns], host: \"*.github.com\"}}\n",
        )
        .unwrap();
        let check = |v: serde_json::Value, want: &[&str]| {
            let got = examples::fired(&p, &v).unwrap();
            assert_eq!(got, want, "{v}");
        };
        check(
            serde_json::json!({"type": "chmod", "path": "/t/x", "mode": 0o4755}),
            &["suid"],
        );
        check(
            serde_json::json!({"type": "chmod", "path": "/t/x", "mode": 0o2755}),
            &[],
        );
        check(
            serde_json::json!({"type": "chown", "path": "/t/x", "to_uid": 0}),
            &["root"],
        );
        check(
            serde_json::json!({"type": "chown", "path": "/t/x", "to_gid": 0}),
            &[],
        );
        check(
            serde_json::json!({"type": "setid", "new": {"euid": 0}}),
            &["root"],
        );
        check(
            serde_json::json!({"type": "unlink", "path": "/w/a", "workdir": "/w"}),
            &[],
        );
        check(
            serde_json::json!({"type": "unlink", "path": "/wx/a", "workdir": "/w"}),
            &["out"],
        );
        check(
            serde_json::json!({"type": "unlink", "path": "/w", "workdir": "/w/"}),
            &[],
        );
        check(
            serde_json::json!({"type": "link", "path": "/h/.bash_history", "target": "/dev/null"}),
            &["null"],
        );
        check(
            serde_json::json!({"type": "link", "path": "/h/.bash_history", "target": "/tmp/x"}),
            &[],
        );
        check(
            serde_json::json!({"type": "rename", "path": "/tmp/x", "new_path": "/etc/cron.d/x"}),
            &["moved"],
        );
        check(
            serde_json::json!({"type": "rename", "path": "/etc/cron.d/x", "new_path": "/tmp/x"}),
            &[],
        );
        check(
            serde_json::json!({"type": "connect", "addr": "140.82.112.3", "port": 443, "host": "api.github.com"}),
            &["gh"],
        );
        check(
            serde_json::json!({"type": "connect", "addr": "140.82.112.3", "port": 443}),
            &[],
        );
        check(
            serde_json::json!({"type": "connect", "addr": "1.2.3.4", "port": 443, "host": "github.com.evil.example"}),
            &[],
        );
        check(
            serde_json::json!({"type": "dns", "query": "codeload.github.com", "answers": ["140.82.112.9"]}),
            &["gh"],
        );
    }

    #[test]
    fn sequences_respect_order_window_and_same() {
        let p = compile_one(&format!(
            "{HEAD}    sequence:\n      within: 10s\n      steps:\n        - {{type: open, path: /s}}\n        - {{type: connect, same: {{pid: pid}}}}\n"
        ))
        .unwrap();
        let run = |events: serde_json::Value| examples::fired(&p, &events).unwrap();
        let open = |pid: u32, ts: &str| serde_json::json!({"type": "open", "path": "/s", "pid": pid, "ts": ts});
        let conn = |pid: u32, ts: &str| serde_json::json!({"type": "connect", "addr": "10.0.0.1", "port": 1, "pid": pid, "ts": ts});
        let t0 = "2026-01-01T00:00:00Z";
        let t5 = "2026-01-01T00:00:05Z";
        let t20 = "2026-01-01T00:00:20Z";
        assert_eq!(run(serde_json::json!([open(1, t0), conn(1, t5)])), ["r"]);
        assert!(
            run(serde_json::json!([conn(1, t0), open(1, t5)])).is_empty(),
            "order"
        );
        assert!(
            run(serde_json::json!([open(1, t0), conn(1, t20)])).is_empty(),
            "window"
        );
        assert!(
            run(serde_json::json!([open(1, t0), conn(2, t5)])).is_empty(),
            "same pid"
        );
    }

    /// Partial sequences go when they can no longer complete: at their process's exit, at
    /// their session's end, and once their window has passed.
    #[test]
    fn sequence_state_is_swept_at_exit_at_session_end_and_by_age() {
        let rules = |by: &str| {
            compile_one(&format!(
                "{HEAD}    sequence:\n      by: {by}\n      within: 10s\n      steps:\n        - {{type: open, path: /s}}\n        - {{type: connect}}\n"
            ))
            .unwrap()
        };
        let open = |pid: u32, trace: &str, ts: &str| serde_json::json!({"type": "open", "path": "/s", "pid": pid, "trace_id": trace, "ts": ts});
        let first_steps = |p: &Policy, events: &[serde_json::Value]| {
            let mut lineage = examples::ExampleLineage::default();
            let mut state = SeqState::default();
            let mut out = Vec::new();
            for (i, v) in events.iter().enumerate() {
                let (ev, ts) = examples::example_event(v, i as u64 + 1, &mut lineage).unwrap();
                p.evaluate(
                    &std::sync::Arc::new(ev),
                    ts,
                    SessionView::default(),
                    &lineage,
                    &mut state,
                    &mut out,
                );
            }
            assert!(out.is_empty());
            state
        };
        let t0 = "2026-01-01T00:00:00Z";
        let by_process = rules("process");
        let mut st = first_steps(&by_process, &[open(1, "a", t0), open(2, "a", t0)]);
        assert_eq!(st.len(), 2);
        st.process_exited(1);
        assert_eq!(st.len(), 1, "pid 1's partial stays after its exit");
        st.process_exited(3);
        assert_eq!(st.len(), 1, "another pid's exit took pid 2's partial");
        let by_session = rules("session");
        let mut st = first_steps(&by_session, &[open(1, "a", t0), open(1, "b", t0)]);
        assert_eq!(st.len(), 2);
        st.process_exited(1);
        assert_eq!(st.len(), 2, "a process exit took session partials");
        st.session_ended("a");
        assert_eq!(st.len(), 1);
        // By age: kept inside the 10 s window, gone after it.
        let (_, ts0) =
            examples::example_event(&open(1, "b", t0), 1, &mut Default::default()).unwrap();
        st.sweep(ts0 + 9_000_000_000);
        assert_eq!(st.len(), 1);
        st.sweep(ts0 + 11_000_000_000);
        assert_eq!(st.len(), 0);
    }

    #[test]
    fn tilde_means_every_home_and_exe_names_match_basenames() {
        let p = compile_one(&format!(
            "{HEAD}    condition:\n      path: \"~/.netrc\"\n      exe: cat\n"
        ))
        .unwrap();
        for (path, exe, want) in [
            ("/root/.netrc", "/bin/cat", true),
            ("/home/bob/.netrc", "/usr/bin/cat", true),
            ("/home/bob/x/.netrc", "/usr/bin/cat", false),
            ("/root/.netrc", "/usr/bin/concat", false),
        ] {
            let ev = serde_json::json!({"type": "open", "path": path, "exe": exe});
            assert_eq!(
                !examples::fired(&p, &ev).unwrap().is_empty(),
                want,
                "{path} {exe}"
            );
        }
    }

    #[test]
    fn the_version_changes_with_any_byte() {
        let a = Source {
            name: "a.yaml".into(),
            text: "rules: []\n".into(),
        };
        let mut b = a.clone();
        b.text.push(' ');
        assert_ne!(version_of(std::slice::from_ref(&a)), version_of(&[b]));
        assert_eq!(version_of(std::slice::from_ref(&a)), version_of(&[a]));
    }

    #[test]
    fn the_kernel_gets_only_what_it_can_decide_alone() {
        let p = compile_one(
            "rules:\n\
             - {id: a, description: d, severity: high, action: kill, mode: enforce, condition: {type: exec, exe: [nmap, /opt/x]}}\n\
             - {id: b, description: d, severity: high, action: kill, mode: monitor, condition: {type: exec, exe: nc}}\n\
             - {id: c, description: d, severity: high, action: kill, mode: enforce, condition: {type: exec, exe: nc, arg: -e}}\n\
             - {id: d, description: d, severity: high, action: hold, mode: enforce, condition: {type: open, intent: write, path: [/etc/cron.d/*, /etc/crontab]}}\n\
             - {id: e, description: d, severity: high, action: hold, mode: enforce, condition: {type: connect, addr: 169.254.169.254, port: 80}}\n\
             - {id: f, description: d, severity: high, action: alert, mode: enforce, condition: {type: connect, addr: 10.0.0.0/8}}\n\
             - {id: g, description: d, severity: high, action: hold, mode: enforce, condition: {type: connect, addr: [127.0.0.0/8, \"::1/128\"], port: 2375-2376}}\n",
        )
        .unwrap();
        let k = kernel::KernelPolicy::of(&p, true);
        assert!(k
            .exec
            .iter()
            .any(|e| e.path == "/usr/bin/nmap" && e.rule == "a"));
        assert!(k.exec.iter().any(|e| e.path == "/opt/x"));
        assert!(k.exec.iter().all(|e| e.rule == "a"), "{:?}", k.exec);
        let cron: Vec<_> = k.open.iter().map(|e| (e.path.as_str(), e.prefix)).collect();
        assert_eq!(cron, [("/etc/cron.d/", true), ("/etc/crontab", false)]);
        assert_eq!(k.open[0].intent, watcher_common::INTENT_WRITE);
        let deny: Vec<_> = k
            .deny
            .iter()
            .map(|e| (e.rule.as_str(), e.net.to_string(), e.ports))
            .collect();
        assert_eq!(
            deny,
            [
                ("e", "169.254.169.254/32".to_string(), (80, 80)),
                ("g", "127.0.0.0/8".to_string(), (2375, 2376)),
                ("g", "::1/128".to_string(), (2375, 2376)),
            ]
        );
    }
}

#[cfg(test)]
mod gate_tests {
    use super::gate::GatePlan;
    use watcher_common::{GATE_CONNECT, GATE_EXEC, GATE_OPEN, INTENT_READ};

    fn plan(text: &str) -> GatePlan {
        let src = super::Source {
            name: "t.yaml".into(),
            text: text.into(),
        };
        let p =
            super::compile::compile(&[src], &["/root".to_string(), "/home/*".to_string()]).unwrap();
        let k = super::kernel::KernelPolicy::of(&p, true);
        GatePlan::of(&p, &k, true)
    }

    #[test]
    fn the_gate_anchors_each_rule_on_what_the_kernel_can_test() {
        let g = plan(
            "rules:\n\
             - {id: a, description: d, severity: high, action: hold, mode: enforce, condition: {type: open, path: [\"~/.aws/credentials\", \"**/.git/hooks/*\", \"~/.ssh/*_key\"], not: {exe: aws}}}\n\
             - {id: b, description: d, severity: high, action: hold, mode: enforce, condition: {type: exec, exe: [crontab, \"python3.*\"], not: {arg: -l}}}\n\
             - {id: c, description: d, severity: high, action: kill, mode: enforce, condition: {type: exec, exe: nmap}}\n\
             - {id: d, description: d, severity: high, action: hold, mode: monitor, condition: {type: exec, exe: ls}}\n\
             - {id: e, description: d, severity: high, action: alert, mode: enforce, condition: {type: exec, exe: cat}}\n\
             - {id: f, description: d, severity: high, action: hold, mode: enforce, sequence: {within: 60s, steps: [{type: open, intent: read, path: /etc/shadow}, {type: connect}]}}\n",
        );
        let s = &g.set;
        let tails: Vec<&str> = s.suffix.iter().map(|e| e.key.as_str()).collect();
        assert!(tails.contains(&"/.aws/credentials"), "{tails:?}");
        assert!(tails.contains(&"/.git/hooks/"), "{tails:?}");
        assert!(tails.contains(&"/.ssh/"), "{tails:?}");
        // The sequence's open-ended connect gates its start instead, per session after it.
        let shadow = s.suffix.iter().find(|e| e.key == "/etc/shadow").unwrap();
        assert_eq!(shadow.intent, INTENT_READ);
        assert!(g.dynamic[5] && !g.dynamic[0]);
        let names: Vec<(&str, bool, u32)> = s
            .comm
            .iter()
            .map(|e| (e.key.as_str(), e.prefix, e.kinds))
            .collect();
        assert!(names.contains(&("crontab", false, GATE_EXEC)), "{names:?}");
        assert!(names.contains(&("python3.", true, GATE_EXEC)), "{names:?}");
        // Fast-path (c), monitor (d) and alert (e) rules gate nothing.
        for n in ["nmap", "ls", "cat"] {
            assert!(
                !names.iter().any(|(k, _, _)| *k == n),
                "{n} gated: {names:?}"
            );
        }
        assert_eq!(s.all & (GATE_EXEC | GATE_OPEN | GATE_CONNECT), 0, "{s:?}");
        assert!(g.unanchored.is_empty(), "{:?}", g.unanchored);
    }

    #[test]
    fn a_longer_entry_answers_for_the_prefixes_it_hides() {
        let g = plan(
            "rules:\n\
             - {id: a, description: d, severity: high, action: hold, mode: enforce, condition: {type: exec, exe: [\"git*\", git-lfs]}}\n\
             - {id: b, description: d, severity: high, action: hold, mode: enforce, condition: {type: connect, exe: git-lfs}}\n",
        );
        let lfs = g.set.comm.iter().find(|e| e.key == "git-lfs").unwrap();
        assert!(lfs.prefix, "{lfs:?}");
        assert_eq!(lfs.kinds, GATE_EXEC | GATE_CONNECT);
        assert_eq!(g.set.all, 0);
        // A rule that names no program gates every exec.
        let g = plan(
            "rules:\n\
             - {id: c, description: d, severity: high, action: hold, mode: enforce, condition: {type: exec, cmdline: \"*x*\"}}\n",
        );
        assert_eq!(g.set.all, GATE_EXEC);
        assert_eq!(g.unanchored, [("c".to_string(), "exec")]);
    }

    /// A file guarded against writes is also gated by its own name alone, for the calls that
    /// make or change a name in place (`INTENT_NAME`: a rename, link or truncate through a
    /// symlinked directory ends with it); opens never carry that intent, and a read-only rule
    /// or a wildcard name adds nothing.
    #[test]
    fn a_guarded_files_own_name_gates_renames_links_and_truncates() {
        use watcher_common::{INTENT_NAME, INTENT_WRITE};
        let g = plan(
            "rules:\n\
             - {id: a, description: d, severity: high, action: hold, mode: enforce, condition: {type: open, intent: write, path: /home/alice/.bashrc}}\n\
             - {id: b, description: d, severity: high, action: hold, mode: enforce, condition: {type: open, intent: write, path: [\"/home/*/.profile\", \"/etc/cron.d/*\"]}}\n\
             - {id: c, description: d, severity: high, action: hold, mode: enforce, condition: {type: open, intent: read, path: /etc/shadow}}\n",
        );
        let tail = |k: &str| g.set.suffix.iter().find(|e| e.key == k);
        // A literal name the fast path matches: its own name is a tail for the name calls only.
        let name = tail("/.bashrc").expect("no tail for the name alone");
        assert_eq!(name.intent, INTENT_NAME, "{name:?}");
        // Under a wildcard home too.
        let profile = tail("/.profile").unwrap();
        assert_eq!(profile.intent & INTENT_NAME, INTENT_NAME, "{profile:?}");
        // Opens by the whole name are still gated as before.
        assert!(
            g.named
                .iter()
                .any(|n| n.pattern == "/home/alice/.bashrc" && n.intent & INTENT_WRITE != 0),
            "{:?}",
            g.named
        );
        assert!(tail("/shadow").is_none(), "{:?}", g.set.suffix);
        assert!(
            !g.set.suffix.iter().any(|e| e.key.contains('*')),
            "{:?}",
            g.set.suffix
        );
    }

    /// The directories the gate knows by identity are where guarded names are made, never the
    /// scratch places every build writes in: a chown rule's `/tmp/**` names nothing.
    #[test]
    fn the_shipped_pack_guards_no_scratch_directory_by_identity() {
        let (p, _) = super::load(None).unwrap();
        let k = super::kernel::KernelPolicy::of(&p, true);
        let g = GatePlan::of(&p, &k, true);
        let scratch = ["/", "/tmp", "/var/tmp", "/dev/shm", "/run/user"];
        let mut dirs = Vec::new();
        for n in &g.named {
            assert!(
                !scratch
                    .iter()
                    .any(|s| *s != "/" && n.pattern.starts_with(s)),
                "{n:?}"
            );
            dirs.extend(crate::sys::files::parents(&n.pattern));
            dirs.extend(
                crate::sys::files::named(&n.pattern)
                    .into_iter()
                    .filter_map(|(d, dir)| dir.then_some(d)),
            );
        }
        for d in &dirs {
            let d = d.to_str().unwrap();
            assert!(!scratch.contains(&d), "{d} is guarded by identity");
        }
        // A chown rule's scratch places are no open's.
        let g = plan(
            "rules:\n\
             - {id: a, description: d, severity: high, action: hold, mode: enforce, condition: {type: chown, to_uid: 0, path: \"/tmp/**\"}}\n\
             - {id: b, description: d, severity: high, action: hold, mode: enforce, condition: {type: open, intent: write, path: \"/etc/cron.d/*\"}}\n",
        );
        let pats: Vec<&str> = g.named.iter().map(|n| n.pattern.as_str()).collect();
        assert_eq!(pats, ["/etc/cron.d/*"]);
    }

    #[test]
    fn the_shipped_pack_gates_no_kind_whole() {
        let (p, _) = super::load(None).unwrap();
        let k = super::kernel::KernelPolicy::of(&p, true);
        let g = GatePlan::of(&p, &k, true);
        assert!(g.unanchored.is_empty(), "{:?}", g.unanchored);
        assert!(!g.set.suffix.is_empty() && !g.set.comm.is_empty());
        // Of the rare kinds the pack holds setuid bits, chowns, mounts and io_uring rings; the
        // kernel kills BPF and module loads alone; deletes are gated only while a count counts.
        use watcher_common::{
            GATE_BPF, GATE_CHMOD_SETID, GATE_CHOWN, GATE_IO_URING, GATE_MODULE, GATE_MOUNT,
            GATE_UNLINK_SAMPLE,
        };
        assert_eq!(
            g.rare,
            GATE_CHMOD_SETID | GATE_CHOWN | GATE_MOUNT | GATE_IO_URING | GATE_UNLINK_SAMPLE
        );
        assert_eq!(g.set.all & (GATE_BPF | GATE_MODULE), 0);
        let kinds: Vec<_> = k
            .kinds
            .iter()
            .map(|(kind, r)| (*kind, r.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (super::kernel::KindEntry::Module, "kernel-module-load"),
                (super::kernel::KindEntry::Bpf, "bpf-program-load")
            ]
        );
        for (i, r) in p.rules.iter().enumerate() {
            assert_eq!(
                g.dynamic[i] && r.count.is_some(),
                r.count.is_some(),
                "{}",
                r.id
            );
        }
    }
}
