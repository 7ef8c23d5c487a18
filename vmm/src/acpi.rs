//! ACPI tables: RSDP -> XSDT -> FADT (-> DSDT) and MADT, written into the
//! reserved legacy area at [`layout::ACPI_START`]. The FADT declares the PM1
//! blocks [`PM1A_EVT_PORT`] and [`PM1A_CNT_PORT`] that [`crate::platform::AcpiPm`]
//! serves (SLP_TYP 5 with SLP_EN powers off), the PM timer [`PM_TMR_PORT`]
//! (Linux calibrates the TSC against it), the CMOS century register and
//! the reset register (port 0x64, value 0xfe: the i8042 reset). The DSDT holds `_S5_` = 5 and the
//! PCI host bridge `\_SB_.PCI0` (PNP0A08, segment 0, buses 0..=255, the
//! configuration ports, the I/O and the 32/64-bit BAR windows); the MCFG
//! points at the ECAM window ([`layout::PCI_MMCONFIG_START`]). The MADT
//! lists `max` vCPUs with the topology's APIC ids, those above `boot`
//! disabled but online capable. With guest NUMA nodes (`--numa`), the SRAT
//! gives each vCPU's APIC id and each zone's memory range its node
//! (proximity domain = `guest_numa_id`), and the SLIT the distances
//! between nodes: without them Linux sees one node, however the host
//! placed the zones; the host bridge then has `_PXM` 0.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::aml;
use crate::cli::{CpusConfig, MemoryConfig, NumaNodeConfig};
use crate::layout;
use crate::numa;

pub const PM1A_EVT_PORT: u16 = 0x600;
pub const PM1A_EVT_LEN: u8 = 4;
pub const PM1A_CNT_PORT: u16 = 0x604;
pub const PM1A_CNT_LEN: u8 = 2;
/// The ACPI PM timer ([`crate::platform::PmTimer`]), 24 bits.
pub const PM_TMR_PORT: u16 = 0x608;
pub const PM_TMR_LEN: u8 = 4;
/// The SLP_TYP of S5 in the DSDT's `_S5_` package.
pub const S5_SLP_TYP: u16 = 5;
pub const SCI_IRQ: u16 = 9;
/// The FADT's CENTURY field: the CMOS register holding the century (BCD),
/// which [`crate::platform::Cmos`] serves.
pub const CMOS_CENTURY: u8 = 0x32;

const OEM_ID: &[u8; 6] = b"VUVMM ";
const OEM_TABLE_ID: &[u8; 8] = b"VUVMMTBL";

/// Errors of [`write_tables`].
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("writing ACPI tables at {addr:#x}")]
    Write {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("ACPI tables ({0} bytes) overflow the legacy area")]
    TooLarge(usize),
}

/// A system description table under construction.
struct Sdt(Vec<u8>);

impl Sdt {
    fn new(signature: &[u8; 4], revision: u8) -> Self {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(signature);
        b.extend_from_slice(&[0; 4]); // length
        b.push(revision);
        b.push(0); // checksum
        b.extend_from_slice(OEM_ID);
        b.extend_from_slice(OEM_TABLE_ID);
        b.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        b.extend_from_slice(b"VUVM"); // creator id
        b.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Sdt(b)
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn set(&mut self, offset: usize, bytes: &[u8]) {
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.set(4, &len.to_le_bytes());
        self.0[9] = checksum(&self.0);
        self.0
    }
}

/// The byte that makes `bytes` sum to zero (with a zero checksum field).
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A Generic Address Structure for an I/O port.
fn gas_io(port: u16, bit_width: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bit_width;
    g[3] = match bit_width {
        8 => 1,
        16 => 2,
        32 => 3,
        _ => 4,
    };
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// The PCI host bridge: `Scope (\_SB) { Device (PCI0) { .. } }`. With
/// guest NUMA nodes, `_PXM` puts it (and so its devices) in node 0, as
/// Cloud Hypervisor's default PCI segment is; without it Linux logs
/// "Unknown NUMA node; performance will be reduced" for the bus.
fn pci_host_bridge(mmio64: (u64, u64), numa: bool) -> Vec<u8> {
    let io_start = layout::PCI_IO_START as u16;
    let io_end = (layout::PCI_IO_START + layout::PCI_IO_SIZE - 1) as u16;
    let crs = aml::resource_template(&[
        aml::word_bus_number(0, u16::from(layout::PCI_MMCONFIG_END_BUS)),
        aml::io(0xcf8, 8),
        // Every port but the configuration ports is forwarded to the bus;
        // the legacy devices below 0xcf8 sit on it, BARs from PCI_IO_START.
        aml::word_io(0, 0xcf7),
        aml::word_io(0xd00, io_start - 1),
        aml::word_io(io_start, io_end),
        aml::dword_memory(
            layout::PCI_MMIO32_START as u32,
            layout::PCI_MMIO32_SIZE as u32,
        ),
        aml::qword_memory(mmio64.0, mmio64.1),
    ]);
    let mut body = Vec::new();
    body.extend(aml::name(b"_HID", &aml::eisa_id(b"PNP0A08")));
    body.extend(aml::name(b"_CID", &aml::eisa_id(b"PNP0A03")));
    body.extend(aml::name(b"_ADR", &aml::integer(0)));
    body.extend(aml::name(b"_SEG", &aml::integer(0)));
    body.extend(aml::name(b"_UID", &aml::integer(0)));
    body.extend(aml::name(b"_BBN", &aml::integer(0)));
    if numa {
        body.extend(aml::name(b"_PXM", &aml::integer(0)));
    }
    body.extend(aml::name(b"_CRS", &crs));
    aml::device(b"PCI0", &body)
}

/// COM1 as a PNP0501 device with its ports and IRQ, so the guest finds
/// the UART by ACPI enumeration rather than legacy probing (as QEMU's and
/// Cloud Hypervisor's DSDTs describe theirs).
fn com1() -> Vec<u8> {
    let crs = aml::resource_template(&[
        aml::io(layout::COM1_PORT as u16, 8),
        aml::irq_no_flags(layout::COM1_IRQ as u8),
    ]);
    let mut body = Vec::new();
    body.extend(aml::name(b"_HID", &aml::eisa_id(b"PNP0501")));
    body.extend(aml::name(b"_UID", &aml::integer(1)));
    body.extend(aml::name(b"_CRS", &crs));
    aml::device(b"COM1", &body)
}

fn dsdt(mmio64: (u64, u64), numa: bool) -> Vec<u8> {
    let mut t = Sdt::new(b"DSDT", 2);
    // Name (_S5_, Package (2) { 5, 5 })
    t.put(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02, 0x0a]);
    t.put(&[S5_SLP_TYP as u8, 0x0a, S5_SLP_TYP as u8]);
    let mut sb = pci_host_bridge(mmio64, numa);
    sb.extend(com1());
    t.put(&aml::scope(b"\\_SB_", &sb));
    t.finish()
}

/// MCFG: one allocation, segment 0, the ECAM window for buses 0..=END_BUS.
fn mcfg() -> Vec<u8> {
    let mut t = Sdt::new(b"MCFG", 1);
    t.put(&[0; 8]); // reserved
    t.put(&layout::PCI_MMCONFIG_START.to_le_bytes())
        .put(&0u16.to_le_bytes()) // PCI segment group
        .put(&[0, layout::PCI_MMCONFIG_END_BUS])
        .put(&[0; 4]);
    t.finish()
}

/// The FACS: where the OS finds the global lock (and, with sleep states we
/// do not offer, the waking vector). No checksum; 64-byte aligned.
fn facs() -> Vec<u8> {
    let mut t = vec![0u8; FACS_LEN];
    t[..4].copy_from_slice(b"FACS");
    t[4..8].copy_from_slice(&(FACS_LEN as u32).to_le_bytes());
    t[32] = 2; // version
    t
}

const FACS_LEN: usize = 64;

fn fadt(facs_addr: u64, dsdt_addr: u64) -> Vec<u8> {
    let mut t = Sdt::new(b"FACP", 6);
    t.put(&[0; 276 - 36]);
    // FIRMWARE_CTRL (32-bit, as QEMU): the FACS, which Linux needs to
    // use the global lock that PM1_EN's GBL_EN announces.
    t.set(36, &(facs_addr as u32).to_le_bytes());
    t.set(40, &(dsdt_addr as u32).to_le_bytes());
    t.set(46, &SCI_IRQ.to_le_bytes());
    // SMI_CMD = 0: the platform is always in ACPI mode (SCI_EN reads 1).
    t.set(56, &u32::from(PM1A_EVT_PORT).to_le_bytes());
    t.set(64, &u32::from(PM1A_CNT_PORT).to_le_bytes());
    t.set(76, &u32::from(PM_TMR_PORT).to_le_bytes());
    t.set(88, &[PM1A_EVT_LEN, PM1A_CNT_LEN]);
    t.set(91, &[PM_TMR_LEN]);
    // The CMOS register with the RTC's century.
    t.set(108, &[CMOS_CENTURY]);
    // IAPC_BOOT_ARCH stays 0: the guest probes legacy devices itself.
    // Flags: WBINVD (0), PWR_BUTTON (4) and SLP_BUTTON (5) as control
    // methods (none), RESET_REG_SUP (10).
    let flags: u32 = (1 << 0) | (1 << 4) | (1 << 5) | (1 << 10);
    t.set(112, &flags.to_le_bytes());
    t.set(116, &gas_io(0x64, 8));
    t.set(128, &[0xfe]);
    t.set(131, &[5]); // FADT minor version
    t.set(140, &dsdt_addr.to_le_bytes());
    t.set(148, &gas_io(PM1A_EVT_PORT, 8 * PM1A_EVT_LEN));
    t.set(172, &gas_io(PM1A_CNT_PORT, 8 * PM1A_CNT_LEN));
    t.set(208, &gas_io(PM_TMR_PORT, 8 * PM_TMR_LEN));
    t.set(268, b"VUVMMKVM");
    t.finish()
}

/// MADT Processor Local APIC flags: Enabled, and Online Capable (the OS
/// may bring it up later; MADT revision 5, ACPI 6.3).
const LAPIC_ENABLED: u32 = 1;
const LAPIC_ONLINE_CAPABLE: u32 = 2;

/// The MADT: a local APIC per vCPU up to `max` (uid = index, APIC id from
/// the topology), those from `boot` on not enabled but online capable;
/// the I/O APIC with the id after the last local APIC's.
fn madt(cpus: &CpusConfig) -> Vec<u8> {
    let mut t = Sdt::new(b"APIC", 5);
    t.put(&(layout::APIC_START as u32).to_le_bytes());
    t.put(&1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259s are present
    let topology = cpus.topology();
    let mut next_id = 0u8;
    for index in 0..cpus.max {
        // `CpusConfig::check` keeps every id within 8 bits.
        let apic_id = topology.apic_id(u32::from(index)) as u8;
        let flags = if index < cpus.boot {
            LAPIC_ENABLED
        } else {
            LAPIC_ONLINE_CAPABLE
        };
        // Processor Local APIC: uid, APIC id, flags.
        t.put(&[0, 8, index, apic_id]).put(&flags.to_le_bytes());
        next_id = apic_id.saturating_add(1);
    }
    // I/O APIC: id, address, GSI base.
    t.put(&[1, 12, next_id, 0])
        .put(&(layout::IOAPIC_START as u32).to_le_bytes())
        .put(&0u32.to_le_bytes());
    // Interrupt source override: ISA IRQ 0 -> GSI 2.
    t.put(&[2, 10, 0, 0])
        .put(&2u32.to_le_bytes())
        .put(&0u16.to_le_bytes());
    // SCI: level, active high.
    t.put(&[2, 10, 0, SCI_IRQ as u8])
        .put(&u32::from(SCI_IRQ).to_le_bytes())
        .put(&0x000du16.to_le_bytes());
    // LAPIC NMI on LINT1 of every CPU.
    t.put(&[4, 6, 0xff]).put(&0u16.to_le_bytes()).put(&[1]);
    t.finish()
}

/// The guest's NUMA nodes as the SRAT and SLIT describe them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaTopology {
    pub nodes: Vec<NumaNode>,
    /// `distances[i][j]`: from node i to node j.
    pub distances: Vec<Vec<u8>>,
}

/// One node: its proximity domain, vCPUs' APIC ids and RAM ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNode {
    pub id: u32,
    pub apic_ids: Vec<u32>,
    /// (guest address, size) of each region of its zones.
    pub memory: Vec<(u64, u64)>,
}

impl NumaTopology {
    /// The nodes of `nodes` (checked by [`numa::check`]), their vCPUs'
    /// APIC ids from `cpus`' topology and their zones' regions in guest
    /// RAM; None without nodes.
    pub fn new(cpus: &CpusConfig, memory: &MemoryConfig, nodes: &[NumaNodeConfig]) -> Option<Self> {
        if nodes.is_empty() {
            return None;
        }
        let sizes: Vec<u64> = memory.zones.iter().map(|z| z.size).collect();
        let regions = layout::zone_regions(&sizes);
        let topology = cpus.topology();
        let mut out: Vec<NumaNode> = nodes
            .iter()
            .map(|n| NumaNode {
                id: n.guest_numa_id,
                apic_ids: n
                    .cpus
                    .iter()
                    .map(|&c| topology.apic_id(u32::from(c)))
                    .collect(),
                memory: regions
                    .iter()
                    .filter(|r| n.memory_zones.contains(&memory.zones[r.zone].id))
                    .map(|r| (r.addr.0, r.size))
                    .collect(),
            })
            .collect();
        out.sort_by_key(|n| n.id);
        Some(NumaTopology {
            nodes: out,
            distances: numa::distances(nodes),
        })
    }
}

/// SRAT affinity flags: Enabled.
const SRAT_ENABLED: u32 = 1;

/// The SRAT (System Resource Affinity Table, revision 3): a Processor
/// Local APIC Affinity entry per vCPU of a node (the x2APIC one for an id
/// above 254), and a Memory Affinity entry per RAM region of its zones.
fn srat(numa: &NumaTopology) -> Vec<u8> {
    let mut t = Sdt::new(b"SRAT", 3);
    t.put(&1u32.to_le_bytes()); // reserved, 1 for compatibility
    t.put(&[0; 8]);
    for node in &numa.nodes {
        let domain = node.id.to_le_bytes();
        for &apic in &node.apic_ids {
            if apic < 0xff {
                // type 0: domain[7:0], APIC id, flags, SAPIC EID,
                // domain[31:8], clock domain.
                t.put(&[0, 16, domain[0], apic as u8])
                    .put(&SRAT_ENABLED.to_le_bytes())
                    .put(&[0])
                    .put(&domain[1..4])
                    .put(&0u32.to_le_bytes());
            } else {
                // type 2: reserved, domain, x2APIC id, flags, clock
                // domain, reserved.
                t.put(&[2, 24, 0, 0])
                    .put(&domain)
                    .put(&apic.to_le_bytes())
                    .put(&SRAT_ENABLED.to_le_bytes())
                    .put(&[0; 8]);
            }
        }
        for &(base, len) in &node.memory {
            // type 1: domain, reserved, base, length, reserved, flags,
            // reserved.
            t.put(&[1, 40])
                .put(&domain)
                .put(&[0; 2])
                .put(&base.to_le_bytes())
                .put(&len.to_le_bytes())
                .put(&[0; 4])
                .put(&SRAT_ENABLED.to_le_bytes())
                .put(&[0; 8]);
        }
    }
    t.finish()
}

/// The SLIT (System Locality Information Table): the number of nodes,
/// then a byte per (from, to) pair.
fn slit(numa: &NumaTopology) -> Vec<u8> {
    let mut t = Sdt::new(b"SLIT", 1);
    t.put(&(numa.distances.len() as u64).to_le_bytes());
    for row in &numa.distances {
        t.put(row);
    }
    t.finish()
}

fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut t = Sdt::new(b"XSDT", 1);
    for addr in tables {
        t.put(&addr.to_le_bytes());
    }
    t.finish()
}

fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.extend_from_slice(&[0; 4]); // extended checksum, reserved
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// Builds every table for a guest with the vCPUs `cpus`, the NUMA nodes
/// `numa` (an SRAT and a SLIT when given) and the 64-bit BAR window
/// `mmio64` (start, size), laid out from `base` (the RSDP first). Returns
/// the bytes; the RSDP is at `base`.
pub fn build(
    cpus: &CpusConfig,
    numa: Option<&NumaTopology>,
    mmio64: (u64, u64),
    base: GuestAddress,
) -> Vec<u8> {
    fn align(v: &mut Vec<u8>) {
        v.resize(v.len().next_multiple_of(16), 0);
    }
    let mut blob = vec![0u8; 64]; // RSDP slot
                                  // The FACS must be 64-byte aligned: right after the RSDP's slot.
    let facs_addr = base.0 + blob.len() as u64;
    debug_assert_eq!(facs_addr % 64, 0);
    blob.extend(facs());
    let dsdt_addr = base.0 + blob.len() as u64;
    blob.extend(dsdt(mmio64, numa.is_some()));
    align(&mut blob);
    let fadt_addr = base.0 + blob.len() as u64;
    blob.extend(fadt(facs_addr, dsdt_addr));
    align(&mut blob);
    let madt_addr = base.0 + blob.len() as u64;
    blob.extend(madt(cpus));
    align(&mut blob);
    let mcfg_addr = base.0 + blob.len() as u64;
    blob.extend(mcfg());
    align(&mut blob);
    let mut tables = vec![fadt_addr, madt_addr, mcfg_addr];
    if let Some(numa) = numa {
        for table in [srat(numa), slit(numa)] {
            tables.push(base.0 + blob.len() as u64);
            blob.extend(table);
            align(&mut blob);
        }
    }
    let xsdt_addr = base.0 + blob.len() as u64;
    blob.extend(xsdt(&tables));
    blob[..36].copy_from_slice(&rsdp(xsdt_addr));
    blob
}

/// Writes the tables into guest memory; returns the RSDP's address.
pub fn write_tables<M: GuestMemory>(
    mem: &M,
    cpus: &CpusConfig,
    numa: Option<&NumaTopology>,
    mmio64: (u64, u64),
) -> Result<GuestAddress, AcpiError> {
    let base = layout::ACPI_START;
    let blob = build(cpus, numa, mmio64, base);
    if base.0 + blob.len() as u64 > layout::HIGH_RAM_START.0 {
        return Err(AcpiError::TooLarge(blob.len()));
    }
    mem.write_slice(&blob, base)
        .map_err(|source| AcpiError::Write {
            addr: base.0,
            source,
        })?;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    fn table(blob: &[u8], base: u64, addr: u64) -> &[u8] {
        let off = (addr - base) as usize;
        let len = u32_at(blob, off + 4) as usize;
        &blob[off..off + len]
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    #[test]
    fn checksums_and_pointers() {
        let base = 0xe0000;
        let blob = build(&CpusConfig::new(2), None, MMIO64, GuestAddress(base));
        let rsdp = &blob[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let xsdt = table(&blob, base, u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(xsdt), 0);
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        assert_eq!(entries.len(), 3);
        let fadt = table(&blob, base, entries[0]);
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(fadt.len(), 276);
        assert_eq!(sum(fadt), 0);
        assert_eq!(u32_at(fadt, 64), u32::from(PM1A_CNT_PORT));
        assert_eq!(u64_at(fadt, 172 + 4), u64::from(PM1A_CNT_PORT));
        assert_eq!(u32_at(fadt, 76), u32::from(PM_TMR_PORT));
        assert_eq!(fadt[91], 4);
        assert_eq!(&fadt[208..212], &[1, 32, 0, 3]); // system I/O, 32 bits, dword
        assert_eq!(u64_at(fadt, 212), u64::from(PM_TMR_PORT));
        assert_eq!(fadt[108], CMOS_CENTURY);
        let facs_addr = u64::from(u32_at(fadt, 36));
        assert_eq!(facs_addr % 64, 0);
        let facs = &blob[(facs_addr - base) as usize..][..64];
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(facs, 4), 64);
        assert_eq!(u32_at(facs, 16), 0, "the global lock starts free");
        let dsdt = table(&blob, base, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(dsdt), 0);
        assert_eq!(u32_at(fadt, 40) as u64, u64_at(fadt, 140));
        let madt = table(&blob, base, entries[1]);
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(sum(madt), 0);
        let mcfg = table(&blob, base, entries[2]);
        assert_eq!(&mcfg[..4], b"MCFG");
        assert_eq!(sum(mcfg), 0);
    }

    const MMIO64: (u64, u64) = (1 << 32, 64 << 30);

    #[test]
    fn mcfg_layout() {
        let t = mcfg();
        assert_eq!(t.len(), 44 + 16);
        assert_eq!(u32_at(&t, 4), 60);
        assert_eq!(sum(&t), 0);
        assert_eq!(u64_at(&t, 44), layout::PCI_MMCONFIG_START);
        assert_eq!(&t[52..56], &[0, 0, 0, 255]); // segment 0, buses 0..=255
        let buses = u64::from(t[55]) - u64::from(t[54]) + 1;
        assert_eq!(buses << 20, layout::PCI_MMCONFIG_SIZE);
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn dsdt_has_the_pci_host_bridge() {
        let t = dsdt(MMIO64, false);
        assert!(find(&t, b"_PXM").is_none());
        // With guest nodes, the bridge is in node 0.
        let numa = dsdt(MMIO64, true);
        assert_eq!(sum(&numa), 0);
        assert!(find(&numa, &[0x08, b'_', b'P', b'X', b'M', 0]).is_some());
        assert_eq!(sum(&t), 0);
        assert_eq!(u32_at(&t, 4) as usize, t.len());
        let scope = find(&t, b"\\_SB_").expect("\\_SB_ scope");
        assert_eq!(t[scope - 3], 0x10, "ScopeOp with a 2-byte PkgLength");
        // The scope's PkgLength runs to the end of the table.
        let pkg = (t[scope - 2] & 0xf) as usize | (t[scope - 1] as usize) << 4;
        assert_eq!(scope - 2 + pkg, t.len());
        let dev = find(&t, b"PCI0").unwrap();
        assert_eq!(&t[dev - 4..dev - 2], &[0x5b, 0x82]);
        for (name, value) in [
            (&b"_HID"[..], aml::eisa_id(b"PNP0A08")),
            (b"_CID", aml::eisa_id(b"PNP0A03")),
            (b"_SEG", vec![0]),
            (b"_BBN", vec![0]),
        ] {
            let mut want = vec![0x08];
            want.extend_from_slice(name);
            want.extend(value);
            assert!(find(&t, &want).is_some(), "{name:?}");
        }
        let crs = find(&t, b"_CRS").unwrap();
        assert_eq!(t[crs + 4], 0x11, "a buffer");
        assert!(find(&t, &aml::word_bus_number(0, 255)).is_some());
        assert!(find(&t, &aml::io(0xcf8, 8)).is_some());
        assert!(find(&t, &aml::dword_memory(0xc000_0000, 0x2000_0000)).is_some());
        assert!(find(&t, &aml::qword_memory(MMIO64.0, MMIO64.1)).is_some());
        assert_eq!(&t[t.len() - 2..], &[0x79, 0]);
    }

    #[test]
    fn dsdt_describes_com1_in_the_sb_scope() {
        let t = dsdt(MMIO64, false);
        let scope = find(&t, b"\\_SB_").unwrap();
        let com1 = find(&t, b"COM1").expect("a COM1 device");
        assert!(com1 > scope, "COM1 is inside \\_SB_");
        // DeviceOp, then a PkgLength of one or two bytes, then the name.
        assert!(
            t[com1 - 4..com1 - 1].windows(2).any(|w| w == [0x5b, 0x82]),
            "DeviceOp before COM1"
        );
        let mut hid = b"\x08_HID".to_vec();
        hid.extend(aml::eisa_id(b"PNP0501"));
        assert!(find(&t[com1..], &hid).is_some());
        // IO (Decode16, 0x3F8, 0x3F8, 1, 8), IRQNoFlags () {4}, end tag.
        let crs = [
            &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08][..],
            &[0x22, 0x10, 0x00],
            &[0x79, 0x00],
        ]
        .concat();
        assert!(find(&t[com1..], &crs).is_some(), "COM1's _CRS");
    }

    /// The MADT's local APICs as (uid, APIC id, flags), and the I/O
    /// APIC's id; checks the checksum, length and entry lengths.
    fn madt_entries(cpus: &CpusConfig) -> (Vec<(u8, u8, u32)>, u8) {
        let blob = madt(cpus);
        assert_eq!(sum(&blob), 0);
        assert_eq!(u32_at(&blob, 4) as usize, blob.len());
        assert_eq!(blob[8], 5, "revision 5: Online Capable is defined");
        let mut off = 44;
        let (mut lapics, mut ioapic) = (Vec::new(), None);
        while off < blob.len() {
            let (kind, len) = (blob[off], blob[off + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(len, 8);
                    lapics.push((blob[off + 2], blob[off + 3], u32_at(&blob, off + 4)));
                }
                1 => ioapic = Some(blob[off + 2]),
                _ => {}
            }
            off += len;
        }
        assert_eq!(off, blob.len());
        (lapics, ioapic.expect("an I/O APIC"))
    }

    #[test]
    fn madt_lists_every_cpu() {
        for n in [1u8, 2, 8, 254] {
            let (lapics, ioapic) = madt_entries(&CpusConfig::new(n));
            let want: Vec<_> = (0..n).map(|i| (i, i, LAPIC_ENABLED)).collect();
            assert_eq!(lapics, want);
            assert_eq!(ioapic, n);
        }
    }

    #[test]
    fn madt_lists_max_cpus_with_the_topologys_apic_ids() {
        let cpus = CpusConfig {
            max: 6,
            topology: Some(crate::topology::CpuTopology {
                threads_per_core: 1,
                cores_per_die: 3,
                dies_per_package: 1,
                packages: 2,
            }),
            ..CpusConfig::new(2)
        };
        let (lapics, ioapic) = madt_entries(&cpus);
        let (on, off) = (LAPIC_ENABLED, LAPIC_ONLINE_CAPABLE);
        // 3 cores take 2 bits: the second package's APIC ids start at 4.
        assert_eq!(
            lapics,
            [
                (0, 0, on),
                (1, 1, on),
                (2, 2, off),
                (3, 4, off),
                (4, 5, off),
                (5, 6, off)
            ]
        );
        assert_eq!(ioapic, 7);
        // Its checksum holds inside the whole set of tables too.
        let blob = build(&cpus, None, MMIO64, GuestAddress(0xe0000));
        let xsdt = table(&blob, 0xe0000, u64_at(&blob, 24));
        assert_eq!(sum(table(&blob, 0xe0000, u64_at(xsdt, 44))), 0);
    }

    #[test]
    fn fits_in_legacy_area_with_max_cpus() {
        let blob = build(&CpusConfig::new(254), None, MMIO64, layout::ACPI_START);
        assert!(layout::ACPI_START.0 + blob.len() as u64 <= layout::HIGH_RAM_START.0);
    }

    fn two_nodes() -> NumaTopology {
        use crate::cli::{parse_memory_zone, parse_numa};
        let memory = MemoryConfig {
            size: 96 << 20,
            zones: vec![
                parse_memory_zone("id=mem0,size=32M").unwrap(),
                parse_memory_zone("id=mem1,size=64M").unwrap(),
            ],
            ..MemoryConfig::default()
        };
        let nodes = [
            parse_numa("guest_numa_id=1,cpus=[2,3],memory_zones=[mem1]").unwrap(),
            parse_numa("guest_numa_id=0,cpus=[0,1],memory_zones=[mem0],distances=[1@15]").unwrap(),
        ];
        let cpus = CpusConfig {
            topology: Some(crate::topology::CpuTopology {
                threads_per_core: 1,
                cores_per_die: 3,
                dies_per_package: 1,
                packages: 2,
            }),
            max: 6,
            ..CpusConfig::new(4)
        };
        NumaTopology::new(&cpus, &memory, &nodes).unwrap()
    }

    #[test]
    fn numa_topology_from_the_config() {
        let numa = two_nodes();
        // Sorted by id; vCPU 3 is the second package's first core: APIC 4.
        assert_eq!(
            numa.nodes,
            [
                NumaNode {
                    id: 0,
                    apic_ids: vec![0, 1],
                    memory: vec![(0, 32 << 20)]
                },
                NumaNode {
                    id: 1,
                    apic_ids: vec![2, 4],
                    memory: vec![(32 << 20, 64 << 20)]
                },
            ]
        );
        assert_eq!(numa.distances, [vec![10, 15], vec![20, 10]]);
        assert_eq!(
            NumaTopology::new(&CpusConfig::new(1), &MemoryConfig::default(), &[]),
            None
        );
    }

    #[test]
    fn srat_bytes() {
        let t = srat(&two_nodes());
        assert_eq!(&t[..4], b"SRAT");
        assert_eq!(t[8], 3, "revision");
        assert_eq!(u32_at(&t, 4) as usize, t.len());
        assert_eq!(sum(&t), 0);
        assert_eq!(u32_at(&t, 36), 1, "the reserved 1");
        // 4 local APIC entries (16 bytes) and 2 memory entries (40).
        assert_eq!(t.len(), 48 + 4 * 16 + 2 * 40);
        #[rustfmt::skip]
        let lapic0 = [0, 16, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(&t[48..64], &lapic0);
        assert_eq!(&t[64..68], &[0, 16, 0, 1], "node 0, APIC 1");
        let mem0 = &t[80..120];
        assert_eq!(&mem0[..2], &[1, 40]);
        assert_eq!(u32_at(mem0, 2), 0, "domain 0");
        assert_eq!((u64_at(mem0, 8), u64_at(mem0, 16)), (0, 32 << 20));
        assert_eq!(u32_at(mem0, 28), SRAT_ENABLED);
        assert_eq!(&t[120..124], &[0, 16, 1, 2], "node 1, APIC 2");
        assert_eq!(&t[136..140], &[0, 16, 1, 4], "node 1, APIC 4");
        let mem1 = &t[152..192];
        assert_eq!(u32_at(mem1, 2), 1, "domain 1");
        assert_eq!((u64_at(mem1, 8), u64_at(mem1, 16)), (32 << 20, 64 << 20));
        // An APIC id of 255 or more takes an x2APIC entry.
        let wide = NumaTopology {
            nodes: vec![NumaNode {
                id: 0x0102_0304,
                apic_ids: vec![300],
                memory: vec![],
            }],
            distances: vec![vec![10]],
        };
        let t = srat(&wide);
        assert_eq!(sum(&t), 0);
        let x2 = &t[48..72];
        assert_eq!(&x2[..4], &[2, 24, 0, 0]);
        assert_eq!(
            (u32_at(x2, 4), u32_at(x2, 8), u32_at(x2, 12)),
            (0x0102_0304, 300, SRAT_ENABLED)
        );
    }

    #[test]
    fn slit_bytes_and_the_xsdt() {
        let numa = two_nodes();
        let t = slit(&numa);
        assert_eq!(&t[..4], b"SLIT");
        assert_eq!(sum(&t), 0);
        assert_eq!(t.len(), 36 + 8 + 4);
        assert_eq!(u64_at(&t, 36), 2);
        assert_eq!(&t[44..], &[10, 15, 20, 10]);
        // Both are in the XSDT, after the FADT, MADT and MCFG.
        let base = 0xe0000;
        let blob = build(&CpusConfig::new(4), Some(&numa), MMIO64, GuestAddress(base));
        let xsdt = table(&blob, base, u64_at(&blob, 24));
        assert_eq!(sum(xsdt), 0);
        assert_eq!(xsdt.len(), 36 + 5 * 8);
        let srat_t = table(&blob, base, u64_at(xsdt, 36 + 3 * 8));
        assert_eq!(srat_t, srat(&numa).as_slice());
        let slit_t = table(&blob, base, u64_at(xsdt, 36 + 4 * 8));
        assert_eq!(slit_t, t.as_slice());
    }
}
