//! Detection: an event through the rules, the session's scope and its profile's baseline, and
//! what they find concluded into findings and holds.
use super::*;

/// One event's findings so far: the holds they open, and whether one keeps the stopped process.
pub(super) struct Conclusions<'a> {
    drafts: Vec<HoldDraft>,
    kept: bool,
    gated: bool,
    session_id: u64,
    profile: Option<&'a str>,
    scope: Option<&'a crate::model::scope::Scope>,
    policy_version: &'a str,
}

/// The rule a baseline or scope finding is decided by.
pub(super) fn found_rule(id: &str, description: String, score: f32, action: Action) -> Rule {
    Rule {
        id: id.into(),
        description,
        severity: match score {
            s if s >= 0.9 => Severity::Critical,
            s if s >= 0.6 => Severity::High,
            s if s >= 0.3 => Severity::Medium,
            _ => Severity::Low,
        },
        tags: Vec::new(),
        action,
        mode: Mode::Enforce,
        cond: None,
        sequence: None,
        reverse: None,
        count: None,
        file: String::new(),
    }
}

/// The finding a rule made (or a baseline or scope detector, through its synthetic rule).
pub(super) fn finding_of(
    rule: &Rule,
    outcome: Outcome,
    policy_version: &str,
    evidence: Vec<Event>,
    anomaly: Option<(Detector, f32, Anomaly)>,
) -> Finding {
    let (detector, score, anomaly) = match anomaly {
        Some((d, s, a)) => (d, Some(s), Some(a)),
        None => (Detector::Rules, None, None),
    };
    Finding {
        tags: rule.tags.clone(),
        score,
        anomaly,
        ..Finding::new(
            detector,
            &rule.id,
            &rule.description,
            rule.severity,
            (rule.action, rule.mode, outcome),
            policy_version,
            evidence,
        )
    }
}

pub(super) fn scope_rule(entry: &str) -> &'static str {
    match entry {
        "workdir" => "scope-workdir",
        "allow_write" => "scope-allow-write",
        "allow_read" => "scope-allow-read",
        "allow_host" => "scope-allow-host",
        _ => "scope-allow-exec",
    }
}

impl Intake {
    /// Runs the detectors on the event (the rules, the session's scope, its profile's
    /// baseline) and publishes a finding for each thing they find. `stops`: (a fast path acted
    /// on the event, the gate stopped it). Returns whether a new hold keeps the stopped process
    /// (it continues when the hold is approved).
    pub(super) fn detect(
        &mut self,
        ev: &Arc<Event>,
        ts_ns: u64,
        session: SessionView<'_>,
        (in_kernel, gated): (bool, bool),
        (session_id, scoped): (u64, bool),
    ) -> bool {
        let mut kept = false;
        let active = self.shared.policy.load();
        let policy = &active.policy;
        if policy.version != self.policy_version {
            // Partial sequences belong to the policy that started them.
            self.seq.clear();
            self.policy_version.clone_from(&policy.version);
        }
        let mut matches = std::mem::take(&mut self.matches);
        policy.evaluate(ev, ts_ns, session, &self.tree, &mut self.seq, &mut matches);
        if !self.seq.advanced.is_empty() {
            self.gate_next_steps(&active, session_id, ts_ns);
        }
        let scope = scoped.then(|| self.shared.scopes.get(session_id)).flatten();
        let mut out = Conclusions {
            drafts: Vec::new(),
            kept: false,
            gated,
            session_id,
            profile: session.profile,
            scope: scope.as_ref().map(|s| &s.scope),
            policy_version: &policy.version,
        };
        for m in matches.drain(..) {
            let rule = &policy.rules[m.rule];
            // The fast-path flag belongs to this event; only a rule the kernel holds can own it.
            let kernel_rule = in_kernel && active.kernel.has_rule(&rule.id);
            let evidence = m.evidence.iter().map(|e| e.as_ref().clone()).collect();
            self.conclude(&mut out, ev, rule, kernel_rule, evidence, None, ts_ns);
        }
        self.matches = matches;
        if let Some(b) = scope.as_ref().and_then(|s| s.check(ev)) {
            let rule = found_rule(
                scope_rule(b.entry),
                format!(
                    "outside the task scope: {} is not allowed by {} [{}]",
                    b.value,
                    b.entry,
                    b.allowed.join(", ")
                ),
                1.0,
                Action::Hold,
            );
            let anomaly = Anomaly {
                facet: b.entry.into(),
                value: b.value.clone(),
                instead: b.allowed.clone(),
                sessions: None,
                widen: Some(format!("{} {}", b.widen.0, b.widen.1)),
            };
            let f = (Detector::Scope, 1.0, anomaly);
            self.conclude(
                &mut out,
                ev,
                &rule,
                false,
                vec![ev.as_ref().clone()],
                Some(f),
                ts_ns,
            );
        }
        if let Some(profile) = session.profile {
            let cx = crate::pipeline::baseline::Ctx {
                session_id,
                trace_id: &ev.trace_id,
                profile,
                workdir: session.workdir,
                tree: &self.tree,
                ts_ns,
            };
            let found = self.baseline.observe(&self.shared.baselines, ev, &cx);
            for f in found {
                let action = match f.level {
                    Level::Hold => Action::Hold,
                    Level::Alert => Action::Alert,
                };
                let rule = found_rule(f.rule, f.description, f.score, action);
                let mut evidence = f.before;
                evidence.push(ev.as_ref().clone());
                let shadow = f.mode == ProfileMode::Shadow;
                let d = (Detector::Baseline, f.score, f.anomaly);
                if shadow {
                    self.shadow(ev, &rule, evidence, d, &policy.version);
                } else {
                    self.conclude(&mut out, ev, &rule, false, evidence, Some(d), ts_ns);
                }
            }
        }
        kept |= out.kept;
        if let Some(e) = self.shared.enforcement() {
            for draft in out.drafts {
                e.record_hold(draft);
            }
        }
        kept
    }

    /// Decides one finding, publishes it, and adds the hold it opens (or joins) to `out`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conclude(
        &self,
        out: &mut Conclusions<'_>,
        ev: &Arc<Event>,
        rule: &Rule,
        kernel_rule: bool,
        evidence: Vec<Event>,
        anomaly: Option<(Detector, f32, Anomaly)>,
        ts_ns: u64,
    ) {
        let tree = &self.tree;
        let session_id = out.session_id;
        let d = match self.shared.enforcement() {
            Some(e) => e.decide(rule, ev, ts_ns, kernel_rule, out.profile, &|| {
                tree.session_pids(session_id)
            }),
            // Not wired (a tool that runs the pipeline alone): recorded, not enforced.
            None => Decision {
                outcome: Outcome::NotEnforced,
                hold: None,
                new_hold: false,
            },
        };
        let mut finding = finding_of(rule, d.outcome, out.policy_version, evidence, anomaly);
        finding.in_kernel = kernel_rule;
        finding.hold = d.hold.clone();
        let detector = finding.detector;
        tracing::info!(rule = %finding.rule, detector = detector.as_str(), trace_id = %ev.trace_id, pid = ev.pid, outcome = ?d.outcome, "finding");
        let published = self.publish_finding(ev, finding);
        match (d.new_hold, d.hold) {
            (true, Some(id)) => {
                // The kernel stopped the trigger at the hook (SIGSTOP): it needs SIGCONT later.
                let stopped =
                    if out.gated || (kernel_rule && !matches!(ev.detail, Detail::Connect { .. })) {
                        out.kept = true;
                        vec![ev.pid]
                    } else {
                        Vec::new()
                    };
                out.drafts.push(HoldDraft {
                    id,
                    kind: HoldKind::Session,
                    finding: published.as_ref().clone(),
                    also: Vec::new(),
                    trigger: ev.as_ref().clone(),
                    tree: self.tree.session_procs(session_id),
                    recent: Vec::new(),
                    stopped,
                    rule: rule.id.clone(),
                    policy_version: out.policy_version.to_string(),
                    frozen_us: None,
                    scope: out.scope.cloned(),
                });
            }
            // Another finding of the same action: the same question, with its evidence.
            (false, Some(id)) => {
                if let Some(draft) = out.drafts.iter_mut().find(|h| h.id == id) {
                    draft.also.push(published.as_ref().clone());
                }
            }
            _ => {}
        }
    }

    /// A shadow-mode baseline finding: what enforce would have done, recorded; nothing stops.
    pub(super) fn shadow(
        &self,
        ev: &Arc<Event>,
        rule: &Rule,
        evidence: Vec<Event>,
        anomaly: (Detector, f32, Anomaly),
        policy_version: &str,
    ) {
        let outcome = match rule.action {
            Action::Alert => Outcome::Alerted,
            _ => Outcome::WouldHold,
        };
        let mut finding = finding_of(rule, outcome, policy_version, evidence, Some(anomaly));
        finding.mode = Mode::Monitor;
        tracing::info!(rule = %finding.rule, trace_id = %ev.trace_id, pid = ev.pid, outcome = ?finding.outcome, "shadow finding");
        self.publish_finding(ev, finding);
    }

    pub(super) fn publish_finding(&self, ev: &Event, finding: Finding) -> Arc<Event> {
        self.shared.publish(Event {
            seq: 0,
            ts: ev.ts,
            pid: ev.pid,
            tid: ev.tid,
            ppid: ev.ppid,
            uid: ev.uid,
            trace_id: ev.trace_id.clone(),
            comm: ev.comm.clone(),
            cgroup_id: ev.cgroup_id,
            detail: Detail::Finding(Box::new(finding)),
        })
    }
}
