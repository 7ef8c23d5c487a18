//! Just enough ACPI: PVH start info -> RSDP -> XSDT (or the RSDT of an
//! ACPI 1.0 RSDP, as QEMU's firmware builds) -> FADT (PM1a control port,
//! and the DSDT's `_S5_` sleep type), MADT (the CPUs' APIC ids), MCFG
//! (the ECAM window), and the SRAT and SLIT of NUMA guests ([`report_numa`]).

use core::ptr::read_unaligned;

use crate::io::{serial, serial_dec, serial_hex};

/// What the guest needs from the VMM's tables.
pub struct Tables {
    pub pm1a_cnt: u16,
    /// SLP_TYP of S5 from the DSDT's `_S5_` package (5 if not found).
    pub s5_slp_typ: u16,
    pub cpus: usize,
    pub apic_ids: [u32; 16],
    /// ECAM base of segment 0 (0: no MCFG).
    pub ecam: u64,
    /// The SRAT and SLIT (0: none).
    pub srat: u64,
    pub slit: u64,
}

pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Reads the byte at `addr` of the start info, the command line or a table.
pub fn r8(addr: u64) -> u8 {
    // SAFETY: the low 4 GiB are identity-mapped; the start info, command
    // line and ACPI tables lie in RAM.
    unsafe { read_unaligned(addr as *const u8) }
}
/// Reads the `u32` at `addr`, as [`r8`].
pub fn r32(addr: u64) -> u32 {
    // SAFETY: as in r8.
    unsafe { read_unaligned(addr as *const u32) }
}
/// Reads the `u64` at `addr`, as [`r8`].
pub fn r64(addr: u64) -> u64 {
    // SAFETY: as in r8.
    unsafe { read_unaligned(addr as *const u64) }
}

/// Whether the bytes at `addr` are `s`.
pub fn sig(addr: u64, s: &[u8]) -> bool {
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
    let (root, entry_size, root_sig) = root_table(rsdp);
    if !sig(root, root_sig) || !checksum_ok(root, r32(root + 4) as u64) {
        return None;
    }
    let mut tables = Tables {
        pm1a_cnt: 0,
        s5_slp_typ: 5,
        cpus: 0,
        apic_ids: [0; 16],
        ecam: 0,
        srat: 0,
        slit: 0,
    };
    for table in root_entries(root, entry_size) {
        let len = r32(table + 4) as u64;
        if !checksum_ok(table, len) {
            continue;
        }
        if sig(table, b"FACP") {
            tables.pm1a_cnt = r32(table + 64) as u16;
            let dsdt = if len >= 148 && r64(table + 140) != 0 {
                r64(table + 140)
            } else {
                r32(table + 40) as u64
            };
            if let Some(typ) = s5_slp_typ(dsdt) {
                tables.s5_slp_typ = typ;
            }
        } else if sig(table, b"SRAT") {
            tables.srat = table;
        } else if sig(table, b"SLIT") {
            tables.slit = table;
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

/// The root table of the RSDP at `rsdp`: revision 2+ has the XSDT
/// (8-byte entries), ACPI 1.0 only the RSDT (4-byte entries). Its address,
/// entry size and signature.
pub fn root_table(rsdp: u64) -> (u64, u64, &'static [u8]) {
    if r8(rsdp + 15) >= 2 && r64(rsdp + 24) != 0 {
        (r64(rsdp + 24), 8, b"XSDT")
    } else {
        (r32(rsdp + 16) as u64, 4, b"RSDT")
    }
}

/// The addresses of the tables the root table at `root` (entries of
/// `entry_size` bytes) lists.
pub fn root_entries(root: u64, entry_size: u64) -> impl Iterator<Item = u64> {
    let entries = (r32(root + 4) as u64).saturating_sub(36) / entry_size;
    (0..entries).map(move |i| {
        let entry = root + 36 + i * entry_size;
        if entry_size == 8 {
            r64(entry)
        } else {
            r32(entry) as u64
        }
    })
}

/// The first element of `Name (_S5_, Package () { typ, ... })` in the DSDT
/// at `dsdt`: the PM1a SLP_TYP value for soft-off.
fn s5_slp_typ(dsdt: u64) -> Option<u16> {
    if dsdt == 0 || !sig(dsdt, b"DSDT") {
        return None;
    }
    let len = r32(dsdt + 4) as u64;
    let at = (36..len.saturating_sub(8)).find(|&off| sig(dsdt + off, b"_S5_"))?;
    let mut p = dsdt + at + 4;
    if r8(p) != 0x12 {
        return None; // not a PackageOp
    }
    // PkgLength: bits 7:6 of the lead byte count the bytes that follow.
    p += 2 + (r8(p + 1) >> 6) as u64;
    p += 1; // NumElements
    match r8(p) {
        0x0a => Some(r8(p + 1) as u16), // BytePrefix
        0x00 => Some(0),                // ZeroOp
        0x01 => Some(1),                // OneOp
        _ => None,
    }
}

/// Prints the SRAT's entries and the SLIT's rows, one line each:
/// `srat: node 1 apic 2`, `srat: node 1 memory 0x2000000-0x6000000`
/// (end excluded), `slit: node 0: 10 15`. Returns the last memory range's
/// node, base and size (the far end of guest RAM), if there are two or
/// more ranges.
pub fn report_numa(tables: &Tables) -> Option<(u32, u64, u64)> {
    let (srat, slit) = (tables.srat, tables.slit);
    let mut last = None;
    let mut ranges = 0;
    if srat != 0 {
        let len = r32(srat + 4) as u64;
        let mut off = 48;
        while off + 2 <= len {
            let (kind, entry_len) = (r8(srat + off), r8(srat + off + 1) as u64);
            if entry_len == 0 {
                break;
            }
            let e = srat + off;
            match kind {
                0 if r32(e + 4) & 1 == 1 => {
                    let node = r8(e + 2) as u32 | (r32(e + 8) & 0xffff_ff00);
                    numa_line(b"srat: node ", node, b" apic ");
                    serial_dec(r8(e + 3) as u64);
                    serial(b"\n");
                }
                2 if r32(e + 12) & 1 == 1 => {
                    numa_line(b"srat: node ", r32(e + 4), b" x2apic ");
                    serial_dec(r32(e + 8) as u64);
                    serial(b"\n");
                }
                1 if r32(e + 28) & 1 == 1 => {
                    let (node, base, size) = (r32(e + 2), r64(e + 8), r64(e + 16));
                    numa_line(b"srat: node ", node, b" memory ");
                    serial_hex(base);
                    serial(b"-");
                    serial_hex(base + size);
                    serial(b"\n");
                    ranges += 1;
                    last = Some((node, base, size));
                }
                _ => {}
            }
            off += entry_len;
        }
    }
    if slit != 0 {
        let n = r64(slit + 36);
        for i in 0..n.min(16) {
            numa_line(b"slit: node ", i as u32, b":");
            for j in 0..n.min(16) {
                serial(b" ");
                serial_dec(r8(slit + 44 + i * n + j) as u64);
            }
            serial(b"\n");
        }
    }
    last.filter(|_| ranges >= 2)
}

fn numa_line(head: &[u8], node: u32, tail: &[u8]) {
    serial(head);
    serial_dec(node as u64);
    serial(tail);
}
