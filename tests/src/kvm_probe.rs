//! Can a Linux guest run under KVM on this machine? Decided by a check,
//! not a guess: a tiny real-mode loop of known length (`dec ecx; jnz`) runs
//! in a fresh VM in this process, and its speed is measured. Hardware
//! virtualization runs it at well over 10^8 instructions per second; the
//! KVM of our build machines is an instruction emulator (~10^6/s, and it
//! dies on INT3 and XRSTOR), on which Debian's kernel does not boot.
//!
//! ```no_run
//! if let Err(reason) = vu_driver::kvm_probe::linux_capable() {
//!     eprintln!("SKIP some_test: {reason}");
//!     return;
//! }
//! ```

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// Guest instructions per second below which a Linux guest is not tried:
/// 100x what the emulator manages, a tenth of what hardware does even on a
/// loaded machine.
pub const LINUX_MIN_RATE: f64 = 1e8;

/// Iterations of the first, short run (~25 ms when emulated).
const SHORT_LOOP: u32 = 20_000;
/// Iterations of the long runs (a few ms on hardware).
const LONG_LOOP: u32 = 20_000_000;
/// A short run slower than this has measured enough: the loop is emulated.
const ENOUGH: Duration = Duration::from_millis(5);
/// Long runs; the fastest counts (a preempted run only looks slower).
const LONG_RUNS: usize = 3;

/// Guest-physical address of the loop; the memory slot is two pages from 0.
const CODE_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x2000;
/// Where KVM may put the TSS real mode needs on Intel without unrestricted
/// guest (three pages outside RAM).
const TSS_ADDR: usize = 0xfffb_d000;

/// Instructions per iteration of the loop.
const INSNS_PER_ITERATION: u64 = 2;

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Guest instructions executed (the loop's, not counting the setup).
    pub instructions: u64,
    /// Wall time of the KVM_RUN that executed them.
    pub elapsed: Duration,
}

impl Measurement {
    /// Instructions per second.
    pub fn rate(&self) -> f64 {
        self.instructions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The real-mode loop: `mov ecx, iterations; l: dec ecx; jnz l; hlt`.
pub fn loop_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![0x66, 0xb9]; // mov ecx, imm32 (operand-size prefix)
    code.extend_from_slice(&iterations.to_le_bytes());
    // Offset 6: dec ecx; jnz back to offset 6 (rel8 -4 from offset 10).
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc]);
    code.push(0xf4); // hlt
    code
}

/// The verdict for a measurement: Ok if it is fast enough for Linux, else
/// the one-line reason.
pub fn classify(m: &Measurement) -> Result<(), String> {
    let rate = m.rate();
    if rate >= LINUX_MIN_RATE {
        return Ok(());
    }
    Err(format!(
        "KVM runs guest code at {rate:.1e} instructions/s ({} instructions took {:.1} ms), \
         below the {LINUX_MIN_RATE:.0e}/s of hardware virtualization: /dev/kvm here is an \
         instruction emulator, on which Debian's stock kernel does not boot",
        m.instructions,
        m.elapsed.as_secs_f64() * 1000.0
    ))
}

/// Whether a Linux guest can run under KVM here: Ok, or the reason it
/// cannot (no `/dev/kvm`, no permission, a VM that cannot be built, or
/// guest code running at emulator speed). Measured once per process.
pub fn linux_capable() -> Result<(), String> {
    static VERDICT: OnceLock<Result<(), String>> = OnceLock::new();
    VERDICT
        .get_or_init(|| measure().and_then(|m| classify(&m)))
        .clone()
}

/// The guest TSC frequency KVM gives a new vCPU (KVM_GET_TSC_KHZ), for the
/// kernel's `tsc_early_khz=`; None if KVM cannot tell.
pub fn tsc_khz() -> Option<u32> {
    let kvm = Kvm::new().ok()?;
    let vm = kvm.create_vm().ok()?;
    let vcpu = vm.create_vcpu(0).ok()?;
    vcpu.get_tsc_khz().ok().filter(|&khz| khz > 0)
}

/// Measures how fast KVM runs guest code: one short loop, and if that was
/// quick, the best of a few long ones. An error names what failed.
pub fn measure() -> Result<Measurement, String> {
    let kvm = open_kvm()?;
    let short = run_loop(&kvm, SHORT_LOOP)?;
    if short.elapsed >= ENOUGH {
        return Ok(short);
    }
    let mut best: Option<Measurement> = None;
    for _ in 0..LONG_RUNS {
        let m = run_loop(&kvm, LONG_LOOP)?;
        if best.is_none_or(|b| m.elapsed < b.elapsed) {
            best = Some(m);
        }
    }
    Ok(best.unwrap_or(short))
}

fn open_kvm() -> Result<Kvm, String> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => "no /dev/kvm on this machine (no KVM)".to_string(),
        libc::EACCES | libc::EPERM => {
            "/dev/kvm: permission denied (join the kvm group or run as root)".to_string()
        }
        _ => format!("cannot open /dev/kvm: {e}"),
    })
}

/// Two pages of anonymous memory, unmapped on drop.
struct GuestPages(*mut libc::c_void);

impl GuestPages {
    fn new() -> Result<Self, String> {
        // SAFETY: a fresh anonymous private mapping; nothing else refers to
        // it, and the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mmap of the probe's guest memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(GuestPages(ptr))
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= MEM_SIZE);
        // SAFETY: the range is inside the mapping (asserted) and the guest
        // is not running.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.0.cast::<u8>().add(offset),
                bytes.len(),
            )
        };
    }
}

impl Drop for GuestPages {
    fn drop(&mut self) {
        // SAFETY: our own mapping of MEM_SIZE bytes; the VM using it was
        // dropped before (declaration order in run_loop).
        unsafe { libc::munmap(self.0, MEM_SIZE) };
    }
}

/// A VM with the loop in memory and one vCPU in real mode at its start.
fn build_vm(kvm: &Kvm, mem: &GuestPages) -> Result<(VmFd, VcpuFd), String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // Harmless where unneeded (AMD, unrestricted guest).
    let _ = vm.set_tss_address(TSS_ADDR);
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.0 as u64,
    };
    // SAFETY: the region is a live mapping of MEM_SIZE bytes that outlives
    // the VM (the caller drops the VM first).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = CODE_ADDR;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    Ok((vm, vcpu))
}

/// Runs the loop of `iterations` in a fresh VM and times the KVM_RUN.
fn run_loop(kvm: &Kvm, iterations: u32) -> Result<Measurement, String> {
    let mut mem = GuestPages::new()?;
    mem.write(CODE_ADDR as usize, &loop_code(iterations));
    let (vm, mut vcpu) = build_vm(kvm, &mem)?;
    let start = Instant::now();
    let exit = loop {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => break Ok(()),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => break Err(format!("KVM_RUN: {e}")),
            Ok(other) => {
                break Err(format!(
                    "KVM cannot run a two-instruction real-mode loop: exit {other:?}"
                ))
            }
        }
    };
    let elapsed = start.elapsed();
    drop(vcpu);
    drop(vm);
    drop(mem);
    exit?;
    Ok(Measurement {
        instructions: u64::from(iterations) * INSNS_PER_ITERATION,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(instructions: u64, ms: f64) -> Measurement {
        Measurement {
            instructions,
            elapsed: Duration::from_secs_f64(ms / 1000.0),
        }
    }

    #[test]
    fn emulator_speed_is_refused_with_the_rate() {
        // What this machine's KVM does: ~1.2 µs per iteration.
        let reason = classify(&m(40_000, 24.0)).unwrap_err();
        assert!(reason.contains("1.7e6 instructions/s"), "{reason}");
        assert!(
            reason.contains("40000 instructions took 24.0 ms"),
            "{reason}"
        );
        assert!(reason.contains("instruction emulator"), "{reason}");
        assert_eq!(reason.lines().count(), 1);
    }

    #[test]
    fn hardware_speed_is_accepted() {
        assert_eq!(classify(&m(40_000_000, 15.0)), Ok(()));
        // Exactly at the threshold counts as capable.
        assert_eq!(classify(&m(100_000_000, 1000.0)), Ok(()));
        assert!(classify(&m(99_000_000, 1000.0)).is_err());
    }

    #[test]
    fn zero_time_does_not_divide_by_zero() {
        assert!(m(2, 0.0).rate().is_finite());
        assert_eq!(classify(&m(2, 0.0)), Ok(()));
    }

    #[test]
    fn the_loop_decrements_to_zero_then_halts() {
        let code = loop_code(0x1234_5678);
        assert_eq!(&code[..2], &[0x66, 0xb9]);
        assert_eq!(&code[2..6], &0x1234_5678u32.to_le_bytes());
        // jnz's target is the dec: offset after jnz (10) + rel8 (-4).
        assert_eq!(10 + i64::from(code[9] as i8), 6);
        assert_eq!(code[6..8], [0x66, 0x49]);
        assert_eq!(code.last(), Some(&0xf4));
    }

    /// The probe itself on this machine: whatever the verdict, it is a
    /// decision with a one-line reason, and it is cached.
    #[test]
    fn probe_decides_with_a_one_line_reason() {
        let first = linux_capable();
        if let Err(reason) = &first {
            assert_eq!(reason.lines().count(), 1, "{reason}");
            assert!(!reason.is_empty());
        }
        assert_eq!(linux_capable(), first);
        eprintln!("kvm_probe: {:?} ({:?})", first, measure());
    }
}
