//! [`VirtioPciDevice`]: PCI identity, the capability list, BAR 0 decoding and
//! the interrupt paths of one virtio device.

use std::sync::Arc;

use log::{debug, warn};
use lograte::RateLimited;
use thiserror::Error;

use crate::pci::{
    BarKind, ConfigError, MsiSink, MsixConfig, MsixError, PciConfig, PciDevice, PciHeader,
    MSIX_CAP_ID, MSIX_NO_VECTOR,
};

use super::common_cfg::{Action, CommonConfig, COMMON_CFG_LEN, DEVICE_STATUS};
use super::{
    VirtioDevice, ISR_CONFIG, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK,
    TRANSPORT_UNSUPPORTED_FEATURES, VIRTIO_F_VERSION_1,
};

/// Red Hat / virtio vendor ID.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are this plus the device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// The BAR holding every region.
pub const VIRTIO_PCI_BAR: u8 = 0;
/// Bytes between two queues' notify addresses.
pub const VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Queues the notify region (one page) has room for.
pub const VIRTIO_PCI_MAX_QUEUES: usize =
    (REGION_SIZE / VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER as u64) as usize;

/// `cfg_type` of the common configuration capability.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notify capability.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR capability.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device configuration capability.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of the PCI configuration access capability.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;

const VENDOR_CAP_ID: u8 = 0x09;
const SUBSYSTEM_ID: u16 = 0x1100;
const REGION_SIZE: u64 = 0x1000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const NOTIFY_OFFSET: u64 = 0x3000;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of `pci_cfg_data` inside the PCI_CFG capability.
const PCI_CFG_DATA: usize = 16;

/// Errors creating the transport.
#[derive(Debug, Error)]
pub enum VirtioPciError {
    /// The notify region has room for 1..=1024 queues.
    #[error("{0} queues requested, 1..=1024 are possible")]
    QueueCount(usize),
    /// Queue sizes are powers of two up to 32768.
    #[error("maximum queue size {0} is not a power of two")]
    QueueSize(u16),
    /// Device types fit in the modern device ID range 0x1040..=0x107f.
    #[error("virtio device type {0} has no modern PCI device ID")]
    DeviceType(u32),
    /// The MSI-X table could not be built.
    #[error("cannot set up MSI-X")]
    Msix(#[source] MsixError),
    /// The configuration space could not be built.
    #[error("cannot build the PCI configuration space")]
    Config(#[source] ConfigError),
}

/// Where things are in BAR 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarLayout {
    /// Offset of the MSI-X table.
    pub msix_table: u64,
    /// Offset of the MSI-X PBA.
    pub msix_pba: u64,
    /// BAR size (a power of two).
    pub size: u64,
}

impl BarLayout {
    fn new(msix: &MsixConfig) -> Self {
        let page = |n: u64| n.div_ceil(REGION_SIZE) * REGION_SIZE;
        let msix_pba = MSIX_TABLE_OFFSET + page(msix.table_len());
        let size = (msix_pba + page(msix.pba_len())).next_power_of_two();
        Self {
            msix_table: MSIX_TABLE_OFFSET,
            msix_pba,
            size,
        }
    }
}

/// The PCI class code Linux and firmware expect for a device type.
fn class_code(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_00_00,     // network, Ethernet
        2 | 8 => 0x01_80_00, // block, SCSI: mass storage, other
        26 => 0x01_80_00,    // fs: mass storage, other
        3 => 0x07_80_00,     // console: communication, other
        _ => 0xff_00_00,     // unassigned
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice<D: VirtioDevice> {
    device: D,
    config: PciConfig,
    common: CommonConfig,
    msix: MsixConfig,
    layout: BarLayout,
    isr: u8,
    active: bool,
    /// The status when the driver last wrote 0: what `device_status` reads
    /// while the device finishes that reset elsewhere.
    status_before_reset: u8,
    num_queues: u16,
    msix_cap: usize,
    pci_cfg_cap: usize,
    guest_errors: RateLimited,
}

impl<D: VirtioDevice> std::fmt::Debug for VirtioPciDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("device_type", &self.device.device_type())
            .field("status", &self.common.status())
            .field("active", &self.active)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    // cap_len counts the ID and next bytes too.
    let mut body = vec![(16 + extra.len()) as u8, cfg_type, VIRTIO_PCI_BAR, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    /// Wraps `device` with `msix_vectors` MSI-X vectors (typically one per
    /// queue plus one for configuration changes) delivered to `sink`.
    pub fn new(
        device: D,
        msix_vectors: u16,
        sink: Arc<dyn MsiSink>,
    ) -> Result<Self, VirtioPciError> {
        let num_queues = device.num_queues();
        if num_queues == 0 || num_queues > VIRTIO_PCI_MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(num_queues));
        }
        let max = device.max_queue_size();
        if !max.is_power_of_two() {
            return Err(VirtioPciError::QueueSize(max));
        }
        let device_type = device.device_type();
        let device_id = u16::try_from(device_type)
            .ok()
            .filter(|t| *t < 0x40)
            .ok_or(VirtioPciError::DeviceType(device_type))?
            + VIRTIO_PCI_DEVICE_ID_BASE;
        let msix = MsixConfig::new(msix_vectors, sink).map_err(VirtioPciError::Msix)?;
        let layout = BarLayout::new(&msix);
        let mut config = PciConfig::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision: 1,
            class_code: class_code(device_type),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: SUBSYSTEM_ID,
            interrupt_pin: 0,
        });
        config
            .add_bar(
                VIRTIO_PCI_BAR,
                BarKind::Memory64 {
                    prefetchable: false,
                },
                layout.size,
            )
            .map_err(VirtioPciError::Config)?;
        let notify_len = (num_queues as u64 * u64::from(VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER)).max(4);
        let caps = [
            vendor_cap(
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_OFFSET,
                COMMON_CFG_LEN,
                &[],
            ),
            vendor_cap(
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                notify_len,
                &VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
            vendor_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, &[]),
            vendor_cap(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CFG_OFFSET,
                REGION_SIZE,
                &[],
            ),
        ];
        for body in caps {
            config
                .add_capability(VENDOR_CAP_ID, &body, &vec![0; body.len()])
                .map_err(VirtioPciError::Config)?;
        }
        // PCI_CFG: bar, offset, length and data are the driver's to write.
        let body = vendor_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, &[0; 4]);
        let mut wmask = vec![0u8; body.len()];
        wmask[2] = 0xff;
        wmask[6..].fill(0xff);
        let pci_cfg_cap = usize::from(
            config
                .add_capability(VENDOR_CAP_ID, &body, &wmask)
                .map_err(VirtioPciError::Config)?,
        );
        let (body, wmask) = msix.capability(
            VIRTIO_PCI_BAR,
            layout.msix_table as u32,
            VIRTIO_PCI_BAR,
            layout.msix_pba as u32,
        );
        let msix_cap = usize::from(
            config
                .add_capability(MSIX_CAP_ID, &body, &wmask)
                .map_err(VirtioPciError::Config)?,
        );
        let features = (device.features() | VIRTIO_F_VERSION_1) & !TRANSPORT_UNSUPPORTED_FEATURES;
        Ok(Self {
            common: CommonConfig::new(features, num_queues as u16, max, msix_vectors),
            device,
            config,
            msix,
            layout,
            isr: 0,
            active: false,
            status_before_reset: 0,
            num_queues: num_queues as u16,
            msix_cap,
            pci_cfg_cap,
            guest_errors: RateLimited::default(),
        })
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device behind the transport, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The MSI-X state (vectors, masks), for the VMM's irqfd wiring.
    pub fn msix(&self) -> &MsixConfig {
        &self.msix
    }

    /// Where the regions are in BAR 0.
    pub fn layout(&self) -> BarLayout {
        self.layout
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.common.status()
    }

    /// Whether the device was activated and not reset since.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The MSI-X vector the driver gave `queue`, if any.
    pub fn queue_vector(&self, queue: u16) -> Option<u16> {
        Some(self.common.queue_vector(queue)).filter(|v| *v != MSIX_NO_VECTOR)
    }

    /// The guest-physical address a driver writes to notify `queue`: BAR 0
    /// base + notify offset + `queue_notify_off` × multiplier. `None` when
    /// the queue does not exist or BAR 0 is unassigned. Where the VMM
    /// registers the queue's ioeventfd (again after a [`BarChange`] of BAR
    /// 0).
    ///
    /// [`BarChange`]: crate::pci::BarChange
    pub fn queue_notify_address(&self, queue: u16) -> Option<u64> {
        if queue >= self.num_queues {
            return None;
        }
        let base = self
            .config
            .bar_address(VIRTIO_PCI_BAR)
            .filter(|b| *b != 0)?;
        base.checked_add(
            NOTIFY_OFFSET + u64::from(queue) * u64::from(VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER),
        )
    }

    /// Every queue's notify address, see
    /// [`queue_notify_address`](Self::queue_notify_address).
    pub fn queue_notify_addresses(&self) -> Vec<(u16, u64)> {
        (0..self.num_queues)
            .filter_map(|q| Some((q, self.queue_notify_address(q)?)))
            .collect()
    }

    /// The device configuration changed (e.g. a disk was resized): bump
    /// `config_generation` and send a configuration interrupt.
    pub fn config_changed(&mut self) {
        self.common.bump_generation();
        self.config_interrupt();
    }

    /// The device cannot go on (its backend died): set DEVICE_NEEDS_RESET
    /// and send a configuration interrupt; the driver resets the device.
    pub fn set_needs_reset(&mut self) {
        if self.common.status() & STATUS_DEVICE_NEEDS_RESET == 0 {
            self.common.set_status_bits(STATUS_DEVICE_NEEDS_RESET);
            self.config_interrupt();
        }
    }

    /// Sets DEVICE_NEEDS_RESET if the device says it cannot go on (see
    /// [`VirtioDevice::needs_reset`]). Called after every access that
    /// reaches the device; the VMM calls it too when it learns of a
    /// backend's death by other means (its socket hung up).
    pub fn check_device(&mut self) {
        if self.device.needs_reset() {
            self.set_needs_reset();
        }
    }

    fn config_interrupt(&mut self) {
        self.isr |= ISR_CONFIG;
        let vector = self.common.msix_config();
        if vector != MSIX_NO_VECTOR {
            self.msix.trigger(vector);
        }
    }

    fn guest_error(&self, what: std::fmt::Arguments<'_>) {
        if let Some(n) = self.guest_errors.hit() {
            debug!(
                "virtio-pci type {}: {what} ({n} times)",
                self.device.device_type()
            );
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            Action::None => {}
            Action::Reset => {
                self.status_before_reset = self.common.status();
                self.device.reset();
                self.common.reset();
                self.isr = 0;
                self.active = false;
            }
            Action::Activate => {
                let queues = self.common.enabled_queues();
                match self.device.activate(self.common.driver_features(), queues) {
                    Ok(()) => {
                        self.active = true;
                        self.check_device();
                    }
                    Err(e) => {
                        warn!(
                            "virtio-pci type {}: {e}: {}",
                            self.device.device_type(),
                            e.0
                        );
                        self.set_needs_reset();
                    }
                }
            }
            Action::Fail => {
                self.guest_error(format_args!("DRIVER_OK without FEATURES_OK"));
                self.set_needs_reset();
            }
        }
    }

    /// While the device finishes a reset on another thread
    /// ([`VirtioDevice::reset_pending`]) and the driver has written nothing
    /// since, `device_status` (in a read of the common configuration at
    /// `offset`) reads as before the reset: virtio 1.2 §4.1.4.3.2, the
    /// device presents 0 once the reset is done, and the driver waits for
    /// that before it sets the device up again.
    fn show_reset_in_progress(&self, offset: u64, data: &mut [u8]) {
        if self.status_before_reset == 0
            || self.common.status() != 0
            || !self.device.reset_pending()
        {
            return;
        }
        let byte = DEVICE_STATUS
            .checked_sub(offset)
            .and_then(|i| data.get_mut(usize::try_from(i).ok()?));
        if let Some(b) = byte {
            *b = self.status_before_reset;
        }
    }

    fn isr_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = self.isr;
                self.isr = 0;
            }
        }
    }

    fn notify(&mut self, offset: u64) {
        let queue = offset / u64::from(VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER);
        if queue >= u64::from(self.num_queues) {
            self.guest_error(format_args!(
                "notify of queue {queue}, which does not exist"
            ));
        } else if !self.active || self.common.status() & STATUS_DRIVER_OK == 0 {
            self.guest_error(format_args!("notify of queue {queue} before DRIVER_OK"));
        } else {
            self.device.queue_notify(queue as u16);
            self.check_device();
        }
    }

    /// The PCI_CFG window: `(offset, length)` in BAR 0, when the driver set
    /// a usable one.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap;
        let bar = self.config.read_u8(cap + 4);
        let offset = u64::from(self.config.read_u32(cap + 8));
        let length = self.config.read_u32(cap + 12) as usize;
        let ok = bar == VIRTIO_PCI_BAR
            && matches!(length, 1 | 2 | 4)
            && offset % length as u64 == 0
            && offset + length as u64 <= self.layout.size;
        // An unset window (length 0) is not an error: lspci reads the field.
        if !ok && length != 0 {
            self.guest_error(format_args!(
                "PCI_CFG window bar {bar} offset {offset:#x} length {length}"
            ));
        }
        ok.then_some((offset, length))
    }

    fn touches(offset: usize, len: usize, start: usize, field_len: usize) -> bool {
        offset < start + field_len && start < offset + len
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPciDevice<D> {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        let offset = usize::from(offset);
        let data_field = self.pci_cfg_cap + PCI_CFG_DATA;
        if Self::touches(offset, data.len(), data_field, 4) {
            let mut window = [0u8; 4];
            if let Some((bar_offset, length)) = self.pci_cfg_window() {
                self.read_bar(VIRTIO_PCI_BAR, bar_offset, &mut window[..length]);
            }
            self.config.set_bytes(data_field, &window);
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        let offset = usize::from(offset);
        self.config.write(offset, data);
        let control = self.msix_cap + 2;
        if Self::touches(offset, data.len(), control, 2) {
            self.msix.set_control(self.config.read_u16(control));
        }
        let data_field = self.pci_cfg_cap + PCI_CFG_DATA;
        if Self::touches(offset, data.len(), data_field, 4) {
            if let Some((bar_offset, length)) = self.pci_cfg_window() {
                let mut window = [0u8; 4];
                self.config.read(data_field, &mut window);
                self.write_bar(VIRTIO_PCI_BAR, bar_offset, &window[..length]);
            }
        }
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar != VIRTIO_PCI_BAR {
            data.fill(0xff);
            return;
        }
        let (table, pba) = (self.layout.msix_table, self.layout.msix_pba);
        match offset {
            o if o < ISR_OFFSET => {
                self.common.read(o - COMMON_OFFSET, data);
                self.show_reset_in_progress(o - COMMON_OFFSET, data);
            }
            o if o < DEVICE_CFG_OFFSET => self.isr_read(o - ISR_OFFSET, data),
            o if o < NOTIFY_OFFSET => {
                data.fill(0);
                self.device.read_config(o - DEVICE_CFG_OFFSET, data);
                self.check_device();
            }
            o if o >= table && o < pba => self.msix.read_table(o - table, data),
            o if o >= pba => self.msix.read_pba(o - pba, data),
            _ => data.fill(0),
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != VIRTIO_PCI_BAR {
            return;
        }
        let (table, pba) = (self.layout.msix_table, self.layout.msix_pba);
        match offset {
            o if o < ISR_OFFSET => self.common_write(o - COMMON_OFFSET, data),
            o if o < DEVICE_CFG_OFFSET => {
                self.guest_error(format_args!("write to the read-only ISR"));
            }
            o if o < NOTIFY_OFFSET => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data);
                self.check_device();
            }
            o if o < MSIX_TABLE_OFFSET => self.notify(o - NOTIFY_OFFSET),
            o if o >= table && o < pba => self.msix.write_table(o - table, data),
            o => self.msix.write_pba(o - pba, data),
        }
    }
}

#[cfg(test)]
mod tests;
