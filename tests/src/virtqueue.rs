//! The driver side of a virtio 1.x split virtqueue: the part a guest kernel
//! plays. Chains go in through the available ring (direct or indirect), the
//! backend's answers come back through the used ring, and the kick/call
//! eventfds stand in for the ioeventfd and irqfd of a real VMM.
//!
//! A raw API ([`VirtQueue::raw_desc`], [`VirtQueue::raw_publish`], ...) lets
//! tests hand a backend any malformed ring they like.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Address, ByteValued, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::{GuestMem, MemoryError};

/// Descriptor continues via `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Buffer holds an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// used.flags: the device asks not to be kicked.
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Errors of a driver-side virtqueue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The ring or a buffer lies outside guest memory.
    #[error("queue {queue}: guest memory")]
    Memory {
        /// Queue index.
        queue: u16,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
    /// Not enough free descriptors for the chain.
    #[error("queue {queue}: {needed} descriptors needed, {free} free")]
    Full {
        /// Queue index.
        queue: u16,
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors available.
        free: usize,
    },
    /// A chain with no segments, or more than the indirect table holds.
    #[error("queue {queue}: chain of {len} segments is not allowed (max {max})")]
    BadChain {
        /// Queue index.
        queue: u16,
        /// Segments given.
        len: usize,
        /// Upper limit.
        max: usize,
    },
    /// The backend put an entry in the used ring that names no chain in flight.
    #[error("queue {queue}: backend returned used id {id} that is not in flight")]
    BogusUsed {
        /// Queue index.
        queue: u16,
        /// The id it returned.
        id: u32,
    },
    /// Nothing came back in time.
    #[error("queue {queue}: no used buffer within {0:?}", .timeout)]
    Timeout {
        /// Queue index.
        queue: u16,
        /// How long we waited.
        timeout: Duration,
    },
    /// Writing the kick eventfd or polling the call eventfd failed.
    #[error("queue {queue}: eventfd")]
    EventFd {
        /// Queue index.
        queue: u16,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, QueueError>;

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// True if the device writes it (VRING_DESC_F_WRITE).
    pub device_writes: bool,
}

impl Seg {
    /// A buffer the device reads.
    pub fn out(addr: GuestAddress, len: u32) -> Self {
        Seg {
            addr,
            len,
            device_writes: false,
        }
    }
    /// A buffer the device writes.
    pub fn inp(addr: GuestAddress, len: u32) -> Self {
        Seg {
            addr,
            len,
            device_writes: true,
        }
    }
}

/// A descriptor exactly as it sits in the table.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// VRING_DESC_F_* flags.
    pub flags: u16,
    /// Next descriptor index.
    pub next: u16,
}
// SAFETY: RawDesc is repr(C) plain data with no padding (8 + 4 + 2 + 2 bytes).
unsafe impl ByteValued for RawDesc {}

impl RawDesc {
    /// A descriptor with these fields.
    pub const fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        RawDesc {
            addr,
            len,
            flags,
            next,
        }
    }

    /// An INDIRECT descriptor for the table of `len` bytes at `table`.
    pub const fn indirect(table: GuestAddress, len: u32) -> Self {
        RawDesc::new(table.0, len, VRING_DESC_F_INDIRECT, 0)
    }
}

/// Writes `descs` as an indirect descriptor table in fresh guest memory
/// (`next` fields are table indices); returns its address and its length
/// in bytes, for the INDIRECT descriptor that points at it.
pub fn indirect_table(mem: &GuestMem, descs: &[RawDesc]) -> Result<(GuestAddress, u32)> {
    let merr = |source| QueueError::Memory { queue: 0, source };
    let table = mem
        .alloc(16 * descs.len().max(1) as u64, 16)
        .map_err(merr)?;
    for (i, d) in descs.iter().enumerate() {
        mem.write_obj(table.unchecked_add(16 * i as u64), *d)
            .map_err(merr)?;
    }
    Ok((table, 16 * descs.len() as u32))
}

/// One entry taken off the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// The chain's head index.
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// The token given to [`VirtQueue::add`], or None for a raw chain.
    pub token: Option<u64>,
}

struct InFlight {
    token: u64,
    descs: Vec<u16>,
}

/// How a queue is laid out and what it may use.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Number of descriptors (a power of two for a well-behaved driver).
    pub size: u16,
    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// Whether VIRTIO_RING_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
    /// Entries in each indirect table.
    pub max_indirect: u16,
}

/// A driver-side split virtqueue in [`GuestMem`].
pub struct VirtQueue {
    index: u16,
    mem: Arc<GuestMem>,
    cfg: QueueConfig,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    indirect_base: GuestAddress,
    free: Vec<u16>,
    inflight: Vec<Option<InFlight>>,
    avail_idx: u16,
    kicked_idx: u16,
    last_used: u16,
    force_indirect: bool,
    kick: EventFd,
    call: EventFd,
    kicks: u64,
}

impl std::fmt::Debug for VirtQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtQueue")
            .field("index", &self.index)
            .field("size", &self.cfg.size)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl VirtQueue {
    /// Allocates the rings and indirect tables for queue `index` in `mem`.
    pub fn new(index: u16, mem: Arc<GuestMem>, cfg: QueueConfig) -> Result<Self> {
        let n = u64::from(cfg.size);
        let merr = |source| QueueError::Memory {
            queue: index,
            source,
        };
        let desc = mem.alloc(16 * n, 4096).map_err(merr)?;
        let avail = mem.alloc(6 + 2 * n, 4096).map_err(merr)?;
        let used = mem.alloc(6 + 8 * n, 4096).map_err(merr)?;
        let indirect_base = if cfg.indirect {
            mem.alloc(16 * n * u64::from(cfg.max_indirect), 4096)
                .map_err(merr)?
        } else {
            GuestAddress(0)
        };
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| QueueError::EventFd {
            queue: index,
            source,
        })?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(|source| QueueError::EventFd {
            queue: index,
            source,
        })?;
        let mut q = VirtQueue {
            index,
            mem,
            cfg,
            desc,
            avail,
            used,
            indirect_base,
            free: Vec::new(),
            inflight: Vec::new(),
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            force_indirect: false,
            kick,
            call,
            kicks: 0,
        };
        q.reset()?;
        Ok(q)
    }

    /// Clears the rings and forgets every chain in flight (for a device reset or reconnect).
    pub fn reset(&mut self) -> Result<()> {
        let n = usize::from(self.cfg.size);
        let zero_len = |entries: usize, each: usize| 6 + entries * each;
        self.write(self.desc, &vec![0u8; 16 * n])?;
        self.write(self.avail, &vec![0u8; zero_len(n, 2)])?;
        self.write(self.used, &vec![0u8; zero_len(n, 8)])?;
        self.free = (0..self.cfg.size).rev().collect();
        self.inflight = (0..n).map(|_| None).collect();
        self.avail_idx = 0;
        self.kicked_idx = 0;
        self.last_used = 0;
        Ok(())
    }

    /// This queue's index on the device.
    pub fn index(&self) -> u16 {
        self.index
    }
    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.cfg.size
    }
    /// Descriptor table address.
    pub fn desc_addr(&self) -> GuestAddress {
        self.desc
    }
    /// Available ring address.
    pub fn avail_addr(&self) -> GuestAddress {
        self.avail
    }
    /// Used ring address.
    pub fn used_addr(&self) -> GuestAddress {
        self.used
    }
    /// The eventfd the backend waits on.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }
    /// The eventfd the backend signals.
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }
    /// The guest memory this queue lives in.
    pub fn mem(&self) -> &Arc<GuestMem> {
        &self.mem
    }
    /// Chains submitted and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|s| s.is_some()).count()
    }
    /// Free descriptors.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }
    /// Kicks actually sent (EVENT_IDX suppresses some).
    pub fn kicks_sent(&self) -> u64 {
        self.kicks
    }
    /// Always use an indirect table, even when the chain fits directly.
    pub fn set_force_indirect(&mut self, on: bool) {
        self.force_indirect = on && self.cfg.indirect;
    }

    fn merr(&self, source: MemoryError) -> QueueError {
        QueueError::Memory {
            queue: self.index,
            source,
        }
    }
    fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<()> {
        self.mem.write(addr, data).map_err(|e| self.merr(e))
    }
    fn write_desc(&self, table: GuestAddress, i: u16, d: RawDesc) -> Result<()> {
        self.mem
            .write_obj(table.unchecked_add(16 * u64::from(i)), d)
            .map_err(|e| self.merr(e))
    }

    /// Adds a chain; it reaches the backend at the next [`VirtQueue::kick`].
    /// Returns the head index.
    pub fn add(&mut self, segs: &[Seg], token: u64) -> Result<u16> {
        if segs.is_empty() {
            return Err(QueueError::BadChain {
                queue: self.index,
                len: 0,
                max: usize::from(self.cfg.size),
            });
        }
        let use_indirect = self.cfg.indirect
            && segs.len() <= usize::from(self.cfg.max_indirect)
            && (self.force_indirect || (segs.len() > 1 && segs.len() > self.free.len()));
        let needed = if use_indirect { 1 } else { segs.len() };
        if needed > self.free.len() {
            return Err(QueueError::Full {
                queue: self.index,
                needed,
                free: self.free.len(),
            });
        }
        let descs: Vec<u16> = (0..needed)
            .map(|_| self.free.pop().expect("checked"))
            .collect();
        let head = descs[0];
        if use_indirect {
            let table = self.indirect_table(head);
            for (i, s) in segs.iter().enumerate() {
                let last = i + 1 == segs.len();
                self.write_desc(table, i as u16, chain_desc(s, last, (i + 1) as u16))?;
            }
            let d = RawDesc {
                addr: table.raw_value(),
                len: 16 * segs.len() as u32,
                flags: VRING_DESC_F_INDIRECT,
                next: 0,
            };
            self.write_desc(self.desc, head, d)?;
        } else {
            for (i, s) in segs.iter().enumerate() {
                let last = i + 1 == segs.len();
                let next = if last { 0 } else { descs[i + 1] };
                self.write_desc(self.desc, descs[i], chain_desc(s, last, next))?;
            }
        }
        self.inflight[usize::from(head)] = Some(InFlight { token, descs });
        self.push_avail(head)?;
        Ok(head)
    }

    /// The indirect table that belongs to main-table descriptor `i`.
    pub fn indirect_table(&self, i: u16) -> GuestAddress {
        self.indirect_base
            .unchecked_add(16 * u64::from(self.cfg.max_indirect) * u64::from(i))
    }

    fn push_avail(&mut self, head: u16) -> Result<()> {
        let slot = u64::from(self.avail_idx % self.cfg.size);
        self.mem
            .store_u16(
                self.avail.unchecked_add(4 + 2 * slot),
                head,
                Ordering::Relaxed,
            )
            .map_err(|e| self.merr(e))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Publishes the chains added since the last kick and notifies the
    /// backend unless it asked not to be (EVENT_IDX or NO_NOTIFY).
    /// Returns whether the eventfd was written.
    pub fn kick(&mut self) -> Result<bool> {
        let new = self.avail_idx;
        let old = self.kicked_idx;
        self.mem
            .store_u16(self.avail.unchecked_add(2), new, Ordering::Release)
            .map_err(|e| self.merr(e))?;
        self.kicked_idx = new;
        // The backend's suppression state must be read after our index is visible.
        fence(Ordering::SeqCst);
        let notify = if self.cfg.event_idx {
            let event = self
                .mem
                .load_u16(
                    self.used.unchecked_add(4 + 8 * u64::from(self.cfg.size)),
                    Ordering::Acquire,
                )
                .map_err(|e| self.merr(e))?;
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags = self
                .mem
                .load_u16(self.used, Ordering::Acquire)
                .map_err(|e| self.merr(e))?;
            flags & VRING_USED_F_NO_NOTIFY == 0
        };
        if notify {
            self.notify()?;
        }
        Ok(notify)
    }

    /// Writes the kick eventfd unconditionally.
    pub fn notify(&mut self) -> Result<()> {
        self.kicks += 1;
        self.kick.write(1).map_err(|source| QueueError::EventFd {
            queue: self.index,
            source,
        })
    }

    /// Takes one entry off the used ring, if there is one.
    pub fn pop_used(&mut self) -> Result<Option<Used>> {
        let used_idx = self
            .mem
            .load_u16(self.used.unchecked_add(2), Ordering::Acquire)
            .map_err(|e| self.merr(e))?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        let slot = u64::from(self.last_used % self.cfg.size);
        let elem: [u32; 2] = self
            .mem
            .read_obj(self.used.unchecked_add(4 + 8 * slot))
            .map_err(|e| self.merr(e))?;
        self.last_used = self.last_used.wrapping_add(1);
        let (id, len) = (elem[0], elem[1]);
        let entry = usize::try_from(id)
            .ok()
            .and_then(|i| self.inflight.get_mut(i))
            .and_then(Option::take);
        let token = match entry {
            Some(f) => {
                self.free.extend(f.descs.iter().rev());
                Some(f.token)
            }
            None if id < u32::from(self.cfg.size) => None,
            None => {
                return Err(QueueError::BogusUsed {
                    queue: self.index,
                    id,
                })
            }
        };
        Ok(Some(Used {
            head: id as u16,
            len,
            token,
        }))
    }

    /// Blocks until the used ring has an entry or `timeout` passes.
    pub fn wait_used(&mut self, timeout: Duration) -> Result<Used> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.pop_used()? {
                return Ok(u);
            }
            // Ask for an interrupt at the next used entry, then re-check
            // before sleeping so none is lost.
            if self.cfg.event_idx {
                self.mem
                    .store_u16(
                        self.avail.unchecked_add(4 + 2 * u64::from(self.cfg.size)),
                        self.last_used,
                        Ordering::Release,
                    )
                    .map_err(|e| self.merr(e))?;
                fence(Ordering::SeqCst);
                if let Some(u) = self.pop_used()? {
                    return Ok(u);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QueueError::Timeout {
                    queue: self.index,
                    timeout,
                });
            }
            self.poll_call(deadline - now)?;
        }
    }

    /// Whether a kick is still pending in the kick eventfd: the backend
    /// has not read it yet (it reads it before it looks at the ring, even
    /// a disabled one).
    pub fn kick_pending(&self) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.kick.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd array of length 1 that outlives the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        if r < 0 {
            return Err(QueueError::EventFd {
                queue: self.index,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(r > 0)
    }

    fn poll_call(&self, wait: Duration) -> Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: pfd is a valid pollfd array of length 1 that outlives the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(QueueError::EventFd {
                    queue: self.index,
                    source: e,
                });
            }
        }
        if r > 0 {
            // Consume the counter; a stale EAGAIN is harmless.
            let _ = self.call.read();
        }
        Ok(())
    }

    /// Adds a chain, kicks, and waits for that chain to come back.
    /// Returns the number of bytes the device wrote.
    pub fn run(&mut self, segs: &[Seg], timeout: Duration) -> Result<u32> {
        let token = u64::MAX - 1;
        let head = self.add(segs, token)?;
        self.kick()?;
        loop {
            let u = self.wait_used(timeout)?;
            if u.token == Some(token) && u.head == head {
                return Ok(u.len);
            }
        }
    }

    // ---- Raw access for malformed-input tests ----

    /// Removes `n` descriptors from the free list for the caller to fill by hand.
    pub fn reserve_descs(&mut self, n: usize) -> Result<Vec<u16>> {
        if n > self.free.len() {
            return Err(QueueError::Full {
                queue: self.index,
                needed: n,
                free: self.free.len(),
            });
        }
        Ok((0..n).map(|_| self.free.pop().expect("checked")).collect())
    }

    /// Writes any descriptor into the main table at index `i` (not bounds-checked against size).
    pub fn raw_desc(&self, i: u16, d: RawDesc) -> Result<()> {
        self.write_desc(self.desc, i, d)
    }

    /// Writes any descriptor into an arbitrary table in guest memory.
    pub fn raw_desc_at(&self, table: GuestAddress, i: u16, d: RawDesc) -> Result<()> {
        self.write_desc(table, i, d)
    }

    /// Puts `head` on the available ring without tracking it.
    pub fn raw_publish(&mut self, head: u16) -> Result<()> {
        self.push_avail(head)
    }

    /// Reserves `descs.len()` descriptors, writes `descs` into them and puts
    /// the first on the available ring (untracked, like [`VirtQueue::raw_publish`];
    /// it goes out at the next kick).
    ///
    /// For a descriptor with [`VRING_DESC_F_NEXT`], a `next` below
    /// `descs.len()` is an index into `descs` and is translated to the
    /// reserved slot, so loops can be written as `next: 0`; a larger `next`
    /// is written unchanged, so out-of-range values reach the backend as
    /// given. Returns the reserved indices, head first: hand them back with
    /// [`VirtQueue::release_descs`] once the head has come back used.
    pub fn raw_chain(&mut self, descs: &[RawDesc]) -> Result<Vec<u16>> {
        if descs.is_empty() {
            return Err(QueueError::BadChain {
                queue: self.index,
                len: 0,
                max: usize::from(self.cfg.size),
            });
        }
        let slots = self.reserve_descs(descs.len())?;
        for (d, &slot) in descs.iter().zip(&slots) {
            let mut d = *d;
            if d.flags & VRING_DESC_F_NEXT != 0 {
                if let Some(&target) = slots.get(usize::from(d.next)) {
                    d.next = target;
                }
            }
            if let Err(e) = self.raw_desc(slot, d) {
                self.release_descs(&slots);
                return Err(e);
            }
        }
        if let Err(e) = self.push_avail(slots[0]) {
            self.release_descs(&slots);
            return Err(e);
        }
        Ok(slots)
    }

    /// Publishes what was added and writes the kick eventfd even if the
    /// backend asked not to be notified: malformed-ring tests want the
    /// backend to look at the ring now.
    pub fn kick_now(&mut self) -> Result<()> {
        if !self.kick()? {
            self.notify()?;
        }
        Ok(())
    }

    /// Publishes `descs` as a raw chain ([`VirtQueue::raw_chain`]), kicks
    /// ([`VirtQueue::kick_now`]), waits up to `timeout` for a used entry and
    /// releases the chain's descriptors. Returns the chain's head and the
    /// used entry (the caller checks it is that head). Nothing else may be
    /// in flight on the queue.
    pub fn run_raw_chain(&mut self, descs: &[RawDesc], timeout: Duration) -> Result<(u16, Used)> {
        let slots = self.raw_chain(descs)?;
        self.kick_now()?;
        let used = self.wait_used(timeout)?;
        self.release_descs(&slots);
        Ok((slots[0], used))
    }

    /// Returns descriptors taken with [`VirtQueue::reserve_descs`] or
    /// [`VirtQueue::raw_chain`] to the free list. The caller must no longer
    /// have them on the available ring (their head came back used).
    pub fn release_descs(&mut self, descs: &[u16]) {
        for &d in descs.iter().rev() {
            if d < self.cfg.size && !self.free.contains(&d) {
                self.free.push(d);
            }
        }
    }

    /// Sets the shadow available index; the next kick publishes it as is.
    pub fn raw_set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
    }

    /// The used ring's index as the backend last wrote it.
    pub fn used_idx(&self) -> Result<u16> {
        self.mem
            .load_u16(self.used.unchecked_add(2), Ordering::Acquire)
            .map_err(|e| self.merr(e))
    }

    /// The used ring's flags as the backend last wrote them
    /// ([`VRING_USED_F_NO_NOTIFY`] while it does not want kicks).
    pub fn used_flags(&self) -> Result<u16> {
        self.mem
            .load_u16(self.used, Ordering::Acquire)
            .map_err(|e| self.merr(e))
    }

    /// The avail_event field the backend writes after the used ring (with
    /// EVENT_IDX: the avail index at which it wants the next kick).
    pub fn avail_event(&self) -> Result<u16> {
        self.mem
            .load_u16(
                self.used.unchecked_add(4 + 8 * u64::from(self.cfg.size)),
                Ordering::Acquire,
            )
            .map_err(|e| self.merr(e))
    }

    /// The available index published at the last kick.
    pub fn published_avail_idx(&self) -> u16 {
        self.kicked_idx
    }
}

/// Descriptor for `s` in a chain: WRITE when the device writes it, NEXT
/// pointing at `next` unless it is the `last`.
pub(crate) fn chain_desc(s: &Seg, last: bool, next: u16) -> RawDesc {
    let mut flags = if s.device_writes {
        VRING_DESC_F_WRITE
    } else {
        0
    };
    if !last {
        flags |= VRING_DESC_F_NEXT;
    }
    RawDesc {
        addr: s.addr.raw_value(),
        len: s.len,
        flags,
        next: if last { 0 } else { next },
    }
}

#[cfg(test)]
mod tests {
    // The driver-side queue checked against rust-vmm's device-side `virtio-queue`,
    // an implementation nobody here wrote.

    use super::*;
    use crate::memory::Backing;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::Bytes;

    fn setup(event_idx: bool, indirect: bool) -> (Arc<GuestMem>, VirtQueue, Queue) {
        let mem = GuestMem::new(4 << 20, &Backing::Memfd).unwrap();
        let cfg = QueueConfig {
            size: 8,
            event_idx,
            indirect,
            max_indirect: 16,
        };
        let vq = VirtQueue::new(0, mem.clone(), cfg).unwrap();
        let mut dev = Queue::new(8).unwrap();
        dev.try_set_desc_table_address(vq.desc_addr()).unwrap();
        dev.try_set_avail_ring_address(vq.avail_addr()).unwrap();
        dev.try_set_used_ring_address(vq.used_addr()).unwrap();
        dev.set_event_idx(event_idx);
        dev.set_ready(true);
        assert!(dev.is_valid(mem.mem()));
        (mem, vq, dev)
    }

    /// The device pops one chain and returns (readable lens, writable lens, head).
    fn device_pop(mem: &GuestMem, dev: &mut Queue) -> Option<(Vec<u32>, Vec<u32>, u16)> {
        let chain = dev.pop_descriptor_chain(mem.mem())?;
        let head = chain.head_index();
        let r: Vec<u32> = chain.clone().readable().map(|d| d.len()).collect();
        let w: Vec<u32> = chain.writable().map(|d| d.len()).collect();
        Some((r, w, head))
    }

    #[test]
    fn direct_chain_round_trip() {
        let (mem, mut vq, mut dev) = setup(false, false);
        let a = mem.alloc(64, 8).unwrap();
        let b = mem.alloc(64, 8).unwrap();
        mem.write(a, b"request").unwrap();
        let head = vq
            .add(&[Seg::out(a, 7), Seg::inp(b, 32), Seg::inp(b, 1)], 42)
            .unwrap();
        assert_eq!(vq.free_descs(), 5);
        assert!(vq.kick().unwrap(), "no suppression: must notify");
        assert_eq!(vq.kick_fd().read().unwrap(), 1);

        let (r, w, dhead) = device_pop(&mem, &mut dev).unwrap();
        assert_eq!(dhead, head);
        assert_eq!(r, vec![7]);
        assert_eq!(w, vec![32, 1]);
        mem.mem().write_slice(b"reply", b).unwrap();
        dev.add_used(mem.mem(), head, 5).unwrap();

        let used = vq.pop_used().unwrap().unwrap();
        assert_eq!(
            used,
            Used {
                head,
                len: 5,
                token: Some(42)
            }
        );
        assert_eq!(vq.free_descs(), 8);
        assert_eq!(mem.read_vec(b, 5).unwrap(), b"reply");
        assert!(vq.pop_used().unwrap().is_none());
    }

    #[test]
    fn indirect_chain_is_one_descriptor() {
        let (mem, mut vq, mut dev) = setup(false, true);
        let a = mem.alloc(4096, 8).unwrap();
        vq.set_force_indirect(true);
        let segs: Vec<Seg> = (0..10)
            .map(|i| Seg::out(a.unchecked_add(i * 16), 16))
            .chain(std::iter::once(Seg::inp(a, 1)))
            .collect();
        let head = vq.add(&segs, 7).unwrap();
        assert_eq!(vq.free_descs(), 7, "an indirect chain takes one slot");
        vq.kick().unwrap();
        let (r, w, _) = device_pop(&mem, &mut dev).unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(w, vec![1]);
        dev.add_used(mem.mem(), head, 1).unwrap();
        assert_eq!(vq.pop_used().unwrap().unwrap().token, Some(7));
    }

    #[test]
    fn falls_back_to_indirect_when_table_is_short() {
        let (mem, mut vq, _dev) = setup(false, true);
        let a = mem.alloc(4096, 8).unwrap();
        let segs = vec![Seg::out(a, 8); 12];
        vq.add(&segs, 1).unwrap();
        assert_eq!(vq.free_descs(), 7);
    }

    #[test]
    fn full_queue_is_an_error() {
        let (mem, mut vq, _dev) = setup(false, false);
        let a = mem.alloc(64, 8).unwrap();
        let segs = vec![Seg::out(a, 8); 9];
        assert!(matches!(vq.add(&segs, 1), Err(QueueError::Full { .. })));
        assert!(matches!(vq.add(&[], 1), Err(QueueError::BadChain { .. })));
    }

    #[test]
    fn event_idx_suppresses_kicks_until_device_asks() {
        let (mem, mut vq, mut dev) = setup(true, false);
        let a = mem.alloc(64, 8).unwrap();
        // avail_event starts at 0: the first kick (idx 0 -> 1) notifies.
        vq.add(&[Seg::out(a, 8)], 1).unwrap();
        assert!(vq.kick().unwrap());
        // The device has not consumed anything nor moved avail_event: no kick.
        vq.add(&[Seg::out(a, 8)], 2).unwrap();
        assert!(!vq.kick().unwrap());
        // The device drains and re-enables notification (avail_event = 2).
        while device_pop(&mem, &mut dev).is_some() {}
        assert!(!dev.enable_notification(mem.mem()).unwrap());
        vq.add(&[Seg::out(a, 8)], 3).unwrap();
        assert!(vq.kick().unwrap());
        assert_eq!(vq.kicks_sent(), 2);
    }

    #[test]
    fn wait_used_sees_interrupt_and_times_out() {
        let (mem, mut vq, mut dev) = setup(true, false);
        let a = mem.alloc(64, 8).unwrap();
        let head = vq.add(&[Seg::inp(a, 8)], 9).unwrap();
        vq.kick().unwrap();
        let err = vq.wait_used(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, QueueError::Timeout { .. }));
        // The driver asked for an interrupt at used index 0.
        dev.pop_descriptor_chain(mem.mem()).unwrap();
        dev.add_used(mem.mem(), head, 8).unwrap();
        assert!(dev.needs_notification(mem.mem()).unwrap());
        vq.call_fd().write(1).unwrap();
        assert_eq!(vq.wait_used(Duration::from_secs(1)).unwrap().token, Some(9));
    }

    #[test]
    fn bogus_used_id_is_reported() {
        let (mem, mut vq, _dev) = setup(false, false);
        // A backend writing id 100 into the used ring of an 8-entry queue.
        mem.write_obj(vq.used_addr().unchecked_add(4), [100u32, 0])
            .unwrap();
        mem.store_u16(vq.used_addr().unchecked_add(2), 1, Ordering::Release)
            .unwrap();
        assert!(matches!(
            vq.pop_used(),
            Err(QueueError::BogusUsed { id: 100, .. })
        ));
    }

    #[test]
    fn raw_chains_reach_the_device_as_written() {
        let (mem, mut vq, mut dev) = setup(false, false);
        let d = vq.reserve_descs(1).unwrap();
        let a = mem.alloc(64, 8).unwrap();
        vq.raw_desc(
            d[0],
            RawDesc {
                addr: a.raw_value(),
                len: 3,
                flags: 0,
                next: 0,
            },
        )
        .unwrap();
        vq.raw_publish(d[0]).unwrap();
        vq.kick().unwrap();
        let (r, _, head) = device_pop(&mem, &mut dev).unwrap();
        assert_eq!((r, head), (vec![3], d[0]));
        dev.add_used(mem.mem(), head, 0).unwrap();
        assert_eq!(vq.pop_used().unwrap().unwrap().token, None);
    }

    #[test]
    fn raw_chain_translates_next_and_releases() {
        let (mem, mut vq, mut dev) = setup(false, false);
        let a = mem.alloc(64, 8).unwrap();
        let desc = |len, flags, next| RawDesc {
            addr: a.raw_value(),
            len,
            flags,
            next,
        };
        // Three descriptors linked by relative index: 0 -> 1 -> 2.
        let slots = vq
            .raw_chain(&[
                desc(16, VRING_DESC_F_NEXT, 1),
                desc(8, VRING_DESC_F_NEXT, 2),
                desc(1, VRING_DESC_F_WRITE, 0),
            ])
            .unwrap();
        assert_eq!(slots.len(), 3);
        assert_eq!(vq.free_descs(), 5);
        vq.kick().unwrap();
        let (r, w, head) = device_pop(&mem, &mut dev).unwrap();
        assert_eq!((r, w, head), (vec![16, 8], vec![1], slots[0]));
        dev.add_used(mem.mem(), head, 0).unwrap();
        assert_eq!(vq.pop_used().unwrap().unwrap().head, slots[0]);
        vq.release_descs(&slots);
        vq.release_descs(&slots);
        assert_eq!(vq.free_descs(), 8, "released once, never twice");

        // A `next` beyond the chain is written as given.
        let slots = vq.raw_chain(&[desc(16, VRING_DESC_F_NEXT, 200)]).unwrap();
        let raw: RawDesc = mem
            .read_obj(vq.desc_addr().unchecked_add(16 * u64::from(slots[0])))
            .unwrap();
        assert_eq!(raw.next, 200);
    }
}
