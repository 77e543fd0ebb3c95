//! The gate's bookkeeping in the intake: which kinds a session has gated, the next steps of a
//! sequence under way, and the answer to a stopped process.
use super::{
    detect::{finding_of, found_rule},
    *,
};

impl Intake {
    /// Gates a session whose baseline or scope is enforced (see `ENFORCED_GATE`); decided
    /// again when a profile changes (`watcher baseline mode`).
    pub(super) fn base_gate(&mut self, session_id: u64, scoped: bool, profile: Option<&str>) {
        let generation = self.shared.baselines.generation();
        if self
            .session_base
            .get(&session_id)
            .is_some_and(|(g, _)| *g == generation)
        {
            return;
        }
        let enforced =
            profile.is_some_and(|p| self.shared.baselines.get(p).mode == ProfileMode::Enforce);
        let bits = if self.shared.config.holds.enabled && (enforced || scoped) {
            ENFORCED_GATE
        } else {
            0
        };
        let old = self
            .session_base
            .insert(session_id, (generation, bits))
            .map_or(0, |(_, b)| b);
        if old != bits {
            let seq = self.session_gates.get(&session_id).map_or(0, |e| e.0);
            self.gate_write(session_id, seq);
        }
    }

    /// The sequences this event started or moved on whose next step the gate cannot name:
    /// the session's events of that step's kind are gated until the sequence's window ends.
    /// Written before the event's own gate is answered, so the next step cannot slip past.
    pub(super) fn gate_next_steps(&mut self, active: &ActivePolicy, session_id: u64, ts_ns: u64) {
        let mut kinds = 0;
        let mut until = 0;
        for (rule, reversed, next) in self.seq.advanced.drain(..) {
            if !active.gate.dynamic.get(rule).copied().unwrap_or(false) {
                continue;
            }
            let r = &active.policy.rules[rule];
            kinds |= gate::step_kinds(r, reversed, next);
            let within = match (&r.sequence, &r.count) {
                (Some(s), _) => s.within_ns,
                (_, Some(c)) => c.within_ns,
                _ => 0,
            };
            until = until.max(ts_ns.saturating_add(within));
        }
        if kinds == 0 {
            return;
        }
        let e = self.session_gates.entry(session_id).or_insert((0, 0));
        let changed = e.0 | kinds != e.0;
        e.0 |= kinds;
        e.1 = e.1.max(until);
        if changed {
            let k = e.0;
            self.gate_write(session_id, k);
        }
    }

    /// Writes the session's gated kinds: its sequences' next steps (`kinds`) and what its
    /// enforced baseline or scope gates.
    pub(super) fn gate_write(&mut self, session_id: u64, kinds: u32) {
        let base = self.session_base.get(&session_id).map_or(0, |(_, b)| *b);
        // A sequence's next step is any open: the base's intents do not narrow it.
        let any_open = kinds & watcher_common::GATE_OPEN != 0;
        let mut kinds = kinds | base;
        if any_open {
            kinds &= (1 << watcher_common::SESSION_INTENT_SHIFT) - 1;
        }
        if let Some(g) = self.gate.as_mut() {
            if let Err(e) = g.set_session(session_id, kinds) {
                tracing::error!("gating a session's next steps: {e:#}");
            }
        }
    }

    /// Drops the per-session gates whose sequences can no longer complete.
    pub(super) fn sweep_session_gates(&mut self, now_ns: u64, ended: Option<u64>) {
        let done: Vec<u64> = self
            .session_gates
            .iter()
            .filter(|(id, (_, until))| *until < now_ns || Some(**id) == ended)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.session_gates.remove(&id);
            self.gate_write(id, 0);
        }
    }

    /// A watched process that sends SIGCONT to a process while the gate holds it lets it use
    /// what it did before the policy decided: tampering, as SIGCONT to a held session is. The
    /// gated record comes first in the ring, so its stop and answer are known here.
    pub(super) fn gate_tamper(&self, ev: &Event, ts_ns: u64) -> Option<String> {
        let Detail::Signal {
            target_pid, signal, ..
        } = &ev.detail
        else {
            return None;
        };
        if *signal != libc::SIGCONT || *target_pid == ev.pid {
            return None;
        }
        let (stop, answer) = *self.gate_stops.get(target_pid)?;
        (stop <= ts_ns && ts_ns < answer).then(|| {
            format!("SIGCONT to process {target_pid} while the gate held it for a decision")
        })
    }

    /// The gate killed a traced process where it would have stopped it (see
    /// `EVENT_FLAG_TRACED`): nothing waits for an answer, and the kill is recorded.
    pub(super) fn traced_at_gate(&self, ev: &Event) {
        let rule = found_rule(
            "traced-at-gate",
            "A traced process reached the gate: its tracer could have resumed it before the \
             answer, so the kernel killed it"
                .into(),
            0.6,
            Action::Kill,
        );
        let finding = finding_of(
            &rule,
            Outcome::KilledInKernel,
            &self.policy_version,
            vec![ev.clone()],
            None,
        );
        tracing::warn!(trace_id = %ev.trace_id, pid = ev.pid, "a traced process reached the gate and was killed");
        self.publish_finding(
            ev,
            Finding {
                in_kernel: true,
                ..finding
            },
        );
    }

    /// The whole policy has run on a gated event: the process continues unless a new hold
    /// keeps it (approve continues it, deny kills it). A kill or a freeze has already been
    /// started; SIGCONT does not release a frozen cgroup. A process that `joined` a pending
    /// hold keeps its entry in the gate's map until the hold store lists it (the gate sweeper
    /// removes it then): should the join not be stored, or the daemon die first, it is asked
    /// about again instead of staying stopped with nothing to decide.
    pub(super) fn answer_gate(&mut self, hdr: &EventHeader, kept: bool, joined: bool) {
        crate::sys::fault::point(crate::sys::fault::BEFORE_GATE_ANSWER);
        if !kept {
            // SAFETY: plain kill(2) of the process the gate stopped.
            unsafe { libc::kill(hdr.tgid as i32, libc::SIGCONT) };
        }
        if let Some(g) = self.gate.as_mut().filter(|_| !joined) {
            g.answered(hdr.tgid);
        }
        self.shared.counters.gated.fetch_add(1, Ordering::Relaxed);
        let now = crate::sys::boot::boot_ns();
        if self.gate_stops.len() >= GATE_STOPS_MAX {
            self.gate_stops.clear();
        }
        self.gate_stops.insert(hdr.tgid, (hdr.ts_ns, now));
        if let Ok(mut h) = self.shared.gate_latency.lock() {
            let _ = h.record(now.saturating_sub(hdr.ts_ns) / 1000);
        }
    }
}
