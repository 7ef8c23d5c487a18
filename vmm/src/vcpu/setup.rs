//! x86_64 vCPU state at boot: CPUID from the host (KVM_GET_SUPPORTED_CPUID)
//! with each vCPU's APIC id and the topology's leaves ([`cpuid_for`]), the
//! boot MSRs, LAPIC LINT0/LINT1, the FPU, and the registers of the boot
//! vCPU for PVH or the 64-bit Linux protocol.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Address, Bytes, GuestMemory};

use crate::boot::{BootEntry, BootProtocol};
use crate::layout;
use crate::topology::CpuTopology;

/// Errors of vCPU configuration; each names the failing ioctl.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("KVM_GET_SUPPORTED_CPUID")]
    GetSupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2")]
    SetCpuid(#[source] kvm_ioctls::Error),
    #[error("CPUID with the topology's leaves has more than {KVM_MAX_CPUID_ENTRIES} entries")]
    CpuidTooLarge,
    #[error("KVM_SET_MSRS")]
    SetMsrs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_MSRS set {set} of {total} MSRs")]
    PartialMsrs { set: usize, total: usize },
    #[error("building the MSR list")]
    MsrList,
    #[error("KVM_GET_LAPIC")]
    GetLapic(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_LAPIC")]
    SetLapic(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_FPU")]
    SetFpu(#[source] kvm_ioctls::Error),
    #[error("KVM_GET_SREGS")]
    GetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_SREGS")]
    SetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_REGS")]
    SetRegs(#[source] kvm_ioctls::Error),
    #[error("writing boot GDT or page tables")]
    WriteTables(#[source] vm_memory::GuestMemoryError),
}

/// The host's CPUID as KVM supports it, shared by every vCPU.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::GetSupportedCpuid)
}

/// What a vCPU's CPUID says about it and its neighbours.
#[derive(Debug, Clone, Copy)]
pub struct CpuidSpec {
    pub topology: CpuTopology,
    /// The vCPU's index (0 is the boot vCPU).
    pub index: u8,
    /// `false` for `pmu=off`: leaf 0xA reads zero.
    pub pmu: bool,
}

/// Leaf 0xB/0x1F level types (ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;
const LEVEL_DIE: u32 = 5;

/// `base` for one vCPU: leaf 1's APIC id (EBX[31:24]), logical processor
/// count per package (EBX[23:16]), HTT and the hypervisor bit; leaf 4's
/// cache sharing (EAX[25:14]: L1 and L2 per core, L3 per package) and
/// cores per package (EAX[31:26]); leaves 0xB (SMT, core) and 0x1F (SMT,
/// core, die) with their shifts, counts and the x2APIC id in EDX, as Cloud
/// Hypervisor's `update_cpuid_topology` writes them; on AMD, 0x8000_001E
/// (APIC id, threads per core, node) and 0x8000_0008 ECX (APIC id size,
/// count); leaf 0xA zero without a PMU.
pub fn cpuid_for(base: &CpuId, spec: &CpuidSpec) -> Result<CpuId, CpuError> {
    let t = &spec.topology;
    let apic = t.apic_id(u32::from(spec.index));
    let amd = amd_like(base);
    let mut entries: Vec<kvm_cpuid_entry2> = base
        .as_slice()
        .iter()
        .filter(|e| e.function != 0xb && e.function != 0x1f)
        .copied()
        .collect();
    for e in &mut entries {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | ((t.per_package() & 0xff) << 16) | (apic << 24);
                e.ecx |= 1 << 31;
                if t.per_package() > 1 {
                    e.edx |= 1 << 28; // HTT: the count in EBX[23:16] is valid
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 7;
                let shift = if level <= 2 {
                    t.core_shift()
                } else {
                    t.package_shift()
                };
                let sharing = ((1u32 << shift) - 1).min(0xfff);
                let cores = ((1u32 << (t.package_shift() - t.core_shift())) - 1).min(0x3f);
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | (cores << 26);
            }
            0xa if !spec.pmu => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            0x8000_0001 if amd && !spec.pmu => e.ecx &= !(1 << 23), // PerfCtrExtCore
            0x8000_0008 if amd => {
                e.ecx = (e.ecx & !0xf0ff) | (t.package_shift() << 12) | (t.per_package() - 1);
            }
            0x8000_001e if amd => {
                e.eax = apic;
                e.ebx = (e.ebx & !0xffff) | ((t.per_core() - 1) << 8) | (apic & 0xff);
                e.ecx = (e.ecx & !0x7ff)
                    | ((u32::from(t.dies_per_package) - 1) << 8)
                    | ((apic >> t.die_shift()) & 0xff);
            }
            _ => {}
        }
    }
    let level = |function, index, shift, count, kind| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count & 0xffff,
        ecx: (kind << 8) | index,
        edx: apic,
        ..Default::default()
    };
    entries.extend([
        level(0xb, 0, t.core_shift(), t.per_core(), LEVEL_SMT),
        level(0xb, 1, t.package_shift(), t.per_package(), LEVEL_CORE),
        level(0xb, 2, 0, 0, 0),
        level(0x1f, 0, t.core_shift(), t.per_core(), LEVEL_SMT),
        level(0x1f, 1, t.die_shift(), t.per_die(), LEVEL_CORE),
        level(0x1f, 2, t.package_shift(), t.per_package(), LEVEL_DIE),
        level(0x1f, 3, 0, 0, 0),
    ]);
    CpuId::from_entries(&entries).map_err(|_| CpuError::CpuidTooLarge)
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

/// CPUID, MSRs, LAPIC and FPU of vCPU `id` (Firecracker's boot set).
pub fn configure(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid).map_err(CpuError::SetCpuid)?;

    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(CpuError::SetMsrs)?;
    if set != entries.len() {
        return Err(CpuError::PartialMsrs {
            set,
            total: entries.len(),
        });
    }

    set_hwcr(vcpu, cpuid);
    set_lint(vcpu)?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(CpuError::SetFpu)
}

const MSR_K7_HWCR: u32 = 0xc001_0015;
/// HWCR.TscFreqSel: the TSC counts at the P0 frequency, as on every AMD
/// CPU since family 10h; Linux warns "[Firmware Bug]: TSC doesn't count
/// with P0 frequency!" when it reads 0.
const HWCR_TSC_FREQ_SEL: u64 = 1 << 24;

/// Whether the guest's CPUID (leaf 0's vendor) says AMD or Hygon.
fn amd_like(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| {
            let v = [
                e.ebx.to_le_bytes(),
                e.edx.to_le_bytes(),
                e.ecx.to_le_bytes(),
            ]
            .concat();
            v == b"AuthenticAMD" || v == b"HygonGenuine"
        })
}

/// Sets HWCR.TscFreqSel on AMD guests. KVM accepts the bit since Linux
/// 6.7; an older KVM refuses it, which costs only the guest's warning.
fn set_hwcr(vcpu: &VcpuFd, cpuid: &CpuId) {
    if !amd_like(cpuid) {
        return;
    }
    let entry = kvm_msr_entry {
        index: MSR_K7_HWCR,
        data: HWCR_TSC_FREQ_SEL,
        ..Default::default()
    };
    match Msrs::from_entries(&[entry]).map(|m| vcpu.set_msrs(&m)) {
        Ok(Ok(1)) => {}
        other => log::debug!("HWCR.TscFreqSel not set (KVM refused: {other:?})"),
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 as ExtINT (the PIC), LINT1 as NMI.
fn set_lint(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let mut lapic = vcpu.get_lapic().map_err(CpuError::GetLapic)?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes = &mut lapic.regs[reg..reg + 4];
        let old = u32::from_le_bytes([
            bytes[0] as u8,
            bytes[1] as u8,
            bytes[2] as u8,
            bytes[3] as u8,
        ]);
        let new = (old & !0x700) | (mode << 8);
        for (b, v) in bytes.iter_mut().zip(new.to_le_bytes()) {
            *b = v as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(CpuError::SetLapic)
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags, base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

fn segment(entry: u64, index: u16) -> kvm_segment {
    let flags = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32 * 4096 + 0xfff,
        selector: index * 8,
        type_: flags(40, 0xf),
        present: flags(47, 1),
        dpl: flags(45, 3),
        db: flags(54, 1),
        s: flags(44, 1),
        l: flags(53, 1),
        g: flags(55, 1),
        avl: flags(52, 1),
        unusable: 0,
        padding: 0,
    }
}

/// Registers of the boot vCPU for `boot`; APs wait for INIT/SIPI.
pub fn setup_boot_vcpu<M: GuestMemory>(
    vcpu: &VcpuFd,
    mem: &M,
    boot: &BootEntry,
) -> Result<(), CpuError> {
    let long = boot.protocol == BootProtocol::Linux64;
    let code = if long {
        gdt_entry(0xa09b, 0, 0xfffff)
    } else {
        gdt_entry(0xc09b, 0, 0xfffff)
    };
    let gdt = [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0x67),
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, layout::GDT_START.unchecked_add(i as u64 * 8))
            .map_err(CpuError::WriteTables)?;
    }
    mem.write_obj(0u64, layout::IDT_START)
        .map_err(CpuError::WriteTables)?;

    let mut sregs = vcpu.get_sregs().map_err(CpuError::GetSregs)?;
    sregs.gdt.base = layout::GDT_START.raw_value();
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::IDT_START.raw_value();
    sregs.idt.limit = 7;
    sregs.cs = segment(code, 1);
    let data = segment(gdt[2], 2);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);
    sregs.tr.limit = 0x67;

    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: boot.entry.raw_value(),
        ..Default::default()
    };
    if long {
        // Identity map of the first GiB with 2 MiB pages.
        mem.write_obj(layout::PDPTE_START.raw_value() | 0x03, layout::PML4_START)
            .map_err(CpuError::WriteTables)?;
        mem.write_obj(layout::PDE_START.raw_value() | 0x03, layout::PDPTE_START)
            .map_err(CpuError::WriteTables)?;
        for i in 0..512u64 {
            mem.write_obj((i << 21) | 0x83, layout::PDE_START.unchecked_add(i * 8))
                .map_err(CpuError::WriteTables)?;
        }
        sregs.cr3 = layout::PML4_START.raw_value();
        sregs.cr4 |= X86_CR4_PAE;
        sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
        sregs.efer |= EFER_LME | EFER_LMA;
        regs.rsp = layout::BOOT_STACK_POINTER;
        regs.rbp = layout::BOOT_STACK_POINTER;
        regs.rsi = boot.params.raw_value();
    } else {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr4 = 0;
        sregs.efer = 0;
        regs.rbx = boot.params.raw_value();
    }
    vcpu.set_sregs(&sregs).map_err(CpuError::SetSregs)?;
    vcpu.set_regs(&regs).map_err(CpuError::SetRegs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code64 = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (code64.l, code64.db, code64.type_, code64.selector),
            (1, 0, 0xb, 8)
        );
        assert_eq!(code64.limit, 0xffff_ffff);
        let code32 = segment(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!(
            (code32.l, code32.db, code32.g, code32.present),
            (0, 1, 1, 1)
        );
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.type_, data.s, data.selector), (3, 1, 16));
    }

    /// A host CPUID with leaf 1, three caches in leaf 4 (L1d, L2, L3),
    /// leaf 0xA, the host's own 0xB subleaves (to be replaced), and a
    /// vendor.
    fn host(vendor: &[u8; 12]) -> CpuId {
        let word = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
        let e = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        CpuId::from_entries(&[
            e(0, 0, 0x1f, word(0), word(8), word(4)),
            e(1, 0, 0x806f8, 0xff00_0800, 0, 1 << 28),
            // Type 1 level 1, type 3 level 2, type 3 level 3, the end;
            // host sharing bits set in each, to be replaced.
            e(4, 0, 0xfc00_4121, 0, 0, 0),
            e(4, 1, 0xfc00_4143, 0, 0, 0),
            e(4, 2, 0xfc1f_c163, 0, 0, 0),
            e(4, 3, 0, 0, 0, 0),
            e(0xa, 0, 0x0704_8002, 0xff, 0, 0x603),
            e(0xb, 0, 9, 9, 9, 9),
            e(0xb, 1, 9, 9, 9, 9),
            e(0x8000_0001, 0, 0, 0, 1 << 23, 0),
            e(0x8000_0008, 0, 0x3030, 0, 0x7007, 0),
            e(0x8000_001e, 0, 0, 0, 0, 0),
        ])
        .unwrap()
    }

    fn leaf(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        let found: Vec<_> = c
            .as_slice()
            .iter()
            .filter(|e| e.function == function && e.index == index)
            .collect();
        assert_eq!(found.len(), 1, "leaf {function:#x}.{index}");
        *found[0]
    }

    fn topo(threads: u8, cores: u8, dies: u8, packages: u8) -> CpuTopology {
        CpuTopology {
            threads_per_core: threads,
            cores_per_die: cores,
            dies_per_package: dies,
            packages,
        }
    }

    fn cpuid(t: CpuTopology, index: u8) -> CpuId {
        let spec = CpuidSpec {
            topology: t,
            index,
            pmu: true,
        };
        cpuid_for(&host(b"GenuineIntel"), &spec).unwrap()
    }

    /// (EAX shift, EBX count, ECX level type, ECX index, EDX x2APIC id).
    fn level(e: kvm_cpuid_entry2) -> (u32, u32, u32, u32, u32) {
        (e.eax, e.ebx, e.ecx >> 8, e.ecx & 0xff, e.edx)
    }

    #[test]
    fn one_thread_two_cores_two_packages() {
        let t = topo(1, 2, 1, 2);
        // vCPU 3: package 1, core 1: APIC id 0b11.
        let c = cpuid(t, 3);
        let l1 = leaf(&c, 1, 0);
        assert_eq!((l1.ebx >> 24, (l1.ebx >> 16) & 0xff), (3, 2));
        assert_eq!(l1.ebx & 0xffff, 0x0800, "the rest of EBX is the host's");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(l1.edx & (1 << 28), 0, "HTT: 2 logical per package");
        assert_eq!(level(leaf(&c, 0xb, 0)), (0, 1, LEVEL_SMT, 0, 3));
        assert_eq!(level(leaf(&c, 0xb, 1)), (1, 2, LEVEL_CORE, 1, 3));
        assert_eq!(level(leaf(&c, 0xb, 2)), (0, 0, 0, 2, 3));
        assert_eq!(level(leaf(&c, 0x1f, 0)), (0, 1, LEVEL_SMT, 0, 3));
        assert_eq!(level(leaf(&c, 0x1f, 1)), (1, 2, LEVEL_CORE, 1, 3));
        assert_eq!(level(leaf(&c, 0x1f, 2)), (1, 2, LEVEL_DIE, 2, 3));
        assert_eq!(level(leaf(&c, 0x1f, 3)), (0, 0, 0, 3, 3));
        for e in c
            .as_slice()
            .iter()
            .filter(|e| [0xb, 0x1f].contains(&e.function))
        {
            assert_eq!(e.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        }
        // Leaf 4: L1 and L2 not shared (one thread per core), L3 by the
        // package's 2; 2 cores per package; the low bits kept.
        let sharing = |i| (leaf(&c, 4, i).eax >> 14) & 0xfff;
        assert_eq!([0, 1, 2].map(sharing), [0, 0, 1]);
        assert_eq!(leaf(&c, 4, 0).eax >> 26, 1);
        assert_eq!(leaf(&c, 4, 0).eax & 0x3fff, 0x0121);
        assert_eq!(leaf(&c, 4, 3).eax, 0, "the terminating subleaf untouched");
        // vCPU 0 and 2 (package 1, core 0).
        assert_eq!(leaf(&cpuid(t, 0), 0xb, 1).edx, 0);
        assert_eq!(leaf(&cpuid(t, 2), 0x1f, 0).edx, 2);
        assert_eq!(leaf(&cpuid(t, 2), 1, 0).ebx >> 24, 2);
    }

    #[test]
    fn two_threads_two_cores_one_package() {
        let t = topo(2, 2, 1, 1);
        let c = cpuid(t, 3); // core 1, thread 1
        let l1 = leaf(&c, 1, 0);
        assert_eq!((l1.ebx >> 24, (l1.ebx >> 16) & 0xff), (3, 4));
        assert_eq!(level(leaf(&c, 0xb, 0)), (1, 2, LEVEL_SMT, 0, 3));
        assert_eq!(level(leaf(&c, 0xb, 1)), (2, 4, LEVEL_CORE, 1, 3));
        assert_eq!(level(leaf(&c, 0x1f, 1)), (2, 4, LEVEL_CORE, 1, 3));
        assert_eq!(level(leaf(&c, 0x1f, 2)), (2, 4, LEVEL_DIE, 2, 3));
        // L1 and L2 shared by a core's 2 threads, L3 by all 4.
        let sharing = |i| (leaf(&c, 4, i).eax >> 14) & 0xfff;
        assert_eq!([0, 1, 2].map(sharing), [1, 1, 3]);
        assert_eq!(leaf(&c, 4, 1).eax >> 26, 1, "2 cores per package");
    }

    #[test]
    fn three_cores_and_two_dies_leave_gaps_in_apic_ids() {
        let t = topo(1, 3, 2, 1);
        let c = cpuid(t, 4); // die 1, core 1: 0b101
        assert_eq!(leaf(&c, 1, 0).ebx >> 24, 5);
        assert_eq!(level(leaf(&c, 0x1f, 0)), (0, 1, LEVEL_SMT, 0, 5));
        assert_eq!(level(leaf(&c, 0x1f, 1)), (2, 3, LEVEL_CORE, 1, 5));
        assert_eq!(level(leaf(&c, 0x1f, 2)), (3, 6, LEVEL_DIE, 2, 5));
        assert_eq!(level(leaf(&c, 0xb, 1)), (3, 6, LEVEL_CORE, 1, 5));
        assert_eq!(leaf(&c, 4, 2).eax >> 26, 7, "8 addressable cores");
    }

    #[test]
    fn one_vcpu_has_no_htt_and_pmu_off_zeroes_leaf_0xa() {
        let c = cpuid(CpuTopology::flat(1), 0);
        assert_eq!(leaf(&c, 1, 0).edx & (1 << 28), 0);
        let a = leaf(&c, 0xa, 0);
        assert_eq!(
            (a.eax, a.edx),
            (0x0704_8002, 0x603),
            "the host's PMU by default"
        );
        let spec = CpuidSpec {
            topology: CpuTopology::flat(1),
            index: 0,
            pmu: false,
        };
        let a = leaf(&cpuid_for(&host(b"GenuineIntel"), &spec).unwrap(), 0xa, 0);
        assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (0, 0, 0, 0));
    }

    #[test]
    fn amd_leaves_follow_the_topology() {
        let spec = CpuidSpec {
            topology: topo(2, 2, 1, 2),
            index: 5, // package 1, core 0, thread 1: 0b101
            pmu: false,
        };
        let c = cpuid_for(&host(b"AuthenticAMD"), &spec).unwrap();
        let e = leaf(&c, 0x8000_001e, 0);
        assert_eq!((e.eax, e.ebx, e.ecx), (5, (1 << 8) | 5, 1));
        let e = leaf(&c, 0x8000_0008, 0);
        assert_eq!(e.ecx, (2 << 12) | 3, "APIC id size 2, 4 per package");
        assert_eq!(
            leaf(&c, 0x8000_0001, 0).ecx & (1 << 23),
            0,
            "no PerfCtrExtCore"
        );
        // Intel's CPUID keeps AMD's leaves as the host gave them.
        let intel = cpuid_for(&host(b"GenuineIntel"), &spec).unwrap();
        assert_eq!(leaf(&intel, 0x8000_0008, 0).ecx, 0x7007);
    }

    #[test]
    fn the_vendor_decides_whether_hwcr_is_set() {
        let vendor = |s: &[u8; 12]| {
            let mut c = CpuId::new(1).unwrap();
            let e = &mut c.as_mut_slice()[0];
            let word = |i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
            (e.ebx, e.edx, e.ecx) = (word(0), word(4), word(8));
            amd_like(&c)
        };
        assert!(vendor(b"AuthenticAMD"));
        assert!(vendor(b"HygonGenuine"));
        assert!(!vendor(b"GenuineIntel"));
        assert!(!amd_like(&CpuId::new(0).unwrap()));
    }
}
