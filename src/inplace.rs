//! Futures boxed where they are built.
//!
//! `Box::pin(future)` builds the future on the stack and copies all of it
//! to the heap, though before its first poll it holds only its arguments:
//! the request path boxes six futures of up to 1.7 KB each, and those
//! copies cost more than the allocations and push other data out of the
//! first-level cache. Allocating first and building the future into the
//! allocation lets the compiler write it once, where it stays.

use std::pin::Pin;

/// `Box::pin(make())`, with the value built in its allocation.
#[inline(always)]
pub fn pinned<T>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn the_boxed_future_runs_to_its_output() {
        let words = ["in", "place"];
        let joined = pinned(|| async move { words.join(" ") }).await;
        assert_eq!(joined, "in place");
    }

    #[test]
    fn the_value_is_dropped_once_with_its_box() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted(u64);
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::Relaxed);
            }
        }
        let boxed = pinned(|| Counted(42));
        assert_eq!(boxed.0, 42);
        assert_eq!(DROPS.load(Ordering::Relaxed), 0);
        drop(boxed);
        assert_eq!(DROPS.load(Ordering::Relaxed), 1);
    }
}
