//! The virtio 1.x modern PCI transport (virtio 1.2 §4.1).
//!
//! [`VirtioPciDevice`] is a [`PciDevice`](crate::pci::PciDevice) for one
//! virtio device: vendor 0x1af4, device ID 0x1040 + type, revision 1, one
//! 64-bit memory BAR (BAR 0) holding the common configuration, ISR, device
//! configuration and notify regions and the MSI-X table and PBA, described by
//! vendor-specific capabilities (plus the PCI_CFG access capability).
//!
//! It drives a [`VirtioDevice`]: [`VirtioDevice::activate`] when the driver
//! sets DRIVER_OK, [`VirtioDevice::reset`] when it writes 0 to the status.
//! The VMM registers an ioeventfd at each
//! [`VirtioPciDevice::queue_notify_address`] and an irqfd per MSI-X vector
//! (through [`MsiSink`](crate::pci::MsiSink)); when a backend dies it calls
//! [`VirtioPciDevice::set_needs_reset`], which sets DEVICE_NEEDS_RESET and
//! sends a configuration-change interrupt.

mod common_cfg;
mod transport;

pub use common_cfg::COMMON_CFG_LEN;
pub use transport::{
    BarLayout, VirtioPciDevice, VirtioPciError, VIRTIO_PCI_BAR, VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_PCI_CFG, VIRTIO_PCI_DEVICE_ID_BASE, VIRTIO_PCI_MAX_QUEUES,
    VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER, VIRTIO_PCI_VENDOR_ID,
};

use thiserror::Error;
use virtio_bindings::virtio_config;

/// Status: the guest found the device.
pub const STATUS_ACKNOWLEDGE: u8 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
/// Status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER as u8;
/// Status: the driver is ready.
pub const STATUS_DRIVER_OK: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK as u8;
/// Status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK as u8;
/// Status: the device hit an error it cannot recover from without a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
/// Status: the driver gave up.
pub const STATUS_FAILED: u8 = virtio_config::VIRTIO_CONFIG_S_FAILED as u8;

/// VIRTIO_F_VERSION_1 (bit 32): the modern interface; always offered.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;
/// VIRTIO_F_RING_PACKED (bit 34): queue sizes need not be powers of two.
pub const VIRTIO_F_RING_PACKED: u64 = 1 << virtio_config::VIRTIO_F_RING_PACKED;
/// VIRTIO_F_SR_IOV (bit 37), not offered by this transport.
pub const VIRTIO_F_SR_IOV: u64 = 1 << virtio_config::VIRTIO_F_SR_IOV;
/// VIRTIO_F_NOTIFICATION_DATA (bit 38), not offered (notify writes carry only
/// the queue index).
pub const VIRTIO_F_NOTIFICATION_DATA: u64 = 1 << virtio_config::VIRTIO_F_NOTIFICATION_DATA;
/// VIRTIO_F_NOTIF_CONFIG_DATA (bit 39), not offered (no `queue_notify_data`).
pub const VIRTIO_F_NOTIF_CONFIG_DATA: u64 = 1 << virtio_config::VIRTIO_F_NOTIF_CONFIG_DATA;
/// VIRTIO_F_RING_RESET (bit 40), not offered (no `queue_reset`).
pub const VIRTIO_F_RING_RESET: u64 = 1 << virtio_config::VIRTIO_F_RING_RESET;
/// VIRTIO_F_ADMIN_VQ (bit 41), not offered.
pub const VIRTIO_F_ADMIN_VQ: u64 = 1 << virtio_config::VIRTIO_F_ADMIN_VQ;
/// Feature bits this transport removes from what the device offers.
pub const TRANSPORT_UNSUPPORTED_FEATURES: u64 = VIRTIO_F_SR_IOV
    | VIRTIO_F_NOTIFICATION_DATA
    | VIRTIO_F_NOTIF_CONFIG_DATA
    | VIRTIO_F_RING_RESET
    | VIRTIO_F_ADMIN_VQ;

/// ISR bit: a queue was used (only meaningful without MSI-X).
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// One queue as the driver set it up, handed to [`VirtioDevice::activate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue index.
    pub index: u16,
    /// Number of entries (a power of two for split rings).
    pub size: u16,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the driver (available) ring.
    pub avail_ring: u64,
    /// Guest-physical address of the device (used) ring.
    pub used_ring: u64,
    /// MSI-X vector for used-buffer notifications, or
    /// [`MSIX_NO_VECTOR`](crate::pci::MSIX_NO_VECTOR).
    pub msix_vector: u16,
}

/// A device could not start.
#[derive(Debug, Error)]
#[error("activating the virtio device failed")]
pub struct ActivateError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// The device behind the transport: the generic vhost-user frontend, or a
/// test double. Every method is required.
pub trait VirtioDevice: Send {
    /// Virtio device type (1 net, 2 block, 26 fs, ...).
    fn device_type(&self) -> u32;

    /// Number of queues.
    fn num_queues(&self) -> usize;

    /// Largest queue size (a power of two); the driver may lower it.
    fn max_queue_size(&self) -> u16;

    /// Offered feature bits. The transport adds VIRTIO_F_VERSION_1 and
    /// removes [`TRANSPORT_UNSUPPORTED_FEATURES`].
    fn features(&self) -> u64;

    /// A driver read of the device configuration at `offset`. Any offset in
    /// 0..4096 and any size may arrive; fill what lies outside the config
    /// with zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// A driver write to the device configuration.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// The driver set DRIVER_OK: start with these features and the enabled
    /// queues. An error makes the transport set DEVICE_NEEDS_RESET.
    fn activate(
        &mut self,
        acked_features: u64,
        queues: Vec<QueueConfig>,
    ) -> Result<(), ActivateError>;

    /// The driver wrote 0 to the status (also at probe, before any
    /// activation): stop the queues, forget the negotiated state. A device
    /// may finish the reset on another thread (a backend's replies must
    /// not hold up a vCPU); until [`reset_pending`](Self::reset_pending)
    /// is false the transport shows the driver its old status, and a
    /// virtio 1.x driver waits for 0 before it sets the device up again.
    fn reset(&mut self);

    /// A reset is still being finished on another thread.
    fn reset_pending(&self) -> bool {
        false
    }

    /// A write to `queue`'s notify address reached the VMM (no ioeventfd is
    /// registered there). Only delivered while the device is active.
    fn queue_notify(&mut self, queue: u16);

    /// The device cannot go on (its backend died). The transport checks
    /// after each call into the device (and in
    /// [`VirtioPciDevice::check_device`]) and sets DEVICE_NEEDS_RESET.
    fn needs_reset(&self) -> bool;
}
