//! `--thread-pool-size N` (N > 1): requests of the request queues run on N
//! threads of their own, so one slow request (a large read on a slow disk,
//! a metadata call on a busy directory) does not hold up the rest. The
//! queue's worker only takes chains off the ring; each pool thread puts its
//! request's reply on the used ring and signals the guest itself.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Requests in flight, for waiting until none are.
#[derive(Debug, Default)]
struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

/// A fixed set of threads running jobs in submission order (each job on
/// whichever thread is free).
pub struct Pool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    in_flight: Arc<InFlight>,
}

impl Pool {
    /// Starts `size` threads named `<name>-<i>`.
    pub fn new(size: usize, name: &str) -> io::Result<Pool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(InFlight::default());
        let mut threads = Vec::with_capacity(size);
        for i in 0..size {
            let rx = rx.clone();
            let in_flight = in_flight.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || run(&rx, &in_flight))?,
            );
        }
        Ok(Pool {
            tx: Some(tx),
            threads,
            in_flight,
        })
    }

    /// Queues `job`.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        *self
            .in_flight
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += 1;
        let sent = self.tx.as_ref().map(|tx| tx.send(Box::new(job)));
        if !matches!(sent, Some(Ok(()))) {
            // Only after drop, which needs `&mut self`: cannot happen.
            self.done();
        }
    }

    fn done(&self) {
        done(&self.in_flight);
    }

    /// Returns once every submitted job has finished.
    pub fn wait_idle(&self) {
        let mut n = self
            .in_flight
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            n = self
                .in_flight
                .idle
                .wait(n)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn done(in_flight: &InFlight) {
    let mut n = in_flight.count.lock().unwrap_or_else(|e| e.into_inner());
    *n = n.saturating_sub(1);
    if *n == 0 {
        in_flight.idle.notify_all();
    }
}

fn run(rx: &Mutex<Receiver<Job>>, in_flight: &InFlight) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok(job) = job else {
            return; // the pool is gone
        };
        // A job that panics must not take the thread (and the count) along.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        done(in_flight);
    }
}

impl Drop for Pool {
    /// Lets queued jobs finish, then joins the threads.
    fn drop(&mut self) {
        drop(self.tx.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn jobs_run_in_parallel_and_wait_idle_waits() {
        let pool = Pool::new(3, "t").unwrap();
        // Three jobs that can only finish together: they need 3 threads.
        let barrier = Arc::new(Barrier::new(3));
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (b, r) = (barrier.clone(), ran.clone());
            pool.submit(move || {
                b.wait();
                r.fetch_add(1, Ordering::SeqCst);
            });
        }
        pool.wait_idle();
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_panicking_job_does_not_stop_the_pool() {
        let pool = Pool::new(1, "t").unwrap();
        pool.submit(|| panic!("job failed"));
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        pool.submit(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        pool.wait_idle();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn drop_finishes_queued_jobs() {
        let ran = Arc::new(AtomicUsize::new(0));
        {
            let pool = Pool::new(2, "t").unwrap();
            for _ in 0..50 {
                let r = ran.clone();
                pool.submit(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
        assert_eq!(ran.load(Ordering::SeqCst), 50);
    }
}
