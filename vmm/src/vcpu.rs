//! A vCPU on its own named thread: KVM_RUN, port-I/O and MMIO exits
//! dispatched to the buses and counted, pauses and stops through the
//! [`VcpuGate`], and the end of the VM reported as a [`VmEvent`].

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_run, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::vcpu_gate::VcpuGate;
use crate::vm::VmEvent;

/// One vCPU and what its exits are dispatched to.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub events: Sender<VmEvent>,
    pub gate: Arc<VcpuGate>,
    pub counters: Arc<VcpuCounters>,
}

/// Exits of one vCPU by kind (for `vm.counters`); relaxed atomics, one
/// increment per exit.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    /// Every KVM_RUN that returned an exit (not EINTR).
    pub exits: AtomicU64,
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    pub hlt: AtomicU64,
    pub other: AtomicU64,
    /// KVM_RUN interrupted by a kick (pause, stop).
    pub interrupted: AtomicU64,
}

impl VcpuCounters {
    /// The counters by name: `exits`, `io_exits`, `mmio_exits`,
    /// `hlt_exits`, `other_exits`, `interrupted`.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        [
            ("exits", &self.exits),
            ("io_exits", &self.io),
            ("mmio_exits", &self.mmio),
            ("hlt_exits", &self.hlt),
            ("other_exits", &self.other),
            ("interrupted", &self.interrupted),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
        .collect()
    }

    fn count(&self, exit: &VcpuExit) {
        let kind = match exit {
            VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => &self.io,
            VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => &self.mmio,
            VcpuExit::Hlt => &self.hlt,
            _ => &self.other,
        };
        kind.fetch_add(1, Ordering::Relaxed);
        self.exits.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// This vCPU thread's `kvm_run`, for the kick handler (null on other
    /// threads and once the vCPU's loop has returned).
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// How one KVM_RUN ended, once the exit's borrow of the vCPU is over.
enum Outcome {
    Continue,
    End(VmEvent),
    Fail(String),
    InternalError,
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

impl Vcpu {
    /// Runs this vCPU on a thread named `vcpu<N>`.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        install_kick_handler();
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|r| r.set(run));
        self.run_loop();
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }

    fn run_loop(&mut self) {
        let mut unhandled = 0u64;
        while !self.gate.should_stop() {
            if self.gate.pause_requested() {
                self.gate.park(self.id);
                continue;
            }
            let outcome = match self.fd.run() {
                Ok(exit) => {
                    self.counters.count(&exit);
                    dispatch(self.id, &self.pio, &self.mmio, exit, &mut unhandled)
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

/// What KVM_EXIT_INTERNAL_ERROR reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalError {
    pub suberror: u32,
    /// The instruction's bytes, when KVM gave them (emulation failures).
    pub insn: Option<Vec<u8>>,
}

/// Where the vCPU was when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuState {
    pub rip: u64,
    pub cs: u16,
    pub cpl: u8,
    pub cr0: u64,
    pub cr4: u64,
}

impl InternalError {
    /// One line naming the failure, where it happened and, for an emulation
    /// failure, the instruction's bytes and what they are when we know
    /// (the instructions an emulating KVM is known to refuse).
    pub fn report(&self, at: Option<CpuState>) -> String {
        let mut line = match self.suberror {
            KVM_INTERNAL_ERROR_EMULATION => {
                "KVM internal error: emulation failure (suberror 1)".to_string()
            }
            n => format!("KVM internal error (suberror {n})"),
        };
        match at {
            Some(c) => line.push_str(&format!(
                " at RIP {:#x} (CS {:#x}, CPL {}, CR0 {:#x}, CR4 {:#x})",
                c.rip, c.cs, c.cpl, c.cr0, c.cr4
            )),
            None => line.push_str(" (registers unavailable)"),
        }
        if let Some(insn) = &self.insn {
            let hex: Vec<String> = insn.iter().map(|b| format!("{b:02x}")).collect();
            line.push_str(&format!(": instruction bytes [{}]", hex.join(" ")));
            if let Some(name) = instruction_name(insn) {
                line.push_str(&format!(" ({name})"));
            }
        }
        line
    }
}

/// The name of the instruction starting `insn`, for the few an emulating
/// KVM is known to refuse (see the project's NOTES); None otherwise.
pub fn instruction_name(insn: &[u8]) -> Option<&'static str> {
    // Skip prefixes that do not change these opcodes: operand and address
    // size, segment overrides, LOCK and REX. F2/F3 stay: they select
    // POPCNT and CRC32.
    let start = insn.iter().position(|b| {
        !matches!(
            b,
            0x66 | 0x67 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 | 0xf0 | 0x40..=0x4f
        )
    })?;
    let op = &insn[start..];
    let modrm_reg = |i: usize| op.get(i).map(|m| (m >> 3) & 7);
    Some(match op {
        [0xcc, ..] => "INT3",
        [0xcd, ..] => "INT n",
        [0x9b, ..] => "FWAIT",
        [0x0f, 0x01, 0xca, ..] => "CLAC",
        [0x0f, 0x01, 0xcb, ..] => "STAC",
        [0x0f, 0x01, 0xd0, ..] => "XGETBV",
        [0x0f, 0x01, 0xf9, ..] => "RDTSCP",
        [0x0f, 0xae, m, ..] if *m < 0xc0 && modrm_reg(2) == Some(4) => "XSAVE",
        [0x0f, 0xae, m, ..] if *m < 0xc0 && modrm_reg(2) == Some(5) => "XRSTOR",
        [0x0f, 0xae, m, ..] if *m < 0xc0 && modrm_reg(2) == Some(2) => "LDMXCSR",
        [0xf3, 0x0f, 0xb8, ..] | [0xf3, 0x40..=0x4f, 0x0f, 0xb8, ..] => "POPCNT",
        [0xf2, 0x0f, 0x38, 0xf0 | 0xf1, ..] | [0xf2, 0x40..=0x4f, 0x0f, 0x38, 0xf0 | 0xf1, ..] => {
            "CRC32"
        }
        [0x0f, 0x38, 0xf0 | 0xf1, ..] => "MOVBE",
        [0x0f, 0xc7, m, ..] if *m < 0xc0 && modrm_reg(2) == Some(1) => "CMPXCHG8B/16B",
        [0x0f, 0xef, ..] => "PXOR",
        [0x0f, 0x74, ..] => "PCMPEQB",
        [0x0f, 0xd7, ..] => "PMOVMSKB",
        [0xd9, 0xe8, ..] => "FLD1",
        [0xc4 | 0xc5, ..] => "a VEX-encoded (AVX/BMI) instruction",
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emulation_failure_names_the_place_and_the_instruction() {
        let e = InternalError {
            suberror: KVM_INTERNAL_ERROR_EMULATION,
            insn: Some(vec![0x0f, 0x01, 0xcb, 0x48, 0x89]),
        };
        let at = CpuState {
            rip: 0xffff_ffff_8100_1234,
            cs: 0x10,
            cpl: 0,
            cr0: 0x8005_0033,
            cr4: 0x3006b0,
        };
        assert_eq!(
            e.report(Some(at)),
            "KVM internal error: emulation failure (suberror 1) at RIP 0xffffffff81001234 \
             (CS 0x10, CPL 0, CR0 0x80050033, CR4 0x3006b0): instruction bytes \
             [0f 01 cb 48 89] (STAC)"
        );
        let other = InternalError {
            suberror: 3,
            insn: None,
        };
        assert_eq!(
            other.report(None),
            "KVM internal error (suberror 3) (registers unavailable)"
        );
    }

    #[test]
    fn known_refused_instructions_are_named() {
        for (bytes, name) in [
            (&[0xcc][..], "INT3"),
            (&[0xcd, 0x80], "INT n"),
            (&[0x9b], "FWAIT"),
            (&[0x0f, 0x01, 0xca], "CLAC"),
            (&[0x0f, 0x01, 0xd0], "XGETBV"),
            (&[0x0f, 0x01, 0xf9], "RDTSCP"),
            (&[0x48, 0x0f, 0xae, 0x27], "XSAVE"), // xsave64 [rdi]
            (&[0xf3, 0x48, 0x0f, 0xb8, 0xc7], "POPCNT"),
            (&[0xf2, 0x0f, 0x38, 0xf1, 0xc1], "CRC32"),
            (&[0x0f, 0x38, 0xf0, 0x07], "MOVBE"),
            (&[0x66, 0x0f, 0xef, 0xc0], "PXOR"),
            (
                &[0xc4, 0xe2, 0x78, 0xf2],
                "a VEX-encoded (AVX/BMI) instruction",
            ),
        ] {
            assert_eq!(instruction_name(bytes), Some(name), "{bytes:02x?}");
        }
        // Instructions this KVM does emulate, and nothing, are not named.
        for bytes in [
            &[0x0f, 0xa2][..],
            &[0x48, 0x89, 0xe5],
            &[0x0f, 0xae, 0xe8],
            &[],
        ] {
            assert_eq!(instruction_name(bytes), None, "{bytes:02x?}");
        }
    }
}
