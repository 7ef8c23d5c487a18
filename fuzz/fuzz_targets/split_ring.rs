//! The split-ring walker over arbitrary guest memory: a ring whose size,
//! addresses and state come from the input (`fuzz::split` has the
//! layout), set up through the daemons' `common::vring::Vring` as
//! SET_VRING_NUM/ADDR/BASE would, and drained by their worker loop
//! (`common::queue::drain`, or `drain_deferred` + `complete` with the
//! chains finished out of order), each chain going to `common::iov`'s
//! walker, vhost-blk-daemon's request path or virtiofsd's request checks.
//! Descriptor loops, chains out of memory or across its hole, huge
//! lengths and indirect tables all come from the memory bytes.
//!
//! Property: no panic, hang or unbounded allocation; the walker's iovecs
//! hold exactly the bytes of the descriptors it accepted, and its copy,
//! advance and take-last-byte operations keep their counts.

#![no_main]

use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::iov::{copy_in_at, copy_out, total_len, IoVecBuf};
use common::memory::Mem;
use common::queue::{self, MAX_CHAIN_DESCRIPTORS};
use common::vring::Vring;
use fuzz::split::{Handler, Header, REGIONS};
use libfuzzer_sys::fuzz_target;
use vhost_blk_daemon::config::DeviceConfig;
use vhost_blk_daemon::disk::Disk;
use vhost_blk_daemon::request::{self, Scratch, Target};
use vhost_user_backend::VringT;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

const IMAGE_LEN: u64 = 64 * 1024;
/// Largest queue (virtio's limit).
const MAX_QUEUE: u16 = 32768;
/// Bytes of the readable stream compared with a plain read of guest memory.
const COMPARE: usize = 4096;

fn disk(read_only: bool) -> &'static Disk {
    static DISKS: [OnceLock<Disk>; 2] = [OnceLock::new(), OnceLock::new()];
    DISKS[usize::from(read_only)].get_or_init(|| {
        fuzz::blk_image(
            &format!("split-{}", u8::from(read_only)),
            IMAGE_LEN,
            read_only,
        )
    })
}

fn memory(image: &[u8]) -> GuestMemoryMmap<()> {
    fuzz::ring::memory_in(&REGIONS, image)
}

/// Reusable buffers of the walker handler.
#[derive(Default)]
struct Walk {
    readable: IoVecBuf,
    writable: IoVecBuf,
    reference: Vec<u8>,
    copied: Vec<u8>,
}

impl Walk {
    /// Walks `chain` with `common::iov` and checks what it built; fills
    /// the writable buffers with a pattern. Returns the used length.
    fn chain<M>(&mut self, chain: DescriptorChain<M>, mem: &Mem) -> u32
    where
        M: Deref<Target = Mem>,
    {
        let mut readable = self.readable.walk();
        let mut writable = self.writable.walk();
        let (mut r_len, mut w_len, mut descs) = (0usize, 0usize, 0usize);
        self.reference.clear();
        // As every daemon's parser: a chain ends after
        // MAX_CHAIN_DESCRIPTORS (longer ones are refused as truncated).
        for d in chain.take(MAX_CHAIN_DESCRIPTORS) {
            descs += 1;
            let (v, len) = if d.is_write_only() {
                (&mut writable, &mut w_len)
            } else {
                (&mut readable, &mut r_len)
            };
            let before = v.len();
            match v.push(mem, d.addr(), d.len()) {
                Ok(()) => {
                    *len += d.len() as usize;
                    // A buffer is one iovec per region it touches.
                    assert!(v.len() - before <= REGIONS.len());
                    if !d.is_write_only() && self.reference.len() < COMPARE {
                        let n = (d.len() as usize).min(COMPARE - self.reference.len());
                        let at = self.reference.len();
                        self.reference.resize(at + n, 0);
                        mem.read_slice(&mut self.reference[at..], d.addr())
                            .expect("a buffer the walker accepted is readable");
                    }
                }
                Err(e) => {
                    assert_eq!(v.len(), before, "a refused buffer left iovecs");
                    assert_eq!((e.addr, e.len), (d.addr().0, d.len()));
                }
            }
        }
        assert!(
            descs <= MAX_CHAIN_DESCRIPTORS,
            "a chain of {descs} descriptors"
        );
        assert_eq!(readable.total_len(), r_len);
        assert_eq!(writable.total_len(), w_len);
        assert_eq!(total_len(readable.as_slice()), r_len);

        // The readable stream is the bytes of its buffers, in order.
        self.copied.clear();
        self.copied.resize(self.reference.len(), 0);
        assert_eq!(
            copy_out(readable.as_slice(), &mut self.copied),
            self.reference.len()
        );
        assert!(
            self.copied == self.reference,
            "copy_out differs from the buffers"
        );

        // Writes land where they fit.
        let pattern = [0xa5u8; 64];
        let offset = w_len / 3;
        let put = copy_in_at(writable.as_slice(), offset, &pattern);
        assert_eq!(put, pattern.len().min(w_len - offset));

        // Taking the status byte, then skipping a header.
        let last = writable.take_last_byte();
        assert_eq!(last.map(|b| b.len()), (w_len > 0).then_some(1));
        let w_left = w_len.saturating_sub(1);
        assert_eq!(writable.total_len(), w_left);
        readable.advance(16);
        assert_eq!(readable.total_len(), r_len.saturating_sub(16));
        readable.drop_front(1);
        assert!(readable.total_len() <= r_len.saturating_sub(16));
        (put + usize::from(last.is_some())) as u32
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((h, image)) = Header::parse(data) else {
        return;
    };
    let mem = GuestMemoryAtomic::new(memory(image));
    let vring: Vring = Vring::new(mem.clone(), MAX_QUEUE).expect("vring");
    // As the handler applies SET_VRING_NUM, ADDR, BASE and KICK.
    vring.set_queue_size(h.size);
    if vring.set_queue_info(h.desc, h.avail, h.used).is_err() {
        return;
    }
    vring.set_queue_next_avail(h.next_avail);
    vring.set_queue_next_used(h.next_used);
    vring.set_queue_event_idx(h.event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let map = GuestAddressSpace::memory(&mem).into_inner();
    let broken = AtomicBool::new(false);

    // Errors (a ring outside memory, a used ring that cannot be written)
    // end a batch as they end a worker's: not findings.
    let mut walk = Walk::default();
    match h.handler {
        Handler::Walker => {
            let _ = queue::drain(0, &vring, &map, h.event_idx, Duration::ZERO, &broken, |c| {
                walk.chain(c, &map)
            });
        }
        Handler::Blk => {
            let config = DeviceConfig::new(IMAGE_LEN, 512, 1, 128, h.read_only);
            let serial = *b"fuzz-split\0\0\0\0\0\0\0\0\0\0";
            let target = Target {
                disk: disk(h.read_only),
                config: &config,
                serial: &serial,
            };
            let mut scratch = Scratch::default();
            let _ = queue::drain(0, &vring, &map, h.event_idx, Duration::ZERO, &broken, |c| {
                request::process(c, &map, &target, &mut scratch).map_or(0, |d| d.used_len)
            });
        }
        Handler::Fs => {
            let _ = queue::drain(0, &vring, &map, h.event_idx, Duration::ZERO, &broken, |c| {
                if let Ok((header, shape)) = virtiofsd::request::inspect(&c, &map) {
                    virtiofsd::request::judge(&header, &shape, true);
                }
                0
            });
        }
        Handler::Deferred => {
            let map: Arc<Mem> = map;
            let mut chains = Vec::new();
            let _ =
                queue::drain_deferred(0, &vring, &map, h.event_idx, &broken, |c| chains.push(c));
            assert!(chains.len() <= usize::from(h.size.max(1)) || h.size > MAX_QUEUE);
            while let Some(c) = chains.pop() {
                let head = c.head_index();
                let len = walk.chain(c, &map);
                if queue::complete(&vring, &map, head, len).is_err() {
                    break;
                }
            }
        }
    }
});
