//! ACPI power management: the PM1a event and control blocks (S5 powers
//! off, the power button raises the SCI) and the PM timer, at the ports the
//! FADT declares ([`acpi`]).

use std::sync::mpsc::Sender;
use std::time::Instant;

use crate::acpi;
use crate::bus::BusDevice;
use crate::event::VmEvent;

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
/// GBL_EN in PM1_EN: the OS enables the global-lock release event. No
/// firmware ever holds the lock (the FACS's), so it never fires, but the
/// bit must read back as written or Linux disables the global lock with
/// "Could not enable GlobalLock event".
const PM1_GBL_EN: u16 = 1 << 5;
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
            EN => self.en = with_byte(self.en, i, b) & (PM1_EVENTS | PM1_GBL_EN),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::sync::{Arc, Mutex};

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
    fn pm1_en_keeps_gbl_en_and_the_power_button_but_nothing_else() {
        let (tx, _rx) = channel();
        let mut pm = AcpiPm::new(tx);
        pm.write(EN, &0xffffu16.to_le_bytes());
        let mut b = [0u8; 2];
        pm.read(EN, &mut b);
        assert_eq!(u16::from_le_bytes(b), PM1_PWRBTN | PM1_GBL_EN);
        // Byte writes: the low byte alone clears GBL_EN, keeps PWRBTN_EN.
        pm.write(EN, &[0]);
        pm.read(EN, &mut b);
        assert_eq!(u16::from_le_bytes(b), PM1_PWRBTN);
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
}
