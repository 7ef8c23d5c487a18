//! The kick: a signal that makes a vCPU thread's KVM_RUN return EINTR at
//! once (its handler sets `immediate_exit` in the thread's `kvm_run`), so
//! the thread looks at the [`VcpuGate`](super::VcpuGate) again.

use std::cell::Cell;
use std::sync::Once;
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

thread_local! {
    /// This vCPU thread's `kvm_run`, for the kick handler (null on other
    /// threads and once the vCPU's loop has returned).
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Sets `immediate_exit`, so a kick that lands between the gate check and
/// KVM_RUN still makes KVM_RUN return EINTR at once.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with`: no panic while the thread-local is being torn down; the
    // const-initialised Cell has no destructor and no lazy initialisation,
    // so reading it is async-signal-safe.
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: `run` is this thread's vCPU's kvm_run mapping, set by
            // `Vcpu::run` while it owns the VcpuFd and cleared before the fd
            // is dropped; a byte write the kernel reads at the next KVM_RUN.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick signal's handler (once per process).
pub fn install_kick_handler() {
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), kick_handler) {
            log::warn!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// The signal that interrupts KVM_RUN so a vCPU thread sees `stop`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Interrupts the vCPU thread `handle` (KVM_RUN returns EINTR).
pub fn kick<T>(handle: &JoinHandle<T>) {
    let _ = handle.kill(kick_signal());
}

/// Tells the kick handler where this thread's `kvm_run` is (null when the
/// vCPU's loop has returned, before its fd goes).
pub(super) fn set_kvm_run(run: *mut kvm_run) {
    KVM_RUN.with(|r| r.set(run));
}
