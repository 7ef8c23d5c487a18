//! vhost-net-daemon serves under its seccomp allow-list: the filter is
//! really installed (by default, in kill mode) and the whole data path runs
//! under it: TX and RX on every pair, the control queue (queue pairs,
//! RX modes, which attach and detach tap queues), and new connections,
//! for each of which the relay (common/src/relay.rs) makes a unix socket.

use std::time::Duration;

use vu_driver::fixture::{poll_until, Daemon, TempDir};
use vu_driver::lifecycle::assert_no_panic;
use vu_driver::net::{NetClient, NetOptions};
use vu_driver::netns::NetNs;
use vu_driver::ours::vhost_net_daemon;
use vu_driver::process::seccomp_mode;
use vu_driver::tap::{recv_payload, udp, HostSide};

const TAP: &str = "vnd-sec";
const MAC: &str = "02:00:00:00:00:41";
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x41];
/// `VIRTIO_NET_OK`.
const OK: u8 = 0;

/// Fails, with the log, if the daemon is gone (a filter kill is SIGSYS).
fn assert_alive(d: &mut Daemon, after: &str) {
    let status = d.try_wait().unwrap();
    assert!(
        status.is_none(),
        "the daemon died under its filter after {after} ({status:?}):\n{}",
        d.log_contents()
    );
}

#[test]
fn default_daemon_serves_frames_control_commands_and_reconnects_under_a_filter() {
    let ns = NetNs::new("vnd-sec").unwrap();
    ns.add_tap(TAP, true, None).unwrap();
    let dir = TempDir::new("net-seccomp").unwrap();
    let args = ["--tap", TAP, "--mac", MAC, "--num-queue-pairs", "2"];
    let mut d = vhost_net_daemon(&ns, &dir.join("net.sock"), &args).unwrap();
    // The socket exists (ready) a moment before the filter goes on.
    let pid = d.pid();
    assert!(
        poll_until(Duration::from_secs(5), || seccomp_mode(pid).unwrap() == 2),
        "no seccomp filter installed by default"
    );
    let host = HostSide::open(&ns, TAP);
    let opts = NetOptions {
        pairs: 2,
        ..NetOptions::default()
    };

    for round in 0..3 {
        let mut net = NetClient::connect(d.socket(), &opts).unwrap();
        assert_alive(&mut d, &format!("connection {round}"));
        for pair in 0..2 {
            host.assert_exchange(
                &mut net,
                pair,
                GUEST_MAC,
                &format!("round {round} pair {pair}"),
            );
        }
        assert_alive(&mut d, "TX and RX");

        // One pair, then two again: tap queues detach and attach.
        assert_eq!(net.ctrl_mq_set_pairs(1).unwrap(), OK, "MQ_VQ_PAIRS_SET 1");
        assert_alive(&mut d, "MQ_VQ_PAIRS_SET 1");
        host.assert_exchange(&mut net, 0, GUEST_MAC, &format!("round {round}, one pair"));
        assert_eq!(net.ctrl_mq_set_pairs(2).unwrap(), OK, "MQ_VQ_PAIRS_SET 2");
        assert_alive(&mut d, "MQ_VQ_PAIRS_SET 2");
        host.assert_exchange(&mut net, 1, GUEST_MAC, &format!("round {round}, two pairs"));

        // Promiscuous: a frame for another MAC reaches the guest too.
        assert_eq!(net.ctrl_rx_promisc(true).unwrap(), OK, "RX_PROMISC on");
        assert_alive(&mut d, "RX_PROMISC on");
        let other = [0x02, 0, 0, 0, 0, 0x77];
        let payload = format!("promiscuous {round}");
        host.inject(&udp([0x02, 0, 0, 0, 0, 0xfe], other, payload.as_bytes()));
        assert!(
            recv_payload(&mut net, payload.as_bytes(), Duration::from_secs(5)).is_some(),
            "round {round}: in promiscuous mode a frame to another MAC did not arrive"
        );
        assert_eq!(net.ctrl_rx_promisc(false).unwrap(), OK, "RX_PROMISC off");
        assert_eq!(net.ctrl_rx_allmulti(true).unwrap(), OK, "RX_ALLMULTI on");
        assert_alive(&mut d, "RX_PROMISC off, RX_ALLMULTI on");
        host.assert_exchange(
            &mut net,
            0,
            GUEST_MAC,
            &format!("round {round}, after RX modes"),
        );
        if round == 1 {
            // Like QEMU: stop the rings before disconnecting.
            net.device().stop_queues().unwrap();
        }
    }
    assert_alive(&mut d, "three connections");
    assert_no_panic(&d);
    let status = d.stop().unwrap();
    assert!(
        status.success(),
        "exit {status} under the filter:\n{}",
        d.log_contents()
    );
}

#[test]
fn seccomp_none_installs_no_filter() {
    let ns = NetNs::new("vnd-sec").unwrap();
    ns.add_tap(TAP, false, None).unwrap();
    let dir = TempDir::new("net-seccomp").unwrap();
    let args = ["--tap", TAP, "--seccomp", "none"];
    let mut d = vhost_net_daemon(&ns, &dir.join("net.sock"), &args).unwrap();
    {
        // Connected and serving: past the point where the filter would go on.
        let mut net = NetClient::connect(d.socket(), &NetOptions::default()).unwrap();
        let mac = net.config().mac.unwrap();
        let host = HostSide::open(&ns, TAP);
        host.assert_exchange(&mut net, 0, mac, "no filter");
    }
    assert_eq!(seccomp_mode(d.pid()).unwrap(), 0);
    assert!(d.stop().unwrap().success());
}
