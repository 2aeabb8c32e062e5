//! Part 1, held in memory until close so it can be rewritten, unless the
//! budget asks for it to be sent early.

use super::budget::{Grant, Spill};
use super::target::Target;
use super::PartTask;
use bytes::BytesMut;
use std::sync::Mutex;

pub(super) enum HeldState {
    /// Part 1, full, in memory.
    Held(BytesMut, Option<Grant>),
    /// Sent early because memory was short; the task ends with the part's ETag.
    Spilled(PartTask),
    /// Taken by the writer (at close or to shrink the file).
    Taken,
}

/// The held first part, which the budget may ask to be sent early.
pub(super) struct HeldPart {
    pub(super) state: Mutex<HeldState>,
    pub(super) target: Target,
    pub(super) rt: tokio::runtime::Handle,
    /// Its part number on the wire (1, or after an append's copied parts).
    pub(super) number: u32,
}

impl HeldPart {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HeldState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn take(&self) -> HeldState {
        std::mem::replace(&mut *self.lock(), HeldState::Taken)
    }
}

impl Spill for HeldPart {
    fn spill(&self) {
        let mut st = self.lock();
        if !matches!(*st, HeldState::Held(..)) {
            return;
        }
        let HeldState::Held(body, grant) = std::mem::replace(&mut *st, HeldState::Taken) else {
            unreachable!("checked above");
        };
        tracing::info!(key = %self.target.key, bytes = body.len(), "memory short: sending the held first part now; later writes into it need a checkpoint (or fail, in a file replacing an object)");
        let task = self.rt.spawn(self.target.clone().send(
            self.number,
            body.freeze(),
            grant,
            false,
        ));
        *st = HeldState::Spilled(task);
    }

    fn holds(&self) -> bool {
        matches!(*self.lock(), HeldState::Held(..))
    }
}
