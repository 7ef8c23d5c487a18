//! Split virtqueues (virtio 1.x, 2.7) in static, identity-mapped memory, so
//! a buffer's guest physical address is its address here. One request at a
//! time: the driver adds a chain, kicks and polls the used ring (interrupts
//! stay off; MSI-X only leaves its mark in the LAPIC's IRR).

use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{compiler_fence, Ordering};

/// Memory for rings and buffers, handed out once and never freed (it is
/// zero at boot: `.bss`).
const POOL_SIZE: usize = 48 * 1024;

#[repr(C, align(4096))]
struct Pool([u8; POOL_SIZE]);

static mut POOL: Pool = Pool([0; POOL_SIZE]);
static mut POOL_USED: usize = 0;

/// `size` zeroed bytes aligned to `align` (a power of two), never freed;
/// None once the pool is exhausted.
pub fn alloc(size: usize, align: usize) -> Option<u64> {
    // SAFETY: only the BSP allocates (drivers run before the APs start);
    // only the address of the pool is taken.
    unsafe {
        let base = addr_of_mut!(POOL) as usize;
        let start = (base + POOL_USED + align - 1) & !(align - 1);
        if start + size > base + POOL_SIZE {
            return None;
        }
        POOL_USED = start + size - base;
        Some(start as u64)
    }
}

pub fn w8(addr: u64, v: u8) {
    // SAFETY: `addr` is pool memory or an MMIO register this guest mapped
    // (identity paging); volatile because a device or the VMM reads it.
    unsafe { write_volatile(addr as *mut u8, v) }
}
pub fn w16(addr: u64, v: u16) {
    // SAFETY: as in w8.
    unsafe { write_volatile(addr as *mut u16, v) }
}
pub fn w32(addr: u64, v: u32) {
    // SAFETY: as in w8.
    unsafe { write_volatile(addr as *mut u32, v) }
}
pub fn w64(addr: u64, v: u64) {
    // SAFETY: as in w8.
    unsafe { write_volatile(addr as *mut u64, v) }
}
pub fn r8(addr: u64) -> u8 {
    // SAFETY: as in w8.
    unsafe { read_volatile(addr as *const u8) }
}
pub fn r16(addr: u64) -> u16 {
    // SAFETY: as in w8.
    unsafe { read_volatile(addr as *const u16) }
}
pub fn r32(addr: u64) -> u32 {
    // SAFETY: as in w8.
    unsafe { read_volatile(addr as *const u32) }
}
pub fn r64(addr: u64) -> u64 {
    // SAFETY: as in w8.
    unsafe { read_volatile(addr as *const u64) }
}

/// Copies `bytes` to guest memory at `addr`.
pub fn put(addr: u64, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        w8(addr + i as u64, b);
    }
}

/// The largest queue this driver uses (fewer descriptors: less to set up).
pub const MAX_SIZE: u16 = 16;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// How long a request may take: TSC ticks (~10 s at 3 GHz; QEMU's TCG TSC
/// runs at about the host's rate).
const TIMEOUT_TICKS: u64 = 30_000_000_000;
/// How long before a request is kicked again (~10 ms at 3 GHz).
const REKICK_TICKS: u64 = 30_000_000;

/// One buffer of a chain: address, length, whether the device writes it.
#[derive(Clone, Copy)]
pub struct Buf(pub u64, pub u32, pub bool);

pub struct Virtq {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The queue's notification address.
    pub notify: u64,
    /// The MSI-X vector number (LAPIC vector) of its interrupts, if any.
    pub vector: Option<u8>,
    /// How often a request had to be kicked again (see [`Virtq::wait`]).
    pub rekicks: u32,
    next_desc: u16,
    avail_idx: u16,
    used_idx: u16,
}

impl Virtq {
    /// Allocates the rings of a `size`-entry queue (a power of two).
    pub fn new(index: u16, size: u16) -> Option<Virtq> {
        let n = size as usize;
        Some(Virtq {
            index,
            size,
            desc: alloc(16 * n, 16)?,
            avail: alloc(6 + 2 * n, 2)?,
            used: alloc(6 + 8 * n, 4)?,
            notify: 0,
            vector: None,
            rekicks: 0,
            next_desc: 0,
            avail_idx: 0,
            used_idx: 0,
        })
    }

    /// Puts the chain `bufs` in the available ring (no kick); returns its
    /// head. Chains must be shorter than the queue and complete in order
    /// of the descriptors they use, as they do here (one at a time).
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let d = self.next_desc;
            self.next_desc = (d + 1) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if b.2 { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let at = self.desc + 16 * d as u64;
            w64(at, b.0);
            w32(at + 8, b.1);
            w16(at + 12, flags);
            w16(at + 14, self.next_desc);
        }
        let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        w16(slot, head);
        // x86 keeps stores in order; the fence keeps the compiler from
        // moving the ring writes after the index.
        compiler_fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        w16(self.avail + 2, self.avail_idx);
        head
    }

    /// Notifies the device of new buffers (the notification data is the
    /// queue index: no VIRTIO_F_NOTIFICATION_DATA).
    pub fn kick(&self) {
        compiler_fence(Ordering::SeqCst);
        w16(self.notify, self.index);
    }

    /// Waits for the next used element; its (head, written length), or
    /// None after the timeout. Kicks again every ~10 ms meanwhile: a
    /// vhost-user backend may drop a kick that reaches it before its
    /// SET_VRING_ENABLE (rust-vmm's `vhost-user-backend` drains the
    /// eventfd of a disabled ring), and QEMU does not wait for that
    /// message before letting the guest run on after DRIVER_OK. With
    /// `no-rekick` on the command line it only waits: a kick the VMM lost
    /// then shows as a timeout, however slow the host.
    pub fn wait(&mut self) -> Option<(u16, u32)> {
        let rekick = !crate::wait::cmdline_has(b"no-rekick");
        let mut waited = 0;
        while !poll_until(REKICK_TICKS, || r16(self.used + 2) != self.used_idx) {
            waited += REKICK_TICKS;
            if waited >= TIMEOUT_TICKS {
                return None;
            }
            if rekick {
                self.rekicks += 1;
                self.kick();
            }
        }
        compiler_fence(Ordering::SeqCst);
        let elem = self.used + 4 + 8 * (self.used_idx % self.size) as u64;
        self.used_idx = self.used_idx.wrapping_add(1);
        Some((r32(elem) as u16, r32(elem + 4)))
    }

    /// Adds `bufs`, kicks and waits: the length the device wrote.
    pub fn call(&mut self, bufs: &[Buf]) -> Option<u32> {
        self.add(bufs);
        self.kick();
        self.wait().map(|(_, len)| len)
    }
}

/// Whether `done` became true within `ticks` TSC ticks.
pub fn poll_until(ticks: u64, mut done: impl FnMut() -> bool) -> bool {
    // SAFETY: RDTSC only reads the time-stamp counter.
    let now = || unsafe { core::arch::x86_64::_rdtsc() };
    let start = now();
    loop {
        if done() {
            return true;
        }
        if now().wrapping_sub(start) > ticks {
            return false;
        }
        core::hint::spin_loop();
    }
}
