//! `devices`: the device models the VMM hosts (issue #6).
//!
//! - [`pci`]: a PCI bus 0 behind a host bridge. Type-0 configuration space
//!   with write masks and the BAR sizing protocol ([`pci::PciConfig`]),
//!   port-I/O (CF8/CFC) and MMCONFIG (ECAM) decoding, routing of BAR MMIO and
//!   port accesses to the device that owns the address ([`pci::PciBus`]), a
//!   BAR allocator over a 32-bit and a 64-bit window
//!   ([`pci::BarAllocator`]), and MSI-X (table, PBA, masking) with delivery
//!   behind the [`pci::MsiSink`] trait, which the VMM implements with KVM GSI
//!   routes and irqfds.
//! - [`virtio_pci`]: the virtio 1.x modern PCI transport
//!   ([`virtio_pci::VirtioPciDevice`]): the vendor capabilities, the common
//!   configuration register file, ISR, notify and device configuration
//!   regions in one 64-bit memory BAR. It drives a [`virtio_pci::VirtioDevice`]
//!   (the generic vhost-user frontend, later) and exposes each queue's notify
//!   address so the VMM can register an ioeventfd per queue.
//!
//! - [`vhost_user`]: the generic vhost-user frontend
//!   ([`vhost_user::VhostUserDevice`]), a [`virtio_pci::VirtioDevice`] whose
//!   queues and configuration a backend process serves; blk, net and fs
//!   differ only in their [`vhost_user::DeviceKind`].
//!
//! Nothing here touches KVM: the VMM wires interrupts through
//! [`pci::MsiSink`] and kicks through ioeventfds at
//! [`virtio_pci::VirtioPciDevice::queue_notify_address`]. Every guest access
//! is handled without panicking, whatever its offset, size or value.

pub mod pci;
pub mod vhost_user;
pub mod virtio_pci;
