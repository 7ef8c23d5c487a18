//! The i8042 on ports 0x60..0x65: its reset command (0xfe on 0x64) ends
//! the VM with [`VmEvent::Reset`].

use std::io;
use std::sync::mpsc::Sender;

use vm_superio::{I8042Device, Trigger};

use super::{read_first_byte, write_first_byte};
use crate::bus::BusDevice;
use crate::event::VmEvent;

pub const I8042_PORT: u64 = 0x60;

/// Sends one [`VmEvent`] to the VM's main loop.
pub struct EventTrigger {
    events: Sender<VmEvent>,
    event: VmEvent,
}

impl Trigger for EventTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.events
            .send(self.event.clone())
            .map_err(|_| io::Error::other("the VM is gone"))
    }
}

/// The i8042 on ports 0x60..0x65: command 0xfe on 0x64 resets the machine.
pub struct I8042 {
    dev: I8042Device<EventTrigger>,
}

impl I8042 {
    pub fn new(events: Sender<VmEvent>) -> Self {
        I8042 {
            dev: I8042Device::new(EventTrigger {
                events,
                event: VmEvent::Reset,
            }),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_first_byte(data, 0, || self.dev.read(offset as u8));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        write_first_byte(data, |value| {
            if let Err(e) = self.dev.write(offset as u8, value) {
                log::warn!("i8042: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn i8042_reset() {
        let (tx, rx) = channel();
        let mut kbd = I8042::new(tx);
        kbd.write(4, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reset)));
    }
}
