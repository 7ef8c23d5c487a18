//! The legacy devices on the port-I/O bus: the 8250 UART on COM1 (with its
//! IRQ 4 through an irqfd), the i8042 (whose reset command ends the VM), the
//! ACPI PM1 blocks (S5 powers off), the ACPI PM timer and the debug ports
//! 0x80 / 0x402. The CMOS RTC is in [`crate::cmos`].

use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi;
use crate::bus::BusDevice;
use crate::cli::SerialConfig;
use crate::vm::VmEvent;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_PORT: u64 = 0x60;
pub const POST_PORT: u64 = 0x80;
pub const DEBUGCON_PORT: u64 = 0x402;

/// Errors of the legacy devices' setup.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
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

type SerialOut = Box<dyn Write + Send>;

/// COM1.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, SerialOut>,
}

impl SerialDevice {
    /// The UART writing where `config` says; its interrupt eventfd is
    /// `serial.irq()` (register it as an irqfd on [`COM1_IRQ`]).
    pub fn new(config: &SerialConfig) -> Result<Self, LegacyError> {
        let out: SerialOut = match config {
            SerialConfig::Stdio => Box::new(io::stdout()),
            SerialConfig::Off => Box::new(io::sink()),
            SerialConfig::File(path) => Box::new(std::fs::File::create(path).map_err(
                |source| LegacyError::SerialFile {
                    path: path.clone(),
                    source,
                },
            )?),
            SerialConfig::Socket(path) => Box::new(SocketOut::listen(path)?),
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(LegacyError::EventFd)?;
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
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.serial.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            if let Err(e) = self.serial.write(offset as u8, value) {
                log::debug!("serial: {e:?}");
            }
        }
    }
}

/// Serial output to the client of a listening Unix socket (one at a time;
/// output with no client is dropped).
struct SocketOut {
    client: Arc<Mutex<Option<UnixStream>>>,
}

impl SocketOut {
    fn listen(path: &Path) -> Result<Self, LegacyError> {
        let err = |source| LegacyError::SerialSocket {
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
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.dev.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            if let Err(e) = self.dev.write(offset as u8, value) {
                log::warn!("i8042: {e}");
            }
        }
    }
}

/// Raises or lowers the SCI (GSI [`acpi::SCI_IRQ`], level-triggered).
pub type SciLine = Box<dyn FnMut(bool) + Send>;

/// The ACPI PM1a event and control blocks declared by the FADT
/// ([`acpi::PM1A_EVT_PORT`], [`acpi::PM1A_CNT_PORT`]): PM1a_STS
/// (write 1 to clear) and PM1a_EN at offsets 0 and 2, PM1a_CNT at 4. The
/// only event is the power button ([`AcpiPm::press_power_button`]); the SCI
/// is asserted while a status bit and its enable bit are both set.
pub struct AcpiPm {
    events: Sender<VmEvent>,
    sts: u16,
    en: u16,
    sci: Option<SciLine>,
    sci_level: bool,
}

const SLP_EN: u16 = 1 << 13;
const SCI_EN: u16 = 1;
/// PWRBTN_STS in PM1_STS, PWRBTN_EN in PM1_EN.
pub const PM1_PWRBTN: u16 = 1 << 8;
/// The status bits this device implements.
const PM1_EVENTS: u16 = PM1_PWRBTN;
const STS: u64 = 0;
const EN: u64 = 2;
const CNT: u64 = (acpi::PM1A_CNT_PORT - acpi::PM1A_EVT_PORT) as u64;

/// `reg` with byte `i` (0 or 1) replaced by `b`.
fn with_byte(reg: u16, i: u64, b: u8) -> u16 {
    let shift = 8 * i;
    (reg & !(0xff << shift)) | (u16::from(b) << shift)
}

impl AcpiPm {
    pub fn new(events: Sender<VmEvent>) -> Self {
        AcpiPm {
            events,
            sts: 0,
            en: 0,
            sci: None,
            sci_level: false,
        }
    }

    /// Drives `line` as the SCI.
    pub fn with_sci(mut self, line: SciLine) -> Self {
        self.sci = Some(line);
        self
    }

    /// The port range to insert it at.
    pub fn range() -> (u64, u64) {
        let base = u64::from(acpi::PM1A_EVT_PORT);
        let end = u64::from(acpi::PM1A_CNT_PORT) + u64::from(acpi::PM1A_CNT_LEN);
        (base, end - base)
    }

    /// Sets PWRBTN_STS; returns whether the guest enabled the event (and
    /// so the SCI is raised).
    pub fn press_power_button(&mut self) -> bool {
        self.sts |= PM1_PWRBTN;
        self.update_sci();
        self.en & PM1_PWRBTN != 0
    }

    /// PM1a_STS and PM1a_EN.
    pub fn registers(&self) -> (u16, u16) {
        (self.sts, self.en)
    }

    fn update_sci(&mut self) {
        let level = self.sts & self.en & PM1_EVENTS != 0;
        if level != self.sci_level {
            self.sci_level = level;
            if let Some(line) = self.sci.as_mut() {
                line(level);
            }
        }
    }

    fn read_byte(&self, offset: u64) -> u8 {
        let [lo, hi] = match offset & !1 {
            STS => self.sts,
            EN => self.en,
            // Always in ACPI mode.
            CNT => SCI_EN,
            _ => 0,
        }
        .to_le_bytes();
        if offset & 1 == 0 {
            lo
        } else {
            hi
        }
    }

    fn write_byte(&mut self, offset: u64, b: u8) {
        let i = offset & 1;
        match offset & !1 {
            // Write 1 to clear.
            STS => self.sts &= !(u16::from(b) << (8 * i)),
            EN => self.en = with_byte(self.en, i, b) & PM1_EVENTS,
            _ => {}
        }
    }

    fn write_cnt(&self, value: u16) {
        let slp_typ = (value >> 10) & 7;
        if value & SLP_EN != 0 {
            if slp_typ == acpi::S5_SLP_TYP {
                let _ = self.events.send(VmEvent::PowerOff);
            } else {
                log::warn!("acpi: sleep state type {slp_typ} is not supported");
            }
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_byte(offset + i as u64);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (CNT, [lo, hi, ..]) => self.write_cnt(u16::from_le_bytes([*lo, *hi])),
            (o, [hi]) if o == CNT + 1 => self.write_cnt(u16::from(*hi) << 8),
            _ => {
                for (i, &b) in data.iter().enumerate() {
                    self.write_byte(offset + i as u64, b);
                }
                self.update_sci();
            }
        }
    }
}

/// The ACPI power management timer the FADT declares at
/// [`acpi::PM_TMR_PORT`]: a free-running 24-bit counter at 3.579545 MHz.
/// Linux calibrates the TSC against it (there is no HPET) and keeps it as a
/// fallback clocksource.
pub struct PmTimer {
    start: Instant,
}

/// The PM timer's frequency in Hz.
pub const PM_TIMER_HZ: u128 = 3_579_545;

impl PmTimer {
    pub fn new() -> Self {
        PmTimer {
            start: Instant::now(),
        }
    }

    /// The counter `elapsed_ns` after it started (24 bits, wrapping).
    pub fn count_at(elapsed_ns: u128) -> u32 {
        (elapsed_ns * PM_TIMER_HZ / 1_000_000_000) as u32 & 0x00ff_ffff
    }
}

impl Default for PmTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for PmTimer {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let count = Self::count_at(self.start.elapsed().as_nanos()).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| count.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// Port 0x80 (POST codes) and 0x402 (debugcon): logged with the time since
/// the VMM started, so the guest's first port write times the boot.
pub struct DebugPort {
    start: Instant,
    line: Vec<u8>,
    seen_post: bool,
}

impl DebugPort {
    pub fn new(start: Instant) -> Self {
        DebugPort {
            start,
            line: Vec::new(),
            seen_post: false,
        }
    }

    /// Handles a write to `port`.
    pub fn write_port(&mut self, port: u64, value: u8) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if port == POST_PORT {
            if !self.seen_post {
                log::info!("guest wrote {value:#04x} to port 0x80 at {ms:.1} ms");
                self.seen_post = true;
            } else {
                log::debug!("port 0x80: {value:#04x} at {ms:.1} ms");
            }
        } else if value == b'\n' || self.line.len() >= 256 {
            log::info!(
                "debugcon at {ms:.1} ms: {}",
                String::from_utf8_lossy(&self.line).trim_end()
            );
            self.line.clear();
        } else {
            self.line.push(value);
        }
    }
}

/// One port of a shared [`DebugPort`].
pub struct DebugPortAt {
    pub port: u64,
    pub dev: Arc<Mutex<DebugPort>>,
}

impl BusDevice for DebugPortAt {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // QEMU's debugcon reads back 0xe9 so guests can detect it.
        data.fill(if self.port == DEBUGCON_PORT { 0xe9 } else { 0 });
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
        for &b in data {
            dev.write_port(self.port, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn s5_powers_off_other_states_do_not() {
        let (tx, rx) = channel();
        let mut pm = AcpiPm::new(tx);
        let cnt = u64::from(acpi::PM1A_CNT_PORT - acpi::PM1A_EVT_PORT);
        let mut b = [0u8; 2];
        pm.read(cnt, &mut b);
        assert_eq!(b, [1, 0]);
        pm.write(cnt, &((3 << 10) | SLP_EN).to_le_bytes());
        pm.write(cnt, &(5u16 << 10).to_le_bytes());
        assert!(rx.try_recv().is_err());
        pm.write(cnt, &((5 << 10) | SLP_EN).to_le_bytes());
        assert!(matches!(rx.try_recv(), Ok(VmEvent::PowerOff)));
    }

    #[test]
    fn the_power_button_sets_a_write_1_to_clear_status_and_drives_the_sci() {
        let (tx, _rx) = channel();
        let levels = Arc::new(Mutex::new(Vec::new()));
        let seen = levels.clone();
        let mut pm = AcpiPm::new(tx).with_sci(Box::new(move |l| seen.lock().unwrap().push(l)));
        // Not enabled: the status is set, no SCI.
        assert!(!pm.press_power_button());
        let mut b = [0u8; 2];
        pm.read(STS, &mut b);
        assert_eq!(u16::from_le_bytes(b), PM1_PWRBTN);
        assert!(levels.lock().unwrap().is_empty());
        // Enabling it with the status pending raises the SCI.
        pm.write(EN, &PM1_PWRBTN.to_le_bytes());
        assert_eq!(*levels.lock().unwrap(), [true]);
        pm.read(EN, &mut b);
        assert_eq!(u16::from_le_bytes(b), PM1_PWRBTN);
        // Writing 0 clears nothing; writing 1 clears it and lowers the SCI.
        pm.write(STS, &[0, 0]);
        assert_eq!(pm.registers().0, PM1_PWRBTN);
        pm.write(STS + 1, &[1]);
        assert_eq!(pm.registers().0, 0);
        assert_eq!(*levels.lock().unwrap(), [true, false]);
        // Enabled: a press raises it at once; a dword read sees STS and EN.
        assert!(pm.press_power_button());
        let mut d = [0u8; 4];
        pm.read(STS, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0100_0100);
        assert_eq!(*levels.lock().unwrap(), [true, false, true]);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz_in_24_bits() {
        assert_eq!(PmTimer::count_at(0), 0);
        assert_eq!(PmTimer::count_at(1_000_000_000), 3_579_545);
        // 2^24 ticks take about 4.687 s; then it wraps.
        let wrap_ns = (1u128 << 24) * 1_000_000_000 / PM_TIMER_HZ + 1;
        assert!(PmTimer::count_at(wrap_ns) < 4);
        // It counts up between reads, and reads are little-endian.
        let mut t = PmTimer::new();
        let mut a = [0u8; 4];
        t.read(0, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut b = [0u8; 4];
        t.read(0, &mut b);
        let (a, b) = (u32::from_le_bytes(a), u32::from_le_bytes(b));
        assert!(b.wrapping_sub(a) & 0xff_ffff >= 7_000, "{a} then {b}");
        assert_eq!(b >> 24, 0);
    }

    #[test]
    fn i8042_reset() {
        let (tx, rx) = channel();
        let mut kbd = I8042::new(tx);
        kbd.write(4, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reset)));
    }
}
