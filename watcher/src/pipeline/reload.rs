//! What makes the daemon load its rules again: a change to a rule file (inotify) or SIGHUP.
//! (`watcher rules reload` calls `Core::reload` from the control socket.)
use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use notify::{RecursiveMode, Watcher as _};

use super::{ActivePolicy, Core};
use crate::rules::{self, RuleError};

impl Core {
    /// Loads the rule files again and swaps the policy (and the kernel's fast paths) in whole.
    /// On error the running policy stays in force; the error is logged, counted and kept for
    /// `watcher status`.
    pub fn reload(&self, why: &str) -> Result<(String, usize), RuleError> {
        let _one = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = rules::load(self.config.rules.path.as_deref()).and_then(|(policy, _)| {
            let active = ActivePolicy::new(policy, self.config.holds.enabled);
            active
                .apply(&mut self.kernel.lock().unwrap_or_else(|e| e.into_inner()))
                .map_err(|e| RuleError {
                    file: "<kernel>".into(),
                    line: 0,
                    column: 0,
                    message: format!("updating the kernel fast paths and gate: {e:#}"),
                })?;
            Ok(active)
        });
        match result {
            Ok(active) => {
                let out = (active.policy.version.clone(), active.policy.rules.len());
                let old = self.policy.swap(Arc::new(active));
                self.refresh_inodes();
                self.counters.reloads.fetch_add(1, Ordering::Relaxed);
                *self.rules_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(why, version = %out.0, previous = %old.policy.version, rules = out.1, "policy loaded");
                self.audit.record(
                    "policy_reload",
                    None,
                    Ok(serde_json::json!({
                        "why": why, "version": out.0, "previous": old.policy.version, "rules": out.1,
                    })),
                );
                Ok(out)
            }
            Err(e) => {
                self.counters.reload_errors.fetch_add(1, Ordering::Relaxed);
                *self.rules_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                tracing::error!(
                    why,
                    "rules not reloaded, the running policy stays in force: {e}"
                );
                Err(e)
            }
        }
    }
}

/// Quiet time after the last change before reloading: editors write a file in several steps.
const SETTLE: Duration = Duration::from_millis(200);

/// Watches the rule path; the returned watcher must be kept alive.
pub fn watch_files(shared: Arc<Core>) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
    let Some(path) = shared
        .config
        .rules
        .path
        .clone()
        .filter(|_| shared.config.rules.watch)
    else {
        return Ok(None);
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("watching {}: {e}", path.display()))?;
    w.watch(&path, RecursiveMode::NonRecursive)
        .map_err(|e| anyhow::anyhow!("watching {}: {e}", path.display()))?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Coalesce a burst of changes into one reload.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.reload("file changed")).await;
        }
    });
    Ok(Some(w))
}
