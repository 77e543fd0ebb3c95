//! What makes the daemon load its rules again: a change to a rule file (inotify) or SIGHUP.
//! (`watcher rules reload` calls `Shared::reload` from the control socket.)
use std::{sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher as _};

use crate::daemon::Shared;

/// Quiet time after the last change before reloading: editors write a file in several steps.
const SETTLE: Duration = Duration::from_millis(200);

/// Watches the rule path; the returned watcher must be kept alive.
pub fn watch_files(shared: Arc<Shared>) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
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

pub async fn on_sighup(shared: Arc<Shared>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use `watcher rules reload`");
        return;
    };
    while hup.recv().await.is_some() {
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.reload("SIGHUP")).await;
    }
}
