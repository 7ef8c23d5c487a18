//! PCI: configuration space, the bus 0 host bridge, BAR allocation and MSI-X.
//!
//! A device plugs in by implementing [`PciDevice`]: it owns a [`PciConfig`]
//! (which the bus reads to learn where the guest put its BARs) and handles
//! configuration and BAR accesses. The bus ([`PciBus`]) decodes CF8/CFC and
//! ECAM accesses, allocates BARs at plug time from a [`BarAllocator`] and
//! routes MMIO and port accesses to the BAR that contains them.

mod alloc;
mod bus;
mod config;
pub(crate) mod msix;

pub use alloc::{AddressWindow, AllocError, BarAllocator};
pub use bus::{
    BarChange, BusError, HostBridge, PciBus, ECAM_BUS_SIZE, NUM_SLOTS, PCI_CONFIG_ADDRESS_PORT,
    PCI_CONFIG_DATA_PORT,
};
pub use config::{
    BarInfo, BarKind, CapabilityIter, ConfigError, PciConfig, PciHeader, BAR0,
    CAPABILITIES_POINTER, CLASS_REVISION, COMMAND, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE,
    COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, CONFIG_SPACE_SIZE, DEVICE_ID, HEADER_TYPE,
    INTERRUPT_LINE, INTERRUPT_PIN, LEGACY_CONFIG_SIZE, NUM_BARS, STATUS, STATUS_CAPABILITIES_LIST,
    SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID, VENDOR_ID,
};
#[doc(hidden)]
pub use msix::NullMsiSink;
pub use msix::{
    MsiMessage, MsiSink, MsixConfig, MsixError, TriggerOutcome, MSIX_CAP_ID, MSIX_CAP_LEN,
    MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK, MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS,
    MSIX_NO_VECTOR,
};

use std::fmt;

/// A device's address on the bus (bus 0 only; function 0 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl PciAddress {
    /// The address of function 0 of `device` on bus 0.
    pub const fn slot(device: u8) -> Self {
        Self {
            bus: 0,
            device,
            function: 0,
        }
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{}",
            self.bus, self.device, self.function
        )
    }
}

/// A PCI function as the bus sees it.
///
/// Offsets are relative to the configuration space (0..4096) or to the start
/// of the BAR. `data.len()` is the access size; the bus passes whatever the
/// guest did (1, 2, 4 or 8 bytes, possibly misaligned), and an implementation
/// must not panic on any of them.
pub trait PciDevice: Send {
    /// The configuration space, read by the bus to learn BAR placement and
    /// command-register decode bits.
    fn config(&self) -> &PciConfig;

    /// Mutable configuration space, used by the bus to program BAR addresses
    /// when the device is plugged.
    fn config_mut(&mut self) -> &mut PciConfig;

    /// A guest read of the configuration space: by default the bytes of
    /// [`config`](Self::config) as they are.
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config().read(usize::from(offset), data);
    }

    /// A guest write to the configuration space: by default into
    /// [`config_mut`](Self::config_mut) through its write masks.
    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config_mut().write(usize::from(offset), data);
    }

    /// A guest read inside BAR `bar` at `offset` from its base.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);

    /// A guest write inside BAR `bar` at `offset` from its base.
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);
}

/// Little-endian value of up to 8 bytes (extra bytes are ignored).
pub(crate) fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .enumerate()
        .fold(0u64, |v, (i, b)| v | (u64::from(*b) << (8 * i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_display() {
        assert_eq!(PciAddress::slot(3).to_string(), "0000:00:03.0");
    }

    #[test]
    fn le_value_clips_at_eight_bytes() {
        assert_eq!(le_value(&[0x78, 0x56, 0x34, 0x12]), 0x1234_5678);
        assert_eq!(le_value(&[1; 10]), 0x0101_0101_0101_0101);
    }
}
