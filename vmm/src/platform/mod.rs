//! The legacy platform devices on the port-I/O bus, each a
//! [`BusDevice`](crate::bus::BusDevice):
//!
//! - [`serial`]: the 8250 UART on COM1, IRQ 4 through an irqfd.
//! - [`i8042`]: its reset command ends the VM.
//! - [`pm`]: the ACPI PM1 blocks (S5 powers off, the power button's SCI)
//!   and the ACPI PM timer.
//! - [`cmos`]: the CMOS RTC (the host's wall clock).
//! - [`debug`]: the debug ports 0x80 / 0x402.
//!
//! They tell the VM's main loop about a power-off or reset through a
//! [`VmEvent`](crate::event::VmEvent) sender; nothing here knows the VM.

pub mod cmos;
pub mod debug;
pub mod i8042;
pub mod pm;
pub mod serial;

pub use cmos::{Cmos, CMOS_PORT};
pub use debug::{DebugPort, DebugPortAt, DEBUGCON_PORT, POST_PORT};
pub use i8042::{I8042, I8042_PORT};
pub use pm::{AcpiPm, PmTimer, SciLine};
pub use serial::{SerialDevice, SerialError, COM1_IRQ, COM1_PORT};

/// A read of any size from a device of 8-bit registers (the UART, the
/// i8042, CMOS): the first byte is the register `read` gives, the rest
/// `fill`; an empty access reads no register.
fn read_first_byte(data: &mut [u8], fill: u8, read: impl FnOnce() -> u8) {
    data.fill(fill);
    if let Some(first) = data.first_mut() {
        *first = read();
    }
}

/// A write of any size to a device of 8-bit registers: only its first byte
/// reaches `write`; an empty access writes nothing.
fn write_first_byte(data: &[u8], write: impl FnOnce(u8)) {
    if let Some(&value) = data.first() {
        write(value);
    }
}
