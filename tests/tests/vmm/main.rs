//! Our `vmm` with the freestanding test guest (`tests/guest-fw`) and our
//! daemons: boot, the control API and Cloud Hypervisor's lifecycle, vCPUs
//! and guest RAM, devices served by the daemons, backends that misbehave,
//! are killed or are run by the VMM itself. The Linux guest under our vmm
//! is the `linux` binary; QEMU as a third-party frontend is `qemu`.

mod api;
mod boot;
mod cpus;
mod devices;
mod hostile;
mod lifecycle;
mod memory;
mod needs_reset;
mod numa;
mod reconnect;
mod spawned;
