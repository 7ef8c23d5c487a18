//! The listening vhost-user socket: bound to `--socket-path`, inherited as
//! `--fd N`, or handed over by systemd socket activation (`LISTEN_FDS`).

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vhost::vhost_user::Listener;

/// Where the listening socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    /// Bind and listen on this path (`--socket-path`).
    Path(PathBuf),
    /// An inherited, already listening socket (`--fd`).
    Fd(RawFd),
    /// systemd socket activation: `LISTEN_PID` names us and `LISTEN_FDS`
    /// counts the sockets starting at fd 3.
    SystemdActivation,
}

impl fmt::Display for SocketSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSource::Path(p) => write!(f, "{}", p.display()),
            SocketSource::Fd(fd) => write!(f, "fd {fd}"),
            SocketSource::SystemdActivation => write!(f, "the systemd-activated socket"),
        }
    }
}

/// Errors acquiring the listening socket; each names the path or fd.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process listens on the path.
    #[error("socket path {0} is in use by another process")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Inspecting or removing a stale socket failed.
    #[error("cannot replace stale socket {path}: {source}")]
    Stale {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// bind/listen failed.
    #[error("cannot listen on socket path {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: vhost::vhost_user::Error,
    },
    /// The fd is not open.
    #[error("--fd {0}: not an open file descriptor")]
    FdNotOpen(RawFd),
    /// The fd is open but not a listening Unix stream socket.
    #[error("--fd {fd}: not a listening Unix stream socket ({why})")]
    FdNotListening {
        /// The fd.
        fd: RawFd,
        /// What is wrong with it.
        why: String,
    },
    /// Neither option was given and no socket was activated.
    #[error("no socket: give --socket-path PATH or --fd N, or start under systemd socket activation (LISTEN_FDS)")]
    NoSocket,
    /// `LISTEN_FDS`/`LISTEN_PID` could not be parsed.
    #[error("systemd socket activation: {0}")]
    Activation(io::Error),
    /// Socket activation passed more than one socket.
    #[error("systemd socket activation passed {0} sockets; exactly one is supported")]
    TooManyActivated(usize),
}

/// A listening socket ready for [`crate::serve`]. When it was bound from a
/// path, dropping it removes the socket file ([`SocketFile::remove`]),
/// unless a sandbox took that job ([`BoundSocket::take_file`]).
pub struct BoundSocket {
    /// The listener.
    pub listener: Listener,
    /// What it was created from (for log lines).
    pub source: SocketSource,
    file: Option<SocketFile>,
}

/// The socket file we bound, with what removes it later: a descriptor of
/// its directory (so it works after a sandbox moved the root), its name,
/// and its device and inode (so a file someone else put there since is
/// left alone).
///
/// The directory descriptor reaches outside any sandbox the daemon enters
/// afterwards (`openat(dir, "../..")` walks the host's tree), so a
/// sandboxed process must not keep one: the namespace sandbox hands it to
/// the supervising parent, which stays outside anyway; dropping it only
/// closes the descriptor.
pub struct SocketFile {
    dir: std::fs::File,
    name: std::ffi::CString,
    dev: u64,
    ino: u64,
    path: PathBuf,
}

impl SocketFile {
    /// Where the socket was bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if the name still is our socket.
    pub fn remove(self) {
        use nix::fcntl::AtFlags;
        use nix::unistd::{unlinkat, UnlinkatFlags};
        use std::os::fd::AsRawFd;
        let dir = self.dir.as_raw_fd();
        let st = nix::sys::stat::fstatat(dir, self.name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
        if st.is_ok_and(|st| st.st_dev == self.dev && st.st_ino == self.ino) {
            let _ = unlinkat(Some(dir), self.name.as_c_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

impl std::fmt::Debug for SocketFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketFile")
            .field("path", &self.path)
            .finish()
    }
}

impl BoundSocket {
    /// Takes the job of removing the socket file (None when it was not
    /// bound from a path, or already taken): dropping the socket no longer
    /// removes it.
    pub fn take_file(&mut self) -> Option<SocketFile> {
        self.file.take()
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            f.remove();
        }
    }
}

impl SocketSource {
    /// Acquires the listening socket.
    pub fn listen(&self) -> Result<BoundSocket, SocketError> {
        let mut file = None;
        let listener = match self {
            SocketSource::Path(path) => {
                let (listener, f) = bind_path(path)?;
                file = f;
                listener
            }
            SocketSource::Fd(fd) => adopt_fd(*fd, || SocketError::FdNotOpen(*fd))?,
            SocketSource::SystemdActivation => {
                let fds: Vec<RawFd> = sd_notify::listen_fds()
                    .map_err(SocketError::Activation)?
                    .collect();
                match fds.as_slice() {
                    [] => return Err(SocketError::NoSocket),
                    [fd] => adopt_fd(*fd, || SocketError::NoSocket)?,
                    more => return Err(SocketError::TooManyActivated(more.len())),
                }
            }
        };
        Ok(BoundSocket {
            listener,
            source: self.clone(),
            file,
        })
    }
}

fn bind_path(path: &Path) -> Result<(Listener, Option<SocketFile>), SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::info!("replacing stale socket {}", path.display());
                    std::fs::remove_file(path).map_err(|source| SocketError::Stale {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(SocketError::Stale {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::Stale {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let bind_err = |e: io::Error| SocketError::Bind {
        path: path.to_path_buf(),
        source: vhost::vhost_user::Error::SocketError(e),
    };
    let listener = bind_listening(path).map_err(bind_err)?;
    Ok((Listener::from(listener), socket_file(path)))
}

/// Binds and listens at a temporary name next to `path`, then renames it
/// into place: the path appears already listening, so a frontend that
/// connects as soon as it sees the file (QEMU, Kata, our tests) is never
/// refused in the moment between bind(2) and listen(2). Falls back to a
/// direct bind when the temporary name would be too long.
fn bind_listening(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::ffi::OsStrExt;
    let tmp = path.file_name().map(|name| {
        let mut n = std::ffi::OsString::from(".");
        n.push(name);
        n.push(format!(".{}.tmp", std::process::id()));
        path.with_file_name(n)
    });
    // sun_path holds 107 bytes and a NUL.
    match tmp {
        Some(tmp) if tmp.as_os_str().as_bytes().len() < 108 => {
            let _ = std::fs::remove_file(&tmp);
            let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
            if let Err(e) = std::fs::rename(&tmp, path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(listener)
        }
        _ => std::os::unix::net::UnixListener::bind(path),
    }
}

/// How to remove the socket we just bound at `path` later (None if the
/// directory cannot be opened: then it is left behind, logged).
fn socket_file(path: &Path) -> Option<SocketFile> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let dir_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name()?;
    let found = (|| {
        let dir = std::fs::File::open(dir_path)?;
        let meta = std::fs::symlink_metadata(path)?;
        let name = std::ffi::CString::new(name.as_bytes()).map_err(io::Error::other)?;
        Ok::<_, io::Error>(SocketFile {
            dir,
            name,
            dev: meta.dev(),
            ino: meta.ino(),
            path: path.to_path_buf(),
        })
    })();
    match found {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("{} will not be removed on exit: {e}", path.display());
            None
        }
    }
}

/// Checks that `fd` is an open, listening AF_UNIX stream socket and takes
/// ownership of it.
fn adopt_fd(fd: RawFd, not_open: impl Fn() -> SocketError) -> Result<Listener, SocketError> {
    if fd < 0 {
        return Err(not_open());
    }
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use nix::sys::socket::{
        getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
    };
    if fcntl(fd, FcntlArg::F_GETFD).is_err() {
        return Err(not_open());
    }
    let bad = |why: String| SocketError::FdNotListening { fd, why };
    let os = |e: nix::Error| bad(io::Error::from(e).to_string());
    let addr = getsockname::<SockaddrStorage>(fd).map_err(os)?;
    match addr.family() {
        Some(AddressFamily::Unix) => {}
        other => {
            let family = other.map_or(-1, |f| f as i32);
            return Err(bad(format!("address family {family}, not AF_UNIX")));
        }
    }
    let ty = getsockopt(fd, sockopt::SockType).map_err(os)?;
    if ty != SockType::Stream {
        return Err(bad(format!("socket type {}, not SOCK_STREAM", ty as i32)));
    }
    if !getsockopt(fd, sockopt::AcceptConn).map_err(os)? {
        return Err(bad("not listening".into()));
    }
    // Keeps the socket from leaking into programs we might exec.
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    // SAFETY: fd is an open listening Unix socket (checked above) that the
    // process inherited for us to serve; from here the Listener owns it and
    // nothing else in this process uses the number.
    Ok(unsafe { Listener::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixListener;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("common-socket-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s.sock")
    }

    #[test]
    fn path_in_use_is_refused_and_left_alone() {
        let p = tmp("inuse");
        let _other = UnixListener::bind(&p).unwrap();
        let err = SocketSource::Path(p.clone()).listen().err().unwrap();
        assert!(matches!(err, SocketError::InUse(ref q) if q == &p), "{err}");
        assert!(p.exists());
    }

    #[test]
    fn stale_socket_is_replaced_and_removed_on_drop() {
        let p = tmp("stale");
        drop(UnixListener::bind(&p).unwrap());
        assert!(p.exists());
        let bound = SocketSource::Path(p.clone()).listen().unwrap();
        UnixStream::connect(&p).unwrap();
        drop(bound);
        assert!(!p.exists());
    }

    #[test]
    fn regular_file_is_not_a_socket() {
        let p = tmp("file");
        std::fs::write(&p, b"x").unwrap();
        let err = SocketSource::Path(p.clone()).listen().err().unwrap();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
    }

    #[test]
    fn fd_checks() {
        let err = SocketSource::Fd(-1).listen().err().unwrap();
        assert!(matches!(err, SocketError::FdNotOpen(-1)));
        let f = std::fs::File::open("/dev/null").unwrap();
        let err = SocketSource::Fd(f.as_raw_fd()).listen().err().unwrap();
        assert!(matches!(err, SocketError::FdNotListening { .. }), "{err}");
        let (a, _b) = UnixStream::pair().unwrap();
        let err = SocketSource::Fd(a.as_raw_fd()).listen().err().unwrap();
        assert!(err.to_string().contains("not listening"), "{err}");

        let p = tmp("fd");
        let l = UnixListener::bind(&p).unwrap();
        let fd = l.into_raw_fd();
        let bound = SocketSource::Fd(fd).listen().unwrap();
        UnixStream::connect(&p).unwrap();
        drop(bound);
        // An inherited socket's path is not ours to remove.
        assert!(p.exists());
    }
}
