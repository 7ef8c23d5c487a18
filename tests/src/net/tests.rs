//! The net rings checked against rust-vmm's device-side `virtio-queue`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_UDP_L4,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::frame::{self, Malformed, UdpFrame};
use super::*;
use crate::memory::{Backing, GuestMem};
use crate::virtqueue::{QueueConfig, VirtQueue};

fn setup(size: u16) -> (Arc<GuestMem>, VirtQueue, Queue) {
    let mem = GuestMem::new(16 << 20, &Backing::Memfd).unwrap();
    let cfg = QueueConfig {
        size,
        event_idx: false,
        indirect: false,
        max_indirect: 0,
    };
    let vq = VirtQueue::new(0, mem.clone(), cfg).unwrap();
    let mut dev = Queue::new(size).unwrap();
    dev.try_set_desc_table_address(vq.desc_addr()).unwrap();
    dev.try_set_avail_ring_address(vq.avail_addr()).unwrap();
    dev.try_set_used_ring_address(vq.used_addr()).unwrap();
    dev.set_ready(true);
    assert!(dev.is_valid(mem.mem()));
    (mem, vq, dev)
}

/// A device reading a TX chain: every readable descriptor's bytes, and the
/// count of writable ones.
fn device_read(mem: &GuestMem, dev: &mut Queue) -> Option<(u16, Vec<Vec<u8>>, usize)> {
    let chain = dev.pop_descriptor_chain(mem.mem())?;
    let head = chain.head_index();
    let mut parts = Vec::new();
    let mut writable = 0;
    for d in chain {
        if d.is_write_only() {
            writable += 1;
        } else {
            let mut b = vec![0u8; d.len() as usize];
            mem.mem().read_slice(&mut b, d.addr()).unwrap();
            parts.push(b);
        }
    }
    Some((head, parts, writable))
}

/// A device filling an RX chain with `bytes` (across its descriptors) and
/// returning it; the used length is what it wrote.
fn device_write(mem: &GuestMem, dev: &mut Queue, bytes: &[u8]) -> u16 {
    let chain = dev.pop_descriptor_chain(mem.mem()).expect("an RX buffer");
    let head = chain.head_index();
    let mut rest = bytes;
    for d in chain {
        assert!(d.is_write_only(), "RX descriptors must be device-writable");
        let n = rest.len().min(d.len() as usize);
        mem.mem().write_slice(&rest[..n], d.addr()).unwrap();
        rest = &rest[n..];
    }
    assert!(rest.is_empty(), "frame does not fit the RX buffer");
    dev.add_used(mem.mem(), head, bytes.len() as u32).unwrap();
    head
}

fn hdr_with_buffers(n: u16) -> Vec<u8> {
    VirtioNetHdr {
        num_buffers: n,
        ..VirtioNetHdr::plain()
    }
    .to_bytes()
    .to_vec()
}

/// What the device writes for `frame` spread over `n` buffers: the header
/// saying so, then the frame.
fn wire(n: u16, frame: &[u8]) -> Vec<u8> {
    let mut w = hdr_with_buffers(n);
    w.extend_from_slice(frame);
    w
}

/// One-descriptor mergeable RX buffers of `buf_len` bytes.
fn merged(buf_len: u32) -> RxLayout {
    RxLayout {
        buf_len,
        descs_per_buf: 1,
        mergeable: true,
    }
}

/// `setup(size)` with an RX ring of `layout` on it, every buffer posted.
fn rx_setup(size: u16, layout: RxLayout) -> (Arc<GuestMem>, VirtQueue, Queue, RxRing) {
    let (mem, mut vq, dev) = setup(size);
    let mut rx = RxRing::new(&vq, layout).unwrap();
    let posted = rx.fill(&mut vq).unwrap();
    assert_eq!(posted, rx.buffers(), "fill posts every buffer");
    (mem, vq, dev, rx)
}

/// The device side of a test thread: `try_once` until it gives something,
/// waiting for the driver's kick in between (the eventfd is non-blocking);
/// fails after 5 s with "no `what` arrived".
fn poll_device<T>(kick: &EventFd, what: &str, mut try_once: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(t) = try_once() {
            return t;
        }
        assert!(Instant::now() < deadline, "no {what} arrived");
        let _ = kick.read();
        std::thread::yield_now();
    }
}

// -------------------------------------------------------------- TX ----

#[test]
fn tx_chain_carries_exactly_header_and_frame() {
    for (layout, descs) in [(TxLayout::OneDesc, 1), (TxLayout::TwoDescs, 2)] {
        let (mem, mut vq, mut dev) = setup(8);
        let mut tx = TxRing::new(&vq, 2048, layout).unwrap();
        let frame = UdpFrame::default().build_len(200, 3);
        let (hdr, _) = UdpFrame::default().build_partial(&[0; 158]);
        tx.send(&mut vq, &hdr, &frame, Duration::from_secs(1))
            .unwrap();
        assert_eq!(vq.kick_fd().read().unwrap(), 1, "send kicks");

        let (head, parts, writable) = device_read(&mem, &mut dev).unwrap();
        assert_eq!(
            writable, 0,
            "a TX chain has nothing for the device to write"
        );
        assert_eq!(parts.len(), descs, "{layout:?}");
        if descs == 2 {
            assert_eq!(
                parts[0].len(),
                NET_HDR_LEN,
                "header alone in the first descriptor"
            );
        }
        let all: Vec<u8> = parts.concat();
        assert_eq!(all.len(), NET_HDR_LEN + frame.len());
        assert_eq!(VirtioNetHdr::from_bytes(&all), Some(hdr));
        assert_eq!(&all[NET_HDR_LEN..], &frame[..]);
        assert!(device_read(&mem, &mut dev).is_none(), "exactly one chain");

        assert_eq!(tx.in_flight(), 1);
        dev.add_used(mem.mem(), head, 0).unwrap();
        assert_eq!(tx.reap(&mut vq).unwrap(), 1);
        assert_eq!((tx.in_flight(), tx.sent(), tx.completed()), (0, 1, 1));
    }
}

#[test]
fn tx_frame_larger_than_a_slot_is_refused() {
    let (_mem, mut vq, _dev) = setup(8);
    let mut tx = TxRing::new(&vq, 256, TxLayout::OneDesc).unwrap();
    let err = tx
        .send(&mut vq, &VirtioNetHdr::plain(), &[0; 245], Duration::ZERO)
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::TooLarge {
                len: 257,
                max: 256,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn send_batch_fills_free_slots_with_one_kick() {
    let (mem, mut vq, mut dev) = setup(8);
    let mut tx = TxRing::new(&vq, 2048, TxLayout::OneDesc).unwrap();
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|i| UdpFrame::default().build_len(64, i))
        .collect();
    let batch: Vec<(VirtioNetHdr, &[u8])> = frames
        .iter()
        .map(|f| (VirtioNetHdr::plain(), &f[..]))
        .collect();
    assert_eq!(tx.send_batch(&mut vq, &batch).unwrap(), 8, "8 slots");
    assert_eq!(vq.kicks_sent(), 1);
    for f in frames.iter().take(8) {
        let (head, parts, _) = device_read(&mem, &mut dev).unwrap();
        assert_eq!(&parts.concat()[NET_HDR_LEN..], &f[..]);
        dev.add_used(mem.mem(), head, 0).unwrap();
    }
    // The rest goes out once the device returned the slots.
    assert_eq!(tx.send_batch(&mut vq, &batch[8..]).unwrap(), 2);
    assert_eq!(vq.kicks_sent(), 2);
    assert_eq!(tx.in_flight(), 2);
}

#[test]
fn prefilled_slots_are_posted_without_rewriting() {
    let (mem, mut vq, mut dev) = setup(8);
    let mut tx = TxRing::new(&vq, 2048, TxLayout::TwoDescs).unwrap();
    assert!(matches!(
        tx.send_prefilled(&mut vq, 1),
        Err(NetError::NotPrefilled { .. })
    ));
    let frame = UdpFrame::default().build_len(60, 9);
    tx.prefill(
        &mut vq,
        &VirtioNetHdr::plain(),
        &frame,
        Duration::from_secs(1),
    )
    .unwrap();
    // Two descriptors per chain: 8 descriptors hold 4 chains.
    assert_eq!(tx.send_prefilled(&mut vq, 100).unwrap(), 4);
    for _ in 0..4 {
        let (head, parts, _) = device_read(&mem, &mut dev).unwrap();
        assert_eq!(parts[1], frame);
        dev.add_used(mem.mem(), head, 0).unwrap();
    }
    assert_eq!(tx.send_prefilled(&mut vq, 3).unwrap(), 3);
    assert_eq!(tx.completed(), 4);
}

#[test]
fn oversize_raw_send_uses_scratch_and_waits_for_it() {
    let (mem, mut vq, mut dev) = setup(8);
    let mut tx = TxRing::new(&vq, 2048, TxLayout::OneDesc).unwrap();
    let bytes = Malformed::Oversize(70_000).chain_bytes();
    assert_eq!(bytes.len(), NET_HDR_LEN + 70_000);
    let kick = vq.kick_fd().try_clone().unwrap();
    let call = vq.call_fd().try_clone().unwrap();
    let dmem = mem.clone();
    let device = std::thread::spawn(move || {
        let (head, parts, _) = poll_device(&kick, "chain", || device_read(&dmem, &mut dev));
        dev.add_used(dmem.mem(), head, 0).unwrap();
        call.write(1).unwrap();
        parts
    });
    tx.send_raw(&mut vq, &bytes, Duration::from_secs(5))
        .unwrap();
    let parts = device.join().unwrap();
    assert_eq!(parts, vec![bytes], "one descriptor with the exact bytes");
    assert_eq!(tx.in_flight(), 0, "send_raw returned after the device did");
}

// -------------------------------------------------------------- RX ----

#[test]
fn rx_merged_frame_spanning_three_small_buffers_is_reassembled() {
    let (mem, mut vq, mut dev, mut rx) = rx_setup(8, merged(64));
    assert_eq!(rx.posted(), 8);
    // 12 + 150 = 162 bytes = 64 + 64 + 34.
    let frame = UdpFrame::default().build_len(150, 77);
    for chunk in wire(3, &frame).chunks(64) {
        device_write(&mem, &mut dev, chunk);
    }
    let (hdr, data) = rx.recv(&mut vq, Duration::from_secs(1)).unwrap();
    assert_eq!(hdr.num_buffers, 3);
    assert_eq!(data, frame);
    assert_eq!(rx.posted(), 8, "all three buffers went back");
    assert!(rx.try_recv(&mut vq).unwrap().is_none());
}

#[test]
fn rx_merged_frame_arriving_in_pieces_waits_for_the_rest() {
    let (mem, mut vq, mut dev, mut rx) = rx_setup(4, merged(32));
    let frame = frame::pattern(40, 1);
    let wire = wire(2, &frame);
    device_write(&mem, &mut dev, &wire[..32]);
    assert!(rx.try_recv(&mut vq).unwrap().is_none(), "half a frame");
    assert!(rx
        .recv(&mut vq, Duration::from_millis(10))
        .unwrap_err()
        .is_timeout());
    device_write(&mem, &mut dev, &wire[32..]);
    assert_eq!(rx.recv(&mut vq, Duration::from_secs(1)).unwrap().1, frame);
}

#[test]
fn rx_chained_buffer_without_mrg_holds_a_big_frame() {
    let layout = RxLayout {
        buf_len: 100,
        descs_per_buf: 4,
        mergeable: false,
    };
    let (mem, mut vq, mut dev, mut rx) = rx_setup(8, layout);
    assert_eq!(rx.buffers(), 2, "8 descriptors / 4 per buffer");
    let frame = frame::pattern(380, 5);
    device_write(&mem, &mut dev, &wire(1, &frame));
    assert_eq!(rx.recv(&mut vq, Duration::from_secs(1)).unwrap().1, frame);
}

#[test]
fn refill_keeps_the_ring_full() {
    let (mem, mut vq, mut dev, mut rx) = rx_setup(8, RxLayout::for_features(false, false));
    assert_eq!((rx.posted(), vq.free_descs()), (8, 0));
    // Three rounds over an 8-entry ring: the device can only keep going if
    // every buffer it used came back.
    for i in 0..24u8 {
        let frame = UdpFrame::default().build_len(64 + usize::from(i), i);
        device_write(&mem, &mut dev, &wire(1, &frame));
        let (_, data) = rx.recv(&mut vq, Duration::from_secs(1)).unwrap();
        assert_eq!(data, frame);
        assert_eq!((rx.posted(), vq.free_descs()), (8, 0), "after frame {i}");
    }
}

#[test]
fn rx_count_counts_merged_frames_without_copying() {
    let (mem, mut vq, mut dev, mut rx) = rx_setup(8, merged(64));
    device_write(&mem, &mut dev, &wire(1, &[1; 40]));
    let two = wire(2, &[2; 100]);
    device_write(&mem, &mut dev, &two[..64]);
    device_write(&mem, &mut dev, &two[64..]);
    let c = rx.recv_count(&mut vq, Duration::from_secs(1)).unwrap();
    assert_eq!(
        c,
        RxCount {
            frames: 2,
            bytes: 140,
            buffers: 3,
            short: 0
        }
    );
    assert_eq!(rx.posted(), 8);
    let none = rx.recv_count(&mut vq, Duration::from_millis(5)).unwrap();
    assert_eq!(none, RxCount::default());
}

#[test]
fn rx_count_skips_buffers_shorter_than_the_header() {
    let (mem, mut vq, mut dev, mut rx) = rx_setup(8, merged(64));
    device_write(&mem, &mut dev, &[]);
    device_write(&mem, &mut dev, &wire(1, &[1; 40]));
    let c = rx.recv_count(&mut vq, Duration::from_secs(1)).unwrap();
    assert_eq!((c.frames, c.bytes, c.buffers, c.short), (1, 40, 2, 1));
    assert_eq!(rx.posted(), 8);
}

#[test]
fn rx_rejects_bad_device_answers() {
    let (mem, mut vq, mut dev, mut rx) = rx_setup(8, merged(64));
    device_write(&mem, &mut dev, &[0; 8]);
    let e = rx.recv(&mut vq, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, NetError::RxShort { len: 8, .. }), "{e}");
    device_write(&mem, &mut dev, &hdr_with_buffers(0));
    let e = rx.recv(&mut vq, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, NetError::RxBadNumBuffers { .. }), "{e}");
    let chain = dev.pop_descriptor_chain(mem.mem()).unwrap();
    dev.add_used(mem.mem(), chain.head_index(), 65).unwrap();
    let e = rx.recv(&mut vq, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(
            e,
            NetError::RxOverflow {
                len: 65,
                cap: 64,
                ..
            }
        ),
        "{e}"
    );
}

// ------------------------------------------------------------ ctrl ----

#[test]
fn ctrl_command_layout_and_ack() {
    let (mem, mut vq, mut dev) = setup(8);
    let mut ctrl = CtrlQueue::new(&vq).unwrap();
    let kick = vq.kick_fd().try_clone().unwrap();
    let call = vq.call_fd().try_clone().unwrap();
    let dmem = mem.clone();
    let device = std::thread::spawn(move || {
        let chain = poll_device(&kick, "command", || dev.pop_descriptor_chain(dmem.mem()));
        let head = chain.head_index();
        let descs: Vec<_> = chain.collect();
        let mut out = Vec::new();
        for d in descs.iter().filter(|d| !d.is_write_only()) {
            let mut b = vec![0u8; d.len() as usize];
            dmem.mem().read_slice(&mut b, d.addr()).unwrap();
            out.extend_from_slice(&b);
        }
        let acks: Vec<_> = descs.iter().filter(|d| d.is_write_only()).collect();
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].len(), 1);
        dmem.mem().write_slice(&[0u8], acks[0].addr()).unwrap();
        dev.add_used(dmem.mem(), head, 1).unwrap();
        call.write(1).unwrap();
        out
    });
    let ack = ctrl
        .command(&mut vq, 4, 0, &3u16.to_le_bytes(), Duration::from_secs(5))
        .unwrap();
    assert_eq!(ack, 0, "VIRTIO_NET_OK");
    assert_eq!(device.join().unwrap(), vec![4, 0, 3, 0]);
}

// ---------------------------------------------------------- frames ----

/// An independent one's-complement sum, word by word, for checking the builders.
fn ones_sum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for i in (0..data.len()).step_by(2) {
        let hi = u32::from(data[i]) << 8;
        let lo = data.get(i + 1).map_or(0, |b| u32::from(*b));
        s += hi | lo;
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// True if the IPv4 header and UDP checksums of `f` verify.
fn checksums_verify(f: &[u8]) -> bool {
    let ip = &f[14..34];
    let udp = &f[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(udp);
    ones_sum(ip) == 0xffff && ones_sum(&pseudo) == 0xffff
}

#[test]
fn internet_checksum_matches_a_known_header() {
    // The IPv4 header example from RFC 1071 discussions (checksum 0xb861).
    let mut h = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(frame::internet_checksum(&h), 0xb861);
    h[10..12].copy_from_slice(&[0xb8, 0x61]);
    assert_eq!(ones_sum(&h), 0xffff);
}

#[test]
fn udp_frames_carry_valid_checksums() {
    let b = UdpFrame::default();
    for len in [42, 43, 64, 99, 1500, 9000] {
        let f = b.build_len(len, len as u8);
        assert_eq!(f.len(), len);
        assert!(checksums_verify(&f), "frame of {len} bytes");
        let v = frame::parse_udp(&f).unwrap();
        assert_eq!(v.payload, &frame::pattern(len - 42, len as u8)[..]);
        assert_eq!((v.dst_mac, v.src_mac), (b.dst_mac, b.src_mac));
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 0x40;
        assert!(
            len == 42 || !checksums_verify(&bad),
            "corruption goes unseen"
        );
    }
}

#[test]
fn partial_checksum_frame_is_completed_by_the_device_rule() {
    let b = UdpFrame::default();
    let payload = frame::pattern(333, 8);
    let (hdr, mut f) = b.build_partial(&payload);
    assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM as u8);
    assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 6));
    assert!(!checksums_verify(&f), "UDP checksum left to the device");
    assert!(
        ones_sum(&f[14..34]) == 0xffff,
        "IPv4 header checksum is complete"
    );
    assert!(frame::complete_partial_csum(&hdr, &mut f));
    assert!(checksums_verify(&f));
    assert_eq!(f, b.build(&payload));
}

#[test]
fn swap_macs_swaps_only_the_addresses() {
    let b = UdpFrame::default();
    let mut f = b.build_len(64, 0);
    frame::swap_macs(&mut f);
    let v = frame::parse_udp(&f).unwrap();
    assert_eq!((v.dst_mac, v.src_mac), (b.src_mac, b.dst_mac));
    assert_eq!(&f[12..], &b.build_len(64, 0)[12..]);
}

#[test]
fn malformed_buffers_are_malformed_as_named() {
    let valid_gso = [
        VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_TCPV4,
        VIRTIO_NET_HDR_GSO_UDP,
        VIRTIO_NET_HDR_GSO_TCPV6,
        VIRTIO_NET_HDR_GSO_UDP_L4,
    ];
    for m in Malformed::ALL {
        let bytes = m.chain_bytes();
        let hdr = VirtioNetHdr::from_bytes(&bytes);
        let frame = bytes.get(NET_HDR_LEN..).unwrap_or(&[]);
        match m {
            Malformed::ShorterThanNetHdr => assert!(bytes.len() < NET_HDR_LEN),
            Malformed::ShorterThanEthHdr => {
                assert_eq!(hdr, Some(VirtioNetHdr::plain()));
                assert!(frame.len() < frame::ETH_HDR_LEN);
            }
            Malformed::Oversize(n) => {
                assert_eq!(frame.len(), n);
                assert!(frame.len() > 65_550);
                assert_eq!(hdr, Some(VirtioNetHdr::plain()));
            }
            Malformed::BadGsoType => {
                let g = u32::from(hdr.unwrap().gso_type & !(VIRTIO_NET_HDR_GSO_ECN as u8));
                assert!(!valid_gso.contains(&g));
                assert!(checksums_verify(frame), "only the header is wrong");
            }
            Malformed::CsumStartBeyondFrame => {
                let h = hdr.unwrap();
                assert_ne!(h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0);
                assert!(usize::from(h.csum_start) > frame.len());
            }
            Malformed::CsumOffsetBeyondFrame => {
                let h = hdr.unwrap();
                assert!(usize::from(h.csum_start) < frame.len());
                assert!(usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 > frame.len());
            }
        }
    }
}

// ------------------------------------------------- features, config ----

#[test]
fn feature_dependencies_are_enforced() {
    let b = |x: u32| 1u64 << x;
    let f = resolve_features(b(VIRTIO_NET_F_GUEST_TSO4) | b(VIRTIO_NET_F_GUEST_ECN));
    assert_eq!(f, 0, "TSO without GUEST_CSUM, ECN without TSO");
    let f = resolve_features(
        b(VIRTIO_NET_F_GUEST_CSUM) | b(VIRTIO_NET_F_GUEST_TSO4) | b(VIRTIO_NET_F_GUEST_ECN),
    );
    assert_eq!(
        f,
        b(VIRTIO_NET_F_GUEST_CSUM) | b(VIRTIO_NET_F_GUEST_TSO4) | b(VIRTIO_NET_F_GUEST_ECN)
    );
    assert_eq!(resolve_features(b(VIRTIO_NET_F_HOST_TSO6)), 0);
    assert_eq!(
        resolve_features(b(VIRTIO_NET_F_CSUM) | b(VIRTIO_NET_F_HOST_TSO6)),
        b(VIRTIO_NET_F_CSUM) | b(VIRTIO_NET_F_HOST_TSO6)
    );
    assert_eq!(resolve_features(b(VIRTIO_NET_F_CTRL_RX)), 0);
    assert_eq!(
        resolve_features(b(VIRTIO_NET_F_MQ)),
        b(VIRTIO_NET_F_MQ),
        "MQ stays without CTRL_VQ (vhost-user)"
    );
    assert_eq!(
        resolve_features(b(VIRTIO_NET_F_CTRL_VQ) | b(VIRTIO_NET_F_CTRL_RX)),
        b(VIRTIO_NET_F_CTRL_VQ) | b(VIRTIO_NET_F_CTRL_RX)
    );
}

#[test]
fn config_fields_follow_features() {
    let b = |x: u32| 1u64 << x;
    let raw = [1, 2, 3, 4, 5, 6, 1, 0, 4, 0, 0xdc, 0x05];
    let all =
        b(VIRTIO_NET_F_MAC) | b(VIRTIO_NET_F_STATUS) | b(VIRTIO_NET_F_MQ) | b(VIRTIO_NET_F_MTU);
    assert_eq!(NetConfig::len_for(all), 12);
    assert_eq!(
        NetConfig::parse(all, &raw),
        NetConfig {
            mac: Some([1, 2, 3, 4, 5, 6]),
            status: Some(1),
            max_virtqueue_pairs: Some(4),
            mtu: Some(1500),
        }
    );
    let some = b(VIRTIO_NET_F_STATUS);
    assert_eq!(NetConfig::len_for(some), 8);
    assert_eq!(
        NetConfig::parse(some, &raw),
        NetConfig {
            status: Some(1),
            ..Default::default()
        }
    );
    assert_eq!(NetConfig::len_for(0), 0);
}
