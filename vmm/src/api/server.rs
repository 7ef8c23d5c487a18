//! The socket, the `vmm-api` accept thread and one `vmm-api-conn` thread
//! per connection (at most [`Limits::max_connections`]). When all are
//! taken, a newcomer closes the connection that has waited longest for its
//! next request (never one in the middle of a request), so clients that
//! connect and stay idle cannot lock others out; only when every
//! connection is inside a request (each bounded by
//! [`Limits::request_timeout`]) is a newcomer answered 503.
//!
//! File descriptors sent with a request (`SCM_RIGHTS`, as Kata's `clh.go`
//! sends tap queues with `vm.add-net`) belong to the request being
//! received when they arrive: send them with the request's first bytes
//! (the kernel hands them over with the first byte of the `sendmsg` that
//! carried them). At most [`MAX_REQUEST_FDS`] per request; more is a 400
//! and the connection closes. Every descriptor the request's handler does
//! not take is closed once it is answered, and whatever ends a
//! connection closes the ones it holds.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::http::{self, Decoded, Decoder, HttpError, Limits, Response, MAX_REQUEST_FDS};
use super::routes;
use super::VmControl;

/// Errors binding the socket or starting the server; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another process listens on the path.
    #[error("API socket {0} is in use by another process")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("API socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Inspecting or removing a stale socket failed.
    #[error("cannot replace stale API socket {path}")]
    Stale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// bind(2)/listen(2) or the rename into place failed.
    #[error("cannot listen on API socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The stop eventfd could not be created.
    #[error("creating the API stop eventfd")]
    StopEvent(#[source] io::Error),
    /// The listener could not be made non-blocking.
    #[error("setting up the API listener")]
    Listener(#[source] io::Error),
    /// The `vmm-api` thread could not be started.
    #[error("starting the vmm-api thread")]
    Spawn(#[source] io::Error),
}

/// Removes the socket file when dropped, if the path still is the socket
/// we bound (never someone else's file put there since).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            // A socket, and the same inode: not a file made after ours was
            // removed (which may reuse the inode number).
            if meta.file_type().is_socket() && meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds and listens on `path`. An existing socket nobody listens on is
/// replaced; a live one, or a file that is not a socket, is an error. The
/// socket appears at `path` already listening (bound at a temporary name
/// and renamed), so a client that connects as soon as it sees the file is
/// never refused.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), ApiError> {
    let stale = |source| ApiError::Stale {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ApiError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(ApiError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("replacing stale API socket {}", path.display());
                std::fs::remove_file(path).map_err(stale)?;
            }
            Err(e) => return Err(stale(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(stale(e)),
    }
    let bind_err = |source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = bind_listening(path).map_err(bind_err)?;
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((listener, file))
}

/// Binds at `.<name>.<pid>.tmp` next to `path` and renames it into place;
/// a direct bind when that name would not fit in `sun_path`.
fn bind_listening(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::ffi::OsStrExt;
    let tmp = path.file_name().map(|name| {
        let mut n = std::ffi::OsString::from(".");
        n.push(name);
        n.push(format!(".{}.tmp", std::process::id()));
        path.with_file_name(n)
    });
    match tmp {
        // sun_path holds 107 bytes and a NUL.
        Some(tmp) if tmp.as_os_str().as_bytes().len() < 108 => {
            let _ = std::fs::remove_file(&tmp);
            let listener = UnixListener::bind(&tmp)?;
            if let Err(e) = std::fs::rename(&tmp, path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(listener)
        }
        _ => UnixListener::bind(path),
    }
}

/// Tells the server to stop: the accept thread and every connection thread
/// return at their next wait (a response being written is finished first).
/// Clones share one eventfd.
#[derive(Clone, Debug)]
pub struct ApiStop(Arc<EventFd>);

impl ApiStop {
    /// A stop signal not yet given.
    pub fn new() -> Result<Self, ApiError> {
        EventFd::new(EFD_NONBLOCK)
            .map(|fd| ApiStop(Arc::new(fd)))
            .map_err(ApiError::StopEvent)
    }

    /// Gives the signal; it stays given.
    pub fn stop(&self) {
        if let Err(e) = self.0.write(1) {
            log::error!("stopping the API server: {e}");
        }
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Serves the API on `listener` with the default [`Limits`] on a thread
/// named `vmm-api`, until `stop` is given.
pub fn serve(
    listener: UnixListener,
    ctl: Arc<dyn VmControl>,
    stop: ApiStop,
) -> Result<JoinHandle<()>, ApiError> {
    serve_with_limits(listener, ctl, stop, Limits::default())
}

/// [`serve`] with other limits.
pub fn serve_with_limits(
    listener: UnixListener,
    ctl: Arc<dyn VmControl>,
    stop: ApiStop,
    limits: Limits,
) -> Result<JoinHandle<()>, ApiError> {
    listener.set_nonblocking(true).map_err(ApiError::Listener)?;
    std::thread::Builder::new()
        .name("vmm-api".into())
        .spawn(move || accept_loop(listener, ctl, stop, limits))
        .map_err(ApiError::Spawn)
}

/// What ended a wait.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Readable,
    Stopped,
    /// A newcomer needs this idle connection's place.
    Evicted,
    TimedOut,
}

/// Waits until `fd` is readable (or hung up), `stop` is given, `evict`
/// (if any) is signalled, or `deadline` passes. `stop` wins over
/// readable, readable over `evict`.
fn wait(
    fd: RawFd,
    stop: &ApiStop,
    evict: Option<&EventFd>,
    deadline: Option<Instant>,
) -> io::Result<Wake> {
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up, so the deadline has passed when poll returns 0.
                left.as_millis()
                    .saturating_add(u128::from(left.subsec_nanos() % 1_000_000 != 0))
                    .min(i32::MAX as u128) as i32
            }
        };
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(stop.fd(), PollFlags::POLLIN),
            // A negative fd is ignored by poll.
            PollFd::new(evict.map_or(-1, |e| e.as_raw_fd()), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout_ms) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let woke = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        if woke(1) {
            return Ok(Wake::Stopped);
        }
        if woke(0) {
            return Ok(Wake::Readable);
        }
        if woke(2) {
            return Ok(Wake::Evicted);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Wake::TimedOut);
        }
    }
}

/// What the accept thread and a connection's thread share.
#[derive(Debug)]
struct ConnShared {
    /// Since when the connection waits for its next request; None while a
    /// request is being read or answered.
    idle_since: Mutex<Option<Instant>>,
    /// Tells the connection to close once idle; gone (its descriptor
    /// closed) as soon as the connection ends, not when the accept thread
    /// next reaps it.
    evict: Mutex<Option<Arc<EventFd>>>,
}

impl ConnShared {
    /// Signals the eviction; false if the connection has ended.
    fn evict(&self) -> bool {
        let fd = self.evict.lock().unwrap_or_else(|e| e.into_inner()).clone();
        fd.is_some_and(|fd| fd.write(1).is_ok())
    }

    /// The connection's end: its eventfd goes.
    fn close(&self) {
        *self.evict.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn set_idle(&self, since: Option<Instant>) {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = since;
    }

    fn idle_since(&self) -> Option<Instant> {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's thread.
struct Conn {
    thread: JoinHandle<()>,
    shared: Arc<ConnShared>,
    /// Asked to make room (it leaves at its next idle wait).
    evicted: bool,
}

/// Asks the connection idle the longest to close; false when every
/// connection is inside a request.
fn evict_longest_idle(conns: &mut [Conn]) -> bool {
    let victim = conns
        .iter_mut()
        .filter(|c| !c.evicted)
        .filter_map(|c| Some((c.shared.idle_since()?, c)))
        .min_by_key(|(since, _)| *since);
    match victim {
        Some((_, c)) if c.shared.evict() => {
            c.evicted = true;
            true
        }
        _ => false,
    }
}

fn accept_loop(listener: UnixListener, ctl: Arc<dyn VmControl>, stop: ApiStop, limits: Limits) {
    // The connection threads start here and inherit it.
    if let Err(e) = crate::seccomp::apply(crate::seccomp::Role::Api) {
        log::error!("API socket: {}; the API stops", crate::error_chain(&e));
        return;
    }
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        match wait(listener.as_raw_fd(), &stop, None, None) {
            Ok(Wake::Readable) => {}
            Ok(Wake::Stopped) => break,
            Ok(Wake::TimedOut | Wake::Evicted) => continue,
            Err(e) => {
                log::error!("API socket: poll: {e}; the API stops");
                break;
            }
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                log::warn!("API socket: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let (done, running): (Vec<_>, Vec<_>) =
            conns.into_iter().partition(|c| c.thread.is_finished());
        conns = running;
        for c in done {
            let _ = c.thread.join();
        }
        // Connections asked to leave count as gone: they close at once
        // (after the request they may be reading).
        let staying = conns.iter().filter(|c| !c.evicted).count();
        if staying >= limits.max_connections && !evict_longest_idle(&mut conns) {
            refuse_busy(stream, limits.max_connections);
            continue;
        }
        let evict = match EventFd::new(EFD_NONBLOCK) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("API socket: a connection's eventfd: {e}");
                continue;
            }
        };
        let evict = Arc::new(evict);
        let shared = Arc::new(ConnShared {
            idle_since: Mutex::new(Some(Instant::now())),
            evict: Mutex::new(Some(evict.clone())),
        });
        let (ctl, stop, mine) = (Arc::clone(&ctl), stop.clone(), Arc::clone(&shared));
        let spawned = std::thread::Builder::new()
            .name("vmm-api-conn".into())
            .spawn(move || {
                let mut stream = stream;
                serve_connection(&mut stream, &*ctl, &stop, &mine, &evict, &limits);
                // The eventfd goes before the client can see the socket
                // close: nothing of the connection outlives its end.
                mine.close();
                drop(evict);
                drop(stream);
            });
        match spawned {
            Ok(thread) => conns.push(Conn {
                thread,
                shared,
                evicted: false,
            }),
            Err(e) => log::warn!("API socket: starting a connection thread: {e}"),
        }
    }
    for c in conns {
        let _ = c.thread.join();
    }
}

/// Answers 503 without blocking the accept thread (a fresh socket's send
/// buffer takes the few bytes) and closes.
fn refuse_busy(mut stream: UnixStream, limit: usize) {
    let response = Response::error(503, format!("too many API connections (limit {limit})"));
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(&response.to_bytes(false, false));
}

/// Reads requests, answers each, until the client closes, asks to close,
/// breaks the protocol, times out, the server stops, or a newcomer needs
/// the place while it is idle.
fn serve_connection(
    stream: &mut UnixStream,
    ctl: &dyn VmControl,
    stop: &ApiStop,
    shared: &ConnShared,
    evict: &EventFd,
    limits: &Limits,
) {
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(limits.write_timeout)))
    {
        log::warn!("API connection: {e}");
        return;
    }
    let mut decoder = Decoder::new(*limits);
    let mut buf = [0u8; 4096];
    // Descriptors received for the request being read.
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut started: Option<Instant> = None;
    let mut idle_since = Instant::now();
    loop {
        loop {
            match decoder.next() {
                Ok(Decoded::Request(req)) => {
                    // The handler takes what it consumes; the rest is
                    // closed when `handle` returns.
                    let reply = routes::handle(&req, std::mem::take(&mut fds), ctl);
                    log::debug!(
                        "API {} {} -> {}",
                        req.method,
                        req.path,
                        reply.response.status
                    );
                    // Idle from here (before the client can read the
                    // answer and a newcomer look for room); asked to make
                    // room already, this answer is the last.
                    idle_since = Instant::now();
                    shared.set_idle(Some(idle_since));
                    let evicted = evict.read().is_ok();
                    let keep_alive = req.keep_alive && !reply.close && !evicted;
                    let head_only = req.method == "HEAD";
                    if reply
                        .response
                        .write_to(stream, keep_alive, head_only)
                        .is_err()
                        || !keep_alive
                    {
                        return;
                    }
                    started = None;
                }
                Ok(Decoded::NeedMore { send_continue }) => {
                    if send_continue && stream.write_all(http::CONTINUE).is_err() {
                        return;
                    }
                    break;
                }
                Err(e) => return refuse(stream, &e),
            }
        }
        if decoder.in_request() {
            started.get_or_insert_with(Instant::now);
        }
        shared.set_idle(if started.is_some() {
            None
        } else {
            Some(idle_since)
        });
        let deadline = match started {
            Some(t) => t + limits.request_timeout,
            None => idle_since + limits.idle_timeout,
        };
        let evict = if started.is_some() { None } else { Some(evict) };
        match wait(stream.as_raw_fd(), stop, evict, Some(deadline)) {
            Ok(Wake::Readable) => shared.set_idle(None),
            Ok(Wake::TimedOut) if started.is_some() => {
                return refuse(stream, &HttpError::Timeout(limits.request_timeout))
            }
            Ok(Wake::TimedOut | Wake::Stopped | Wake::Evicted) | Err(_) => return,
        }
        match receive(stream, &mut buf, &mut fds) {
            // The client closed; half a request gets no answer.
            Ok(0) => return,
            Ok(n) => decoder.feed(&buf[..n]),
            Err(Received::TooManyFds) => {
                fds.clear();
                return refuse(stream, &HttpError::TooManyFds(MAX_REQUEST_FDS));
            }
            Err(Received::Interrupted) => {}
            Err(Received::Failed) => return,
        }
    }
}

/// Why [`receive`] got no bytes.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// EINTR: try again.
    Interrupted,
    /// The request brought more than [`MAX_REQUEST_FDS`] descriptors.
    TooManyFds,
    /// The connection failed.
    Failed,
}

/// Reads bytes into `buf` and the descriptors that come with them into
/// `fds` (close-on-exec). The number of bytes, 0 at the end of the stream.
fn receive(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, Received> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_REQUEST_FDS]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = match recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(nix::Error::EINTR) => return Err(Received::Interrupted),
        Err(_) => return Err(Received::Failed),
    };
    for c in msg.cmsgs() {
        if let ControlMessageOwned::ScmRights(received) = c {
            for fd in received {
                // SAFETY: recvmsg just installed this descriptor in our
                // table; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    // MSG_CTRUNC: the kernel closed the ones that did not fit.
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > MAX_REQUEST_FDS {
        return Err(Received::TooManyFds);
    }
    Ok(msg.bytes)
}

/// Answers a request that could not be read, then closes.
fn refuse(stream: &mut UnixStream, error: &HttpError) {
    log::debug!("API request refused: {error}");
    if Response::error(error.status(), error.to_string())
        .write_to(stream, false, false)
        .is_ok()
    {
        linger(stream);
    }
}

/// Before closing with the client still sending (a body after a 413),
/// reads and drops what it sends for a moment: closing with unread bytes
/// makes the client's read fail with ECONNRESET instead of ending at EOF
/// after the response.
fn linger(stream: &mut UnixStream) {
    const LINGER: Duration = Duration::from_millis(100);
    const MAX: usize = 256 * 1024;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut dropped = 0;
    while dropped < MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => dropped += n,
        }
    }
}
