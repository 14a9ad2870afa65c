//! The threads that run plugin code: a small fixed pool per store, fed by a
//! queue. Plugin code never runs on a runtime worker (it is unknown code and
//! could stall the reactor), and a fixed pool keeps the thread count bounded
//! however many calls are in flight. Under load the threads stay busy
//! draining the queue instead of parking and waking once per call, which is
//! what made a per-call `spawn_blocking` expensive. A pool per store is a
//! bulkhead: a plugin that breaks the rules and blocks stalls only its store.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    idle_threads: usize,
}

/// A store's plugin threads.
#[derive(Clone)]
pub(crate) struct PluginThreads {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PluginThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginThreads").finish_non_exhaustive()
    }
}

impl PluginThreads {
    /// Starts `threads` threads named after the store. They live as long as
    /// the process, like the plugin.
    pub(crate) fn start(store_id: &str, threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        for index in 0..threads.max(1) {
            let shared = shared.clone();
            std::thread::Builder::new().name(format!("plugin-{store_id}-{index}")).spawn(move || work(&shared))?;
        }
        Ok(PluginThreads { shared })
    }

    /// Queues `job` to run on one of the threads.
    pub(crate) fn run(&self, job: impl FnOnce() + Send + 'static) {
        let wake = {
            let mut queue = lock(&self.shared.queue);
            queue.jobs.push_back(Box::new(job));
            queue.idle_threads > 0
        };
        // A busy pool finds the job when it next looks at the queue; waking is
        // only needed when a thread sleeps.
        if wake {
            self.shared.ready.notify_one();
        }
    }
}

fn work(shared: &Shared) {
    loop {
        let job = {
            let mut queue = lock(&shared.queue);
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                queue.idle_threads += 1;
                queue = shared.ready.wait(queue).unwrap_or_else(PoisonError::into_inner);
                queue.idle_threads -= 1;
            }
        };
        // A panic in host code must not kill the thread (plugin code cannot
        // unwind into the host: the ABI's entry points are guarded).
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a job on a plugin thread panicked");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
