//! The io_uring engine (`--aio io_uring`): each queue's worker keeps its
//! own ring. A kick takes every request off the virtqueue, submits reads
//! and writes as READV/WRITEV and flushes as FSYNC, and returns; requests
//! complete out of order as their CQEs arrive (the ring's eventfd wakes the
//! worker), and the guest is signalled once per batch of completions.
//! Discard and write-zeroes of an image file go in as one FALLOCATE per
//! range (PUNCH_HOLE, or ZERO_RANGE without UNMAP), one range after the
//! other; what the file system refuses (EOPNOTSUPP) falls back to the
//! synchronous path. GET_ID, discard and write-zeroes of a block device
//! (BLKDISCARD/BLKZEROOUT, which io_uring cannot issue), and requests that
//! fail their checks, finish synchronously as with `--aio sync`; so do
//! reads and writes of a
//! buffered image that the page cache serves at once (`RWF_NOWAIT`), and
//! buffered reads or writes where the filesystem cannot tell (see `start`).
//!
//! A request in the kernel owns a slot: the iovecs the kernel reads and the
//! `Arc` of the memory map they point into, both kept until its CQE.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backend::Worker;
use common::inflight::Tracker;
use common::iov;
use common::memory::Mem;
use common::queue;
use common::serve::Vring;
use io_uring::{opcode, squeue, types, IoUring};
use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::Blk;
use crate::disk::Kind;
use crate::request::{self, status, Plan, Ranges, Scratch, Target};

/// A buffer the kernel reads or writes, laid out like `struct iovec`
/// (addresses as integers, so a slot may cross threads).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawIoVec {
    base: usize,
    len: usize,
}

const _: () = assert!(std::mem::size_of::<RawIoVec>() == std::mem::size_of::<libc::iovec>());
const _: () = assert!(std::mem::align_of::<RawIoVec>() == std::mem::align_of::<libc::iovec>());

/// The alignment an O_DIRECT request needs to go through the ring: the
/// largest logical block size, so no device refuses it.
const DIRECT_ALIGN: usize = 4096;

/// What one in-flight request needs until its CQE.
#[derive(Default)]
struct Slot {
    /// The memory map the iovecs point into; `None` when the slot is free.
    mem: Option<Arc<Mem>>,
    /// The data buffers left to transfer (advanced after a short one).
    iovs: Vec<RawIoVec>,
    head: u16,
    op: Op,
    /// Byte offset of `iovs[0]` in the image, and of the request.
    offset: u64,
    start: u64,
    /// Bytes transferred so far, and in all.
    done: usize,
    total: usize,
    status_addr: GuestAddress,
    /// A discard's or write-zeroes' ranges, one FALLOCATE each in turn;
    /// `range` is the one in the kernel.
    ranges: Ranges,
    range: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Op {
    #[default]
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write-zeroes",
        }
    }

    /// Whether the op moves bytes (and a short result is resubmitted).
    fn transfers(self) -> bool {
        matches!(self, Op::Read | Op::Write)
    }
}

/// One queue's ring and its requests in flight.
pub struct Uring {
    ring: IoUring,
    eventfd: EventFd,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    /// The queue's vring and the latest memory map, for completions
    /// outside a worker's batch (quiesce, drop).
    vring: Option<Vring>,
    mem: Option<Arc<Mem>>,
    /// The queue's in-flight tracker, once the frontend set a region.
    inflight: Option<Tracker>,
    /// Finished requests not yet on the used ring: (head, used length).
    ready: Vec<(u16, u32)>,
    /// Buffered reads, writes run on the worker (the filesystem has no
    /// `RWF_NOWAIT` for them).
    blocking: [bool; 2],
    scratch: Scratch,
    blk: Arc<Blk>,
    queue: usize,
}

/// Whether the kernel lets this process set up a ring (seccomp, an old
/// kernel or `kernel.io_uring_disabled` may not).
pub fn probe() -> io::Result<()> {
    IoUring::new(2).map(drop)
}

impl Uring {
    /// A ring for queue `queue` with room for `slots` requests in flight
    /// (the queue size: a driver cannot have more).
    pub fn new(blk: Arc<Blk>, queue: usize, slots: usize) -> io::Result<Uring> {
        let slots = slots.max(2);
        let entries = slots.next_power_of_two().min(4096) as u32;
        let ring = IoUring::builder()
            .setup_cqsize(slots.next_power_of_two() as u32)
            .build(entries)?;
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        ring.submitter()
            .register_files(&[blk.disk.file().as_raw_fd()])?;
        Ok(Uring {
            ring,
            eventfd,
            slots: (0..slots).map(|_| Slot::default()).collect(),
            free: (0..slots as u32).rev().collect(),
            in_flight: 0,
            vring: None,
            mem: None,
            inflight: None,
            ready: Vec::new(),
            blocking: [false; 2],
            scratch: Scratch::default(),
            blk,
            queue,
        })
    }

    /// The descriptor that becomes readable when CQEs arrive.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// A kick: submits every request on `vring`.
    pub fn kick(&mut self, w: &Worker<'_>) -> io::Result<()> {
        if self.vring.is_none() {
            self.vring = w.vring(0).cloned();
        }
        let mem = w.mem_arc();
        self.mem = Some(mem.clone());
        self.inflight = w.inflight(0);
        w.drain_deferred(0, |chain| {
            if let Err(e) = self.start(chain, &mem) {
                log::error!("queue {}: io_uring submission failed: {e}", self.queue);
            }
        })?;
        // An error here must not end the worker: what was queued stays in
        // the SQ for the next submission; what finished is published.
        if let Err(e) = self.ring.submit() {
            log::error!("queue {}: io_uring submission failed: {e}", self.queue);
        }
        // Reads from the page cache complete within the submission: reap
        // them now, clearing the eventfd first so that their completions
        // do not wake the worker once more for nothing (a CQE posted after
        // the clear signals it again).
        let _ = self.eventfd.read();
        self.reap_logged();
        self.publish()?;
        self.poll(w.window())
    }

    /// With `--poll-us`: while requests are in the kernel, watches the
    /// completion queue (shared memory, no system call) for up to `window`
    /// and completes what arrives, before the worker goes back to sleep. A
    /// request that a fast device finishes within the window then costs no
    /// eventfd wake-up, as with QEMU's polling event loop (`poll-max-ns`).
    fn poll(&mut self, window: Duration) -> io::Result<()> {
        if window.is_zero() {
            return Ok(());
        }
        let start = Instant::now();
        while self.in_flight > 0 && start.elapsed() < window {
            if self.ring.completion().is_empty() {
                std::hint::spin_loop();
                continue;
            }
            // As in `kick`: the eventfd first, so a CQE posted after this
            // read wakes the worker again.
            let _ = self.eventfd.read();
            self.reap_logged();
            self.publish()?;
        }
        Ok(())
    }

    /// [`Self::reap`], an error logged (the worker goes on).
    fn reap_logged(&mut self) {
        if let Err(e) = self.reap() {
            log::error!("queue {}: io_uring submission failed: {e}", self.queue);
        }
    }

    /// The ring's eventfd fired: completes what the kernel finished.
    pub fn completions(&mut self, w: &Worker<'_>) -> io::Result<()> {
        self.mem = Some(w.mem_arc());
        self.inflight = w.inflight(0);
        let _ = self.eventfd.read();
        self.reap_logged();
        self.publish()?;
        self.poll(w.window())
    }

    /// Waits until no request is in the kernel, completing each.
    pub fn quiesce(&mut self) {
        while self.in_flight > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    log::error!("queue {}: waiting for io_uring: {e}", self.queue);
                    return;
                }
            }
            if self.reap().and_then(|()| self.publish()).is_err() {
                log::error!("queue {}: completing requests failed", self.queue);
            }
        }
    }

    /// Parses one chain and submits it (or finishes it now).
    fn start(&mut self, chain: DescriptorChain<Arc<Mem>>, mem: &Arc<Mem>) -> io::Result<()> {
        let head = chain.head_index();
        let blk = self.blk.clone();
        let target = Target {
            disk: &blk.disk,
            config: &blk.config,
            serial: &blk.serial,
        };
        // A free slot first: a driver that reuses heads it has not got
        // back yet could otherwise make the daemon queue without bound.
        // (Should the kernel fail the wait, the request fails below.)
        while self.free.is_empty() {
            match self.ring.submit_and_wait(1) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("queue {}: waiting for io_uring: {e}", self.queue);
                    break;
                }
                Ok(_) => self.reap()?,
            }
        }
        let parsed = match request::parse(chain, &**mem, &mut self.scratch) {
            Ok(p) => p,
            Err(e) => {
                let len = blk.outcome(self.queue, head, Err(e));
                self.ready.push((head, len));
                return Ok(());
            }
        };
        let (op, offset) = match parsed.plan(target.config) {
            Plan::Read { offset } => (Op::Read, offset),
            Plan::Write { offset } => (Op::Write, offset),
            Plan::Flush => (Op::Flush, 0),
            // A file's ranges go to the ring as FALLOCATE; a block device
            // has BLKDISCARD/BLKZEROOUT, which io_uring cannot issue.
            Plan::Ranges(discard) if blk.disk.kind() == Kind::Regular => {
                let ranges = match parsed.ranges(target.config, discard) {
                    Ok(r) => r,
                    Err(done) => {
                        parsed.finish(done.status);
                        self.ready.push((head, done.used_len + 1));
                        return Ok(());
                    }
                };
                let status_addr = parsed.status_addr;
                return self.start_ranges(head, discard, ranges, status_addr, mem);
            }
            Plan::Finished(done) => {
                parsed.finish(done.status);
                self.ready.push((head, done.used_len + 1));
                return Ok(());
            }
            Plan::Sync | Plan::Ranges(_) => {
                let len = blk.outcome(self.queue, head, Ok(parsed.execute(&target)));
                self.ready.push((head, len));
                return Ok(());
            }
        };
        let data = parsed.data(op == Op::Write);
        // O_DIRECT wants aligned buffers and offsets; a request that is
        // not aligned for any device goes the synchronous way, which
        // bounces what the kernel refuses (a CQE has no second chance).
        let aligned = |a: usize| a % DIRECT_ALIGN == 0;
        if blk.disk.direct()
            && !(aligned(offset as usize)
                && data.iter().all(|v| {
                    aligned(v.as_volatile_slice().ptr_guard().as_ptr() as usize) && aligned(v.len())
                }))
        {
            let len = blk.outcome(self.queue, head, Ok(parsed.execute(&target)));
            self.ready.push((head, len));
            return Ok(());
        }
        // On the page cache, a read or write that need not wait is cheaper
        // done here than through the ring: try that first, and give the
        // ring only what would block (or failed: the ring reports it). A
        // filesystem that cannot tell whether a buffered read or write
        // would block (EOPNOTSUPP: tmpfs for both, ext4 for writes) gets
        // those here, as with `--aio sync`: through the ring each would go
        // to a kernel worker thread, slower than the page-cache copy it is.
        let mut now = 0;
        if !blk.disk.direct() && op.transfers() {
            let write = usize::from(op == Op::Write);
            let mut blocking = self.blocking[write];
            if !blocking {
                let r = if op == Op::Read {
                    iov::preadv_nowait(blk.disk.file(), data, offset)
                } else {
                    iov::pwritev_nowait(blk.disk.file(), data, offset)
                };
                match r {
                    Ok(n) => now = n,
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        self.blocking[write] = true;
                        blocking = true;
                    }
                    Err(_) => {}
                }
            }
            if blocking {
                let len = blk.outcome(self.queue, head, Ok(parsed.execute(&target)));
                self.ready.push((head, len));
                return Ok(());
            }
            let total = iov::total_len(data);
            if now == total {
                parsed.finish(status::OK);
                let used = if op == Op::Read { total as u32 } else { 0 };
                self.ready.push((head, used + 1));
                return Ok(());
            }
        }
        let Some(i) = self.free.pop() else {
            parsed.finish(status::IOERR);
            self.ready.push((head, 1));
            return Ok(());
        };
        let slot = &mut self.slots[i as usize];
        slot.iovs.clear();
        slot.iovs.extend(data.iter().map(|v| RawIoVec {
            base: v.as_volatile_slice().ptr_guard_mut().as_ptr() as usize,
            len: v.len(),
        }));
        slot.total = slot.iovs.iter().map(|v| v.len).sum();
        slot.done = now;
        advance(&mut slot.iovs, now);
        slot.mem = Some(mem.clone());
        slot.head = head;
        slot.op = op;
        slot.offset = offset + now as u64;
        slot.start = offset;
        slot.status_addr = parsed.status_addr;
        self.in_flight += 1;
        self.push_or_fail(i)
    }

    /// Takes a slot for a discard or write-zeroes of a file and submits
    /// its first range.
    fn start_ranges(
        &mut self,
        head: u16,
        discard: bool,
        ranges: Ranges,
        status_addr: GuestAddress,
        mem: &Arc<Mem>,
    ) -> io::Result<()> {
        let Some(i) = self.free.pop() else {
            if let Err(e) = mem.write_obj(status::IOERR, status_addr) {
                log::warn!("queue {}: status byte: {e}", self.queue);
            }
            self.ready.push((head, 1));
            return Ok(());
        };
        let slot = &mut self.slots[i as usize];
        slot.iovs.clear();
        slot.mem = Some(mem.clone());
        slot.head = head;
        slot.op = if discard {
            Op::Discard
        } else {
            Op::WriteZeroes
        };
        slot.start = ranges.as_slice().first().map_or(0, |r| r.offset);
        slot.total = ranges.as_slice().iter().map(|r| r.len as usize).sum();
        slot.done = 0;
        slot.status_addr = status_addr;
        slot.ranges = ranges;
        slot.range = 0;
        self.in_flight += 1;
        self.push_or_fail(i)
    }

    /// [`Self::push`], or the request fails (IOERR) if the kernel takes
    /// no more.
    fn push_or_fail(&mut self, i: u32) -> io::Result<()> {
        match self.push(i) {
            Ok(()) => Ok(()),
            Err(e) => self.complete(i, -e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// Queues slot `i`'s SQE (making room in the SQ if it is full).
    fn push(&mut self, i: u32) -> io::Result<()> {
        let slot = &self.slots[i as usize];
        let fd = types::Fixed(0);
        let iov_n = slot.iovs.len().min(common::iov::IOV_MAX) as u32;
        let iovs = slot.iovs.as_ptr().cast::<libc::iovec>();
        let sqe: squeue::Entry = match slot.op {
            Op::Read => opcode::Readv::new(fd, iovs, iov_n)
                .offset(slot.offset)
                .build(),
            Op::Write => opcode::Writev::new(fd, iovs, iov_n)
                .offset(slot.offset)
                .build(),
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Discard | Op::WriteZeroes => {
                let r = slot.ranges.as_slice()[slot.range];
                let mode = if r.unmap {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                };
                opcode::Fallocate::new(fd, r.len)
                    .offset(r.offset)
                    .mode(mode)
                    .build()
            }
        }
        .user_data(u64::from(i));
        loop {
            // SAFETY: the SQE points at `slot.iovs` (laid out as `iovec`,
            // asserted above) and, through them, at guest memory. Both outlive the kernel's use: the slot is not
            // reused, and its iovecs not touched, until its CQE has been
            // reaped (`reap` frees it); the slot holds the `Arc` of the
            // memory map the iovecs were checked against, so the mapping
            // stays in place; and `Drop` waits for every CQE before the
            // slots go. The kernel writes at most those guest ranges, which
            // is what guest memory is shared for.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return Ok(());
            }
            // The SQ is full: hand it to the kernel to make room.
            self.ring.submit()?;
        }
    }

    /// Completes every CQE available, and submits what that queued (the
    /// rest of short transfers).
    fn reap(&mut self) -> io::Result<()> {
        loop {
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                self.complete(cqe.user_data() as u32, cqe.result())?;
            }
            if self.ring.submission().is_empty() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Slot `i` came back with `res`.
    fn complete(&mut self, i: u32, res: i32) -> io::Result<()> {
        let Some(slot) = self.slots.get_mut(i as usize) else {
            return Ok(());
        };
        let mut st = status::OK;
        if matches!(slot.op, Op::Discard | Op::WriteZeroes) {
            return self.range_done(i, res);
        }
        if res < 0 {
            st = if res == -libc::EOPNOTSUPP {
                status::UNSUPP
            } else {
                status::IOERR
            };
            self.log_error(i, io::Error::from_raw_os_error(-res));
        } else if slot.op.transfers() {
            let n = res as usize;
            slot.done += n;
            if slot.done < slot.total {
                if n == 0 {
                    st = status::IOERR;
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "end of image");
                    self.log_error(i, e);
                } else {
                    // A short transfer: the rest goes in again.
                    advance(&mut slot.iovs, n);
                    slot.offset += n as u64;
                    return self.push_or_fail(i);
                }
            }
        }
        let slot = &self.slots[i as usize];
        let used = if slot.op == Op::Read && st == status::OK {
            slot.total as u32
        } else {
            0
        };
        self.finish_slot(i, st, used);
        Ok(())
    }

    /// A FALLOCATE of slot `i`'s current range came back with `res`: the
    /// next range goes in, or the request completes. What the file system
    /// cannot do (EOPNOTSUPP: no ZERO_RANGE on tmpfs, no holes on some)
    /// is left to the synchronous path for this range and the rest, which
    /// falls back as `--aio sync` does (a discard is then a no-op, zeroes
    /// are written).
    fn range_done(&mut self, i: u32, res: i32) -> io::Result<()> {
        let slot = &mut self.slots[i as usize];
        let mut st = status::OK;
        if res == -libc::EOPNOTSUPP || res == -libc::ENOSYS {
            let disk = &self.blk.disk;
            for r in &slot.ranges.as_slice()[slot.range..] {
                let result = if slot.op == Op::Discard {
                    disk.discard(r.offset, r.len)
                } else {
                    disk.write_zeroes(r.offset, r.len, r.unmap)
                };
                if let Err(e) = result {
                    st = status::IOERR;
                    self.log_error(i, e);
                    break;
                }
            }
        } else if res < 0 {
            st = status::IOERR;
            self.log_error(i, io::Error::from_raw_os_error(-res));
        } else {
            let r = slot.ranges.as_slice()[slot.range];
            slot.done += r.len as usize;
            slot.range += 1;
            if slot.range < slot.ranges.as_slice().len() {
                return self.push_or_fail(i);
            }
        }
        self.finish_slot(i, st, 0);
        Ok(())
    }

    /// Writes slot `i`'s status byte, queues its used entry (`used` data
    /// bytes and the status) and frees the slot.
    fn finish_slot(&mut self, i: u32, st: u8, used: u32) {
        let slot = &mut self.slots[i as usize];
        if let Some(mem) = slot.mem.take() {
            if let Err(e) = mem.write_obj(st, slot.status_addr) {
                log::warn!("queue {}: status byte: {e}", self.queue);
            }
        }
        self.ready.push((slot.head, used + 1));
        self.free.push(i);
        self.in_flight -= 1;
    }

    fn log_error(&self, i: u32, e: io::Error) {
        let slot = &self.slots[i as usize];
        if let Some(n) = self.blk.io_errors.hit() {
            log::warn!(
                "queue {} head {}: {} of {} bytes at offset {} on {} failed after {} bytes: {e} \
                 (host I/O error #{n})",
                self.queue,
                slot.head,
                slot.op.name(),
                slot.total,
                slot.start,
                self.blk.disk.path().display(),
                slot.done
            );
        }
    }

    /// Puts what finished on the used ring and signals the guest once.
    fn publish(&mut self) -> io::Result<()> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let (Some(vring), Some(mem)) = (&self.vring, &self.mem) else {
            self.ready.clear();
            return Ok(());
        };
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            // The ring was stopped meanwhile: nobody to tell.
            self.ready.clear();
            return Ok(());
        }
        for (head, len) in self.ready.drain(..) {
            queue::add_used(
                state.get_queue_mut(),
                mem,
                head,
                len,
                self.inflight.as_ref(),
            )?;
        }
        queue::signal_if_needed(&mut state, mem)
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Nothing the kernel may still write to may go first.
        self.quiesce();
    }
}

/// Drops the first `n` bytes of `iovs`.
fn advance(iovs: &mut Vec<RawIoVec>, mut n: usize) {
    let mut whole = 0;
    for v in iovs.iter_mut() {
        if n < v.len {
            v.base += n;
            v.len -= n;
            break;
        }
        n -= v.len;
        whole += 1;
    }
    iovs.drain(..whole);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_skips_whole_and_part_buffers() {
        let mut v = vec![
            RawIoVec {
                base: 0x1000,
                len: 16,
            },
            RawIoVec {
                base: 0x2000,
                len: 32,
            },
        ];
        advance(&mut v, 20);
        assert_eq!(
            v,
            [RawIoVec {
                base: 0x2004,
                len: 28
            }]
        );
        advance(&mut v, 28);
        assert!(v.is_empty());
    }
}
