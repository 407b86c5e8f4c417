//! The threads that run batch jobs: they take steps from a queue and block
//! while it is empty (a futex wait, no spinning), so a stream of small,
//! cheap batches costs one wake-up each. A job shares a costly batch with the
//! rayon pool itself (`Engine::verify_batch_streaming`), which is where
//! verification runs in parallel.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};

/// One step of a batch job.
pub(crate) type Task = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of named threads fed by one queue; they end when it is dropped.
pub(crate) struct Dispatch {
    tx: Sender<Task>,
}

impl Dispatch {
    /// Starts `threads` threads (at least one).
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Task>();
        let rx: Arc<Mutex<Receiver<Task>>> = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("jotd-batch-{i}"))
                .spawn(move || {
                    loop {
                        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match next {
                            Ok(task) => task(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self { tx })
    }

    /// Queues a step.
    pub(crate) fn spawn(&self, task: Task) {
        // The threads outlive every sender but this one.
        let _ = self.tx.send(task);
    }
}
