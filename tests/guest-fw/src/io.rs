//! Port I/O, the debug port and a polled 8250 on COM1.

const COM1: u16 = 0x3f8;
const DEBUG_PORT: u16 = 0x402;

pub fn out8(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects in this guest.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value) }
}

pub fn out16(port: u16, value: u16) {
    // SAFETY: as in out8.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") value) }
}

pub fn out32(port: u16, value: u32) {
    // SAFETY: as in out8.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") value) }
}

pub fn in32(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in out8.
    unsafe { core::arch::asm!("in eax, dx", out("eax") value, in("dx") port) }
    value
}

pub fn in16(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as in out8.
    unsafe { core::arch::asm!("in ax, dx", out("ax") value, in("dx") port) }
    value
}

pub fn in8(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in out8.
    unsafe { core::arch::asm!("in al, dx", out("al") value, in("dx") port) }
    value
}

/// Writes `bytes` to the debug port (QEMU's debugcon convention).
pub fn debug(bytes: &[u8]) {
    for &b in bytes {
        out8(DEBUG_PORT, b);
    }
}

/// Writes `bytes` to COM1, waiting for the transmitter holding register.
pub fn serial(bytes: &[u8]) {
    for &b in bytes {
        let mut tries = 0;
        while in8(COM1 + 5) & 0x20 == 0 && tries < 1000 {
            tries += 1;
        }
        out8(COM1, b);
    }
}

pub fn serial_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    serial(&buf[i..]);
}

pub fn serial_hex(v: u64) {
    let mut buf = [0u8; 18];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    i -= 2;
    buf[i] = b'0';
    buf[i + 1] = b'x';
    serial(&buf[i..]);
}

/// `digits` hex digits of `v`, zero-padded, no prefix.
pub fn serial_hex_fixed(v: u64, digits: usize) {
    let mut buf = [0u8; 16];
    let digits = digits.min(16);
    for (i, b) in buf[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *b = b"0123456789abcdef"[((v >> shift) & 0xf) as usize];
    }
    serial(&buf[..digits]);
}
