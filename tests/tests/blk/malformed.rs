//! Our `vhost-blk-daemon` fed the guest input of NOTES.md's list, one case
//! per test. The contract (`notes/blk-spec.md`): a malformed chain comes back
//! on the used ring with len 0 and nothing written (the status byte keeps
//! its preset value), a warning containing "malformed" names the head, and
//! the daemon keeps serving; an avail.idx that jumps past the queue size
//! breaks only that queue; bad SET_VRING_NUM sizes are refused; kicks on a
//! ring that is not enabled are ignored.

use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::VhostBackend;
use vm_memory::{Address, ByteValued, GuestAddress};
use vu_driver::blk::raw::{alloc_table, write_table, RawRequest, RequestBuilder, STATUS_UNTOUCHED};
use vu_driver::blk::{req, status, BlkClient, BlkOptions, OutHdr, Request};
use vu_driver::device::{connect_socket, VuDevice};
use vu_driver::fixture::poll_until;
use vu_driver::memory::GuestMem;
use vu_driver::ours::BlkDaemonOpts;
use vu_driver::virtqueue::{
    RawDesc, Used, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

use crate::common::*;

/// How long a kick that must be ignored is given to (wrongly) take effect.
const IGNORED_FOR: Duration = Duration::from_millis(300);
/// What data buffers the device must not write are preset to.
const FILL: u8 = 0xaa;

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
    RequestBuilder::new(mem)
        .header(req::IN, 0)
        .unwrap()
        .writable(512, FILL)
        .unwrap()
        .status()
        .unwrap()
        .build()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags,
        next,
    }
}

fn indirect(table: GuestAddress, len: u32) -> RawDesc {
    desc(table.raw_value(), len, VRING_DESC_F_INDIRECT, 0)
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

/// True if `line` names `n` as a decimal or hex token.
fn names(line: &str, n: u16) -> bool {
    let (dec, hex) = (n.to_string(), format!("{n:#x}"));
    line.split(|ch: char| !ch.is_ascii_alphanumeric())
        .any(|t| t == dec || t.eq_ignore_ascii_case(&hex))
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
            .any(|l| l.to_lowercase().contains("malformed") && names(l, head))
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
fn descriptor_loop() {
    // header -> data -> status -> data -> status ...
    edited_read(|d| {
        d[2].flags |= VRING_DESC_F_NEXT;
        d[2].next = 1;
    });
}

#[test]
fn chain_longer_than_the_queue() {
    // All 16 descriptors of a 16-entry queue, the last one leading back to
    // the second: the chain never ends within the queue size.
    let (mut s, mut c) = small_queue_rig();
    let mem = c.device().mem().clone();
    let mut b = RequestBuilder::new(&mem).header(req::IN, 0).unwrap();
    for _ in 0..14 {
        b = b.writable(512, FILL).unwrap();
    }
    let r = b.status().unwrap().build();
    let mut d = r.raw_descs();
    assert_eq!(d.len(), 16);
    d[15].flags |= VRING_DESC_F_NEXT;
    d[15].next = 1;
    let (head, used) = send_raw(&mut c, 0, &d);
    assert_malformed(&mut s, &mut c, 0, head, used, Probe::from(&r));
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
    let table = alloc_table(&mem, 17).unwrap();
    let len = write_table(&mem, table, &r.raw_descs()).unwrap();
    let (head, used) = send_raw(&mut c, 0, &[indirect(table, len)]);
    assert_eq!(used.head, head);
    assert_eq!(used.len, 15 * 512 + 1);
    assert_eq!(r.status_byte(&mem).unwrap(), status::OK);
    assert_alive(&mut s);
}

#[test]
fn next_out_of_range() {
    // The status descriptor says a descriptor follows, at index 128 + 7.
    edited_read(|d| {
        d[2].flags |= VRING_DESC_F_NEXT;
        d[2].next = 128 + 7;
    });
}

/// A read request placed in an indirect table; `main` makes the main-table
/// descriptor from the table's address and length.
fn indirect_read(main: impl FnOnce(&GuestMem, GuestAddress, u32) -> RawDesc) {
    malformed_case(|mem| {
        let r = read_req(mem);
        let table = alloc_table(mem, 4).unwrap();
        let len = write_table(mem, table, &r.raw_descs()).unwrap();
        (vec![main(mem, table, len)], Probe::from(&r))
    });
}

#[test]
fn indirect_table_nested() {
    malformed_case(|mem| {
        let r = read_req(mem);
        let d = r.raw_descs();
        // Outer table: header, then an INDIRECT descriptor for data + status.
        let inner = alloc_table(mem, 2).unwrap();
        let data = desc(d[1].addr, d[1].len, d[1].flags, 1);
        let inner_len = write_table(mem, inner, &[data, d[2]]).unwrap();
        let outer = alloc_table(mem, 2).unwrap();
        let outer_len = write_table(mem, outer, &[d[0], indirect(inner, inner_len)]).unwrap();
        (vec![indirect(outer, outer_len)], Probe::from(&r))
    });
}

#[test]
fn indirect_table_length_not_a_multiple_of_16() {
    indirect_read(|_, table, len| indirect(table, len + 8));
}

#[test]
fn indirect_table_empty() {
    // The table holds a valid request, but its length is 0.
    indirect_read(|_, table, _| indirect(table, 0));
}

#[test]
fn indirect_table_huge() {
    indirect_read(|_, table, _| indirect(table, 0xffff_fff0));
}

#[test]
fn indirect_table_outside_guest_memory() {
    indirect_read(|mem, _, len| indirect(GuestAddress(mem.size() + (1 << 20)), len));
}

#[test]
fn data_address_outside_guest_memory() {
    edited_read(|d| d[1].addr = 1 << 40);
}

#[test]
fn header_address_outside_guest_memory() {
    edited_read(|d| d[0].addr = 1 << 40);
}

#[test]
fn status_address_outside_guest_memory() {
    edited_read(|d| d[2].addr = 1 << 40);
}

#[test]
fn write_from_an_address_outside_guest_memory() {
    let (mut s, mut c) = rig();
    let mem = c.device().mem().clone();
    let r = RequestBuilder::new(&mem)
        .header(req::OUT, 0)
        .unwrap()
        .readable(&pattern(1, 4096))
        .unwrap()
        .status()
        .unwrap()
        .build();
    let mut d = r.raw_descs();
    d[1].addr = mem.size() + (1 << 20);
    let (head, used) = send_raw(&mut c, 0, &d);
    assert_eq!(
        host_read(&s.image, 0, 4096),
        vec![0u8; 4096],
        "image written"
    );
    assert_malformed(&mut s, &mut c, 0, head, used, Probe::from(&r));
}

#[test]
fn descriptor_spanning_past_the_end_of_memory() {
    malformed_case(|mem| {
        let r = read_req(mem);
        let tail = GuestAddress(mem.size() - 256);
        mem.write(tail, &[FILL; 256]).unwrap();
        let mut d = r.raw_descs();
        d[1].addr = tail.raw_value();
        let mut p = Probe::from(&r);
        p.untouched.push((tail, 256));
        (d, p)
    });
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

#[test]
fn huge_data_length_for_a_read() {
    edited_read(|d| d[1].len = 0xffff_fe00);
}

#[test]
fn huge_data_length_for_a_write() {
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
    d[1].len = 0xffff_fe00;
    let (head, used) = send_raw(&mut c, 0, &d);
    assert_eq!(
        host_read(&s.image, 0, 4096),
        vec![0u8; 4096],
        "image written"
    );
    assert_malformed(&mut s, &mut c, 0, head, used, Probe::from(&r));
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
        desc(d[0].addr, 16, VRING_DESC_F_NEXT, 1),
        desc(big.raw_value(), 0xffff_f000, flags, 2),
        desc(small.raw_value(), 0x2000, flags, 3),
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
    malformed_case(|mem| {
        let r = RequestBuilder::new(mem).header(req::IN, 0).unwrap().build();
        (r.raw_descs(), Probe::from(&r))
    });
}

#[test]
fn readable_descriptor_after_a_writable_one() {
    malformed_case(|mem| {
        let r = RequestBuilder::new(mem)
            .header(req::IN, 0)
            .unwrap()
            .writable(512, FILL)
            .unwrap()
            .readable(&[0u8; 16])
            .unwrap()
            .status()
            .unwrap()
            .build();
        (r.raw_descs(), Probe::from(&r))
    });
}

#[test]
fn header_shorter_than_16_bytes() {
    malformed_case(|mem| {
        let hdr = OutHdr {
            type_: req::IN,
            ioprio: 0,
            sector: 0,
        };
        let r = RequestBuilder::new(mem)
            .readable(&hdr.as_slice()[..8])
            .unwrap()
            .writable(512, FILL)
            .unwrap()
            .status()
            .unwrap()
            .build();
        (r.raw_descs(), Probe::from(&r))
    });
}

#[test]
fn avail_idx_jumping_past_the_queue_size_breaks_only_that_queue() {
    let mut s = daemon(&BlkDaemonOpts {
        num_queues: Some(2),
        ..BlkDaemonOpts::default()
    });
    let mut opts = BlkOptions::default();
    opts.device.num_queues = 2;
    let mut c = BlkClient::connect(s.daemon.socket(), &opts).unwrap();
    assert_serves(&mut c, 0);
    let log_before = s.daemon.log_contents().len();

    let vq = c.device().queue(0);
    let used_before = vq.used_idx().unwrap();
    let bogus = vq.published_avail_idx().wrapping_add(vq.size() + 1);
    vq.raw_set_avail_idx(bogus);
    vq.kick_now().unwrap();

    // The other queue of the same device keeps working.
    assert_serves(&mut c, 1);
    assert_alive(&mut s);
    let logged = poll_until(T, || {
        let log = s.daemon.log_contents();
        log.get(log_before..).unwrap_or("").lines().any(|l| {
            let lower = l.to_lowercase();
            lower.contains("error")
                && (lower.contains("queue") || lower.contains("vring"))
                && names(l, 0)
        })
    });
    assert!(
        logged,
        "no error naming queue 0 logged:\n{}",
        s.daemon.log_contents()
    );
    // The broken queue consumed nothing from its garbage ring.
    assert_eq!(c.device().queue(0).used_idx().unwrap(), used_before);
    assert_serves(&mut c, 1);

    // A new connection starts clean, on both queues.
    drop(c);
    let mut c = BlkClient::connect(s.daemon.socket(), &opts).unwrap();
    assert_serves(&mut c, 0);
    assert_serves(&mut c, 1);
    assert_alive(&mut s);
}

/// Sends SET_VRING_NUM `num` (NEED_REPLY) on an otherwise valid setup;
/// the ring must be refused: an error ack (or the connection closed) for
/// SET_VRING_NUM itself or, where vhost-user-backend acks the size before
/// anyone can check it, for the SET_VRING_ADDR that follows. Afterwards
/// the daemon serves a new connection.
fn bad_vring_num(num: u16) {
    let mut s = daemon(&BlkDaemonOpts::default());
    let opts = BlkOptions::default();
    let socket = s.daemon.socket().to_path_buf();
    let stream = connect_socket(&socket, T).unwrap();
    let mut dev = VuDevice::negotiate(stream, &socket, &opts.device).unwrap();
    let (features, regions) = (dev.features(), dev.mem().regions());
    let f = dev.frontend();
    f.set_features(features).unwrap();
    f.set_mem_table(&regions).unwrap();
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let refused = f.set_vring_num(0, num).is_err() || {
        let base = regions[0].userspace_addr;
        let config = vhost::VringConfigData {
            queue_max_size: 1024,
            queue_size: num,
            flags: 0,
            desc_table_addr: base,
            used_ring_addr: base + 0x4000,
            avail_ring_addr: base + 0x2000,
            log_addr: None,
        };
        f.set_vring_addr(0, &config).is_err()
    };
    assert!(
        refused,
        "a ring of size {num} was accepted (SET_VRING_NUM and SET_VRING_ADDR acked)"
    );
    drop(dev);
    assert_alive(&mut s);
    let mut c = BlkClient::connect(&socket, &opts).unwrap();
    assert_serves(&mut c, 0);
    assert_alive(&mut s);
}

#[test]
fn set_vring_num_zero_is_refused() {
    bad_vring_num(0);
}

#[test]
fn set_vring_num_not_a_power_of_two_is_refused() {
    bad_vring_num(100);
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
    let served = poll_until(IGNORED_FOR, || vq.used_idx().unwrap() != 0);
    assert!(!served, "a request was served on a disabled ring");
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
    let before = vq.used_idx().unwrap();
    vq.add(&r.segs, 1).unwrap();
    vq.kick_now().unwrap();
    let served = poll_until(IGNORED_FOR, || vq.used_idx().unwrap() != before);
    assert!(!served, "a request was served on a stopped ring");
    assert_eq!(r.status_byte(&mem).unwrap(), STATUS_UNTOUCHED);
    assert_alive(&mut s);
    drop(c);
    let mut c = BlkClient::connect(s.daemon.socket(), &BlkOptions::default()).unwrap();
    assert_serves(&mut c, 0);
}
