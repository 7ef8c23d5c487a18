//! The gate every vCPU thread passes before each KVM_RUN: where it parks
//! while the VM is paused and learns that the VM is stopping.
//!
//! Pausing sets a flag, then kicks each running vCPU thread with the kick
//! signal ([`kick::kick`]): its handler sets `immediate_exit` in the
//! thread's `kvm_run`, so KVM_RUN returns EINTR at once, even when the
//! signal lands just before the ioctl. The thread sees the flag and waits
//! on a condvar; [`VcpuGate::pause`] returns when every live thread is
//! parked. [`VcpuGate::resume`] wakes them; [`VcpuGate::stop`] wakes and
//! kicks them until they have all returned, and joins them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::kick;

/// How often waiting threads are kicked again.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// Errors of [`VcpuGate::pause`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateError {
    #[error("vCPU(s) {0:?} did not stop within {1:?}; the VM keeps running")]
    PauseTimeout(Vec<usize>, Duration),
    #[error("the vCPUs are not running")]
    NotStarted,
}

#[derive(Default)]
struct Inner {
    /// One per vCPU, by id.
    threads: Vec<JoinHandle<()>>,
    /// Which vCPUs wait in [`VcpuGate::park`].
    parked: Vec<bool>,
    paused: bool,
    /// A thread did not return when told to stop.
    stuck: bool,
}

/// Shared by the VM's owner and every vCPU thread.
#[derive(Default)]
pub struct VcpuGate {
    pause: AtomicBool,
    stop: AtomicBool,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl VcpuGate {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// vCPU side: the VM is stopping; leave the run loop.
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// vCPU side: a pause was asked for; call [`VcpuGate::park`].
    pub fn pause_requested(&self) -> bool {
        self.pause.load(Ordering::Acquire)
    }

    /// vCPU side: waits while the VM is paused (and not stopping).
    pub fn park(&self, id: u8) {
        let id = usize::from(id);
        let mut inner = self.lock();
        if inner.parked.len() <= id {
            inner.parked.resize(id + 1, false);
        }
        inner.parked[id] = true;
        self.changed.notify_all();
        while inner.paused && !self.should_stop() {
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner.parked[id] = false;
    }

    /// Owner side: the vCPU threads, by id, once spawned.
    pub fn started(&self, threads: Vec<JoinHandle<()>>) {
        let mut inner = self.lock();
        inner.parked = vec![false; threads.len()];
        inner.threads = threads;
    }

    /// Ids of the vCPUs that still run guest code (neither parked nor
    /// returned).
    fn unparked(inner: &Inner) -> Vec<usize> {
        inner
            .threads
            .iter()
            .enumerate()
            .filter(|(id, t)| !t.is_finished() && !inner.parked.get(*id).copied().unwrap_or(false))
            .map(|(id, _)| id)
            .collect()
    }

    /// Owner side: parks every vCPU; returns once all live vCPU threads
    /// wait in [`VcpuGate::park`]. On a timeout the pause is undone.
    pub fn pause(&self, timeout: Duration) -> Result<(), GateError> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        if inner.threads.is_empty() {
            return Err(GateError::NotStarted);
        }
        inner.paused = true;
        self.pause.store(true, Ordering::Release);
        loop {
            let running = Self::unparked(&inner);
            if running.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                inner.paused = false;
                self.pause.store(false, Ordering::Release);
                self.changed.notify_all();
                return Err(GateError::PauseTimeout(running, timeout));
            }
            for id in running {
                kick::kick(&inner.threads[id]);
            }
            inner = self
                .changed
                .wait_timeout(inner, KICK_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Owner side: lets parked vCPUs run again.
    pub fn resume(&self) {
        let mut inner = self.lock();
        inner.paused = false;
        self.pause.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// Owner side: tells every vCPU to return, kicks them until they have
    /// (for at most `timeout`) and joins them. False if one did not return
    /// (it is left running; see [`VcpuGate::stuck`]).
    pub fn stop(&self, timeout: Duration) -> bool {
        {
            let mut inner = self.lock();
            self.stop.store(true, Ordering::Release);
            inner.paused = false;
            self.pause.store(false, Ordering::Release);
            self.changed.notify_all();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut inner = self.lock();
            if inner.threads.iter().all(JoinHandle::is_finished) {
                for t in inner.threads.drain(..) {
                    let _ = t.join();
                }
                return true;
            }
            if Instant::now() >= deadline {
                inner.stuck = true;
                return false;
            }
            for t in inner.threads.iter().filter(|t| !t.is_finished()) {
                kick::kick(t);
            }
            drop(inner);
            std::thread::sleep(KICK_INTERVAL);
        }
    }

    /// A vCPU thread did not return when stopped (guest memory must stay
    /// mapped).
    pub fn stuck(&self) -> bool {
        self.lock().stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A thread that behaves like a vCPU's run loop without KVM.
    fn fake_vcpu(gate: &Arc<VcpuGate>, id: u8) -> JoinHandle<()> {
        kick::install_kick_handler();
        let gate = gate.clone();
        std::thread::spawn(move || {
            while !gate.should_stop() {
                if gate.pause_requested() {
                    gate.park(id);
                    continue;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }

    #[test]
    fn pause_parks_every_thread_and_stop_joins_them() {
        let gate = Arc::new(VcpuGate::new());
        assert_eq!(
            gate.pause(Duration::from_millis(10)),
            Err(GateError::NotStarted)
        );
        gate.started((0..3).map(|id| fake_vcpu(&gate, id)).collect());
        gate.pause(Duration::from_secs(10)).unwrap();
        assert!(gate.lock().parked.iter().all(|p| *p));
        gate.resume();
        gate.pause(Duration::from_secs(10)).unwrap();
        // Stopping a paused VM wakes the parked threads.
        assert!(gate.stop(Duration::from_secs(10)));
        assert!(gate.lock().threads.is_empty());
        assert!(!gate.stuck());
    }

    #[test]
    fn a_thread_that_never_parks_times_the_pause_out() {
        kick::install_kick_handler();
        let gate = Arc::new(VcpuGate::new());
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let busy = std::thread::spawn(move || {
            while !r.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        gate.started(vec![busy]);
        let e = gate.pause(Duration::from_millis(50)).unwrap_err();
        assert_eq!(
            e,
            GateError::PauseTimeout(vec![0], Duration::from_millis(50))
        );
        assert!(!gate.pause_requested());
        release.store(true, Ordering::Release);
        assert!(gate.stop(Duration::from_secs(10)));
    }
}
