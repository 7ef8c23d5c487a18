//! Address-range dispatch of port-I/O and MMIO exits to devices. The PCI
//! work plugs in here: a config-space device on 0xcf8..0xd00, BARs on the
//! MMIO bus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device on a [`Bus`]. `offset` is relative to the range it was
/// inserted at.
pub trait BusDevice: Send {
    /// Fills `data` (1, 2, 4 or 8 bytes) from the register at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the register at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of [`Bus::insert`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} is empty or overflows")]
    BadRange { base: u64, len: u64 },
    #[error("range {base:#x}+{len:#x} overlaps a device at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

type Device = Arc<Mutex<dyn BusDevice>>;

/// Ranges of addresses, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, (u64, Device)>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `[base, base + len)` with `device`.
    pub fn insert(&self, base: u64, len: u64, device: Device) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&other, &(other_len, _))) = ranges.range(..end).next_back() {
            if other + other_len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device serving `addr` and the offset of `addr` in its range.
    fn find(&self, addr: u64) -> Option<(u64, Device)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, (len, device)) = ranges.range(..=addr).next_back()?;
        (addr - base < *len).then(|| (addr - base, device.clone()))
    }

    /// Runs `access` on the device serving `addr` (its lock held) with the
    /// offset of `addr` in its range; false if no device serves `addr`.
    fn dispatch(&self, addr: u64, access: impl FnOnce(&mut dyn BusDevice, u64)) -> bool {
        let Some((offset, device)) = self.find(addr) else {
            return false;
        };
        access(
            &mut *device.lock().unwrap_or_else(|e| e.into_inner()),
            offset,
        );
        true
    }

    /// Dispatches a read; false if no device serves `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.dispatch(addr, |device, offset| device.read(offset, data))
    }

    /// Dispatches a write; false if no device serves `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.dispatch(addr, |device, offset| device.write(offset, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_offset() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert!(!bus.write(0x400, &[0]));
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![b'x'])]);
    }

    #[test]
    fn overlaps_are_refused() {
        let bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x60, 5, dev()).unwrap();
        assert_eq!(
            bus.insert(0x64, 1, dev()),
            Err(BusError::Overlap {
                base: 0x64,
                len: 1,
                other: 0x60
            })
        );
        assert!(bus.insert(0x5f, 2, dev()).is_err());
        bus.insert(0x65, 1, dev()).unwrap();
        bus.insert(0x5f, 1, dev()).unwrap();
        assert!(bus.insert(0x10, 0, dev()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev()).is_err());
    }
}
