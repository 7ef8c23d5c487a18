//! `vhost-net-daemon` driven by the userspace virtio-net driver, with its
//! tap in a network namespace the test creates: frames cross between the
//! driver's rings and the tap's host side (an AF_PACKET socket).

use std::time::Duration;

use vu_driver::fixture::TempDir;
use vu_driver::net::frame::{parse_udp, UdpFrame};
use vu_driver::net::{NetClient, NetOptions, VirtioNetHdr};
use vu_driver::netns::NetNs;
use vu_driver::ours::vhost_net_daemon;

const WAIT: Duration = Duration::from_secs(5);
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

#[test]
fn a_frame_crosses_each_way() {
    let ns = NetNs::new("vnd").unwrap();
    ns.add_tap("tap0", false, None).unwrap();
    let dir = TempDir::new("vnd").unwrap();
    let sock = dir.join("net.sock");
    let _d =
        vhost_net_daemon(&ns, &sock, &["--tap", "tap0", "--mac", "02:00:00:00:00:10"]).unwrap();
    let mut net = NetClient::connect(&sock, &NetOptions::default()).unwrap();
    let pkt = ns.packet_socket("tap0").unwrap();

    // TX: the driver's frame appears on the tap.
    let f = UdpFrame {
        src_mac: GUEST_MAC,
        ..UdpFrame::default()
    };
    let frame = f.build(b"to the host");
    net.send(0, &VirtioNetHdr::plain(), &frame).unwrap();
    let got = pkt
        .recv_matching(WAIT, |b| {
            parse_udp(b).is_some_and(|v| v.payload == b"to the host")
        })
        .unwrap()
        .expect("frame on the tap");
    assert_eq!(got, frame);

    // RX: a frame written on the tap's host side reaches the driver.
    let back = UdpFrame {
        dst_mac: GUEST_MAC,
        ..UdpFrame::default()
    }
    .build(b"to the guest");
    pkt.send(&back).unwrap();
    let (hdr, got) = net.recv(0, WAIT).unwrap();
    assert_eq!(got, back);
    assert_eq!(hdr.num_buffers, 1);
}
