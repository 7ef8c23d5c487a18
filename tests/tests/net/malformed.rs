//! Our `vhost-net-daemon` fed the guest input of NOTES.md's list that only
//! a net device has: TX and RX chains that are badly framed (empty, wrong
//! direction, too short for the header, longer than 4 GiB in total), TX
//! frames it must not pass to the tap, and malformed control commands.
//! The descriptor-level cases every ring gets (loops, indices, indirect
//! tables, buffers outside guest memory, a jumping avail index) are in
//! `daemons/malformed.rs`, for both rings. The contract: a malformed TX
//! chain comes back used (len 0), nothing reaches the tap and the drop is
//! logged with its head; an RX chain that is not a writable buffer comes
//! back with len 0 and untouched; a bad control command gets an error ack
//! or comes back unanswered. After each, the daemon lives and frames
//! still cross both ways.

use virtio_bindings::virtio_net::*;
use vm_memory::{Address, GuestAddress};
use vu_driver::memory::GuestMem;
use vu_driver::net::frame::Malformed;
use vu_driver::net::{NetClient, NetOptions, VirtioNetHdr, NET_DRIVER_FEATURES};
use vu_driver::virtqueue::{RawDesc, Used, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use vu_driver::under_test::rings::FILL;

use crate::common::*;

const RXQ: usize = 0;
const TXQ: usize = 1;
const CTRLQ: usize = 2;
const W: u16 = VRING_DESC_F_WRITE;
const N: u16 = VRING_DESC_F_NEXT;

/// Publishes `descs` as a raw chain on queue `qi`, kicks, and waits for
/// it to come back. Nothing else may be in flight on that queue.
fn run_raw(net: &mut NetClient, qi: usize, descs: &[RawDesc]) -> (u16, Used) {
    let (head, used) = net
        .device()
        .queue(qi)
        .run_raw_chain(descs, T)
        .unwrap_or_else(|e| panic!("raw chain on queue {qi}: {e}"));
    assert_eq!(used.head, head, "another head came back: {used:?}");
    (head, used)
}

// ---------------------------------------------------------------- TX ----

/// A header and a 100-byte frame in guest memory: (address, length).
fn good_tx(mem: &GuestMem) -> (GuestAddress, u32) {
    let bytes = chain_bytes(&VirtioNetHdr::plain(), &to_host(&unique_tag("leak"), 100));
    let at = mem.alloc(bytes.len() as u64, 64).unwrap();
    mem.write(at, &bytes).unwrap();
    (at, bytes.len() as u32)
}

/// The two descriptors of [`good_tx`]: header, frame (linked 0 -> 1).
fn good_tx_descs(mem: &GuestMem) -> Vec<RawDesc> {
    let (at, len) = good_tx(mem);
    vec![
        RawDesc::new(at.raw_value(), 12, N, 1),
        RawDesc::new(at.raw_value() + 12, len - 12, 0, 0),
    ]
}

/// Runs the chain `build` makes on the TX queue of a fresh daemon and
/// checks the contract: back with len 0, logged, nothing on the tap, and
/// the daemon still serves.
fn tx_case_with(opts: &NetOptions, build: impl FnOnce(&GuestMem) -> Vec<RawDesc>) {
    let mut r = rig(&[]);
    let mut net = r.connect(opts);
    net.tx_flush(0, T).unwrap();
    let mem = net.device().mem().clone();
    let descs = build(&mem);
    let (head, used) = run_raw(&mut net, TXQ, &descs);
    assert_eq!(used.len, 0, "{used:?}");
    r.assert_logged(&["TX frame dropped", &format!("head {head}:")]);
    r.assert_nothing_leaked(&mut net);
    r.assert_serves(&mut net, 0);
}

fn tx_case(build: impl FnOnce(&GuestMem) -> Vec<RawDesc>) {
    tx_case_with(&NetOptions::default(), build)
}

fn tx_edited(edit: impl FnOnce(&mut Vec<RawDesc>)) {
    tx_case(|mem| {
        let mut d = good_tx_descs(mem);
        edit(&mut d);
        d
    })
}

#[test]
fn tx_zero_length_chain() {
    tx_case(|mem| vec![RawDesc::new(good_tx(mem).0.raw_value(), 0, 0, 0)]);
}

#[test]
fn tx_u32_overflow_of_the_chain_total() {
    // 4 GiB - 4 KiB and 8 KiB, both inside a 6 GiB guest memory.
    let mut opts = NetOptions::default();
    opts.device.mem_size = 6 << 30;
    tx_case_with(&opts, |mem| {
        let d = good_tx_descs(mem);
        vec![
            RawDesc::new(d[0].addr, 12, N, 1),
            RawDesc::new(1 << 30, 0xffff_f000, N, 2),
            RawDesc::new(5 << 30, 0x2000, 0, 0),
        ]
    });
}

#[test]
fn tx_writable_descriptor() {
    tx_edited(|d| d[1].flags |= W);
}

#[test]
fn tx_head_only_chain() {
    // The header alone: no frame.
    tx_edited(|d| {
        d.truncate(1);
        d[0].flags = 0;
    });
}

#[test]
fn tx_zero_length_piece_is_harmless() {
    // Not malformed: an empty descriptor between header and frame.
    let mut r = rig(&[]);
    let mut net = r.client();
    net.tx_flush(0, T).unwrap();
    let mem = net.device().mem().clone();
    let tag = unique_tag("pieces");
    let frame = to_host(&tag, 100);
    let bytes = chain_bytes(&VirtioNetHdr::plain(), &frame);
    let at = mem.alloc(bytes.len() as u64, 64).unwrap();
    mem.write(at, &bytes).unwrap();
    let a = at.raw_value();
    let d = [
        RawDesc::new(a, 12, N, 1),
        RawDesc::new(a + 12, 0, N, 2),
        RawDesc::new(a + 12, frame.len() as u32, 0, 0),
    ];
    run_raw(&mut net, TXQ, &d);
    assert!(tap_expect(&r.pkt, &tag) == frame);
    r.assert_serves(&mut net, 0);
}

// ------------------------------------------------------- TX frames ----

/// Sends `bytes` as one TX chain and checks nothing reaches the tap and
/// the drop is logged.
fn frame_case_with(opts: &NetOptions, bytes: &[u8], why: &str) {
    let mut r = rig(&[]);
    let mut net = r.connect(opts);
    net.send_raw(0, bytes).unwrap();
    r.assert_nothing_leaked(&mut net);
    r.assert_logged(&["TX frame dropped", why]);
    r.assert_serves(&mut net, 0);
}

fn frame_case(m: Malformed, why: &str) {
    frame_case_with(&NetOptions::default(), &m.chain_bytes(), why)
}

/// Each malformed TX frame on a rig of its own: dropped, logged, and the
/// daemon serves on. The case under way is named on stderr, which a
/// failing test shows.
#[test]
fn malformed_tx_frames_are_dropped_and_logged() {
    for (case, m, why) in [
        (
            "shorter than the net header",
            Malformed::ShorterThanNetHdr,
            "shorter than",
        ),
        (
            "shorter than an ethernet header",
            Malformed::ShorterThanEthHdr,
            "shorter than",
        ),
        (
            "larger than 64 KiB",
            Malformed::Oversize(70_000),
            "larger than 64 KiB",
        ),
        (
            "with an unknown gso_type",
            Malformed::BadGsoType,
            "gso_type",
        ),
        (
            "with csum_start beyond the frame",
            Malformed::CsumStartBeyondFrame,
            "csum_start",
        ),
        (
            "with csum_offset beyond the frame",
            Malformed::CsumOffsetBeyondFrame,
            "csum_start",
        ),
    ] {
        eprintln!("--- a frame {case}");
        frame_case(m, why);
    }
}

fn tso_frame(mss: u16) -> (VirtioNetHdr, Vec<u8>) {
    let payload = vu_driver::net::frame::pattern(3000, 3);
    tcp_frame(
        GUEST_MAC,
        HOST_MAC,
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        &payload,
        mss,
    )
}

/// A TSO frame (mss 1448) whose header `edit` spoils: dropped, logged
/// with `why` (see [`frame_case_with`]).
fn edited_tso_frame_case(edit: impl FnOnce(&mut VirtioNetHdr), why: &str) {
    let (mut hdr, frame) = tso_frame(1448);
    edit(&mut hdr);
    frame_case_with(&NetOptions::default(), &chain_bytes(&hdr, &frame), why);
}

#[test]
fn gso_frame_with_gso_size_0() {
    edited_tso_frame_case(|hdr| hdr.gso_size = 0, "gso_size 0");
}

#[test]
fn gso_udp_frame_is_not_offered() {
    // VIRTIO_NET_HDR_GSO_UDP
    edited_tso_frame_case(|hdr| hdr.gso_type = 3, "gso_type 0x3");
}

#[test]
fn needs_csum_without_csum_negotiated() {
    let opts = NetOptions {
        feature_mask: NET_DRIVER_FEATURES & !(1 << VIRTIO_NET_F_CSUM),
        ..NetOptions::default()
    };
    let (hdr, frame) = tso_frame(0);
    frame_case_with(&opts, &chain_bytes(&hdr, &frame), "csum_start");
}

// ---------------------------------------------------------------- RX ----

/// A driver whose RX ring is still empty, so raw chains come first.
fn unfilled(r: &Rig) -> NetClient {
    NetClient::connect_unfilled(r.socket(), &NetOptions::default()).unwrap()
}

/// A device-writable buffer of `len` bytes preset to [`FILL`].
fn rx_buf(mem: &GuestMem, len: u32) -> (GuestAddress, usize) {
    let at = mem.alloc(u64::from(len.max(1)), 64).unwrap();
    mem.write(at, &vec![FILL; len as usize]).unwrap();
    (at, len as usize)
}

/// Runs the chain `build` makes (and the buffers it must leave alone) on an
/// empty RX ring: back with len 0, untouched; then the ring is filled and
/// frames cross.
fn rx_case(build: impl FnOnce(&GuestMem) -> (Vec<RawDesc>, Vec<(GuestAddress, usize)>)) {
    let mut r = rig(&[]);
    let mut net = unfilled(&r);
    let mem = net.device().mem().clone();
    let (descs, untouched) = build(&mem);
    let (head, used) = run_raw(&mut net, RXQ, &descs);
    assert_eq!(used.len, 0, "RX chain {head}: {used:?}");
    for (at, len) in untouched {
        let data = mem.read_vec(at, len).unwrap();
        let bad = data.iter().position(|&b| b != FILL);
        assert_eq!(bad, None, "buffer at {:#x} written", at.raw_value());
    }
    r.assert_logged(&["queue 0", "RX chain(s) returned unused"]);
    r.assert_alive();
    net.rx_fill(0).unwrap();
    r.assert_serves(&mut net, 0);
}

/// Two 1 KiB writable buffers linked 0 -> 1, edited by `edit`.
fn rx_edited(edit: impl FnOnce(&mut Vec<RawDesc>)) {
    rx_case(|mem| {
        let a = rx_buf(mem, 1024);
        let b = rx_buf(mem, 1024);
        let mut d = vec![
            RawDesc::new(a.0.raw_value(), 1024, W | N, 1),
            RawDesc::new(b.0.raw_value(), 1024, W, 0),
        ];
        edit(&mut d);
        (d, vec![a, b])
    });
}

#[test]
fn rx_readable_descriptor() {
    rx_edited(|d| d[1].flags &= !W);
}

/// The first 1 KiB buffer alone, with `flags` and (when given) `len`.
fn rx_one(flags: u16, len: Option<u32>) {
    rx_edited(|d| {
        d.truncate(1);
        d[0].flags = flags;
        if let Some(len) = len {
            d[0].len = len;
        }
    });
}

#[test]
fn rx_readable_only_chain() {
    rx_one(0, None);
}

#[test]
fn rx_zero_length_buffer() {
    rx_one(W, Some(0));
}

#[test]
fn rx_buffer_shorter_than_the_net_header() {
    rx_one(W, Some(6));
}

#[test]
fn rx_u32_overflow_of_the_chain_total() {
    // Writable buffers of 4 GiB - 4 KiB and 8 KiB in a 6 GiB memory. A
    // frame fits in the first; the device either refuses the chain or uses
    // it, reporting no more than it wrote.
    let mut r = rig(&[]);
    let mut opts = NetOptions::default();
    opts.device.mem_size = 6 << 30;
    let mut net = NetClient::connect_unfilled(r.socket(), &opts).unwrap();
    let mem = net.device().mem().clone();
    let (big, small) = (GuestAddress(1 << 30), GuestAddress(5 << 30));
    mem.write(big, &[FILL; 4096]).unwrap();
    let d = [
        RawDesc::new(big.raw_value(), 0xffff_f000, W | N, 1),
        RawDesc::new(small.raw_value(), 0x2000, W, 0),
    ];
    let vq = net.device().queue(RXQ);
    let slots = vq.raw_chain(&d).unwrap();
    vq.kick_now().unwrap();
    let tag = unique_tag("overflow");
    let frame = to_guest(&tag, 100);
    r.inject(&frame);
    let vq = net.device().queue(RXQ);
    let used = vq.wait_used(T).unwrap();
    vq.release_descs(&slots);
    assert_eq!(used.head, slots[0]);
    if used.len != 0 {
        assert_eq!(used.len as usize, 12 + frame.len(), "{used:?}");
        let got = mem.read_vec(big, 12 + frame.len()).unwrap();
        assert!(got[12..] == frame[..], "frame written wrongly");
    }
    r.assert_alive();
    net.rx_fill(0).unwrap();
    r.assert_serves(&mut net, 0);
}

// ------------------------------------------------------------ ctrl ----

/// A control chain: a readable buffer with `cmd`, then `ack` (a writable
/// one-byte buffer preset to [`FILL`], or none). Returns the descriptors
/// and the ack byte's address.
fn ctrl_chain(mem: &GuestMem, cmd: &[u8], ack_flags: Option<u16>) -> (Vec<RawDesc>, GuestAddress) {
    let at = mem.alloc(cmd.len().max(1) as u64 + 64, 64).unwrap();
    mem.write(at, cmd).unwrap();
    let ack = at.unchecked_add(cmd.len() as u64 + 8);
    mem.write(ack, &[FILL]).unwrap();
    let mut d = vec![RawDesc::new(at.raw_value(), cmd.len() as u32, 0, 0)];
    if let Some(flags) = ack_flags {
        d[0].flags = N;
        d[0].next = 1;
        d.push(RawDesc::new(ack.raw_value(), 1, flags, 0));
    }
    (d, ack)
}

/// Runs a raw control chain: it must come back unanswered (len 0, ack
/// byte untouched); then a good command still works.
fn ctrl_dropped(build: impl FnOnce(&GuestMem) -> (Vec<RawDesc>, GuestAddress)) {
    let mut r = rig(&[]);
    let mut net = r.client();
    let mem = net.device().mem().clone();
    let (d, ack) = build(&mem);
    let (_, used) = run_raw(&mut net, CTRLQ, &d);
    assert_eq!(used.len, 0, "{used:?}");
    assert_eq!(mem.read_vec(ack, 1).unwrap(), [FILL], "ack byte written");
    r.assert_logged(&["control command dropped"]);
    assert_good_command(&mut r, &mut net);
}

/// PROMISC off with a unicast table: the table's address passes, another does not.
fn assert_good_command(r: &mut Rig, net: &mut NetClient) {
    let extra = [0x02, 0, 0, 0, 0, 0x77];
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend_from_slice(&extra);
    table.extend_from_slice(&0u32.to_le_bytes());
    let ack = net
        .ctrl_command(
            VIRTIO_NET_CTRL_MAC as u8,
            VIRTIO_NET_CTRL_MAC_TABLE_SET as u8,
            &table,
        )
        .unwrap();
    assert_eq!(ack, VIRTIO_NET_OK as u8, "good MAC table refused");
    assert_eq!(net.ctrl_rx_promisc(false).unwrap(), VIRTIO_NET_OK as u8);
    r.inject(&tagged(
        HOST_MAC,
        [2, 0, 0, 0, 0, 0x99],
        &unique_tag("no"),
        100,
    ));
    let tag = unique_tag("extra");
    r.inject(&tagged(HOST_MAC, extra, &tag, 100));
    let before = driver_frames_before(net, 0, &tag);
    assert!(before.is_empty(), "filtered frame arrived: {before:?}");
    r.assert_serves(net, 0);
}

/// Sends a command whose data is `data`: it must get an error ack; then a
/// good command still works.
fn ctrl_refused(class: u32, cmd: u32, data: &[u8]) {
    let mut r = rig(&[]);
    let mut net = r.client();
    let ack = net.ctrl_command(class as u8, cmd as u8, data).unwrap();
    assert_eq!(ack, VIRTIO_NET_ERR as u8, "class {class} command {cmd}");
    assert_good_command(&mut r, &mut net);
}

fn mac_set() -> (u32, u32) {
    (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET)
}

#[test]
fn ctrl_without_an_ack_byte() {
    ctrl_dropped(|mem| ctrl_chain(mem, &[VIRTIO_NET_CTRL_RX as u8, 0, 0], None));
}

#[test]
fn ctrl_with_a_read_only_ack_byte() {
    ctrl_dropped(|mem| ctrl_chain(mem, &[VIRTIO_NET_CTRL_RX as u8, 0, 0], Some(0)));
}

#[test]
fn ctrl_with_one_header_byte() {
    ctrl_dropped(|mem| ctrl_chain(mem, &[VIRTIO_NET_CTRL_RX as u8], Some(W)));
}

#[test]
fn ctrl_with_a_huge_body() {
    ctrl_dropped(|mem| {
        let mut cmd = vec![
            VIRTIO_NET_CTRL_MAC as u8,
            VIRTIO_NET_CTRL_MAC_TABLE_SET as u8,
        ];
        cmd.resize(2 + 10_000, 0);
        ctrl_chain(mem, &cmd, Some(W))
    });
}

#[test]
fn ctrl_descriptor_loop() {
    ctrl_dropped(|mem| {
        let (mut d, ack) = ctrl_chain(mem, &[VIRTIO_NET_CTRL_RX as u8, 0, 0], Some(W));
        d[1].flags |= N;
        d[1].next = 0;
        (d, ack)
    });
}

#[test]
fn ctrl_truncated_mac_table() {
    let (class, cmd) = mac_set();
    let mut t = 2u32.to_le_bytes().to_vec();
    t.extend_from_slice(&[2, 0, 0, 0, 0, 7]);
    ctrl_refused(class, cmd, &t);
}

#[test]
fn ctrl_mac_table_with_a_huge_count() {
    let (class, cmd) = mac_set();
    let mut t = u32::MAX.to_le_bytes().to_vec();
    t.extend_from_slice(&[2, 0, 0, 0, 0, 7]);
    ctrl_refused(class, cmd, &t);
}

#[test]
fn ctrl_mac_table_with_trailing_bytes() {
    let (class, cmd) = mac_set();
    let mut t = 0u32.to_le_bytes().to_vec();
    t.extend_from_slice(&0u32.to_le_bytes());
    t.push(0);
    ctrl_refused(class, cmd, &t);
}

#[test]
fn ctrl_promisc_with_two_data_bytes() {
    ctrl_refused(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[0, 0]);
}

#[test]
fn ctrl_unknown_class() {
    ctrl_refused(99, 0, &[]);
}

#[test]
fn ctrl_pairs_set_without_mq() {
    // One pair: MQ was not offered, so VQ_PAIRS_SET is refused.
    ctrl_refused(
        VIRTIO_NET_CTRL_MQ,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
        &1u16.to_le_bytes(),
    );
}
