//! The common configuration register file (`struct virtio_pci_common_cfg`,
//! virtio 1.2 §4.1.4.3): feature windows, device status with its reset and
//! FEATURES_OK / DRIVER_OK transitions, and the per-queue registers behind
//! `queue_select`.
//!
//! Reads are side-effect free and may have any size or alignment (a
//! snapshot of the register file is copied). Writes may also have any size:
//! each field they touch is updated read-modify-write and its write rule
//! applied, so a partial write to a 16-bit field behaves like a full write of
//! the merged value.

use crate::pci::MSIX_NO_VECTOR;

use super::{
    QueueConfig, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1,
};

/// Bytes of the register file (up to and including `queue_device`).
pub const COMMON_CFG_LEN: u64 = 0x38;

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const MSIX_CONFIG: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
pub(crate) const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// Field offsets and widths, in order.
const FIELDS: [(u64, u64); 16] = [
    (DEVICE_FEATURE_SELECT, 4),
    (DEVICE_FEATURE, 4),
    (DRIVER_FEATURE_SELECT, 4),
    (DRIVER_FEATURE, 4),
    (MSIX_CONFIG, 2),
    (NUM_QUEUES, 2),
    (DEVICE_STATUS, 1),
    (CONFIG_GENERATION, 1),
    (QUEUE_SELECT, 2),
    (QUEUE_SIZE, 2),
    (QUEUE_MSIX_VECTOR, 2),
    (QUEUE_ENABLE, 2),
    (QUEUE_NOTIFY_OFF, 2),
    (QUEUE_DESC, 8),
    (QUEUE_DRIVER, 8),
    (QUEUE_DEVICE, 8),
];

/// Status bits a driver may set.
const DRIVER_STATUS_BITS: u8 =
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK | STATUS_FEATURES_OK | STATUS_FAILED;

/// What the transport must do after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing.
    None,
    /// The driver wrote 0 to `device_status`.
    Reset,
    /// The driver set DRIVER_OK after FEATURES_OK: activate the device.
    Activate,
    /// The driver set DRIVER_OK without FEATURES_OK: the device needs reset.
    Fail,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Queue {
    size: u16,
    msix_vector: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

/// The register file's state.
#[derive(Debug)]
pub(crate) struct CommonConfig {
    device_features: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    msix_config: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    max_queue_size: u16,
    msix_vectors: u16,
    queues: Vec<Queue>,
}

impl CommonConfig {
    /// `num_queues` queues of at most `max_queue_size` entries (a power of
    /// two), `msix_vectors` vectors, offering `device_features`.
    pub(crate) fn new(
        device_features: u64,
        num_queues: u16,
        max_queue_size: u16,
        msix_vectors: u16,
    ) -> Self {
        let queue = Queue {
            size: max_queue_size,
            msix_vector: MSIX_NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        };
        Self {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            msix_config: MSIX_NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            max_queue_size,
            msix_vectors,
            queues: vec![queue; usize::from(num_queues)],
        }
    }

    /// Back to the state after construction; the generation counter keeps
    /// counting.
    pub(crate) fn reset(&mut self) {
        let generation = self.config_generation;
        *self = Self::new(
            self.device_features,
            self.queues.len() as u16,
            self.max_queue_size,
            self.msix_vectors,
        );
        self.config_generation = generation;
    }

    pub(crate) fn status(&self) -> u8 {
        self.status
    }

    pub(crate) fn set_status_bits(&mut self, bits: u8) {
        self.status |= bits;
    }

    pub(crate) fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub(crate) fn msix_config(&self) -> u16 {
        self.msix_config
    }

    pub(crate) fn bump_generation(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// The enabled queues, as the device is activated with them.
    pub(crate) fn enabled_queues(&self) -> Vec<QueueConfig> {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.enabled)
            .map(|(i, q)| QueueConfig {
                index: i as u16,
                size: q.size,
                desc_table: q.desc,
                avail_ring: q.driver,
                used_ring: q.device,
                msix_vector: q.msix_vector,
            })
            .collect()
    }

    /// The vector of queue `index` (`MSIX_NO_VECTOR` if none or no queue).
    pub(crate) fn queue_vector(&self, index: u16) -> u16 {
        self.queues
            .get(usize::from(index))
            .map_or(MSIX_NO_VECTOR, |q| q.msix_vector)
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The value of the field at `offset` (a field start).
    fn field(&self, offset: u64) -> u64 {
        let q = self.selected();
        match offset {
            DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            MSIX_CONFIG => u64::from(self.msix_config),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => u64::from(self.status),
            CONFIG_GENERATION => u64::from(self.config_generation),
            QUEUE_SELECT => u64::from(self.queue_select),
            // A queue that does not exist reads as size 0 (unavailable).
            QUEUE_SIZE => q.map_or(0, |q| u64::from(q.size)),
            QUEUE_MSIX_VECTOR => q.map_or(u64::from(MSIX_NO_VECTOR), |q| u64::from(q.msix_vector)),
            QUEUE_ENABLE => q.map_or(0, |q| u64::from(q.enabled)),
            QUEUE_NOTIFY_OFF => q.map_or(0, |_| u64::from(self.queue_select)),
            QUEUE_DESC => q.map_or(0, |q| q.desc),
            QUEUE_DRIVER => q.map_or(0, |q| q.driver),
            QUEUE_DEVICE => q.map_or(0, |q| q.device),
            _ => 0,
        }
    }

    /// A read of any size at any offset; bytes outside the register file
    /// read 0.
    pub(crate) fn read(&self, offset: u64, data: &mut [u8]) {
        let mut snapshot = [0u8; COMMON_CFG_LEN as usize];
        for (off, len) in FIELDS {
            let v = self.field(off).to_le_bytes();
            snapshot[off as usize..(off + len) as usize].copy_from_slice(&v[..len as usize]);
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| snapshot.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    /// A write of any size at any offset; returns what the transport must
    /// do. Bytes outside the register file are dropped.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let end = offset.saturating_add(data.len() as u64);
        let mut action = Action::None;
        for (off, len) in FIELDS {
            let (lo, hi) = (offset.max(off), end.min(off + len));
            if lo >= hi {
                continue;
            }
            let mut bytes = self.field(off).to_le_bytes();
            let src = &data[(lo - offset) as usize..(hi - offset) as usize];
            bytes[(lo - off) as usize..(hi - off) as usize].copy_from_slice(src);
            let value = u64::from_le_bytes(bytes) & (u64::MAX >> (64 - 8 * len));
            // A partial write to half of a 64-bit field is a normal access.
            match self.write_field(off, value) {
                Action::None => {}
                a => action = a,
            }
        }
        action
    }

    fn write_field(&mut self, offset: u64, value: u64) -> Action {
        let features_locked = self.status & STATUS_FEATURES_OK != 0;
        let live = self.status & STATUS_DRIVER_OK != 0;
        match offset {
            DEVICE_FEATURE_SELECT => self.device_feature_select = value as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = value as u32,
            DRIVER_FEATURE if !features_locked => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
                _ => {}
            },
            MSIX_CONFIG => self.msix_config = self.valid_vector(value as u16),
            DEVICE_STATUS => return self.write_status(value as u8),
            QUEUE_SELECT => self.queue_select = value as u16,
            _ if live => {}
            QUEUE_SIZE => {
                let packed = self.driver_features & VIRTIO_F_RING_PACKED != 0;
                let max = self.max_queue_size;
                if let Some(q) = self.selected_unlocked() {
                    let size = value as u16;
                    if size != 0 && size <= max && (packed || size.is_power_of_two()) {
                        q.size = size;
                    }
                }
            }
            QUEUE_MSIX_VECTOR => {
                let v = self.valid_vector(value as u16);
                if let Some(q) = self.selected_unlocked() {
                    q.msix_vector = v;
                }
            }
            // Only 1 may be written (0 is for queue reset, not offered).
            QUEUE_ENABLE if value == 1 => {
                if let Some(q) = self.selected_unlocked() {
                    q.enabled = true;
                }
            }
            QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE => {
                if let Some(q) = self.selected_unlocked() {
                    match offset {
                        QUEUE_DESC => q.desc = value,
                        QUEUE_DRIVER => q.driver = value,
                        _ => q.device = value,
                    }
                }
            }
            _ => {}
        }
        Action::None
    }

    /// The selected queue, if it exists and is not enabled yet.
    fn selected_unlocked(&mut self) -> Option<&mut Queue> {
        self.queues
            .get_mut(usize::from(self.queue_select))
            .filter(|q| !q.enabled)
    }

    /// A vector the table has, else NO_VECTOR (which the driver reads back
    /// to learn the mapping failed).
    fn valid_vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            MSIX_NO_VECTOR
        }
    }

    fn write_status(&mut self, value: u8) -> Action {
        if value == 0 {
            return Action::Reset;
        }
        // Bits only accumulate until a reset; DEVICE_NEEDS_RESET is the
        // device's to set.
        let new = value & DRIVER_STATUS_BITS & !self.status;
        self.status |= new;
        if new & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            self.status &= !STATUS_FEATURES_OK;
        }
        if new & STATUS_DRIVER_OK != 0 {
            if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DEVICE_NEEDS_RESET != 0
            {
                return Action::Fail;
            }
            return Action::Activate;
        }
        Action::None
    }

    /// FEATURES_OK holds when the driver took only offered features and
    /// VERSION_1.
    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }
}

#[cfg(test)]
mod tests;
