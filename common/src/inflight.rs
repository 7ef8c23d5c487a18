//! In-flight I/O tracking for split rings (vhost-user's
//! `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`, QEMU's docs/interop/vhost-user.rst
//! "Inflight I/O tracking"; the behaviour follows libvhost-user).
//!
//! The frontend keeps a shared memory region for the backend across
//! backend restarts. Per queue it holds a header (`features` u64, `version`
//! u16, `desc_num` u16, `last_batch_head` u16, `used_idx` u16) and
//! `desc_num` descriptor states (`inflight` u8, 5 bytes padding, `next`
//! u16, `counter` u64). A worker marks a head in flight when it takes the
//! chain off the avail ring (with a counter giving the order it was taken
//! in), names it `last_batch_head` before putting it on the used ring, and
//! clears it (then stores the ring's used index) once the used index is
//! published. A backend that restarts and gets the region back with
//! SET_INFLIGHT_FD ([`Tracker::recover`]) first repairs the one update a
//! crash can cut in half (the used index published, the head not yet
//! cleared: `used_idx` in the region differs from the ring's), then
//! resubmits every head still in flight in counter order, and takes new
//! requests from `used_idx + in flight`: every request taken before the
//! crash and not completed is run again, and none that completed, even when
//! completions came out of order.
//!
//! [`Region`] is the mapping (every access volatile: the frontend shares
//! it); [`Slot`] is what a connection's relay installs a region into and
//! its workers take a [`Tracker`] per queue from.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`.
pub const PROTOCOL_F_INFLIGHT_SHMFD: u64 = 1 << 12;
/// The region version a backend writes into a fresh queue header.
pub const VERSION: u16 = 1;
/// Largest split ring.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Most queues a region may describe.
pub const MAX_QUEUES: u16 = 256;
/// Each queue's part starts on this boundary (libvhost-user's).
const ALIGNMENT: u64 = 64;

/// Queue header: offsets of its fields.
const H_VERSION: usize = 8;
const H_DESC_NUM: usize = 10;
const H_LAST_BATCH_HEAD: usize = 12;
const H_USED_IDX: usize = 14;
const HEADER_LEN: usize = 16;
/// Descriptor state: its size and the offsets of its fields.
const DESC_LEN: usize = 16;
const D_INFLIGHT: usize = 0;
const D_COUNTER: usize = 8;

/// Errors creating or mapping a region; each names the geometry or size.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// num_queues or queue_size out of range.
    #[error(
        "in-flight region for {num_queues} queue(s) of {queue_size}: \
         want 1..={MAX_QUEUES} queues of 1..={MAX_QUEUE_SIZE}"
    )]
    Geometry {
        /// Queues asked for.
        num_queues: u16,
        /// Their size.
        queue_size: u16,
    },
    /// mmap_size or mmap_offset do not fit the geometry or the file.
    #[error("in-flight region of {mmap_size} bytes at offset {offset}: {why}")]
    Size {
        /// The region's size.
        mmap_size: u64,
        /// Its offset in the file.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// memfd_create failed.
    #[error("memfd_create for the in-flight region: {0}")]
    Memfd(#[source] io::Error),
    /// ftruncate failed.
    #[error("sizing the in-flight region to {size} bytes: {source}")]
    Truncate {
        /// The size.
        size: u64,
        /// Cause.
        source: io::Error,
    },
    /// Adding the seals failed.
    #[error("sealing the in-flight region: {0}")]
    Seal(#[source] io::Error),
    /// fstat on the descriptor failed.
    #[error("fstat on the in-flight region's descriptor: {0}")]
    Stat(#[source] io::Error),
    /// mmap failed.
    #[error("mapping the in-flight region ({size} bytes at offset {offset}): {source}")]
    Map {
        /// The size.
        size: u64,
        /// The offset.
        offset: u64,
        /// Cause.
        source: io::Error,
    },
}

/// Bytes of one queue's part for a queue of `queue_size` (libvhost-user's
/// `vu_inflight_queue_size`; always room for the header and every
/// descriptor state).
pub fn queue_region_size(queue_size: u16) -> u64 {
    (DESC_LEN as u64 * u64::from(queue_size) + 2).next_multiple_of(ALIGNMENT)
}

fn check_geometry(num_queues: u16, queue_size: u16) -> Result<(), InflightError> {
    if num_queues == 0 || num_queues > MAX_QUEUES || queue_size == 0 || queue_size > MAX_QUEUE_SIZE
    {
        return Err(InflightError::Geometry {
            num_queues,
            queue_size,
        });
    }
    Ok(())
}

/// A new zeroed region for `num_queues` queues of `queue_size` (GET_INFLIGHT_FD):
/// a memfd, sized and sealed against shrinking (which would make a
/// mapping of it fault), and its size.
pub fn create_memfd(num_queues: u16, queue_size: u16) -> Result<(File, u64), InflightError> {
    check_geometry(num_queues, queue_size)?;
    let size = queue_region_size(queue_size) * u64::from(num_queues);
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(
        c"vhost-user-inflight",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .map_err(|e| InflightError::Memfd(e.into()))?;
    // SAFETY: `fd` was just returned by memfd_create and is owned by no one else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let file = File::from(fd);
    file.set_len(size)
        .map_err(|source| InflightError::Truncate { size, source })?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))
        .map_err(|e| InflightError::Seal(e.into()))?;
    Ok((file, size))
}

/// A mapped in-flight region (SET_INFLIGHT_FD).
#[derive(Debug)]
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    num_queues: u16,
    queue_size: u16,
    stride: usize,
}

// SAFETY: the mapping is plain shared memory owned by the `Region`; every
// access goes through volatile reads and writes of naturally aligned
// integers at checked offsets, which is sound from any thread (what one
// thread writes another may read half-updated only in the sense of seeing
// the old or the new integer, as the frontend may).
unsafe impl Send for Region {}
// SAFETY: as for Send; `&Region` only gives volatile access.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `mmap_size` bytes of `file` at `offset` for `num_queues`
    /// queues of `queue_size`, after checking with fstat that the file
    /// holds them (a mapping past a file's end faults on access).
    pub fn map(
        file: &File,
        mmap_size: u64,
        offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Region, InflightError> {
        check_geometry(num_queues, queue_size)?;
        let bad = |why: String| InflightError::Size {
            mmap_size,
            offset,
            why,
        };
        let stride = queue_region_size(queue_size);
        let need = stride * u64::from(num_queues);
        if mmap_size < need {
            return Err(bad(format!(
                "{num_queues} queue(s) of {queue_size} need {need} bytes"
            )));
        }
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |p| p as u64);
        if offset % page != 0 {
            return Err(bad(format!("the offset is not a multiple of {page}")));
        }
        let file_len = file.metadata().map_err(InflightError::Stat)?.len();
        let end = offset
            .checked_add(mmap_size)
            .ok_or_else(|| bad("the end overflows".into()))?;
        if end > file_len {
            return Err(bad(format!("the file holds only {file_len} bytes")));
        }
        let len = usize::try_from(mmap_size).map_err(|_| bad("too large".into()))?;
        let off = libc::off_t::try_from(offset).map_err(|_| bad("offset too large".into()))?;
        // SAFETY: a new shared mapping chosen by the kernel (no address
        // hint), of a file we checked holds `offset + len` bytes; nothing
        // else in this process refers to that range. Unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(InflightError::Map {
                size: mmap_size,
                offset,
                source: io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| InflightError::Map {
            size: mmap_size,
            offset,
            source: io::Error::other("mmap returned address 0"),
        })?;
        Ok(Region {
            base,
            len,
            num_queues,
            queue_size,
            stride: stride as usize,
        })
    }

    /// Queues described.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Descriptor states per queue.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The byte offset of queue `q`'s field `field`, checked for size
    /// `n` and alignment.
    fn offset(&self, q: usize, field: usize, n: usize) -> usize {
        let at = q * self.stride + field;
        assert!(
            q < usize::from(self.num_queues) && field + n <= self.stride && at + n <= self.len,
            "in-flight region access out of range (a bug in this module)"
        );
        debug_assert_eq!(at % n, 0);
        at
    }

    fn read<T: Copy>(&self, q: usize, field: usize) -> T {
        let at = self.offset(q, field, std::mem::size_of::<T>());
        // SAFETY: `offset` checked that the value lies inside the mapping,
        // which lives as long as `self`; the mapping is page-aligned and
        // every field sits at a multiple of its size, so the read is
        // aligned. Volatile: the frontend shares the memory.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(at).cast::<T>()) }
    }

    fn write<T: Copy>(&self, q: usize, field: usize, v: T) {
        let at = self.offset(q, field, std::mem::size_of::<T>());
        // SAFETY: as in `read`; the mapping is writable (PROT_WRITE).
        unsafe { std::ptr::write_volatile(self.base.as_ptr().add(at).cast::<T>(), v) }
    }

    fn header_u16(&self, q: usize, field: usize) -> u16 {
        u16::from_le(self.read(q, field))
    }

    fn set_header_u16(&self, q: usize, field: usize, v: u16) {
        self.write(q, field, v.to_le())
    }

    fn desc(&self, head: u16) -> usize {
        HEADER_LEN + DESC_LEN * usize::from(head)
    }

    fn inflight(&self, q: usize, head: u16) -> bool {
        self.read::<u8>(q, self.desc(head) + D_INFLIGHT) == 1
    }

    fn set_inflight(&self, q: usize, head: u16, on: bool) {
        self.write::<u8>(q, self.desc(head) + D_INFLIGHT, u8::from(on))
    }

    fn counter(&self, q: usize, head: u16) -> u64 {
        u64::from_le(self.read(q, self.desc(head) + D_COUNTER))
    }

    fn set_counter(&self, q: usize, head: u16, v: u64) {
        self.write(q, self.desc(head) + D_COUNTER, v.to_le())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of `len` bytes, unmapped once;
        // no reference into it outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// One connection's tracking: the region and each queue's counter.
#[derive(Debug)]
pub struct Tracking {
    region: Region,
    counters: Vec<AtomicU64>,
    /// Set for each queue when the region is installed; the queue's first
    /// batch after that recovers (see [`Tracker::take_recovery`]).
    recover: Vec<AtomicBool>,
}

impl Tracking {
    /// Tracking over `region`; every queue recovers at its next batch.
    pub fn new(region: Region) -> Self {
        let n = usize::from(region.num_queues());
        Tracking {
            region,
            counters: (0..n).map(|_| AtomicU64::new(0)).collect(),
            recover: (0..n).map(|_| AtomicBool::new(true)).collect(),
        }
    }
}

/// Where a connection's relay installs the region and its workers find
/// it.
#[derive(Debug, Default)]
pub struct Slot {
    current: RwLock<Option<Arc<Tracking>>>,
}

impl Slot {
    /// SET_INFLIGHT_FD: `region` replaces any earlier one.
    pub fn install(&self, region: Region) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(Tracking::new(region)));
    }

    /// The tracking in place, if any.
    pub fn get(&self) -> Option<Arc<Tracking>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Queue `q`'s tracker, if a region is installed and describes it.
    pub fn tracker(&self, q: usize) -> Option<Tracker> {
        Tracker::new(self.get()?, q)
    }
}

/// One queue's view of the region. The calls for a queue must come one
/// at a time, in ring order (they do: under the vring's lock).
#[derive(Debug, Clone)]
pub struct Tracker {
    tracking: Arc<Tracking>,
    q: usize,
}

impl Tracker {
    /// Queue `q`'s tracker, if the region describes it.
    pub fn new(tracking: Arc<Tracking>, q: usize) -> Option<Tracker> {
        (q < usize::from(tracking.region.num_queues())).then_some(Tracker { tracking, q })
    }

    fn region(&self) -> &Region {
        &self.tracking.region
    }

    fn in_range(&self, head: u16) -> bool {
        head < self.region().queue_size()
    }

    /// `head` was taken off the avail ring.
    pub fn take(&self, head: u16) {
        if !self.in_range(head) {
            return;
        }
        let n = self.tracking.counters[self.q].fetch_add(1, Ordering::Relaxed);
        let r = self.region();
        r.set_counter(self.q, head, n);
        fence(Ordering::Release);
        r.set_inflight(self.q, head, true);
    }

    /// `head` is about to go on the used ring (before the used index moves).
    pub fn before_used(&self, head: u16) {
        if self.in_range(head) {
            self.region()
                .set_header_u16(self.q, H_LAST_BATCH_HEAD, head);
            fence(Ordering::Release);
        }
    }

    /// `head` went on the used ring and the ring's used index is now
    /// `used_idx`.
    pub fn after_used(&self, head: u16, used_idx: u16) {
        if !self.in_range(head) {
            return;
        }
        let r = self.region();
        fence(Ordering::Release);
        r.set_inflight(self.q, head, false);
        fence(Ordering::Release);
        r.set_header_u16(self.q, H_USED_IDX, used_idx);
    }

    /// Whether this queue still has to recover (true once per installed
    /// region; the flag clears).
    pub fn take_recovery(&self) -> bool {
        self.tracking.recover[self.q].swap(false, Ordering::AcqRel)
    }

    /// Recovers the queue after a restart, its ring's used index being
    /// `ring_used_idx` (in guest memory) and its size `ring_size`: a
    /// fresh header is initialised (nothing to resubmit); otherwise the
    /// last batch is repaired if the crash came between publishing the
    /// used index and clearing the head, and the heads still in flight are
    /// returned in the order they were taken. The backend then takes new
    /// requests from `ring_used_idx + heads.len()`. Heads outside the ring
    /// are cleared (logged), as are all of them if more are in flight than
    /// the ring holds.
    pub fn recover(&self, ring_used_idx: u16, ring_size: u16) -> Vec<u16> {
        let (r, q) = (self.region(), self.q);
        if r.header_u16(q, H_VERSION) == 0 {
            r.set_header_u16(q, H_DESC_NUM, r.queue_size());
            r.set_header_u16(q, H_USED_IDX, ring_used_idx);
            fence(Ordering::Release);
            r.set_header_u16(q, H_VERSION, VERSION);
            self.tracking.counters[q].store(0, Ordering::Relaxed);
            return Vec::new();
        }
        if r.header_u16(q, H_USED_IDX) != ring_used_idx {
            let last = r.header_u16(q, H_LAST_BATCH_HEAD);
            if self.in_range(last) {
                r.set_inflight(q, last, false);
            }
            fence(Ordering::Release);
            r.set_header_u16(q, H_USED_IDX, ring_used_idx);
        }
        let mut heads: Vec<(u64, u16)> = Vec::new();
        for head in 0..r.queue_size() {
            if !r.inflight(q, head) {
                continue;
            }
            if head >= ring_size {
                log::warn!(
                    "queue {q}: in-flight head {head} is outside a ring of {ring_size}; dropped"
                );
                r.set_inflight(q, head, false);
                continue;
            }
            heads.push((r.counter(q, head), head));
        }
        if heads.len() > usize::from(ring_size) {
            log::warn!(
                "queue {q}: {} heads in flight on a ring of {ring_size}; none resubmitted",
                heads.len()
            );
            for &(_, head) in &heads {
                r.set_inflight(q, head, false);
            }
            heads.clear();
        }
        heads.sort_unstable();
        let next = heads.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        self.tracking.counters[q].store(next, Ordering::Relaxed);
        heads.into_iter().map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(num_queues: u16, queue_size: u16) -> (Tracking, File) {
        let (file, size) = create_memfd(num_queues, queue_size).unwrap();
        let r = Region::map(&file, size, 0, num_queues, queue_size).unwrap();
        (Tracking::new(r), file)
    }

    /// The one-queue region in `file` (`size` bytes), mapped afresh as a
    /// restarted backend maps it.
    fn tracking(file: &File, size: u64, queue_size: u16) -> Arc<Tracking> {
        Arc::new(Tracking::new(
            Region::map(file, size, 0, 1, queue_size).unwrap(),
        ))
    }

    fn tracker(t: &Arc<Tracking>, q: usize) -> Tracker {
        Tracker::new(t.clone(), q).unwrap()
    }

    /// Reads the raw bytes of `file` (what another process mapping it sees).
    fn bytes(file: &File) -> Vec<u8> {
        use std::io::{Read, Seek};
        let mut f = file.try_clone().unwrap();
        f.rewind().unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn the_layout_is_the_specs() {
        assert_eq!(queue_region_size(256), 4160);
        assert_eq!(queue_region_size(1), 64);
        for qs in [1, 2, 3, 4, 128, 1024, MAX_QUEUE_SIZE] {
            let s = queue_region_size(qs);
            assert!(s >= (HEADER_LEN + DESC_LEN * usize::from(qs)) as u64 && s % 64 == 0);
        }
        let (t, file) = region(2, 8);
        let t = Arc::new(t);
        let q1 = tracker(&t, 1);
        assert!(q1.recover(7, 8).is_empty());
        q1.take(3);
        q1.take(5);
        q1.before_used(5);
        q1.after_used(5, 8);
        let b = bytes(&file);
        let q = queue_region_size(8) as usize;
        assert_eq!(b.len(), 2 * q);
        assert!(b[..q].iter().all(|&x| x == 0), "queue 0 untouched");
        let h = &b[q..];
        assert_eq!(u16::from_le_bytes([h[8], h[9]]), VERSION);
        assert_eq!(u16::from_le_bytes([h[10], h[11]]), 8, "desc_num");
        assert_eq!(u16::from_le_bytes([h[12], h[13]]), 5, "last_batch_head");
        assert_eq!(u16::from_le_bytes([h[14], h[15]]), 8, "used_idx");
        let d = |i: usize| &h[16 + 16 * i..32 + 16 * i];
        assert_eq!(d(3)[0], 1, "head 3 in flight");
        assert_eq!(u64::from_le_bytes(d(3)[8..16].try_into().unwrap()), 0);
        assert_eq!(d(5)[0], 0, "head 5 completed");
        assert_eq!(u64::from_le_bytes(d(5)[8..16].try_into().unwrap()), 1);
    }

    #[test]
    fn a_region_that_does_not_fit_is_refused() {
        let (file, size) = create_memfd(1, 256).unwrap();
        let e = Region::map(&file, size, 0, 2, 256).unwrap_err();
        assert!(e.to_string().contains("need 8320 bytes"), "{e}");
        let e = Region::map(&file, size + 4096, 0, 1, 256).unwrap_err();
        assert!(e.to_string().contains("the file holds only 4160"), "{e}");
        let e = Region::map(&file, size, 4096, 1, 256).unwrap_err();
        assert!(e.to_string().contains("holds only"), "{e}");
        let e = Region::map(&file, size, 12, 1, 256).unwrap_err();
        assert!(e.to_string().contains("multiple of"), "{e}");
        assert!(Region::map(&file, size, 0, 0, 256).is_err());
        assert!(Region::map(&file, size, 0, 1, 0).is_err());
        assert!(Region::map(&file, u64::MAX, u64::MAX, 1, 256).is_err());
        // The memfd cannot shrink under a mapping.
        assert!(file.set_len(0).is_err());
        assert!(create_memfd(0, 4).is_err());
    }

    /// Requests A, B, C taken in that order; C then A complete (out of
    /// order); the daemon dies. Only B comes back, and new requests start
    /// after the three taken.
    #[test]
    fn out_of_order_completions_resubmit_only_what_is_left() {
        let (t, _file) = region(1, 16);
        let t = Arc::new(t);
        let q = tracker(&t, 0);
        assert!(q.take_recovery());
        assert!(q.recover(0, 16).is_empty());
        assert!(!q.take_recovery(), "once per region");
        for head in [4, 9, 2] {
            q.take(head);
        }
        q.before_used(2);
        q.after_used(2, 1);
        q.before_used(4);
        q.after_used(4, 2);
        // A restart: the same file, a new mapping and counters.
        let (file, size) = (_file, queue_region_size(16));
        let t2 = tracking(&file, size, 16);
        let q2 = tracker(&t2, 0);
        assert!(q2.take_recovery());
        assert_eq!(q2.recover(2, 16), [9]);
        // New heads are counted after the resubmitted ones.
        q2.take(1);
        q2.before_used(9);
        q2.after_used(9, 3);
        let t3 = tracking(&file, size, 16);
        assert_eq!(tracker(&t3, 0).recover(3, 16), [1]);
    }

    #[test]
    fn heads_come_back_in_the_order_they_were_taken() {
        let (file, size) = create_memfd(1, 64).unwrap();
        let t = tracking(&file, size, 64);
        let q = tracker(&t, 0);
        q.recover(0, 64);
        let taken = [40u16, 3, 63, 0, 17];
        for &h in &taken {
            q.take(h);
        }
        let t2 = tracking(&file, size, 64);
        assert_eq!(tracker(&t2, 0).recover(0, 64), taken);
    }

    /// The crash came after the used index was published for `head` but
    /// before the head was cleared: the region's used index lags the
    /// ring's, so `last_batch_head` is cleared, not resubmitted.
    #[test]
    fn a_crash_inside_the_last_completion_is_repaired() {
        // SIGKILL after the used element and used.idx = 1 were written: 7
        // is done; before used.idx moved: both are resubmitted.
        for (used_idx, resubmitted) in [(1, &[6][..]), (0, &[6, 7][..])] {
            let (file, size) = create_memfd(1, 8).unwrap();
            let t = tracking(&file, size, 8);
            let q = tracker(&t, 0);
            q.recover(0, 8);
            q.take(6);
            q.take(7);
            q.before_used(7);
            let t2 = tracking(&file, size, 8);
            assert_eq!(tracker(&t2, 0).recover(used_idx, 8), resubmitted);
        }
    }

    #[test]
    fn heads_outside_the_ring_are_dropped_not_resubmitted() {
        let (file, size) = create_memfd(1, 16).unwrap();
        let t = tracking(&file, size, 16);
        let q = tracker(&t, 0);
        q.recover(0, 16);
        q.take(2);
        q.take(12);
        q.take(99); // outside the region: ignored
        let t2 = tracking(&file, size, 16);
        // The restarted ring is smaller than the region says.
        assert_eq!(tracker(&t2, 0).recover(0, 8), [2]);
        assert!(Tracker::new(t2, 1).is_none(), "one queue only");
    }

    #[test]
    fn a_slot_hands_out_trackers_once_a_region_is_in() {
        let slot = Slot::default();
        assert!(slot.tracker(0).is_none());
        let (file, size) = create_memfd(2, 4).unwrap();
        slot.install(Region::map(&file, size, 0, 2, 4).unwrap());
        assert!(slot.tracker(1).is_some());
        assert!(slot.tracker(2).is_none());
    }
}
