//! The one shared handle the frontends hold: enforcement and, through it, the pipeline's core.
use std::sync::Arc;

use crate::enforce::Enforce;

pub struct State {
    pub enforce: Arc<Enforce>,
}

impl std::ops::Deref for State {
    type Target = Enforce;
    fn deref(&self) -> &Enforce {
        &self.enforce
    }
}
