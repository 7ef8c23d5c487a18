//! `vmm`: the thin KVM core (issue #6).
//!
//! It owns KVM, guest memory shared from a `/dev/shm` file, boot (PVH or
//! the 64-bit Linux protocol through `linux-loader`), vCPUs, the legacy
//! devices (COM1, i8042, ACPI PM) and ACPI tables. PCI + virtio-pci with
//! MSI-X (the `devices` crate) plug into [`bus::Bus`]; there is no virtio
//! device emulation here: every device is a vhost-user frontend.
//!
//! - [`cli`]: the command line; [`vm`]: the VM and its main loop;
//!   [`vcpu`]: vCPU threads, exit dispatch and counters; [`vcpu_gate`]:
//!   pausing and stopping them; [`cpu`]: vCPU boot state.
//! - [`api`]: the control API on `--api-socket`; [`control`]: the running
//!   VM as the API sees it (state machine, pause, power button, counters).
//! - [`memory`]: guest RAM in a shared file; [`layout`]: the address map
//!   and e820; [`acpi`]: the tables; [`boot`]: kernel, initramfs, cmdline.
//! - [`bus`]: port-I/O and MMIO dispatch; [`legacy`]: COM1, i8042, ACPI PM,
//!   debug ports.
//! - [`pci`]: the PCI bus on the port-I/O and MMIO buses (CF8/CFC, 0xcf9
//!   reset, ECAM, BAR windows) and ioeventfds that follow BARs; [`irq`]: MSI-X
//!   vectors as KVM GSI routes and irqfds; [`aml`]: the DSDT's AML.
//! - [`vhost_user`]: `--disk`, `--fs`, `--net` as vhost-user frontends on
//!   the PCI bus; [`watch`]: the `vu-watch` thread that notices a backend
//!   dying.

pub mod acpi;
pub mod aml;
pub mod api;
pub mod boot;
pub mod bus;
pub mod cli;
pub mod cmos;
pub mod control;
pub mod cpu;
pub mod irq;
pub mod layout;
pub mod legacy;
pub mod memory;
pub mod pci;
pub mod vcpu;
pub mod vcpu_gate;
pub mod vhost_user;
pub mod vm;
pub mod watch;

/// `error`, then each source, joined with ": " on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        line.push_str(": ");
        line.push_str(&e.to_string());
        source = e.source();
    }
    line
}
