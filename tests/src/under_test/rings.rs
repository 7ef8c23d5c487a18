//! Malformed rings, written once for every daemon: each [`RingUnderTest`]
//! is one queue of one daemon (blk's request queue with a read or a write,
//! net's TX and RX queues, virtiofsd's request queue) with a good chain of
//! its own; [`Shape`] breaks that chain the ways a driver must never
//! (loops, indices out of range, chains longer than the queue, bad
//! indirect tables, buffers outside guest memory or across its end); the
//! ring checks its daemon's contract for the answer (see [`Ring`]).

use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestAddress;

use crate::fixture::Daemon;
use crate::memory::GuestMem;
use crate::virtqueue::{
    indirect_table, RawDesc, Used, VirtQueue, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

/// What buffers the device must not write are preset to.
pub const FILL: u8 = 0xaa;
/// An address far beyond any guest memory here.
pub const OUTSIDE: u64 = 1 << 40;
/// How long a malformed chain may take to come back (a hang is a failure).
pub const T: Duration = Duration::from_secs(10);

/// A good request on a ring, in guest memory.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Its descriptors, linked by relative index (descriptor `i` has NEXT
    /// to `i + 1`, the last has none), the form `VirtQueue::raw_chain`
    /// takes and an indirect table holds.
    pub descs: Vec<RawDesc>,
}

impl Chain {
    /// The buffers the device may write and what they hold now.
    pub fn writable(&self, mem: &GuestMem) -> Vec<(GuestAddress, Vec<u8>)> {
        self.descs
            .iter()
            .filter(|d| d.flags & VRING_DESC_F_WRITE != 0)
            .map(|d| {
                let at = GuestAddress(d.addr);
                (at, mem.read_vec(at, d.len as usize).unwrap())
            })
            .collect()
    }
}

/// A daemon and a driver connected to it, ready to take raw chains on the
/// queue under test.
pub trait Ring {
    /// The queue under test; every descriptor of it is free.
    fn queue(&mut self) -> &mut VirtQueue;
    /// A good request in fresh guest memory, its writable buffers preset
    /// (to [`FILL`], or what the device's contract says it keeps).
    fn good_chain(&mut self) -> Chain;
    /// Checks the contract's answer to the malformed chain `head` that came
    /// back as `used`: `untouched` (writable buffers and what they held)
    /// is as it was where the contract says nothing is written; the
    /// refusal is logged where the contract says so; the daemon lives and
    /// the queue still serves.
    fn assert_refused(&mut self, head: u16, used: Used, untouched: &[(GuestAddress, Vec<u8>)]);
    /// Checks that the queue serves a good request.
    fn assert_serves(&mut self);
    /// After the queue under test broke (its avail index jumped past the
    /// queue size): the device's other queues still serve on this
    /// connection.
    fn assert_other_queues_serve(&mut self);
    /// Connects anew; the new connection serves every queue.
    fn reconnect_and_serve(&mut self);
    /// The daemon.
    fn daemon(&mut self) -> &mut Daemon;
}

/// One queue of one daemon, as the malformed-ring suite sees it.
#[derive(Debug)]
pub struct RingUnderTest {
    /// The ring's name (`blk_read`, `net_tx`, ...).
    pub name: &'static str,
    /// Starts a daemon and connects a driver.
    pub rig: fn() -> Box<dyn Ring>,
}

impl RingUnderTest {
    /// A fresh daemon and driver.
    pub fn rig(&self) -> Box<dyn Ring> {
        (self.rig)()
    }
}

/// The ways a good chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The last descriptor leads back to the first.
    DescriptorLoop,
    /// The last descriptor has NEXT to an index beyond the queue.
    NextOutOfRange,
    /// Every descriptor of the queue in one chain (the first of the good
    /// chain, then 8-byte pieces of its second), the last leading back to
    /// the second: it never ends within the queue size.
    LongerThanTheQueue,
    /// The chain in an indirect table whose second entry is an indirect
    /// table with the rest.
    IndirectNested,
    /// An indirect table whose only entry is an indirect table with the
    /// chain.
    IndirectNestedFirst,
    /// The chain in an indirect table said to be 0 bytes long.
    IndirectEmpty,
    /// The chain in an indirect table said to be 0xffff_fff0 bytes long.
    IndirectHuge,
    /// The chain in an indirect table said to be 8 bytes longer than it
    /// is (not a multiple of 16).
    IndirectPastItsEnd,
    /// The chain in an indirect table said to end 12 bytes into its last
    /// entry.
    IndirectCutMidEntry,
    /// An indirect table beyond the end of guest memory.
    IndirectOutsideMemory,
    /// The chain in an indirect table whose last entry leads back to the
    /// first.
    IndirectLoop,
    /// Descriptor `i` at an address beyond guest memory.
    BufferOutsideMemory(usize),
    /// Descriptor `i` 512 bytes long, 256 bytes before the end of memory.
    BufferAcrossTheEnd(usize),
    /// Descriptor `i` 0xffff_fe00 bytes long.
    HugeLength(usize),
}

impl Shape {
    /// The descriptors of `good` broken this way, for a queue of
    /// `queue_size`, with any table or buffer they need in `mem`; and the
    /// writable buffers they must leave as they are.
    pub fn apply(
        self,
        good: &Chain,
        mem: &Arc<GuestMem>,
        queue_size: u16,
    ) -> (Vec<RawDesc>, Vec<(GuestAddress, Vec<u8>)>) {
        let mut d = good.descs.clone();
        let mut untouched = good.writable(mem);
        let last = d.len() - 1;
        let table = |descs: &[RawDesc]| indirect_table(mem, descs).unwrap();
        let descs = match self {
            Shape::DescriptorLoop => {
                d[last].flags |= VRING_DESC_F_NEXT;
                d[last].next = 0;
                d
            }
            Shape::NextOutOfRange => {
                d[last].flags |= VRING_DESC_F_NEXT;
                d[last].next = queue_size + 7;
                d
            }
            Shape::LongerThanTheQueue => {
                let mut piece = d[1];
                piece.len = piece.len.min(8);
                let mut v = vec![d[0]];
                v.resize(usize::from(queue_size), piece);
                for (i, desc) in v.iter_mut().enumerate() {
                    desc.flags |= VRING_DESC_F_NEXT;
                    desc.next = i as u16 + 1;
                }
                v[usize::from(queue_size) - 1].next = 1;
                v
            }
            Shape::IndirectNested => {
                let mut rest = d[1..].to_vec();
                for (i, desc) in rest.iter_mut().enumerate() {
                    desc.next = if desc.flags & VRING_DESC_F_NEXT != 0 {
                        i as u16 + 1
                    } else {
                        0
                    };
                }
                let (inner, inner_len) = table(&rest);
                let mut first = d[0];
                first.flags |= VRING_DESC_F_NEXT;
                first.next = 1;
                let (outer, outer_len) = table(&[first, RawDesc::indirect(inner, inner_len)]);
                vec![RawDesc::indirect(outer, outer_len)]
            }
            Shape::IndirectNestedFirst => {
                let (inner, inner_len) = table(&d);
                let (outer, outer_len) = table(&[RawDesc::indirect(inner, inner_len)]);
                vec![RawDesc::indirect(outer, outer_len)]
            }
            Shape::IndirectEmpty => vec![RawDesc::indirect(table(&d).0, 0)],
            Shape::IndirectHuge => vec![RawDesc::indirect(table(&d).0, 0xffff_fff0)],
            Shape::IndirectPastItsEnd => {
                let (t, len) = table(&d);
                vec![RawDesc::indirect(t, len + 8)]
            }
            Shape::IndirectCutMidEntry => {
                let (t, len) = table(&d);
                vec![RawDesc::indirect(t, len - 12)]
            }
            Shape::IndirectOutsideMemory => {
                let len = 16 * d.len() as u32;
                vec![RawDesc::indirect(GuestAddress(mem.size() + (1 << 20)), len)]
            }
            Shape::IndirectLoop => {
                d[last].flags |= VRING_DESC_F_NEXT;
                d[last].next = 0;
                let (t, len) = table(&d);
                vec![RawDesc::indirect(t, len)]
            }
            Shape::BufferOutsideMemory(i) => {
                d[i].addr = OUTSIDE;
                d
            }
            Shape::BufferAcrossTheEnd(i) => {
                let tail = GuestAddress(mem.size() - 256);
                mem.write(tail, &[FILL; 256]).unwrap();
                if d[i].flags & VRING_DESC_F_WRITE != 0 {
                    untouched.push((tail, vec![FILL; 256]));
                }
                d[i].addr = tail.0;
                d[i].len = 512;
                d
            }
            Shape::HugeLength(i) => {
                d[i].len = 0xffff_fe00;
                d
            }
        };
        (descs, untouched)
    }
}

/// Runs `shape` of `ring`'s good chain on its queue and checks the
/// ring's contract for the answer.
pub fn assert_refused(ring: &mut dyn Ring, shape: Shape) {
    let good = ring.good_chain();
    let q = ring.queue();
    let (mem, size) = (q.mem().clone(), q.size());
    let (descs, untouched) = shape.apply(&good, &mem, size);
    let (head, used) = ring
        .queue()
        .run_raw_chain(&descs, T)
        .unwrap_or_else(|e| panic!("{shape:?}: the chain never came back: {e}"));
    assert_eq!(
        used.head, head,
        "{shape:?}: another head came back: {used:?}"
    );
    ring.assert_refused(head, used, &untouched);
}
