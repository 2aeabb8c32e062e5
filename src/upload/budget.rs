//! One memory budget for every buffer of a mount: parts being filled, parts
//! in flight, held first parts, read-ahead.
//!
//! Accounting is in bytes with our own counter (tokio's semaphore takes a
//! u32 and waits forever for more permits than exist). A writer asks for a
//! whole part before it puts the first byte into it, so a writer waiting for
//! memory never holds a half-filled part: everything granted is either being
//! filled by a running writer, in flight to the server (and released when
//! the request ends), or a held first part — and held first parts are sent,
//! oldest first, when someone waits. So waiting always ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// Something the budget can ask to give its memory back (a held first part).
pub trait Spill: Send + Sync {
    /// Asks for the memory to be released soon (asynchronously).
    fn spill(&self);
    /// Whether there is still something to give back.
    fn holds(&self) -> bool;
}

/// Why memory was not granted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    /// More than the whole budget was asked for.
    #[error("{asked} bytes asked of a memory budget of {limit} bytes; raise --memory-limit")]
    TooLarge { asked: u64, limit: u64 },
    /// The budget stayed full for the whole wait.
    #[error("memory budget of {limit} bytes stayed full for {waited:?}; raise --memory-limit or write fewer files at once")]
    Timeout { limit: u64, waited: Duration },
}

struct Inner {
    used: u64,
    peak: u64,
    spillers: VecDeque<Weak<dyn Spill>>,
}

/// The budget. Shared by every file of a mount.
pub struct Budget {
    limit: u64,
    inner: Mutex<Inner>,
    freed: Notify,
}

/// Granted memory; given back when dropped.
pub struct Grant {
    budget: Arc<Budget>,
    bytes: u64,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grant({})", self.bytes)
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Budget({} of {} bytes)", self.used(), self.limit)
    }
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            inner: Mutex::new(Inner {
                used: 0,
                peak: 0,
                spillers: VecDeque::new(),
            }),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes granted now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Most bytes ever granted at once.
    pub fn peak(&self) -> u64 {
        self.lock().peak
    }

    /// Grants `bytes` now if they fit.
    pub fn try_grant(self: &Arc<Self>, bytes: u64) -> Option<Grant> {
        let mut g = self.lock();
        if g.used + bytes > self.limit {
            return None;
        }
        g.used += bytes;
        g.peak = g.peak.max(g.used);
        Some(Grant {
            budget: self.clone(),
            bytes,
        })
    }

    /// Registers a held first part that may be asked to spill, oldest first.
    pub fn register(&self, s: Weak<dyn Spill>) {
        let mut g = self.lock();
        // Forget holders that are gone (no call into a holder under this lock).
        g.spillers.retain(|w| w.strong_count() > 0);
        g.spillers.push_back(s);
    }

    /// Asks the oldest holder still holding to spill; true if there was one.
    /// The budget's lock is not held while the holder is asked (spilling
    /// may drop a grant, which takes that lock).
    fn spill_oldest(&self) -> bool {
        loop {
            let next = self.lock().spillers.pop_front();
            let Some(w) = next else { return false };
            if let Some(s) = w.upgrade() {
                if s.holds() {
                    s.spill();
                    return true;
                }
            }
        }
    }

    /// Grants `bytes`, waiting up to `wait` for memory to be given back.
    /// While waiting it asks held first parts to spill, oldest first.
    pub async fn grant(self: &Arc<Self>, bytes: u64, wait: Duration) -> Result<Grant, BudgetError> {
        if bytes > self.limit {
            return Err(BudgetError::TooLarge {
                asked: bytes,
                limit: self.limit,
            });
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(g) = self.try_grant(bytes) {
                return Ok(g);
            }
            self.spill_oldest();
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                if let Some(g) = self.try_grant(bytes) {
                    return Ok(g);
                }
                return Err(BudgetError::Timeout {
                    limit: self.limit,
                    waited: wait,
                });
            }
        }
    }
}

impl Grant {
    /// Bytes this grant holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes over the bytes of `other` (one grant that grows).
    pub fn absorb(&mut self, mut other: Grant) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Gives back what this grant holds beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes >= self.bytes {
            return;
        }
        let back = self.bytes - bytes;
        self.bytes = bytes;
        let mut g = self.budget.lock();
        g.used -= back;
        drop(g);
        self.budget.freed.notify_waiters();
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut g = self.budget.lock();
        g.used -= self.bytes;
        drop(g);
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_grant_grows_and_shrinks() {
        let b = Budget::new(100);
        let mut a = b.try_grant(10).unwrap();
        a.absorb(b.try_grant(30).unwrap());
        assert_eq!((a.bytes(), b.used()), (40, 40));
        a.shrink_to(15);
        assert_eq!((a.bytes(), b.used()), (15, 15));
        a.shrink_to(20);
        assert_eq!(a.bytes(), 15, "shrinking never grows");
        drop(a);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn grants_bound_and_release() {
        let b = Budget::new(100);
        let a = b.try_grant(60).unwrap();
        assert!(b.try_grant(50).is_none());
        assert_eq!(b.used(), 60);
        drop(a);
        assert_eq!(b.used(), 0);
        assert_eq!(b.peak(), 60);
        assert!(matches!(
            b.grant(101, Duration::from_millis(1)).await,
            Err(BudgetError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn waiting_ends_when_memory_is_freed_or_times_out() {
        let b = Budget::new(100);
        let a = b.try_grant(100).unwrap();
        let e = b.grant(10, Duration::from_millis(20)).await.unwrap_err();
        assert!(matches!(e, BudgetError::Timeout { .. }));
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.grant(10, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap().bytes(), 10);
    }

    struct Held {
        asked: AtomicBool,
        grant: Mutex<Option<Grant>>,
    }
    impl Spill for Held {
        fn spill(&self) {
            self.asked.store(true, Ordering::SeqCst);
            self.grant.lock().unwrap().take();
        }
        fn holds(&self) -> bool {
            self.grant.lock().unwrap().is_some()
        }
    }

    #[tokio::test]
    async fn a_waiter_makes_the_oldest_held_part_spill() {
        let b = Budget::new(100);
        let old = Arc::new(Held {
            asked: AtomicBool::new(false),
            grant: Mutex::new(b.try_grant(50)),
        });
        let young = Arc::new(Held {
            asked: AtomicBool::new(false),
            grant: Mutex::new(b.try_grant(50)),
        });
        b.register(Arc::downgrade(&old) as Weak<dyn Spill>);
        b.register(Arc::downgrade(&young) as Weak<dyn Spill>);
        let g = b.grant(40, Duration::from_secs(5)).await.unwrap();
        assert!(old.asked.load(Ordering::SeqCst), "oldest spilled first");
        assert!(!young.asked.load(Ordering::SeqCst));
        assert_eq!(b.used(), 90);
        drop(g);
    }
}
