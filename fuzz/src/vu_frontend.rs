//! The frontend side of the `vhost_user_msg*` targets: it serves one
//! connection of a daemon's device as `common::serve` does (the device's
//! `common::backend::Backend`, `vhost-user-backend`'s `VhostUserDaemon`
//! with its request handler and worker threads, optionally
//! `common::relay` in front) and plays the input's script ([`crate::vu`])
//! against it as a hostile frontend.
//!
//! Checks: no panic or abort in the handler, the workers or the relay;
//! every reply well formed; once the frontend hangs up the connection
//! ends within 5 s and every thread is joined (no hang, no leaked
//! thread).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::backend::{Backend, Device};
use common::queue::RingOptions;
use common::relay::{self, RelayDir};
use common::serve::Connection;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::vu::{req, FdKind, FD_COUNTS, GUEST_LEN, VERSION_1};
use crate::Input;

const HEADER_LEN: usize = 12;
/// Largest reply body the vhost crate sends.
const MAX_REPLY_BODY: usize = 0x1000;
/// Descriptors the target creates per input (eventfds, memfds, pipes).
const FD_BUDGET: usize = 256;
/// Eventfds kept to kick with.
const KEPT_EVENTS: usize = 64;
/// How long a sync waits for the backend.
const SYNC_WAIT: Duration = Duration::from_millis(200);
/// How long a kick waits for a worker to take it.
const KICK_WAIT: Duration = Duration::from_millis(50);
/// How long the connection may take to end once the frontend hung up.
const HANGUP_WAIT: Duration = Duration::from_secs(5);

/// Where the handler's sockets are made, and the process set up as the
/// daemons' is (SIGPIPE ignored, as Rust's `main` does); `name` names
/// the log (`RUST_LOG=debug` when replaying an input shows the daemon's
/// log).
pub fn relay_dir(name: &'static str) -> &'static RelayDir {
    static DIR: OnceLock<RelayDir> = OnceLock::new();
    DIR.get_or_init(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        if std::env::var_os("RUST_LOG").is_some() {
            common::logging::init(name, common::logging::LogLevel::Off);
        }
        RelayDir::abstract_names()
    })
}

fn check(r: libc::c_int) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the call just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

fn memfd(len: u64) -> io::Result<File> {
    // SAFETY: a plain system call with a NUL-terminated name.
    let fd = check(unsafe { libc::memfd_create(c"fuzz-vu".as_ptr(), libc::MFD_CLOEXEC) })?;
    let f = File::from(fd);
    f.set_len(len)?;
    Ok(f)
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: a plain system call.
    check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

fn pipe_read_end() -> io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the write end, just created; closed here.
    drop(unsafe { OwnedFd::from_raw_fd(fds[1]) });
    check(fds[0])
}

/// `sendmsg` of `bytes` with `fds` attached; `false` once the
/// connection is unusable.
fn send(sock: &UnixStream, mut bytes: &[u8], fds: &[RawFd]) -> bool {
    let mut fds = fds;
    while !bytes.is_empty() {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let fd_bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
        let mut cbuf = vec![0u64; space.div_ceil(8)];
        // SAFETY: an all-zero msghdr is valid (no name, no control).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: the control buffer holds one header and `fd_bytes` of
            // data (CMSG_SPACE), aligned for cmsghdr (u64 storage).
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(c),
                    fd_bytes,
                );
            }
        }
        // SAFETY: `msg` points at `iov` (over `bytes`) and `cbuf`, both
        // alive for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
        fds = &[];
    }
    true
}

/// The frontend's end of the connection.
struct Frontend {
    sock: UnixStream,
    /// Reply bytes not parsed yet.
    replies: Vec<u8>,
    /// GET_FEATURES replies seen, and sent by a sync.
    features_seen: usize,
    syncs: usize,
    /// The connection ended (EOF or an error).
    closed: bool,
    /// A sync timed out: the backend is behind (a header that promised a
    /// longer body, say); no more waiting.
    no_sync: bool,
    /// A kick was not taken in time: no more waiting for kicks.
    no_kick_wait: bool,
    guest: File,
    events: Vec<OwnedFd>,
    created: usize,
}

impl Frontend {
    /// Reads what has arrived (waiting at most `wait`), closing any
    /// descriptor attached, and checks each complete reply.
    fn read(&mut self, wait: Duration) {
        if self.closed {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return;
        }
        let mut buf = [0u8; 8192];
        let mut cbuf = [0u64; 64];
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: an all-zero msghdr is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cbuf);
            // SAFETY: `msg` points at `buf` and `cbuf`, alive for the call.
            let n = unsafe {
                libc::recvmsg(
                    self.sock.as_raw_fd(),
                    &mut msg,
                    libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.closed = e.kind() != io::ErrorKind::WouldBlock;
                return;
            }
            // SAFETY: walking the control messages recvmsg filled in; each
            // SCM_RIGHTS descriptor is ours to close.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                        let data = libc::CMSG_DATA(c);
                        let len = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                        for k in 0..len / 4 {
                            let fd = std::ptr::read_unaligned(data.add(4 * k).cast::<RawFd>());
                            drop(OwnedFd::from_raw_fd(fd));
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            if n == 0 {
                self.closed = true;
                return;
            }
            self.replies.extend_from_slice(&buf[..n as usize]);
            self.parse();
        }
    }

    fn parse(&mut self) {
        loop {
            let Some(h) = self.replies.get(..HEADER_LEN) else {
                return;
            };
            let word = |i: usize| u32::from_le_bytes(h[4 * i..4 * i + 4].try_into().unwrap());
            let (request, flags, size) = (word(0), word(1), word(2) as usize);
            assert!(
                flags & 3 == 1 && flags & 4 != 0 && flags & !0xf == 0,
                "reply to request {request} with flags {flags:#x}"
            );
            assert!(
                size <= MAX_REPLY_BODY,
                "reply to request {request} with a {size}-byte body"
            );
            if self.replies.len() < HEADER_LEN + size {
                return;
            }
            if request == u32::from(req::GET_FEATURES) {
                self.features_seen += 1;
            }
            self.replies.drain(..HEADER_LEN + size);
        }
    }

    /// Sends one message with `fds` (created here) attached.
    fn message(&mut self, bytes: &[u8], count: usize, kind: FdKind) {
        let count = count.min(FD_BUDGET - self.created);
        let mut owned = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..count {
            let fd = match kind {
                FdKind::Event => eventfd(),
                FdKind::Guest => {
                    raw.push(self.guest.as_raw_fd());
                    continue;
                }
                FdKind::Small => memfd(4096).map(OwnedFd::from),
                FdKind::Pipe => pipe_read_end(),
            };
            let Ok(fd) = fd else { break };
            self.created += 1;
            raw.push(fd.as_raw_fd());
            owned.push(fd);
        }
        if !send(&self.sock, bytes, &raw) {
            self.closed = true;
        }
        for fd in owned {
            if kind == FdKind::Event && self.events.len() < KEPT_EVENTS {
                self.events.push(fd);
            }
        }
        self.read(Duration::ZERO);
    }

    /// Waits (briefly) until the backend has handled what was sent.
    fn sync(&mut self) {
        if self.no_sync || self.closed {
            return;
        }
        let mut m = [0u8; HEADER_LEN];
        m[0] = req::GET_FEATURES;
        m[4] = VERSION_1;
        self.syncs += 1;
        if !send(&self.sock, &m, &[]) {
            self.closed = true;
            return;
        }
        let deadline = Instant::now() + SYNC_WAIT;
        while self.features_seen < self.syncs && !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.no_sync = true;
                return;
            }
            self.read(left);
        }
    }

    /// Kicks with the `n`th eventfd and waits (briefly) until a worker
    /// has taken the kick: then it drains the ring, holding its lock, so
    /// a message that stops the ring comes after.
    fn kick(&mut self, n: u8) {
        if self.events.is_empty() {
            return;
        }
        let fd = self.events[usize::from(n) % self.events.len()].as_raw_fd();
        // SAFETY: an 8-byte write from a live buffer to our eventfd.
        unsafe { libc::write(fd, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
        if self.no_kick_wait {
            return;
        }
        let deadline = Instant::now() + KICK_WAIT;
        loop {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 0) } == 0 {
                return;
            }
            if Instant::now() >= deadline {
                // Not a kick the backend listens to (a call fd, say).
                self.no_kick_wait = true;
                return;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Hangs up and waits for the connection to end.
    fn hang_up(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + HANGUP_WAIT;
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the connection did not end within {HANGUP_WAIT:?} of the frontend hanging up"
            );
            self.read(left);
        }
    }
}

/// Serves `device` on a fresh connection (through the relay when `relay`)
/// and plays the rest of `input` against it; panics when a check fails.
pub fn drive<D: Device>(mut input: Input<'_>, device: D, relay: bool) {
    let dir = relay_dir("vhost_user_msg");
    let backend = Arc::new(Backend::new(device, RingOptions::default()));
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon =
        VhostUserDaemon::new("fuzz-vu".into(), backend.clone(), mem).expect("VhostUserDaemon");
    backend
        .register_listeners(&daemon.get_epoll_handlers())
        .expect("register the device's sources");
    let (mut listener, ours) = dir.pair().expect("handler socket");
    daemon.start(&mut listener).expect("accept");
    drop(listener);
    let (sock, relay) = if relay {
        let (frontend, theirs) = UnixStream::pair().expect("socketpair");
        let r = relay::spawn(theirs, ours, "fuzz".into(), None).expect("relay");
        (frontend, Some(r))
    } else {
        (ours, None)
    };
    let timeout = Some(Duration::from_secs(1));
    sock.set_write_timeout(timeout).expect("SO_SNDTIMEO");
    let mut fe = Frontend {
        sock,
        replies: Vec::new(),
        features_seen: 0,
        syncs: 0,
        closed: false,
        no_sync: false,
        no_kick_wait: false,
        guest: memfd(GUEST_LEN).expect("guest memfd"),
        events: Vec::new(),
        created: 0,
    };

    while !fe.closed {
        let Some(t) = input.u8() else { break };
        match t & 3 {
            0 | 1 => {
                let Some(head) = input.take(4) else { break };
                let size = u16::from_le_bytes([head[2], head[3]]);
                let body = input
                    .take(usize::from(size))
                    .unwrap_or_else(|| input.rest());
                let mut m = Vec::with_capacity(HEADER_LEN + body.len());
                m.extend_from_slice(&u32::from(head[0]).to_le_bytes());
                m.extend_from_slice(&u32::from(head[1]).to_le_bytes());
                m.extend_from_slice(&u32::from(size).to_le_bytes());
                m.extend_from_slice(body);
                fe.message(&m, FD_COUNTS[usize::from((t >> 2) & 7)], FdKind::of(t));
                if t & 1 != 0 {
                    fe.sync();
                }
            }
            2 => fe.kick(t >> 2),
            _ => {
                let (Some(offset), Some(len)) = (input.u16(), input.u8()) else {
                    break;
                };
                let bytes = input.take(usize::from(len)).unwrap_or_else(|| input.rest());
                let room = (GUEST_LEN - u64::from(offset)) as usize;
                let _ = fe
                    .guest
                    .write_all_at(&bytes[..bytes.len().min(room)], offset.into());
            }
        }
    }
    fe.hang_up();
    // The handler thread has ended (its socket is closed): join it, then
    // the workers (dropping the daemon drops the handler, which joins
    // them), then the relay.
    let _ = daemon.wait();
    drop(daemon);
    if let Some(r) = relay {
        r.join().expect("the relay thread panicked");
    }
    drop(fe);
    assert_eq!(
        Arc::strong_count(&backend),
        1,
        "a thread still holds the backend"
    );
}
