//! A vCPU on its own named thread: KVM_RUN, port-I/O and MMIO exits
//! dispatched to the buses, and the end of the VM reported as a [`VmEvent`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::vm::VmEvent;

/// One vCPU and what its exits are dispatched to.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub events: Sender<VmEvent>,
    pub stop: Arc<AtomicBool>,
}

/// How one KVM_RUN ended, once the exit's borrow of the vCPU is over.
enum Outcome {
    Continue,
    End(VmEvent),
    Fail(String),
    InternalError,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that interrupts KVM_RUN so a vCPU thread sees `stop`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Interrupts the vCPU thread `handle` (KVM_RUN returns EINTR).
pub fn kick<T>(handle: &JoinHandle<T>) {
    let _ = handle.kill(kick_signal());
}

impl Vcpu {
    /// Runs this vCPU on a thread named `vcpu<N>`.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(|| {
            if let Err(e) = register_signal_handler(kick_signal(), kick_handler) {
                log::warn!("cannot install the vCPU kick handler: {e}");
            }
        });
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let mut unhandled = 0u64;
        while !self.stop.load(Ordering::Acquire) {
            let outcome = match self.fd.run() {
                Ok(exit) => dispatch(self.id, &self.pio, &self.mmio, exit, &mut unhandled),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    Outcome::Continue
                }
                Err(e) => Outcome::Fail(format!("KVM_RUN: {e}")),
            };
            let event = match outcome {
                Outcome::Continue => continue,
                Outcome::End(event) => event,
                Outcome::Fail(what) => self.failure(&what),
                Outcome::InternalError => {
                    // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member
                    // of the kvm_run union is the one KVM filled in.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    let what = match suberror {
                        1 => "KVM internal error: emulation failure (suberror 1)".to_string(),
                        n => format!("KVM internal error (suberror {n})"),
                    };
                    self.failure(&what)
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
}

/// Dispatches one exit of vCPU `id`.
fn dispatch(id: u8, pio: &Bus, mmio: &Bus, exit: VcpuExit, unhandled: &mut u64) -> Outcome {
    let mut note = |kind: &str, addr: u64, len: usize| {
        *unhandled += 1;
        // Rate-limited: the guest decides how often this happens.
        if *unhandled <= 10 || unhandled.is_power_of_two() {
            log::debug!(
                "vCPU {}: unhandled {kind} {addr:#x} ({len} bytes), #{unhandled}",
                id
            );
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
