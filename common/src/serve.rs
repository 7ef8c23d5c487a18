//! The serve loop: accept a frontend, serve it with a fresh backend
//! instance (its own vrings, memory map and worker threads from
//! `vhost-user-backend`), and when it disconnects (a guest reboot, a VMM
//! restart) accept the next one on the same socket. SIGTERM quiesces the
//! current backend and returns, so the caller can flush and exit 0.
//!
//! One instance per connection is what keeps nothing from a previous
//! frontend alive: `vhost-user-backend` keeps ownership and ring state in
//! its handler, so a reused handler would refuse the next SET_OWNER.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread;
use std::time::Duration;

use vhost::vhost_user::Error as VhostUserError;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringEpollHandler};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::relay::{self, RelayDir};
use crate::signals::Shutdown;
use crate::socket::BoundSocket;
use crate::systemd::{self, Watchdog};

/// Guest memory as the backends see it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;
pub use crate::vring::Vring;

/// A backend instance serving one connection.
pub trait Connection: VhostUserBackend<Bitmap = (), Vring = Vring> + Send + Sync + 'static {
    /// Stops taking new requests from the rings and returns once the
    /// requests already taken are complete (see [`Gate`]).
    fn quiesce(&self);

    /// Where the relay installs an in-flight region (SET_INFLIGHT_FD) for
    /// the connection's workers; `None`: the device does not track
    /// requests in flight, and INFLIGHT_SHMFD is not offered.
    fn inflight(&self) -> Option<Arc<crate::inflight::Slot>> {
        None
    }

    /// Adds the connection's own descriptors (a tap, say) to its worker
    /// threads' event loops, `workers[i]` being thread `i`'s. Their event
    /// ids must be above `num_queues()`. Runs before the frontend's first
    /// message is read.
    fn register_listeners(&self, _workers: &[Arc<VringEpollHandler<Arc<Self>>>]) -> io::Result<()>
    where
        Self: Sized,
    {
        Ok(())
    }
}

/// Errors of the serve loop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Creating the per-connection backend failed.
    #[error("cannot set up a backend for the new connection on {socket}: {source}")]
    Backend {
        /// The socket.
        socket: String,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `vhost-user-backend` could not start.
    #[error("cannot serve a connection on {socket}: {cause}")]
    Daemon {
        /// The socket.
        socket: String,
        /// Cause.
        cause: vhost_user_backend::Error,
    },
    /// poll/accept failed.
    #[error("waiting on {socket}: {source}")]
    Io {
        /// The socket.
        socket: String,
        /// Cause.
        source: io::Error,
    },
}

/// Lets worker threads process rings until [`Gate::close`], which waits for
/// those inside to leave. Cheap when open: one uncontended read lock.
#[derive(Debug, Default)]
pub struct Gate {
    closed: RwLock<bool>,
}

/// Held while processing a ring; see [`Gate::enter`].
pub type GatePass<'a> = RwLockReadGuard<'a, bool>;

impl Gate {
    /// `None` once closed: the caller must not touch the rings.
    pub fn enter(&self) -> Option<GatePass<'_>> {
        let g = self.closed.read().unwrap_or_else(|e| e.into_inner());
        if *g {
            None
        } else {
            Some(g)
        }
    }

    /// Closes the gate; returns after every holder of a pass has left.
    pub fn close(&self) {
        *self.closed.write().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Returns once every pass handed out before the call is given back;
    /// the gate stays as it was. Passes asked for meanwhile wait (the lock
    /// prefers writers), so a busy worker cannot hold this off for long.
    pub fn sync(&self) {
        drop(self.closed.write().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Exit events for `vhost-user-backend`'s worker threads.
///
/// `vhost-user-backend` 0.21 registers the consumer end with
/// `into_raw_fd()` and never closes it, which would leak one descriptor
/// per worker per connection. We keep the numbers and close them when the
/// connection's backend instance is dropped, which happens only after the
/// handler joined its workers and dropped their epoll instances.
#[derive(Debug, Default)]
pub struct ExitEvents {
    consumers: Mutex<Vec<RawFd>>,
}

impl ExitEvents {
    /// For `VhostUserBackend::exit_event`.
    pub fn create(&self) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok((consumer, notifier)) => {
                self.consumers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(consumer.as_raw_fd());
                Some((consumer, notifier))
            }
            Err(e) => {
                log::error!("cannot create a worker exit event: {e}");
                None
            }
        }
    }
}

impl Drop for ExitEvents {
    fn drop(&mut self) {
        for fd in self
            .consumers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            // A consumer end that vhost-user-backend took with into_raw_fd()
            // and never closes (see the type's doc); the instance owning it
            // is being dropped, so no epoll or thread uses it any more, and
            // each number is closed exactly once.
            let _ = nix::unistd::close(fd);
        }
    }
}

/// Waits until one of `fds` is readable; `None` on timeout.
fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Option<usize>> {
    use nix::poll::{poll, PollFd, PollFlags};
    let mut pfds: Vec<PollFd> = fds
        .iter()
        .map(|&fd| PollFd::new(fd, PollFlags::POLLIN))
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    loop {
        match poll(&mut pfds, ms) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(0) => return Ok(None),
            Ok(_) => {
                return Ok(pfds
                    .iter()
                    .position(|p| p.revents().is_some_and(|r| !r.is_empty())))
            }
        }
    }
}

/// Waits for `fds` while keeping the systemd watchdog fed.
fn wait_with_watchdog(fds: &[RawFd], watchdog: &mut Watchdog) -> io::Result<usize> {
    loop {
        watchdog.tick();
        if let Some(i) = wait_readable(fds, watchdog.timeout())? {
            return Ok(i);
        }
    }
}

/// Accepts the pending connection on `listener`.
fn accept(listener: &vhost::vhost_user::Listener) -> io::Result<UnixStream> {
    loop {
        match listener.accept() {
            Ok(Some(s)) => return Ok(s),
            Ok(None) => continue,
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

fn is_disconnect(e: &vhost_user_backend::Error) -> bool {
    matches!(
        e,
        vhost_user_backend::Error::HandleRequest(
            VhostUserError::Disconnected
                | VhostUserError::PartialMessage
                | VhostUserError::SocketBroken(_)
        )
    )
}

/// Serves frontends on `socket` one after the other until `shutdown`;
/// `new_connection` builds the backend instance for each, and
/// `after_disconnect` runs once a frontend has gone and every worker of its
/// instance has stopped (return `false` to stop serving). With `relay_dir`,
/// each connection passes through a [`relay`](crate::relay) (sockets made
/// there), so frontends that send SET_VRING_ENABLE before SET_FEATURES
/// (QEMU's vhost-user-net) are served. Sends `READY=1` once listening and
/// `STOPPING=1` on shutdown. Returns after the current connection's
/// backend has quiesced.
pub fn serve<B, F, E, A>(
    name: &str,
    socket: &mut BoundSocket,
    shutdown: &Shutdown,
    relay_dir: Option<&RelayDir>,
    mut new_connection: F,
    mut after_disconnect: A,
) -> Result<(), ServeError>
where
    B: Connection,
    F: FnMut() -> Result<Arc<B>, E>,
    E: std::error::Error + Send + Sync + 'static,
    A: FnMut() -> bool,
{
    let where_ = socket.source.to_string();
    let io_err = |source| ServeError::Io {
        socket: where_.clone(),
        source,
    };
    socket
        .listener
        .set_nonblocking(false)
        .map_err(|e| ServeError::Io {
            socket: where_.clone(),
            source: io::Error::other(e),
        })?;
    let mut watchdog = Watchdog::from_env();
    log::info!("listening on {where_}");
    systemd::notify_ready(&format!("listening on {where_}"));
    let listen_fd = socket.listener.as_raw_fd();
    let mut connections: u64 = 0;

    loop {
        if wait_with_watchdog(&[shutdown.fd(), listen_fd], &mut watchdog).map_err(io_err)? == 0 {
            log::info!("shutdown requested; no frontend connected");
            systemd::notify_stopping();
            return Ok(());
        }
        let backend = new_connection().map_err(|e| ServeError::Backend {
            socket: where_.clone(),
            source: Box::new(e),
        })?;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let daemon_err = |cause| ServeError::Daemon {
            socket: where_.clone(),
            cause,
        };
        let mut daemon =
            VhostUserDaemon::new(name.to_string(), backend.clone(), mem).map_err(daemon_err)?;
        backend
            .register_listeners(&daemon.get_epoll_handlers())
            .map_err(|e| ServeError::Backend {
                socket: where_.clone(),
                source: Box::new(e),
            })?;
        // `start` accepts (blocking: poll said a connection is pending).
        let relay = match relay_dir {
            None => {
                daemon.start(&mut socket.listener).map_err(daemon_err)?;
                None
            }
            Some(dir) => {
                let frontend = accept(&socket.listener).map_err(io_err)?;
                let (mut listener, ours) = dir.pair().map_err(|e| ServeError::Backend {
                    socket: where_.clone(),
                    source: Box::new(e),
                })?;
                daemon.start(&mut listener).map_err(daemon_err)?;
                Some(
                    relay::spawn(frontend, ours, where_.clone(), backend.inflight()).map_err(
                        |e| ServeError::Backend {
                            socket: where_.clone(),
                            source: Box::new(e),
                        },
                    )?,
                )
            }
        };
        connections += 1;
        log::info!("frontend connected on {where_} (connection {connections})");
        systemd::notify_status(&format!("serving connection {connections} on {where_}"));

        let (done_rx, done_tx) = UnixStream::pair().map_err(io_err)?;
        let waiter = thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                let result = daemon.wait();
                // Dropping the daemon joins the connection's worker threads.
                drop(daemon);
                drop(done_tx);
                result
            })
            .map_err(io_err)?;

        let which = wait_with_watchdog(&[shutdown.fd(), done_rx.as_raw_fd()], &mut watchdog)
            .map_err(io_err)?;
        if which == 0 {
            log::info!("shutdown requested; finishing requests in flight on {where_}");
            systemd::notify_stopping();
            backend.quiesce();
            return Ok(());
        }
        match waiter.join() {
            Ok(Ok(())) => log::info!("frontend disconnected from {where_}"),
            Ok(Err(e)) if is_disconnect(&e) => log::info!("frontend disconnected from {where_}"),
            Ok(Err(e)) => log::warn!("connection {connections} on {where_} ended: {e}"),
            Err(_) => log::error!("connection {connections} on {where_}: handler thread panicked"),
        }
        drop(backend);
        if let Some(relay) = relay {
            let _ = relay.join();
        }
        if !after_disconnect() {
            log::info!("not serving another frontend on {where_}");
            systemd::notify_stopping();
            return Ok(());
        }
        systemd::notify_status(&format!("listening on {where_}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_refuses_after_close() {
        let g = Gate::default();
        assert!(g.enter().is_some());
        g.close();
        assert!(g.enter().is_none());
    }

    #[test]
    fn gate_close_waits_for_holders() {
        let g = Arc::new(Gate::default());
        let pass_taken = Arc::new(std::sync::Barrier::new(2));
        let (g2, b2) = (g.clone(), pass_taken.clone());
        let t = thread::spawn(move || {
            let _pass = g2.enter().unwrap();
            b2.wait();
            thread::sleep(Duration::from_millis(50));
            std::time::Instant::now()
        });
        pass_taken.wait();
        g.close();
        let closed_at = std::time::Instant::now();
        let left_at = t.join().unwrap();
        assert!(closed_at >= left_at);
    }

    #[test]
    fn exit_events_close_their_consumers() {
        let e = ExitEvents::default();
        let (consumer, _notifier) = e.create().unwrap();
        let fd = consumer.as_raw_fd();
        std::mem::forget(consumer); // as vhost-user-backend does (into_raw_fd)
        drop(e);
        assert!(nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err());
    }

    #[test]
    fn wait_readable_reports_index_and_timeout() {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        assert_eq!(
            wait_readable(
                &[a.as_raw_fd(), c.as_raw_fd()],
                Some(Duration::from_millis(10))
            )
            .unwrap(),
            None
        );
        drop(b);
        assert_eq!(
            wait_readable(&[c.as_raw_fd(), a.as_raw_fd()], None).unwrap(),
            Some(1)
        );
    }
}
