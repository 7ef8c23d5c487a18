//! `vu-watch`: the thread that notices a vhost-user backend dying while its
//! device is idle.
//!
//! A backend that dies must not take the VM down. A request in flight
//! notices by itself (the frontend marks the device failed); an idle device
//! would only notice at the guest's next configuration access. So one
//! thread epolls every device's socket: the frontend waits for nothing
//! between requests, so the socket becomes readable only when the backend
//! hangs up (or misbehaves). Then [`VhostUserPci::check_backend`] marks the
//! device failed, sets DEVICE_NEEDS_RESET, sends the configuration
//! interrupt and logs once; the socket is then no longer watched. SIGPIPE
//! stays ignored (Rust's runtime ignores it, and nothing here changes
//! that), so writing to a dead backend is an EPIPE error, not the VMM's
//! death.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::VhostUserPci;

/// The epoll token of the stop eventfd; devices use their index.
const STOP: u64 = u64::MAX;

/// The running `vu-watch` thread; dropping it stops and joins the thread.
pub struct Watcher {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `devices`' sockets.
    pub fn start(devices: Vec<Arc<VhostUserPci>>) -> io::Result<Watcher> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        for (i, d) in devices.iter().enumerate() {
            if let Some(fd) = d.connection_fd() {
                let events = EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP;
                epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, i as u64))?;
            }
        }
        let stop_rx = stop.try_clone()?;
        let count = devices.len();
        let thread = thread::Builder::new()
            .name("vu-watch".into())
            .spawn(move || watch(&epoll, &stop_rx, &devices))?;
        log::info!("vu-watch: watching {count} vhost-user backend socket(s)");
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            log::warn!("vu-watch: cannot stop the thread: {e}");
            return;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(epoll: &Epoll, stop: &EventFd, devices: &[Arc<VhostUserPci>]) {
    let mut events = vec![EpollEvent::default(); devices.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("vu-watch: epoll_wait: {e}; backends are no longer watched");
                return;
            }
        };
        for event in &events[..n] {
            if event.data() == STOP {
                let _ = stop.read();
                return;
            }
            let Some(device) = usize::try_from(event.data())
                .ok()
                .and_then(|i| devices.get(i))
            else {
                continue;
            };
            // Not gone: a reply a vCPU was about to read woke us; the
            // socket is no longer readable once we got the device's lock.
            if device.check_backend() {
                if let Some(fd) = device.connection_fd() {
                    let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
