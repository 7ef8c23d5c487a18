//! The driver-side queue checked against rust-vmm's device-side `virtio-queue`,
//! an implementation nobody here wrote.

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
