//! `vmm`: the thin KVM core (issue #6, not built yet).
//!
//! It will own KVM, guest memory shared from a `/dev/shm` file, Linux boot,
//! vCPUs, the serial console, PCI + virtio-pci with MSI-X, and the control
//! API. It holds no virtio device emulation: every device is a vhost-user
//! frontend from `devices` talking to a backend process.
