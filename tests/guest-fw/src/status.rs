//! What the guest reports after the power button in `wait-power-button`
//! mode: one line per virtio device it drove, read afresh from the
//! device's common configuration, e.g.
//! `status 00:01.0 blk: 0x4f needs-reset, config msi-x vector 0x40 pending`
//! or `status 00:02.0 fs: 0x0f ok, config msi-x vector 0x48 not pending`
//! (`no config msi-x` without a configuration vector). A device whose
//! backend died has DEVICE_NEEDS_RESET (0x40) set by the VMM, which also
//! sends the configuration-change interrupt; with IF=0 that vector stays in
//! the LAPIC's IRR.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::io::{serial, serial_hex, serial_hex_fixed};
use crate::pci::print_bdf;
use crate::virtq::{poll_until, r16, r32, r8};

const MAX: usize = 8;
const DEVICE_STATUS: u64 = 0x14;
const MSIX_CONFIG: u64 = 0x10;
const NO_VECTOR: u16 = 0xffff;
const NEEDS_RESET: u8 = 0x40;
const LAPIC_IRR: u64 = 0xfee0_0200;
/// How long to wait for the configuration interrupt of a device that
/// needs a reset (~0.3 s at 3 GHz): it is sent with the status bit.
const CONFIG_MSI_TICKS: u64 = 1_000_000_000;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
/// The common configuration's address of each device driven, in order.
static COMMON: [AtomicU64; MAX] = [ZERO; MAX];
/// dev | func << 8 | kind << 16 | first MSI-X vector << 32.
static INFO: [AtomicU64; MAX] = [ZERO; MAX];

/// Remembers a device that was driven (only the BSP drives devices).
pub fn record(dev: u32, func: u32, kind: u16, common: u64, first_vector: u8) {
    let Some(slot) = COMMON.iter().position(|c| c.load(Ordering::Relaxed) == 0) else {
        return;
    };
    let info = dev as u64 | (func as u64) << 8 | (kind as u64) << 16 | (first_vector as u64) << 32;
    INFO[slot].store(info, Ordering::Relaxed);
    COMMON[slot].store(common, Ordering::Relaxed);
}

fn irr_has(vector: u8) -> bool {
    r32(LAPIC_IRR + 0x10 * (vector as u64 / 32)) & (1 << (vector % 32)) != 0
}

/// Prints the status line of every device recorded.
pub fn report() {
    for (common, info) in COMMON.iter().zip(INFO.iter()) {
        let common = common.load(Ordering::Relaxed);
        if common == 0 {
            break;
        }
        let info = info.load(Ordering::Relaxed);
        let status = r8(common + DEVICE_STATUS);
        serial(b"status ");
        print_bdf(info as u32 & 0xff, (info >> 8) as u32 & 0xff);
        serial(b" ");
        serial(crate::virtio::name((info >> 16) as u16));
        serial(b": 0x");
        serial_hex_fixed(status as u64, 2);
        let needs_reset = status & NEEDS_RESET != 0;
        serial(if needs_reset { b" needs-reset" } else { b" ok" });
        let entry = r16(common + MSIX_CONFIG);
        if entry == NO_VECTOR || entry >= 8 {
            serial(b", no config msi-x\n");
            continue;
        }
        let vector = (info >> 32) as u8 + entry as u8;
        let pending = if needs_reset {
            poll_until(CONFIG_MSI_TICKS, || irr_has(vector))
        } else {
            irr_has(vector)
        };
        serial(b", config msi-x vector ");
        serial_hex(vector as u64);
        serial(if pending {
            b" pending\n"
        } else {
            b" not pending\n"
        });
    }
}
