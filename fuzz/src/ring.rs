//! Guest memory and one split ring, both from the fuzzer's bytes, drained
//! by the daemons' own worker loop (`common::queue::drain`, which walks the
//! chains with `virtio-queue` and hands them to `common::iov`'s walker in
//! the device code).
//!
//! Input: byte 0 is `log2(queue size)` (bits 0-2) | EVENT_IDX (bit 3) |
//! four bits for the device; byte 1 is one more byte for the device; the
//! rest is guest memory from address 0 (region 0, then region 1). The
//! descriptor table is at 0, the avail ring right after it, then the used
//! ring ([`Layout`]), then buffers: everything a driver controls,
//! including `avail.idx`, indirect tables and buffers that leave memory.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::memory::Mem;
use common::serve::GuestMem;
use common::vring::Vring;
use vhost_user_backend::VringT;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

/// Two regions with a hole between them, so a buffer can run off the end
/// of one or span both.
pub const REGIONS: [(u64, usize); 2] = [(0, 0x4000), (0x5000, 0x1000)];

/// Largest queue the ring accepts (`log2` in 3 bits: 1..=128).
pub const MAX_QUEUE: u16 = 128;

/// Where the ring's parts are for a queue of `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Queue size.
    pub size: u16,
    /// Descriptor table (16 bytes per entry).
    pub desc: u64,
    /// Avail ring: flags, idx, ring[size], used_event.
    pub avail: u64,
    /// Used ring: flags, idx, ring[size] (8 bytes each), avail_event.
    pub used: u64,
    /// First byte after the used ring (where seeds put their buffers).
    pub data: u64,
}

impl Layout {
    /// The layout for a queue of `size` entries.
    pub fn new(size: u16) -> Self {
        let size64 = u64::from(size);
        let avail = 16 * size64;
        let used = (avail + 6 + 2 * size64).next_multiple_of(4);
        let data = (used + 6 + 8 * size64).next_multiple_of(16);
        Layout {
            size,
            desc: 0,
            avail,
            used,
            data,
        }
    }
}

/// The ring and its memory, ready to drain.
pub struct Ring {
    mem: GuestMem,
    vring: Vring,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Bits 4-7 of byte 0.
    pub flags: u8,
    /// Byte 1.
    pub extra: u8,
}

/// Guest memory holding `image` from address 0.
pub fn memory(image: &[u8]) -> GuestMemoryMmap<()> {
    memory_in(&REGIONS, image)
}

/// Guest memory of `regions` (address, length), filled with `image` region
/// after region.
pub fn memory_in(regions: &[(u64, usize)], image: &[u8]) -> GuestMemoryMmap<()> {
    let ranges: Vec<_> = regions.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest memory");
    let mut rest = image;
    for &(addr, len) in regions {
        let n = rest.len().min(len);
        mem.write_slice(&rest[..n], GuestAddress(addr))
            .expect("inside the region");
        rest = &rest[n..];
    }
    mem
}

impl Ring {
    /// The ring described by `data`, or `None` for fewer than 2 bytes.
    pub fn new(data: &[u8]) -> Option<Self> {
        let (&b0, rest) = data.split_first()?;
        let (&extra, image) = rest.split_first()?;
        let layout = Layout::new(1 << (b0 & 7));
        let mem = GuestMemoryAtomic::new(memory(image));
        let vring = Vring::new(mem.clone(), MAX_QUEUE).ok()?;
        vring.set_queue_size(layout.size);
        vring
            .set_queue_info(layout.desc, layout.avail, layout.used)
            .ok()?;
        let event_idx = b0 & 8 != 0;
        vring.set_queue_event_idx(event_idx);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        Some(Ring {
            mem,
            vring,
            event_idx,
            flags: b0 >> 4,
            extra,
        })
    }

    /// Runs the daemons' worker loop over the ring once, as a kick would:
    /// each chain goes to `handle` with the memory it lives in, and what
    /// `handle` returns is its used length.
    pub fn drain<F>(&self, mut handle: F)
    where
        F: FnMut(DescriptorChain<&Mem>, &Mem) -> u32,
    {
        let mem = self.mem.memory();
        let broken = AtomicBool::new(false);
        // An error (a used ring outside memory, say) ends the batch, as
        // it ends a real worker's: not a finding.
        let _ = common::queue::drain(
            0,
            &self.vring,
            &mem,
            self.event_idx,
            Duration::ZERO,
            &broken,
            |chain| handle(chain, &mem),
        );
    }
}
