//! The buffers a virtio-net driver keeps on its rings: preallocated TX
//! slots, an RX ring kept full (with or without merged buffers) and the
//! control queue's command buffer.
//!
//! Each ring works on a [`VirtQueue`] passed in by the caller, so the same
//! code runs over a vhost-user device ([`super::NetClient`]) and over a bare
//! queue in unit tests.

use std::time::{Duration, Instant};

use vm_memory::{Address, GuestAddress};

use super::hdr::{VirtioNetHdr, NET_HDR_LEN};
use super::{NetError, Result};
use crate::memory::{GuestMem, MemoryError};
use crate::virtqueue::{QueueError, Seg, Used, VirtQueue};

fn qerr(queue: u16, op: &'static str) -> impl FnOnce(QueueError) -> NetError {
    move |source| NetError::Queue { queue, op, source }
}

fn merr(queue: u16, op: &'static str) -> impl FnOnce(MemoryError) -> NetError {
    move |source| NetError::Memory { queue, op, source }
}

/// Waits for one used entry until `deadline`; the error names `op`.
fn wait_until(vq: &mut VirtQueue, deadline: Instant, op: &'static str) -> Result<Used> {
    let queue = vq.index();
    let left = deadline.saturating_duration_since(Instant::now());
    vq.wait_used(left).map_err(qerr(queue, op))
}

// ---------------------------------------------------------------- TX ----

/// How a TX chain carries the header and the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxLayout {
    /// Header and frame in one descriptor (what Linux does with `any_header_sg`).
    #[default]
    OneDesc,
    /// The 12-byte header in its own descriptor, the frame in a second one.
    TwoDescs,
}

const SCRATCH_TOKEN: u64 = u64::MAX - 0x5c;

/// Preallocated TX buffers ("slots") of one transmit queue.
#[derive(Debug)]
pub struct TxRing {
    queue: u16,
    slot_len: u32,
    layout: TxLayout,
    slots: Vec<GuestAddress>,
    free: Vec<u32>,
    prefilled: Option<u32>,
    scratch: Option<(GuestAddress, u32)>,
    scratch_busy: bool,
    sent: u64,
    completed: u64,
}

impl TxRing {
    /// Allocates one slot of `slot_len` bytes (header included) per
    /// descriptor of `vq`.
    pub fn new(vq: &VirtQueue, slot_len: u32, layout: TxLayout) -> Result<Self> {
        let queue = vq.index();
        let n = u32::from(vq.size());
        let stride = u64::from(slot_len).next_multiple_of(64);
        let base = vq
            .mem()
            .alloc(stride * u64::from(n), 4096)
            .map_err(merr(queue, "allocate TX slots"))?;
        Ok(TxRing {
            queue,
            slot_len,
            layout,
            slots: (0..u64::from(n))
                .map(|i| base.unchecked_add(i * stride))
                .collect(),
            free: (0..n).rev().collect(),
            prefilled: None,
            scratch: None,
            scratch_busy: false,
            sent: 0,
            completed: 0,
        })
    }

    /// Bytes per slot, header included.
    pub fn slot_len(&self) -> u32 {
        self.slot_len
    }
    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }
    /// Chains handed to the device and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len() + usize::from(self.scratch_busy)
    }
    /// Chains posted so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
    /// Chains the device has returned so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }
    /// How the next chains carry header and frame.
    pub fn layout(&self) -> TxLayout {
        self.layout
    }
    /// Changes how the next chains carry header and frame.
    pub fn set_layout(&mut self, layout: TxLayout) {
        self.layout = layout;
    }

    /// Takes back every chain the device has finished with; returns how many.
    pub fn reap(&mut self, vq: &mut VirtQueue) -> Result<usize> {
        let mut n = 0;
        while let Some(u) = vq.pop_used().map_err(qerr(self.queue, "TX reap"))? {
            self.complete(u)?;
            n += 1;
        }
        Ok(n)
    }

    fn complete(&mut self, u: Used) -> Result<()> {
        self.completed += 1;
        match u.token {
            Some(SCRATCH_TOKEN) => self.scratch_busy = false,
            Some(t) if (t as usize) < self.slots.len() => self.free.push(t as u32),
            _ => {
                return Err(NetError::UnknownBuffer {
                    queue: self.queue,
                    op: "TX reap",
                    head: u.head,
                })
            }
        }
        Ok(())
    }

    fn kick(&self, vq: &mut VirtQueue) -> Result<bool> {
        vq.kick().map_err(qerr(self.queue, "TX kick"))
    }

    /// Waits until `deadline` for the device to return a chain and takes
    /// it back; the error names `op`.
    fn complete_next(
        &mut self,
        vq: &mut VirtQueue,
        deadline: Instant,
        op: &'static str,
    ) -> Result<()> {
        let u = wait_until(vq, deadline, op)?;
        self.complete(u)
    }

    fn segs(&self, addr: GuestAddress, len: u32) -> Vec<Seg> {
        let hdr = NET_HDR_LEN as u32;
        match self.layout {
            TxLayout::TwoDescs if len > hdr => vec![
                Seg::out(addr, hdr),
                Seg::out(addr.unchecked_add(u64::from(hdr)), len - hdr),
            ],
            _ => vec![Seg::out(addr, len)],
        }
    }

    /// Posts slot `slot` holding `len` bytes. Returns false (slot kept free)
    /// when the ring has no room for the chain.
    fn post(&mut self, vq: &mut VirtQueue, slot: u32, len: u32) -> Result<bool> {
        let segs = self.segs(self.slots[slot as usize], len);
        match vq.add(&segs, u64::from(slot)) {
            Ok(_) => {
                self.sent += 1;
                Ok(true)
            }
            Err(QueueError::Full { .. }) => Ok(false),
            Err(e) => Err(qerr(self.queue, "TX add")(e)),
        }
    }

    /// Posts slot `slot` holding `len` bytes, or puts it back on the free
    /// list when the ring has no room; whether it was posted.
    fn post_or_free(&mut self, vq: &mut VirtQueue, slot: u32, len: u32) -> Result<bool> {
        let posted = self.post(vq, slot, len)?;
        if !posted {
            self.free.push(slot);
        }
        Ok(posted)
    }

    /// Kicks if `posted` chains were (more than none); returns `posted`.
    fn kick_posted(&self, vq: &mut VirtQueue, posted: usize) -> Result<usize> {
        if posted > 0 {
            self.kick(vq)?;
        }
        Ok(posted)
    }

    /// A free slot, waiting up to `timeout` for the device to return one.
    fn take_slot(&mut self, vq: &mut VirtQueue, deadline: Instant) -> Result<u32> {
        self.reap(vq)?;
        loop {
            if let Some(s) = self.free.pop() {
                return Ok(s);
            }
            self.kick(vq)?;
            self.complete_next(vq, deadline, "TX wait for a free slot")?;
        }
    }

    fn write_slot(&self, vq: &VirtQueue, slot: u32, parts: &[&[u8]]) -> Result<u32> {
        let mut at = self.slots[slot as usize];
        let mut len = 0u32;
        for p in parts {
            vq.mem()
                .write(at, p)
                .map_err(merr(self.queue, "TX write"))?;
            at = at.unchecked_add(p.len() as u64);
            len += p.len() as u32;
        }
        Ok(len)
    }

    fn check_fits(&self, len: usize, op: &'static str) -> Result<()> {
        if len > self.slot_len as usize {
            return Err(NetError::TooLarge {
                queue: self.queue,
                op,
                len,
                max: self.slot_len as usize,
            });
        }
        Ok(())
    }

    /// Queues `hdr` + `frame` in a free slot (waiting up to `timeout` for
    /// one), kicks, and reaps finished chains. Does not wait for the device
    /// to finish with it.
    pub fn send(
        &mut self,
        vq: &mut VirtQueue,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<()> {
        self.check_fits(NET_HDR_LEN + frame.len(), "TX send")?;
        let deadline = Instant::now() + timeout;
        self.send_in_slot(vq, &[&hdr.to_bytes(), frame], deadline)
    }

    /// Writes `parts` in a free slot (waiting until `deadline` for one),
    /// posts it, kicks and reaps finished chains.
    fn send_in_slot(
        &mut self,
        vq: &mut VirtQueue,
        parts: &[&[u8]],
        deadline: Instant,
    ) -> Result<()> {
        let slot = self.take_slot(vq, deadline)?;
        self.prefilled = None;
        let len = self.write_slot(vq, slot, parts)?;
        self.post_blocking(vq, slot, len, deadline)?;
        self.kick(vq)?;
        self.reap(vq)?;
        Ok(())
    }

    fn post_blocking(
        &mut self,
        vq: &mut VirtQueue,
        slot: u32,
        len: u32,
        deadline: Instant,
    ) -> Result<()> {
        while !self.post(vq, slot, len)? {
            self.kick(vq)?;
            self.complete_next(vq, deadline, "TX wait for descriptors")?;
        }
        Ok(())
    }

    /// Sends `bytes` as the whole chain, with no header added: for malformed
    /// input. Bytes that fit a slot go out like [`TxRing::send`]; bigger ones
    /// go through a scratch buffer in one descriptor, and this call then
    /// waits until the device returns it.
    pub fn send_raw(&mut self, vq: &mut VirtQueue, bytes: &[u8], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        if bytes.len() <= self.slot_len as usize {
            return self.send_in_slot(vq, &[bytes], deadline);
        }
        let len = u32::try_from(bytes.len()).map_err(|_| NetError::TooLarge {
            queue: self.queue,
            op: "TX send_raw",
            len: bytes.len(),
            max: u32::MAX as usize,
        })?;
        let addr = match self.scratch {
            Some((a, cap)) if cap >= len => a,
            _ => {
                let a = vq
                    .mem()
                    .alloc(u64::from(len), 4096)
                    .map_err(merr(self.queue, "allocate TX scratch"))?;
                self.scratch = Some((a, len));
                a
            }
        };
        vq.mem()
            .write(addr, bytes)
            .map_err(merr(self.queue, "TX write"))?;
        loop {
            match vq.add(&[Seg::out(addr, len)], SCRATCH_TOKEN) {
                Ok(_) => break,
                Err(QueueError::Full { .. }) => {
                    self.kick(vq)?;
                    self.complete_next(vq, deadline, "TX wait for descriptors")?;
                }
                Err(e) => return Err(qerr(self.queue, "TX add")(e)),
            }
        }
        self.sent += 1;
        self.scratch_busy = true;
        self.kick(vq)?;
        while self.scratch_busy {
            self.complete_next(vq, deadline, "TX wait for the oversize buffer")?;
        }
        Ok(())
    }

    /// Queues as many of `frames` as there are free slots and descriptors
    /// right now, with one kick. Returns how many were queued (the rest are
    /// the caller's to retry).
    pub fn send_batch(
        &mut self,
        vq: &mut VirtQueue,
        frames: &[(VirtioNetHdr, &[u8])],
    ) -> Result<usize> {
        self.reap(vq)?;
        let mut n = 0;
        for (hdr, frame) in frames {
            self.check_fits(NET_HDR_LEN + frame.len(), "TX send_batch")?;
            let Some(slot) = self.free.pop() else { break };
            self.prefilled = None;
            let len = self.write_slot(vq, slot, &[&hdr.to_bytes(), frame])?;
            if !self.post_or_free(vq, slot, len)? {
                break;
            }
            n += 1;
        }
        self.kick_posted(vq, n)
    }

    /// Waits until the device has returned every chain (up to `timeout`).
    pub fn flush(&mut self, vq: &mut VirtQueue, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.kick(vq)?;
        self.reap(vq)?;
        while self.in_flight() > 0 {
            self.complete_next(vq, deadline, "TX flush")?;
        }
        Ok(())
    }

    /// Writes `hdr` + `frame` into every slot once (after a [`TxRing::flush`]),
    /// for [`TxRing::send_prefilled`].
    pub fn prefill(
        &mut self,
        vq: &mut VirtQueue,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<()> {
        self.check_fits(NET_HDR_LEN + frame.len(), "TX prefill")?;
        self.flush(vq, timeout)?;
        let mut len = 0;
        for slot in 0..self.slots.len() as u32 {
            len = self.write_slot(vq, slot, &[&hdr.to_bytes(), frame])?;
        }
        self.prefilled = Some(len);
        Ok(())
    }

    /// The benchmark fast path: posts up to `n` prefilled slots without
    /// copying anything, one kick. Returns how many were posted.
    pub fn send_prefilled(&mut self, vq: &mut VirtQueue, n: usize) -> Result<usize> {
        let len = self
            .prefilled
            .ok_or(NetError::NotPrefilled { queue: self.queue })?;
        self.reap(vq)?;
        let mut posted = 0;
        while posted < n {
            let Some(slot) = self.free.pop() else { break };
            if !self.post_or_free(vq, slot, len)? {
                break;
            }
            posted += 1;
        }
        self.kick_posted(vq, posted)
    }
}

// ---------------------------------------------------------------- RX ----

/// How the RX ring's buffers look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxLayout {
    /// Bytes per descriptor.
    pub buf_len: u32,
    /// Descriptors chained into one buffer (Linux's "big packets" mode uses
    /// several pages per buffer when GUEST_TSO is on and MRG_RXBUF off).
    pub descs_per_buf: u16,
    /// VIRTIO_NET_F_MRG_RXBUF: one frame may span `num_buffers` buffers.
    pub mergeable: bool,
}

impl RxLayout {
    /// What a Linux guest would post for these features: 2 KiB buffers
    /// with MRG_RXBUF; without it, 65,562-byte buffers (17 pages) when a
    /// GUEST_TSO/ECN feature lets the device send big frames, else 2 KiB.
    pub fn for_features(mergeable: bool, guest_gso: bool) -> Self {
        match (mergeable, guest_gso) {
            (false, true) => RxLayout {
                buf_len: 4096,
                descs_per_buf: 17,
                mergeable,
            },
            _ => RxLayout {
                buf_len: 2048,
                descs_per_buf: 1,
                mergeable,
            },
        }
    }

    /// Bytes one buffer holds.
    pub fn capacity(&self) -> u32 {
        self.buf_len * u32::from(self.descs_per_buf)
    }
}

/// Frames and bytes seen by the counting receive path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxCount {
    /// Complete frames.
    pub frames: u64,
    /// Frame bytes, headers excluded.
    pub bytes: u64,
    /// Used buffers taken off the ring.
    pub buffers: u64,
    /// Buffers the device returned shorter than the header (a device bug:
    /// Linux counts them in `rx_length_errors` and reposts them); counted
    /// and skipped here instead of failing the count.
    pub short: u64,
}

/// A received frame: its header and its bytes.
pub type RxFrame = (VirtioNetHdr, Vec<u8>);

#[derive(Debug)]
struct Partial {
    hdr: VirtioNetHdr,
    data: Vec<u8>,
    remaining: u16,
}

/// The receive buffers of one RX queue, reposted as soon as they are read.
#[derive(Debug)]
pub struct RxRing {
    queue: u16,
    layout: RxLayout,
    slots: Vec<GuestAddress>,
    unposted: Vec<u32>,
    partial: Option<Partial>,
}

impl RxRing {
    /// Allocates as many buffers as `vq` holds chains of this layout.
    /// Nothing is posted until [`RxRing::fill`].
    pub fn new(vq: &VirtQueue, layout: RxLayout) -> Result<Self> {
        let queue = vq.index();
        let per = layout.descs_per_buf.max(1);
        let n = (vq.size() / per).max(1);
        let cap = u64::from(layout.capacity());
        let base = vq
            .mem()
            .alloc(cap * u64::from(n), 4096)
            .map_err(merr(queue, "allocate RX buffers"))?;
        Ok(RxRing {
            queue,
            layout: RxLayout {
                descs_per_buf: per,
                ..layout
            },
            slots: (0..u64::from(n))
                .map(|i| base.unchecked_add(i * cap))
                .collect(),
            unposted: (0..u32::from(n)).rev().collect(),
            partial: None,
        })
    }

    /// The buffer layout.
    pub fn layout(&self) -> RxLayout {
        self.layout
    }
    /// Number of buffers.
    pub fn buffers(&self) -> usize {
        self.slots.len()
    }
    /// Buffers currently on the ring.
    pub fn posted(&self) -> usize {
        self.slots.len() - self.unposted.len()
    }

    /// Posts every buffer that is not on the ring and kicks once.
    /// Returns how many were posted.
    pub fn fill(&mut self, vq: &mut VirtQueue) -> Result<usize> {
        let mut n = 0;
        while let Some(slot) = self.unposted.pop() {
            let base = self.slots[slot as usize];
            let segs: Vec<Seg> = (0..u64::from(self.layout.descs_per_buf))
                .map(|i| {
                    Seg::inp(
                        base.unchecked_add(i * u64::from(self.layout.buf_len)),
                        self.layout.buf_len,
                    )
                })
                .collect();
            match vq.add(&segs, u64::from(slot)) {
                Ok(_) => n += 1,
                Err(QueueError::Full { .. }) => {
                    self.unposted.push(slot);
                    break;
                }
                Err(e) => return Err(qerr(self.queue, "RX refill")(e)),
            }
        }
        if n > 0 {
            vq.kick().map_err(qerr(self.queue, "RX kick"))?;
        }
        Ok(n)
    }

    /// Takes one used buffer and returns the frame bytes it carried, plus the
    /// frame if this buffer completed one. Without `copy` the data is only
    /// counted (the returned frame's data is empty).
    fn take(&mut self, mem: &GuestMem, u: Used, copy: bool) -> Result<(usize, Option<RxFrame>)> {
        let queue = self.queue;
        let slot = match u.token {
            Some(t) if (t as usize) < self.slots.len() => t as u32,
            _ => {
                return Err(NetError::UnknownBuffer {
                    queue,
                    op: "RX",
                    head: u.head,
                })
            }
        };
        self.unposted.push(slot);
        let base = self.slots[slot as usize];
        let cap = self.layout.capacity();
        if u.len > cap {
            // Whatever frame was being assembled is lost with this buffer.
            self.partial = None;
            return Err(NetError::RxOverflow {
                queue,
                len: u.len,
                cap,
            });
        }
        let len = u.len as usize;
        let read = |addr: GuestAddress, n: usize| -> Result<Vec<u8>> {
            if copy {
                mem.read_vec(addr, n).map_err(merr(queue, "RX read"))
            } else {
                Ok(Vec::new())
            }
        };
        if let Some(p) = self.partial.as_mut() {
            p.data.extend_from_slice(&read(base, len)?);
            p.remaining -= 1;
            if p.remaining > 0 {
                return Ok((len, None));
            }
            let p = self.partial.take().expect("partial frame");
            return Ok((len, Some((p.hdr, p.data))));
        }
        if len < NET_HDR_LEN {
            return Err(NetError::RxShort { queue, len: u.len });
        }
        let hb = mem
            .read_vec(base, NET_HDR_LEN)
            .map_err(merr(queue, "RX read header"))?;
        let hdr = VirtioNetHdr::from_bytes(&hb).expect("12 bytes read");
        let data = read(base.unchecked_add(NET_HDR_LEN as u64), len - NET_HDR_LEN)?;
        let tail = len - NET_HDR_LEN;
        if self.layout.mergeable && hdr.num_buffers != 1 {
            if hdr.num_buffers == 0 {
                return Err(NetError::RxBadNumBuffers {
                    queue,
                    num_buffers: 0,
                });
            }
            self.partial = Some(Partial {
                hdr,
                data,
                remaining: hdr.num_buffers - 1,
            });
            return Ok((tail, None));
        }
        Ok((tail, Some((hdr, data))))
    }

    /// Receives the next frame if one is complete now; buffers read are reposted.
    pub fn try_recv(&mut self, vq: &mut VirtQueue) -> Result<Option<RxFrame>> {
        let mem = vq.mem().clone();
        let mut out = None;
        while let Some(u) = vq.pop_used().map_err(qerr(self.queue, "RX pop"))? {
            if let (_, Some(frame)) = self.take(&mem, u, true)? {
                out = Some(frame);
                break;
            }
        }
        self.fill(vq)?;
        Ok(out)
    }

    /// Waits up to `timeout` for a complete frame (reassembled from
    /// `num_buffers` buffers with MRG_RXBUF) and reposts the buffers it used.
    pub fn recv(&mut self, vq: &mut VirtQueue, timeout: Duration) -> Result<RxFrame> {
        let deadline = Instant::now() + timeout;
        let mem = vq.mem().clone();
        loop {
            let u = match vq.pop_used().map_err(qerr(self.queue, "RX pop"))? {
                Some(u) => u,
                None => {
                    // Give the device back what we read before sleeping, so a
                    // frame spanning more buffers than are posted can finish.
                    self.fill(vq)?;
                    wait_until(vq, deadline, "RX wait")?
                }
            };
            if let (_, Some(frame)) = self.take(&mem, u, true)? {
                self.fill(vq)?;
                return Ok(frame);
            }
        }
    }

    /// The benchmark fast path: waits up to `timeout` for the first used
    /// buffer, then takes everything the device has returned, counting
    /// frames and bytes without copying, and refills with one kick. Returns
    /// zero counts if nothing arrived in time.
    pub fn recv_count(&mut self, vq: &mut VirtQueue, timeout: Duration) -> Result<RxCount> {
        let mut c = RxCount::default();
        let mem = vq.mem().clone();
        let first = match vq.pop_used().map_err(qerr(self.queue, "RX pop"))? {
            Some(u) => Some(u),
            None => match vq.wait_used(timeout) {
                Ok(u) => Some(u),
                Err(QueueError::Timeout { .. }) => None,
                Err(e) => return Err(qerr(self.queue, "RX wait")(e)),
            },
        };
        let mut next = first;
        while let Some(u) = next {
            c.buffers += 1;
            let (bytes, frame) = match self.take(&mem, u, false) {
                Ok(t) => t,
                // `take` has already given the buffer back for reposting.
                Err(NetError::RxShort { .. }) => {
                    c.short += 1;
                    next = vq.pop_used().map_err(qerr(self.queue, "RX pop"))?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            c.bytes += bytes as u64;
            c.frames += u64::from(frame.is_some());
            next = vq.pop_used().map_err(qerr(self.queue, "RX pop"))?;
        }
        self.fill(vq)?;
        Ok(c)
    }
}

// -------------------------------------------------------------- ctrl ----

/// Bytes of command data the control buffer takes.
pub const CTRL_MAX_DATA: usize = 4096 - 64;

/// The control queue's command buffer.
#[derive(Debug)]
pub struct CtrlQueue {
    queue: u16,
    buf: GuestAddress,
}

impl CtrlQueue {
    /// Allocates the command buffer for control queue `vq`.
    pub fn new(vq: &VirtQueue) -> Result<Self> {
        let queue = vq.index();
        let buf = vq
            .mem()
            .alloc(4096, 4096)
            .map_err(merr(queue, "allocate control buffer"))?;
        Ok(CtrlQueue { queue, buf })
    }

    /// Sends one command (class, command, data) and waits for the device's
    /// ack byte: VIRTIO_NET_OK (0) or VIRTIO_NET_ERR (1). An ack of 0xff
    /// means the device returned the chain without writing it.
    pub fn command(
        &mut self,
        vq: &mut VirtQueue,
        class: u8,
        cmd: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<u8> {
        let queue = self.queue;
        if data.len() > CTRL_MAX_DATA {
            return Err(NetError::TooLarge {
                queue,
                op: "control command",
                len: data.len(),
                max: CTRL_MAX_DATA,
            });
        }
        let mem = vq.mem().clone();
        let data_at = self.buf.unchecked_add(8);
        let ack_at = self.buf.unchecked_add(4095);
        let w = |addr, bytes: &[u8]| mem.write(addr, bytes).map_err(merr(queue, "control write"));
        w(self.buf, &[class, cmd])?;
        w(data_at, data)?;
        w(ack_at, &[0xff])?;
        let mut segs = vec![Seg::out(self.buf, 2)];
        if !data.is_empty() {
            segs.push(Seg::out(data_at, data.len() as u32));
        }
        segs.push(Seg::inp(ack_at, 1));
        vq.run(&segs, timeout)
            .map_err(qerr(queue, "control command"))?;
        let ack = mem
            .read_vec(ack_at, 1)
            .map_err(merr(queue, "control read ack"))?;
        Ok(ack[0])
    }
}
