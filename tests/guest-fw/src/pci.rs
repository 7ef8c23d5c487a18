//! PCI bus 0 through CF8/CFC, and one configuration read through the ECAM
//! window of the MCFG compared with the same read through CF8/CFC; memory
//! BARs for drivers: the firmware's (or VMM's) address if it assigned one,
//! else one this guest assigns from a window above every assigned BAR.

use core::ptr::read_volatile;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::io::{in32, out16, out32, serial, serial_hex, serial_hex_fixed};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Where this guest assigns BARs nobody assigned: from 0xc000_0000 (both
/// QEMU's q35 and our VMM put 32-bit BARs there), above the assigned ones.
const BAR_WINDOW: u64 = 0xc000_0000;
const BAR_WINDOW_END: u64 = 0xe000_0000;
static NEXT_BAR: AtomicU64 = AtomicU64::new(0);

fn select(dev: u32, func: u32, reg: u32) {
    out32(
        CONFIG_ADDRESS,
        (1 << 31) | (dev << 11) | (func << 8) | (reg & 0xfc),
    );
}

pub fn cf8_read(dev: u32, func: u32, reg: u32) -> u32 {
    select(dev, func, reg);
    in32(CONFIG_DATA)
}

pub fn cf8_write(dev: u32, func: u32, reg: u32, value: u32) {
    select(dev, func, reg);
    out32(CONFIG_DATA, value);
}

pub fn cf8_write16(dev: u32, func: u32, reg: u32, value: u16) {
    select(dev, func, reg);
    out16(CONFIG_DATA + (reg & 2) as u16, value);
}

/// Whether 00:dev.func exists.
pub fn present(dev: u32, func: u32) -> bool {
    cf8_read(dev, func, 0) & 0xffff != 0xffff
}

/// Whether device `dev` has functions 1..8.
pub fn multifunction(dev: u32) -> bool {
    (cf8_read(dev, 0, 0x0c) >> 16) & 0x80 != 0
}

/// The current address of memory BAR `bar` (0 if unassigned or I/O), and
/// whether it is 64-bit.
fn bar_address(dev: u32, func: u32, bar: u32) -> (u64, bool) {
    let reg = 0x10 + 4 * bar;
    let low = cf8_read(dev, func, reg);
    if low & 1 != 0 {
        return (0, false);
    }
    let is64 = (low >> 1) & 3 == 2;
    let high = if is64 && bar < 5 {
        cf8_read(dev, func, reg + 4) as u64
    } else {
        0
    };
    ((high << 32) | (low & !0xf) as u64, is64)
}

/// The first free address of the assignment window: above every memory
/// BAR already assigned inside it on bus 0.
fn window_start() -> u64 {
    let mut next = BAR_WINDOW;
    for dev in 0..32 {
        for func in 0..8 {
            if !present(dev, func) {
                if func == 0 {
                    break;
                }
                continue;
            }
            let mut bar = 0;
            while bar < 6 {
                let (addr, is64) = bar_address(dev, func, bar);
                if (BAR_WINDOW..BAR_WINDOW_END).contains(&addr) {
                    let size = bar_size(dev, func, bar, is64);
                    next = next.max(addr + size);
                }
                bar += if is64 { 2 } else { 1 };
            }
            if func == 0 && !multifunction(dev) {
                break;
            }
        }
    }
    next
}

/// The size of memory BAR `bar`, found by writing all ones (memory
/// decoding of the function is off meanwhile); the BAR is restored.
fn bar_size(dev: u32, func: u32, bar: u32, is64: bool) -> u64 {
    let reg = 0x10 + 4 * bar;
    let command = cf8_read(dev, func, 4) & 0xffff;
    cf8_write16(dev, func, 4, (command & !2) as u16);
    let low = cf8_read(dev, func, reg);
    cf8_write(dev, func, reg, !0);
    let mut mask = (cf8_read(dev, func, reg) & !0xf) as u64 | 0xffff_ffff_0000_0000;
    cf8_write(dev, func, reg, low);
    if is64 {
        let high = cf8_read(dev, func, reg + 4);
        cf8_write(dev, func, reg + 4, !0);
        mask = (mask & 0xffff_ffff) | ((cf8_read(dev, func, reg + 4) as u64) << 32);
        cf8_write(dev, func, reg + 4, high);
    }
    cf8_write16(dev, func, 4, command as u16);
    (!mask).wrapping_add(1)
}

/// The address of memory BAR `bar` of 00:dev.func; assigns one from the
/// window if it has none. 0 if it is an I/O BAR or does not fit.
pub fn memory_bar(dev: u32, func: u32, bar: u32) -> u64 {
    let (addr, is64) = bar_address(dev, func, bar);
    if addr != 0 || cf8_read(dev, func, 0x10 + 4 * bar) & 1 != 0 {
        return addr;
    }
    let size = bar_size(dev, func, bar, is64);
    if size == 0 || size > 1 << 28 {
        return 0;
    }
    if NEXT_BAR.load(Ordering::Relaxed) == 0 {
        NEXT_BAR.store(window_start(), Ordering::Relaxed);
    }
    let base = (NEXT_BAR.load(Ordering::Relaxed) + size - 1) & !(size - 1);
    if base + size > BAR_WINDOW_END {
        return 0;
    }
    NEXT_BAR.store(base + size, Ordering::Relaxed);
    let reg = 0x10 + 4 * bar;
    cf8_write(dev, func, reg, base as u32);
    if is64 {
        cf8_write(dev, func, reg + 4, 0);
    }
    serial(b"pci ");
    print_bdf(dev, func);
    serial(b": assigned BAR");
    serial_hex_fixed(bar as u64, 1);
    serial(b" at ");
    serial_hex(base);
    serial(b"\n");
    base
}

/// The configuration offset of each capability of 00:dev.func, in list
/// order (at most 16), through `f`.
pub fn for_each_capability(dev: u32, func: u32, mut f: impl FnMut(u32, u8)) {
    if (cf8_read(dev, func, 4) >> 16) & 0x10 == 0 {
        return;
    }
    let mut off = cf8_read(dev, func, 0x34) & 0xfc;
    for _ in 0..16 {
        if off < 0x40 {
            break;
        }
        let head = cf8_read(dev, func, off);
        f(off, head as u8);
        off = (head >> 8) & 0xfc;
    }
}

pub fn print_bdf(dev: u32, func: u32) {
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
            if !present(dev, func) {
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
            if func == 0 && !multifunction(dev) {
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
