//! Work a response leaves for after its bytes are on the socket.
//!
//! hyper drops a response body as soon as it has buffered the last frame,
//! before it writes that frame out, so whatever runs in the drop (for a
//! request, its access line) is added to the client's wait. A connection's
//! poll ([`crate::server`]) runs inside a [`scope`]; work handed to [`later`]
//! while it is open runs when that poll returns, after hyper's write. Outside
//! a scope (an HTTP/2 stream's task, a body dropped at shutdown) it runs at
//! once, so nothing handed over is ever left behind.
//!
//! The queue is per thread: the scope that opened it is the poll on this
//! thread that the work was handed over in.

use std::cell::RefCell;

/// Work to run after the write.
pub trait Later {
    fn run(self: Box<Self>);
}

struct Queue {
    open: bool,
    work: Vec<Box<dyn Later>>,
}

thread_local! {
    static QUEUE: RefCell<Queue> = const {
        RefCell::new(Queue {
            open: false,
            work: Vec::new(),
        })
    };
}

/// Runs `work` when the current scope closes, or now if none is open. A
/// body dropped while its thread is exiting, after the queue is gone, runs
/// its work at once too, rather than panicking in a destructor.
pub fn later(work: Box<dyn Later>) {
    let mut work = Some(work);
    let _ = QUEUE.try_with(|q| {
        let mut q = q.borrow_mut();
        if q.open {
            q.work.extend(work.take());
        }
    });
    if let Some(work) = work {
        work.run();
    }
}

/// Calls `f` with a scope open; work handed to [`later`] meanwhile runs
/// after `f` returns. A scope inside another leaves its work to the outer.
pub fn scope<T>(f: impl FnOnce() -> T) -> T {
    let opened = QUEUE.with_borrow_mut(|q| !std::mem::replace(&mut q.open, true));
    // Not `then_some(Close)`: that would build a `Close`, and so close the
    // outer scope, even when this one opened nothing.
    let _close = if opened { Some(Close) } else { None };
    f()
}

/// Closes the scope: runs what was queued, including what that queues.
/// If `f` panicked the work is dropped instead of run, and the scope still
/// closes, so the thread goes on running work at once.
struct Close;

impl Drop for Close {
    fn drop(&mut self) {
        loop {
            let batch = QUEUE.with_borrow_mut(|q| {
                if q.work.is_empty() {
                    q.open = false;
                    None
                } else {
                    Some(std::mem::take(&mut q.work))
                }
            });
            let Some(mut batch) = batch else { break };
            if std::thread::panicking() {
                batch.clear();
            } else {
                for work in batch.drain(..) {
                    work.run();
                }
            }
            // Keep the allocation for the next poll.
            QUEUE.with_borrow_mut(|q| {
                if q.work.capacity() == 0 {
                    q.work = batch;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    struct Note(Rc<RefCell<Vec<&'static str>>>, &'static str);

    impl Later for Note {
        fn run(self: Box<Self>) {
            self.0.borrow_mut().push(self.1);
        }
    }

    fn log() -> Rc<RefCell<Vec<&'static str>>> {
        Rc::new(RefCell::new(Vec::new()))
    }

    #[test]
    fn outside_a_scope_work_runs_at_once() {
        let seen = log();
        later(Box::new(Note(seen.clone(), "work")));
        assert_eq!(*seen.borrow(), ["work"]);
    }

    #[test]
    fn inside_a_scope_work_runs_after_it() {
        let seen = log();
        let s = seen.clone();
        scope(|| {
            later(Box::new(Note(s.clone(), "first")));
            later(Box::new(Note(s.clone(), "second")));
            s.borrow_mut().push("write");
        });
        assert_eq!(*seen.borrow(), ["write", "first", "second"]);
        // Closed: the next hand-over runs at once.
        later(Box::new(Note(seen.clone(), "after")));
        assert_eq!(seen.borrow().last(), Some(&"after"));
    }

    #[test]
    fn an_inner_scope_leaves_its_work_to_the_outer() {
        let seen = log();
        let s = seen.clone();
        scope(|| {
            scope(|| later(Box::new(Note(s.clone(), "inner"))));
            s.borrow_mut().push("outer body");
        });
        assert_eq!(*seen.borrow(), ["outer body", "inner"]);
    }

    struct Chain(Rc<RefCell<Vec<&'static str>>>);

    impl Later for Chain {
        fn run(self: Box<Self>) {
            self.0.borrow_mut().push("chain");
            later(Box::new(Note(self.0.clone(), "queued by work")));
        }
    }

    #[test]
    fn work_queued_while_closing_runs_too() {
        let seen = log();
        scope(|| later(Box::new(Chain(seen.clone()))));
        assert_eq!(*seen.borrow(), ["chain", "queued by work"]);
    }

    struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Later for Flag {
        fn run(self: Box<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Hands work over from its destructor.
    struct HandsOver(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Drop for HandsOver {
        fn drop(&mut self) {
            later(Box::new(Flag(self.0.clone())));
        }
    }

    thread_local! {
        static EXITING: RefCell<Option<HandsOver>> = const { RefCell::new(None) };
    }

    #[test]
    fn work_handed_over_while_the_thread_exits_runs_at_once() {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        std::thread::spawn(move || {
            // Registered before the queue, so destroyed after it: the
            // hand-over finds the queue gone.
            EXITING.with_borrow_mut(|e| *e = Some(HandsOver(flag)));
            scope(|| ());
        })
        .join()
        .expect("the thread exits cleanly");
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_panic_closes_the_scope() {
        let seen = log();
        let s = seen.clone();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scope(|| {
                later(Box::new(Note(s.clone(), "dropped")));
                panic!("a bug");
            })
        }));
        assert!(caught.is_err());
        assert!(seen.borrow().is_empty());
        later(Box::new(Note(seen.clone(), "at once")));
        assert_eq!(*seen.borrow(), ["at once"]);
    }
}
