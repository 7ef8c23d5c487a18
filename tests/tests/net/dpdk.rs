//! The virtio-net driver against a backend nobody here wrote: DPDK's
//! `dpdk-testpmd` with its vhost-user PMD in `macswap` mode, which sends
//! every frame back on the queue pair it came from with the MACs swapped.
//!
//! Skips (with the reason printed) when `dpdk-testpmd` is not installed;
//! Debian 12: `apt-get install --no-install-recommends dpdk-dev`.

use std::path::PathBuf;
use std::time::Duration;

use virtio_bindings::virtio_net::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MRG_RXBUF};
use vu_driver::net::frame::{self, UdpFrame};
use vu_driver::net::testpmd::{find_testpmd, TestPmd, TestPmdOptions};
use vu_driver::net::{NetClient, NetOptions, RxLayout, TxLayout, VirtioNetHdr};

const WAIT: Duration = Duration::from_secs(10);

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vu-net-dpdk-{}-{name}.sock", std::process::id()))
}

/// testpmd with `pairs` queue pairs and a driver connected to it. A missing
/// testpmd fails the test: scripts/setup.sh installs it.
fn start(name: &str, pairs: u16, tweak: impl FnOnce(&mut NetOptions)) -> (TestPmd, NetClient) {
    if find_testpmd().is_none() {
        panic!("dpdk-testpmd not on PATH: run scripts/setup.sh (Debian package dpdk-dev)");
    }
    let pmd = TestPmd::spawn(&TestPmdOptions::new(&socket_path(name), pairs)).unwrap();
    let mut opts = TestPmd::net_options(pairs);
    tweak(&mut opts);
    let net = NetClient::connect(pmd.socket(), &opts).unwrap();
    (pmd, net)
}

/// Sends `frame` on `pair` and checks that exactly the MAC-swapped frame comes back.
fn round_trip(net: &mut NetClient, pair: u16, frame: &[u8]) {
    net.send(pair, &VirtioNetHdr::plain(), frame).unwrap();
    let (hdr, got) = net.recv(pair, WAIT).unwrap();
    let mut want = frame.to_vec();
    frame::swap_macs(&mut want);
    assert_eq!(got.len(), want.len(), "pair {pair}: length");
    assert!(
        got == want,
        "pair {pair}: frame of {} bytes differs",
        frame.len()
    );
    assert_eq!(hdr.gso_type, 0);
    if net.has_feature(VIRTIO_NET_F_MRG_RXBUF) {
        assert!(hdr.num_buffers >= 1);
    }
    let v = frame::parse_udp(&got).unwrap();
    let sent = frame::parse_udp(frame).unwrap();
    assert_eq!((v.dst_mac, v.src_mac), (sent.src_mac, sent.dst_mac));
    assert_eq!(v.payload, sent.payload);
}

#[test]
fn macswap_returns_64_and_1500_byte_frames() {
    let (_pmd, mut net) = start("one", 1, |_| {});
    assert!(
        net.has_feature(VIRTIO_NET_F_MRG_RXBUF),
        "DPDK offers MRG_RXBUF"
    );
    assert!(!net.has_feature(VIRTIO_NET_F_CTRL_VQ));
    let b = UdpFrame::default();
    for (i, len) in [64usize, 1500, 60, 1514, 64, 1500].into_iter().enumerate() {
        round_trip(&mut net, 0, &b.build_len(len, i as u8));
    }
    net.tx_flush(0, WAIT).unwrap();
    assert_eq!(net.tx_ring(0).unwrap().in_flight(), 0);
}

#[test]
fn macswap_on_two_queue_pairs() {
    let (_pmd, mut net) = start("two", 2, |_| {});
    assert_eq!(net.pairs(), 2);
    for pair in [0u16, 1, 1, 0] {
        let b = UdpFrame {
            src_port: 1000 + pair,
            ..UdpFrame::default()
        };
        round_trip(&mut net, pair, &b.build_len(64, pair as u8));
        round_trip(&mut net, pair, &b.build_len(1500, 0x80 | pair as u8));
    }
    // Nothing strayed to the other pair.
    assert!(net.try_recv(0).unwrap().is_none());
    assert!(net.try_recv(1).unwrap().is_none());
}

#[test]
fn small_merged_rx_buffers_and_split_tx_header() {
    let (_pmd, mut net) = start("small", 1, |o| {
        o.rx_layout = Some(RxLayout {
            buf_len: 256,
            descs_per_buf: 1,
            mergeable: true,
        });
        o.tx_layout = TxLayout::TwoDescs;
    });
    let b = UdpFrame::default();
    for len in [64usize, 300, 1500] {
        let f = b.build_len(len, len as u8);
        net.send(0, &VirtioNetHdr::plain(), &f).unwrap();
        let (hdr, got) = net.recv(0, WAIT).unwrap();
        let mut want = f.clone();
        frame::swap_macs(&mut want);
        assert!(got == want, "frame of {len} bytes differs");
        // 12 + len bytes in 256-byte buffers.
        assert_eq!(usize::from(hdr.num_buffers), (12 + len).div_ceil(256));
    }
}

#[test]
fn batched_send_and_counted_receive() {
    let (_pmd, mut net) = start("batch", 1, |_| {});
    let f = UdpFrame::default().build_len(64, 1);
    const N: u64 = 2000;
    net.tx_prefill(0, &VirtioNetHdr::plain(), &f).unwrap();
    // At most WINDOW frames in flight, fewer than the RX ring holds, so
    // testpmd never finds the ring full and drops (it does under load).
    const WINDOW: u64 = 64;
    let (mut sent, mut got) = (0u64, vu_driver::net::RxCount::default());
    let mut idle_rounds = 0;
    while got.frames < N {
        let room = WINDOW.saturating_sub(sent - got.frames).min(N - sent);
        if room > 0 {
            sent += net.send_prefilled(0, room as usize).unwrap() as u64;
        }
        let c = net.recv_count(0, WAIT).unwrap();
        idle_rounds = if c.frames == 0 { idle_rounds + 1 } else { 0 };
        assert!(
            idle_rounds < 5,
            "stalled: sent {sent}, received {got:?}, nothing for 5 waits"
        );
        got.frames += c.frames;
        got.bytes += c.bytes;
    }
    assert_eq!(got.frames, N, "every frame came back once");
    assert_eq!(got.bytes, N * 64);
}
