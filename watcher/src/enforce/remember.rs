//! Approvals with `--remember`: a rule's hold becomes an exception for the rule; a scope
//! finding widens the session's scope by exactly what it was about (and only the session's);
//! a baseline finding teaches the profile that one thing. None of them widens more.
use anyhow::anyhow;

use super::Enforce;
use crate::model::{
    event::{Detail, Detector},
    hold::Hold,
    scope::Widening,
};

impl Enforce {
    /// Approves hold `id`. `remember`: for the session; `remember_profile`: for every session
    /// of the session's profile.
    pub fn approve(
        &self,
        id: &str,
        by: &str,
        via: crate::model::hold::Via,
        remember: bool,
        remember_profile: Option<String>,
    ) -> anyhow::Result<Hold> {
        let h = self.approvals.get(id)?;
        let Detail::Finding(f) = &h.finding.detail else {
            return Ok(self
                .approvals
                .approve(id, by, via, remember, remember_profile)?);
        };
        let wants = remember || remember_profile.is_some();
        match f.detector {
            Detector::Scope if wants => {
                if remember_profile.is_some() {
                    return Err(anyhow!(
                        "a scope is the session's own: --remember widens it for this session; widen a profile's default scope in [profiles.{}] of the configuration",
                        remember_profile.unwrap_or_default()
                    ));
                }
                let (entry, item) = f
                    .anomaly
                    .as_ref()
                    .and_then(|a| a.widen.as_deref())
                    .and_then(|w| w.split_once(' '))
                    .ok_or_else(|| anyhow!("hold {id}: the finding names nothing to widen"))?;
                self.widen(&h, entry, item, by)?;
                let mut h = self.approvals.approve(id, by, via, false, None)?;
                h.remembered = true;
                Ok(h)
            }
            Detector::Baseline if wants => {
                let a = f
                    .anomaly
                    .as_ref()
                    .ok_or_else(|| anyhow!("hold {id}: the finding names nothing to learn"))?;
                if let Some(p) = &remember_profile {
                    // A rate or a sequence is not one value a profile can hold.
                    if matches!(a.facet.as_str(), "rate" | "sequence") {
                        return Err(anyhow!(
                            "a {} finding is not one thing a profile can learn; approve it without --remember-profile",
                            a.facet
                        ));
                    }
                    let value = a.value.split(" sha256:").next().unwrap_or(&a.value);
                    self.baselines
                        .teach(p, &a.facet, value)
                        .map_err(|e| anyhow!("{e}"))?;
                    tracing::warn!(hold = id, profile = %p, facet = %a.facet, value, by, "profile taught by an approval");
                }
                // The session is not asked about the same value again in any case.
                let mut h = self.approvals.approve(id, by, via, false, None)?;
                h.remembered = true;
                Ok(h)
            }
            _ => Ok(self
                .approvals
                .approve(id, by, via, remember, remember_profile)?),
        }
    }

    /// Adds `item` to the session's scope entry, in the detector and in the session's record.
    fn widen(&self, h: &Hold, entry: &str, item: &str, by: &str) -> anyhow::Result<()> {
        let session_id = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all()
            .into_iter()
            .find(|s| s.trace_id == h.trace_id && s.ended.is_none())
            .map(|s| s.session_id)
            .ok_or_else(|| anyhow!("session {} has ended: nothing to widen", h.trace_id))?;
        let w = Widening {
            entry: entry.into(),
            item: item.into(),
            hold: h.id.clone(),
            by: by.into(),
            at: super::holds::now_rfc3339(),
        };
        let scope = self
            .scopes
            .widen(session_id, w)
            .map_err(|e| anyhow!("widening the scope: {e}"))?;
        let kept = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.get_mut(session_id).map(|s| {
                s.scope = Some(scope);
                s.clone()
            })
        };
        // A restarted daemon adopts the session with the widened scope.
        if let Some(s) = kept {
            self.approvals.remember_session(&s);
        }
        tracing::warn!(hold = %h.id, trace_id = %h.trace_id, entry, item, by, "task scope widened by an approval");
        Ok(())
    }
}
