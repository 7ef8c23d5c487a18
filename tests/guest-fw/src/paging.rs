//! Mapping MMIO above 4 GiB: `boot.s` identity-maps the low 4 GiB only,
//! while a VMM may put 64-bit BARs higher (ours puts them above RAM). Each
//! further GiB below 512 GiB gets one of a few spare page directories of
//! 2 MiB pages, uncached, identity-mapped like the rest.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

extern "C" {
    /// The PDPT of `boot.s`: PML4[0] points at it; entries 0..4 are set.
    #[link_name = "pdpt"]
    static mut PDPT: [u64; 512];
}

const SPARE_PDS: usize = 4;

#[repr(C, align(4096))]
struct PageDirs([[u64; 512]; SPARE_PDS]);

static mut PDS: PageDirs = PageDirs([[0; 512]; SPARE_PDS]);
static mut PDS_USED: usize = 0;

/// Present, writable, write-through, cache-disable, 2 MiB page.
const PDE_MMIO: u64 = 0x9b;

/// Makes [addr, addr + len) accessible at the same virtual address; false
/// if it lies beyond 512 GiB or the spare directories ran out.
pub fn map_mmio(addr: u64, len: u64) -> bool {
    let first = addr >> 30;
    let last = (addr + len.max(1) - 1) >> 30;
    if last >= 512 {
        return false;
    }
    let mut changed = false;
    for gib in first.max(4)..=last {
        // SAFETY: only the BSP runs drivers, before any AP starts, so
        // nothing else touches the page tables; the pointers come from
        // statics that live for the whole run.
        unsafe {
            let entry = addr_of_mut!(PDPT).cast::<u64>().add(gib as usize);
            if read_volatile(entry) & 1 != 0 {
                continue;
            }
            if PDS_USED == SPARE_PDS {
                return false;
            }
            let pd = addr_of_mut!(PDS.0[PDS_USED]).cast::<u64>();
            PDS_USED += 1;
            for i in 0..512u64 {
                write_volatile(pd.add(i as usize), (gib << 30) | (i << 21) | PDE_MMIO);
            }
            write_volatile(entry, pd as u64 | 3);
        }
        changed = true;
    }
    if changed {
        // SAFETY: reloading CR3 with its own value only flushes the TLB.
        unsafe {
            core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _);
        }
    }
    true
}
