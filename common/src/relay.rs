//! A relay on the vhost-user socket for frontends that enable rings before
//! they set features.
//!
//! QEMU's vhost-user-net (7.2, Debian stable's) sends SET_VRING_ENABLE when
//! the guest writes its feature bits, well before vhost starts and sends
//! SET_FEATURES. The vhost crate's request handler refuses that message
//! (`InactiveFeature(PROTOCOL_FEATURES)`) and ends the connection, so the
//! guest's NIC never comes up. The relay sits between the frontend and the
//! handler, copies messages both ways with their descriptors, and holds a
//! SET_VRING_ENABLE that comes before the SET_FEATURES acking
//! PROTOCOL_FEATURES: it acks it itself when the frontend asked for a
//! reply, and delivers it right after that SET_FEATURES. Everything else
//! passes through unchanged, in order. It costs one copy per control
//! message; the data path (rings, kicks, calls) never passes through it.
//!
//! For a device that tracks requests in flight ([`crate::inflight`]), the
//! relay also offers VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (it adds the bit
//! to the handler's GET_PROTOCOL_FEATURES reply) and answers
//! GET_INFLIGHT_FD and SET_INFLIGHT_FD itself, which `vhost-user-backend`
//! refuses: GET with a new zeroed, sealed memfd; SET by mapping the
//! frontend's region (its size checked first) into the connection's
//! [`Slot`], where the workers find it.
//!
//! The handler's end is a socket in a private directory (0700) that only
//! the relay connects to, once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use vhost::vhost_user::Listener;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::inflight::{self, Region, Slot, PROTOCOL_F_INFLIGHT_SHMFD};

/// vhost-user request codes the relay looks at.
const SET_FEATURES: u32 = 2;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_VRING_ENABLE: u32 = 18;
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
/// `VhostUserInflight` as QEMU and the vhost crate lay it out (C struct:
/// u64 mmap_size, u64 mmap_offset, u16 num_queues, u16 queue_size,
/// padding) and the bytes that carry something.
const INFLIGHT_LEN: usize = 24;
const INFLIGHT_USED: usize = 20;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Header flags: version 1, reply, need reply.
const VERSION_1: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
const HEADER_LEN: usize = 12;
/// Largest body the relay forwards (the vhost crate's limit is 4 KiB).
const MAX_BODY: usize = 0x1000;
/// Most descriptors one message carries (the vhost crate's limit).
const MAX_FDS: usize = 32;

/// Errors setting up a relay; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// mkdtemp failed.
    #[error("cannot create a private directory for the relay under {dir}: {source}")]
    Dir {
        /// Parent directory.
        dir: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// bind/connect on the handler's socket failed.
    #[error("relay socket {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The relay thread could not start.
    #[error("cannot start the relay thread: {0}")]
    Thread(#[source] io::Error),
}

/// Where relays make the handler's sockets: a private directory made once
/// (before the daemon's seccomp filter goes on) and removed on drop; or,
/// in a jail (whose root has no directory to bind in), abstract socket
/// names, each listening for our one connection only.
#[derive(Debug)]
pub struct RelayDir {
    /// None: abstract names.
    dir: Option<PathBuf>,
    next: AtomicU64,
}

impl RelayDir {
    /// Creates a 0700 directory under `parent`.
    pub fn create(parent: &Path) -> Result<Self, RelayError> {
        let err = |source| RelayError::Dir {
            dir: parent.to_path_buf(),
            source,
        };
        // As mkdtemp(3): a fresh 0700 directory, never one that exists.
        use std::os::unix::fs::DirBuilderExt;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut attempt = 0u32;
        let dir = loop {
            let name = format!(
                "vhost-user-relay.{}.{:08x}",
                std::process::id(),
                seed.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
            );
            let dir = parent.join(name);
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                Err(e) => return Err(err(e)),
            }
        };
        Ok(RelayDir {
            dir: Some(dir),
            next: AtomicU64::new(0),
        })
    }

    /// Abstract socket names instead of a directory, for a jailed daemon
    /// whose root has no private directory to bind in: in the namespace
    /// jail its network namespace of its own holds them; in the chroot
    /// jail they are in the host's, where
    /// [`abstract_pair`](Self::abstract_pair) makes sure the handler
    /// accepts our connection and no other.
    pub fn abstract_names() -> Self {
        RelayDir {
            dir: None,
            next: AtomicU64::new(0),
        }
    }

    /// A listener for the handler and our connected end of it. The socket
    /// file is gone again when this returns: the one connection the
    /// handler will accept is already queued.
    pub fn pair(&self) -> Result<(Listener, UnixStream), RelayError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(dir) = &self.dir else {
            return Self::abstract_pair(n);
        };
        let path = dir.join(format!("{n}"));
        let err = |source| RelayError::Socket {
            path: path.clone(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(err)?;
        let ours = UnixStream::connect(&path);
        let _ = std::fs::remove_file(&path);
        Ok((Listener::from(listener), ours.map_err(err)?))
    }
}

/// How many abstract names [`RelayDir::pair`] tries before giving up, when
/// another process connects to each first.
const ABSTRACT_ATTEMPTS: u32 = 16;

impl RelayDir {
    /// [`pair`](Self::pair) on a fresh abstract name
    /// `vhost-user-relay.PID.N.RANDOM`.
    ///
    /// Safe in the host's network namespace too (the chroot jail has no
    /// other): the listener's queue holds one connection (backlog 0), and
    /// ours is made non-blocking, so it is queued only if nobody else's
    /// is. If another process connected between our `listen` and our
    /// `connect`, ours fails with EAGAIN and the name is dropped, with
    /// the other connection unaccepted. So the handler's one `accept`
    /// returns ours; a connection made after ours waits until that
    /// `accept` and is reset when the listener is dropped.
    fn abstract_pair(n: u64) -> Result<(Listener, UnixStream), RelayError> {
        let mut last = None;
        for _ in 0..ABSTRACT_ATTEMPTS {
            let mut random = [0u8; 8];
            // SAFETY: getrandom writes at most `random.len()` bytes into it.
            let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
            let tag = if got == random.len() as isize {
                u64::from_le_bytes(random)
            } else {
                // Uniqueness still comes from the pid and the counter.
                0
            };
            let name = format!("vhost-user-relay.{}.{n}.{tag:016x}", std::process::id());
            match Self::abstract_pair_at(&name) {
                Ok(Some(pair)) => return Ok(pair),
                Ok(None) => {
                    log::warn!("relay socket @{name}: another process connected first; trying another name");
                    last = Some(RelayError::Socket {
                        path: PathBuf::from(format!("@{name}")),
                        source: io::Error::from(io::ErrorKind::AddrInUse),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(RelayError::Socket {
            path: PathBuf::from("@vhost-user-relay"),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        }))
    }

    /// One attempt of [`abstract_pair`](Self::abstract_pair) on `name`:
    /// `None` when our connection could not be the one queued (the name is
    /// taken, or another connection came first).
    fn abstract_pair_at(name: &str) -> Result<Option<(Listener, UnixStream)>, RelayError> {
        use nix::sys::socket::{
            bind, connect, listen, socket, AddressFamily, SockFlag, SockType, UnixAddr,
        };
        let err = |source: io::Error| RelayError::Socket {
            path: PathBuf::from(format!("@{name}")),
            source,
        };
        let nix_err = |e: nix::Error| err(io::Error::from(e));
        let addr = UnixAddr::new_abstract(name.as_bytes()).map_err(nix_err)?;
        let stream = || {
            socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .map_err(nix_err)
        };
        // SAFETY: `socket` just returned this descriptor, owned nowhere else.
        let listener = unsafe { UnixListener::from_raw_fd(stream()?) };
        listener.set_nonblocking(false).map_err(err)?;
        match bind(listener.as_raw_fd(), &addr) {
            Err(nix::Error::EADDRINUSE) => return Ok(None),
            r => r.map_err(nix_err)?,
        }
        listen(listener.as_raw_fd(), 0).map_err(nix_err)?;
        // SAFETY: as above.
        let ours = unsafe { UnixStream::from_raw_fd(stream()?) };
        match connect(ours.as_raw_fd(), &addr) {
            Err(nix::Error::EAGAIN) => return Ok(None),
            r => r.map_err(nix_err)?,
        }
        ours.set_nonblocking(false).map_err(err)?;
        Ok(Some((Listener::from(listener), ours)))
    }
}

impl Drop for RelayDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// One message: header, body and the descriptors sent with it.
struct Message {
    header: [u8; HEADER_LEN],
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn word(&self, i: usize) -> u32 {
        u32::from_le_bytes([
            self.header[4 * i],
            self.header[4 * i + 1],
            self.header[4 * i + 2],
            self.header[4 * i + 3],
        ])
    }

    fn set_word(&mut self, i: usize, v: u32) {
        self.header[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn request(&self) -> u32 {
        self.word(0)
    }

    fn flags(&self) -> u32 {
        self.word(1)
    }

    fn u64_body(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.body.get(..8)?.try_into().ok()?))
    }
}

/// Reads exactly `buf.len()` bytes, keeping descriptors that come along.
/// `Ok(false)` on a clean end of stream before the first byte.
fn read_exact_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut at = 0;
    while at < buf.len() {
        let mut iov = [std::io::IoSliceMut::new(&mut buf[at..])];
        let flags = MsgFlags::MSG_CMSG_CLOEXEC;
        let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(m) => m,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let n = msg.bytes;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        for c in msg.cmsgs() {
            if let ControlMessageOwned::ScmRights(received) = c {
                for fd in received {
                    // SAFETY: recvmsg just gave us this descriptor; nothing
                    // else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if truncated {
            // The kernel closed what did not fit: the message cannot be
            // passed on whole.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {MAX_FDS} descriptors attached (the rest were dropped)"),
            ));
        }
        if n == 0 {
            if at == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        at += n;
    }
    Ok(true)
}

/// `request`'s name in the vhost-user spec, or its number.
fn request_name(request: u32) -> String {
    match vhost::vhost_user::message::FrontendReq::try_from(request) {
        Ok(r) => format!("{r:?}"),
        Err(_) => format!("request {request}"),
    }
}

fn recv(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut m = Message {
        header: [0; HEADER_LEN],
        body: Vec::new(),
        fds: Vec::new(),
    };
    // A header cut short by a refusal names no request yet.
    let named = |m: &Message, e: io::Error| {
        io::Error::new(e.kind(), format!("{}: {e}", request_name(m.request())))
    };
    let got = read_exact_fds(sock, &mut m.header, &mut m.fds);
    if !got.map_err(|e| named(&m, e))? {
        return Ok(None);
    }
    let size = m.word(2) as usize;
    if size > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} has a {size}-byte body (at most {MAX_BODY})",
                request_name(m.request())
            ),
        ));
    }
    m.body = vec![0; size];
    if size > 0 {
        let got = read_exact_fds(sock, &mut m.body, &mut m.fds);
        if !got.map_err(|e| named(&m, e))? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Some(m))
}

fn send(sock: &UnixStream, m: &Message) -> io::Result<()> {
    let fds: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let total = HEADER_LEN + m.body.len();
    let mut sent = 0;
    while sent < total {
        let r = if sent == 0 {
            sock.send_with_fds(&[&m.header[..], &m.body[..]], &fds)
        } else if sent < HEADER_LEN {
            sock.send_with_fds(&[&m.header[sent..], &m.body[..]], &[])
        } else {
            sock.send_with_fds(&[&m.body[sent - HEADER_LEN..]], &[])
        };
        match r {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
    Ok(())
}

/// The frontend-to-handler direction's state.
#[derive(Default)]
struct Reorder {
    /// SET_FEATURES with PROTOCOL_FEATURES has gone through.
    features_set: bool,
    /// SET_VRING_ENABLE messages waiting for it.
    held: Vec<Message>,
}

impl Reorder {
    /// What to forward to the handler for `m`, in order, and whether to
    /// ack `m` to the frontend ourselves.
    fn on_message(&mut self, mut m: Message) -> (Vec<Message>, bool) {
        match m.request() {
            SET_VRING_ENABLE if !self.features_set => {
                let ack = m.flags() & NEED_REPLY != 0;
                m.set_word(1, m.flags() & !NEED_REPLY);
                self.held.push(m);
                (Vec::new(), ack)
            }
            SET_FEATURES => {
                self.features_set = m.u64_body().unwrap_or(0) & PROTOCOL_FEATURES != 0;
                let mut out = vec![m];
                if self.features_set {
                    out.append(&mut self.held);
                } else {
                    // Without PROTOCOL_FEATURES every ring is enabled anyway.
                    self.held.clear();
                }
                (out, false)
            }
            _ => (vec![m], false),
        }
    }
}

fn ack(request: u32) -> Message {
    reply(request, 0u64.to_le_bytes().to_vec(), Vec::new())
}

fn reply(request: u32, body: Vec<u8>, fds: Vec<OwnedFd>) -> Message {
    let mut m = Message {
        header: [0; HEADER_LEN],
        body,
        fds,
    };
    m.set_word(0, request);
    m.set_word(1, VERSION_1 | REPLY);
    m.set_word(2, m.body.len() as u32);
    m
}

/// A `VhostUserInflight` body: (mmap_size, mmap_offset, num_queues, queue_size).
type InflightBody = (u64, u64, u16, u16);

fn parse_inflight(body: &[u8]) -> Option<InflightBody> {
    let b = body.get(..INFLIGHT_USED)?;
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    Some((u64_at(0), u64_at(8), u16_at(16), u16_at(18)))
}

fn inflight_body((size, offset, num_queues, queue_size): InflightBody) -> Vec<u8> {
    let mut b = Vec::with_capacity(INFLIGHT_LEN);
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&num_queues.to_le_bytes());
    b.extend_from_slice(&queue_size.to_le_bytes());
    b.resize(INFLIGHT_LEN, 0);
    b
}

/// GET_INFLIGHT_FD and SET_INFLIGHT_FD, answered by the relay for a
/// device that tracks requests in flight: `Some(reply)` to send to the
/// frontend (`None`: no reply wanted). A request the relay cannot serve
/// gets a reply the frontend sees as a failure (GET: a zero-sized region
/// and no descriptor; SET with NEED_REPLY: a non-zero ack); the connection
/// goes on without tracking.
fn answer_inflight(m: Message, slot: &Slot, name: &str) -> Option<Message> {
    let request = m.request();
    let parsed = parse_inflight(&m.body);
    if request == GET_INFLIGHT_FD {
        let created = parsed
            .ok_or_else(|| format!("a {}-byte body", m.body.len()))
            .and_then(|(_, _, nq, qs)| {
                inflight::create_memfd(nq, qs)
                    .map(|(file, size)| (file, (size, 0, nq, qs)))
                    .map_err(|e| e.to_string())
            });
        return Some(match created {
            Ok((file, body)) => reply(request, inflight_body(body), vec![OwnedFd::from(file)]),
            Err(e) => {
                log::warn!("{name}: GET_INFLIGHT_FD refused: {e}");
                reply(request, inflight_body((0, 0, 0, 0)), Vec::new())
            }
        });
    }
    let need_reply = m.flags() & NEED_REPLY != 0;
    let result = match (parsed, &m.fds[..]) {
        (Some((size, offset, nq, qs)), [fd]) => {
            fd.try_clone().map_err(|e| e.to_string()).and_then(|fd| {
                Region::map(&std::fs::File::from(fd), size, offset, nq, qs)
                    .map_err(|e| e.to_string())
            })
        }
        (None, _) => Err(format!("a {}-byte body", m.body.len())),
        (_, fds) => Err(format!("{} descriptors (want 1)", fds.len())),
    };
    let code = match result {
        Ok(region) => {
            log::info!(
                "{name}: in-flight region set ({} queue(s) of {})",
                region.num_queues(),
                region.queue_size()
            );
            slot.install(region);
            0u64
        }
        Err(e) => {
            log::warn!("{name}: SET_INFLIGHT_FD refused: {e}; requests in flight are not tracked");
            1
        }
    };
    need_reply.then(|| reply(request, code.to_le_bytes().to_vec(), Vec::new()))
}

/// Adds INFLIGHT_SHMFD to the handler's GET_PROTOCOL_FEATURES reply.
fn offer_inflight(m: &mut Message) {
    if m.request() == GET_PROTOCOL_FEATURES && m.flags() & REPLY != 0 {
        if let Some(v) = m.u64_body() {
            m.body[..8].copy_from_slice(&(v | PROTOCOL_F_INFLIGHT_SHMFD).to_le_bytes());
        }
    }
}

/// Relays between `frontend` and `handler` until either side closes; then
/// shuts both down, so the other side sees the disconnect. `name` (the
/// daemon's socket) goes into log lines. With `inflight`, the relay offers
/// INFLIGHT_SHMFD and installs the frontend's region there.
pub fn spawn(
    frontend: UnixStream,
    handler: UnixStream,
    name: String,
    inflight: Option<Arc<Slot>>,
) -> Result<JoinHandle<()>, RelayError> {
    let offer = inflight.is_some();
    let f_read = frontend;
    let h_write = handler;
    let h_read = h_write.try_clone().map_err(RelayError::Thread)?;
    let f_write = Arc::new(Mutex::new(f_read.try_clone().map_err(RelayError::Thread)?));
    let f_write2 = f_write.clone();
    let name2 = name.clone();
    // The last request passed on, and whether the frontend has gone: a
    // handler that ends the connection while the frontend is still there
    // refused that request, which the vhost crate does not name.
    let last = Arc::new(AtomicU32::new(u32::MAX));
    let frontend_gone = Arc::new(AtomicBool::new(false));
    let (last2, gone2) = (last.clone(), frontend_gone.clone());
    // Handler to frontend: replies, passed on as they are.
    let back = thread::Builder::new()
        .name("vu-relay-reply".into())
        .spawn(move || {
            loop {
                match recv(&h_read) {
                    Ok(Some(mut m)) => {
                        if offer {
                            offer_inflight(&mut m);
                        }
                        let f = f_write2.lock().unwrap_or_else(|e| e.into_inner());
                        if let Err(e) = send(&f, &m) {
                            log::debug!("{name2}: relaying a reply: {e}");
                            break;
                        }
                    }
                    Ok(None) => {
                        if !gone2.load(Ordering::SeqCst) {
                            let request = request_name(last2.load(Ordering::SeqCst));
                            log::warn!("{name2}: the backend ended the connection after {request}");
                        }
                        break;
                    }
                    Err(e) => {
                        log::warn!("{name2}: reading the handler's reply: {e}");
                        break;
                    }
                }
            }
            let f = f_write2.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.shutdown(std::net::Shutdown::Both);
            let _ = h_read.shutdown(std::net::Shutdown::Both);
        })
        .map_err(RelayError::Thread)?;
    thread::Builder::new()
        .name("vu-relay".into())
        .spawn(move || {
            let mut reorder = Reorder::default();
            loop {
                let m = match recv(&f_read) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        log::warn!("{name}: reading a frontend message: {e}; the connection ends");
                        break;
                    }
                };
                let request = m.request();
                last.store(request, Ordering::SeqCst);
                if let Some(slot) = inflight
                    .as_ref()
                    .filter(|_| matches!(request, GET_INFLIGHT_FD | SET_INFLIGHT_FD))
                {
                    if let Some(r) = answer_inflight(m, slot, &name) {
                        let f = f_write.lock().unwrap_or_else(|e| e.into_inner());
                        if send(&f, &r).is_err() {
                            break;
                        }
                    }
                    continue;
                }
                let (out, ack_it) = reorder.on_message(m);
                if request == SET_VRING_ENABLE && !out.iter().any(|o| o.request() == request) {
                    log::debug!("{name}: SET_VRING_ENABLE before SET_FEATURES held");
                }
                if ack_it {
                    let f = f_write.lock().unwrap_or_else(|e| e.into_inner());
                    if send(&f, &ack(request)).is_err() {
                        break;
                    }
                }
                if let Some(e) = out.iter().find_map(|o| send(&h_write, o).err()) {
                    log::debug!("{name}: relaying a request: {e}");
                    break;
                }
            }
            frontend_gone.store(true, Ordering::SeqCst);
            let _ = h_write.shutdown(std::net::Shutdown::Both);
            let f = f_write.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.shutdown(std::net::Shutdown::Both);
            drop(f);
            let _ = back.join();
        })
        .map_err(RelayError::Thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(request: u32, flags: u32, body: &[u8]) -> Message {
        let mut m = Message {
            header: [0; HEADER_LEN],
            body: body.to_vec(),
            fds: Vec::new(),
        };
        m.set_word(0, request);
        m.set_word(1, flags);
        m.set_word(2, body.len() as u32);
        m
    }

    fn enable(q: u32, need_reply: bool) -> Message {
        let mut b = q.to_le_bytes().to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        msg(
            SET_VRING_ENABLE,
            VERSION_1 | if need_reply { NEED_REPLY } else { 0 },
            &b,
        )
    }

    #[test]
    fn an_early_enable_waits_for_set_features() {
        let mut r = Reorder::default();
        let (out, ack) = r.on_message(enable(0, true));
        assert!(out.is_empty() && ack);
        let (out, ack) = r.on_message(enable(1, false));
        assert!(out.is_empty() && !ack);
        let (out, _) = r.on_message(msg(1, VERSION_1, &[]));
        assert_eq!(out.len(), 1, "other requests pass");
        let (out, ack) = r.on_message(msg(
            SET_FEATURES,
            VERSION_1,
            &PROTOCOL_FEATURES.to_le_bytes(),
        ));
        assert!(!ack);
        let codes: Vec<_> = out.iter().map(|m| m.request()).collect();
        assert_eq!(codes, [SET_FEATURES, SET_VRING_ENABLE, SET_VRING_ENABLE]);
        assert_eq!(out[1].flags() & NEED_REPLY, 0, "we acked it already");
        let (out, ack) = r.on_message(enable(0, true));
        assert!(out.len() == 1 && !ack, "after SET_FEATURES enables pass");
    }

    #[test]
    fn set_features_without_protocol_features_drops_held_enables() {
        let mut r = Reorder::default();
        r.on_message(enable(0, false));
        let (out, _) = r.on_message(msg(SET_FEATURES, VERSION_1, &0u64.to_le_bytes()));
        assert_eq!(out.len(), 1);
        assert!(r.held.is_empty());
    }

    #[test]
    fn messages_and_descriptors_cross_the_relay() {
        let dir = RelayDir::create(&std::env::temp_dir()).unwrap();
        let (listener, ours) = dir.pair().unwrap();
        let handler = listener.accept().unwrap().unwrap();
        let (frontend, far) = UnixStream::pair().unwrap();
        let t = spawn(far, ours, "test".into(), None).unwrap();

        // An early enable with NEED_REPLY is acked by the relay.
        send(&frontend, &enable(3, true)).unwrap();
        let reply = recv(&frontend).unwrap().unwrap();
        assert_eq!(
            (reply.request(), reply.flags(), reply.u64_body()),
            (SET_VRING_ENABLE, VERSION_1 | REPLY, Some(0))
        );
        // A message with a descriptor arrives with it, then the held enable.
        let (a, _b) = UnixStream::pair().unwrap();
        let mut m = msg(SET_FEATURES, VERSION_1, &PROTOCOL_FEATURES.to_le_bytes());
        m.fds.push(OwnedFd::from(a));
        send(&frontend, &m).unwrap();
        let got = recv(&handler).unwrap().unwrap();
        assert_eq!((got.request(), got.fds.len()), (SET_FEATURES, 1));
        let got = recv(&handler).unwrap().unwrap();
        assert_eq!((got.request(), got.body[0]), (SET_VRING_ENABLE, 3));
        // Replies flow back.
        send(&handler, &ack(7)).unwrap();
        assert_eq!(recv(&frontend).unwrap().unwrap().request(), 7);
        // The frontend leaving ends the handler's side too.
        drop(frontend);
        assert!(recv(&handler).unwrap().is_none());
        t.join().unwrap();
    }

    /// A relay for a device that tracks requests in flight: the offer
    /// gains INFLIGHT_SHMFD; GET_INFLIGHT_FD is answered with a zeroed
    /// region of the spec's size; SET_INFLIGHT_FD installs a region (acked
    /// when asked) and refuses one whose file is too small; neither
    /// reaches the handler.
    #[test]
    fn the_relay_serves_the_inflight_region() {
        use std::os::unix::fs::FileExt;
        let (frontend, far) = UnixStream::pair().unwrap();
        let (ours, handler) = UnixStream::pair().unwrap();
        let slot = Arc::new(Slot::default());
        let t = spawn(far, ours, "test".into(), Some(slot.clone())).unwrap();

        send(&frontend, &msg(GET_PROTOCOL_FEATURES, VERSION_1, &[])).unwrap();
        assert_eq!(
            recv(&handler).unwrap().unwrap().request(),
            GET_PROTOCOL_FEATURES
        );
        send(
            &handler,
            &reply(GET_PROTOCOL_FEATURES, 0x3u64.to_le_bytes().to_vec(), vec![]),
        )
        .unwrap();
        let offer = recv(&frontend).unwrap().unwrap().u64_body().unwrap();
        assert_eq!(offer, 0x3 | PROTOCOL_F_INFLIGHT_SHMFD);

        let get = inflight_body((0, 0, 2, 128));
        send(&frontend, &msg(GET_INFLIGHT_FD, VERSION_1, &get)).unwrap();
        let mut got = recv(&frontend).unwrap().unwrap();
        assert_eq!(got.request(), GET_INFLIGHT_FD);
        let (size, offset, nq, qs) = parse_inflight(&got.body).unwrap();
        assert_eq!(
            (size, offset, nq, qs),
            (2 * inflight::queue_region_size(128), 0, 2, 128)
        );
        assert_eq!(got.body.len(), INFLIGHT_LEN);
        let file = std::fs::File::from(got.fds.pop().expect("a descriptor"));
        assert_eq!(file.metadata().unwrap().len(), size);
        let mut b = vec![1u8; size as usize];
        file.read_exact_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert!(slot.get().is_none(), "GET installs nothing");

        let mut set = msg(
            SET_INFLIGHT_FD,
            VERSION_1 | NEED_REPLY,
            &inflight_body((size, 0, 2, 128)),
        );
        set.fds.push(OwnedFd::from(file.try_clone().unwrap()));
        send(&frontend, &set).unwrap();
        assert_eq!(recv(&frontend).unwrap().unwrap().u64_body(), Some(0));
        assert!(slot.tracker(1).is_some());

        let mut bad = msg(
            SET_INFLIGHT_FD,
            VERSION_1 | NEED_REPLY,
            &inflight_body((size * 2, 0, 2, 128)),
        );
        bad.fds.push(OwnedFd::from(file));
        send(&frontend, &bad).unwrap();
        assert_eq!(recv(&frontend).unwrap().unwrap().u64_body(), Some(1));

        // The handler saw none of them: the next thing it gets is this.
        send(&frontend, &msg(1, VERSION_1, &[])).unwrap();
        assert_eq!(recv(&handler).unwrap().unwrap().request(), 1);
        drop(frontend);
        t.join().unwrap();
    }

    #[test]
    fn abstract_names_give_a_connected_pair_each_time() {
        let dir = RelayDir::abstract_names();
        for _ in 0..2 {
            let (listener, ours) = dir.pair().unwrap();
            let handler = listener.accept().unwrap().unwrap();
            send(&ours, &ack(7)).unwrap();
            assert_eq!(recv(&handler).unwrap().unwrap().request(), 7);
        }
    }

    /// In the host's network namespace (the chroot jail) anyone may
    /// connect to an abstract name: a name taken is not used, and once
    /// ours is queued nobody else's is, so the handler's accept is ours.
    #[test]
    fn an_abstract_listener_queues_our_connection_and_no_other() {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let name = format!("vhost-user-relay-test.{}", std::process::id());
        let (listener, ours) = RelayDir::abstract_pair_at(&name).unwrap().unwrap();
        assert!(
            RelayDir::abstract_pair_at(&name).unwrap().is_none(),
            "a name in use was taken again"
        );
        let other = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        // SAFETY: `socket` just returned it; closed on drop.
        let other = unsafe { OwnedFd::from_raw_fd(other) };
        let addr = UnixAddr::new_abstract(name.as_bytes()).unwrap();
        assert_eq!(
            connect(other.as_raw_fd(), &addr),
            Err(nix::Error::EAGAIN),
            "a second connection was queued behind ours"
        );
        let handler = listener.accept().unwrap().unwrap();
        send(&ours, &ack(9)).unwrap();
        assert_eq!(recv(&handler).unwrap().unwrap().request(), 9);
    }

    #[test]
    fn an_oversized_body_ends_the_relay() {
        let (frontend, far) = UnixStream::pair().unwrap();
        let (ours, handler) = UnixStream::pair().unwrap();
        let t = spawn(far, ours, "test".into(), None).unwrap();
        let mut m = msg(1, VERSION_1, &[]);
        m.set_word(2, (MAX_BODY + 1) as u32);
        send(&frontend, &m).unwrap();
        assert!(recv(&handler).unwrap().is_none());
        t.join().unwrap();
    }

    #[test]
    fn a_message_with_more_descriptors_than_fit_is_refused_by_name() {
        let (frontend, far) = UnixStream::pair().unwrap();
        let fds: Vec<OwnedFd> = (0..MAX_FDS + 1)
            .map(|_| std::fs::File::open("/dev/null").unwrap().into())
            .collect();
        let m = Message {
            fds,
            ..msg(1, VERSION_1, &[])
        };
        send(&frontend, &m).unwrap();
        let Err(e) = recv(&far) else {
            panic!("a message with {} descriptors was received", MAX_FDS + 1)
        };
        let e = e.to_string();
        assert!(e.contains("GET_FEATURES"), "{e}");
        assert!(e.contains("more than 32 descriptors"), "{e}");
        // The relay itself ends the connection: the handler sees nothing.
        let (frontend, far) = UnixStream::pair().unwrap();
        let (ours, handler) = UnixStream::pair().unwrap();
        let t = spawn(far, ours, "test".into(), None).unwrap();
        send(&frontend, &m).unwrap();
        assert!(recv(&handler).unwrap().is_none());
        t.join().unwrap();
    }
}
