//! Plumbing shared by the vhost-user daemons (`vhost-blk-daemon`,
//! `vhost-net-daemon`, `virtiofsd`), following QEMU's conventions for
//! vhost-user backends (docs/interop/vhost-user.rst, "Backend program
//! conventions"):
//!
//! - [`cli`]: the options every daemon takes (`--socket-path`, `--fd`,
//!   `--print-capabilities`, `--log-level`) and the capabilities JSON.
//! - [`socket`]: the listening socket, from a path, an inherited fd or
//!   systemd socket activation; stale-socket and in-use detection.
//! - [`systemd`]: `READY=1`, `STOPPING=1`, `WATCHDOG=1`.
//! - [`signals`]: SIGTERM/SIGINT as a pollable file descriptor.
//! - [`logging`]: stderr logging that journald understands; [`ratelimit`]
//!   for guest-caused warnings.
//! - [`iov`]: guest buffers as host iovecs; [`inflight`]: the in-flight
//!   region (INFLIGHT_SHMFD) that lets a restarted daemon resubmit requests.
//! - [`queue`]: the batch loop a worker runs on a kick; [`memory`]: a new
//!   guest memory map checked against its descriptors before workers use it.
//! - [`relay`]: holds a SET_VRING_ENABLE sent before SET_FEATURES.
//! - [`serve`]: the accept / serve / serve-again loop around
//!   `vhost-user-backend`'s daemon, one backend instance per connection.
//! - [`backend`]: the one `VhostUserBackend`, over a small [`backend::Device`]
//!   trait each daemon implements.
//! - [`daemon`]: the lifecycle every daemon runs ([`daemon::run`]): listen,
//!   systemd, sandbox, seccomp, serve again, SIGTERM, the exit code.
//! - [`sandbox`]: namespaces, `pivot_root` or `chroot` into the shared
//!   directory, supplementary groups, capabilities, RLIMIT_NOFILE;
//!   [`seccomp`]: the system call allow-list.

pub mod backend;
pub mod cli;
pub mod daemon;
pub mod inflight;
pub mod iov;
pub mod logging;
pub mod memory;
pub mod queue;
pub mod relay;
pub mod sandbox;
pub mod seccomp;
pub mod serve;
pub mod signals;
pub mod socket;
pub mod systemd;
pub mod vring;

/// The log rate limit, shared with the VMM and its devices (crate `lograte`).
pub use lograte as ratelimit;

#[cfg(test)]
mod testutil;

/// Any error a daemon's own setup returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
