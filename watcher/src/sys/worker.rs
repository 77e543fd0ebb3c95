//! A long-lived thread that runs slow jobs (SQLite writes with synchronous FULL, /proc walks,
//! webhook calls) in order, so that the threads which hold a process or answer the kernel
//! never wait for them. Nothing is dropped: the queue is unbounded, and what it holds is
//! bounded by what feeds it (one hold per session at a time).
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

pub struct Worker {
    name: &'static str,
    tx: mpsc::Sender<Job>,
}

impl Worker {
    pub fn start(name: &'static str) -> std::io::Result<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for job in rx {
                    // A panicking job must not take the worker, and every later job, with it.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!(worker = name, "a job panicked");
                    }
                }
            })?;
        Ok(Worker { name, tx })
    }

    /// Queues `job`; never blocks.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        if self.tx.send(Box::new(job)).is_err() {
            tracing::error!(worker = self.name, "the worker thread is gone; job not run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_order_and_a_panic_does_not_stop_the_worker() {
        let w = Worker::start("test-worker").unwrap();
        let (tx, rx) = mpsc::channel();
        let t1 = tx.clone();
        w.submit(move || t1.send(1).unwrap());
        w.submit(|| panic!("a bad job"));
        w.submit(move || tx.send(2).unwrap());
        let limit = std::time::Duration::from_secs(10);
        assert_eq!(rx.recv_timeout(limit).unwrap(), 1);
        assert_eq!(rx.recv_timeout(limit).unwrap(), 2);
    }
}
