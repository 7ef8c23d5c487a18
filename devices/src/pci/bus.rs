//! PCI bus 0: the host bridge in slot 0, up to 31 more devices, CF8/CFC and
//! ECAM (MMCONFIG) configuration access, BAR allocation at plug time, and
//! routing of MMIO and port accesses to the BAR that decodes them.
//!
//! Config writes can move or (un)map BARs; the bus keeps its routing table
//! current and records each change as a [`BarChange`], which the VMM takes
//! with [`PciBus::take_bar_changes`] to move ioeventfds.

use std::sync::{Arc, Mutex, MutexGuard};

use log::debug;
use lograte::RateLimited;
use thiserror::Error;

use super::alloc::{AllocError, BarAllocator};
use super::config::{BarInfo, BarKind, ConfigError, PciConfig, PciHeader};
use super::{PciAddress, PciDevice};

/// CONFIG_ADDRESS, a 32-bit latch.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// CONFIG_DATA, 0xcfc..=0xcff.
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// Bits of CONFIG_ADDRESS that hold state (enable, bus, device, function,
/// dword register).
const CONFIG_ADDRESS_MASK: u32 = CONFIG_ADDRESS_ENABLE | 0x00ff_fffc;
/// Devices per bus.
pub const NUM_SLOTS: u8 = 32;
/// Bytes of ECAM per bus.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// Errors plugging devices.
#[derive(Debug, Error)]
pub enum BusError {
    /// All 31 device slots are taken.
    #[error("no free PCI slot")]
    NoFreeSlot,
    /// The requested slot is the host bridge's, taken, or past 31.
    #[error("PCI slot {0} is not available")]
    SlotUnavailable(u8),
    /// No room for one of the device's BARs.
    #[error("cannot allocate BAR {bar} of {size:#x} bytes")]
    AllocateBar {
        /// BAR index.
        bar: u8,
        /// BAR size.
        size: u64,
        /// Why.
        #[source]
        source: AllocError,
    },
    /// The allocated address did not fit the BAR.
    #[error("cannot program BAR {bar}")]
    ProgramBar {
        /// BAR index.
        bar: u8,
        /// Why.
        #[source]
        source: ConfigError,
    },
}

/// A BAR that started or stopped decoding, or moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarChange {
    /// The device.
    pub address: PciAddress,
    /// BAR index.
    pub bar: u8,
    /// What it decodes.
    pub kind: BarKind,
    /// Its size.
    pub size: u64,
    /// Where it decoded before (`None`: it did not).
    pub old: Option<u64>,
    /// Where it decodes now (`None`: it does not).
    pub new: Option<u64>,
}

/// The host bridge: device 0, class 0x0600, no BARs.
#[derive(Debug)]
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    /// Vendor Red Hat, device "QEMU PCIe host bridge", as Linux knows it.
    pub const HEADER: PciHeader = PciHeader {
        vendor_id: 0x1b36,
        device_id: 0x0008,
        revision: 0,
        class_code: 0x06_00_00,
        subsystem_vendor_id: 0x1b36,
        subsystem_id: 0x0008,
        interrupt_pin: 0,
    };

    /// A new host bridge.
    pub fn new() -> Self {
        Self {
            config: PciConfig::new(&Self::HEADER),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

/// A BAR currently decoding.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    slot: u8,
    bar: BarInfo,
    base: u64,
}

impl Mapping {
    fn contains(&self, memory: bool, addr: u64) -> bool {
        self.bar.kind.is_memory() == memory && addr >= self.base && addr - self.base < self.bar.size
    }
}

type SharedDevice = Arc<Mutex<dyn PciDevice>>;

/// Bus 0 and its host bridge.
pub struct PciBus {
    slots: Vec<Option<SharedDevice>>,
    mappings: Vec<Mapping>,
    changes: Vec<BarChange>,
    config_address: u32,
    allocator: BarAllocator,
    odd_accesses: RateLimited,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("mappings", &self.mappings)
            .field("config_address", &self.config_address)
            .finish_non_exhaustive()
    }
}

fn lock(dev: &SharedDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    // A device that panicked mid-access keeps its last state; the guest
    // still gets answers.
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

impl PciBus {
    /// A bus with the host bridge in slot 0 and BARs allocated from
    /// `allocator`.
    pub fn new(allocator: BarAllocator) -> Self {
        let mut slots: Vec<Option<SharedDevice>> = vec![None; usize::from(NUM_SLOTS)];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        Self {
            slots,
            mappings: Vec::new(),
            changes: Vec::new(),
            config_address: 0,
            allocator,
            odd_accesses: RateLimited::default(),
        }
    }

    /// Plugs `device` into the lowest free slot, allocating and programming
    /// its BARs (decoding stays off until the guest sets the command bits).
    pub fn add_device(&mut self, device: SharedDevice) -> Result<PciAddress, BusError> {
        let slot = (1..NUM_SLOTS)
            .find(|s| self.slots[usize::from(*s)].is_none())
            .ok_or(BusError::NoFreeSlot)?;
        self.add_device_at(slot, device)
    }

    /// Plugs `device` into `slot` (1..32).
    pub fn add_device_at(
        &mut self,
        slot: u8,
        device: SharedDevice,
    ) -> Result<PciAddress, BusError> {
        if slot == 0 || slot >= NUM_SLOTS || self.slots[usize::from(slot)].is_some() {
            return Err(BusError::SlotUnavailable(slot));
        }
        {
            let mut dev = lock(&device);
            let bars: Vec<BarInfo> = dev.config().bars().collect();
            let mut done: Vec<(BarKind, u64)> = Vec::new();
            for bar in bars {
                let result = self
                    .allocator
                    .allocate(bar.kind, bar.size)
                    .map_err(|source| BusError::AllocateBar {
                        bar: bar.index,
                        size: bar.size,
                        source,
                    })
                    .and_then(|addr| {
                        done.push((bar.kind, addr));
                        dev.config_mut()
                            .set_bar_address(bar.index, addr)
                            .map_err(|source| BusError::ProgramBar {
                                bar: bar.index,
                                source,
                            })
                    });
                if let Err(e) = result {
                    for (kind, addr) in done {
                        self.allocator.free(kind, addr);
                    }
                    return Err(e);
                }
            }
        }
        self.slots[usize::from(slot)] = Some(device);
        self.refresh(slot);
        Ok(PciAddress::slot(slot))
    }

    /// The device at `address`, if any.
    pub fn device(&self, address: PciAddress) -> Option<SharedDevice> {
        self.lookup(address).cloned()
    }

    fn lookup(&self, a: PciAddress) -> Option<&SharedDevice> {
        if a.bus != 0 || a.function != 0 {
            return None;
        }
        self.slots.get(usize::from(a.device))?.as_ref()
    }

    /// BAR moves since the last call (coalesced per BAR).
    pub fn take_bar_changes(&mut self) -> Vec<BarChange> {
        std::mem::take(&mut self.changes)
    }

    /// A configuration read; absent devices and functions read all-ones.
    pub fn config_read(&self, address: PciAddress, offset: u16, data: &mut [u8]) {
        match self.lookup(address) {
            Some(dev) => lock(dev).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A configuration write; to absent devices it is dropped.
    pub fn config_write(&mut self, address: PciAddress, offset: u16, data: &[u8]) {
        let Some(dev) = self.lookup(address) else {
            return;
        };
        lock(dev).write_config(offset, data);
        self.refresh(address.device);
    }

    /// A port read: CONFIG_ADDRESS (dword only), CONFIG_DATA, or an I/O
    /// BAR. Returns false when no one decodes the port (including byte and
    /// word accesses to 0xcf8..0xcfb, such as the reset control register at
    /// 0xcf9, which the VMM handles).
    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        if (PCI_CONFIG_ADDRESS_PORT..PCI_CONFIG_DATA_PORT).contains(&port) {
            if port == PCI_CONFIG_ADDRESS_PORT && data.len() == 4 {
                data.copy_from_slice(&self.config_address.to_le_bytes());
                return true;
            }
            return false;
        }
        if (PCI_CONFIG_DATA_PORT..PCI_CONFIG_DATA_PORT + 4).contains(&port) {
            match self.cf8_target(port, data.len()) {
                Some((a, off)) => self.config_read(a, off, data),
                None => data.fill(0xff),
            }
            return true;
        }
        self.bar_read(false, u64::from(port), data)
    }

    /// A port write; see [`pio_read`](Self::pio_read).
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        if (PCI_CONFIG_ADDRESS_PORT..PCI_CONFIG_DATA_PORT).contains(&port) {
            if port == PCI_CONFIG_ADDRESS_PORT && data.len() == 4 {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.config_address = v & CONFIG_ADDRESS_MASK;
                return true;
            }
            return false;
        }
        if (PCI_CONFIG_DATA_PORT..PCI_CONFIG_DATA_PORT + 4).contains(&port) {
            if let Some((a, off)) = self.cf8_target(port, data.len()) {
                self.config_write(a, off, data);
            }
            return true;
        }
        self.bar_write(false, u64::from(port), data)
    }

    /// Decodes CONFIG_ADDRESS for a data-port access; `None` when the enable
    /// bit is clear or the access does not stay within the dword.
    fn cf8_target(&self, port: u16, len: usize) -> Option<(PciAddress, u16)> {
        let a = self.config_address;
        let byte = port - PCI_CONFIG_DATA_PORT;
        if a & CONFIG_ADDRESS_ENABLE == 0 || !self.access_ok(byte, len) {
            return None;
        }
        let address = PciAddress {
            bus: (a >> 16) as u8,
            device: ((a >> 11) & 0x1f) as u8,
            function: ((a >> 8) & 0x7) as u8,
        };
        Some((address, (a & 0xfc) as u16 + byte))
    }

    /// Config accesses are 1, 2 or 4 bytes within one dword.
    fn access_ok(&self, byte_in_dword: u16, len: usize) -> bool {
        let ok = matches!(len, 1 | 2 | 4) && usize::from(byte_in_dword % 4) + len <= 4;
        if !ok {
            if let Some(n) = self.odd_accesses.hit() {
                debug!(
                    "PCI config access of {len} bytes at byte {byte_in_dword} ignored ({n} times)"
                );
            }
        }
        ok
    }

    /// Decodes an ECAM offset (from the window base) into a function and a
    /// register; `None` for accesses crossing a dword or odd sizes.
    fn ecam_target(&self, offset: u64, len: usize) -> Option<(PciAddress, u16)> {
        let reg = (offset & 0xfff) as u16;
        if offset >> 28 != 0 || !self.access_ok(reg, len) {
            return None;
        }
        let address = PciAddress {
            bus: (offset >> 20) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
        };
        Some((address, reg))
    }

    /// A read at `offset` into the ECAM window (bus number in bits 27:20).
    pub fn ecam_read(&self, offset: u64, data: &mut [u8]) {
        match self.ecam_target(offset, data.len()) {
            Some((a, reg)) => self.config_read(a, reg, data),
            None => data.fill(0xff),
        }
    }

    /// A write at `offset` into the ECAM window.
    pub fn ecam_write(&mut self, offset: u64, data: &[u8]) {
        if let Some((a, reg)) = self.ecam_target(offset, data.len()) {
            self.config_write(a, reg, data);
        }
    }

    /// An MMIO read; false when no BAR decodes `addr`.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.bar_read(true, addr, data)
    }

    /// An MMIO write; false when no BAR decodes `addr`.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.bar_write(true, addr, data)
    }

    fn find(&self, memory: bool, addr: u64) -> Option<(&SharedDevice, Mapping)> {
        let m = self.mappings.iter().find(|m| m.contains(memory, addr))?;
        Some((self.slots[usize::from(m.slot)].as_ref()?, *m))
    }

    fn bar_read(&self, memory: bool, addr: u64, data: &mut [u8]) -> bool {
        let Some((dev, m)) = self.find(memory, addr) else {
            return false;
        };
        lock(dev).read_bar(m.bar.index, addr - m.base, data);
        true
    }

    fn bar_write(&self, memory: bool, addr: u64, data: &[u8]) -> bool {
        let Some((dev, m)) = self.find(memory, addr) else {
            return false;
        };
        lock(dev).write_bar(m.bar.index, addr - m.base, data);
        true
    }

    /// Re-reads `slot`'s decoding BARs and records what changed.
    fn refresh(&mut self, slot: u8) {
        let Some(dev) = self.slots[usize::from(slot)].clone() else {
            return;
        };
        let (now, declared): (Vec<(BarInfo, u64)>, Vec<BarInfo>) = {
            let d = lock(&dev);
            (d.config().active_bars(), d.config().bars().collect())
        };
        for bar in declared {
            let old = self
                .mappings
                .iter()
                .find(|m| m.slot == slot && m.bar.index == bar.index)
                .map(|m| m.base);
            let new = now
                .iter()
                .find(|(b, _)| b.index == bar.index)
                .map(|(_, a)| *a);
            if old != new {
                self.record(PciAddress::slot(slot), bar, old, new);
            }
        }
        self.mappings.retain(|m| m.slot != slot);
        self.mappings.extend(
            now.into_iter()
                .map(|(bar, base)| Mapping { slot, bar, base }),
        );
    }

    fn record(&mut self, address: PciAddress, bar: BarInfo, old: Option<u64>, new: Option<u64>) {
        let pending = self
            .changes
            .iter_mut()
            .find(|c| c.address == address && c.bar == bar.index);
        match pending {
            Some(c) => c.new = new,
            None => self.changes.push(BarChange {
                address,
                bar: bar.index,
                kind: bar.kind,
                size: bar.size,
                old,
                new,
            }),
        }
        self.changes.retain(|c| c.old != c.new);
    }
}

#[cfg(test)]
mod tests;
