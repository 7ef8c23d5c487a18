//! The guest physical address map (x86_64) and the e820 map built from it.
//!
//! ```text
//! 0x0000_0500  GDT (0x520 IDT) for the 64-bit Linux boot protocol
//! 0x0000_6000  PVH hvm_start_info, modlist at 0x6040, memmap at 0x6100
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  initial stack of the 64-bit boot protocol
//! 0x0000_9000  identity page tables (PML4, PDPT, PD) of the 64-bit boot protocol
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA .. 1 MiB: reserved; ACPI tables at 0xe_0000
//! 0x0010_0000  kernel (high memory)
//! RAM up to 3 GiB, then the 32-bit device hole, RAM again from 4 GiB
//! 0xc000_0000  32-bit PCI BAR window, 512 MiB (`PCI_MMIO32_*`)
//! 0xe800_0000  PCI MMCONFIG (ECAM), 256 MiB for buses 0..=255, reserved in e820
//! 0xfec0_0000  IOAPIC; 0xfee0_0000 LAPIC
//! above RAM    64-bit PCI BAR window, 64 GiB, 1 GiB aligned ([`pci_mmio64_window`])
//! ports 0xcf8..0xd00 PCI configuration (0xcf9 reset); 0xc000..0x10000 PCI I/O BARs
//! ```

use vm_memory::GuestAddress;

pub const GDT_START: GuestAddress = GuestAddress(0x500);
pub const IDT_START: GuestAddress = GuestAddress(0x520);
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
pub const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6040);
pub const PVH_MEMMAP_START: GuestAddress = GuestAddress(0x6100);
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
pub const CMDLINE_MAX_SIZE: usize = 4096;
pub const EBDA_START: u64 = 0x9fc00;
pub const ACPI_START: GuestAddress = GuestAddress(0xe0000);
/// COM1, the 16550 UART ([`crate::platform::SerialDevice`]): its ports
/// and ISA IRQ, which the DSDT describes too.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const HIGH_RAM_START: GuestAddress = GuestAddress(0x10_0000);

/// Start of the 32-bit device hole ("PCI hole"): RAM stops here below 4 GiB.
pub const MEM_32BIT_DEVICES_START: u64 = 0xc000_0000;
pub const PCI_MMCONFIG_START: u64 = 0xe800_0000;
pub const PCI_MMCONFIG_SIZE: u64 = 0x1000_0000;
/// The last bus the ECAM window covers (1 MiB per bus).
pub const PCI_MMCONFIG_END_BUS: u8 = ((PCI_MMCONFIG_SIZE >> 20) - 1) as u8;
/// The 32-bit BAR window (the devices crate's default), below the ECAM.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// Port-I/O BARs.
pub const PCI_IO_START: u64 = 0xc000;
pub const PCI_IO_SIZE: u64 = 0x4000;
/// Size of the 64-bit BAR window above RAM.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;

/// KVM's TSS needs three pages of guest physical space outside RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One e820 (or PVH memmap) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The most guest RAM regions: what one vhost-user SET_MEM_TABLE carries
/// (`VHOST_MEMORY_BASELINE_NREGIONS`).
pub const MAX_RAM_REGIONS: usize = 8;

/// A piece of guest RAM: all or part of one zone (a zone that reaches the
/// device hole goes on at 4 GiB, in a second region of the same file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneRegion {
    /// Index of the zone.
    pub zone: usize,
    pub addr: GuestAddress,
    pub size: u64,
    /// Offset in the zone's file.
    pub offset: u64,
}

/// Guest RAM of zones of `sizes` bytes, one after the other from address
/// 0: below the 32-bit device hole, then from 4 GiB.
pub fn zone_regions(sizes: &[u64]) -> Vec<ZoneRegion> {
    let mut regions = Vec::new();
    let mut addr = 0u64;
    for (zone, &size) in sizes.iter().enumerate() {
        let mut offset = 0;
        while offset < size {
            if addr == MEM_32BIT_DEVICES_START {
                addr = RAM_64BIT_START;
            }
            let room = if addr < MEM_32BIT_DEVICES_START {
                MEM_32BIT_DEVICES_START - addr
            } else {
                u64::MAX
            };
            let len = (size - offset).min(room);
            regions.push(ZoneRegion {
                zone,
                addr: GuestAddress(addr),
                size: len,
                offset,
            });
            addr += len;
            offset += len;
        }
    }
    regions
}

/// The RAM regions for `mem_size` bytes in one zone: below the 32-bit
/// device hole, and the rest from 4 GiB. Each is (guest address, size,
/// offset in the file).
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, u64, u64)> {
    zone_regions(&[mem_size])
        .into_iter()
        .map(|r| (r.addr, r.size, r.offset))
        .collect()
}

// The PCI windows sit in the device hole without overlapping.
const _: () = {
    assert!(PCI_MMIO32_START >= MEM_32BIT_DEVICES_START);
    assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_MMCONFIG_START);
    assert!(PCI_MMCONFIG_START + PCI_MMCONFIG_SIZE <= IOAPIC_START);
    assert!(PCI_IO_START + PCI_IO_SIZE <= 0x1_0000);
};

/// The 64-bit BAR window (start, size) of a guest with `mem_size` bytes of
/// RAM: from the end of RAM (at least 4 GiB), rounded up to 1 GiB.
pub fn pci_mmio64_window(mem_size: u64) -> (u64, u64) {
    let ram_end = ram_regions(mem_size)
        .iter()
        .map(|(a, s, _)| a.0 + s)
        .max()
        .unwrap_or(0)
        .max(RAM_64BIT_START);
    (ram_end.next_multiple_of(1 << 30), PCI_MMIO64_SIZE)
}

/// The e820 map of a guest whose RAM is `ram` ((address, size), by
/// address, from 0: the regions of [`zone_regions`]): low RAM up to the
/// EBDA, the EBDA..1 MiB legacy area reserved, each region from 1 MiB on
/// (one entry per zone, so a zone's range is visible), the PCI MMCONFIG
/// window reserved, and RAM above 4 GiB.
pub fn e820_map(ram: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIGH_RAM_START.0 - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let mmconfig = E820Entry {
        addr: PCI_MMCONFIG_START,
        size: PCI_MMCONFIG_SIZE,
        kind: E820_RESERVED,
    };
    let mut mmconfig_listed = false;
    for &(addr, size) in ram {
        if addr >= RAM_64BIT_START && !mmconfig_listed {
            map.push(mmconfig);
            mmconfig_listed = true;
        }
        let start = addr.max(HIGH_RAM_START.0);
        let end = addr + size;
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    if !mmconfig_listed {
        map.push(mmconfig);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// The (address, size) of each region of one zone of `mem_size`.
    fn one_zone(mem_size: u64) -> Vec<(u64, u64)> {
        ram_regions(mem_size)
            .iter()
            .map(|(a, s, _)| (a.0, *s))
            .collect()
    }

    #[test]
    fn small_guest_has_no_ram_above_4g() {
        assert_eq!(ram_regions(64 * MIB), vec![(GuestAddress(0), 64 * MIB, 0)]);
        let map = e820_map(&one_zone(64 * MIB));
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: EBDA_START,
                    size: MIB - EBDA_START,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: MIB,
                    size: 63 * MIB,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: PCI_MMCONFIG_START,
                    size: PCI_MMCONFIG_SIZE,
                    kind: E820_RESERVED
                },
            ]
        );
    }

    #[test]
    fn large_guest_skips_the_pci_hole() {
        let regions = ram_regions(8 * GIB);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), 3 * GIB, 0),
                (GuestAddress(4 * GIB), 5 * GIB, 3 * GIB)
            ]
        );
        let map = e820_map(&one_zone(8 * GIB));
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 8 * GIB - (MIB - EBDA_START));
        for e in map.iter().filter(|e| e.kind == E820_RAM) {
            let end = e.addr + e.size;
            assert!(
                end <= MEM_32BIT_DEVICES_START || e.addr >= RAM_64BIT_START,
                "{e:?}"
            );
        }
        assert_eq!(map.last().unwrap().addr, 4 * GIB);
    }

    #[test]
    fn pci_windows_do_not_overlap() {
        assert_eq!(PCI_MMCONFIG_END_BUS, 255);
        assert_eq!(pci_mmio64_window(64 * MIB), (4 * GIB, 64 * GIB));
        assert_eq!(pci_mmio64_window(8 * GIB), (9 * GIB, 64 * GIB));
        assert_eq!(pci_mmio64_window(3 * GIB + MIB), (5 * GIB, 64 * GIB));
    }

    #[test]
    fn exactly_3g_has_no_high_region() {
        assert_eq!(ram_regions(3 * GIB).len(), 1);
        assert!(e820_map(&one_zone(3 * GIB))
            .iter()
            .all(|e| e.addr < RAM_64BIT_START));
    }

    #[test]
    fn zones_follow_each_other_and_skip_the_hole() {
        let r = |zone, addr, size, offset| ZoneRegion {
            zone,
            addr: GuestAddress(addr),
            size,
            offset,
        };
        assert_eq!(
            zone_regions(&[32 * MIB, 64 * MIB]),
            [r(0, 0, 32 * MIB, 0), r(1, 32 * MIB, 64 * MIB, 0)]
        );
        // The second zone reaches the hole: its last GiB sits at 4 GiB, at
        // that offset of its file; the third follows.
        assert_eq!(
            zone_regions(&[2 * GIB, 2 * GIB, GIB]),
            [
                r(0, 0, 2 * GIB, 0),
                r(1, 2 * GIB, GIB, 0),
                r(1, 4 * GIB, GIB, GIB),
                r(2, 5 * GIB, GIB, 0)
            ]
        );
        // One zone is ram_regions'.
        assert_eq!(
            zone_regions(&[8 * GIB])
                .iter()
                .map(|r| (r.addr, r.size, r.offset))
                .collect::<Vec<_>>(),
            ram_regions(8 * GIB)
        );
    }

    #[test]
    fn e820_lists_each_zone() {
        let ram: Vec<(u64, u64)> = zone_regions(&[32 * MIB, 32 * MIB])
            .iter()
            .map(|r| (r.addr.0, r.size))
            .collect();
        let map = e820_map(&ram);
        let entries: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.kind)).collect();
        assert_eq!(
            entries,
            [
                (0, EBDA_START, E820_RAM),
                (EBDA_START, MIB - EBDA_START, E820_RESERVED),
                (MIB, 31 * MIB, E820_RAM),
                (32 * MIB, 32 * MIB, E820_RAM),
                (PCI_MMCONFIG_START, PCI_MMCONFIG_SIZE, E820_RESERVED),
            ]
        );
        // Across the hole: the MMCONFIG window sits between the zone's
        // two parts, as for one zone.
        let ram: Vec<(u64, u64)> = zone_regions(&[2 * GIB, 2 * GIB])
            .iter()
            .map(|r| (r.addr.0, r.size))
            .collect();
        let kinds: Vec<_> = e820_map(&ram).iter().map(|e| (e.addr, e.kind)).collect();
        assert_eq!(
            kinds[2..],
            [
                (MIB, E820_RAM),
                (2 * GIB, E820_RAM),
                (PCI_MMCONFIG_START, E820_RESERVED),
                (4 * GIB, E820_RAM)
            ]
        );
    }
}
