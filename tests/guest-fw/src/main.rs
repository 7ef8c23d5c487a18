//! A freestanding test guest for our VMM, booted by the PVH protocol.
//!
//! At entry (`boot.s`, 32-bit) it writes 0x01 to port 0x80, builds
//! identity page tables for the low 4 GiB and enters long mode. Then it:
//! writes a line to the debug port 0x402; prints `hello from the test guest`
//! on COM1; reports its APIC id and CPUID leaves 0xB, 0x1F and 0xA; finds the ACPI tables through the PVH start
//! info (RSDP -> XSDT or RSDT -> FADT and DSDT, MADT, MCFG) and prints the
//! SRAT's nodes and the SLIT's distances if there are any; lists PCI bus 0
//! through CF8/CFC and checks one ECAM read against CF8/CFC; drives every
//! virtio 1.x PCI function it finds (`virtio`: blk writes and reads back a
//! sector, fs does FUSE INIT, LOOKUP, OPEN and READ of `hello.txt`, net
//! sends one frame; queues are polled, MSI-X is checked in the LAPIC's IRR;
//! with `blk-loop`, `fs-loop` or `net-loop` on the command line that
//! device then keeps doing its request until the power button, one
//! console line per round (`wait::rounds`; see `blk`, `fs`, `net`));
//! starts every other CPU of the MADT with INIT-SIPI-SIPI through the LAPIC
//! (real-mode trampoline at 0x10000), each of which prints its x2APIC id
//! from CPUID 0xB and that it reported in with its APIC id from CPUID 1;
//! and powers off (`reset` on the command line: resets through the
//! i8042 instead) by writing SLP_TYP | SLP_EN to the FADT's PM1a control
//! port (SLP_TYP from the DSDT's `_S5_`: 5 on our VMM, 0 on QEMU;
//! the i8042 reset is the fallback). It runs under our VMM and under QEMU
//! (`-kernel`, firmware-assigned BARs; unassigned BARs get an address here).
//! No SSE, XSAVE or INT3: KVM on our machines is an instruction emulator.

#![no_std]
#![no_main]

mod acpi;
mod blk;
mod fs;
mod io;
mod net;
mod paging;
mod pci;
mod status;
mod virtio;
mod virtq;
mod wait;

use core::panic::PanicInfo;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use io::{debug, out16, out8, serial, serial_dec, serial_hex};

core::arch::global_asm!(include_str!("boot.s"));

/// The stack the next AP starts on (read by `boot.s`), set by the BSP
/// before each SIPI; APs are started one at a time.
#[no_mangle]
static AP_STACK_TOP: AtomicU64 = AtomicU64::new(0);
/// How many APs have reported in.
static AP_REPORTED: AtomicU32 = AtomicU32::new(0);

const MAX_CPUS: usize = 8;
const AP_STACK_SIZE: usize = 8192;
static mut AP_STACKS: [[u8; AP_STACK_SIZE]; MAX_CPUS] = [[0; AP_STACK_SIZE]; MAX_CPUS];

/// SIPI vector: the trampoline's page (0x10000 >> 12), see `link.ld`.
const TRAMPOLINE_VECTOR: u32 = 0x10;
const LAPIC_BASE: usize = 0xfee0_0000;
const LAPIC_ICR_LOW: usize = 0x300;
const LAPIC_ICR_HIGH: usize = 0x310;
/// SLP_EN of PM1 control; SLP_TYP is bits 10..13.
const PM1_SLP_EN: u16 = 1 << 13;

pub fn apic_id() -> u32 {
    let leaf = core::arch::x86_64::__cpuid(1);
    leaf.ebx >> 24
}

fn lapic_write(reg: usize, value: u32) {
    // SAFETY: the LAPIC page is identity-mapped by boot.s; ICR writes only
    // send IPIs.
    unsafe { write_volatile((LAPIC_BASE + reg) as *mut u32, value) }
}

fn lapic_read(reg: usize) -> u32 {
    // SAFETY: as in lapic_write.
    unsafe { read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn send_ipi(apic_id: u32, low: u32) {
    lapic_write(LAPIC_ICR_HIGH, apic_id << 24);
    lapic_write(LAPIC_ICR_LOW, low);
    // Wait for "delivery status: idle".
    for _ in 0..1000 {
        if lapic_read(LAPIC_ICR_LOW) & (1 << 12) == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// Starts the AP `apic_id` and waits (bounded) for it to report in.
fn start_ap(apic_id: u32, slot: usize) -> bool {
    let before = AP_REPORTED.load(Ordering::Acquire);
    // SAFETY: only the address of the stack is taken; each AP gets its own slot.
    let top = unsafe { core::ptr::addr_of_mut!(AP_STACKS[slot]) as u64 } + AP_STACK_SIZE as u64;
    AP_STACK_TOP.store(top, Ordering::Release);
    send_ipi(apic_id, 0x0000_4500); // INIT, assert, level
    send_ipi(apic_id, 0x0000_4600 | TRAMPOLINE_VECTOR); // STARTUP
    for round in 0..2_000_000u32 {
        if AP_REPORTED.load(Ordering::Acquire) != before {
            return true;
        }
        if round == 1000 {
            send_ipi(apic_id, 0x0000_4600 | TRAMPOLINE_VECTOR); // the second STARTUP
        }
        core::hint::spin_loop();
    }
    false
}

#[no_mangle]
extern "C" fn bsp_main(start_info: u64) -> ! {
    debug(b"guest-fw: entry\n");
    wait::init(start_info);
    serial(b"hello from the test guest\n");
    serial(b"cpu 0: apic id ");
    serial_dec(apic_id() as u64);
    serial(b", bootstrap processor\n");
    report_cpuid();

    let tables = acpi::find(start_info);
    let Some(tables) = tables else {
        serial(b"no ACPI tables; resetting through the i8042\n");
        out8(0x64, 0xfe);
        halt();
    };
    serial(b"acpi: ");
    serial_dec(tables.cpus as u64);
    serial(b" cpu(s), PM1a control port ");
    serial_hex(tables.pm1a_cnt as u64);
    serial(b"\n");
    if let Some(far) = acpi::report_numa(&tables) {
        blk::use_far_memory(far);
    }

    pci::enumerate();
    pci::check_ecam(tables.ecam);
    virtio::drive_all();

    let me = apic_id();
    let mut slot = 0;
    for &id in tables.apic_ids[..tables.cpus].iter() {
        if id == me || slot >= MAX_CPUS {
            continue;
        }
        if !start_ap(id, slot) {
            serial(b"cpu with apic id ");
            serial_dec(id as u64);
            serial(b" did not report in\n");
        }
        slot += 1;
    }
    wait::power_button_if_asked(start_info);
    if wait::cmdline_has(b"reset") {
        // A guest that reboots: the VMM restarts it, or with --no-reboot
        // (QEMU's -no-reboot) ends.
        serial(b"resetting as asked\n");
        out8(0x64, 0xfe);
        halt();
    }
    serial(b"all ");
    serial_dec(AP_REPORTED.load(Ordering::Acquire) as u64 + 1);
    serial(b" cpu(s) up; powering off\n");

    if tables.pm1a_cnt != 0 {
        out16(tables.pm1a_cnt, (tables.s5_slp_typ & 7) << 10 | PM1_SLP_EN);
        // QEMU acts on the request a little later, from its main loop.
        virtq::poll_until(3_000_000_000, || false);
    }
    serial(b"ACPI power-off did not stop the VM; resetting through the i8042\n");
    out8(0x64, 0xfe);
    halt();
}

/// Prints the CPUID leaves that describe the topology and the PMU, one
/// line each: `cpuid 0xb.1: eax 0x1 ebx 0x2 ecx 0x201 edx 0x0` (leaf 0's
/// EAX, the highest basic leaf, first; leaf 4's caches decoded, see
/// [`report_caches`]; 0xB and 0x1F up to their terminating subleaf, at
/// most 4; 0xA).
fn report_cpuid() {
    let max = core::arch::x86_64::__cpuid(0).eax;
    serial(b"cpuid 0x0: eax ");
    serial_hex(max as u64);
    serial(b"\n");
    if max >= 4 {
        report_caches();
    }
    for (leaf, name) in [(0xb, &b"0xb"[..]), (0x1f, b"0x1f")] {
        for sub in 0..4 {
            let r = core::arch::x86_64::__cpuid_count(leaf, sub);
            cpuid_line(name, sub, [r.eax, r.ebx, r.ecx, r.edx]);
            if (r.ecx >> 8) & 0xff == 0 {
                break;
            }
        }
    }
    let r = core::arch::x86_64::__cpuid(0xa);
    cpuid_line(b"0xa", 0, [r.eax, r.ebx, r.ecx, r.edx]);
}

/// Leaf 4's topology fields per cache (the rest of the leaf is the
/// host's cache geometry), up to the first null cache type, at most 8:
/// `cpuid 0x4.2: level 2, shared by 2 thread(s), 4 core(s) per package`
/// (EAX[7:5], EAX[25:14] + 1, EAX[31:26] + 1).
fn report_caches() {
    for sub in 0..8 {
        let eax = core::arch::x86_64::__cpuid_count(4, sub).eax;
        if eax & 0x1f == 0 {
            break;
        }
        serial(b"cpuid 0x4.");
        serial_dec(sub as u64);
        serial(b": level ");
        serial_dec(((eax >> 5) & 7) as u64);
        serial(b", shared by ");
        serial_dec((((eax >> 14) & 0xfff) + 1) as u64);
        serial(b" thread(s), ");
        serial_dec(((eax >> 26) + 1) as u64);
        serial(b" core(s) per package\n");
    }
}

fn cpuid_line(leaf: &[u8], sub: u32, regs: [u32; 4]) {
    serial(b"cpuid ");
    serial(leaf);
    serial(b".");
    serial_dec(sub as u64);
    serial(b":");
    for (name, v) in [b" eax ", b" ebx ", b" ecx ", b" edx "].iter().zip(regs) {
        serial(*name);
        serial_hex(v as u64);
    }
    serial(b"\n");
}

#[no_mangle]
extern "C" fn ap_main() -> ! {
    let n = AP_REPORTED.load(Ordering::Acquire) + 1;
    serial(b"cpu ");
    serial_dec(n as u64);
    serial(b": cpuid 0xb x2apic id ");
    serial_dec(core::arch::x86_64::__cpuid_count(0xb, 0).edx as u64);
    serial(b"\n");
    serial(b"cpu ");
    serial_dec(n as u64);
    serial(b": apic id ");
    serial_dec(apic_id() as u64);
    serial(b" reported in\n");
    AP_REPORTED.store(n, Ordering::Release);
    halt();
}

fn halt() -> ! {
    loop {
        // SAFETY: stopping this CPU with interrupts off is the intent.
        unsafe { core::arch::asm!("cli", "hlt") };
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    serial(b"guest-fw: panic\n");
    out8(0x64, 0xfe);
    halt();
}
