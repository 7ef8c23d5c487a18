//! `vmm`: the thin KVM core (issue #6).
//!
//! It owns KVM, guest memory shared from a `/dev/shm` file, boot (PVH or
//! the 64-bit Linux protocol through `linux-loader`), vCPUs, the legacy
//! devices (COM1, i8042, ACPI PM) and ACPI tables. PCI + virtio-pci with
//! MSI-X (the `devices` crate) plug into [`bus::Bus`]; there is no virtio
//! device emulation here: every device is a vhost-user frontend.
//!
//! The modules form layers; each imports only from the layers below it
//! (`tests/layers.rs` checks that no import goes in a circle):
//!
//! 1. Leaves: [`event`] (what devices and vCPUs tell the main loop),
//!    [`cli`] (the command line and device configs), [`config`] (the
//!    VM's config from the command line or a `vm.create` body, over
//!    [`cli`]'s checks), [`layout`] (the
//!    address map and e820), [`bus`] (port-I/O and MMIO dispatch),
//!    [`aml`] (the DSDT's AML), [`topology`] (CPU topology and APIC
//!    ids), [`api`] (the control API's HTTP server
//!    and the [`api::VmControl`] trait it calls), [`pidfile`]
//!    (`--pidfile`).
//! 2. Guest setup: [`memory`] (guest RAM in a shared file), [`boot`]
//!    (kernel, initramfs, cmdline), [`acpi`] (the tables), [`irq`]
//!    (MSI-X vectors as KVM GSI routes and irqfds).
//! 3. Devices and vCPUs: [`platform`] (COM1, i8042, ACPI PM and PM
//!    timer, CMOS RTC, debug ports); [`pci`] (the PCI bus on the port-I/O
//!    and MMIO buses: CF8/CFC, 0xcf9 reset, ECAM, BAR windows, ioeventfds
//!    that follow BARs); [`vcpu`] (vCPU threads, exit dispatch, counters,
//!    the gate that pauses and stops them, boot state).
//! 4. [`vhost_user`]: `--disk`, `--fs`, `--net` as vhost-user frontends on
//!    the PCI bus, and the `vu-watch` thread that notices a backend dying.
//! 5. [`control`]: the running VM as the API sees it (state machine,
//!    pause, power button, counters).
//! 6. [`vm`]: builds the VM from all of the above and runs its main loop.
//! 7. [`lifecycle`]: the VMM's lifecycle (`vm.create`, `vm.boot`,
//!    `vm.delete`, `vmm.shutdown`) over [`vm`] and [`control`]; the
//!    [`api::VmControl`] the API server calls.

pub mod acpi;
pub mod aml;
pub mod api;
pub mod boot;
pub mod bus;
pub mod cli;
pub mod config;
pub mod control;
pub mod event;
pub mod irq;
pub mod layout;
pub mod lifecycle;
pub mod memory;
pub mod numa;
pub mod pci;
pub mod pidfile;
pub mod platform;
pub mod seccomp;
pub mod spawned;
pub mod topology;
pub mod vcpu;
pub mod vhost_user;
pub mod vm;

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
