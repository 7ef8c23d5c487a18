//! PCI bus 0 through CF8/CFC, and one configuration read through the ECAM
//! window of the MCFG compared with the same read through CF8/CFC.

use core::ptr::read_volatile;

use crate::io::{in32, out32, serial, serial_hex, serial_hex_fixed};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

fn cf8_read(dev: u32, func: u32, reg: u32) -> u32 {
    out32(
        CONFIG_ADDRESS,
        (1 << 31) | (dev << 11) | (func << 8) | (reg & 0xfc),
    );
    in32(CONFIG_DATA)
}

fn print_bdf(dev: u32, func: u32) {
    serial(b"00:");
    serial_hex_fixed(dev as u64, 2);
    serial(b".");
    serial_hex_fixed(func as u64, 1);
}

/// Prints `pci 00:DD.F vvvv:dddd class cccc` for each function on bus 0.
pub fn enumerate() {
    for dev in 0..32 {
        for func in 0..8 {
            let id = cf8_read(dev, func, 0);
            if id & 0xffff == 0xffff {
                if func == 0 {
                    break;
                }
                continue;
            }
            let class = cf8_read(dev, func, 8) >> 16;
            serial(b"pci ");
            print_bdf(dev, func);
            serial(b" ");
            serial_hex_fixed((id & 0xffff) as u64, 4);
            serial(b":");
            serial_hex_fixed((id >> 16) as u64, 4);
            serial(b" class ");
            serial_hex_fixed(class as u64, 4);
            serial(b"\n");
            // Single-function device: no functions 1..8.
            let header_type = (cf8_read(dev, func, 0x0c) >> 16) & 0xff;
            if func == 0 && header_type & 0x80 == 0 {
                break;
            }
        }
    }
}

/// Reads 00:00.0's id dword through ECAM at `ecam` and through CF8/CFC.
pub fn check_ecam(ecam: u64) {
    if ecam == 0 {
        serial(b"ecam: no MCFG\n");
        return;
    }
    // SAFETY: the low 4 GiB are identity-mapped (uncached MMIO exits to the
    // VMM); the MCFG says the window is there.
    let via_ecam = unsafe { read_volatile(ecam as *const u32) };
    let via_cf8 = cf8_read(0, 0, 0);
    serial(b"ecam ");
    serial_hex(ecam);
    serial(b": 00:00.0 id ");
    serial_hex_fixed(via_ecam as u64, 8);
    if via_ecam == via_cf8 {
        serial(b" matches cf8\n");
    } else {
        serial(b" differs from cf8 ");
        serial_hex_fixed(via_cf8 as u64, 8);
        serial(b"\n");
    }
}
