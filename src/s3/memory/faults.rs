//! Fault injection: calls that fail, lose their answer, or take their time.

use super::{lock, MemoryStore};
use crate::s3::http::Op;
use std::collections::HashMap;
use std::time::Duration;

/// When an injected fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strike {
    /// The call fails without any effect.
    Before,
    /// The call takes effect, then its answer is lost and replaced by the error.
    After,
}

#[derive(Debug, Default)]
pub(super) struct Faults {
    /// (op, 1-based call number) -> (error code, when).
    pub(super) nth: HashMap<(usize, u64), (String, Strike)>,
    /// Every call of the op fails with this code.
    pub(super) all: HashMap<usize, String>,
    /// Every call of the op sleeps this long first.
    pub(super) delay: HashMap<usize, Duration>,
    /// Every call of the op sleeps this long after acting, before it answers
    /// (a slow answer: the request took effect, the caller does not know yet).
    pub(super) delay_after: HashMap<usize, Duration>,
    /// Every listing answers its first page again with another token.
    pub(super) looping_listings: bool,
    /// A `dir/` key keeps no metadata and no body (SeaweedFS).
    pub(super) markers_drop_metadata: bool,
}

/// Sets `op`'s delay in `delays`; zero removes it.
fn set_delay(delays: &mut HashMap<usize, Duration>, op: Op, d: Duration) {
    if d.is_zero() {
        delays.remove(&(op as usize));
    } else {
        delays.insert(op as usize, d);
    }
}

/// A fault "code" that is no answer at all: the connection breaks after the
/// request was sent (a transport error whose outcome is unknown).
pub const CONNECTION_RESET: &str = "ConnectionReset";

impl MemoryStore {
    /// Makes every listing loop, as a broken server's might: whatever the
    /// token, the first page comes back, truncated, with a new token each
    /// time (tokens A, B, A, ... or ever-new ones look the same to a client).
    pub fn loop_listings(&self) {
        lock(&self.faults).looping_listings = true;
    }

    /// Makes a key ending in `/` keep neither metadata nor body, as
    /// SeaweedFS does (its filer makes such a key a directory).
    pub fn drop_marker_metadata(&self) {
        lock(&self.faults).markers_drop_metadata = true;
    }

    /// Makes the `n`-th call (1-based, counted since the store was created,
    /// failed calls included, numbered when the method is called rather than
    /// when its future is first polled) of `op` fail with `code` before it
    /// has any effect. The status is S3's for that code
    /// ([`rules::status_for_code`](crate::s3::rules::status_for_code)), so the
    /// error is retryable exactly when S3's would be.
    pub fn fail_nth(&self, op: Op, n: u64, code: &str) {
        lock(&self.faults)
            .nth
            .insert((op as usize, n), (code.to_string(), Strike::Before));
    }

    /// Makes the `n`-th call of `op` take effect and then fail with `code`:
    /// the server did the work but the answer was lost. Tests the engine's
    /// handling of non-idempotent retries (a retried Complete meets `NoSuchUpload`).
    pub fn lose_response_nth(&self, op: Op, n: u64, code: &str) {
        lock(&self.faults)
            .nth
            .insert((op as usize, n), (code.to_string(), Strike::After));
    }

    /// Makes every call of `op` fail with `code`, without effect, until
    /// [`clear_faults`](Self::clear_faults): an outage.
    pub fn fail_all(&self, op: Op, code: &str) {
        lock(&self.faults).all.insert(op as usize, code.to_string());
    }

    /// Removes every injected fault (`fail_nth`, `lose_response_nth`,
    /// `fail_all`); delays stay.
    pub fn clear_faults(&self) {
        let mut f = lock(&self.faults);
        f.nth.clear();
        f.all.clear();
    }

    /// Makes every later call of `op` sleep `d` (tokio time) before acting,
    /// so calls stay in flight long enough for tests to observe concurrency
    /// bounds. `Duration::ZERO` removes the delay. A delayed call needs a
    /// tokio runtime with time enabled (an undelayed one runs on any executor).
    pub fn delay(&self, op: Op, d: Duration) {
        set_delay(&mut lock(&self.faults).delay, op, d);
    }

    /// Makes every later call of `op` act at once but answer `d` later: a
    /// caller cancelled meanwhile never learns that it took effect.
    pub fn delay_answer(&self, op: Op, d: Duration) {
        set_delay(&mut lock(&self.faults).delay_after, op, d);
    }
}
