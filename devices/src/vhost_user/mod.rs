//! The generic vhost-user frontend (issue #6): one [`VhostUserDevice`] for
//! every device type; blk, net, fs, vsock, rng, console and any other
//! type by number differ only in their [`DeviceKind`] (and
//! [`DeviceOptions`]: queue count, configuration length and defaults).
//!
//! At construction the device connects to the backend's socket and sends
//! SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES
//! (REPLY_ACK, MQ, CONFIG, CONFIGURE_MEM_SLOTS, RESET_DEVICE when offered) and
//! GET_QUEUE_NUM (with MQ). When the driver sets DRIVER_OK
//! ([`VirtioDevice::activate`](crate::virtio_pci::VirtioDevice::activate)) it
//! sends SET_FEATURES, SET_MEM_TABLE and, per queue, SET_VRING_NUM, _ADDR,
//! _BASE, _CALL, _KICK and _ENABLE; on reset, GET_VRING_BASE per started
//! queue and RESET_DEVICE (or RESET_OWNER and a new handshake). The driver
//! reads the device configuration from a copy taken with GET_CONFIG at
//! each connection (when CONFIG was negotiated, else the kind's defaults);
//! its writes go to the copy and, with CONFIG, out as SET_CONFIG.
//!
//! A VMM hands these requests to a thread of its own
//! ([`VhostUserDevice::defer_requests`] with a [`Deferrer`]), so no vCPU
//! ever waits for a backend's reply: a DRIVER_OK write returns at once
//! (the rings are kicked once the activation is done), a reset shows the
//! driver its old status until it is done (a virtio 1.x driver waits for
//! 0), SET_CONFIG goes out in order behind them; the state, features and
//! configuration stay readable meanwhile.
//!
//! REPLY_ACK: every set message carries NEED_REPLY once the backend acks
//! them, that is from the SET_FEATURES that acks PROTOCOL_FEATURES on. The
//! rust-vmm backend library only answers NEED_REPLY after that point, so
//! SET_OWNER, SET_PROTOCOL_FEATURES and a SET_CONFIG before DRIVER_OK go
//! without it.
//!
//! A backend that dies does not take the VM down: the first socket error
//! is logged once with the socket path and marks the device
//! [`DeviceState::Failed`], which makes
//! [`VirtioDevice::needs_reset`](crate::virtio_pci::VirtioDevice::needs_reset)
//! true, which the transport turns into DEVICE_NEEDS_RESET and a
//! configuration interrupt. The VMM may also watch
//! [`VhostUserDevice::connection_fd`] and call
//! [`VhostUserDevice::check_connection`] when it becomes readable, to notice
//! a death while the device is idle.
//!
//! With [`DeviceOptions::reconnect`] the device goes to
//! [`DeviceState::Reconnecting`] instead: the driver sees nothing (its
//! configuration reads get the last copy, its kicks wait in the kick
//! eventfds, an activation or reset meanwhile is remembered), and the VMM
//! renews the connection through a [`Reconnector`], which replays the whole
//! setup: the handshake, then, if the driver had started the device,
//! SET_FEATURES (refused, and the device Failed, when the backend now
//! offers less than the driver acked), SET_MEM_TABLE, the activation's
//! in-flight region (SET_INFLIGHT_FD, when the backend offers
//! INFLIGHT_SHMFD: the activation asked the first backend for it with
//! GET_INFLIGHT_FD) and each ring with its base at the used index in guest
//! memory, and one kick per ring. With the region, the backend resubmits
//! what the dead one had taken and not completed, exactly once even when
//! completions came out of order, and takes new requests after them;
//! without it, as QEMU does, those requests are read again from the avail
//! ring (right only if they would have completed in order).
//!
//! The configuration layouts of net and fs (what the frontend shows a
//! driver when the backend serves no GET_CONFIG) are in [`config`].
//!
//! The socket sits behind the [`VhostUserConn`] trait so the unit tests can
//! put a fake backend there.

pub mod config;
mod conn;
mod device;
mod memory;

pub use conn::{TimedFrontend, VhostUserConn, REPLY_TIMEOUT};
pub use device::{Deferrer, DeviceOptions, DeviceState, Reconnector, VhostUserDevice};
pub use memory::{MemoryRegionInfo, MemoryTable, MAX_MEM_REGIONS};

use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use thiserror::Error;
use virtio_bindings::virtio_ids::{
    VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_FS, VIRTIO_ID_NET, VIRTIO_ID_RNG, VIRTIO_ID_VSOCK,
};
use vmm_sys_util::eventfd::EventFd;

/// VHOST_USER_F_PROTOCOL_FEATURES (bit 30): vhost-user's own feature bit,
/// never shown to the guest.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Which virtio device a backend implements, with its defaults. blk, fs
/// and net are the project's own daemons; the rest is the generic device
/// (`--vhost-user type=...`): any device type any vhost-user backend
/// serves, its configuration read with GET_CONFIG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-net (type 1): one RX/TX pair.
    Net,
    /// virtio-blk (type 2): one request queue.
    Block,
    /// virtio-fs (type 26): the high-priority queue and one request queue.
    Fs,
    /// virtio-vsock (type 19): RX, TX and the event queue, which stays in
    /// the VMM (as QEMU's vhost-user-vsock keeps it): the backend serves
    /// RX and TX only.
    Vsock,
    /// virtio-rng (type 4): one request queue.
    Rng,
    /// virtio-console (type 3): port 0's receive and transmit queues.
    Console,
    /// Any other virtio device type, by number.
    Other(u32),
}

impl DeviceKind {
    /// The virtio device type.
    pub fn device_type(self) -> u32 {
        match self {
            Self::Net => VIRTIO_ID_NET,
            Self::Block => VIRTIO_ID_BLOCK,
            Self::Fs => VIRTIO_ID_FS,
            Self::Vsock => VIRTIO_ID_VSOCK,
            Self::Rng => VIRTIO_ID_RNG,
            Self::Console => VIRTIO_ID_CONSOLE,
            Self::Other(t) => t,
        }
    }

    /// The kind of virtio device type `t` (a named kind where there is one).
    pub fn from_device_type(t: u32) -> Self {
        [
            Self::Net,
            Self::Block,
            Self::Fs,
            Self::Vsock,
            Self::Rng,
            Self::Console,
        ]
        .into_iter()
        .find(|k| k.device_type() == t)
        .unwrap_or(Self::Other(t))
    }

    /// Queues used when the caller does not ask for a number.
    pub fn default_queues(self) -> usize {
        match self {
            Self::Net | Self::Fs | Self::Console => 2,
            Self::Vsock => 3,
            Self::Block | Self::Rng | Self::Other(_) => 1,
        }
    }

    /// How many of the device's last queues stay in the VMM, never handed
    /// to the backend: virtio-vsock's event queue (the device only uses
    /// it to tell the driver of a transport reset, which a VMM without
    /// migration never sends; the driver's buffers simply wait there).
    pub fn vmm_queues(self) -> usize {
        match self {
            Self::Vsock => 1,
            _ => 0,
        }
    }

    /// Largest queue size offered to the driver.
    pub fn default_queue_size(self) -> u16 {
        match self {
            Self::Fs => 1024,
            _ => 256,
        }
    }

    /// Length of the device configuration: `virtio_net_config` up to `mtu`
    /// (12), `virtio_blk_config` up to `write_zeroes_may_unmap` and its
    /// padding (60), `virtio_fs_config` (40), `virtio_vsock_config` (8),
    /// `virtio_console_config` (12), none for rng, and none known for
    /// another type (the caller gives one).
    pub fn config_len(self) -> usize {
        match self {
            Self::Net => config::NET_CONFIG_LEN,
            Self::Block => config::BLK_CONFIG_LEN,
            Self::Fs => config::FS_CONFIG_LEN,
            Self::Vsock => config::VSOCK_CONFIG_LEN,
            Self::Console => config::CONSOLE_CONFIG_LEN,
            Self::Rng | Self::Other(_) => 0,
        }
    }

    /// `blk`, `fs`, `net`, `vsock`, `rng`, `console`, or `generic` for
    /// another type (logs and `vm.info`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Net => "net",
            Self::Block => "blk",
            Self::Fs => "fs",
            Self::Vsock => "vsock",
            Self::Rng => "rng",
            Self::Console => "console",
            Self::Other(_) => "generic",
        }
    }
}

/// The two eventfds of one queue.
#[derive(Debug)]
pub struct QueueEvents {
    /// Written by the guest's notify (the VMM's ioeventfd on the queue's
    /// notify address); the backend reads it (SET_VRING_KICK).
    pub kick: EventFd,
    /// Written by the backend when it used buffers (SET_VRING_CALL); the VMM
    /// has it as an irqfd for the queue's MSI-X vector.
    pub call: EventFd,
}

/// Gives the device each queue's eventfds at activation. Implemented by the
/// VMM, which registers `kick` as an ioeventfd at the queue's notify address
/// and `call` as an irqfd routed to `msix_vector`.
pub trait QueueEventProvider: Send {
    /// The eventfds for `queue`, whose driver chose `msix_vector`
    /// ([`MSIX_NO_VECTOR`](crate::pci::MSIX_NO_VECTOR) for none).
    fn queue_events(&mut self, queue: u16, msix_vector: u16) -> std::io::Result<QueueEvents>;
}

/// Errors of the vhost-user frontend. One variant per failing request.
#[derive(Debug, Error)]
pub enum VhostUserError {
    /// The backend's socket could not be reached.
    #[error("cannot connect to the vhost-user backend socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SET_OWNER failed.
    #[error("SET_OWNER failed")]
    SetOwner(#[source] vhost::Error),
    /// RESET_OWNER failed.
    #[error("RESET_OWNER failed")]
    ResetOwner(#[source] vhost::Error),
    /// RESET_DEVICE failed.
    #[error("RESET_DEVICE failed")]
    ResetDevice(#[source] vhost::Error),
    /// GET_FEATURES failed.
    #[error("GET_FEATURES failed")]
    GetFeatures(#[source] vhost::Error),
    /// SET_FEATURES failed.
    #[error("SET_FEATURES failed")]
    SetFeatures(#[source] vhost::Error),
    /// GET_PROTOCOL_FEATURES failed.
    #[error("GET_PROTOCOL_FEATURES failed")]
    GetProtocolFeatures(#[source] vhost::Error),
    /// SET_PROTOCOL_FEATURES failed.
    #[error("SET_PROTOCOL_FEATURES failed")]
    SetProtocolFeatures(#[source] vhost::Error),
    /// GET_QUEUE_NUM failed.
    #[error("GET_QUEUE_NUM failed")]
    GetQueueNum(#[source] vhost::Error),
    /// SET_MEM_TABLE failed.
    #[error("SET_MEM_TABLE failed")]
    SetMemTable(#[source] vhost::Error),
    /// GET_INFLIGHT_FD failed.
    #[error("GET_INFLIGHT_FD failed")]
    GetInflightFd(#[source] vhost::Error),
    /// SET_INFLIGHT_FD failed.
    #[error("SET_INFLIGHT_FD failed")]
    SetInflightFd(#[source] vhost::Error),
    /// SET_VRING_NUM failed.
    #[error("SET_VRING_NUM failed")]
    SetVringNum(#[source] vhost::Error),
    /// SET_VRING_ADDR failed.
    #[error("SET_VRING_ADDR failed")]
    SetVringAddr(#[source] vhost::Error),
    /// SET_VRING_BASE failed.
    #[error("SET_VRING_BASE failed")]
    SetVringBase(#[source] vhost::Error),
    /// GET_VRING_BASE failed.
    #[error("GET_VRING_BASE failed")]
    GetVringBase(#[source] vhost::Error),
    /// SET_VRING_CALL failed.
    #[error("SET_VRING_CALL failed")]
    SetVringCall(#[source] vhost::Error),
    /// SET_VRING_KICK failed.
    #[error("SET_VRING_KICK failed")]
    SetVringKick(#[source] vhost::Error),
    /// SET_VRING_ENABLE failed.
    #[error("SET_VRING_ENABLE failed")]
    SetVringEnable(#[source] vhost::Error),
    /// GET_CONFIG failed.
    #[error("GET_CONFIG failed")]
    GetConfig(#[source] vhost::Error),
    /// SET_CONFIG failed.
    #[error("SET_CONFIG failed")]
    SetConfig(#[source] vhost::Error),
    /// With MQ, the backend has fewer queues than the device needs.
    #[error("the backend serves {offered} queues, {wanted} are configured")]
    QueueCount {
        /// From GET_QUEUE_NUM.
        offered: u64,
        /// Configured.
        wanted: usize,
    },
    /// The VMM could not give a queue's eventfds.
    #[error("no kick/call eventfds for queue {queue}")]
    QueueEvents {
        /// Queue index.
        queue: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A ring lies outside the memory table.
    #[error("queue {queue}: {ring} at {addr:#x} is outside guest memory")]
    RingAddress {
        /// Queue index.
        queue: u16,
        /// "descriptor table", "available ring" or "used ring".
        ring: &'static str,
        /// Guest-physical address.
        addr: u64,
    },
    /// A guest memory region has no backing file to share.
    #[error("guest memory at {0:#x} is not backed by a file the backend could map")]
    MemoryNotShared(u64),
    /// The memory table is empty or too large for SET_MEM_TABLE.
    #[error("{0} memory regions; SET_MEM_TABLE takes 1 to 8")]
    MemoryRegionCount(usize),
    /// The backend failed earlier; the device needs a reset.
    #[error("the backend is gone")]
    Failed,
    /// A reconnected backend offers less than the driver acked.
    #[error(
        "the backend now offers features {offered:#x}, without {:#x} of the {acked:#x} in use",
        acked & !offered
    )]
    FeaturesLost {
        /// The features in use (the driver's, and PROTOCOL_FEATURES).
        acked: u64,
        /// GET_FEATURES of the new connection.
        offered: u64,
    },
}

impl VhostUserError {
    /// The request failed because the connection is gone or out of step
    /// (the peer closed, a socket error, a partial or malformed reply), so
    /// a reconnect, not a retry, is what could help. A backend's NACK or a
    /// local error is not a disconnect.
    pub fn is_disconnect(&self) -> bool {
        use vhost::vhost_user::Error as Vu;
        let source = match self {
            Self::Failed => return true,
            Self::SetOwner(e)
            | Self::ResetOwner(e)
            | Self::ResetDevice(e)
            | Self::GetFeatures(e)
            | Self::SetFeatures(e)
            | Self::GetProtocolFeatures(e)
            | Self::SetProtocolFeatures(e)
            | Self::GetQueueNum(e)
            | Self::SetMemTable(e)
            | Self::GetInflightFd(e)
            | Self::SetInflightFd(e)
            | Self::SetVringNum(e)
            | Self::SetVringAddr(e)
            | Self::SetVringBase(e)
            | Self::GetVringBase(e)
            | Self::SetVringCall(e)
            | Self::SetVringKick(e)
            | Self::SetVringEnable(e)
            | Self::GetConfig(e)
            | Self::SetConfig(e) => e,
            Self::Connect { .. }
            | Self::QueueCount { .. }
            | Self::QueueEvents { .. }
            | Self::RingAddress { .. }
            | Self::MemoryNotShared(_)
            | Self::MemoryRegionCount(_)
            | Self::FeaturesLost { .. } => return false,
        };
        match source {
            vhost::Error::VhostUserProtocol(e) => matches!(
                e,
                Vu::Disconnected
                    | Vu::SocketBroken(_)
                    | Vu::SocketError(_)
                    | Vu::SocketRetry(_)
                    | Vu::PartialMessage
                    | Vu::InvalidMessage
                    | Vu::OversizedMsg
                    | Vu::IncorrectFds
            ),
            vhost::Error::IOError(_) => true,
            _ => false,
        }
    }
}

/// Whether a socket has hung up or has unexpected data (the frontend waits
/// for nothing between requests), without blocking.
fn peer_gone(fd: &impl AsRawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`, which lives across the
    // call; MSG_PEEK leaves the data queued and MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        );
    }
    true
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod daemon_tests;
