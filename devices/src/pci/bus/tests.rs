use super::*;
use crate::pci::alloc::AddressWindow;
use crate::pci::config::tests::header;
use crate::pci::config::{BAR0, COMMAND, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE};

/// A device with a 64-bit memory BAR 0 and an I/O BAR 2 that records
/// accesses.
struct TestDevice {
    config: PciConfig,
    accesses: Vec<(u8, u64, Vec<u8>, bool)>,
}

impl TestDevice {
    fn new(bar0: u64) -> Self {
        let mut config = PciConfig::new(&header());
        config
            .add_bar(
                0,
                BarKind::Memory64 {
                    prefetchable: false,
                },
                bar0,
            )
            .unwrap();
        config.add_bar(2, BarKind::Io, 0x20).unwrap();
        Self {
            config,
            accesses: Vec::new(),
        }
    }
}

impl PciDevice for TestDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(0xa5);
        self.accesses.push((bar, offset, data.to_vec(), false));
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.accesses.push((bar, offset, data.to_vec(), true));
    }
}

fn allocator() -> BarAllocator {
    BarAllocator::new(
        AddressWindow::new(0xc000_0000, 0x1000_0000).unwrap(),
        Some(AddressWindow::new(0x1_0000_0000, 0x1_0000_0000).unwrap()),
        Some(AddressWindow::new(0xc000, 0x1000).unwrap()),
    )
    .unwrap()
}

fn bus_with_device() -> (PciBus, Arc<Mutex<TestDevice>>) {
    let mut bus = PciBus::new(allocator());
    let dev = Arc::new(Mutex::new(TestDevice::new(0x4000)));
    assert_eq!(bus.add_device(dev.clone()).unwrap(), PciAddress::slot(1));
    (bus, dev)
}

fn cf8(bus: u32, dev: u32, func: u32, reg: u32) -> u32 {
    0x8000_0000 | (bus << 16) | (dev << 11) | (func << 8) | reg
}

fn pio_read32(bus: &PciBus, port: u16) -> u32 {
    let mut b = [0u8; 4];
    assert!(bus.pio_read(port, &mut b));
    u32::from_le_bytes(b)
}

fn cfg_read32(bus: &mut PciBus, dev: u32, reg: u32) -> u32 {
    assert!(bus.pio_write(PCI_CONFIG_ADDRESS_PORT, &cf8(0, dev, 0, reg).to_le_bytes()));
    pio_read32(bus, PCI_CONFIG_DATA_PORT)
}

fn cfg_write32(bus: &mut PciBus, dev: u32, reg: u32, v: u32) {
    bus.pio_write(PCI_CONFIG_ADDRESS_PORT, &cf8(0, dev, 0, reg).to_le_bytes());
    bus.pio_write(PCI_CONFIG_DATA_PORT, &v.to_le_bytes());
}

#[test]
fn host_bridge_is_device_zero() {
    let mut bus = PciBus::new(allocator());
    assert_eq!(cfg_read32(&mut bus, 0, 0), 0x0008_1b36);
    assert_eq!(cfg_read32(&mut bus, 0, 8) >> 8, 0x06_00_00);
    assert_eq!(
        cfg_read32(&mut bus, 0, 0xc) >> 16 & 0x7f,
        0,
        "type-0 header"
    );
    assert_eq!(cfg_read32(&mut bus, 5, 0), 0xffff_ffff, "empty slot");
    let mut b = [0u8; 4];
    bus.pio_write(PCI_CONFIG_ADDRESS_PORT, &cf8(1, 0, 0, 0).to_le_bytes());
    bus.pio_read(PCI_CONFIG_DATA_PORT, &mut b);
    assert_eq!(b, [0xff; 4], "other bus");
    bus.pio_write(PCI_CONFIG_ADDRESS_PORT, &cf8(0, 0, 3, 0).to_le_bytes());
    bus.pio_read(PCI_CONFIG_DATA_PORT, &mut b);
    assert_eq!(b, [0xff; 4], "other function");
    // The host bridge has no BARs: an empty routing table.
    assert!(!bus.mmio_read(0xc000_0000, &mut b));
    let mut hb = HostBridge::default();
    hb.read_bar(0, 0, &mut b);
    hb.write_bar(0, 0, &b);
    assert_eq!(b, [0xff; 4]);
}

#[test]
fn cf8_latch_and_enable_bit() {
    let mut bus = PciBus::new(allocator());
    bus.pio_write(PCI_CONFIG_ADDRESS_PORT, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(pio_read32(&bus, PCI_CONFIG_ADDRESS_PORT), 0x80ff_fffc);
    // Enable bit clear: reads all-ones, writes dropped.
    bus.pio_write(PCI_CONFIG_ADDRESS_PORT, &0x0000_0004u32.to_le_bytes());
    assert_eq!(pio_read32(&bus, PCI_CONFIG_DATA_PORT), 0xffff_ffff);
    assert!(bus.pio_write(PCI_CONFIG_DATA_PORT, &0x7u32.to_le_bytes()));
    assert_eq!(cfg_read32(&mut bus, 0, 4) & 0xffff, 0);
    // Byte and word accesses to 0xcf8..0xcfb are not ours (0xcf9 is reset).
    let mut b = [0u8; 1];
    assert!(!bus.pio_read(0xcf9, &mut b));
    assert!(!bus.pio_write(0xcf9, &[6]));
    assert!(!bus.pio_write(PCI_CONFIG_ADDRESS_PORT, &[0, 0]));
    assert!(!bus.pio_read(0xcfa, &mut [0u8; 4]));
    assert_eq!(pio_read32(&bus, PCI_CONFIG_ADDRESS_PORT), 0x8000_0004);
}

#[test]
fn cfc_byte_word_and_odd_accesses() {
    let mut bus = PciBus::new(allocator());
    bus.pio_write(PCI_CONFIG_ADDRESS_PORT, &cf8(0, 0, 0, 0).to_le_bytes());
    let mut b1 = [0u8; 1];
    let mut b2 = [0u8; 2];
    bus.pio_read(0xcfd, &mut b1);
    assert_eq!(b1, [0x1b]);
    bus.pio_read(0xcfe, &mut b2);
    assert_eq!(u16::from_le_bytes(b2), 0x0008);
    bus.pio_read(0xcfd, &mut b2);
    assert_eq!(
        u16::from_le_bytes(b2),
        0x081b,
        "misaligned word within the dword"
    );
    // Crossing the dword or odd sizes: all-ones, writes dropped.
    let mut b4 = [0u8; 4];
    bus.pio_read(0xcfe, &mut b4);
    assert_eq!(b4, [0xff; 4]);
    let mut b3 = [0u8; 3];
    bus.pio_read(0xcfc, &mut b3);
    assert_eq!(b3, [0xff; 3]);
    let mut b8 = [0u8; 8];
    bus.pio_read(0xcfc, &mut b8);
    assert_eq!(b8, [0xff; 8]);
    // Write the interrupt line through a byte port.
    bus.pio_write(PCI_CONFIG_ADDRESS_PORT, &cf8(0, 0, 0, 0x3c).to_le_bytes());
    bus.pio_write(0xcfc, &[0x0a]);
    bus.pio_write(0xcfd, &[0x0a, 0x0b, 0x0c]);
    assert_eq!(cfg_read32(&mut bus, 0, 0x3c), 0x0a);
}

#[test]
fn ecam_decoding() {
    let (mut bus, _dev) = bus_with_device();
    let mut b4 = [0u8; 4];
    bus.ecam_read(0, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), 0x0008_1b36);
    let dev1 = 1 << 15;
    bus.ecam_read(dev1, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), 0x1042_1af4);
    let mut b2 = [0u8; 2];
    bus.ecam_read(dev1 + 2, &mut b2);
    assert_eq!(u16::from_le_bytes(b2), 0x1042);
    // Extended space is reachable (and empty).
    bus.ecam_read(dev1 + 0x100, &mut b4);
    assert_eq!(b4, [0; 4]);
    for (off, what) in [
        (ECAM_BUS_SIZE + dev1, "bus 1"),
        (dev1 | (1 << 12), "function 1"),
        (2 << 15, "empty slot"),
        (dev1 + 2, "crosses a dword"),
        (1 << 28, "past 256 buses"),
        (u64::MAX, "wraps"),
    ] {
        bus.ecam_read(off, &mut b4);
        assert_eq!(b4, [0xff; 4], "{what}");
    }
    let mut b8 = [0u8; 8];
    bus.ecam_read(dev1, &mut b8);
    assert_eq!(b8, [0xff; 8], "qword");
    bus.ecam_write(dev1 + 4, &COMMAND_MEMORY_SPACE.to_le_bytes());
    bus.ecam_write(dev1 + 4, &[0xff; 8]);
    bus.ecam_write(u64::MAX, &[0xff; 4]);
    bus.ecam_read(dev1 + 4, &mut b2);
    assert_eq!(u16::from_le_bytes(b2), COMMAND_MEMORY_SPACE);
}

#[test]
fn bars_are_allocated_and_routed() {
    let (mut bus, dev) = bus_with_device();
    let (m, io) = {
        let d = dev.lock().unwrap();
        (
            d.config.bar_address(0).unwrap(),
            d.config.bar_address(2).unwrap(),
        )
    };
    assert_eq!((m, io), (0x1_0000_0000, 0xc000));
    let mut b = [0u8; 4];
    assert!(!bus.mmio_read(m, &mut b), "decode off after plug");
    assert!(bus.take_bar_changes().is_empty());

    cfg_write32(
        &mut bus,
        1,
        COMMAND as u32,
        u32::from(COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE),
    );
    let changes = bus.take_bar_changes();
    assert_eq!(changes.len(), 2);
    assert_eq!(
        (changes[0].bar, changes[0].old, changes[0].new),
        (0, None, Some(m))
    );
    assert_eq!((changes[1].bar, changes[1].new), (2, Some(io)));

    assert!(bus.mmio_write(m + 0x3ffc, &[1, 2, 3, 4]));
    assert!(bus.mmio_read(m + 8, &mut b));
    assert_eq!(b, [0xa5; 4]);
    assert!(!bus.mmio_read(m + 0x4000, &mut b), "past the BAR");
    assert!(!bus.mmio_read(m - 1, &mut b));
    assert!(bus.pio_write(0xc01f, &[9]));
    assert!(!bus.pio_write(0xc020, &[9]));
    assert!(!bus.mmio_read(0xc000, &mut b), "I/O BAR is not MMIO");
    let acc = dev.lock().unwrap().accesses.clone();
    assert_eq!(acc[0], (0, 0x3ffc, vec![1, 2, 3, 4], true));
    assert_eq!(acc[1], (0, 8, vec![0xa5; 4], false));
    assert_eq!(acc[2], (2, 0x1f, vec![9], true));
}

#[test]
fn bar_sizing_through_cfc_and_relocation() {
    let (mut bus, _dev) = bus_with_device();
    cfg_write32(&mut bus, 1, COMMAND as u32, u32::from(COMMAND_MEMORY_SPACE));
    bus.take_bar_changes();
    // Linux's sizing: decode off, all-ones, read, restore, decode on.
    cfg_write32(&mut bus, 1, COMMAND as u32, 0);
    let bar = BAR0 as u32;
    let (lo, hi) = (
        cfg_read32(&mut bus, 1, bar),
        cfg_read32(&mut bus, 1, bar + 4),
    );
    cfg_write32(&mut bus, 1, bar, 0xffff_ffff);
    cfg_write32(&mut bus, 1, bar + 4, 0xffff_ffff);
    assert_eq!(cfg_read32(&mut bus, 1, bar), 0xffff_c004);
    assert_eq!(cfg_read32(&mut bus, 1, bar + 4), 0xffff_ffff);
    // The guest moves the BAR below 4 GiB.
    cfg_write32(&mut bus, 1, bar, 0xd000_0000);
    cfg_write32(&mut bus, 1, bar + 4, 0);
    cfg_write32(&mut bus, 1, COMMAND as u32, u32::from(COMMAND_MEMORY_SPACE));
    assert_eq!((lo, hi), (0x4, 0x1));
    let changes = bus.take_bar_changes();
    assert_eq!(changes.len(), 1, "coalesced: {changes:?}");
    assert_eq!(
        (changes[0].old, changes[0].new),
        (Some(0x1_0000_0000), Some(0xd000_0000))
    );
    let mut b = [0u8; 4];
    assert!(bus.mmio_read(0xd000_0000, &mut b));
    assert!(!bus.mmio_read(0x1_0000_0000, &mut b));
    // Turning decode off and on again before the VMM looks is no change.
    cfg_write32(&mut bus, 1, COMMAND as u32, 0);
    cfg_write32(&mut bus, 1, COMMAND as u32, u32::from(COMMAND_MEMORY_SPACE));
    assert!(bus.take_bar_changes().is_empty());
}

#[test]
fn slots_and_allocation_failures() {
    let mut bus = PciBus::new(allocator());
    let d = || -> SharedDevice { Arc::new(Mutex::new(TestDevice::new(0x1000))) };
    assert!(matches!(
        bus.add_device_at(0, d()),
        Err(BusError::SlotUnavailable(0))
    ));
    assert!(matches!(
        bus.add_device_at(32, d()),
        Err(BusError::SlotUnavailable(32))
    ));
    assert_eq!(bus.add_device_at(5, d()).unwrap(), PciAddress::slot(5));
    assert!(matches!(
        bus.add_device_at(5, d()),
        Err(BusError::SlotUnavailable(5))
    ));
    assert!(bus.device(PciAddress::slot(5)).is_some());
    assert!(bus.device(PciAddress::slot(6)).is_none());
    // A BAR bigger than the 64-bit window fails and frees what it took.
    let huge: SharedDevice = Arc::new(Mutex::new(TestDevice::new(1 << 33)));
    let err = bus.add_device(huge).unwrap_err();
    assert!(matches!(err, BusError::AllocateBar { bar: 0, .. }), "{err}");
    // The I/O window holds 0x1000 / 0x20 = 128 BARs; slots run out first.
    for _ in 0..30 {
        bus.add_device(d()).unwrap();
    }
    assert!(matches!(bus.add_device(d()), Err(BusError::NoFreeSlot)));
}

#[test]
fn io_window_exhaustion_rolls_back() {
    let mut bus = PciBus::new(
        BarAllocator::new(
            AddressWindow::new(0xc000_0000, 0x1_0000).unwrap(),
            None,
            Some(AddressWindow::new(0xc000, 0x20).unwrap()),
        )
        .unwrap(),
    );
    bus.add_device(Arc::new(Mutex::new(TestDevice::new(0x1000))))
        .unwrap();
    let err = bus
        .add_device(Arc::new(Mutex::new(TestDevice::new(0x1000))))
        .unwrap_err();
    assert!(matches!(err, BusError::AllocateBar { bar: 2, .. }));
    // BAR 0 of the failed device was given back.
    let mut bus2_alloc = BarAllocator::new(
        AddressWindow::new(0xc000_0000, 0x1_0000).unwrap(),
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        bus2_alloc.allocate(
            BarKind::Memory32 {
                prefetchable: false
            },
            0x1000
        ),
        Ok(0xc000_0000)
    );
    assert_eq!(
        bus.allocator.allocate(
            BarKind::Memory32 {
                prefetchable: false
            },
            0x1000
        ),
        Ok(0xc000_1000)
    );
}
