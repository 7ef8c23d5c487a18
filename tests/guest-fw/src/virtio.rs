//! The virtio 1.x PCI transport (virtio spec 4.1): finding virtio functions
//! on bus 0, their vendor capabilities (common, notify, ISR, device
//! configuration), MSI-X, the status handshake and queue setup; then each
//! device found is handed to its driver (`blk`, `fs`, `net`).

use crate::io::{serial, serial_dec, serial_hex, serial_hex_fixed};
use crate::paging::map_mmio;
use crate::pci;
use crate::virtq::{r16, r32, r8, w16, w32, w64, w8, Virtq, MAX_SIZE};

const VENDOR: u32 = 0x1af4;

const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

// Common configuration registers.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const MSIX_CONFIG: u64 = 0x10;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const FAILED: u8 = 0x80;

pub const F_VERSION_1: u64 = 1 << 32;
const NO_VECTOR: u16 = 0xffff;

pub const TYPE_NET: u16 = 1;
pub const TYPE_BLK: u16 = 2;
pub const TYPE_FS: u16 = 26;

const LAPIC: u64 = 0xfee0_0000;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_IRR: u64 = 0x200;
/// MSI-X vectors start here; each device gets 8 (config + 7 queues).
const FIRST_VECTOR: u8 = 0x40;

struct Msix {
    /// Offset of the capability in configuration space.
    cap: u32,
    table: u64,
    entries: u16,
}

pub struct Device {
    pub dev: u32,
    pub func: u32,
    common: u64,
    notify: u64,
    notify_mul: u32,
    pub isr: u64,
    /// The device-specific configuration.
    pub cfg: u64,
    msix: Option<Msix>,
    first_vector: u8,
}

/// The name of a device type in the guest's lines.
pub fn name(kind: u16) -> &'static [u8] {
    match kind {
        TYPE_NET => b"net",
        TYPE_BLK => b"blk",
        TYPE_FS => b"fs",
        _ => b"other",
    }
}

/// The virtio device type of 00:dev.func, if it is a virtio function.
fn virtio_type(dev: u32, func: u32) -> Option<u16> {
    let id = pci::cf8_read(dev, func, 0);
    if id & 0xffff != VENDOR {
        return None;
    }
    match id >> 16 {
        // Modern: 0x1040 + type.
        d @ 0x1040..=0x107f => Some((d - 0x1040) as u16),
        // Transitional: the type is the subsystem id.
        0x1000..=0x103f => Some((pci::cf8_read(dev, func, 0x2c) >> 16) as u16),
        _ => None,
    }
}

/// A region a capability points at: BAR `bar`, `offset` (mapped).
fn region(dev: u32, func: u32, bar: u32, offset: u32, len: u32) -> u64 {
    if bar > 5 {
        return 0;
    }
    let base = pci::memory_bar(dev, func, bar);
    if base == 0 || !map_mmio(base + offset as u64, len as u64) {
        return 0;
    }
    base + offset as u64
}

fn probe(dev: u32, func: u32, first_vector: u8) -> Option<Device> {
    let mut d = Device {
        dev,
        func,
        common: 0,
        notify: 0,
        notify_mul: 0,
        isr: 0,
        cfg: 0,
        msix: None,
        first_vector,
    };
    pci::for_each_capability(dev, func, |off, id| {
        if id == CAP_MSIX {
            let control = pci::cf8_read(dev, func, off) >> 16;
            let table = pci::cf8_read(dev, func, off + 4);
            let entries = (control & 0x7ff) as u16 + 1;
            let addr = region(dev, func, table & 7, table & !7, 16 * entries as u32);
            if addr != 0 {
                d.msix = Some(Msix {
                    cap: off,
                    table: addr,
                    entries,
                });
            }
            return;
        }
        if id != CAP_VENDOR {
            return;
        }
        let cfg_type = (pci::cf8_read(dev, func, off) >> 24) as u8;
        let bar = pci::cf8_read(dev, func, off + 4) & 0xff;
        let offset = pci::cf8_read(dev, func, off + 8);
        let len = pci::cf8_read(dev, func, off + 12);
        // The first capability of each type is the preferred one.
        let slot = match cfg_type {
            CFG_COMMON => &mut d.common,
            CFG_NOTIFY => &mut d.notify,
            CFG_ISR => &mut d.isr,
            CFG_DEVICE => &mut d.cfg,
            _ => return,
        };
        if *slot == 0 {
            *slot = region(dev, func, bar, offset, len);
            if cfg_type == CFG_NOTIFY {
                d.notify_mul = pci::cf8_read(dev, func, off + 16);
            }
        }
    });
    if d.common == 0 || d.notify == 0 {
        return None;
    }
    // Memory space and bus mastering on.
    let command = pci::cf8_read(dev, func, 4) & 0xffff;
    pci::cf8_write16(dev, func, 4, (command | 0x6) as u16);
    Some(d)
}

fn set_status(d: &Device, bits: u8) {
    let status = r8(d.common + DEVICE_STATUS);
    w8(d.common + DEVICE_STATUS, status | bits);
}

impl Device {
    /// Reset, ACKNOWLEDGE, DRIVER, then accepts VERSION_1 and those of
    /// `wanted` the device offers, and checks FEATURES_OK. The accepted
    /// features, or what went wrong.
    pub fn negotiate(&mut self, wanted: u64) -> Result<u64, &'static str> {
        w8(self.common + DEVICE_STATUS, 0);
        // The device may finish its reset on another thread of the VMM
        // (virtio 1.2 §4.1.4.3.2: wait for 0): one read per ~1000
        // `pause`s, for up to ~10 s.
        let mut reset = false;
        for _ in 0..10_000 {
            if r8(self.common + DEVICE_STATUS) == 0 {
                reset = true;
                break;
            }
            for _ in 0..1000 {
                core::hint::spin_loop();
            }
        }
        if !reset {
            return Err("the device did not reset");
        }
        set_status(self, ACKNOWLEDGE);
        set_status(self, DRIVER);
        let mut offered = 0u64;
        for half in 0..2u32 {
            w32(self.common + DEVICE_FEATURE_SELECT, half);
            offered |= (r32(self.common + DEVICE_FEATURE) as u64) << (32 * half);
        }
        if offered & F_VERSION_1 == 0 {
            set_status(self, FAILED);
            return Err("no VIRTIO_F_VERSION_1");
        }
        let accepted = offered & (wanted | F_VERSION_1);
        for half in 0..2u32 {
            w32(self.common + DRIVER_FEATURE_SELECT, half);
            w32(
                self.common + DRIVER_FEATURE,
                (accepted >> (32 * half)) as u32,
            );
        }
        set_status(self, FEATURES_OK);
        if r8(self.common + DEVICE_STATUS) & FEATURES_OK == 0 {
            set_status(self, FAILED);
            return Err("FEATURES_OK was not kept");
        }
        self.setup_msix();
        Ok(accepted)
    }

    /// Programs MSI-X entry 0 (configuration changes) and one per queue,
    /// each to the BSP's LAPIC with its own vector, and enables MSI-X.
    /// Without an MSI-X capability (QEMU's vhost-user net under TCG has
    /// none) the queues have no interrupt at all: they are polled anyway.
    fn setup_msix(&mut self) {
        let Some(m) = &self.msix else {
            return;
        };
        let apic_id = crate::apic_id();
        for entry in 0..m.entries.min(8) {
            let at = m.table + 16 * entry as u64;
            w32(at, 0xfee0_0000 | (apic_id << 12));
            w32(at + 4, 0);
            w32(at + 8, (self.first_vector + entry as u8) as u32); // fixed, edge
            w32(at + 12, 0); // unmasked
        }
        // Message control: enable (bit 15), function mask (bit 14) off.
        let control = (pci::cf8_read(self.dev, self.func, m.cap) >> 16) as u16;
        pci::cf8_write16(self.dev, self.func, m.cap + 2, (control | 0x8000) & !0x4000);
        w16(self.common + MSIX_CONFIG, 0);
        // The LAPIC accepts fixed interrupts only while software-enabled.
        w32(LAPIC + LAPIC_SVR, r32(LAPIC + LAPIC_SVR) | 0x1ff);
    }

    /// Sets up queue `index` (at most MAX_SIZE entries) with its MSI-X
    /// vector, and enables it.
    pub fn queue(&mut self, index: u16) -> Result<Virtq, &'static str> {
        w16(self.common + QUEUE_SELECT, index);
        let max = r16(self.common + QUEUE_SIZE);
        if max == 0 {
            return Err("the queue does not exist");
        }
        let mut size = MAX_SIZE;
        while size > max {
            size /= 2;
        }
        let mut q = Virtq::new(index, size).ok_or("out of queue memory")?;
        w16(self.common + QUEUE_SIZE, size);
        w64(self.common + QUEUE_DESC, q.desc);
        w64(self.common + QUEUE_DRIVER, q.avail);
        w64(self.common + QUEUE_DEVICE, q.used);
        if let Some(m) = &self.msix {
            let entry = index + 1;
            if entry < m.entries.min(8) {
                w16(self.common + QUEUE_MSIX_VECTOR, entry);
                if r16(self.common + QUEUE_MSIX_VECTOR) == NO_VECTOR {
                    return Err("the device refused the queue's MSI-X vector");
                }
                q.vector = Some(self.first_vector + entry as u8);
            }
        }
        let off = r16(self.common + QUEUE_NOTIFY_OFF) as u64;
        q.notify = self.notify + off * self.notify_mul as u64;
        w16(self.common + QUEUE_ENABLE, 1);
        Ok(q)
    }

    /// DRIVER_OK: the device is live.
    pub fn driver_ok(&self) {
        set_status(self, DRIVER_OK);
    }

    /// Resets the device (its queues stop being used).
    pub fn reset(&self) {
        w8(self.common + DEVICE_STATUS, 0);
    }

    /// Byte `i` of the device configuration.
    pub fn cfg8(&self, i: u64) -> u8 {
        r8(self.cfg + i)
    }

    pub fn cfg32(&self, i: u64) -> u32 {
        r32(self.cfg + i)
    }
}

/// Prints `, msi-x vector 0xNN pending` once queue `q`'s vector is set in
/// the LAPIC's IRR (with IF=0 it stays there; the message may arrive a
/// little after the used ring was updated), `, msi-x vector 0xNN not seen`
/// if it is not within ~1 s, and `, no msi-x (polled)` if the queue has none;
/// preceded by ` (N re-kick(s))` if requests had to be kicked again.
pub fn report_msi(q: &Virtq) {
    if q.rekicks != 0 {
        serial(b" (");
        serial_dec(q.rekicks as u64);
        serial(b" re-kick(s))");
    }
    let Some(v) = q.vector else {
        serial(b", no msi-x (polled)");
        return;
    };
    let irr = LAPIC + LAPIC_IRR + 0x10 * (v as u64 / 32);
    let seen = crate::virtq::poll_until(3_000_000_000, || r32(irr) & (1 << (v % 32)) != 0);
    serial(b", msi-x vector ");
    serial_hex(v as u64);
    if seen {
        serial(b" pending");
    } else {
        serial(b" not seen");
    }
}

/// Finds every virtio function on bus 0 and runs its driver.
pub fn drive_all() {
    let mut found = 0u64;
    for dev in 0..32 {
        for func in 0..8 {
            if !pci::present(dev, func) {
                if func == 0 {
                    break;
                }
                continue;
            }
            if let Some(kind) = virtio_type(dev, func) {
                let first_vector = FIRST_VECTOR + 8 * (found as u8 % 16);
                found += 1;
                drive(dev, func, kind, first_vector);
            }
            if func == 0 && !pci::multifunction(dev) {
                break;
            }
        }
    }
    serial(b"virtio: ");
    serial_dec(found);
    serial(b" device(s)\n");
}

fn drive(dev: u32, func: u32, kind: u16, first_vector: u8) {
    let Some(mut d) = probe(dev, func, first_vector) else {
        serial(b"virtio ");
        pci::print_bdf(dev, func);
        serial(b": no usable virtio 1.x capabilities\n");
        return;
    };
    serial(b"virtio ");
    pci::print_bdf(dev, func);
    serial(b" ");
    serial(name(kind));
    serial(b": common ");
    serial_hex(d.common);
    serial(b", notify ");
    serial_hex(d.notify);
    serial(b" x");
    serial_dec(d.notify_mul as u64);
    match &d.msix {
        Some(m) => {
            serial(b", msi-x ");
            serial_dec(m.entries as u64);
            serial(b" entries at ");
            serial_hex(m.table);
        }
        None => serial(b", no msi-x"),
    }
    serial(b"\n");
    crate::status::record(dev, func, kind, d.common, first_vector);
    let result = match kind {
        TYPE_BLK => crate::blk::run(&mut d),
        TYPE_FS => crate::fs::run(&mut d),
        TYPE_NET => crate::net::run(&mut d),
        _ => {
            serial(b"virtio: type ");
            serial_hex_fixed(kind as u64, 2);
            serial(b", no driver\n");
            return;
        }
    };
    if let Err(why) = result {
        serial(name(kind));
        serial(b": FAILED: ");
        serial(why.as_bytes());
        serial(b"\n");
        d.reset();
    }
}
