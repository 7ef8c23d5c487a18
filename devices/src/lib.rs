//! `devices`: the device models the VMM hosts (issue #6, not built yet):
//! the PCI host bridge, the virtio-pci transport, and one generic vhost-user
//! frontend that blk, fs and net configure with their device id, queue count
//! and config defaults.
