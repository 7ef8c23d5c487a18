//! The PCI bus on the VMM's buses: the configuration ports 0xcf8..0xd00
//! (with the reset control register at 0xcf9), the ECAM window, and the
//! BAR windows (32-bit, 64-bit above RAM, port I/O), all served by one
//! [`devices::pci::PciBus`]. After every configuration write the BAR moves
//! ([`PciBus::take_bar_changes`]) are applied to the registered ioeventfds
//! ([`IoEvents`]), so a queue kick lands in its eventfd wherever the guest
//! puts the BAR.

use std::io;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::pci::{AddressWindow, AllocError, BarAllocator, BarChange, PciAddress, PciBus};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, BusDevice, BusError};
use crate::event::VmEvent;
use crate::layout;

/// The configuration ports, 0xcf8..0xd00.
pub const CONFIG_PORTS: (u64, u64) = (0xcf8, 8);
/// The reset control register (byte access only).
pub const RESET_CONTROL_PORT: u64 = 0xcf9;
/// RST_CPU: a write with it set resets (SYS_RST, bit 1, picks hard/soft).
const RESET_CPU: u8 = 1 << 2;

/// Errors wiring the PCI bus.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("PCI BAR window")]
    Window(#[source] AllocError),
    #[error("PCI address range on the VMM bus")]
    Bus(#[from] BusError),
    #[error("registering an ioeventfd at {addr:#x}")]
    IoEvent {
        addr: u64,
        #[source]
        source: io::Error,
    },
}

/// Registers and unregisters ioeventfds; KVM, or a recorder in tests.
pub trait IoEventRegistrar: Send + Sync {
    fn register(&self, addr: u64, fd: &EventFd) -> io::Result<()>;
    fn unregister(&self, addr: u64, fd: &EventFd) -> io::Result<()>;
}

impl IoEventRegistrar for VmFd {
    /// An MMIO ioeventfd with no data match: KVM then matches writes of any
    /// length, which covers the 4-byte (and 2-byte) notify writes.
    fn register(&self, addr: u64, fd: &EventFd) -> io::Result<()> {
        self.register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
    fn unregister(&self, addr: u64, fd: &EventFd) -> io::Result<()> {
        self.unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

struct IoEvent {
    device: PciAddress,
    bar: u8,
    offset: u64,
    fd: EventFd,
    /// Where it is registered now.
    at: Option<u64>,
}

/// ioeventfds at offsets inside memory BARs, registered while the BAR
/// decodes and moved with it.
#[derive(Default)]
pub struct IoEvents {
    events: Vec<IoEvent>,
    /// Where each BAR that decodes is, from the changes seen so far.
    bars: Vec<(PciAddress, u8, u64)>,
}

impl IoEvents {
    /// Adds `fd` at `offset` into BAR `bar` of `device`; registered now if
    /// the BAR decodes.
    pub fn add(
        &mut self,
        reg: &dyn IoEventRegistrar,
        device: PciAddress,
        bar: u8,
        offset: u64,
        fd: EventFd,
    ) -> Result<(), PciError> {
        let base = self
            .bars
            .iter()
            .find(|(d, b, _)| *d == device && *b == bar)
            .map(|(_, _, base)| *base);
        let mut event = IoEvent {
            device,
            bar,
            offset,
            fd,
            at: None,
        };
        if let Some(addr) = base.and_then(|b| b.checked_add(offset)) {
            reg.register(addr, &event.fd)
                .map_err(|source| PciError::IoEvent { addr, source })?;
            event.at = Some(addr);
        }
        self.events.push(event);
        Ok(())
    }

    /// Follows BAR moves: unregisters at the old place, registers at the new.
    /// Failures are logged (a kick then still reaches the device as an MMIO
    /// exit, only slower).
    pub fn apply(&mut self, reg: &dyn IoEventRegistrar, changes: &[BarChange]) {
        for c in changes.iter().filter(|c| c.kind.is_memory()) {
            self.bars
                .retain(|(d, b, _)| !(*d == c.address && *b == c.bar));
            if let Some(base) = c.new {
                self.bars.push((c.address, c.bar, base));
            }
            for e in self
                .events
                .iter_mut()
                .filter(|e| e.device == c.address && e.bar == c.bar)
            {
                if let Some(old) = e.at.take() {
                    if let Err(err) = reg.unregister(old, &e.fd) {
                        log::warn!("ioeventfd at {old:#x}: unregister: {err}");
                    }
                }
                let Some(addr) = c.new.and_then(|b| b.checked_add(e.offset)) else {
                    continue;
                };
                match reg.register(addr, &e.fd) {
                    Ok(()) => e.at = Some(addr),
                    Err(err) => log::warn!("ioeventfd at {addr:#x}: {err}"),
                }
            }
        }
    }

    /// Where each event is registered (device, BAR, offset, address).
    pub fn registered(&self) -> Vec<(PciAddress, u8, u64, Option<u64>)> {
        self.events
            .iter()
            .map(|e| (e.device, e.bar, e.offset, e.at))
            .collect()
    }
}

/// The PCI bus, its ioeventfds, and what registers them.
pub struct PciHost {
    bus: Mutex<PciBus>,
    ioevents: Mutex<IoEvents>,
    registrar: Arc<dyn IoEventRegistrar>,
    reset: Sender<VmEvent>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The BAR allocator over the layout's windows.
pub fn bar_allocator(mmio64: (u64, u64)) -> Result<BarAllocator, PciError> {
    let w = |(start, size): (u64, u64)| AddressWindow::new(start, size).map_err(PciError::Window);
    BarAllocator::new(
        w((layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE))?,
        Some(w(mmio64)?),
        Some(w((layout::PCI_IO_START, layout::PCI_IO_SIZE))?),
    )
    .map_err(PciError::Window)
}

impl PciHost {
    /// A bus 0 with BARs from the layout's windows (`mmio64` above RAM).
    pub fn new(
        mmio64: (u64, u64),
        registrar: Arc<dyn IoEventRegistrar>,
        reset: Sender<VmEvent>,
    ) -> Result<Arc<Self>, PciError> {
        Ok(Arc::new(PciHost {
            bus: Mutex::new(PciBus::new(bar_allocator(mmio64)?)),
            ioevents: Mutex::new(IoEvents::default()),
            registrar,
            reset,
        }))
    }

    /// The bus, to plug devices (`add_device`) or look them up.
    pub fn bus(&self) -> MutexGuard<'_, PciBus> {
        lock(&self.bus)
    }

    /// Registers `fd` at `offset` into memory BAR `bar` of `device` (for a
    /// virtio queue: its notify address minus BAR 0's base), following the
    /// BAR wherever the guest puts it.
    pub fn add_ioevent(
        &self,
        device: PciAddress,
        bar: u8,
        offset: u64,
        fd: EventFd,
    ) -> Result<(), PciError> {
        lock(&self.ioevents).add(self.registrar.as_ref(), device, bar, offset, fd)
    }

    /// Where the ioeventfds are registered now.
    pub fn ioevents(&self) -> Vec<(PciAddress, u8, u64, Option<u64>)> {
        lock(&self.ioevents).registered()
    }

    /// Applies BAR moves after a configuration write. Takes the bus lock
    /// before the ioevents lock, as everywhere.
    fn after_config_write(&self, bus: &mut PciBus) {
        let changes = bus.take_bar_changes();
        if !changes.is_empty() {
            for c in &changes {
                log::debug!(
                    "PCI {}: BAR {} {:x?} -> {:x?}",
                    c.address,
                    c.bar,
                    c.old,
                    c.new
                );
            }
            lock(&self.ioevents).apply(self.registrar.as_ref(), &changes);
        }
    }

    /// Puts the configuration ports, the I/O BAR window, the ECAM window
    /// and the memory BAR windows on the VMM's buses.
    pub fn attach(
        self: &Arc<Self>,
        pio: &Bus,
        mmio: &Bus,
        mmio64: (u64, u64),
    ) -> Result<(), PciError> {
        let window = |kind, base| {
            Arc::new(Mutex::new(PciWindow {
                host: self.clone(),
                kind,
                base,
            }))
        };
        pio.insert(
            CONFIG_PORTS.0,
            CONFIG_PORTS.1,
            window(Window::ConfigPorts, CONFIG_PORTS.0),
        )?;
        pio.insert(
            layout::PCI_IO_START,
            layout::PCI_IO_SIZE,
            window(Window::IoBars, layout::PCI_IO_START),
        )?;
        mmio.insert(
            layout::PCI_MMCONFIG_START,
            layout::PCI_MMCONFIG_SIZE,
            window(Window::Ecam, layout::PCI_MMCONFIG_START),
        )?;
        mmio.insert(
            layout::PCI_MMIO32_START,
            layout::PCI_MMIO32_SIZE,
            window(Window::MemoryBars, layout::PCI_MMIO32_START),
        )?;
        mmio.insert(mmio64.0, mmio64.1, window(Window::MemoryBars, mmio64.0))?;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    ConfigPorts,
    IoBars,
    Ecam,
    MemoryBars,
}

/// One range of the PCI host on a VMM bus; `base` turns bus offsets back
/// into addresses.
struct PciWindow {
    host: Arc<PciHost>,
    kind: Window,
    base: u64,
}

impl BusDevice for PciWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let addr = self.base + offset;
        let served = match self.kind {
            Window::ConfigPorts if addr == RESET_CONTROL_PORT && data.len() == 1 => {
                // Reads back as zero: no reset in progress.
                data[0] = 0;
                true
            }
            Window::ConfigPorts | Window::IoBars => self.host.bus().pio_read(addr as u16, data),
            Window::Ecam => {
                self.host.bus().ecam_read(offset, data);
                true
            }
            Window::MemoryBars => self.host.bus().mmio_read(addr, data),
        };
        if !served {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let addr = self.base + offset;
        match self.kind {
            Window::ConfigPorts if addr == RESET_CONTROL_PORT && data.len() == 1 => {
                if is_reset(data[0]) {
                    log::info!(
                        "reset through the reset control register (0xcf9 <- {:#x})",
                        data[0]
                    );
                    let _ = self.host.reset.send(VmEvent::Reset);
                }
            }
            Window::ConfigPorts | Window::IoBars => {
                let mut bus = self.host.bus();
                bus.pio_write(addr as u16, data);
                self.host.after_config_write(&mut bus);
            }
            Window::Ecam => {
                let mut bus = self.host.bus();
                bus.ecam_write(offset, data);
                self.host.after_config_write(&mut bus);
            }
            Window::MemoryBars => {
                self.host.bus().mmio_write(addr, data);
            }
        }
    }
}

/// Whether a write of `value` to 0xcf9 resets the machine (RST_CPU set:
/// 0x6 hard, 0x4 soft; 0xe adds a full reset; 0x2 alone only selects).
pub fn is_reset(value: u8) -> bool {
    value & RESET_CPU != 0
}

#[cfg(test)]
mod tests;
