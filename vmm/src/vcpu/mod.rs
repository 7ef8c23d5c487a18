//! vCPUs: each on its own named thread ([`Vcpu`], `vcpu<N>`, pinned to
//! its host CPUs when `--cpus affinity=` names it): KVM_RUN, port-I/O and
//! MMIO exits dispatched to the buses and counted ([`VcpuCounters`]),
//! pauses and stops through the [`VcpuGate`] (which interrupts KVM_RUN with
//! the [`kick()`] signal), and the end of the VM reported as a [`VmEvent`].
//!
//! - [`setup`]: the vCPU state at boot (CPUID, MSRs, LAPIC, registers).
//! - [`gate`]: where vCPU threads park for a pause and learn of a stop.
//! - [`kick`](mod@kick): the signal that makes KVM_RUN return at once.
//! - [`counters`]: exits by kind; [`internal_error`]: KVM's internal
//!   errors as one line.
//!
//! Inside, `gate` uses `kick`; this file uses both; nothing here uses this
//! file.

pub mod counters;
pub mod gate;
pub mod internal_error;
pub mod kick;
pub mod setup;

pub use counters::VcpuCounters;
pub use gate::{GateError, VcpuGate};
pub use internal_error::{instruction_name, CpuState, InternalError};
pub use kick::{install_kick_handler, kick, kick_signal};

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_run, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use lograte::RateLimited;

use crate::bus::Bus;
use crate::event::VmEvent;

/// One vCPU and what its exits are dispatched to.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub events: Sender<VmEvent>,
    pub gate: Arc<VcpuGate>,
    pub counters: Arc<VcpuCounters>,
    /// `--cpus affinity=`: the host CPUs this vCPU's thread runs on.
    pub host_cpus: Option<Vec<usize>>,
}

/// Pins the calling thread to `cpus`.
fn pin(cpus: &[usize]) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// How one KVM_RUN ended, once the exit's borrow of the vCPU is over.
enum Outcome {
    Continue,
    End(VmEvent),
    Fail(String),
    InternalError,
}

impl Vcpu {
    /// Runs this vCPU on a thread named `vcpu<N>`.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        install_kick_handler();
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        // Pinned before the vCPU's own filter, which has no
        // sched_setaffinity (the VMM's, inherited, has).
        if let Some(cpus) = &self.host_cpus {
            if let Err(e) = pin(cpus) {
                let what = format!(
                    "vCPU {}: sched_setaffinity to host CPUs {}: {e}",
                    self.id,
                    crate::cli::cpu_list(cpus)
                );
                let _ = self.events.send(VmEvent::Error(what));
                return;
            }
        }
        if let Err(e) = crate::seccomp::apply(crate::seccomp::Role::Vcpu) {
            let what = format!("vCPU {}: {}", self.id, crate::error_chain(&e));
            let _ = self.events.send(VmEvent::Error(what));
            return;
        }
        let run: *mut kvm_run = self.fd.get_kvm_run();
        kick::set_kvm_run(run);
        self.run_loop();
        kick::set_kvm_run(std::ptr::null_mut());
    }

    fn run_loop(&mut self) {
        let unhandled = RateLimited::default();
        while !self.gate.should_stop() {
            if self.gate.pause_requested() {
                self.gate.park(self.id);
                continue;
            }
            let outcome = match self.fd.run() {
                Ok(exit) => {
                    self.counters.count(&exit);
                    dispatch(self.id, &self.pio, &self.mmio, exit, &unhandled)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked: clear the handler's immediate_exit, then the
                    // gate is checked again.
                    self.fd.set_kvm_immediate_exit(0);
                    self.counters.interrupted.fetch_add(1, Ordering::Relaxed);
                    Outcome::Continue
                }
                Err(e) => Outcome::Fail(format!("KVM_RUN: {e}")),
            };
            let event = match outcome {
                Outcome::Continue => continue,
                Outcome::End(event) => event,
                Outcome::Fail(what) => self.failure(&what),
                Outcome::InternalError => {
                    // SAFETY: after KVM_EXIT_INTERNAL_ERROR the union holds
                    // `internal`, whose first field is the suberror; for an
                    // emulation failure KVM fills `emulation_failure` (the
                    // same suberror, then flags and the instruction bytes),
                    // plain integers that any bit pattern makes valid.
                    let failure = unsafe {
                        let e = self.fd.get_kvm_run().__bindgen_anon_1.emulation_failure;
                        InternalError {
                            suberror: e.suberror,
                            insn: (e.flags
                                & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                                != 0)
                                .then(|| {
                                    let b = e.__bindgen_anon_1.__bindgen_anon_1;
                                    b.insn_bytes[..usize::from(b.insn_size).min(15)].to_vec()
                                }),
                        }
                    };
                    self.internal_error(&failure)
                }
            };
            let _ = self.events.send(event);
            return;
        }
    }

    fn failure(&self, what: &str) -> VmEvent {
        let rip = self
            .fd
            .get_regs()
            .map(|r| format!("{:#x}", r.rip))
            .unwrap_or_else(|e| format!("unknown ({e})"));
        VmEvent::Error(format!("vCPU {}: {what} at RIP {rip}", self.id))
    }

    fn internal_error(&self, e: &InternalError) -> VmEvent {
        let state = match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => Some(CpuState {
                rip: r.rip,
                cs: s.cs.selector,
                cpl: s.cs.dpl,
                cr0: s.cr0,
                cr4: s.cr4,
            }),
            _ => None,
        };
        VmEvent::Error(format!("vCPU {}: {}", self.id, e.report(state)))
    }
}

/// Dispatches one exit of vCPU `id`.
fn dispatch(id: u8, pio: &Bus, mmio: &Bus, exit: VcpuExit, unhandled: &RateLimited) -> Outcome {
    let note = |kind: &str, addr: u64, len: usize| {
        // Rate-limited: the guest decides how often this happens.
        if let Some(n) = unhandled.hit() {
            log::debug!("vCPU {id}: unhandled {kind} {addr:#x} ({len} bytes), #{n}");
        }
    };
    match exit {
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                note("port write", u64::from(port), data.len());
            }
        }
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                data.fill(0xff);
                note("port read", u64::from(port), data.len());
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                note("MMIO write", addr, data.len());
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
                note("MMIO read", addr, data.len());
            }
        }
        VcpuExit::Hlt => {
            // With the in-kernel irqchip KVM handles HLT; an exit means
            // the vCPU halted with nothing to wake it.
            return Outcome::Fail("halted with interrupts off (HLT exit)".into());
        }
        VcpuExit::Shutdown => {
            return Outcome::Fail("triple fault (KVM_EXIT_SHUTDOWN)".into());
        }
        VcpuExit::SystemEvent(kind, _) => {
            return match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::End(VmEvent::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Outcome::End(VmEvent::Reset),
                other => Outcome::Fail(format!("unexpected system event {other}")),
            };
        }
        VcpuExit::InternalError => return Outcome::InternalError,
        VcpuExit::FailEntry(reason, cpu) => {
            return Outcome::Fail(format!(
                "KVM entry failure (hardware reason {reason:#x}, host cpu {cpu})"
            ));
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
        other => return Outcome::Fail(format!("unexpected exit {other:?}")),
    }
    Outcome::Continue
}
