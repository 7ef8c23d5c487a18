//! `vhost-net-daemon` driven by the userspace virtio-net driver, with its
//! tap in a network namespace the test creates: frames cross between the
//! driver's rings and the tap's host side (an AF_PACKET socket), features
//! and config space, offloads, several queue pairs, the control queue's
//! RX filter, reconnection, and QEMU 7.2's early SET_VRING_ENABLE.

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::*;
use vu_driver::device::connect_socket;
use vu_driver::fixture::TempDir;
use vu_driver::net::frame::{parse_udp, Mac, UdpFrame};
use vu_driver::net::{
    NetClient, NetConfig, NetOptions, RxLayout, VirtioNetHdr, NET_DRIVER_FEATURES,
};
use vu_driver::netns::PacketSocket;
use vu_driver::ours::vhost_net_daemon_command;
use vu_driver::process::run_bounded;

use crate::common::*;

const OK: u8 = VIRTIO_NET_OK as u8;
const ERR: u8 = VIRTIO_NET_ERR as u8;

fn bit(b: u32) -> u64 {
    1 << b
}

/// A client offered every driver feature but `feature`, which is then not
/// negotiated.
fn connect_without(r: &Rig, feature: u32) -> NetClient {
    let opts = NetOptions {
        feature_mask: NET_DRIVER_FEATURES & !bit(feature),
        ..NetOptions::default()
    };
    let net = r.connect(&opts);
    assert!(!net.has_feature(feature), "feature {feature} negotiated");
    net
}

#[test]
fn a_frame_crosses_each_way() {
    let r = rig(&[]);
    let mut net = r.client();

    // TX: the driver's frame appears on the tap.
    let f = UdpFrame {
        src_mac: GUEST_MAC,
        ..UdpFrame::default()
    };
    let frame = f.build(b"to the host");
    net.send(0, &VirtioNetHdr::plain(), &frame).unwrap();
    let got = udp_on_tap(&r, b"to the host", "frame on the tap");
    assert_eq!(got, frame);

    // RX: a frame written on the tap's host side reaches the driver.
    let back = UdpFrame {
        dst_mac: GUEST_MAC,
        ..UdpFrame::default()
    }
    .build(b"to the guest");
    r.pkt.send(&back).unwrap();
    let got = driver_until(&mut net, 0, T, |b| b == back.as_slice());
    let (hdr, frame) = got.last().unwrap();
    assert_eq!(frame, &back);
    assert_eq!(hdr.num_buffers, 1);
    assert_eq!(got.len(), 1, "frames the test did not send: {got:?}");
}

#[test]
fn frames_of_64_and_1500_bytes_cross_unchanged() {
    let r = rig(&[]);
    let mut net = r.client();
    for len in [64, 1500] {
        let tag = unique_tag(&format!("tx{len}"));
        let frame = to_host(&tag, len);
        net.send(0, &VirtioNetHdr::plain(), &frame).unwrap();
        let got = tap_expect(&r.pkt, &tag);
        assert_eq!(got.len(), len);
        assert!(got == frame, "{len}-byte frame changed on TX");

        let tag = unique_tag(&format!("rx{len}"));
        let frame = to_guest(&tag, len);
        r.inject(&frame);
        let (hdr, got) = driver_expect(&mut net, 0, &tag);
        assert!(got == frame, "{len}-byte frame changed on RX");
        assert!(hdr.num_buffers >= 1, "{hdr:?}");
        assert_eq!(hdr.gso_type, 0, "{hdr:?}");
        assert_eq!(hdr.gso_size, 0, "{hdr:?}");
    }
}

/// The sequence number of a frame tagged `bulk-N`.
fn bulk_seq(frame: &[u8]) -> Option<usize> {
    let v = parse_udp(frame)?;
    let rest = v.payload.strip_prefix(b"bulk-")?;
    let end = rest.iter().position(|&b| b == b';')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Frames in flight at most: below every queue on the way (the AF_PACKET
/// socket's buffer, the tap's ring, the driver's 256 buffers).
const WINDOW: usize = 64;
const BULK: usize = 1000;

fn bulk_len(i: usize) -> usize {
    if i % 2 == 0 {
        64
    } else {
        1500
    }
}

#[test]
fn a_thousand_frames_each_way_none_lost() {
    let r = rig(&[]);
    let mut net = r.client();
    let pkt: &PacketSocket = &r.pkt;

    // TX: the tap side counts; the driver keeps at most WINDOW unseen.
    let (seen_tx, seen_rx) = mpsc::channel::<usize>();
    let got = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut got = vec![0u32; BULK];
            let mut distinct = 0;
            while distinct < BULK {
                let Some(f) = pkt.recv_matching(T, |b| bulk_seq(b).is_some()).unwrap() else {
                    break;
                };
                let i = bulk_seq(&f).unwrap();
                assert_eq!(f.len(), bulk_len(i), "frame {i}");
                got[i] += 1;
                if got[i] == 1 {
                    distinct += 1;
                }
                let _ = seen_tx.send(i);
            }
            got
        });
        let mut acked = 0;
        for i in 0..BULK {
            while i - acked >= WINDOW {
                seen_rx
                    .recv_timeout(T)
                    .unwrap_or_else(|_| panic!("the tap saw {acked} of {i} frames sent"));
                acked += 1;
            }
            let frame = to_host(&format!("bulk-{i}"), bulk_len(i));
            net.send(0, &VirtioNetHdr::plain(), &frame).unwrap();
        }
        reader.join().unwrap()
    });
    let missing: Vec<usize> = (0..BULK).filter(|&i| got[i] == 0).collect();
    assert!(missing.is_empty(), "TX frames lost: {missing:?}");
    assert!(got.iter().all(|&n| n == 1), "TX frames duplicated");

    // RX: the host injects; the driver acks what it received.
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let mut got = vec![0u32; BULK];
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut acked = 0;
            for i in 0..BULK {
                while i - acked >= WINDOW {
                    if ack_rx.recv_timeout(T).is_err() {
                        return; // The driver side reports what is missing.
                    }
                    acked += 1;
                }
                pkt.send(&to_guest(&format!("bulk-{i}"), bulk_len(i)))
                    .unwrap();
            }
        });
        let mut distinct = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while distinct < BULK && Instant::now() < deadline {
            let (hdr, f) = match net.recv(0, T) {
                Ok(x) => x,
                Err(e) if e.is_timeout() => break,
                Err(e) => panic!("RX: {e}"),
            };
            let Some(i) = bulk_seq(&f) else { continue };
            assert_eq!(f.len(), bulk_len(i), "frame {i}");
            assert_eq!((hdr.gso_type, hdr.num_buffers), (0, 1), "frame {i}");
            got[i] += 1;
            if got[i] == 1 {
                distinct += 1;
            }
            let _ = ack_tx.send(());
        }
        drop(ack_tx);
    });
    let missing: Vec<usize> = (0..BULK).filter(|&i| got[i] == 0).collect();
    assert!(missing.is_empty(), "RX frames lost: {missing:?}");
    assert!(got.iter().all(|&n| n == 1), "RX frames duplicated");
}

/// Injects a `len`-byte frame from the host (tagged `what`) and checks it
/// reaches the driver on pair 0 unchanged; returns its header.
fn host_frame_reaches_driver(r: &Rig, net: &mut NetClient, what: &str, len: usize) -> VirtioNetHdr {
    let tag = unique_tag(what);
    let frame = to_guest(&tag, len);
    r.inject(&frame);
    let (hdr, got) = driver_expect(net, 0, &tag);
    assert!(got == frame, "{len}-byte frame changed");
    hdr
}

#[test]
fn a_frame_spans_small_merged_buffers() {
    let r = rig(&[]);
    let opts = NetOptions {
        rx_layout: Some(RxLayout {
            buf_len: 256,
            descs_per_buf: 1,
            mergeable: true,
        }),
        ..NetOptions::default()
    };
    let mut net = r.connect(&opts);
    assert!(net.has_feature(VIRTIO_NET_F_MRG_RXBUF));
    for len in [64usize, 244, 245, 1500] {
        let hdr = host_frame_reaches_driver(&r, &mut net, "mrg", len);
        assert_eq!(
            usize::from(hdr.num_buffers),
            (12 + len).div_ceil(256),
            "{len}-byte frame in 256-byte buffers: {hdr:?}"
        );
    }
}

#[test]
fn big_buffers_without_mrg_rxbuf() {
    let r = rig(&[]);
    let mut net = connect_without(&r, VIRTIO_NET_F_MRG_RXBUF);
    let layout = net.rx_ring(0).unwrap().layout();
    assert!(!layout.mergeable && layout.descs_per_buf > 1, "{layout:?}");
    for len in [64usize, 1500] {
        let hdr = host_frame_reaches_driver(&r, &mut net, "big", len);
        assert_eq!(hdr.num_buffers, 1, "{hdr:?}");
    }
    assert_tx(&mut net, &r.pkt, 0, &unique_tag("big-tx"));
}

#[test]
fn config_space_with_mtu_and_two_pairs() {
    let r = rig_with(true, &["--num-queue-pairs", "2", "--mtu", "1400"]);
    let mut net = r.client();
    let offered = net.device().offered_features();
    assert_ne!(offered & bit(VIRTIO_NET_F_MTU), 0, "MTU not offered");
    assert_ne!(offered & bit(VIRTIO_NET_F_MQ), 0, "MQ not offered");
    assert_eq!(
        *net.config(),
        NetConfig {
            mac: Some(GUEST_MAC),
            status: Some(VIRTIO_NET_S_LINK_UP as u16),
            max_virtqueue_pairs: Some(2),
            mtu: Some(1400),
        }
    );
    assert_eq!(net.ctrl_queue_index(), Some(4));
}

#[test]
fn config_space_without_mtu() {
    let r = rig(&[]);
    let mut net = r.client();
    let offered = net.device().offered_features();
    assert_eq!(
        offered & bit(VIRTIO_NET_F_MTU),
        0,
        "MTU offered without --mtu"
    );
    assert_eq!(
        offered & bit(VIRTIO_NET_F_MQ),
        0,
        "MQ offered with one pair"
    );
    assert_eq!(
        *net.config(),
        NetConfig {
            mac: Some(GUEST_MAC),
            status: Some(VIRTIO_NET_S_LINK_UP as u16),
            max_virtqueue_pairs: None,
            mtu: None,
        }
    );
    // The raw bytes: MAC, status, max_virtqueue_pairs 1.
    let raw = net.device().get_config(0, 10).unwrap();
    assert_eq!(raw, [2, 0, 0, 0, 0, 0x10, 1, 0, 1, 0]);
    assert_eq!(net.ctrl_queue_index(), Some(2));
}

#[test]
fn offloads_are_offered_and_acked() {
    let r = rig(&[]);
    let net = r.client();
    for b in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_CTRL_RX,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MAC,
    ] {
        assert!(net.has_feature(b), "feature {b} not negotiated");
    }
}

/// Gives the tap 10.0.0.2/24 and opens a UDP socket on 10.0.0.2:5001 in
/// the namespace; returns it and the tap's MAC.
fn local_udp(r: &Rig) -> (UdpSocket, Mac) {
    r.ns.ip(&["addr", "add", "10.0.0.2/24", "dev", TAP])
        .unwrap();
    let sock =
        r.ns.enter(|| UdpSocket::bind("10.0.0.2:5001"))
            .unwrap()
            .unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    (sock, r.ns.mac(TAP).unwrap())
}

#[test]
fn a_partial_checksum_goes_to_the_kernel_as_partial() {
    let r = rig(&[]);
    let mut net = r.client();
    assert!(net.has_feature(VIRTIO_NET_F_CSUM));
    let (sock, tap_mac) = local_udp(&r);
    let f = UdpFrame {
        src_mac: GUEST_MAC,
        dst_mac: tap_mac,
        ..UdpFrame::default()
    };
    // The checksum field holds only the pseudo-header sum: a wrong checksum
    // unless the kernel is told (NEEDS_CSUM) that it is to be completed.
    let (hdr, frame) = f.build_partial(b"partial;");
    net.send(0, &hdr, &frame).unwrap();
    let got = udp_on_tap(&r, b"partial;", "the partial frame on the tap");
    assert!(got == frame, "frame changed on TX");
    let mut buf = [0u8; 64];
    let n = sock
        .recv(&mut buf)
        .expect("the UDP socket got the datagram (the kernel took the checksum as partial)");
    assert_eq!(&buf[..n], b"partial;");

    // The same bytes without NEEDS_CSUM: the kernel checks the checksum and
    // drops the datagram; the complete frame sent next is the one received.
    let (_, bad) = f.build_partial(b"wrong-sum;");
    net.send(0, &VirtioNetHdr::plain(), &bad).unwrap();
    net.send(0, &VirtioNetHdr::plain(), &f.build(b"complete;"))
        .unwrap();
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"complete;", "a wrong checksum was accepted");
}

/// Sets up routing so that a frame the guest sends to 10.0.0.3 is
/// forwarded by the namespace's kernel back out of the tap, to the guest.
fn hairpin(r: &Rig) -> Mac {
    r.ns.ip(&["addr", "add", "10.0.0.2/24", "dev", TAP])
        .unwrap();
    r.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    r.ns.ip(&[
        "neigh",
        "add",
        "10.0.0.3",
        "lladdr",
        GUEST_MAC_ARG,
        "dev",
        TAP,
        "nud",
        "permanent",
    ])
    .unwrap();
    r.ns.mac(TAP).unwrap()
}

/// The next UDP frame on the tap that carries `payload`; panics with
/// `what` if none comes within [`T`].
fn udp_on_tap(r: &Rig, payload: &[u8], what: &str) -> Vec<u8> {
    r.pkt
        .recv_matching(T, |b| parse_udp(b).is_some_and(|v| v.payload == payload))
        .unwrap()
        .expect(what)
}

fn is_tcp(f: &[u8]) -> bool {
    f.len() > TCP_HDRS && f[12..14] == [8, 0] && f[23] == 6
}

/// A TSO frame (mss 1448) of a 4000-byte TCP payload from the guest
/// (10.0.0.1) to 10.0.0.3 at `dst_mac`: its header, the frame, the payload.
fn tso_frame_to(dst_mac: Mac) -> (VirtioNetHdr, Vec<u8>, Vec<u8>) {
    let payload = vu_driver::net::frame::pattern(4000, 9);
    let (hdr, frame) = tcp_frame(
        GUEST_MAC,
        dst_mac,
        [10, 0, 0, 1],
        [10, 0, 0, 3],
        &payload,
        1448,
    );
    (hdr, frame, payload)
}

/// Sends a 4000-byte TSO frame from the guest to 10.0.0.3, which the
/// namespace forwards back; returns the frames the driver receives until
/// the whole payload is back.
fn tso_round_trip(opts: &NetOptions) -> (Vec<(VirtioNetHdr, Vec<u8>)>, Vec<u8>) {
    let r = rig(&[]);
    let mut net = r.connect(opts);
    assert!(net.has_feature(VIRTIO_NET_F_HOST_TSO4));
    let tap_mac = hairpin(&r);
    let (hdr, frame, payload) = tso_frame_to(tap_mac);
    net.send(0, &hdr, &frame).unwrap();
    // The AF_PACKET socket sees the frame as the tap delivered it: whole.
    let got = r
        .pkt
        .recv_matching(T, |b| is_tcp(b) && b[6..12] == GUEST_MAC)
        .unwrap()
        .expect("the TSO frame on the tap");
    assert!(got == frame, "TSO frame changed on TX");
    let mut back = 0;
    let frames = driver_until(&mut net, 0, T, |f| {
        if is_tcp(f) {
            back += f.len() - TCP_HDRS;
        }
        back >= payload.len()
    });
    let log = r.daemon.log_contents();
    assert!(!log.contains("writing a frame"), "the tap refused:\n{log}");
    (
        frames.into_iter().filter(|(_, f)| is_tcp(f)).collect(),
        payload,
    )
}

#[test]
fn a_tso_frame_is_segmented_by_the_kernel() {
    // The guest takes no TSO: the kernel must cut the frame to the MSS.
    let opts = NetOptions {
        feature_mask: NET_DRIVER_FEATURES
            & !(bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6)),
        ..NetOptions::default()
    };
    let (frames, payload) = tso_round_trip(&opts);
    assert_eq!(frames.len(), 3, "4000 bytes in 1448-byte segments");
    let mut data = Vec::new();
    for (hdr, f) in &frames {
        assert_eq!(hdr.gso_type, 0, "{hdr:?}");
        assert!(f.len() <= TCP_HDRS + 1448, "{}-byte segment", f.len());
        data.extend_from_slice(&f[TCP_HDRS..]);
    }
    assert!(data == payload, "segments do not add up to the payload");
}

#[test]
fn a_tso_frame_reaches_a_tso_guest_whole() {
    let (frames, payload) = tso_round_trip(&NetOptions::default());
    assert_eq!(frames.len(), 1, "one GSO frame");
    let (hdr, f) = &frames[0];
    assert_eq!(hdr.gso_type, 1, "GSO_TCPV4: {hdr:?}");
    assert_eq!(hdr.gso_size, 1448, "{hdr:?}");
    assert!(f[TCP_HDRS..] == payload[..]);
}

#[test]
fn a_tso_frame_without_host_tso4_is_dropped() {
    let r = rig(&[]);
    let mut net = connect_without(&r, VIRTIO_NET_F_HOST_TSO4);
    let (hdr, frame, _) = tso_frame_to(HOST_MAC);
    net.send_raw(0, &chain_bytes(&hdr, &frame)).unwrap();
    let tag = unique_tag("after-tso");
    net.send(0, &VirtioNetHdr::plain(), &to_host(&tag, 100))
        .unwrap();
    let before = tap_frames_before(&r.pkt, &tag);
    assert!(
        before.is_empty(),
        "{} frame(s) reached the tap",
        before.len()
    );
}

/// Injects `n` UDP flows from the host, each its own addresses and ports
/// (so the kernel hashes them apart), flow `i` carrying `flow-i;`.
fn inject_flows(r: &Rig, n: u16) {
    for i in 0..n {
        let f = UdpFrame {
            src_mac: HOST_MAC,
            dst_mac: GUEST_MAC,
            src_ip: [10, 0, 1, i as u8],
            src_port: 20000 + 7 * i,
            dst_port: 6000 + i,
            ..UdpFrame::default()
        };
        r.inject(&f.build(format!("flow-{i};").as_bytes()));
    }
}

/// The flow number of a frame `inject_flows` sent; `None` for any other.
fn flow_of(frame: &[u8]) -> Option<usize> {
    let v = parse_udp(frame)?;
    std::str::from_utf8(v.payload)
        .ok()?
        .strip_prefix("flow-")?
        .strip_suffix(';')?
        .parse()
        .ok()
}

#[test]
fn two_queue_pairs() {
    let mut r = rig_with(true, &["--num-queue-pairs", "2"]);
    let mut net = r.connect(&NetOptions {
        pairs: 2,
        ..NetOptions::default()
    });
    assert!(net.has_feature(VIRTIO_NET_F_MQ));
    assert_eq!(net.ctrl_mq_set_pairs(3).unwrap(), ERR);
    assert_eq!(net.ctrl_mq_set_pairs(0).unwrap(), ERR);
    assert_eq!(net.ctrl_mq_set_pairs(2).unwrap(), OK);
    for pair in 0..2 {
        assert_tx(&mut net, &r.pkt, pair, &unique_tag(&format!("pair{pair}")));
    }
    // Many flows from the host: the kernel spreads them over both queues.
    const FLOWS: u16 = 64;
    inject_flows(&r, FLOWS);
    let mut per_pair = [0u32; 2];
    let mut seen = vec![false; usize::from(FLOWS)];
    let deadline = Instant::now() + T;
    while seen.iter().any(|s| !s) && Instant::now() < deadline {
        for pair in 0..2u16 {
            let f = match net.recv(pair, Duration::from_millis(20)) {
                Ok((_, f)) => f,
                Err(e) if e.is_timeout() => continue,
                Err(e) => panic!("RX on pair {pair}: {e}"),
            };
            let Some(i) = flow_of(&f) else { continue };
            assert!(!seen[i], "flow {i} twice");
            seen[i] = true;
            per_pair[usize::from(pair)] += 1;
        }
    }
    assert_eq!(
        per_pair.iter().sum::<u32>(),
        u32::from(FLOWS),
        "flows received per pair: {per_pair:?}"
    );
    assert!(per_pair.iter().all(|&n| n > 0), "not spread: {per_pair:?}");
    // Back to one pair: everything arrives on pair 0.
    assert_eq!(net.ctrl_mq_set_pairs(1).unwrap(), OK);
    r.assert_serves(&mut net, 0);
}

/// QEMU with a 1-vCPU guest sets up both pairs but enables only pair 0
/// (it runs the control queue itself, so VQ_PAIRS_SET never reaches the
/// daemon). The kernel must then steer every frame to tap queue 0: this
/// host kernel spreads replies over the attached queues by hash, whatever
/// queue the request came from, and a frame put on the queue of a pair
/// nobody reads was lost (the first echo reply of a guest's ping).
#[test]
fn frames_all_reach_the_one_enabled_pair_of_two() {
    let r = rig_with(true, &["--num-queue-pairs", "2"]);
    let mut net = r.connect(&NetOptions {
        pairs: 2,
        enabled_pairs: Some(1),
        ..NetOptions::default()
    });
    assert_tx(&mut net, &r.pkt, 0, &unique_tag("pair0"));
    // Many flows from the host: with both tap queues attached about half
    // of them would be steered to queue 1.
    const FLOWS: u16 = 64;
    inject_flows(&r, FLOWS);
    let mut seen = vec![false; usize::from(FLOWS)];
    while seen.iter().any(|s| !s) {
        let f = match net.recv(0, T) {
            Ok((_, f)) => f,
            Err(e) => panic!(
                "RX on pair 0: {e}; flows never received: {:?}",
                (0..FLOWS)
                    .filter(|&i| !seen[usize::from(i)])
                    .collect::<Vec<_>>()
            ),
        };
        let Some(i) = flow_of(&f) else { continue };
        assert!(!seen[i], "flow {i} twice");
        seen[i] = true;
    }
    // Nothing reached the disabled pair's ring.
    assert!(
        net.try_recv(1).unwrap().is_none(),
        "a frame on the disabled pair"
    );
}

#[test]
fn two_pairs_on_a_single_queue_tap_are_refused() {
    let ns = namespace(false);
    let dir = TempDir::new("vnd").unwrap();
    let sock = dir.join("net.sock");
    let mut cmd =
        vhost_net_daemon_command(&ns, &sock, &["--tap", TAP, "--num-queue-pairs", "2"]).unwrap();
    let done = run_bounded(&mut cmd, T).unwrap();
    let line = done
        .refusal(&[1], &[TAP, "multi_queue"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!sock.exists(), "socket created before refusing: {line}");
}

#[test]
fn rx_filter_follows_the_control_queue() {
    let r = rig(&[]);
    let mut net = r.client();
    assert!(net.has_feature(VIRTIO_NET_F_CTRL_RX));
    let other: Mac = [0x02, 0, 0, 0, 0, 0x99];
    let multicast: Mac = [0x01, 0, 0x5e, 0, 0, 0xfb];
    let send = |dst: Mac, what: &str| {
        let tag = unique_tag(what);
        r.inject(&tagged(HOST_MAC, dst, &tag, 100));
        tag
    };
    // Promiscuous at first.
    let t = send(other, "other");
    driver_expect(&mut net, 0, &t);

    assert_eq!(net.ctrl_rx_promisc(false).unwrap(), OK);
    send(other, "other");
    send(multicast, "multicast");
    let mine = send(GUEST_MAC, "mine");
    let before = driver_frames_before(&mut net, 0, &mine);
    assert!(before.is_empty(), "filtered frames arrived: {before:?}");
    let t = send([0xff; 6], "broadcast");
    driver_expect(&mut net, 0, &t);

    assert_eq!(net.ctrl_rx_allmulti(true).unwrap(), OK);
    let t = send(multicast, "multicast");
    driver_expect(&mut net, 0, &t);
    send(other, "other");
    let mine = send(GUEST_MAC, "mine");
    assert!(driver_frames_before(&mut net, 0, &mine).is_empty());

    assert_eq!(net.ctrl_rx_allmulti(false).unwrap(), OK);
    send(multicast, "multicast");
    let mine = send(GUEST_MAC, "mine");
    assert!(driver_frames_before(&mut net, 0, &mine).is_empty());

    assert_eq!(net.ctrl_rx_promisc(true).unwrap(), OK);
    let t = send(other, "other");
    driver_expect(&mut net, 0, &t);
}

#[test]
fn a_second_driver_after_a_disconnect() {
    let mut r = rig(&[]);
    let mut net = r.client();
    r.assert_serves(&mut net, 0);
    drop(net);
    // Frames for a guest that is gone.
    for _ in 0..100 {
        r.inject(&to_guest(&unique_tag("orphan"), 200));
    }
    r.assert_alive();
    let mut net = r.client();
    r.assert_serves(&mut net, 0);
    // The new driver starts with a promiscuous filter again.
    assert_eq!(net.ctrl_rx_promisc(false).unwrap(), OK);
    drop(net);
    let mut net = r.client();
    let tag = unique_tag("other");
    r.inject(&tagged(HOST_MAC, [2, 0, 0, 0, 0, 0x99], &tag, 100));
    driver_expect(&mut net, 0, &tag);
    r.assert_serves(&mut net, 0);
}

// ---- QEMU 7.2's early SET_VRING_ENABLE, in raw vhost-user messages ----

const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;

fn vu_send(s: &mut UnixStream, request: u32, flags: u32, body: &[u8]) {
    let mut m = Vec::with_capacity(12 + body.len());
    for w in [request, flags, body.len() as u32] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m.extend_from_slice(body);
    s.write_all(&m).unwrap();
}

/// The next reply: (request, flags, body).
fn vu_recv(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 12];
    s.read_exact(&mut h).expect("a reply");
    let w = |i: usize| u32::from_le_bytes(h[4 * i..4 * i + 4].try_into().unwrap());
    let mut body = vec![0u8; w(2) as usize];
    s.read_exact(&mut body).unwrap();
    (w(0), w(1), body)
}

fn vu_get_u64(s: &mut UnixStream, request: u32) -> u64 {
    vu_send(s, request, VERSION, &[]);
    let (req, flags, body) = vu_recv(s);
    assert_eq!((req, flags, body.len()), (request, VERSION | REPLY, 8));
    u64::from_le_bytes(body.try_into().unwrap())
}

fn vring_enable(index: u32, on: bool) -> Vec<u8> {
    [index.to_le_bytes(), u32::from(on).to_le_bytes()].concat()
}

#[test]
fn set_vring_enable_before_set_features_is_served() {
    let mut r = rig(&[]);
    let mut s = connect_socket(r.socket(), T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    // What QEMU 7.2 sends when the guest writes its feature bits, before
    // vhost starts: GET_FEATURES, protocol features, then SET_VRING_ENABLE.
    let features = vu_get_u64(&mut s, GET_FEATURES);
    assert_ne!(features & (1 << 30), 0, "PROTOCOL_FEATURES offered");
    let proto = vu_get_u64(&mut s, GET_PROTOCOL_FEATURES);
    let reply_ack = 1 << 3;
    assert_ne!(proto & reply_ack, 0, "REPLY_ACK offered");
    let wanted = proto & (1 | reply_ack | (1 << 9)); // MQ, REPLY_ACK, CONFIG
    vu_send(
        &mut s,
        SET_PROTOCOL_FEATURES,
        VERSION,
        &wanted.to_le_bytes(),
    );
    for q in 0..3 {
        vu_send(
            &mut s,
            SET_VRING_ENABLE,
            VERSION | NEED_REPLY,
            &vring_enable(q, true),
        );
        let (req, flags, body) = vu_recv(&mut s);
        assert_eq!(
            (req, flags, body),
            (
                SET_VRING_ENABLE,
                VERSION | REPLY,
                0u64.to_le_bytes().to_vec()
            ),
            "ack for the early enable of ring {q}"
        );
    }
    // Without NEED_REPLY: no reply, and the connection lives on (the next
    // reply is GET_FEATURES', not a stray ack).
    vu_send(&mut s, SET_VRING_ENABLE, VERSION, &vring_enable(1, true));
    assert_eq!(vu_get_u64(&mut s, GET_FEATURES), features);
    r.assert_alive();

    // Then vhost starts on the same connection, and frames cross.
    s.set_read_timeout(None).unwrap();
    let socket = r.socket().to_path_buf();
    let mut net = NetClient::connect_stream(s, &socket, &NetOptions::default()).unwrap();
    r.assert_serves(&mut net, 0);
}
