//! The control API on `--api-socket` (issue #6): HTTP/1.1 + JSON over a
//! Unix socket, on Cloud Hypervisor's paths where they fit.
//!
//! | method | path | success | body |
//! |---|---|---|---|
//! | GET | `/api/v1/vmm.ping` | 200 | `{"build_version", "version", "pid", "features": []}` |
//! | PUT | `/api/v1/vm.create` | 204 | a Cloud Hypervisor `VmConfig` ([`crate::config`]) |
//! | PUT | `/api/v1/vm.boot` | 204 | |
//! | PUT | `/api/v1/vm.delete` | 204 | |
//! | GET | `/api/v1/vm.info` | 200 | [`VmInfo`] |
//! | GET | `/api/v1/vm.counters` | 200 | [`Counters`]: `{"<device or vcpuN>": {"<counter>": n}}` |
//! | PUT | `/api/v1/vm.pause` | 204 | |
//! | PUT | `/api/v1/vm.resume` | 204 | |
//! | PUT | `/api/v1/vm.shutdown` | 204 | |
//! | PUT | `/api/v1/vm.reboot` | 204, once the VM built again runs | |
//! | PUT | `/api/v1/vm.power-button` | 204 | |
//! | PUT | `/api/v1/vm.add-disk`, `vm.add-fs`, `vm.add-net`, `vm.add-vsock` | 204 (before `vm.boot`) | an entry of `vm.create`'s `disks`, `fs`, `net`, or its `vsock` (one); `vm.add-net` with tap fds |
//! | PUT | `/api/v1/vmm.shutdown` | 204, then the connection closes | |
//!
//! `vm.create` needs its body; other request bodies are accepted (none,
//! or any JSON value such as `{}`) and ignored. File descriptors may come
//! with `vm.add-net` only (`SCM_RIGHTS`, at most [`MAX_REQUEST_FDS`], sent
//! with the request's first bytes); any other request that brings some is a 400,
//! and every descriptor a request does not use is closed. Every error has a JSON body
//! `{"error": "..."}` naming what was wrong: 400 malformed request line,
//! header or JSON body, or a `vm.create` field that is missing, malformed
//! or refused (the message starts with the field's path); 404 unknown
//! path, or no VM created yet; 405 wrong method (with `Allow`); 408 request not received in time;
//! 409 the action does not fit the VM's state; 411 `Transfer-Encoding`
//! (send `Content-Length`); 413 body too large; 431 head too large; 500
//! the action failed; 501 not supported by this VM; 503 too many
//! connections; 505 not HTTP/1.x. Limits are in [`Limits`].
//!
//! ```text
//! curl --unix-socket /tmp/api.sock http://localhost/api/v1/vmm.ping
//! curl --unix-socket /tmp/api.sock http://localhost/api/v1/vm.info
//! curl --unix-socket /tmp/api.sock http://localhost/api/v1/vm.counters
//! curl --unix-socket /tmp/api.sock -X PUT http://localhost/api/v1/vm.pause
//! curl --unix-socket /tmp/api.sock -X PUT http://localhost/api/v1/vm.resume
//! curl --unix-socket /tmp/api.sock -X PUT http://localhost/api/v1/vm.power-button
//! curl --unix-socket /tmp/api.sock -X PUT http://localhost/api/v1/vm.shutdown
//! curl --unix-socket /tmp/api.sock -X PUT http://localhost/api/v1/vm.reboot
//! curl --unix-socket /tmp/api.sock -X PUT http://localhost/api/v1/vmm.shutdown
//! ```
//!
//! Wiring it into the VMM:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn wire(ctl: Arc<dyn vmm::api::VmControl>) -> Result<(), vmm::api::ApiError> {
//! use vmm::api;
//! // Bind first (a stale socket file is replaced, a live one is an error);
//! // `socket_file` removes the file when dropped.
//! let (listener, socket_file) = api::bind("/tmp/api.sock".as_ref())?;
//! let stop = api::ApiStop::new()?;
//! let thread = api::serve(listener, ctl, stop.clone())?;
//! // ... run the VM until it ends or `VmControl::vmm_shutdown` is called ...
//! stop.stop();
//! let _ = thread.join(); // a response being written is finished first
//! drop(socket_file);
//! # Ok(()) }
//! ```
//!
//! [`VmControl::vmm_shutdown`] is called from an API connection thread and
//! should only ask the main loop to end (send an event, set a flag) and
//! return; the 204 is written after it returns, and stopping + joining the
//! server as above lets that reply reach the client before `main` exits.

mod http;
#[cfg(test)]
mod http_tests;
mod routes;
mod server;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

pub use http::{Limits, MAX_REQUEST_FDS};

/// The request decoder and the router without a socket, for the fuzz
/// targets (`fuzz/`); not part of the API.
#[doc(hidden)]
pub mod fuzz_api {
    pub use super::http::{Decoded, HttpError, Request, Response};
    pub use super::routes::{handle, Reply};
    use super::{ControlError, Limits, VmState};

    /// The state rule a VM double follows (the unit tests' and the fuzz
    /// target's): `action` moves `state` to `to` from one of `from`, and is
    /// refused as the real VM refuses it from any other.
    pub fn transition(
        state: &mut VmState,
        action: &'static str,
        from: &[VmState],
        to: VmState,
    ) -> Result<(), ControlError> {
        if !from.contains(state) {
            return Err(ControlError::InvalidState {
                action,
                state: *state,
            });
        }
        *state = to;
        Ok(())
    }

    /// The server's request decoder.
    #[derive(Debug)]
    pub struct Decoder(super::http::Decoder);

    impl Decoder {
        /// A decoder with these limits.
        pub fn new(limits: Limits) -> Self {
            Decoder(super::http::Decoder::new(limits))
        }

        /// Appends bytes read from the connection.
        pub fn feed(&mut self, data: &[u8]) {
            self.0.feed(data);
        }

        /// Whether part of a request has been received.
        pub fn in_request(&self) -> bool {
            self.0.in_request()
        }

        /// The next request, if all of it has arrived.
        pub fn decode(&mut self) -> Result<Decoded, HttpError> {
            self.0.next()
        }
    }
}

pub use server::{bind, serve, serve_with_limits, ApiError, ApiStop, SocketFile};

/// The VM's lifecycle state, spelled as Cloud Hypervisor spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum VmState {
    /// Built, vCPUs not started.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs paused by `vm.pause`.
    Paused,
    /// The guest has stopped (powered off, `vm.shutdown`).
    Shutdown,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Shutdown => "Shutdown",
        })
    }
}

/// The state of a device's vhost-user backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Not connected yet, or reconnecting.
    Connecting,
    /// Connected and set up.
    Connected,
    /// The backend went away.
    Disconnected,
    /// Setting the backend up failed ([`DeviceInfo::backend_error`] says why).
    Failed,
}

/// One vhost-user device, as `vm.info` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// `block`, `fs` or `net`.
    pub kind: String,
    /// The device's id (from the command line).
    pub id: String,
    /// The backend's vhost-user socket path.
    pub socket: String,
    /// The PCI address, `0000:00:02.0`, once the device is on the bus.
    pub pci_bdf: Option<String>,
    /// The backend connection's state.
    pub backend_state: BackendState,
    /// Why the backend failed or disconnected, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_error: Option<String>,
}

/// Guest memory, as `vm.info` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryInfo {
    /// Guest RAM in bytes.
    pub size: u64,
}

/// The body of `GET /api/v1/vm.info`: Cloud Hypervisor's `VmInfo`
/// (`state`, `config`, `memory_actual_size`) and ours beside it:
///
/// ```json
/// {"state": "Running", "config": {"payload": {"kernel": "..."}, ...},
///  "memory_actual_size": 536870912, "unsupported": ["rng: ignored"],
///  "cpus": 2, "memory": {"size": 536870912},
///  "devices": [{"kind": "block", "id": "disk0", "socket": "/run/blk.sock",
///               "pci_bdf": "0000:00:02.0", "backend_state": "connected"}]}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmInfo {
    /// The lifecycle state.
    pub state: VmState,
    /// The VM's config as a Cloud Hypervisor `VmConfig`: the `vm.create`
    /// body as sent, or the command line in that shape.
    pub config: serde_json::Value,
    /// Guest RAM in bytes (no balloon or hotplug here: the boot size).
    pub memory_actual_size: u64,
    /// Fields of `config` accepted and ignored (`"rng: ignored"`).
    pub unsupported: Vec<String>,
    /// The number of vCPUs.
    pub cpus: u8,
    /// Guest memory.
    pub memory: MemoryInfo,
    /// The vhost-user devices.
    pub devices: Vec<DeviceInfo>,
}

/// The body of `GET /api/v1/vm.counters`, shaped like Cloud Hypervisor's:
/// a map from a device id or `vcpuN` to that one's counters by name, e.g.
/// `{"vcpu0": {"exits": 1200, "io_exits": 800, "mmio_exits": 400},
///   "disk0": {"kicks": 50}}`.
pub type Counters = BTreeMap<String, BTreeMap<String, u64>>;

/// Why a control action was refused or failed; [`ControlError::status`]
/// is the HTTP status it is answered with.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The action does not fit the VM's state (pause a paused VM) → 409.
    #[error("cannot {action}: the VM is {state}")]
    InvalidState {
        /// The refused action (`pause`).
        action: &'static str,
        /// The state the VM is in.
        state: VmState,
    },
    /// No VM has been created (`vm.create` first) → 404.
    #[error("cannot {0}: no VM is created (PUT /api/v1/vm.create first)")]
    NotCreated(&'static str),
    /// `vm.create` while a VM exists → 409.
    #[error("a VM is already created (PUT /api/v1/vm.delete first)")]
    AlreadyCreated,
    /// A request that cannot be acted on as sent: a `vm.create` field, a
    /// file or socket it names → 400. The message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// This VM cannot do the action at all → 501.
    #[error("{0} is not supported by this VM")]
    Unsupported(&'static str),
    /// The action was attempted and failed → 500.
    #[error("{action} failed")]
    Failed {
        /// The action (`pause`).
        action: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ControlError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::InvalidState { .. } | ControlError::AlreadyCreated => 409,
            ControlError::NotCreated(_) => 404,
            ControlError::BadRequest(_) => 400,
            ControlError::Unsupported(_) => 501,
            ControlError::Failed { .. } => 500,
        }
    }
}

/// What the API needs from the VM. Every method is called from an API
/// connection thread, possibly from two connections at once, and must not
/// block for long: actions ask the VM to act and return once it has (or
/// has been told to).
pub trait VmControl: Send + Sync {
    /// Create the VM from a Cloud Hypervisor `VmConfig` (`vm.create`);
    /// nothing runs until [`VmControl::boot`].
    fn create(&self, config: &serde_json::Value) -> Result<(), ControlError>;
    /// Build and start the created VM (`vm.boot`).
    fn boot(&self) -> Result<(), ControlError>;
    /// Stop the VM if it runs and forget it (`vm.delete`).
    fn delete(&self) -> Result<(), ControlError>;
    /// State, config, vCPUs, memory and devices (`vm.info`).
    fn info(&self) -> Result<VmInfo, ControlError>;
    /// Per-device and per-vCPU counters (`vm.counters`).
    fn counters(&self) -> Counters;
    /// Pause the vCPUs (`vm.pause`).
    fn pause(&self) -> Result<(), ControlError>;
    /// Resume paused vCPUs (`vm.resume`).
    fn resume(&self) -> Result<(), ControlError>;
    /// Stop the guest (`vm.shutdown`).
    fn shutdown(&self) -> Result<(), ControlError>;
    /// Restart the guest from its kernel with every device reset
    /// (`vm.reboot`): the VM is built again from its config; returns once
    /// the new one runs.
    fn reboot(&self) -> Result<(), ControlError> {
        Err(ControlError::Unsupported("vm.reboot"))
    }
    /// Send an ACPI power-button event (`vm.power-button`).
    fn power_button(&self) -> Result<(), ControlError>;
    /// Ask the VMM process to exit (`vmm.shutdown`); see the module docs.
    fn vmm_shutdown(&self) -> Result<(), ControlError>;

    /// `vm.add-disk`, `vm.add-fs`, `vm.add-net`: one more device of
    /// `kind` (`body` as an entry of `vm.create`'s list), before `vm.boot`
    /// (cold plug; a running VM answers 409, hotplug is not supported yet).
    /// `fds` came with the request (`vm.add-net`'s tap queues); the ones
    /// not kept are closed when they are dropped.
    fn add_device(
        &self,
        _kind: devices::vhost_user::DeviceKind,
        _body: &serde_json::Value,
        _fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<(), ControlError> {
        Err(ControlError::Unsupported("adding a device"))
    }
}
