//! The control socket's `baseline` requests, and the scope a launch pins.
use anyhow::anyhow;

use crate::{
    model::{
        baseline::{ProfileExport, ProfileMode},
        ids::TraceId,
        protocol::{BaselineOp, Reply},
        scope::Scope,
    },
    pipeline::scope::ScopeCheck,
    state::State,
};

pub fn handle(
    shared: &State,
    op: BaselineOp,
    profile: Option<String>,
    mode: Option<ProfileMode>,
    trace: Option<TraceId>,
    import: Option<Box<ProfileExport>>,
    who: &str,
) -> Reply {
    crate::sys::fault::delay(crate::sys::fault::SLOW_BASELINE_REPLY);
    let b = &shared.baselines;
    let need = |p: &Option<String>| {
        p.clone()
            .ok_or_else(|| "this baseline command needs a profile".to_string())
    };
    let r: Result<Reply, String> = (|| match op {
        BaselineOp::List => Ok(Reply::Profiles {
            profiles: b.summaries(),
        }),
        BaselineOp::Show | BaselineOp::Export => {
            let name = need(&profile)?;
            let x = b.export(&name)?;
            Ok(Reply::Profile {
                summary: b.summary(&b.get(&name)),
                profile: Box::new(x),
            })
        }
        BaselineOp::Mode => {
            let name = need(&profile)?;
            let mode = mode.ok_or("`baseline mode` needs learn, shadow or enforce")?;
            let summary = b.set_mode(&name, mode)?;
            tracing::warn!(profile = %name, mode = mode.as_str(), by = who, "baseline mode set");
            Ok(Reply::Profiles {
                profiles: vec![summary],
            })
        }
        BaselineOp::Import => {
            let x = import.ok_or("`baseline import` needs a profile")?;
            if let Some(name) = &profile {
                if *name != x.profile {
                    return Err(format!("the file is profile {:?}, not {name:?}", x.profile));
                }
            }
            let summary = b.import(&x)?;
            tracing::warn!(profile = %x.profile, by = who, "baseline imported");
            Ok(Reply::Profiles {
                profiles: vec![summary],
            })
        }
        BaselineOp::Reset => {
            let name = need(&profile)?;
            b.reset(&name)?;
            tracing::warn!(profile = %name, by = who, "baseline reset");
            Ok(Reply::Done {
                done: format!("profile {name} reset: it learns again from its next session"),
            })
        }
        BaselineOp::Diff => {
            let trace = trace.ok_or("`baseline diff` needs --trace ID")?;
            let (p, novel) = b.diff(trace.as_str())?;
            if let Some(name) = &profile {
                if *name != p {
                    return Err(format!(
                        "session {trace} ran with profile {p:?}, not {name:?}"
                    ));
                }
            }
            Ok(Reply::Diff {
                profile: p,
                trace_id: trace.as_str().to_string(),
                novel,
            })
        }
        BaselineOp::Report => {
            let name = need(&profile)?;
            Ok(Reply::Report {
                would_hold: b.report(&name)?,
                profile: name,
            })
        }
    })();
    r.unwrap_or_else(|error| Reply::Error { error })
}

/// The scope a session of `profile` started by `pid` gets: the profile's defaults, then what
/// the request pins; the home is the process owner's. Checked whole: an error starts nothing.
pub fn pinned_scope(
    shared: &State,
    pid: u32,
    profile: Option<&str>,
    asked: Scope,
) -> anyhow::Result<ScopeCheck> {
    let mut scope = profile
        .and_then(|p| shared.config.profiles.get(p))
        .map(|p| p.scope())
        .unwrap_or_default();
    scope.merge(asked);
    if let Some(w) = &scope.workdir {
        let p = std::path::Path::new(w);
        if !p.is_absolute() || !p.is_dir() {
            return Err(anyhow!(
                "--workdir {w}: not an absolute path to a directory"
            ));
        }
        // One name for the directory, as the kernel reports paths.
        scope.workdir = Some(
            std::fs::canonicalize(p)
                .map_err(|e| anyhow!("--workdir {w}: {e}"))?
                .display()
                .to_string(),
        );
    }
    scope.widened.clear();
    scope.home = home_of(pid);
    ScopeCheck::compile(scope).map_err(|e| anyhow!("scope: {e}"))
}

/// The home directory of the user that owns `pid`.
fn home_of(pid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir.display().to_string())
}
