//! A type-0 configuration space: 256 legacy bytes plus the 4 KiB extended
//! space ECAM reaches, with per-bit write masks (read-only fields,
//! write-1-to-clear status bits), the BAR sizing protocol (writing all-ones
//! reads back the size mask) and a capability-list builder.

use thiserror::Error;

/// Bytes of configuration space (extended, reachable through ECAM).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Bytes reachable through CF8/CFC.
pub const LEGACY_CONFIG_SIZE: usize = 256;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Vendor ID register.
pub const VENDOR_ID: usize = 0x00;
/// Device ID register.
pub const DEVICE_ID: usize = 0x02;
/// Command register.
pub const COMMAND: usize = 0x04;
/// Status register.
pub const STATUS: usize = 0x06;
/// Revision ID (byte 0) and class code (bytes 1..4).
pub const CLASS_REVISION: usize = 0x08;
const CACHE_LINE_SIZE: usize = 0x0c;
const LATENCY_TIMER: usize = 0x0d;
/// Header type register.
pub const HEADER_TYPE: usize = 0x0e;
/// First BAR register.
pub const BAR0: usize = 0x10;
/// Subsystem vendor ID register.
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID register.
pub const SUBSYSTEM_ID: usize = 0x2e;
/// Capabilities pointer register.
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Interrupt line register (written by the guest, no effect).
pub const INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin register (0: no INTx).
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command: respond to I/O-space accesses.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command: respond to memory-space accesses.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command: may act as bus master (DMA, MSI).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
const COMMAND_SERR_ENABLE: u16 = 1 << 8;
/// Command: INTx emulation disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const COMMAND_WRITABLE: u16 = COMMAND_IO_SPACE
    | COMMAND_MEMORY_SPACE
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY_ERROR_RESPONSE
    | COMMAND_SERR_ENABLE
    | COMMAND_INTX_DISABLE;

/// Status: the capability list is valid.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Status error bits, write-1-to-clear (master data parity error, signalled
/// and received aborts, SERR, detected parity error).
const STATUS_W1C: u16 = (1 << 8) | (0b11111 << 11);

const FIRST_CAPABILITY: usize = 0x40;
/// At most this many capabilities are walked (each takes at least 4 bytes).
const MAX_CAPABILITIES: usize = (LEGACY_CONFIG_SIZE - FIRST_CAPABILITY) / 4;

/// Errors building a configuration space.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// BAR index past the last BAR (or the last BAR for a 64-bit BAR).
    #[error("BAR {0} does not exist (a 64-bit BAR takes two registers)")]
    BarIndex(u8),
    /// The BAR register (or its upper half) is already used.
    #[error("BAR {0} is already in use")]
    BarInUse(u8),
    /// Sizes are powers of two, at least 16 (memory) or 4 (I/O) bytes, at
    /// most 2 GiB for 32-bit memory and 256 bytes for I/O.
    #[error("BAR {index} size {size:#x} is invalid for its kind")]
    BarSize {
        /// BAR index.
        index: u8,
        /// Requested size.
        size: u64,
    },
    /// The BAR was never declared.
    #[error("BAR {0} is not declared")]
    BarNotDeclared(u8),
    /// The address is not aligned to the BAR size or does not fit its kind.
    #[error("address {addr:#x} does not fit BAR {index}")]
    BarAddress {
        /// BAR index.
        index: u8,
        /// Rejected address.
        addr: u64,
    },
    /// The capability does not fit in the 256-byte legacy space.
    #[error("no room for a {0}-byte capability")]
    CapabilitySpaceFull(usize),
    /// The write mask is not as long as the capability body.
    #[error("capability write mask is {mask} bytes, body is {body}")]
    CapabilityMask {
        /// Mask length.
        mask: usize,
        /// Body length.
        body: usize,
    },
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// Memory below 4 GiB.
    Memory32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// Memory anywhere in the 64-bit space; takes two BAR registers.
    Memory64 {
        /// Prefetchable.
        prefetchable: bool,
    },
}

impl BarKind {
    /// Whether the BAR decodes memory (rather than port I/O).
    pub fn is_memory(self) -> bool {
        !matches!(self, BarKind::Io)
    }

    /// The read-only low bits of the BAR register.
    fn flags(self) -> u32 {
        match self {
            BarKind::Io => 0x1,
            BarKind::Memory32 { prefetchable } => u32::from(prefetchable) << 3,
            BarKind::Memory64 { prefetchable } => 0x4 | (u32::from(prefetchable) << 3),
        }
    }

    fn address_mask(self) -> u64 {
        match self {
            BarKind::Io => 0xffff_fffc,
            BarKind::Memory32 { .. } => 0xffff_fff0,
            BarKind::Memory64 { .. } => !0xf,
        }
    }
}

/// A declared BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index (the lower register for 64-bit BARs).
    pub index: u8,
    /// What it decodes.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// The identity fields of a type-0 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class << 16 | subclass << 8 | programming interface.
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin (0: none, 1..4: INTA..INTD).
    pub interrupt_pin: u8,
}

/// A type-0 configuration space with write masks.
#[derive(Clone)]
pub struct PciConfig {
    bytes: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// Bits the guest may write.
    wmask: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// Bits the guest clears by writing 1.
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<BarInfo>; NUM_BARS],
    /// Offset of the last capability added (its next pointer is patched).
    last_capability: Option<usize>,
    /// Where the next capability goes.
    next_capability: usize,
}

impl std::fmt::Debug for PciConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfig")
            .field("vendor_id", &self.read_u16(VENDOR_ID))
            .field("device_id", &self.read_u16(DEVICE_ID))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl PciConfig {
    /// A header with the given identity, no BARs and no capabilities.
    pub fn new(header: &PciHeader) -> Self {
        let mut c = Self {
            bytes: Box::new([0; CONFIG_SPACE_SIZE]),
            wmask: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        c.set_u16(VENDOR_ID, header.vendor_id);
        c.set_u16(DEVICE_ID, header.device_id);
        c.set_u32(
            CLASS_REVISION,
            (header.class_code << 8) | u32::from(header.revision),
        );
        c.set_u16(SUBSYSTEM_VENDOR_ID, header.subsystem_vendor_id);
        c.set_u16(SUBSYSTEM_ID, header.subsystem_id);
        c.bytes[INTERRUPT_PIN] = header.interrupt_pin;
        c.set_wmask(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        c.w1c[STATUS..STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        c.wmask[CACHE_LINE_SIZE] = 0xff;
        c.wmask[LATENCY_TIMER] = 0xff;
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    /// Declares BAR `index`. Its address reads as 0 (unassigned) until
    /// [`set_bar_address`](Self::set_bar_address) or a guest write.
    pub fn add_bar(&mut self, index: u8, kind: BarKind, size: u64) -> Result<(), ConfigError> {
        let i = usize::from(index);
        let regs = if matches!(kind, BarKind::Memory64 { .. }) {
            2
        } else {
            1
        };
        if i + regs > NUM_BARS {
            return Err(ConfigError::BarIndex(index));
        }
        if (i..i + regs).any(|r| self.bar_register_used(r)) {
            return Err(ConfigError::BarInUse(index));
        }
        let (min, max) = match kind {
            BarKind::Io => (4, 256),
            BarKind::Memory32 { .. } => (16, 1 << 31),
            BarKind::Memory64 { .. } => (16, 1 << 63),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(ConfigError::BarSize { index, size });
        }
        let mask = !(size - 1) & kind.address_mask();
        let off = BAR0 + 4 * i;
        self.set_u32(off, kind.flags());
        self.set_wmask(off, &(mask as u32).to_le_bytes());
        if regs == 2 {
            self.set_u32(off + 4, 0);
            self.set_wmask(off + 4, &((mask >> 32) as u32).to_le_bytes());
        }
        self.bars[i] = Some(BarInfo { index, kind, size });
        Ok(())
    }

    fn bar_register_used(&self, reg: usize) -> bool {
        self.bars[reg].is_some()
            || (reg > 0
                && matches!(
                    self.bars[reg - 1],
                    Some(BarInfo {
                        kind: BarKind::Memory64 { .. },
                        ..
                    })
                ))
    }

    /// The BAR declared at `index`, if any.
    pub fn bar(&self, index: u8) -> Option<BarInfo> {
        self.bars.get(usize::from(index)).copied().flatten()
    }

    /// All declared BARs, in index order.
    pub fn bars(&self) -> impl Iterator<Item = BarInfo> + '_ {
        self.bars.iter().flatten().copied()
    }

    /// Programs BAR `index` (host side, e.g. at plug time).
    pub fn set_bar_address(&mut self, index: u8, addr: u64) -> Result<(), ConfigError> {
        let bar = self.bar(index).ok_or(ConfigError::BarNotDeclared(index))?;
        let limit = match bar.kind {
            BarKind::Io => 1 << 16,
            BarKind::Memory32 { .. } => 1 << 32,
            BarKind::Memory64 { .. } => u64::MAX,
        };
        if addr % bar.size != 0 || addr.checked_add(bar.size - 1).is_none_or(|e| e >= limit) {
            return Err(ConfigError::BarAddress { index, addr });
        }
        let off = BAR0 + 4 * usize::from(index);
        self.set_u32(off, addr as u32 | bar.kind.flags());
        if matches!(bar.kind, BarKind::Memory64 { .. }) {
            self.set_u32(off + 4, (addr >> 32) as u32);
        }
        Ok(())
    }

    /// The address currently in BAR `index` (as the guest left it, possibly a
    /// sizing mask), or `None` if the BAR is not declared.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let bar = self.bar(index)?;
        let off = BAR0 + 4 * usize::from(index);
        let mut v = u64::from(self.read_u32(off));
        if matches!(bar.kind, BarKind::Memory64 { .. }) {
            v |= u64::from(self.read_u32(off + 4)) << 32;
        }
        Some(v & bar.kind.address_mask())
    }

    /// BARs that currently decode: declared, enabled in the command register
    /// (memory or I/O space), assigned a non-zero address, and not wrapping
    /// past the end of their address space. Returns `(bar, base)` pairs.
    pub fn active_bars(&self) -> Vec<(BarInfo, u64)> {
        let cmd = self.command();
        self.bars()
            .filter(|b| {
                let bit = if b.kind.is_memory() {
                    COMMAND_MEMORY_SPACE
                } else {
                    COMMAND_IO_SPACE
                };
                cmd & bit != 0
            })
            .filter_map(|b| {
                let base = self.bar_address(b.index)?;
                let limit = if b.kind.is_memory() { u64::MAX } else { 0xffff };
                (base != 0 && base.checked_add(b.size - 1).is_some_and(|e| e <= limit))
                    .then_some((b, base))
            })
            .collect()
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Appends a capability to the list in the legacy space. `body` is what
    /// follows the ID and next-pointer bytes; `wmask` (same length) marks the
    /// bits the guest may write. Returns the capability's offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> Result<u8, ConfigError> {
        if wmask.len() != body.len() {
            return Err(ConfigError::CapabilityMask {
                mask: wmask.len(),
                body: body.len(),
            });
        }
        let len = 2 + body.len();
        let off = self.next_capability;
        if off + len > LEGACY_CONFIG_SIZE {
            return Err(ConfigError::CapabilitySpaceFull(len));
        }
        self.bytes[off] = id;
        self.bytes[off + 1] = 0;
        self.bytes[off + 2..off + len].copy_from_slice(body);
        self.wmask[off + 2..off + len].copy_from_slice(wmask);
        match self.last_capability {
            Some(prev) => self.bytes[prev + 1] = off as u8,
            None => {
                self.bytes[CAPABILITIES_POINTER] = off as u8;
                let status = self.read_u16(STATUS) | STATUS_CAPABILITIES_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_capability = Some(off);
        self.next_capability = (off + len + 3) & !3;
        Ok(off as u8)
    }

    /// Walks the capability list: `(id, offset)` pairs.
    pub fn capabilities(&self) -> CapabilityIter<'_> {
        let first = if self.read_u16(STATUS) & STATUS_CAPABILITIES_LIST != 0 {
            self.bytes[CAPABILITIES_POINTER]
        } else {
            0
        };
        CapabilityIter {
            config: self,
            next: first,
            walked: 0,
        }
    }

    /// A guest read: bytes past the end of the space read as all-ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// A guest write through the write masks; bytes past the end are
    /// dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|o| *o < CONFIG_SPACE_SIZE) else {
                break;
            };
            let (wm, w1c) = (self.wmask[o], self.w1c[o]);
            self.bytes[o] = ((self.bytes[o] & !wm) | (v & wm)) & !(v & w1c);
        }
    }

    /// Reads a byte (host side).
    pub fn read_u8(&self, offset: usize) -> u8 {
        let mut b = [0u8; 1];
        self.read(offset, &mut b);
        b[0]
    }

    /// Reads a 16-bit register (host side).
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a 32-bit register (host side).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sets bytes ignoring the write masks (host side, e.g. a device updating
    /// a read-only capability field); bytes past the end are dropped.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            if let Some(b) = offset.checked_add(i).and_then(|o| self.bytes.get_mut(o)) {
                *b = *v;
            }
        }
    }

    fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    fn set_wmask(&mut self, offset: usize, mask: &[u8]) {
        self.wmask[offset..offset + mask.len()].copy_from_slice(mask);
    }
}

/// Iterator over `(capability id, offset)`, bounded so a malformed list
/// cannot loop.
pub struct CapabilityIter<'a> {
    config: &'a PciConfig,
    next: u8,
    walked: usize,
}

impl Iterator for CapabilityIter<'_> {
    type Item = (u8, u8);

    fn next(&mut self) -> Option<(u8, u8)> {
        let off = usize::from(self.next & !3);
        if off < FIRST_CAPABILITY || self.walked >= MAX_CAPABILITIES {
            return None;
        }
        self.walked += 1;
        self.next = self.config.read_u8(off + 1);
        Some((self.config.read_u8(off), off as u8))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A virtio-blk-like identity, shared with the bus tests.
    pub(crate) fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class_code: 0x01_80_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 0,
        }
    }

    fn write_u32(c: &mut PciConfig, off: usize, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identity_fields_are_read_only() {
        let mut c = PciConfig::new(&header());
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(CLASS_REVISION), 0x0180_0001);
        for off in [VENDOR_ID, CLASS_REVISION, SUBSYSTEM_VENDOR_ID, 0x28, 0x30] {
            let before = c.read_u32(off);
            write_u32(&mut c, off, 0xdead_beef);
            assert_eq!(c.read_u32(off), before, "offset {off:#x}");
        }
        c.write(HEADER_TYPE, &[0xff, 0xff]);
        assert_eq!(c.read_u16(HEADER_TYPE), 0, "header type and BIST");
        assert_eq!(c.read_u8(HEADER_TYPE), 0);
        assert_eq!(c.read_u32(0x30), 0, "no expansion ROM");
    }

    #[test]
    fn command_status_and_writable_bytes() {
        let mut c = PciConfig::new(&header());
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), COMMAND_WRITABLE);
        c.write(COMMAND, &0u16.to_le_bytes());
        assert_eq!(c.command(), 0);
        // Status: read-only bits stay, error bits clear on 1.
        c.set_u16(STATUS, 0x8110);
        c.write(STATUS, &0x0100u16.to_le_bytes());
        assert_eq!(c.read_u16(STATUS), 0x8010);
        c.write(STATUS, &0xffffu16.to_le_bytes());
        assert_eq!(c.read_u16(STATUS), 0x0010);
        c.write(INTERRUPT_LINE, &[0x0b]);
        c.write(INTERRUPT_PIN, &[0x04]);
        assert_eq!(c.read_u16(INTERRUPT_LINE), 0x000b);
        c.write(CACHE_LINE_SIZE, &[0x10, 0x20]);
        assert_eq!(c.read_u16(CACHE_LINE_SIZE), 0x2010);
    }

    #[test]
    fn out_of_range_accesses_do_not_panic() {
        let mut c = PciConfig::new(&header());
        let mut b = [0u8; 4];
        c.read(CONFIG_SPACE_SIZE - 2, &mut b);
        assert_eq!(&b[2..], &[0xff, 0xff]);
        c.read(usize::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
        c.write(usize::MAX - 1, &[1, 2, 3, 4]);
        c.write(CONFIG_SPACE_SIZE - 1, &[1, 2, 3, 4]);
        c.write(0, &[]);
        c.set_bytes(usize::MAX, &[1, 2]);
    }

    #[test]
    fn bar_sizing_32bit_memory_and_io() {
        let mut c = PciConfig::new(&header());
        c.add_bar(0, BarKind::Memory32 { prefetchable: true }, 0x1000)
            .unwrap();
        c.add_bar(1, BarKind::Io, 0x20).unwrap();
        write_u32(&mut c, BAR0, 0xffff_ffff);
        assert_eq!(c.read_u32(BAR0), 0xffff_f008);
        write_u32(&mut c, BAR0 + 4, 0xffff_ffff);
        assert_eq!(c.read_u32(BAR0 + 4), 0xffff_ffe1);
        write_u32(&mut c, BAR0, 0xc000_1234);
        assert_eq!(c.read_u32(BAR0), 0xc000_1008);
        assert_eq!(c.bar_address(0), Some(0xc000_1000));
        // Undeclared BARs read 0 whatever is written.
        write_u32(&mut c, BAR0 + 8, 0xffff_ffff);
        assert_eq!(c.read_u32(BAR0 + 8), 0);
        assert_eq!(c.bar_address(2), None);
    }

    #[test]
    fn bar_sizing_64bit() {
        let mut c = PciConfig::new(&header());
        c.add_bar(
            2,
            BarKind::Memory64 {
                prefetchable: false,
            },
            0x8_0000,
        )
        .unwrap();
        write_u32(&mut c, BAR0 + 8, 0xffff_ffff);
        write_u32(&mut c, BAR0 + 12, 0xffff_ffff);
        assert_eq!(c.read_u32(BAR0 + 8), 0xfff8_0004);
        assert_eq!(c.read_u32(BAR0 + 12), 0xffff_ffff);
        // A BAR bigger than 4 GiB has read-only low bits in the upper half.
        let mut c = PciConfig::new(&header());
        c.add_bar(0, BarKind::Memory64 { prefetchable: true }, 1 << 34)
            .unwrap();
        write_u32(&mut c, BAR0, 0xffff_ffff);
        write_u32(&mut c, BAR0 + 4, 0xffff_ffff);
        assert_eq!(c.read_u32(BAR0), 0x0000_000c);
        assert_eq!(c.read_u32(BAR0 + 4), 0xffff_fffc);
        c.set_bar_address(0, 0x40_0000_0000).unwrap();
        assert_eq!(c.bar_address(0), Some(0x40_0000_0000));
        assert_eq!(c.read_u32(BAR0 + 4), 0x40);
        // Byte-wise writes go through the same masks.
        c.write(BAR0 + 4, &[0x80]);
        assert_eq!(c.bar_address(0), Some(0x80_0000_0000));
    }

    #[test]
    fn bar_declaration_errors() {
        let mut c = PciConfig::new(&header());
        let m64 = BarKind::Memory64 {
            prefetchable: false,
        };
        let m32 = BarKind::Memory32 {
            prefetchable: false,
        };
        assert_eq!(c.add_bar(5, m64, 0x1000), Err(ConfigError::BarIndex(5)));
        assert_eq!(c.add_bar(6, m32, 0x1000), Err(ConfigError::BarIndex(6)));
        c.add_bar(0, m64, 0x1000).unwrap();
        assert_eq!(c.add_bar(1, m32, 0x1000), Err(ConfigError::BarInUse(1)));
        assert_eq!(c.add_bar(0, m32, 0x1000), Err(ConfigError::BarInUse(0)));
        assert!(matches!(
            c.add_bar(2, m32, 0x1001),
            Err(ConfigError::BarSize { .. })
        ));
        assert!(matches!(
            c.add_bar(2, m32, 8),
            Err(ConfigError::BarSize { .. })
        ));
        assert!(matches!(
            c.add_bar(2, m32, 1 << 32),
            Err(ConfigError::BarSize { .. })
        ));
        assert!(matches!(
            c.add_bar(2, BarKind::Io, 512),
            Err(ConfigError::BarSize { .. })
        ));
        c.add_bar(4, m64, 0x1000).unwrap();
        assert_eq!(c.add_bar(5, BarKind::Io, 4), Err(ConfigError::BarInUse(5)));
        assert_eq!(c.set_bar_address(2, 0), Err(ConfigError::BarNotDeclared(2)));
        assert!(matches!(
            c.set_bar_address(0, 0x1800),
            Err(ConfigError::BarAddress { .. })
        ));
        assert!(matches!(
            c.set_bar_address(0, !0xfff),
            Err(ConfigError::BarAddress { .. })
        ));
        c.add_bar(2, m32, 0x1000).unwrap();
        assert!(matches!(
            c.set_bar_address(2, 1 << 32),
            Err(ConfigError::BarAddress { .. })
        ));
        assert_eq!(c.bars().map(|b| b.index).collect::<Vec<_>>(), vec![0, 2, 4]);
    }

    #[test]
    fn active_bars_follow_command_decode() {
        let mut c = PciConfig::new(&header());
        c.add_bar(
            0,
            BarKind::Memory64 {
                prefetchable: false,
            },
            0x4000,
        )
        .unwrap();
        c.add_bar(2, BarKind::Io, 0x10).unwrap();
        c.add_bar(
            3,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        c.set_bar_address(0, 0x1_0000_0000).unwrap();
        c.set_bar_address(2, 0x1000).unwrap();
        assert!(c.active_bars().is_empty());
        c.write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
        let active = c.active_bars();
        assert_eq!(active.len(), 1, "BAR 3 is unassigned");
        assert_eq!(active[0].1, 0x1_0000_0000);
        c.write(
            COMMAND,
            &(COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE).to_le_bytes(),
        );
        assert_eq!(c.active_bars().len(), 2);
        // An I/O sizing pattern lies past 64 KiB: not decoded.
        write_u32(&mut c, BAR0 + 8, 0xffff_ffff);
        assert_eq!(c.active_bars().len(), 1);
        // A 64-bit sizing pattern decodes at the very top, as on hardware
        // (Linux turns decoding off while it sizes).
        write_u32(&mut c, BAR0, 0xffff_ffff);
        write_u32(&mut c, BAR0 + 4, 0xffff_ffff);
        assert_eq!(c.active_bars()[0].1, 0xffff_ffff_ffff_c000);
    }

    #[test]
    fn capability_list_walk_and_masks() {
        let mut c = PciConfig::new(&header());
        assert_eq!(c.capabilities().count(), 0);
        assert_eq!(c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        let a = c.add_capability(0x09, &[1, 2, 3], &[0, 0xff, 0]).unwrap();
        let b = c.add_capability(0x11, &[0; 10], &[0; 10]).unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.read_u8(CAPABILITIES_POINTER), 0x40);
        assert_eq!(
            c.capabilities().collect::<Vec<_>>(),
            vec![(0x09, 0x40), (0x11, 0x48)]
        );
        // Only the masked byte is writable; id and next are not.
        c.write(0x40, &[0xaa; 5]);
        assert_eq!(c.read_u32(0x40), 0xaa01_4809);
        assert!(matches!(
            c.add_capability(0x09, &[0; 2], &[0; 3]),
            Err(ConfigError::CapabilityMask { .. })
        ));
        assert_eq!(
            c.add_capability(0x09, &[0; 200], &[0; 200]),
            Err(ConfigError::CapabilitySpaceFull(202))
        );
    }

    #[test]
    fn capability_walk_is_bounded() {
        let mut c = PciConfig::new(&header());
        c.add_capability(0x09, &[0; 2], &[0; 2]).unwrap();
        // Host-side corruption into a self-loop still terminates.
        c.set_bytes(0x41, &[0x40]);
        assert_eq!(c.capabilities().count(), MAX_CAPABILITIES);
    }
}
