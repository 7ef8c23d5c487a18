//! [`VhostUserConn`]: the requests the frontend sends, between the device
//! logic and the socket, so tests can put a fake backend behind it.
//!
//! [`TimedFrontend`] is the real one: the `vhost` crate's `Frontend` with a
//! deadline on every request. That crate retries a receive that times out
//! (EAGAIN) for ever, so a socket read timeout cannot bound a request; a
//! backend that accepts and never replies would hang the VMM's start, its
//! `vu-activate` thread and `vu-watch`. Instead a watchdog thread shuts the
//! socket down once a request has waited [`REPLY_TIMEOUT`] for its reply:
//! the request fails as a lost connection, logged naming the socket and the
//! request.

use std::fs::File;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use log::warn;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// One vhost-user connection, seen from the frontend. Every method is
/// required; each is one request (and its reply or ack).
pub trait VhostUserConn: Send {
    /// Whether the following requests carry NEED_REPLY (REPLY_ACK).
    fn set_need_reply(&mut self, on: bool);
    /// SET_OWNER.
    fn set_owner(&mut self) -> vhost::Result<()>;
    /// RESET_OWNER.
    fn reset_owner(&mut self) -> vhost::Result<()>;
    /// RESET_DEVICE.
    fn reset_device(&mut self) -> vhost::Result<()>;
    /// GET_FEATURES.
    fn get_features(&mut self) -> vhost::Result<u64>;
    /// SET_FEATURES.
    fn set_features(&mut self, features: u64) -> vhost::Result<()>;
    /// GET_PROTOCOL_FEATURES.
    fn get_protocol_features(&mut self) -> vhost::Result<VhostUserProtocolFeatures>;
    /// SET_PROTOCOL_FEATURES.
    fn set_protocol_features(&mut self, features: VhostUserProtocolFeatures) -> vhost::Result<()>;
    /// GET_QUEUE_NUM.
    fn get_queue_num(&mut self) -> vhost::Result<u64>;
    /// SET_MEM_TABLE.
    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()>;
    /// GET_INFLIGHT_FD: a new in-flight region for `num_queues` queues of
    /// `queue_size`, and its description.
    fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> vhost::Result<(VhostUserInflight, File)>;
    /// SET_INFLIGHT_FD: the region `file` described by `inflight`.
    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: &File) -> vhost::Result<()>;
    /// SET_VRING_NUM.
    fn set_vring_num(&mut self, queue: usize, num: u16) -> vhost::Result<()>;
    /// SET_VRING_ADDR (frontend userspace addresses).
    fn set_vring_addr(&mut self, queue: usize, config: &VringConfigData) -> vhost::Result<()>;
    /// SET_VRING_BASE.
    fn set_vring_base(&mut self, queue: usize, base: u16) -> vhost::Result<()>;
    /// GET_VRING_BASE (stops the ring).
    fn get_vring_base(&mut self, queue: usize) -> vhost::Result<u32>;
    /// SET_VRING_CALL.
    fn set_vring_call(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()>;
    /// SET_VRING_KICK.
    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()>;
    /// SET_VRING_ENABLE.
    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> vhost::Result<()>;
    /// GET_CONFIG of `size` bytes at `offset`.
    fn get_config(&mut self, offset: u32, size: u32) -> vhost::Result<Vec<u8>>;
    /// SET_CONFIG of `data` at `offset`.
    fn set_config(&mut self, offset: u32, data: &[u8]) -> vhost::Result<()>;
    /// The socket, for the VMM's epoll; `None` when there is none (tests).
    fn raw_fd(&self) -> Option<RawFd>;
    /// Whether the peer hung up (or sent something unasked), without
    /// blocking.
    fn peer_gone(&self) -> bool;
}

impl VhostUserConn for Frontend {
    fn set_need_reply(&mut self, on: bool) {
        let flags = if on {
            VhostUserHeaderFlag::NEED_REPLY
        } else {
            VhostUserHeaderFlag::empty()
        };
        self.set_hdr_flags(flags);
    }

    fn set_owner(&mut self) -> vhost::Result<()> {
        VhostBackend::set_owner(self)
    }

    fn reset_owner(&mut self) -> vhost::Result<()> {
        VhostBackend::reset_owner(self)
    }

    fn reset_device(&mut self) -> vhost::Result<()> {
        VhostUserFrontend::reset_device(self)
    }

    fn get_features(&mut self) -> vhost::Result<u64> {
        VhostBackend::get_features(self)
    }

    fn set_features(&mut self, features: u64) -> vhost::Result<()> {
        VhostBackend::set_features(self, features)
    }

    fn get_protocol_features(&mut self) -> vhost::Result<VhostUserProtocolFeatures> {
        VhostUserFrontend::get_protocol_features(self)
    }

    fn set_protocol_features(&mut self, features: VhostUserProtocolFeatures) -> vhost::Result<()> {
        VhostUserFrontend::set_protocol_features(self, features)
    }

    fn get_queue_num(&mut self) -> vhost::Result<u64> {
        VhostUserFrontend::get_queue_num(self)
    }

    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        VhostBackend::set_mem_table(self, regions)
    }

    fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> vhost::Result<(VhostUserInflight, File)> {
        let ask = VhostUserInflight {
            num_queues,
            queue_size,
            ..Default::default()
        };
        VhostUserFrontend::get_inflight_fd(self, &ask)
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: &File) -> vhost::Result<()> {
        VhostUserFrontend::set_inflight_fd(self, inflight, file.as_raw_fd())
    }

    fn set_vring_num(&mut self, queue: usize, num: u16) -> vhost::Result<()> {
        VhostBackend::set_vring_num(self, queue, num)
    }

    fn set_vring_addr(&mut self, queue: usize, config: &VringConfigData) -> vhost::Result<()> {
        VhostBackend::set_vring_addr(self, queue, config)
    }

    fn set_vring_base(&mut self, queue: usize, base: u16) -> vhost::Result<()> {
        VhostBackend::set_vring_base(self, queue, base)
    }

    fn get_vring_base(&mut self, queue: usize) -> vhost::Result<u32> {
        VhostBackend::get_vring_base(self, queue)
    }

    fn set_vring_call(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        VhostBackend::set_vring_call(self, queue, fd)
    }

    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        VhostBackend::set_vring_kick(self, queue, fd)
    }

    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> vhost::Result<()> {
        VhostUserFrontend::set_vring_enable(self, queue, enable)
    }

    fn get_config(&mut self, offset: u32, size: u32) -> vhost::Result<Vec<u8>> {
        let buf = vec![0u8; size as usize];
        VhostUserFrontend::get_config(self, offset, size, VhostUserConfigFlags::empty(), &buf)
            .map(|(_, data)| data)
    }

    fn set_config(&mut self, offset: u32, data: &[u8]) -> vhost::Result<()> {
        VhostUserFrontend::set_config(self, offset, VhostUserConfigFlags::empty(), data)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }

    fn peer_gone(&self) -> bool {
        super::peer_gone(self)
    }
}

/// How long a request may wait for its reply (or to be sent) before the
/// connection is shut down as dead.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `vhost` crate's frontend with a [`REPLY_TIMEOUT`] on every request.
pub struct TimedFrontend {
    inner: Frontend,
    path: PathBuf,
    timeout: Duration,
}

impl TimedFrontend {
    /// A frontend on `stream` (the backend at `path`, named in logs) for
    /// `queues` queues.
    pub fn new(stream: UnixStream, path: PathBuf, queues: u64) -> Self {
        Self::with_timeout(stream, path, queues, REPLY_TIMEOUT)
    }

    /// [`new`](Self::new) with another deadline (tests).
    pub fn with_timeout(stream: UnixStream, path: PathBuf, queues: u64, timeout: Duration) -> Self {
        Self {
            inner: Frontend::from_stream(stream, queues),
            path,
            timeout,
        }
    }

    /// Runs `request` (named `what` in the log) on the frontend, with the
    /// socket shut down if it takes longer than the deadline.
    fn timed<T>(
        &mut self,
        what: &str,
        request: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> vhost::Result<T> {
        let armed = Watchdog::get().arm(self.inner.as_raw_fd(), self.timeout);
        let result = request(&mut self.inner);
        if !armed.disarm() {
            return result;
        }
        warn!(
            "vhost-user {}: no reply to {what} within {:?}; closing the connection",
            self.path.display(),
            self.timeout
        );
        // What the shut-down socket made of it ("partial message") would
        // hide why.
        result.map_err(|_| {
            vhost::Error::IOError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply within {:?}", self.timeout),
            ))
        })
    }
}

/// One request waiting for its reply.
struct Armed {
    id: u64,
    fd: RawFd,
    deadline: Instant,
    fired: Arc<AtomicBool>,
}

/// The thread that shuts down the socket of a request past its deadline.
/// While a request is armed its connection is borrowed by the request, so
/// its fd stays open; disarming takes the same lock as firing.
struct Watchdog {
    armed: Mutex<Vec<Armed>>,
    changed: Condvar,
    next_id: AtomicU64,
}

/// Disarms its request when dropped.
struct ArmedGuard {
    id: u64,
    fired: Arc<AtomicBool>,
}

impl ArmedGuard {
    /// Disarms; whether the deadline had passed (the socket is shut down).
    fn disarm(self) -> bool {
        let fired = self.fired.clone();
        drop(self);
        fired.load(Ordering::Acquire)
    }
}

impl Drop for ArmedGuard {
    fn drop(&mut self) {
        let w = Watchdog::get();
        let mut armed = w.armed.lock().unwrap_or_else(|e| e.into_inner());
        armed.retain(|a| a.id != self.id);
    }
}

impl Watchdog {
    /// The one watchdog, its thread started on first use.
    fn get() -> &'static Watchdog {
        static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
        static STARTED: OnceLock<()> = OnceLock::new();
        let w = WATCHDOG.get_or_init(|| Watchdog {
            armed: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            next_id: AtomicU64::new(0),
        });
        STARTED.get_or_init(|| {
            if let Err(e) = std::thread::Builder::new()
                .name("vu-deadline".into())
                .spawn(|| Watchdog::get().run())
            {
                warn!("vhost-user: cannot start the request deadline thread ({e}); requests wait for their replies without a deadline");
            }
        });
        w
    }

    fn arm(&self, fd: RawFd, timeout: Duration) -> ArmedGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fired = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + timeout;
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        armed.push(Armed {
            id,
            fd,
            deadline,
            fired: fired.clone(),
        });
        self.changed.notify_one();
        ArmedGuard { id, fired }
    }

    fn run(&self) {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            for a in armed.iter().filter(|a| a.deadline <= now) {
                if !a.fired.swap(true, Ordering::AcqRel) {
                    // Ends the request's send or receive with an error or
                    // end of file. The fd is open: its request holds the
                    // connection until it disarms, which needs this lock.
                    // SAFETY: shutdown(2) on a descriptor its request
                    // keeps open (see above) touches no memory.
                    unsafe { libc::shutdown(a.fd, libc::SHUT_RDWR) };
                }
            }
            let next = armed
                .iter()
                .filter(|a| !a.fired.load(Ordering::Acquire))
                .map(|a| a.deadline)
                .min();
            armed = match next {
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    self.changed
                        .wait_timeout(armed, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(armed).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

impl VhostUserConn for TimedFrontend {
    fn set_need_reply(&mut self, on: bool) {
        self.inner.set_need_reply(on);
    }
    fn set_owner(&mut self) -> vhost::Result<()> {
        self.timed("SET_OWNER", |f| f.set_owner())
    }
    fn reset_owner(&mut self) -> vhost::Result<()> {
        self.timed("RESET_OWNER", |f| f.reset_owner())
    }
    fn reset_device(&mut self) -> vhost::Result<()> {
        self.timed("RESET_DEVICE", VhostUserConn::reset_device)
    }
    fn get_features(&mut self) -> vhost::Result<u64> {
        self.timed("GET_FEATURES", VhostUserConn::get_features)
    }
    fn set_features(&mut self, features: u64) -> vhost::Result<()> {
        self.timed("SET_FEATURES", |f| VhostUserConn::set_features(f, features))
    }
    fn get_protocol_features(&mut self) -> vhost::Result<VhostUserProtocolFeatures> {
        self.timed("GET_PROTOCOL_FEATURES", |f| {
            VhostUserConn::get_protocol_features(f)
        })
    }
    fn set_protocol_features(&mut self, features: VhostUserProtocolFeatures) -> vhost::Result<()> {
        self.timed("SET_PROTOCOL_FEATURES", |f| {
            VhostUserConn::set_protocol_features(f, features)
        })
    }
    fn get_queue_num(&mut self) -> vhost::Result<u64> {
        self.timed("GET_QUEUE_NUM", VhostUserConn::get_queue_num)
    }
    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        self.timed("SET_MEM_TABLE", |f| {
            VhostUserConn::set_mem_table(f, regions)
        })
    }
    fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> vhost::Result<(VhostUserInflight, File)> {
        self.timed("GET_INFLIGHT_FD", |f| {
            VhostUserConn::get_inflight_fd(f, num_queues, queue_size)
        })
    }
    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: &File) -> vhost::Result<()> {
        self.timed("SET_INFLIGHT_FD", |f| {
            VhostUserConn::set_inflight_fd(f, inflight, file)
        })
    }
    fn set_vring_num(&mut self, queue: usize, num: u16) -> vhost::Result<()> {
        self.timed("SET_VRING_NUM", |f| {
            VhostUserConn::set_vring_num(f, queue, num)
        })
    }
    fn set_vring_addr(&mut self, queue: usize, config: &VringConfigData) -> vhost::Result<()> {
        self.timed("SET_VRING_ADDR", |f| {
            VhostUserConn::set_vring_addr(f, queue, config)
        })
    }
    fn set_vring_base(&mut self, queue: usize, base: u16) -> vhost::Result<()> {
        self.timed("SET_VRING_BASE", |f| {
            VhostUserConn::set_vring_base(f, queue, base)
        })
    }
    fn get_vring_base(&mut self, queue: usize) -> vhost::Result<u32> {
        self.timed("GET_VRING_BASE", |f| {
            VhostUserConn::get_vring_base(f, queue)
        })
    }
    fn set_vring_call(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        self.timed("SET_VRING_CALL", |f| {
            VhostUserConn::set_vring_call(f, queue, fd)
        })
    }
    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        self.timed("SET_VRING_KICK", |f| {
            VhostUserConn::set_vring_kick(f, queue, fd)
        })
    }
    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> vhost::Result<()> {
        self.timed("SET_VRING_ENABLE", |f| {
            VhostUserConn::set_vring_enable(f, queue, enable)
        })
    }
    fn get_config(&mut self, offset: u32, size: u32) -> vhost::Result<Vec<u8>> {
        self.timed("GET_CONFIG", |f| VhostUserConn::get_config(f, offset, size))
    }
    fn set_config(&mut self, offset: u32, data: &[u8]) -> vhost::Result<()> {
        self.timed("SET_CONFIG", |f| VhostUserConn::set_config(f, offset, data))
    }
    fn raw_fd(&self) -> Option<RawFd> {
        self.inner.raw_fd()
    }
    fn peer_gone(&self) -> bool {
        self.inner.peer_gone()
    }
}
