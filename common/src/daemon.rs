//! The daemon lifecycle, written once: [`run`] takes the listening socket
//! (`--socket-path`, `--fd` or systemd socket activation), connects to
//! systemd, installs the SIGTERM/SIGINT handler, lets the daemon confine
//! itself (the sandbox) between listening and the seccomp filter, serves
//! one frontend after another with a fresh [`Backend`] each, and on
//! SIGTERM quiesces, lets the daemon flush and removes the socket file.
//! [`exit`] turns the outcome into the exit code and the one `error:`
//! line on stderr.
//!
//! The order matters: the socket is bound before the daemon's `confine`
//! (a namespace sandbox forks, and socket activation's `LISTEN_PID` names
//! the process that listens); systemd and the signal handler come before
//! it (a new network namespace hides abstract sockets, and the sandboxed
//! child inherits the handler); seccomp comes last, before any thread.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::backend::{Backend, Device};
use crate::cli::VhostUserArgs;
use crate::relay::{RelayDir, RelayError};
use crate::sandbox::SandboxMode;
use crate::seccomp::{self, SeccompAction, SeccompError};
use crate::serve::{self, ServeError};
use crate::signals::{Shutdown, SignalError};
use crate::socket::{BoundSocket, SocketError};
pub use crate::BoxError;

/// Why a daemon did not run or stopped with an error. The message is the
/// cause's own: each names the option, path or socket concerned.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The command line is inconsistent (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The daemon's own setup failed: opening its image or tap, the
    /// sandbox, logging.
    #[error("{0}")]
    Setup(BoxError),
    /// Installing the SIGTERM/SIGINT handler failed.
    #[error(transparent)]
    Signals(#[from] SignalError),
    /// No listening socket.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The relay's directory could not be made.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

impl DaemonError {
    /// A daemon's own setup error.
    pub fn setup(e: impl Into<BoxError>) -> Self {
        DaemonError::Setup(e.into())
    }

    /// The process exit code: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// What [`run`] needs to know about a daemon besides its [`Service`].
#[derive(Debug)]
pub struct Spec<'a> {
    /// Program name (thread names, logs).
    pub name: &'static str,
    /// `--socket-path`, `--fd`, `--poll-us`.
    pub vhost_user: &'a VhostUserArgs,
    /// `--seccomp`.
    pub seccomp: SeccompAction,
    /// System calls beyond `seccomp::VHOST_USER_BASE`.
    pub syscalls: &'a [i64],
    /// ioctl requests beyond `seccomp::VHOST_USER_IOCTLS`.
    pub ioctls: &'a [u64],
    /// Pass each connection through a [`relay`](crate::relay) (for
    /// frontends that enable rings before setting features).
    pub relay: Relay,
    /// The daemon opens and removes no file by path once confined (a
    /// jailed vhost-blk-daemon or vhost-net-daemon): its filter drops
    /// [`seccomp::FILES`] ([`seccomp::apply_without_files`]).
    pub no_files: bool,
}

/// Whether and how connections pass through a [`relay`](crate::relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    Off,
    /// Its sockets in a private directory ([`crate::relay::RelayDir::create`]).
    Dir,
    /// Its sockets on abstract names: for a jailed daemon, whose root has
    /// no directory to bind in.
    Abstract,
}

impl Relay {
    /// The relay a daemon jailed in `mode` gets: abstract names in a jail
    /// (in the namespace jail's network namespace of its own; in a
    /// chroot's, the host's, guarded as
    /// [`RelayDir::abstract_names`] says), a private directory without a
    /// jail. Through the relay, a message with more descriptors than a
    /// vhost-user message may carry is refused by name and ends the
    /// connection (the vhost crate alone drops it unlogged and reads on),
    /// and a device may track requests in flight.
    pub fn for_sandbox(mode: SandboxMode) -> Self {
        match mode {
            SandboxMode::Namespace | SandboxMode::Chroot => Relay::Abstract,
            SandboxMode::None => Relay::Dir,
        }
    }
}

/// What a daemon serves, once confined.
pub trait Service: Send + Sync + 'static {
    /// The device each connection gets (a fresh one per frontend).
    type Device: Device;

    /// The device for a new frontend.
    fn connect(self: &Arc<Self>) -> io::Result<Self::Device>;

    /// Runs once everything is set up, right before serving (after the
    /// seccomp filter): log what is served, print a ready line.
    fn ready(&self) {}

    /// Runs after a frontend left and its workers stopped; `false` stops
    /// serving.
    fn after_disconnect(&self) -> bool {
        true
    }

    /// Runs once serving has ended (SIGTERM): flush, log counters.
    fn stopped(&self) {}
}

/// Where the relay makes its sockets: `$RUNTIME_DIRECTORY` (systemd's
/// `RuntimeDirectory=`) or the temporary directory.
fn relay_parent() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Runs a daemon: listen, `confine` (the sandbox; it returns the
/// service), seccomp, serve until SIGTERM, then
/// [`Service::stopped`]. Logging must be set up before. `confine` gets
/// the listening socket: a sandbox takes the socket file's removal from it
/// ([`crate::socket::BoundSocket::take_file`]), since that holds a
/// descriptor of a directory outside the sandbox.
pub fn run<S, C>(spec: Spec<'_>, confine: C) -> Result<(), DaemonError>
where
    S: Service,
    C: FnOnce(&mut BoundSocket) -> Result<S, BoxError>,
{
    crate::systemd::connect();
    crate::sandbox::set_supervisor_seccomp(spec.seccomp);
    let shutdown = Shutdown::install()?;
    let mut socket = spec.vhost_user.socket_source().listen()?;
    let relay = match spec.relay {
        Relay::Dir => Some(RelayDir::create(&relay_parent())?),
        Relay::Abstract => Some(RelayDir::abstract_names()),
        Relay::Off => None,
    };
    let service = Arc::new(confine(&mut socket).map_err(DaemonError::Setup)?);
    let mut allowed = seccomp::VHOST_USER_BASE.to_vec();
    allowed.extend_from_slice(spec.syscalls);
    if spec.relay != Relay::Off {
        allowed.extend_from_slice(seccomp::RELAY);
    }
    let mut ioctls = seccomp::VHOST_USER_IOCTLS.to_vec();
    ioctls.extend_from_slice(spec.ioctls);
    if spec.no_files {
        seccomp::apply_without_files(spec.seccomp, &allowed, &ioctls)?;
    } else {
        seccomp::apply(spec.seccomp, &allowed, &ioctls)?;
    }
    service.ready();
    let options = spec.vhost_user.ring_options();
    serve::serve(
        spec.name,
        &mut socket,
        &shutdown,
        relay.as_ref(),
        || Ok::<_, io::Error>(Arc::new(Backend::new(service.connect()?, options))),
        || service.after_disconnect(),
    )?;
    service.stopped();
    drop(socket); // removes the socket file we created
    Ok(())
}

/// The exit code of `result`, after printing its error as one `error:`
/// line on stderr.
pub fn exit(result: Result<(), DaemonError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_keep_their_message() {
        let e = DaemonError::Usage("--blk-file PATH is required".into());
        assert_eq!(
            (e.exit_code(), e.to_string().as_str()),
            (2, "--blk-file PATH is required")
        );
        let e = DaemonError::setup("--shared-dir /x: not a directory");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "--shared-dir /x: not a directory");
        let e = DaemonError::from(SocketError::NoSocket);
        assert_eq!(e.to_string(), SocketError::NoSocket.to_string());
    }
}
