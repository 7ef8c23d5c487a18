//! The guest's CPU topology (`--cpus topology=threads:cores:dies:packages`,
//! `cpus.topology` of `vm.create`) and the APIC ids it gives, which CPUID
//! leaves 1, 4, 0xB and 0x1F ([`crate::vcpu::setup::cpuid_for`]), the MADT
//! ([`crate::acpi`]) and KVM's vCPU ids all use.
//!
//! An APIC id packs the thread, core, die and package numbers of a vCPU in
//! fields as wide as each level's count needs (rounded up to a power of
//! two), as on hardware and in Cloud Hypervisor's `get_x2apic_id`: with
//! 3 cores per die, the core field is 2 bits and APIC id 3 is never used.

/// How the vCPUs are arranged: a vCPU's index counts threads first, then
/// cores, dies and packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTopology {
    pub threads_per_core: u8,
    pub cores_per_die: u8,
    pub dies_per_package: u8,
    pub packages: u8,
}

impl CpuTopology {
    /// The default of `cpus` vCPUs: one package of one die with a core
    /// each (APIC ids 0, 1, 2, ...).
    pub fn flat(cpus: u8) -> Self {
        CpuTopology {
            threads_per_core: 1,
            cores_per_die: cpus.max(1),
            dies_per_package: 1,
            packages: 1,
        }
    }

    /// The vCPUs it holds: the product of the four counts.
    pub fn count(&self) -> u32 {
        self.levels().iter().map(|&n| u32::from(n)).product()
    }

    /// The four counts, innermost first.
    fn levels(&self) -> [u8; 4] {
        [
            self.threads_per_core,
            self.cores_per_die,
            self.dies_per_package,
            self.packages,
        ]
    }

    /// Logical processors in a package (threads × cores × dies).
    pub fn per_package(&self) -> u32 {
        self.levels()[..3].iter().map(|&n| u32::from(n)).product()
    }

    /// Logical processors in a core.
    pub fn per_core(&self) -> u32 {
        u32::from(self.threads_per_core)
    }

    /// Logical processors in a die (threads × cores).
    pub fn per_die(&self) -> u32 {
        u32::from(self.threads_per_core) * u32::from(self.cores_per_die)
    }

    /// The APIC id's bit where the core number starts (the thread field's
    /// width): CPUID 0xB/0x1F's SMT-level shift.
    pub fn core_shift(&self) -> u32 {
        width(self.threads_per_core)
    }

    /// Where the die number starts: 0x1F's core-level shift.
    pub fn die_shift(&self) -> u32 {
        self.core_shift() + width(self.cores_per_die)
    }

    /// Where the package number starts: 0xB's core-level and 0x1F's
    /// die-level shift.
    pub fn package_shift(&self) -> u32 {
        self.die_shift() + width(self.dies_per_package)
    }

    /// The APIC id of the vCPU with this index.
    pub fn apic_id(&self, index: u32) -> u32 {
        let [t, c, d, _] = self.levels().map(u32::from);
        let thread = index % t;
        let core = index / t % c;
        let die = index / (t * c) % d;
        let package = index / (t * c * d);
        thread
            | core << self.core_shift()
            | die << self.die_shift()
            | package << self.package_shift()
    }
}

/// The bits that number `n` things (0 for one).
fn width(n: u8) -> u32 {
    u8::BITS - n.saturating_sub(1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(threads: u8, cores: u8, dies: u8, packages: u8) -> CpuTopology {
        CpuTopology {
            threads_per_core: threads,
            cores_per_die: cores,
            dies_per_package: dies,
            packages,
        }
    }

    #[test]
    fn widths_round_up_to_a_power_of_two() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(width), [0, 1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn apic_ids_pack_thread_core_die_package() {
        let ids = |t: CpuTopology| (0..t.count()).map(|i| t.apic_id(i)).collect::<Vec<_>>();
        assert_eq!(ids(CpuTopology::flat(4)), [0, 1, 2, 3]);
        // 2 threads per core, 2 cores: shift 1 for the core, 2 for the package.
        assert_eq!(ids(t(2, 2, 1, 1)), [0, 1, 2, 3]);
        // 1 thread, 2 cores, 2 packages: package at bit 1.
        assert_eq!(ids(t(1, 2, 1, 2)), [0, 1, 2, 3]);
        // 3 cores take 2 bits: id 3 is skipped, the second package starts at 4.
        assert_eq!(ids(t(1, 3, 1, 2)), [0, 1, 2, 4, 5, 6]);
        // 2 threads, 3 cores, 2 dies: core at bit 1, die at bit 3.
        let six = t(2, 3, 2, 1);
        assert_eq!(
            (six.core_shift(), six.die_shift(), six.package_shift()),
            (1, 3, 4)
        );
        assert_eq!(ids(six), [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]);
        assert_eq!(
            (six.per_core(), six.per_die(), six.per_package()),
            (2, 6, 12)
        );
    }
}
