//! `watcher run`: loads the programs, starts intake and the control socket, runs until
//! SIGINT or SIGTERM.
use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::sync::broadcast;
use watcher_common::EVENT_KINDS;

use crate::{config::Config, control, event::Event, intake, kernel::Kernel, sessions::Sessions};

/// A process registered by `launch` or `attach`, handed to intake before it can run.
#[derive(Debug)]
pub struct Seed {
    pub pid: u32,
    pub ppid: u32,
    pub session_id: u64,
    pub cwd: Option<PathBuf>,
}

#[derive(Default)]
pub struct Counters {
    /// Records decoded, per `EventKind`.
    pub events: [AtomicU64; EVENT_KINDS as usize],
    /// Records that could not be decoded.
    pub malformed: AtomicU64,
    /// Events a slow `watcher events --follow` client missed.
    pub client_lag: AtomicU64,
    /// Events published (the last sequence number).
    pub published: AtomicU64,
}

pub struct Shared {
    pub config: Config,
    pub sessions: Mutex<Sessions>,
    pub recent: Mutex<VecDeque<Arc<Event>>>,
    pub live: broadcast::Sender<Arc<Event>>,
    pub counters: Counters,
    pub kernel: Mutex<Kernel>,
    pub seeds: Mutex<std::sync::mpsc::Sender<Seed>>,
    /// Kernel event to user-space event, microseconds.
    pub latency: Mutex<Histogram<u64>>,
}

impl Shared {
    /// Numbers the event and hands it to `recent` and to live followers, in one order.
    pub fn publish(&self, mut ev: Event) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        ev.seq = self.counters.published.fetch_add(1, Ordering::Relaxed) + 1;
        let ev = Arc::new(ev);
        if recent.len() >= self.config.daemon.recent_events {
            recent.pop_front();
        }
        recent.push_back(ev.clone());
        // No subscriber is fine: the event is kept in `recent`.
        let _ = self.live.send(ev);
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut kernel = Kernel::load(&config)?;
    let events = kernel.take_events()?;
    let (seed_tx, seed_rx) = std::sync::mpsc::channel();
    let (live, _) = broadcast::channel(16384);
    let shared = Arc::new(Shared {
        sessions: Mutex::new(Sessions::default()),
        recent: Mutex::new(VecDeque::new()),
        live,
        counters: Counters::default(),
        kernel: Mutex::new(kernel),
        seeds: Mutex::new(seed_tx),
        latency: Mutex::new(Histogram::new(3).context("histogram")?),
        config,
    });
    intake::spawn(events, shared.clone(), seed_rx)?;
    let listener = control::server::bind(&shared.config)?;
    tracing::info!(
        socket = %shared.config.daemon.socket.display(),
        "watcher ready"
    );
    // Tests and supervisors wait for this line instead of polling.
    println!("ready {}", shared.config.daemon.socket.display());
    let server = tokio::spawn(control::server::serve(listener, shared.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        r = server => { r??; }
    }
    tracing::info!("shutting down");
    let _ = std::fs::remove_file(&shared.config.daemon.socket);
    Ok(())
}
