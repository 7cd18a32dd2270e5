//! Memory for queries: one pool for the whole process, and a cap per session inside it.
//!
//! DataFusion gives each runtime its own pool, so a runtime per session (for a per-session
//! cap) would let sessions together hold their caps times their number. Instead every
//! session's runtime gets a [`SessionPool`]: it counts what the session's queries hold,
//! refuses growth past the session's cap, and reserves everything in the one global pool
//! too, which refuses growth past `--memory`. Nothing else in the process makes a pool, and
//! no network role may `SET datafusion.runtime.*` (which would rebuild a session's runtime
//! around a pool of its own): see `access.rs`.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::resources_datafusion_err;
use datafusion::error::Result;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
    UnboundedMemoryPool,
};

/// The process's pool: `limit` bytes for all queries together (unbounded if `None`), with
/// the largest consumers named when it is full.
pub fn global_pool(limit: Option<usize>) -> Arc<dyn MemoryPool> {
    let top = NonZeroUsize::new(5).expect("5 is not zero");
    match limit {
        Some(limit) => Arc::new(TrackConsumersPool::new(GreedyMemoryPool::new(limit), top)),
        None => Arc::new(UnboundedMemoryPool::default()),
    }
}

/// One session's share of the global pool: at most `limit` bytes, and never more than the
/// global pool has left.
#[derive(Debug)]
pub struct SessionPool {
    global: Arc<dyn MemoryPool>,
    limit: usize,
    reserved: AtomicUsize,
}

impl SessionPool {
    /// A session's pool of at most `limit` bytes inside `global`.
    pub fn new(global: Arc<dyn MemoryPool>, limit: usize) -> Self {
        Self {
            global,
            limit,
            reserved: AtomicUsize::new(0),
        }
    }
}

impl fmt::Display for SessionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "session pool ({} of {} bytes) in {}",
            self.reserved.load(Ordering::Relaxed),
            self.limit,
            self.global
        )
    }
}

impl MemoryPool for SessionPool {
    fn name(&self) -> &str {
        "proxima-session"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.global.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.global.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.global.grow(reservation, additional);
        self.reserved.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.global.shrink(reservation, shrink);
        self.reserved.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(additional).filter(|total| *total <= self.limit)
            })
            .map_err(|held| {
                resources_datafusion_err!(
                    "this login's queries hold {held} bytes; {additional} more would pass its limit of {} bytes \
                     (--session-memory)",
                    self.limit
                )
            })?;
        if let Err(e) = self.global.try_grow(reservation, additional) {
            self.reserved.fetch_sub(additional, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_the_global_limit() {
        let global = global_pool(Some(100));
        let a: Arc<dyn MemoryPool> = Arc::new(SessionPool::new(Arc::clone(&global), 80));
        let b: Arc<dyn MemoryPool> = Arc::new(SessionPool::new(Arc::clone(&global), 80));
        let held_a = MemoryConsumer::new("a").register(&a);
        let held_b = MemoryConsumer::new("b").register(&b);
        held_a.try_grow(60).unwrap();
        // Within b's own cap, beyond what the process has left.
        let err = held_b.try_grow(60).unwrap_err().to_string();
        assert!(err.contains("Resources exhausted"), "{err}");
        assert_eq!(b.reserved(), 0, "a refused growth holds nothing");
        held_b.try_grow(40).unwrap();
        assert_eq!(global.reserved(), 100);
        // Beyond a's own cap, whatever the process has.
        held_b.free();
        let err = held_a.try_grow(30).unwrap_err().to_string();
        assert!(err.contains("--session-memory"), "{err}");
        held_a.try_grow(20).unwrap();
        drop(held_a);
        assert_eq!((a.reserved(), global.reserved()), (0, 0));
    }

    /// Two real sessions of one factory: a query that fits its login's cap still fails when
    /// the other session holds what the process has left, and runs once that is freed.
    #[tokio::test]
    async fn two_sessions_together_cannot_pass_the_global_limit() {
        const MIB: usize = 1 << 20;
        let store = crate::Store::open("memory://").unwrap();
        let options = crate::SessionOptions {
            memory_limit: Some(64 * MIB),
            session_memory_limit: Some(60 * MIB),
            target_partitions: Some(1),
            ..Default::default()
        };
        let factory = crate::SessionFactory::new(store, options).unwrap();
        let a = factory.session().await.unwrap();
        let b = factory.session().await.unwrap();
        // A hash join keeps its build side in memory and cannot spill.
        let query = "SELECT count(*) FROM generate_series(1, 400000) a JOIN generate_series(1, 400000) b USING (value)";
        let held = MemoryConsumer::new("session a").register(&a.runtime_env().memory_pool);
        held.try_grow(58 * MIB).unwrap();
        let err = b.sql(query).await.unwrap().collect().await.unwrap_err().to_string();
        assert!(err.contains("Resources exhausted"), "{err}");
        drop(held);
        let counted = b.sql(query).await.unwrap().collect().await.unwrap();
        assert_eq!(
            counted[0]
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0),
            400_000
        );
    }
}
