use std::sync::mpsc::{channel, Receiver};

use devices::pci::{BarKind, PciConfig, PciDevice, PciHeader, BAR0, COMMAND, COMMAND_MEMORY_SPACE};

use super::*;

/// Records (register?, address) pairs.
#[derive(Default)]
struct Recorder(Mutex<Vec<(bool, u64)>>);

impl IoEventRegistrar for Recorder {
    fn register(&self, addr: u64, _fd: &EventFd) -> io::Result<()> {
        lock(&self.0).push((true, addr));
        Ok(())
    }
    fn unregister(&self, addr: u64, _fd: &EventFd) -> io::Result<()> {
        lock(&self.0).push((false, addr));
        Ok(())
    }
}

type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// A function with one 64-bit memory BAR that records BAR writes.
struct Dev {
    config: PciConfig,
    writes: Writes,
}

impl PciDevice for Dev {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn read_bar(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_bar(&mut self, _bar: u8, offset: u64, data: &[u8]) {
        lock(&self.writes).push((offset, data.to_vec()));
    }
}

const MMIO64: (u64, u64) = (1 << 32, 64 << 30);

struct Fixture {
    host: Arc<PciHost>,
    pio: Bus,
    mmio: Bus,
    rec: Arc<Recorder>,
    events: Receiver<VmEvent>,
}

fn fixture() -> Fixture {
    let (tx, events) = channel();
    let rec = Arc::new(Recorder::default());
    let host = PciHost::new(MMIO64, rec.clone(), tx).unwrap();
    let (pio, mmio) = (Bus::new(), Bus::new());
    host.attach(&pio, &mmio, MMIO64).unwrap();
    Fixture {
        host,
        pio,
        mmio,
        rec,
        events,
    }
}

fn cf8_read(f: &Fixture, dev: u8, reg: u32) -> u32 {
    let addr = (1u32 << 31) | (u32::from(dev) << 11) | reg;
    assert!(f.pio.write(0xcf8, &addr.to_le_bytes()));
    let mut b = [0u8; 4];
    assert!(f.pio.read(0xcfc, &mut b));
    u32::from_le_bytes(b)
}

fn ecam_addr(bus: u64, dev: u64, reg: u64) -> u64 {
    layout::PCI_MMCONFIG_START + (bus << 20) + (dev << 15) + reg
}

fn ecam_read(f: &Fixture, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(f.mmio.read(addr, &mut b));
    u32::from_le_bytes(b)
}

#[test]
fn reset_control_register() {
    let f = fixture();
    assert!(f.pio.write(RESET_CONTROL_PORT, &[0x02]));
    assert!(
        f.events.try_recv().is_err(),
        "0x2 only selects a hard reset"
    );
    let mut b = [0xaa];
    assert!(f.pio.read(RESET_CONTROL_PORT, &mut b));
    assert_eq!(b, [0]);
    for v in [0x06, 0x0e, 0x04] {
        assert!(f.pio.write(RESET_CONTROL_PORT, &[v]));
        assert_eq!(f.events.try_recv(), Ok(VmEvent::Reset), "{v:#x}");
    }
    // A dword write to 0xcf8 is CONFIG_ADDRESS, not a reset.
    assert!(f.pio.write(0xcf8, &0x8000_0000u32.to_le_bytes()));
    assert!(f.events.try_recv().is_err());
    assert!(is_reset(0x6) && is_reset(0xe) && !is_reset(0x2) && !is_reset(0));
}

#[test]
fn ecam_agrees_with_cf8() {
    let f = fixture();
    let id = cf8_read(&f, 0, 0);
    assert_eq!(id, 0x0008_1b36);
    assert_eq!(ecam_read(&f, ecam_addr(0, 0, 0)), id);
    assert_eq!(cf8_read(&f, 0, 8) >> 16, 0x0600);
    assert_eq!(ecam_read(&f, ecam_addr(0, 0, 8)) >> 16, 0x0600);
    // Empty slots, other buses and odd accesses read all-ones.
    assert_eq!(cf8_read(&f, 5, 0), u32::MAX);
    assert_eq!(ecam_read(&f, ecam_addr(1, 0, 0)), u32::MAX);
    assert_eq!(ecam_read(&f, ecam_addr(255, 31, 0xffc)), u32::MAX);
    let mut b = [0u8; 8];
    assert!(f.mmio.read(ecam_addr(0, 0, 2), &mut b));
    assert_eq!(b, [0xff; 8]);
    // Outside every window: not ours.
    let gap = layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE;
    assert!(!f.mmio.read(gap, &mut [0; 4]));
    // Inside a BAR window but no BAR: all-ones.
    assert_eq!(ecam_read(&f, layout::PCI_MMIO32_START), u32::MAX);
}

#[test]
fn bars_route_and_ioevents_follow_them() {
    let f = fixture();
    let header = PciHeader {
        vendor_id: 0x1af4,
        device_id: 0x1041,
        revision: 1,
        class_code: 0x02_00_00,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x40,
        interrupt_pin: 0,
    };
    let mut config = PciConfig::new(&header);
    let kind = BarKind::Memory64 {
        prefetchable: false,
    };
    config.add_bar(0, kind, 0x4000).unwrap();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let dev = Dev {
        config,
        writes: writes.clone(),
    };
    let address = f.host.bus().add_device(Arc::new(Mutex::new(dev))).unwrap();
    assert_eq!(address, PciAddress::slot(1));
    let base = f
        .host
        .bus()
        .device(address)
        .unwrap()
        .lock()
        .unwrap()
        .config()
        .bar_address(0);
    let base = base.unwrap();
    assert!(base >= MMIO64.0 && base < MMIO64.0 + MMIO64.1, "{base:#x}");

    // Not decoding yet: added but not registered.
    let fd = EventFd::new(0).unwrap();
    f.host.add_ioevent(address, 0, 0x3000, fd).unwrap();
    assert!(lock(&f.rec.0).is_empty());
    assert!(f.mmio.write(base, &[1]));
    assert!(lock(&writes).is_empty(), "BAR does not decode yet");

    // Memory decode on through ECAM: registered at base + offset.
    let cmd = ecam_addr(0, 1, u64::from(COMMAND as u16));
    assert!(f.mmio.write(cmd, &COMMAND_MEMORY_SPACE.to_le_bytes()));
    assert_eq!(*lock(&f.rec.0), vec![(true, base + 0x3000)]);
    assert!(f.mmio.write(base + 8, &[1, 2]));
    assert_eq!(*lock(&writes), vec![(8, vec![1, 2])]);

    // The guest moves the BAR within the 64-bit window (through CF8/CFC).
    let moved = MMIO64.0 + 0x10_0000;
    let bar0 = (1u32 << 31) | (1 << 11) | BAR0 as u32;
    for (reg, v) in [(bar0, moved as u32 | 4), (bar0 + 4, (moved >> 32) as u32)] {
        assert!(f.pio.write(0xcf8, &reg.to_le_bytes()));
        assert!(f.pio.write(0xcfc, &v.to_le_bytes()));
    }
    let rec = lock(&f.rec.0).clone();
    assert_eq!(rec.first(), Some(&(true, base + 0x3000)));
    assert_eq!(rec.last(), Some(&(true, moved + 0x3000)), "{rec:x?}");
    assert_eq!(
        f.host.ioevents(),
        vec![(address, 0, 0x3000, Some(moved + 0x3000))]
    );
    assert!(f.mmio.write(moved, &[3]));

    // Decode off: unregistered.
    assert!(f.mmio.write(cmd, &0u16.to_le_bytes()));
    assert_eq!(lock(&f.rec.0).last(), Some(&(false, moved + 0x3000)));
    assert_eq!(f.host.ioevents(), vec![(address, 0, 0x3000, None)]);
}
