//! What devices, vCPUs and the control API tell the VM's main loop: the one
//! type every layer sends, so it lives below all of them (nothing here
//! imports another module of the crate).

/// What devices and vCPUs tell the VM's main loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// ACPI S5 or KVM_SYSTEM_EVENT_SHUTDOWN.
    PowerOff,
    /// The i8042 reset command, the 0xcf9 reset register or
    /// KVM_SYSTEM_EVENT_RESET.
    Reset,
    /// A vCPU failed; one line with the reason and RIP.
    Error(String),
    /// `vmm.shutdown`: the main loop returns (only with the control API).
    VmmShutdown,
    /// `vm.reboot`: the main loop returns so that the VM is built again
    /// from its config (only with the control API).
    Reboot,
}
