//! Enforcement: what is done about a finding (allow, alert, hold, kill), the holds and their
//! store, the kill-switch, and protected files whose open waits for a verdict. The pipeline
//! reaches it only through the `pipeline::Enforcement` hooks installed at start-up.
pub mod decide;
pub mod holds;
pub mod killswitch;
pub mod protect;
mod remember;
pub mod standing;
pub mod store;

use std::sync::{Arc, Mutex, Weak};

use hdrhistogram::Histogram;

use self::holds::Approvals;
use crate::{
    model::{
        event::Event,
        hold::{Decision, HaltMode, HoldDraft},
        ids::TraceId,
    },
    pipeline::{Core, Enforcement},
    rules::eval::Rule,
    sys::worker::Worker,
};

pub struct Enforce {
    pub core: Arc<Core>,
    /// Holds, their store and the kill-switch state.
    pub approvals: Arc<Approvals>,
    /// Kernel event to "whole session frozen", microseconds.
    pub hold_latency: Mutex<Histogram<u64>>,
    /// Calls the hold webhook, off every path that holds a process or a request.
    pub announcer: Worker,
    /// Engages the kill-switch for tampering sessions, off the pipeline's thread (an engage
    /// waits until the session is frozen).
    halter: Worker,
    /// Seals and carries out the kills decided in user space, off the intake's thread (a seal
    /// waits on the disk).
    killer: Worker,
    /// `watcher retire` was asked: the stop that follows is the last (no daemon comes after).
    pub retiring: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for Enforce {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Enforce {
    pub fn new(core: Arc<Core>, approvals: Arc<Approvals>) -> anyhow::Result<Arc<Enforce>> {
        let e = Arc::new(Enforce {
            core,
            approvals,
            hold_latency: Mutex::new(Histogram::new(3)?),
            announcer: Worker::start("announce")?,
            halter: Worker::start("halt")?,
            killer: Worker::start("kill")?,
            retiring: std::sync::atomic::AtomicBool::new(false),
        });
        e.core.set_enforcement(Arc::new(Hooks(Arc::downgrade(&e))));
        Ok(e)
    }
}

/// The pipeline's way in. Weak: the core does not keep enforcement alive (no cycle).
struct Hooks(Weak<Enforce>);

impl Enforcement for Hooks {
    fn decide(
        &self,
        rule: &Rule,
        ev: &Event,
        event_boot_ns: u64,
        kernel_rule: bool,
        profile: Option<&str>,
        session_pids: &dyn Fn() -> Vec<u32>,
    ) -> Decision {
        match self.0.upgrade() {
            Some(e) => decide::decide(
                &e,
                rule,
                ev,
                event_boot_ns,
                kernel_rule,
                profile,
                session_pids,
            ),
            None => Decision {
                outcome: crate::model::event::Outcome::NotEnforced,
                hold: None,
                new_hold: false,
            },
        }
    }

    fn record_hold(&self, draft: HoldDraft) {
        if let Some(e) = self.0.upgrade() {
            decide::record_hold(e, draft);
        }
    }

    fn remember_session(&self, s: crate::model::session::Session) {
        if let Some(e) = self.0.upgrade() {
            tokio::task::spawn_blocking(move || e.approvals.remember_session(&s));
        }
    }

    fn halt_session(&self, trace: &str, mode: HaltMode, by: &str) {
        let Some(e) = self.0.upgrade() else { return };
        let trace = match TraceId::parse(trace) {
            Ok(t) => t,
            Err(err) => {
                tracing::error!("kill-switch for a session: {err}");
                return;
            }
        };
        let by = by.to_string();
        let e2 = e.clone();
        e.halter.submit(move || {
            if let Err(err) = killswitch::engage(&e2, vec![trace], false, mode, &by) {
                tracing::error!("kill-switch for a session: {err:#}");
            }
        });
    }

    fn join_hold(&self, ev: &Event) -> bool {
        self.0.upgrade().is_some_and(|e| e.approvals.join(ev))
    }

    fn is_held(&self, trace: &str) -> bool {
        self.0
            .upgrade()
            .is_some_and(|e| e.approvals.pending_for(trace).is_some() || e.cgroups.is_frozen(trace))
    }
}
