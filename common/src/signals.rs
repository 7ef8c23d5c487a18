//! SIGTERM and SIGINT turned into a file descriptor that becomes readable,
//! so a loop can wait for a connection, a disconnect or a shutdown request
//! with one poll(2).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// Errors installing the handlers.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// socketpair failed.
    #[error("cannot create the signal wake-up socket: {0}")]
    Socket(io::Error),
    /// Registering a handler failed.
    #[error("cannot install a handler for signal {signal}: {source}")]
    Register {
        /// The signal number.
        signal: i32,
        /// Cause.
        source: io::Error,
    },
}

/// A shutdown request (SIGTERM or SIGINT). The handler writes one byte to a
/// socket whose other end [`Shutdown::fd`] exposes.
#[derive(Debug)]
pub struct Shutdown {
    read: UnixStream,
    _write: UnixStream,
}

impl Shutdown {
    /// Installs the SIGTERM and SIGINT handlers.
    pub fn install() -> Result<Self, SignalError> {
        let (read, write) = UnixStream::pair().map_err(SignalError::Socket)?;
        read.set_nonblocking(true).map_err(SignalError::Socket)?;
        write.set_nonblocking(true).map_err(SignalError::Socket)?;
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let w = write.try_clone().map_err(SignalError::Socket)?;
            signal_hook::low_level::pipe::register(signal, w)
                .map_err(|source| SignalError::Register { signal, source })?;
        }
        Ok(Shutdown {
            read,
            _write: write,
        })
    }

    /// Readable once a shutdown was requested (and stays readable).
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Whether a shutdown was requested.
    pub fn requested(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags};
        poll(&mut [PollFd::new(self.fd(), PollFlags::POLLIN)], 0).is_ok_and(|n| n > 0)
    }
}
