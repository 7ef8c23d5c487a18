//! RX: frames from the tap go straight into the guest's buffers with one
//! `readv` each, no copy in the daemon.
//!
//! The tap cannot say how long the next frame is, so enough buffers for
//! the longest possible frame are taken off the ring first (one chain
//! without MRG_RXBUF; with it, as many chains as a 64 KiB GSO frame, or an
//! MTU-sized one, needs). The frame uses the first few; the rest serve the
//! next frame, and whatever is left when the tap runs dry goes back to the
//! ring (the avail index is rewound) before the batch ends, so no chain is
//! ever held between batches. When the ring runs out, the tap is left
//! unread (the kernel queues, then drops, as a NIC would) and the guest's
//! next kick resumes; there is no busy loop.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use common::iov::{self, copy_in_at, copy_out, total_len, GuestIoVecs, IoVecBuf};
use common::memory::Mem;
use common::queue::{avail_sane, signal_if_needed, MAX_CHAIN_DESCRIPTORS};
use common::serve::GuestMem;
use vhost_user_backend::VringState;
use virtio_queue::{DescriptorChain, Queue, QueueT};

use crate::config::{Acked, ETH_OVERHEAD, MAX_GSO_FRAME};
use crate::ctrl::RxFilter;
use crate::tap::VNET_HDR_LEN;

/// Most iovecs one `readv` takes (UIO_MAXIOV).
const MAX_IOVS: usize = 1024;
/// Signal the guest at least this often within one long batch.
const SIGNAL_EVERY: u32 = 64;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_AT: usize = 10;
const ETH_HLEN: usize = 14;

/// A chain taken off the ring and not used yet.
#[derive(Debug, Clone, Copy)]
struct Held {
    head: u16,
    /// Its iovecs: `iovs[start..end]`.
    start: usize,
    end: usize,
    cap: usize,
    /// A chain that cannot be given back by rewinding the avail index
    /// (a malformed one was taken after it): if unused at the end of the
    /// batch it is returned with length 0 instead.
    pinned: bool,
}

/// Per-queue buffers reused from batch to batch.
#[derive(Debug, Default)]
pub struct RxScratch {
    iovs: IoVecBuf,
    held: VecDeque<Held>,
    uses: Vec<(u16, u32)>,
}

/// One batch's view of the scratch: the iovecs of the chains held, over
/// the memory the batch holds.
struct Batch<'a, 'm> {
    iovs: GuestIoVecs<'a, 'm>,
    held: &'a mut VecDeque<Held>,
    held_cap: usize,
    uses: &'a mut Vec<(u16, u32)>,
}

/// What one RX batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxDone {
    /// Frames delivered.
    pub frames: u64,
    /// Bytes delivered (headers included).
    pub bytes: u64,
    /// Frames larger than the buffers, or shorter than a header.
    pub dropped: u64,
    /// Frames the CTRL_RX filter refused.
    pub filtered: u64,
    /// Chains that were not a usable RX buffer (returned with length 0).
    pub malformed: u64,
    /// The ring ran out of buffers with frames possibly left in the tap.
    pub out_of_buffers: bool,
    /// A tap error other than "nothing to read" (errno).
    pub tap_error: Option<i32>,
}

/// What RX needs besides the ring.
#[derive(Debug)]
pub struct RxTarget<'a> {
    /// The tap queue.
    pub fd: &'a File,
    /// Negotiated features.
    pub acked: Acked,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The CTRL_RX filter.
    pub filter: &'a Mutex<RxFilter>,
    /// The MTU frames are sized for (without GSO).
    pub mtu: usize,
}

/// Appends the chain's buffers to `iovs`; `None` (nothing appended) when
/// it cannot take a frame: a readable or unmapped descriptor, a truncated
/// chain, or room for less than a header.
fn collect<'m>(
    chain: DescriptorChain<&'m Mem>,
    mem: &'m Mem,
    iovs: &mut GuestIoVecs<'_, 'm>,
) -> Option<usize> {
    let start = iovs.len();
    let mut last_has_next = true;
    let mut total: usize = 0;
    for desc in chain.take(MAX_CHAIN_DESCRIPTORS) {
        last_has_next = desc.has_next();
        if !desc.is_write_only() || iovs.push(mem, desc.addr(), desc.len()).is_err() {
            iovs.truncate(start);
            return None;
        }
        total += desc.len() as usize;
    }
    if last_has_next || total < VNET_HDR_LEN || iovs.len() - start > MAX_IOVS {
        iovs.truncate(start);
        return None;
    }
    Some(total)
}

impl RxScratch {
    fn batch<'m>(&mut self) -> Batch<'_, 'm> {
        self.held.clear();
        self.uses.clear();
        Batch {
            iovs: self.iovs.walk(),
            held: &mut self.held,
            held_cap: 0,
            uses: &mut self.uses,
        }
    }
}

impl<'m> Batch<'_, 'm> {
    /// Takes chains off the ring until `needed` bytes are held (or, with
    /// `one`, a single chain is).
    fn top_up(
        &mut self,
        queue: &mut Queue,
        mem: &'m Mem,
        needed: usize,
        one: bool,
        done: &mut RxDone,
    ) -> io::Result<bool> {
        let mut used = false;
        // Iovecs of chains already handed to the guest are dead weight.
        match self.held.front() {
            None => self.iovs.truncate(0),
            Some(h) if h.start > 1024 => {
                let shift = h.start;
                self.iovs.drop_front(shift);
                for h in self.held.iter_mut() {
                    h.start -= shift;
                    h.end -= shift;
                }
            }
            Some(_) => {}
        }
        while if one {
            self.held.is_empty()
        } else {
            self.held_cap < needed
        } {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let start = self.iovs.len();
            match collect(chain, mem, &mut self.iovs) {
                Some(cap) => {
                    self.held.push_back(Held {
                        head,
                        start,
                        end: self.iovs.len(),
                        cap,
                        pinned: false,
                    });
                    self.held_cap += cap;
                }
                None => {
                    done.malformed += 1;
                    queue.add_used(mem, head, 0).map_err(io::Error::other)?;
                    used = true;
                    // Rewinding past this chain would offer it again.
                    for h in self.held.iter_mut() {
                        h.pinned = true;
                    }
                }
            }
        }
        Ok(used)
    }
}

/// Moves frames from the tap into the ring of `state` until the tap is
/// empty or the ring is, signalling the guest as it goes. A ring whose
/// avail index ran more than a queue ahead is left alone (see
/// `common::queue::avail_sane`; `q` and `broken` are its index and flag).
pub fn process(
    q: usize,
    state: &mut VringState<GuestMem>,
    mem: &Mem,
    event_idx: bool,
    broken: &AtomicBool,
    target: &RxTarget<'_>,
    scratch: &mut RxScratch,
) -> io::Result<RxDone> {
    let mrg = target.acked.mrg_rxbuf;
    let needed = VNET_HDR_LEN
        + if target.acked.guest_gso {
            MAX_GSO_FRAME
        } else {
            target.mtu + ETH_OVERHEAD
        };
    let mut done = RxDone::default();
    let mut unsignalled = 0u32;
    let mut b = scratch.batch();
    if !avail_sane(q, state.get_queue(), mem, broken)? {
        return Ok(done);
    }
    loop {
        let queue = state.get_queue_mut();
        if b.top_up(queue, mem, needed, !mrg, &mut done)? {
            unsignalled += 1;
        }
        // Enough room for any frame: one chain, or with merged buffers
        // `needed` bytes (or all the ring can hold, if that is less).
        let enough = if mrg {
            b.held_cap >= needed || b.held.len() >= usize::from(queue.size())
        } else {
            !b.held.is_empty()
        };
        if !enough {
            // Out of buffers: ask for a kick when the guest adds some, and
            // look once more in case it already did.
            if event_idx && queue.enable_notification(mem).map_err(io::Error::other)? {
                if !avail_sane(q, queue, mem, broken)? {
                    break;
                }
                continue;
            }
            done.out_of_buffers = true;
            break;
        }
        let (first, last) = if mrg {
            (b.held[0], b.held[b.held.len() - 1])
        } else {
            (b.held[0], b.held[0])
        };
        let end = last.end.min(first.start + MAX_IOVS);
        let iovs = &b.iovs.as_slice()[first.start..end];
        let cap = total_len(iovs);
        let n = match iov::readv(target.fd, iovs) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                done.tap_error = e.raw_os_error();
                break;
            }
        };
        // The tap reports the whole frame's length even when it had to cut
        // it short: such a frame is lost, the buffers are reused.
        if n > cap || n < VNET_HDR_LEN + ETH_HLEN {
            done.dropped += 1;
            continue;
        }
        let mut head = [0u8; VNET_HDR_LEN + 6];
        copy_out(iovs, &mut head);
        let dest: [u8; 6] = [head[12], head[13], head[14], head[15], head[16], head[17]];
        if !target
            .filter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accepts(&target.mac, &dest)
        {
            done.filtered += 1;
            continue;
        }
        // Hand the chains the frame filled to the guest.
        let mut left = n;
        let mut chains: u16 = 0;
        b.uses.clear();
        while left > 0 {
            let Some(h) = b.held.pop_front() else {
                break;
            };
            b.held_cap -= h.cap;
            let len = left.min(h.cap);
            left -= len;
            b.uses.push((h.head, len as u32));
            chains += 1;
        }
        copy_in_at(iovs, NUM_BUFFERS_AT, &chains.to_le_bytes());
        for &(head, len) in b.uses.iter() {
            queue.add_used(mem, head, len).map_err(io::Error::other)?;
        }
        done.frames += 1;
        done.bytes += n as u64;
        unsignalled += 1;
        if unsignalled >= SIGNAL_EVERY {
            signal_if_needed(state, mem)?;
            unsignalled = 0;
        }
    }
    // Chains not used go back to the ring for this queue's next batch: the
    // ones taken after the last malformed chain by rewinding the avail
    // index, any before it (rare: the guest gave a bad buffer) as used
    // with length 0.
    let queue = state.get_queue_mut();
    let mut back: u16 = 0;
    for h in b.held.iter() {
        if h.pinned {
            queue.add_used(mem, h.head, 0).map_err(io::Error::other)?;
            unsignalled += 1;
        } else {
            back += 1;
        }
    }
    if back > 0 {
        queue.set_next_avail(queue.next_avail().wrapping_sub(back));
    }
    if unsignalled > 0 {
        signal_if_needed(state, mem)?;
    }
    Ok(done)
}
