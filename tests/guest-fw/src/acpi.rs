//! Just enough ACPI: PVH start info -> RSDP -> XSDT -> FADT (PM1a control
//! port), MADT (the CPUs' APIC ids) and MCFG (the ECAM window).

use core::ptr::read_unaligned;

/// What the guest needs from the VMM's tables.
pub struct Tables {
    pub pm1a_cnt: u16,
    pub cpus: usize,
    pub apic_ids: [u32; 16],
    /// ECAM base of segment 0 (0: no MCFG).
    pub ecam: u64,
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

fn r8(addr: u64) -> u8 {
    // SAFETY: the low 4 GiB are identity-mapped and the tables lie in RAM.
    unsafe { read_unaligned(addr as *const u8) }
}
fn r32(addr: u64) -> u32 {
    // SAFETY: as in r8.
    unsafe { read_unaligned(addr as *const u32) }
}
fn r64(addr: u64) -> u64 {
    // SAFETY: as in r8.
    unsafe { read_unaligned(addr as *const u64) }
}

fn sig(addr: u64, s: &[u8]) -> bool {
    s.iter().enumerate().all(|(i, &c)| r8(addr + i as u64) == c)
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |acc, i| acc.wrapping_add(r8(addr + i))) == 0
}

/// Finds the tables from the `hvm_start_info` at `start_info`.
pub fn find(start_info: u64) -> Option<Tables> {
    if start_info == 0 || r32(start_info) != XEN_HVM_START_MAGIC {
        return None;
    }
    let rsdp = r64(start_info + 32);
    if rsdp == 0 || !sig(rsdp, b"RSD PTR ") || !checksum_ok(rsdp, 20) {
        return None;
    }
    let xsdt = r64(rsdp + 24);
    if !sig(xsdt, b"XSDT") || !checksum_ok(xsdt, r32(xsdt + 4) as u64) {
        return None;
    }
    let mut tables = Tables {
        pm1a_cnt: 0,
        cpus: 0,
        apic_ids: [0; 16],
        ecam: 0,
    };
    let entries = (r32(xsdt + 4) as u64 - 36) / 8;
    for i in 0..entries {
        let table = r64(xsdt + 36 + i * 8);
        let len = r32(table + 4) as u64;
        if !checksum_ok(table, len) {
            continue;
        }
        if sig(table, b"FACP") {
            tables.pm1a_cnt = r32(table + 64) as u16;
        } else if sig(table, b"MCFG") && len >= 60 {
            // The first allocation: base (u64), segment (u16), buses.
            if r8(table + 52) == 0 && r8(table + 53) == 0 && r8(table + 54) == 0 {
                tables.ecam = r64(table + 44);
            }
        } else if sig(table, b"APIC") {
            let mut off = 44;
            while off + 2 <= len {
                let kind = r8(table + off);
                let entry_len = r8(table + off + 1) as u64;
                if entry_len == 0 {
                    break;
                }
                // Processor Local APIC, enabled.
                if kind == 0 && r32(table + off + 4) & 1 == 1 && tables.cpus < 16 {
                    tables.apic_ids[tables.cpus] = r8(table + off + 3) as u32;
                    tables.cpus += 1;
                }
                off += entry_len;
            }
        }
    }
    Some(tables)
}
