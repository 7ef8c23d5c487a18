//! `vu-watch`: the thread that notices a vhost-user backend dying while its
//! device is idle, and reconnects it.
//!
//! A backend that dies must not take the VM down. A request in flight
//! notices by itself (the frontend marks the device reconnecting or
//! failed); an idle device would only notice at the guest's next
//! configuration access. So one thread epolls every device's socket: the
//! frontend waits for nothing between requests, so the socket becomes
//! readable only when the backend hangs up (or misbehaves). Then
//! [`VhostUserPci::check_backend`] decides; the socket is no longer
//! watched.
//!
//! A device with `reconnect=` goes to Reconnecting: this thread retries
//! its socket path after [`FIRST_RETRY`], doubling the wait up to
//! [`MAX_RETRY_DELAY`] ([`VhostUserPci::try_reconnect`], which replays the
//! whole setup), and watches the new socket once connected. The retries
//! stay that frequent for as long as the device waits: a connect to a
//! socket nobody listens on costs microseconds, and a restarted backend
//! is then found within 20 ms of listening (crash recovery's goal is
//! 50 ms; a 1 s cap gave up to a second). When the device's
//! limit runs out it gives up ([`VhostUserPci::give_up`]): the device
//! needs a reset, as without `reconnect=`, where `check_backend` marks the
//! device failed, sets DEVICE_NEEDS_RESET, sends the configuration
//! interrupt and logs once. A device that went Reconnecting without a
//! hang-up on its socket (a reply timed out) is found by a scan every
//! [`MAX_RETRY`]. SIGPIPE stays ignored (Rust's runtime ignores it, and
//! nothing here changes that), so writing to a dead backend is an EPIPE
//! error, not the VMM's death.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use devices::vhost_user::DeviceState;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::VhostUserPci;

/// The epoll token of the stop eventfd; devices use their index.
const STOP: u64 = u64::MAX;
/// The first retry of a lost backend's socket, after this long.
pub const FIRST_RETRY: Duration = Duration::from_millis(10);
/// The longest wait between two retries (doubling from [`FIRST_RETRY`]).
pub const MAX_RETRY_DELAY: Duration = Duration::from_millis(20);
/// How often devices are scanned for a Reconnecting state that came
/// without a hang-up (a reply timed out).
pub const MAX_RETRY: Duration = Duration::from_secs(1);

/// A device waiting for its backend to come back.
struct Retry {
    /// When the connection was found lost.
    since: Instant,
    /// The next attempt.
    next: Instant,
    /// The wait after the next attempt fails.
    delay: Duration,
    attempts: u32,
}

impl Retry {
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            next: now + FIRST_RETRY,
            delay: FIRST_RETRY,
            attempts: 0,
        }
    }
}

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
        let mut watched = Vec::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            let fd = d.connection_fd();
            if let Some(fd) = fd {
                add(&epoll, fd, i)?;
            }
            watched.push(fd);
        }
        let stop_rx = stop.try_clone()?;
        let count = devices.len();
        let thread = thread::Builder::new()
            .name("vu-watch".into())
            .spawn(move || watch(&epoll, &stop_rx, &devices, watched))?;
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

fn add(epoll: &Epoll, fd: RawFd, device: usize) -> io::Result<()> {
    let events = EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP;
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(events, device as u64),
    )
}

fn watch(
    epoll: &Epoll,
    stop: &EventFd,
    devices: &[Arc<VhostUserPci>],
    mut watched: Vec<Option<RawFd>>,
) {
    let mut events = vec![EpollEvent::default(); devices.len() + 1];
    let mut retries: Vec<Option<Retry>> = devices.iter().map(|_| None).collect();
    loop {
        let now = Instant::now();
        let wake = retries
            .iter()
            .flatten()
            .map(|r| r.next)
            .min()
            .unwrap_or(now + MAX_RETRY)
            .min(now + MAX_RETRY);
        let timeout = i32::try_from(wake.saturating_duration_since(now).as_millis())
            .unwrap_or(i32::MAX)
            .max(1);
        let n = match epoll.wait(timeout, &mut events) {
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
            let Some(i) = usize::try_from(event.data())
                .ok()
                .filter(|&i| i < devices.len())
            else {
                continue;
            };
            // Not gone: a reply a vCPU was about to read woke us; the
            // socket is no longer readable once we got the device's lock.
            if devices[i].check_backend() {
                unwatch(epoll, &mut watched[i]);
            }
        }
        let now = Instant::now();
        for (i, device) in devices.iter().enumerate() {
            if retries[i].is_none() && device.state() == DeviceState::Reconnecting {
                unwatch(epoll, &mut watched[i]);
                retries[i] = Some(Retry::new(now));
            }
            let Some(retry) = retries[i].as_mut().filter(|r| r.next <= now) else {
                continue;
            };
            if let Some(limit) = device.reconnect_limit() {
                if now.duration_since(retry.since) >= limit {
                    device.give_up(limit);
                    retries[i] = None;
                    continue;
                }
            }
            retry.attempts += 1;
            match device.try_reconnect() {
                DeviceState::Reconnecting => {
                    retry.next = Instant::now() + retry.delay;
                    retry.delay = (retry.delay * 2).min(MAX_RETRY_DELAY);
                }
                DeviceState::Failed => retries[i] = None,
                DeviceState::Ready | DeviceState::Active => {
                    log::info!(
                        "vu-watch: {} reconnected {} ms after the backend was lost ({} attempt(s))",
                        device.config().socket.display(),
                        retry.since.elapsed().as_millis(),
                        retry.attempts
                    );
                    retries[i] = None;
                    let fd = device.connection_fd();
                    if let Some(fd) = fd {
                        if let Err(e) = add(epoll, fd, i) {
                            log::warn!(
                                "vu-watch: cannot watch {}: {e}",
                                device.config().socket.display()
                            );
                        }
                    }
                    watched[i] = fd;
                }
            }
        }
    }
}

/// Stops watching a socket (before its connection is replaced).
fn unwatch(epoll: &Epoll, fd: &mut Option<RawFd>) {
    if let Some(fd) = fd.take() {
        let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

#[cfg(test)]
mod tests;
