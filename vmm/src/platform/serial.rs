//! COM1: the 8250 UART (`vm-superio`) on port 0x3f8, its IRQ 4 raised
//! through an irqfd; output to stdout, a file, a Unix socket's client, or
//! nowhere.

use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::{read_first_byte, write_first_byte};
use crate::bus::BusDevice;
use crate::cli::SerialConfig;

pub use crate::layout::{COM1_IRQ, COM1_PORT};

/// Errors of setting COM1 up.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("serial output file {path}")]
    SerialFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("serial socket {path}")]
    SerialSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating the serial interrupt eventfd")]
    EventFd(#[source] io::Error),
}

/// An interrupt line raised by writing an eventfd registered as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

type SerialOut = Box<dyn Write + Send>;

/// COM1.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, SerialOut>,
}

impl SerialDevice {
    /// The UART writing where `config` says; its interrupt eventfd is
    /// `serial.irq()` (register it as an irqfd on [`COM1_IRQ`]). A file is
    /// truncated, or with `append` (the same VM rebooted) written on.
    pub fn new(config: &SerialConfig, append: bool) -> Result<Self, SerialError> {
        let out: SerialOut = match config {
            SerialConfig::Stdio => Box::new(io::stdout()),
            SerialConfig::Off => Box::new(io::sink()),
            SerialConfig::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .append(append)
                    .truncate(!append)
                    .open(path)
                    .map_err(|source| SerialError::SerialFile {
                        path: path.clone(),
                        source,
                    })?,
            ),
            SerialConfig::Socket(path) => Box::new(SocketOut::listen(path)?),
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        Ok(SerialDevice {
            serial: Serial::new(IrqTrigger(irq), out),
        })
    }

    pub fn irq(&self) -> &EventFd {
        &self.serial.interrupt_evt().0
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_first_byte(data, 0, || self.serial.read(offset as u8));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_first_byte(data, |value| {
            if let Err(e) = self.serial.write(offset as u8, value) {
                log::debug!("serial: {e:?}");
            }
        });
    }
}

/// Serial output to the client of a listening Unix socket (one at a time;
/// output with no client is dropped).
struct SocketOut {
    client: Arc<Mutex<Option<UnixStream>>>,
}

impl SocketOut {
    fn listen(path: &Path) -> Result<Self, SerialError> {
        let err = |source| SerialError::SerialSocket {
            path: path.to_path_buf(),
            source,
        };
        if UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        let client = Arc::new(Mutex::new(None));
        let slot = client.clone();
        std::thread::Builder::new()
            .name("serial-socket".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
                }
            })
            .map_err(err)?;
        Ok(SocketOut { client })
    }
}

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stream) = client.as_mut() {
            if stream.write_all(buf).is_err() {
                *client = None;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
