//! The CMOS RTC (MC146818) on ports 0x70 (index; bit 7 masks NMIs) and
//! 0x71 (data), as on every PC: Linux reads the wall clock from it at boot
//! (`mach_get_cmos_time`), with the century from the register the FADT
//! names ([`CENTURY`]). The clock is the host's wall clock (UTC) at each
//! read, in BCD and 24-hour mode; the update-in-progress bit never reads
//! set, so a reader never waits. Writes to the clock are ignored (the host
//! keeps time); the other NVRAM bytes are stored and read back.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{read_first_byte, write_first_byte};
use crate::acpi;
use crate::bus::BusDevice;

/// The base port: index at 0x70, data at 0x71.
pub const CMOS_PORT: u64 = 0x70;
/// The register holding the century (BCD), where the FADT says it is.
pub const CENTURY: u8 = acpi::CMOS_CENTURY;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
/// Status A: 32.768 kHz time base, 1024 Hz periodic rate; UIP (bit 7) clear.
const STATUS_A_VALUE: u8 = 0x26;
/// Status B: 24-hour mode (bit 1); BCD (bit 2 clear); no interrupts.
const STATUS_B_24H: u8 = 0x02;
/// Status D: valid RAM and time (VRT).
const STATUS_D_VRT: u8 = 0x80;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    /// 1 = Sunday .. 7 = Saturday, as the RTC counts.
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DateTime {
    /// The UTC date and time `secs` seconds after 1970-01-01 (the civil
    /// calendar algorithm of Howard Hinnant's `civil_from_days`).
    pub fn from_unix(secs: u64) -> DateTime {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Shift the epoch to 0000-03-01 so leap days end each era's year.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        DateTime {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday (5 in the RTC's count).
            weekday: ((days + 4) % 7) as u8 + 1,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

fn bcd(v: u32) -> u8 {
    let v = v % 100;
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Where the clock's time comes from (the host's clock; a fixed time in
/// tests).
pub type Clock = Box<dyn Fn() -> u64 + Send>;

/// Seconds since the epoch by the host's wall clock.
pub fn host_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The CMOS: 128 bytes of which the clock and status registers are live.
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    clock: Clock,
}

impl Cmos {
    /// A CMOS whose clock reads `clock`.
    pub fn new(clock: Clock) -> Self {
        Cmos {
            index: 0,
            nvram: [0; 128],
            clock,
        }
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let time = || DateTime::from_unix((self.clock)());
        match reg {
            SECONDS => bcd(time().second.into()),
            MINUTES => bcd(time().minute.into()),
            HOURS => bcd(time().hour.into()),
            WEEKDAY => bcd(time().weekday.into()),
            DAY => bcd(time().day.into()),
            MONTH => bcd(time().month.into()),
            YEAR => bcd(time().year),
            CENTURY => bcd(time().year / 100),
            STATUS_A => STATUS_A_VALUE,
            STATUS_B => STATUS_B_24H,
            // No interrupt flags are ever pending.
            STATUS_C => 0,
            STATUS_D => STATUS_D_VRT,
            r => self.nvram[usize::from(r & 0x7f)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY => {
                log::debug!("cmos: the guest set clock register {reg:#04x} to {value:#04x}; the host's clock stays");
            }
            STATUS_A | STATUS_B | STATUS_C | STATUS_D => {
                log::debug!("cmos: status register {reg:#04x} write {value:#04x} ignored");
            }
            r => self.nvram[usize::from(r & 0x7f)] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_first_byte(data, 0xff, || match offset {
            0 => self.index,
            _ => self.read_register(self.index),
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_first_byte(data, |value| match offset {
            // Bit 7 masks NMIs on real hardware; the register index is 7 bits.
            0 => self.index = value & 0x7f,
            _ => self.write_register(self.index, value),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_to_civil_date() {
        let t = DateTime::from_unix(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 5));
        // 2000-02-29T12:34:56Z, a Tuesday (3).
        let t = DateTime::from_unix(951_827_696);
        assert_eq!(
            t,
            DateTime {
                year: 2000,
                month: 2,
                day: 29,
                weekday: 3,
                hour: 12,
                minute: 34,
                second: 56
            }
        );
        // 2026-12-31T23:59:59Z, a Thursday (5).
        let t = DateTime::from_unix(1_798_761_599);
        assert_eq!((t.year, t.month, t.day, t.weekday), (2026, 12, 31, 5));
        assert_eq!((t.hour, t.minute, t.second), (23, 59, 59));
        // 2100 is not a leap year: Feb 28 is followed by Mar 1.
        let t = DateTime::from_unix(4_107_542_400);
        assert_eq!((t.year, t.month, t.day), (2100, 3, 1));
    }

    fn read(cmos: &mut Cmos, reg: u8) -> u8 {
        cmos.write(0, &[reg | 0x80]);
        let mut b = [0u8; 1];
        cmos.read(1, &mut b);
        b[0]
    }

    #[test]
    fn registers_read_the_clock_in_bcd() {
        // 2026-12-04T18:46:05Z, a Friday (6).
        let mut cmos = Cmos::new(Box::new(|| 1_796_409_965));
        let regs: Vec<u8> = [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY]
            .iter()
            .map(|&r| read(&mut cmos, r))
            .collect();
        assert_eq!(regs, [0x05, 0x46, 0x18, 0x06, 0x04, 0x12, 0x26, 0x20]);
        assert_eq!(read(&mut cmos, STATUS_A) & 0x80, 0, "UIP never set");
        assert_eq!(read(&mut cmos, STATUS_B), STATUS_B_24H);
        assert_eq!(read(&mut cmos, STATUS_D), STATUS_D_VRT);
        // The index reads back without the NMI bit.
        let mut b = [0u8; 1];
        cmos.read(0, &mut b);
        assert_eq!(b[0], STATUS_D);
    }

    #[test]
    fn nvram_keeps_what_is_written_and_the_clock_ignores_writes() {
        let mut cmos = Cmos::new(Box::new(|| 0));
        cmos.write(0, &[0x40]);
        cmos.write(1, &[0xa5]);
        assert_eq!(read(&mut cmos, 0x40), 0xa5);
        cmos.write(0, &[YEAR]);
        cmos.write(1, &[0x99]);
        assert_eq!(read(&mut cmos, YEAR), 0x70);
    }
}
