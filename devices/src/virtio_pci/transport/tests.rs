use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::pci::msix::test_sink::CountingSink;
use crate::pci::{
    MsiMessage, COMMAND, COMMAND_MEMORY_SPACE, MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK,
    MSIX_ENTRY_SIZE, STATUS, STATUS_CAPABILITIES_LIST,
};
use crate::virtio_pci::{ActivateError, QueueConfig, STATUS_FEATURES_OK};

/// Calls the transport made, in order.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Call {
    Activate(u64, Vec<QueueConfig>),
    Reset,
    Notify(u16),
    WriteConfig(u64, Vec<u8>),
}

#[derive(Default)]
struct Mock {
    calls: Arc<Mutex<Vec<Call>>>,
    fail_activate: bool,
    queues: usize,
    broken: Arc<AtomicBool>,
}

impl VirtioDevice for Mock {
    fn device_type(&self) -> u32 {
        2
    }

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> u16 {
        128
    }

    fn features(&self) -> u64 {
        (1 << 9) | super::super::VIRTIO_F_RING_RESET
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = [0x10u8, 0x20, 0x30, 0x40];
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| cfg.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.calls
            .lock()
            .unwrap()
            .push(Call::WriteConfig(offset, data.to_vec()));
    }

    fn activate(&mut self, acked: u64, queues: Vec<QueueConfig>) -> Result<(), ActivateError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Activate(acked, queues));
        if self.fail_activate {
            return Err(ActivateError("backend gone".into()));
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.calls.lock().unwrap().push(Call::Reset);
    }

    fn queue_notify(&mut self, queue: u16) {
        self.calls.lock().unwrap().push(Call::Notify(queue));
    }

    fn needs_reset(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }
}

struct Fixture {
    dev: VirtioPciDevice<Mock>,
    sink: Arc<CountingSink>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Fixture {
    fn new(fail_activate: bool) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mock = Mock {
            calls: calls.clone(),
            fail_activate,
            queues: 2,
            broken: Arc::default(),
        };
        let sink = Arc::new(CountingSink::default());
        let mut dev = VirtioPciDevice::new(mock, 3, sink.clone()).unwrap();
        dev.config_mut().set_bar_address(0, 0x80_0000_0000).unwrap();
        Self { dev, sink, calls }
    }

    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn rd(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn wr(&mut self, off: u64, len: usize, v: u64) {
        self.dev.write_bar(0, off, &v.to_le_bytes()[..len]);
    }

    fn cfg_rd(&mut self, off: u16, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_config(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn cfg_wr(&mut self, off: u16, len: usize, v: u64) {
        self.dev.write_config(off, &v.to_le_bytes()[..len]);
    }

    /// Finds a vendor capability by cfg_type.
    fn vendor_cap(&self, cfg_type: u8) -> usize {
        let c = self.dev.config();
        c.capabilities()
            .map(|(_, off)| usize::from(off))
            .find(|off| c.read_u8(*off) == 0x09 && c.read_u8(off + 3) == cfg_type)
            .unwrap()
    }

    /// Drives the driver's bring-up; returns the status after DRIVER_OK.
    fn bring_up(&mut self) -> u8 {
        self.wr(0x14, 1, 0);
        self.wr(0x14, 1, 3);
        self.wr(0x08, 4, 1);
        self.wr(0x0c, 4, 1); // VERSION_1
        self.wr(0x14, 1, 0x0b);
        for q in 0..2 {
            self.wr(0x16, 2, q);
            self.wr(0x18, 2, 64);
            self.wr(0x1a, 2, q + 1);
            self.wr(0x20, 8, 0x1000 * (q + 1));
            self.wr(0x28, 8, 0x1100 * (q + 1));
            self.wr(0x30, 8, 0x1200 * (q + 1));
            self.wr(0x1c, 2, 1);
        }
        self.wr(0x10, 2, 0);
        self.wr(0x14, 1, 0x0f);
        self.rd(0x14, 1) as u8
    }

    /// A fixture with MSI-X on and the driver brought up.
    fn brought_up(fail_activate: bool) -> Self {
        let mut f = Fixture::new(fail_activate);
        f.enable_msix();
        f.bring_up();
        f
    }

    fn enable_msix(&mut self) {
        let control = self.msix_cap() + 2;
        self.cfg_wr(control as u16, 2, u64::from(MSIX_CONTROL_ENABLE));
        for v in 0..3u64 {
            let e = self.dev.layout().msix_table + v * MSIX_ENTRY_SIZE;
            self.wr(e, 8, 0xfee0_0000);
            self.wr(e + 8, 4, 0x30 + v);
            self.wr(e + 12, 4, 0);
        }
    }

    fn msix_cap(&self) -> usize {
        let c = self.dev.config();
        usize::from(c.capabilities().find(|(id, _)| *id == 0x11).unwrap().1)
    }
}

#[test]
fn identity_and_capabilities() {
    let f = Fixture::new(false);
    let c = f.dev.config();
    assert_eq!(c.read_u32(0), 0x1042_1af4);
    assert_eq!(c.read_u8(8), 1, "revision 1");
    assert_eq!(c.read_u32(8) >> 8, 0x01_80_00);
    assert_eq!(c.read_u32(0x2c), 0x1100_1af4);
    assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST, 0);
    let caps: Vec<(u8, u8)> = c
        .capabilities()
        .map(|(id, off)| {
            (
                id,
                if id == 9 {
                    c.read_u8(usize::from(off) + 3)
                } else {
                    0
                },
            )
        })
        .collect();
    assert_eq!(
        caps,
        vec![(9, 1), (9, 2), (9, 3), (9, 4), (9, 5), (0x11, 0)]
    );
    let notify = f.vendor_cap(2);
    assert_eq!(c.read_u8(notify + 2), 20, "cap_len");
    assert_eq!(c.read_u8(notify + 4), 0, "BAR 0");
    assert_eq!(c.read_u32(notify + 8), 0x3000);
    assert_eq!(c.read_u32(notify + 12), 8);
    assert_eq!(c.read_u32(notify + 16), 4, "notify_off_multiplier");
    let common = f.vendor_cap(1);
    assert_eq!((c.read_u32(common + 8), c.read_u32(common + 12)), (0, 0x38));
    let msix = f.msix_cap();
    assert_eq!(c.read_u16(msix + 2), 2, "3 vectors");
    assert_eq!(c.read_u32(msix + 4), 0x4000);
    assert_eq!(c.read_u32(msix + 8), 0x5000);
    assert_eq!(f.dev.layout().size, 0x8000);
    assert_eq!(
        f.dev.config().bar(0).unwrap().kind,
        BarKind::Memory64 {
            prefetchable: false
        }
    );
    // Capabilities are read-only except their designated fields.
    let mut f = Fixture::new(false);
    f.cfg_wr(notify as u16 + 8, 4, 0);
    assert_eq!(f.cfg_rd(notify as u16 + 8, 4), 0x3000);
}

#[test]
fn construction_errors() {
    let sink: Arc<dyn MsiSink> = Arc::new(CountingSink::default());
    let mk = |queues| Mock {
        queues,
        ..Mock::default()
    };
    assert!(matches!(
        VirtioPciDevice::new(mk(0), 1, sink.clone()),
        Err(VirtioPciError::QueueCount(0))
    ));
    assert!(matches!(
        VirtioPciDevice::new(mk(1025), 1, sink.clone()),
        Err(VirtioPciError::QueueCount(1025))
    ));
    assert!(matches!(
        VirtioPciDevice::new(mk(1), 0, sink.clone()),
        Err(VirtioPciError::Msix(_))
    ));
    // 1024 queues and 2048 vectors fit.
    let d = VirtioPciDevice::new(mk(1024), 2048, sink).unwrap();
    assert_eq!(d.layout().msix_pba, 0x4000 + 2048 * 16);
    assert_eq!(d.layout().size, 0x1_0000);
}

#[test]
fn features_add_version_1_and_drop_unsupported() {
    let mut f = Fixture::new(false);
    assert_eq!(f.rd(0x04, 4), 1 << 9);
    f.wr(0x00, 4, 1);
    assert_eq!(f.rd(0x04, 4), 1, "VERSION_1, no RING_RESET");
}

#[test]
fn driver_ok_activates_with_enabled_queues() {
    let mut f = Fixture::new(false);
    assert_eq!(f.bring_up(), 0x0f);
    assert!(f.dev.is_active());
    let calls = f.calls();
    assert_eq!(calls[0], Call::Reset, "status 0 at probe resets");
    let Call::Activate(features, queues) = &calls[1] else {
        panic!("{calls:?}");
    };
    assert_eq!(*features, VIRTIO_F_VERSION_1);
    assert_eq!(
        queues[1],
        QueueConfig {
            index: 1,
            size: 64,
            desc_table: 0x2000,
            avail_ring: 0x2200,
            used_ring: 0x2400,
            msix_vector: 2,
        }
    );
    assert_eq!(f.dev.queue_vector(1), Some(2));
    assert_eq!(f.dev.queue_vector(5), None);
    // Resetting calls the device and clears everything.
    f.wr(0x14, 1, 0);
    assert_eq!(f.calls(), vec![Call::Reset]);
    assert!(!f.dev.is_active());
    assert_eq!(f.rd(0x14, 1), 0);
    f.wr(0x16, 2, 1);
    assert_eq!((f.rd(0x18, 2), f.rd(0x1c, 2)), (128, 0));
}

#[test]
fn driver_ok_without_features_ok_needs_reset() {
    let mut f = Fixture::new(false);
    f.wr(0x14, 1, 0x07);
    assert!(f.calls().is_empty());
    assert_ne!(f.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(!f.dev.is_active());
    assert_eq!(f.dev.status() & STATUS_FEATURES_OK, 0);
}

#[test]
fn failed_activation_sets_needs_reset_and_interrupts() {
    let mut f = Fixture::brought_up(true);
    assert!(!f.dev.is_active());
    assert_ne!(f.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(
        f.sink.delivered(),
        vec![(
            0,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x30
            }
        )]
    );
    assert_eq!(f.rd(0x1000, 1), u64::from(ISR_CONFIG));
}

#[test]
fn needs_reset_from_the_vmm() {
    let mut f = Fixture::brought_up(false);
    f.dev.set_needs_reset();
    f.dev.set_needs_reset();
    assert_eq!(f.sink.delivered().len(), 1, "once");
    assert_eq!(f.rd(0x14, 1), 0x4f);
    f.wr(0x14, 1, 0);
    assert_eq!(f.rd(0x14, 1), 0);
}

#[test]
fn a_broken_device_is_noticed_on_its_next_access_or_check() {
    let mut f = Fixture::brought_up(false);
    let broken = f.dev.device().broken.clone();
    broken.store(true, Ordering::Relaxed);
    f.dev.check_device();
    assert_eq!(f.rd(0x14, 1), 0x4f);
    assert_eq!(f.sink.delivered().len(), 1);
    // Reset, then the next device-config read finds it still broken.
    f.wr(0x14, 1, 0);
    assert_eq!(f.rd(0x14, 1), 0);
    f.rd(0x2000, 4);
    assert_ne!(f.dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // A healthy device is left alone.
    broken.store(false, Ordering::Relaxed);
    f.wr(0x14, 1, 0);
    f.rd(0x2000, 4);
    f.dev.check_device();
    assert_eq!(f.rd(0x14, 1), 0);
}

#[test]
fn config_change_bumps_generation_and_uses_msix_config_vector() {
    let mut f = Fixture::new(false);
    f.enable_msix();
    f.wr(0x10, 2, 2);
    assert_eq!(f.rd(0x15, 1), 0);
    f.dev.config_changed();
    assert_eq!(f.rd(0x15, 1), 1);
    assert_eq!(f.sink.delivered()[0].0, 2);
    // No vector: only the ISR.
    f.wr(0x10, 2, 0xffff);
    f.dev.config_changed();
    assert_eq!(f.sink.delivered().len(), 1);
}

#[test]
fn isr_reads_clear() {
    let mut f = Fixture::new(false);
    f.dev.config_changed();
    assert_eq!(f.rd(0x1001, 1), 0, "other bytes read 0 and do not clear");
    assert_eq!(f.rd(0x1000, 4), u64::from(ISR_CONFIG));
    assert_eq!(f.rd(0x1000, 1), 0);
    f.dev.config_changed();
    f.wr(0x1000, 1, 0);
    assert_eq!(f.rd(0x1000, 1), u64::from(ISR_CONFIG), "writes ignored");
    let mut empty = [0u8; 0];
    f.dev.read_bar(0, 0x1000, &mut empty);
}

#[test]
fn device_config_is_forwarded() {
    let mut f = Fixture::new(false);
    assert_eq!(f.rd(0x2000, 4), 0x4030_2010);
    assert_eq!(f.rd(0x2002, 4), 0x4030);
    assert_eq!(f.rd(0x2ffe, 8), 0);
    f.wr(0x2004, 2, 0xbeef);
    assert_eq!(f.calls(), vec![Call::WriteConfig(4, vec![0xef, 0xbe])]);
}

#[test]
fn notify_addresses_and_kicks() {
    let mut f = Fixture::new(false);
    assert_eq!(f.dev.queue_notify_address(0), Some(0x80_0000_3000));
    assert_eq!(f.dev.queue_notify_address(1), Some(0x80_0000_3004));
    assert_eq!(f.dev.queue_notify_address(2), None);
    assert_eq!(
        f.dev.queue_notify_addresses(),
        vec![(0, 0x80_0000_3000), (1, 0x80_0000_3004)]
    );
    // Kicks before DRIVER_OK and to missing queues are dropped.
    f.wr(0x3000, 2, 0);
    f.wr(0x3008, 2, 2);
    f.bring_up();
    f.calls();
    f.wr(0x3004, 2, 1);
    f.wr(0x3ffc, 4, 0);
    assert_eq!(f.calls(), vec![Call::Notify(1)]);
    assert_eq!(f.rd(0x3004, 2), 0);
    // The notify address follows BAR 0.
    f.dev.config_mut().set_bar_address(0, 0xc000_0000).unwrap();
    assert_eq!(f.dev.queue_notify_address(1), Some(0xc000_3004));
    let mut f = Fixture::new(false);
    f.dev
        .config_mut()
        .write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
    f.dev.config_mut().write(0x10, &[0; 8]);
    assert_eq!(f.dev.queue_notify_address(0), None, "unassigned BAR");
}

#[test]
fn msix_through_capability_and_bar() {
    let mut f = Fixture::new(false);
    let control = f.msix_cap() as u16 + 2;
    f.cfg_wr(control, 2, 0xffff);
    assert_eq!(
        f.cfg_rd(control, 2),
        0xc002,
        "only enable and mask are writable"
    );
    assert!(f.dev.msix().enabled() && f.dev.msix().function_masked());
    f.cfg_wr(control, 2, u64::from(MSIX_CONTROL_ENABLE));
    let table = f.dev.layout().msix_table;
    f.wr(table + 16, 8, 0xfee0_1000);
    f.wr(table + 24, 4, 0x55);
    f.wr(table + 28, 4, 0);
    assert_eq!(f.rd(table + 24, 4), 0x55);
    assert_eq!(
        f.sink.routes(),
        vec![(
            1,
            Some(MsiMessage {
                address: 0xfee0_1000,
                data: 0x55
            })
        )]
    );
    // Function mask through a byte write to the upper control byte.
    f.cfg_wr(
        control + 1,
        1,
        u64::from((MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK) >> 8),
    );
    assert!(f.dev.msix().function_masked());
    assert_eq!(f.sink.routes().last(), Some(&(1, None)));
    let pba = f.dev.layout().msix_pba;
    f.wr(0x10, 2, 1);
    f.dev.config_changed();
    assert_eq!(f.rd(pba, 8), 0b10);
    f.cfg_wr(control, 2, u64::from(MSIX_CONTROL_ENABLE));
    assert_eq!(f.rd(pba, 8), 0);
    assert_eq!(f.sink.delivered().len(), 1);
}

#[test]
fn pci_cfg_access_window() {
    let mut f = Fixture::new(false);
    let cap = f.vendor_cap(5) as u16;
    // Read the device config through the window.
    f.cfg_wr(cap + 4, 1, 0);
    f.cfg_wr(cap + 8, 4, 0x2000);
    f.cfg_wr(cap + 12, 4, 4);
    assert_eq!(f.cfg_rd(cap + 16, 4), 0x4030_2010);
    // Write queue_select through it.
    f.cfg_wr(cap + 8, 4, 0x16);
    f.cfg_wr(cap + 12, 4, 2);
    f.cfg_wr(cap + 16, 2, 1);
    assert_eq!(f.rd(0x16, 2), 1);
    assert_eq!(f.cfg_rd(cap + 16, 2), 1);
    // Bad windows read 0 and write nothing.
    for (bar, off, len) in [
        (1, 0x16, 2),
        (0, 0x17, 2),
        (0, 0x16, 3),
        (0, 0x7ffe, 4),
        (0, 0xffff_fffc, 4),
    ] {
        f.cfg_wr(cap + 4, 1, bar);
        f.cfg_wr(cap + 8, 4, off);
        f.cfg_wr(cap + 12, 4, len);
        f.cfg_wr(cap + 16, 4, 0);
        assert_eq!(f.cfg_rd(cap + 16, 4), 0);
    }
    assert_eq!(f.rd(0x16, 2), 1);
}

#[test]
fn guest_input_anywhere_does_not_panic() {
    let mut f = Fixture::brought_up(false);
    let size = f.dev.layout().size;
    for off in (0..size + 64).step_by(7).chain([u64::MAX - 3, u64::MAX]) {
        for len in [1usize, 2, 3, 4, 8] {
            let mut b = [0u8; 8];
            f.dev.read_bar(0, off, &mut b[..len]);
            f.dev.write_bar(0, off, &[0xff; 8][..len]);
        }
    }
    for off in (0..4096u16).step_by(3).chain([u16::MAX - 1]) {
        let mut b = [0u8; 4];
        f.dev.read_config(off, &mut b);
        f.dev.write_config(off, &[0xff; 4]);
    }
    f.dev.read_bar(3, 0, &mut [0u8; 4]);
    f.dev.write_bar(3, 0, &[0; 4]);
    // Still a working device after a reset.
    f.calls();
    assert_eq!(f.bring_up() & 0x4f, 0x0f);
}
