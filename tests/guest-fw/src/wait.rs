//! `wait-power-button` on the kernel command line (PVH start info's
//! `cmdline_paddr`): instead of powering off at once, the guest enables
//! PWRBTN_EN in PM1a_EN, prints `waiting for the power button`, polls
//! PM1a_STS for PWRBTN_STS (one port read per ~1000 `pause`s, ~1 ms here),
//! clears it (write 1), prints `power button pressed`, then a `status`
//! line per virtio device it drove (see `status`), and goes on to power
//! off. The PM1a event block's port comes from the FADT (PM1a_EVT_BLK).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::acpi::{r32, r64, r8, root_entries, root_table, sig, XEN_HVM_START_MAGIC};
use crate::io::{in16, out16, serial, serial_dec};

/// PWRBTN_STS in PM1_STS, PWRBTN_EN in PM1_EN.
const PWRBTN: u16 = 1 << 8;
const WORD: &[u8] = b"wait-power-button";

/// The PVH start info's address, for [`cmdline_has`] and [`power_button`].
static START_INFO: AtomicU64 = AtomicU64::new(0);

/// Remembers the start info (called once at entry).
pub fn init(start_info: u64) {
    START_INFO.store(start_info, Ordering::Relaxed);
}

/// The `*-loop` modes' runner: calls `round(n)` for n = 0, 1, ... until
/// the power button, printing `NAME: round N ok` after each (N = n + 1,
/// one line per round, so the host sees each completion), then
/// `NAME: stopped after N rounds, no error` or, at the first failed
/// round, `...: WHY` and the error.
pub fn rounds(
    name: &[u8],
    mut round: impl FnMut(u64) -> Result<(), &'static str>,
) -> Result<(), &'static str> {
    let mut n = 0u64;
    let result = loop {
        if power_button() {
            break Ok(());
        }
        if let Err(e) = round(n) {
            break Err(e);
        }
        n += 1;
        serial(name);
        serial(b": round ");
        serial_dec(n);
        serial(b" ok\n");
    };
    serial(name);
    serial(b": stopped after ");
    serial_dec(n);
    match result {
        Ok(()) => serial(b" rounds, no error\n"),
        Err(why) => {
            serial(b" rounds: ");
            serial(why.as_bytes());
            serial(b"\n");
        }
    }
    result
}

/// Whether the kernel command line has the word `word`.
pub fn cmdline_has(word: &[u8]) -> bool {
    has_word(START_INFO.load(Ordering::Relaxed), word)
}

/// Whether the power button was pressed (PWRBTN_STS; enabled on first
/// use, cleared when seen).
pub fn power_button() -> bool {
    let Some(evt) = pm1a_evt(START_INFO.load(Ordering::Relaxed)) else {
        return false;
    };
    out16(evt + 2, PWRBTN);
    if in16(evt) & PWRBTN == 0 {
        return false;
    }
    out16(evt, PWRBTN);
    true
}

/// Whether the command line has the word `wait-power-button`.
fn asked(start_info: u64) -> bool {
    has_word(start_info, WORD)
}

/// Whether the command line has the word `word`.
fn has_word(start_info: u64, word: &[u8]) -> bool {
    if start_info == 0 || r32(start_info) != XEN_HVM_START_MAGIC {
        return false;
    }
    let cmdline = r64(start_info + 24);
    if cmdline == 0 {
        return false;
    }
    let at = |i: u64| r8(cmdline + i);
    let mut i = 0;
    while i < 4096 {
        // At the start of a word.
        let len = word.len() as u64;
        if (0..len).all(|j| at(i + j) == word[j as usize]) && matches!(at(i + len), 0 | b' ') {
            return true;
        }
        // Skip to the next word.
        loop {
            let c = at(i);
            if c == 0 {
                return false;
            }
            i += 1;
            if c == b' ' {
                break;
            }
        }
    }
    false
}

/// PM1a_EVT_BLK from the FADT (RSDP -> XSDT or RSDT -> FACP).
fn pm1a_evt(start_info: u64) -> Option<u16> {
    let rsdp = r64(start_info + 32);
    if rsdp == 0 {
        return None;
    }
    let (root, entry_size, _) = root_table(rsdp);
    root_entries(root, entry_size)
        .find(|&t| sig(t, b"FACP"))
        .map(|fadt| r32(fadt + 56) as u16)
        .filter(|&port| port != 0)
}

/// With `wait-power-button` on the command line, waits for the power
/// button; otherwise returns at once.
pub fn power_button_if_asked(start_info: u64) {
    if !asked(start_info) {
        return;
    }
    let Some(evt) = pm1a_evt(start_info) else {
        serial(b"wait-power-button: no PM1a event block in the FADT\n");
        return;
    };
    out16(evt + 2, PWRBTN);
    serial(b"waiting for the power button\n");
    loop {
        if in16(evt) & PWRBTN != 0 {
            out16(evt, PWRBTN);
            serial(b"power button pressed\n");
            crate::status::report();
            return;
        }
        for _ in 0..1000 {
            core::hint::spin_loop();
        }
    }
}
