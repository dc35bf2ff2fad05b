//! Per-provider concurrency caps with a bounded queue, to protect small
//! servers (LM Studio, a single llama.cpp) from more parallel requests than
//! they can take. A slot is held until the answer is read, or until the
//! stream ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    pub max_concurrent: u32,
    pub max_queue: u32,
    waiting: AtomicU32,
}

/// The provider is full and so is its queue.
#[derive(Debug, Clone, Copy)]
pub struct Saturated;

impl Limiter {
    fn new(max_concurrent: u32, max_queue: u32) -> Self {
        Limiter {
            slots: Arc::new(Semaphore::new(max_concurrent as usize)),
            max_concurrent,
            max_queue,
            waiting: AtomicU32::new(0),
        }
    }

    /// A slot now, or after waiting in the queue; `Saturated` when the queue is full.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Saturated> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Saturated);
        }
        let _queued = Queued(&self.waiting);
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Saturated)
    }
}

/// Leaves the queue when the wait ends, however it ends.
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Limiters by provider id; a reload that keeps a provider's numbers keeps
/// its limiter (and so the requests it counts).
#[derive(Debug, Default)]
pub struct LimiterTable {
    limiters: Mutex<HashMap<Arc<str>, Arc<Limiter>>>,
}

impl LimiterTable {
    pub fn limiter(
        &self,
        provider: &Arc<str>,
        max_concurrent: u32,
        max_queue: u32,
    ) -> Arc<Limiter> {
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let entry = limiters
            .entry(provider.clone())
            .or_insert_with(|| Arc::new(Limiter::new(max_concurrent, max_queue)));
        if entry.max_concurrent != max_concurrent || entry.max_queue != max_queue {
            *entry = Arc::new(Limiter::new(max_concurrent, max_queue));
        }
        entry.clone()
    }

    /// Holds exactly the installed snapshot's limiters, whatever a compile
    /// that was then rejected put here.
    pub fn reconcile(&self, installed: impl IntoIterator<Item = (Arc<str>, Arc<Limiter>)>) {
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        *limiters = installed.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queues_up_to_the_bound_then_refuses() {
        let table = LimiterTable::default();
        let limiter = table.limiter(&Arc::from("p"), 1, 1);
        let first = limiter.acquire().await.unwrap();
        let queued = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire().await.map(drop) })
        };
        // Let the second request join the queue.
        while limiter.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(limiter.acquire().await.is_err(), "the queue is full");
        drop(first);
        assert!(
            queued.await.unwrap().is_ok(),
            "the queued request gets the slot"
        );
        assert!(Arc::ptr_eq(&limiter, &table.limiter(&Arc::from("p"), 1, 1)));
        assert!(!Arc::ptr_eq(
            &limiter,
            &table.limiter(&Arc::from("p"), 2, 1)
        ));
    }
}
