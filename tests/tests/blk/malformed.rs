//! Our `vhost-blk-daemon` fed the guest input of NOTES.md's list that only
//! a block device has, one case per test: requests badly framed (short or
//! empty header, no room or a read-only buffer for the status byte, a
//! header alone, buffers in the wrong order, more than 4 GiB in total),
//! kicks on a ring that is not enabled or was stopped. The contract
//! (`notes/blk-spec.md`): a malformed chain comes back on the used ring
//! with len 0 and nothing written (the status byte keeps its preset
//! value), a warning containing "malformed" names the head, and the daemon
//! keeps serving. The descriptor-level cases every ring gets (loops,
//! indices, indirect tables, buffers outside guest memory, a jumping avail
//! index, bad SET_VRING_NUM) are in `daemons/malformed.rs`.

use std::sync::atomic::Ordering;

use vm_memory::{Address, ByteValued, GuestAddress};
use vu_driver::blk::raw::{RawRequest, RequestBuilder, STATUS_UNTOUCHED};
use vu_driver::blk::{req, status, BlkClient, BlkOptions, OutHdr, Request};
use vu_driver::device::{connect_socket, VuDevice};
use vu_driver::fixture::poll_until;
use vu_driver::memory::GuestMem;
use vu_driver::ours::BlkDaemonOpts;
use vu_driver::under_test::rings::FILL;
use vu_driver::virtqueue::{indirect_table, RawDesc, Used, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::common::*;

/// A default daemon and client. The client's queue 0 keeps descriptors
/// 0..40 out of use, so raw heads get numbers that cannot be mistaken for
/// the queue index in the log.
fn rig() -> (Setup, BlkClient) {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = BlkClient::connect(s.daemon.socket(), &BlkOptions::default()).unwrap();
    c.device().queue(0).reserve_descs(40).unwrap();
    (s, c)
}

/// A daemon and client with 16-entry queues on both sides.
fn small_queue_rig() -> (Setup, BlkClient) {
    let s = daemon(&BlkDaemonOpts {
        queue_size: Some(16),
        ..BlkDaemonOpts::default()
    });
    let mut opts = BlkOptions::default();
    opts.device.queue_size = 16;
    opts.slots_per_queue = 8;
    opts.max_io = 64 * 1024;
    let c = BlkClient::connect(s.daemon.socket(), &opts).unwrap();
    (s, c)
}

/// A read of 512 bytes at sector 0: header, data (preset to FILL), status.
fn read_req(mem: &GuestMem) -> RawRequest {
    read_tail(RequestBuilder::new(mem).header(req::IN, 0).unwrap())
}

/// `b` followed by a read's 512-byte buffer (preset to FILL) and status.
fn read_tail(b: RequestBuilder<'_>) -> RawRequest {
    b.writable(512, FILL).unwrap().status().unwrap().build()
}

/// Publishes `descs` as a raw chain on queue `qi` (see
/// `VirtQueue::raw_chain`), kicks, and waits for the head to come back.
fn send_raw(c: &mut BlkClient, qi: usize, descs: &[RawDesc]) -> (u16, Used) {
    c.device()
        .queue(qi)
        .run_raw_chain(descs, T)
        .unwrap_or_else(|e| panic!("raw chain on queue {qi}: {e}"))
}

/// What must be left alone: the status byte and buffers preset to FILL.
struct Probe {
    status: Option<GuestAddress>,
    untouched: Vec<(GuestAddress, usize)>,
}

impl From<&RawRequest> for Probe {
    fn from(r: &RawRequest) -> Self {
        Probe {
            status: r.status,
            untouched: r
                .writable
                .iter()
                .map(|s| (s.addr, s.len as usize))
                .collect(),
        }
    }
}

/// Asserts the contract's answer to a malformed chain on queue `qi`, then
/// that the same queue still serves a valid request.
fn assert_malformed(s: &mut Setup, c: &mut BlkClient, qi: usize, head: u16, used: Used, p: Probe) {
    assert_eq!(used.head, head, "another head came back: {used:?}");
    assert_eq!(used.len, 0, "used len of a malformed chain: {used:?}");
    let mem = c.device().mem().clone();
    if let Some(st) = p.status {
        let b = mem.read_vec(st, 1).unwrap()[0];
        assert_eq!(b, STATUS_UNTOUCHED, "status byte written: {b}");
    }
    for (addr, len) in p.untouched {
        let data = mem.read_vec(addr, len).unwrap();
        let bad = data.iter().position(|&b| b != FILL);
        assert_eq!(bad, None, "data buffer at {:#x} written", addr.raw_value());
    }
    assert_alive(s);
    let logged = poll_until(T, || {
        s.daemon
            .log_contents()
            .lines()
            .any(|l| l.to_lowercase().contains("malformed") && l.contains(&format!("head {head}:")))
    });
    assert!(
        logged,
        "no log line containing \"malformed\" naming head {head}:\n{}",
        s.daemon.log_contents()
    );
    assert_serves(c, qi);
}

fn assert_alive(s: &mut Setup) {
    let exit = s.daemon.try_wait().unwrap();
    assert_eq!(exit, None, "daemon exited: {exit:?}");
}

/// A 4 KiB write then read on queue `qi`.
fn assert_serves(c: &mut BlkClient, qi: usize) {
    let data = pattern(qi as u8 + 1, 4096);
    let mut q = c.queue(qi);
    let mem = q.virtqueue().mem().clone();
    mem.write(q.data_addr(q.peek_slot().unwrap()), &data)
        .unwrap();
    let w = q.execute(
        Request::Write {
            sector: 64,
            len: 4096,
        },
        T,
    );
    w.unwrap_or_else(|e| panic!("valid write on queue {qi}: {e}"));
    let r = q.execute(
        Request::Read {
            sector: 64,
            len: 4096,
        },
        T,
    );
    let r = r.unwrap_or_else(|e| panic!("valid read on queue {qi}: {e}"));
    assert_eq!(mem.read_vec(q.data_addr(r.slot), 4096).unwrap(), data);
}

/// Builds a chain with `build` in a default rig's memory, runs it on
/// queue 0 and checks the malformed answer.
fn malformed_case(build: impl FnOnce(&GuestMem) -> (Vec<RawDesc>, Probe)) {
    let (mut s, mut c) = rig();
    let mem = c.device().mem().clone();
    let (descs, probe) = build(&mem);
    let (head, used) = send_raw(&mut c, 0, &descs);
    assert_malformed(&mut s, &mut c, 0, head, used, probe);
}

/// [`malformed_case`] for a request sent as built, whose every buffer is
/// probed.
fn request_case(build: impl FnOnce(&GuestMem) -> RawRequest) {
    malformed_case(|mem| {
        let r = build(mem);
        (r.raw_descs(), Probe::from(&r))
    });
}

/// A read request with `edit` applied to its descriptors.
fn edited_read(edit: impl FnOnce(&mut Vec<RawDesc>)) {
    malformed_case(|mem| {
        let r = read_req(mem);
        let mut d = r.raw_descs();
        edit(&mut d);
        (d, Probe::from(&r))
    });
}

#[test]
fn indirect_table_longer_than_the_queue_is_served() {
    // 17 descriptors (header, 15 x 512 data, status) in one indirect table
    // on a 16-entry queue. Virtio 1.2 (2.7.5.3.1) forbids the driver such a
    // chain but asks nothing of the device; like QEMU and Linux vhost, the
    // daemon serves it (its buffers are all checked), so a driver that
    // counts an indirect table as one descriptor keeps working.
    let (mut s, mut c) = small_queue_rig();
    let mem = c.device().mem().clone();
    let mut b = RequestBuilder::new(&mem).header(req::IN, 0).unwrap();
    for _ in 0..15 {
        b = b.writable(512, FILL).unwrap();
    }
    let r = b.status().unwrap().build();
    let (table, len) = indirect_table(&mem, &r.raw_descs()).unwrap();
    let (head, used) = send_raw(&mut c, 0, &[RawDesc::indirect(table, len)]);
    assert_eq!(used.head, head);
    assert_eq!(used.len, 15 * 512 + 1);
    assert_eq!(r.status_byte(&mem).unwrap(), status::OK);
    assert_alive(&mut s);
}

/// A read of 512 bytes whose chain, in one indirect table, has `descs`
/// descriptors: the header, the data, empty writable pieces, the status.
fn read_of_n_descriptors(mem: &GuestMem, descs: usize) -> (RawRequest, Vec<RawDesc>) {
    let r = read_req(mem);
    let [header, data, status] = r.raw_descs()[..] else {
        panic!("a read is three descriptors")
    };
    let mut table = vec![header, data];
    for _ in 0..descs - 3 {
        table.push(RawDesc::new(data.addr, 0, data.flags, 0));
    }
    table.push(status);
    let last = table.len() - 1;
    for (i, d) in table.iter_mut().enumerate().take(last) {
        d.flags |= VRING_DESC_F_NEXT;
        d.next = (i + 1) as u16;
    }
    let (at, len) = indirect_table(mem, &table).unwrap();
    (r, vec![RawDesc::indirect(at, len)])
}

#[test]
fn a_chain_of_1024_descriptors_is_served_and_one_of_1025_refused() {
    // QEMU's bound (VIRTQUEUE_MAX_SIZE). virtio-queue alone ends a chain
    // only after 32768 descriptors, which a ring of looping empty chains
    // made cost a worker ~1e9 descriptor reads per pass.
    let (mut s, mut c) = rig();
    let mem = c.device().mem().clone();
    c.write(0, &pattern(9, 512)).unwrap();
    let (r, descs) = read_of_n_descriptors(&mem, 1024);
    let (head, used) = send_raw(&mut c, 0, &descs);
    assert_eq!((used.head, used.len), (head, 513));
    assert_eq!(r.status_byte(&mem).unwrap(), status::OK);
    assert_eq!(r.writable_data(&mem, 0).unwrap(), pattern(9, 512));

    let (r, descs) = read_of_n_descriptors(&mem, 1025);
    let (head, used) = send_raw(&mut c, 0, &descs);
    assert_malformed(&mut s, &mut c, 0, head, used, Probe::from(&r));
}

#[test]
fn zero_length_status_descriptor() {
    // A write: with its only writable descriptor empty, there is no byte for
    // the status. (In a read, the last byte of the data buffer would be the
    // status, since virtio frames requests by bytes, not descriptors.)
    let (mut s, mut c) = rig();
    let mem = c.device().mem().clone();
    let r = RequestBuilder::new(&mem)
        .header(req::OUT, 0)
        .unwrap()
        .readable(&pattern(1, 512))
        .unwrap()
        .status()
        .unwrap()
        .build();
    let mut d = r.raw_descs();
    d[2].len = 0;
    let (head, used) = send_raw(&mut c, 0, &d);
    assert_eq!(host_read(&s.image, 0, 512), vec![0u8; 512], "image written");
    assert_malformed(&mut s, &mut c, 0, head, used, Probe::from(&r));
}

#[test]
fn zero_length_header() {
    edited_read(|d| d[0].len = 0);
}

#[test]
fn zero_length_data_descriptor_is_harmless() {
    // Not malformed: a 512-byte read whose data has an empty piece in the
    // middle is served like any other.
    let (mut s, mut c) = rig();
    let mem = c.device().mem().clone();
    c.write(0, &pattern(5, 512)).unwrap();
    let r = RequestBuilder::new(&mem)
        .header(req::IN, 0)
        .unwrap()
        .writable(256, FILL)
        .unwrap()
        .writable(0, FILL)
        .unwrap()
        .writable(256, FILL)
        .unwrap()
        .status()
        .unwrap()
        .build();
    let done = r.run(c.device().queue(0), T).unwrap();
    assert_eq!((done.status, done.used_len), (status::OK, 513));
    let mut got = r.writable_data(&mem, 0).unwrap();
    got.extend(r.writable_data(&mem, 2).unwrap());
    assert_eq!(got, pattern(5, 512));
    assert_alive(&mut s);
    assert_serves(&mut c, 0);
}

/// A chain whose two data buffers (4 GiB - 4 KiB and 8 KiB, both inside a
/// 6 GiB guest memory) add up to more than u32::MAX bytes.
fn u32_overflow(type_: u32) {
    let mut s = daemon(&BlkDaemonOpts::default());
    let mut opts = BlkOptions::default();
    opts.device.mem_size = 6 << 30;
    let mut c = BlkClient::connect(s.daemon.socket(), &opts).unwrap();
    let mem = c.device().mem().clone();
    let r = RequestBuilder::new(&mem)
        .header(type_, 0)
        .unwrap()
        .status()
        .unwrap()
        .build();
    let (big, small) = (GuestAddress(1 << 30), GuestAddress(5 << 30));
    mem.write(big, &[FILL; 4096]).unwrap();
    mem.write(small, &[FILL; 8192]).unwrap();
    let flags = VRING_DESC_F_NEXT
        | if type_ == req::IN {
            VRING_DESC_F_WRITE
        } else {
            0
        };
    let d = r.raw_descs();
    let descs = [
        RawDesc::new(d[0].addr, 16, VRING_DESC_F_NEXT, 1),
        RawDesc::new(big.raw_value(), 0xffff_f000, flags, 2),
        RawDesc::new(small.raw_value(), 0x2000, flags, 3),
        d[1],
    ];
    let (head, used) = send_raw(&mut c, 0, &descs);
    let mut probe = Probe::from(&r);
    if type_ == req::IN {
        probe.untouched.extend([(big, 4096), (small, 8192)]);
    }
    assert_eq!(
        host_read(&s.image, 0, 8192),
        vec![0u8; 8192],
        "image written"
    );
    assert_malformed(&mut s, &mut c, 0, head, used, probe);
}

#[test]
fn u32_overflow_of_the_chain_total_read() {
    u32_overflow(req::IN);
}

#[test]
fn u32_overflow_of_the_chain_total_write() {
    u32_overflow(req::OUT);
}

#[test]
fn read_only_descriptor_for_the_status_byte() {
    edited_read(|d| d[2].flags &= !VRING_DESC_F_WRITE);
}

#[test]
fn head_only_chain() {
    request_case(|mem| RequestBuilder::new(mem).header(req::IN, 0).unwrap().build());
}

#[test]
fn readable_descriptor_after_a_writable_one() {
    request_case(|mem| {
        RequestBuilder::new(mem)
            .header(req::IN, 0)
            .unwrap()
            .writable(512, FILL)
            .unwrap()
            .readable(&[0u8; 16])
            .unwrap()
            .status()
            .unwrap()
            .build()
    });
}

#[test]
fn header_shorter_than_16_bytes() {
    request_case(|mem| {
        let hdr = OutHdr {
            type_: req::IN,
            ioprio: 0,
            sector: 0,
        };
        read_tail(
            RequestBuilder::new(mem)
                .readable(&hdr.as_slice()[..8])
                .unwrap(),
        )
    });
}

#[test]
fn kick_before_the_ring_is_enabled_is_ignored() {
    let mut s = daemon(&BlkDaemonOpts::default());
    let opts = BlkOptions::default();
    let socket = s.daemon.socket().to_path_buf();
    let stream = connect_socket(&socket, T).unwrap();
    let mut dev = VuDevice::negotiate(stream, &socket, &opts.device).unwrap();
    dev.start_disabled(&opts.device).unwrap();
    let mem = dev.mem().clone();
    let first = read_req(&mem);
    let vq = dev.queue(0);
    vq.add(&first.segs, 1).unwrap();
    vq.kick_now().unwrap();
    // The daemon reads the kick, then sees the ring disabled: once the
    // kick is gone, whatever it did with the ring is done.
    let read = poll_until(T, || !vq.kick_pending().unwrap());
    assert!(read, "the daemon never read the kick");
    assert_eq!(
        vq.used_idx().unwrap(),
        0,
        "a request was served on a disabled ring"
    );
    assert_eq!(first.status_byte(&mem).unwrap(), STATUS_UNTOUCHED);
    assert_alive(&mut s);

    // Once enabled, the next kick serves both the waiting request and a new one.
    dev.set_queue_enabled(0, true).unwrap();
    let second = read_req(&mem);
    let vq = dev.queue(0);
    vq.add(&second.segs, 2).unwrap();
    vq.kick_now().unwrap();
    let mut tokens = Vec::new();
    while tokens.len() < 2 {
        let u = vq.wait_used(T).unwrap();
        assert_eq!(u.len, 513, "{u:?}");
        tokens.push(u.token.unwrap());
    }
    tokens.sort();
    assert_eq!(tokens, [1, 2]);
    for r in [&first, &second] {
        assert_eq!(r.status_byte(&mem).unwrap(), status::OK);
        assert_eq!(r.writable_data(&mem, 0).unwrap(), vec![0u8; 512]);
    }
    assert_alive(&mut s);
}

#[test]
fn kick_after_the_ring_is_stopped_is_ignored() {
    let (mut s, mut c) = rig();
    assert_serves(&mut c, 0);
    let bases = c.device().stop_queues().unwrap();
    assert_eq!(bases, [2], "GET_VRING_BASE after a write and a read");
    let mem = c.device().mem().clone();
    let r = read_req(&mem);
    let vq = c.device().queue(0);
    let used_idx = vq.used_addr().unchecked_add(2);
    let before = vq.used_idx().unwrap();
    vq.add(&r.segs, 1).unwrap();
    vq.kick_now().unwrap();
    // A stopped ring's kick is not even read. The daemon serves the next
    // frontend only once this one's workers are gone: after that, the
    // stopped ring (its memory still mapped here) is as it will stay.
    drop(c);
    let mut c = BlkClient::connect(s.daemon.socket(), &BlkOptions::default()).unwrap();
    assert_serves(&mut c, 0);
    assert_eq!(
        mem.load_u16(used_idx, Ordering::Acquire).unwrap(),
        before,
        "a request was served on a stopped ring"
    );
    assert_eq!(r.status_byte(&mem).unwrap(), STATUS_UNTOUCHED);
    assert_alive(&mut s);
}
