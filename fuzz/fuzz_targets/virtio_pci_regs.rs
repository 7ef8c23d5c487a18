//! The virtio-pci transport (devices/src/virtio_pci) from a sequence of
//! guest accesses: BAR 0 (common configuration, ISR, notify, device
//! configuration, MSI-X table and PBA) and the PCI configuration space,
//! at any offset and size, plus the events a device raises.
//!
//! Input: byte 0: device (bits 0-1: net, block, fs, console; bits 2-3:
//! queues - 1; bit 4: activation fails); byte 1: MSI-X vectors. Then
//! 12-byte operations `[kind][offset: le16][size][value: le64]`.

#![no_main]

use std::sync::Arc;

use devices::pci::{NullMsiSink, PciDevice};
use devices::virtio_pci::VirtioPciDevice;
use devices::virtio_pci::{ActivateError, QueueConfig, VirtioDevice, STATUS_DRIVER_OK};
use fuzz::Input;
use libfuzzer_sys::fuzz_target;

struct FakeDevice {
    device_type: u32,
    queues: usize,
    fail_activate: bool,
    config: [u8; 64],
    active: bool,
    needs_reset: bool,
    reset_pending: u8,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> u16 {
        256
    }

    fn features(&self) -> u64 {
        0x0000_0037_3000_ffff
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.checked_add(i as u64);
            *b = at
                .and_then(|o| self.config.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = offset
                .checked_add(i as u64)
                .and_then(|o| self.config.get_mut(usize::try_from(o).ok()?))
            {
                *slot = *b;
            }
        }
    }

    fn activate(&mut self, _acked: u64, queues: Vec<QueueConfig>) -> Result<(), ActivateError> {
        assert!(queues.len() <= self.queues);
        for q in &queues {
            assert!(usize::from(q.index) < self.queues);
            assert!(q.size >= 1 && q.size <= 256, "queue size {}", q.size);
        }
        if self.fail_activate {
            return Err(ActivateError("refused".into()));
        }
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = false;
        self.needs_reset = false;
    }

    fn reset_pending(&self) -> bool {
        self.reset_pending > 0
    }

    fn queue_notify(&mut self, queue: u16) {
        assert!(usize::from(queue) < self.queues);
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }
}

const SIZES: [usize; 8] = [1, 2, 4, 8, 4, 2, 4, 4];

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(dev), Some(vectors)) = (input.u8(), input.u8()) else {
        return;
    };
    let device = FakeDevice {
        device_type: [1, 2, 26, 3][usize::from(dev & 3)],
        queues: usize::from((dev >> 2) & 3) + 1,
        fail_activate: dev & 16 != 0,
        config: [0xa5; 64],
        active: false,
        needs_reset: false,
        reset_pending: 0,
    };
    let queues = device.queues as u16;
    let Ok(mut pci) = VirtioPciDevice::new(device, u16::from(vectors % 70), Arc::new(NullMsiSink))
    else {
        return;
    };
    let bar_len = pci.layout().size;
    while let (Some(kind), Some(offset), Some(size), Some(value)) =
        (input.u8(), input.u16(), input.u8(), input.u64())
    {
        let size = SIZES[usize::from(size & 7)];
        let bytes = value.to_le_bytes();
        let mut buf = [0u8; 8];
        let offset = u64::from(offset);
        match kind % 10 {
            0 => pci.read_bar(0, offset % (bar_len + 16), &mut buf[..size]),
            1 => pci.write_bar(0, offset % (bar_len + 16), &bytes[..size]),
            2 => pci.read_config((offset % 4100) as u16, &mut buf[..size]),
            3 => pci.write_config((offset % 4100) as u16, &bytes[..size]),
            4 => pci.read_bar((kind >> 4) % 7, offset, &mut buf[..size]),
            5 => pci.write_bar((kind >> 4) % 7, offset, &bytes[..size]),
            6 => pci.check_device(),
            7 => pci.config_changed(),
            8 => {
                pci.device_mut().needs_reset = value & 1 != 0;
                pci.device_mut().reset_pending = (value >> 8) as u8 % 3;
                pci.check_device();
            }
            _ => pci.set_needs_reset(),
        }
        // Invariants: an active transport has DRIVER_OK.
        if pci.is_active() {
            assert!(
                pci.status() & STATUS_DRIVER_OK != 0,
                "active without DRIVER_OK"
            );
        }
        // Every queue and only those have a notify address (none while
        // BAR 0 is unassigned) and may have a vector.
        let notify = pci.queue_notify_addresses();
        assert!(notify.is_empty() || notify.len() == usize::from(queues));
        assert!(pci.queue_notify_address(queues).is_none());
        assert!(pci.queue_vector(queues).is_none());
    }
});
