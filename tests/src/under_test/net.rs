//! `vhost-net-daemon` under test: a network namespace of its own (the
//! daemon runs in it through `ip netns exec`, which execs it under the
//! same pid) with a multi-queue tap served as two queue pairs; a round is
//! a frame each way between the driver and the tap's host side.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use super::{Contrib, DaemonUnderTest, Env, Frontend};
use crate::device::VuDevice;
use crate::fixture::TempDir;
use crate::net::frame::Mac;
use crate::net::{NetClient, NetOptions, VirtioNetHdr};
use crate::netns::NetNs;
use crate::process::without_systemd_env;
use crate::tap::{link, recv_payload, udp, HostSide};

/// `vhost-net-daemon`.
pub static NET: DaemonUnderTest = DaemonUnderTest {
    name: "vhost-net-daemon",
    capabilities: "{\"type\":\"net\",\"features\":[]}\n",
    ready_line: None,
    watchdog_args: &[],
    contrib: Contrib {
        kind: "net",
        installed_binary: "/usr/libexec/vhost-net-daemon",
        instance: "tap-vm0",
        example_conf: "systemd/vhost-net-daemon-example.conf",
        // A net daemon keeps the host's network and CAP_NET_ADMIN.
        max_exposure: 25,
        read_write_paths: false,
        watchdog: true,
    },
    env: |test| Box::new(NetEnv::new(test)),
};

/// The tap in each test's namespace.
const TAP: &str = "vnd-dut";
/// The guest's MAC address (`--mac`).
const MAC: &str = "02:00:00:00:00:31";
/// [`MAC`] as bytes.
const GUEST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x31];
/// Queue pairs served.
const PAIRS: u16 = 2;
/// `VIRTIO_NET_OK`.
const OK: u8 = 0;

/// A namespace with a multi-queue tap, and a socket path in a temporary
/// directory.
struct NetEnv {
    ns: NetNs,
    dir: TempDir,
    socket: PathBuf,
}

impl NetEnv {
    fn new(test: &str) -> Self {
        let ns = NetNs::new("vnd-dut").unwrap();
        ns.add_tap(TAP, true, None).unwrap();
        let dir = TempDir::new(&format!("vutest-net-{test}")).unwrap();
        let socket = dir.join("net.sock");
        NetEnv { ns, dir, socket }
    }

    /// A driver of `pairs` pairs with small rings (64 entries), so that
    /// many connections stay cheap.
    fn client(socket: &Path, pairs: u16) -> NetClient {
        let mut opts = NetOptions {
            pairs,
            ..NetOptions::default()
        };
        opts.device.queue_size = 64;
        NetClient::connect(socket, &opts)
            .unwrap_or_else(|e| panic!("connecting to {}: {e:?}", socket.display()))
    }
}

impl Env for NetEnv {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    fn args(&self) -> Vec<OsString> {
        let pairs = PAIRS.to_string();
        ["--tap", TAP, "--mac", MAC, "--num-queue-pairs", &pairs]
            .map(OsString::from)
            .to_vec()
    }

    fn wrap(&self, program: &Path) -> Command {
        let mut cmd = self.ns.command(program);
        without_systemd_env(&mut cmd);
        cmd
    }

    fn connect(&self, socket: &Path) -> Box<dyn Frontend + '_> {
        Box::new(NetFrontend {
            env: self,
            net: Self::client(socket, PAIRS),
        })
    }

    fn keep_busy(
        &self,
        socket: &Path,
        streaming: &AtomicBool,
        stop: &AtomicBool,
    ) -> Box<dyn FnOnce() + Send> {
        let mut net = Self::client(socket, PAIRS);
        let host = HostSide::open(&self.ns, TAP);
        host.assert_exchange(&mut net, 0, GUEST_MAC, "before the flood");
        let sent = AtomicU64::new(0);
        let injected = AtomicU64::new(0);
        let host_mac = [0x02, 0, 0, 0, 0, 0xfe];
        let tx_frame = udp(GUEST_MAC, host_mac, &[0x5a; 1000]);
        let rx_frame = udp(host_mac, GUEST_MAC, &[0xa5; 1000]);
        let hdr = VirtioNetHdr::plain();
        // Frames both ways: the driver sending on every pair, a host
        // thread writing to the guest's MAC on the tap, until told to stop
        // or the daemon is gone.
        thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    if host.socket().send(&rx_frame).is_ok() {
                        injected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            'driver: while !stop.load(Ordering::Acquire) {
                for pair in 0..PAIRS {
                    let batch = [(hdr, &tx_frame[..]); 32];
                    match net.send_batch(pair, &batch) {
                        Ok(n) => sent.fetch_add(n as u64, Ordering::Relaxed),
                        Err(_) => break 'driver,
                    };
                    let _ = net.tx_reap(pair);
                    let _ = net.recv_count(pair, Duration::from_millis(1));
                }
                if sent.load(Ordering::Relaxed) >= 1000 && injected.load(Ordering::Relaxed) >= 1000
                {
                    streaming.store(true, Ordering::Release);
                }
            }
        });
        let (sent, injected) = (sent.into_inner(), injected.into_inner());
        Box::new(move || eprintln!("{sent} frames sent, {injected} injected"))
    }

    fn assert_left_alone(&self) {
        assert!(
            link(&self.ns, TAP).is_some(),
            "the daemon removed a tap it did not create"
        );
    }

    fn configure_unit(&self, vars: &mut BTreeMap<String, String>) {
        assert!(
            vars.contains_key("VHOST_NET_TAP"),
            "the example sets VHOST_NET_TAP"
        );
        // The example's tap, made as its comment says, under this test's name.
        vars.insert("VHOST_NET_TAP".into(), TAP.into());
    }

    fn assert_unit_options(&self, socket: &Path, vars: &BTreeMap<String, String>) {
        let opts = &vars["VHOST_NET_OPTS"];
        let value = |name: &str| opts.split_whitespace().skip_while(|w| *w != name).nth(1);
        let pairs: u16 = value("--num-queue-pairs").map_or(1, |n| n.parse().unwrap());
        let mut net = Self::client(socket, pairs);
        let cfg = *net.config();
        assert_eq!(cfg.max_virtqueue_pairs.unwrap_or(1), pairs, "{opts}");
        let mac = cfg.mac.expect("VIRTIO_NET_F_MAC");
        if let Some(want) = value("--mac") {
            let want: Vec<u8> = want
                .split(':')
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect();
            assert_eq!(mac.to_vec(), want, "{opts}");
        }
        let host = HostSide::open(&self.ns, TAP);
        for pair in 0..pairs {
            host.assert_exchange(&mut net, pair, mac, &format!("unit pair {pair}"));
        }
    }
}

/// A connected `NetClient` with both pairs.
struct NetFrontend<'a> {
    env: &'a NetEnv,
    net: NetClient,
}

impl Frontend for NetFrontend<'_> {
    fn device(&mut self) -> &mut VuDevice {
        self.net.device()
    }

    fn serve(&mut self, round: u64) {
        let pair = (round % u64::from(PAIRS)) as u16;
        let host = HostSide::open(&self.env.ns, TAP);
        host.assert_exchange(&mut self.net, pair, GUEST_MAC, &format!("round {round}"));
    }

    fn exercise(&mut self, round: u64, after: &mut dyn FnMut(&str)) {
        let host = HostSide::open(&self.env.ns, TAP);
        let net = &mut self.net;
        for pair in 0..PAIRS {
            host.assert_exchange(net, pair, GUEST_MAC, &format!("round {round} pair {pair}"));
        }
        after("TX and RX");
        // One pair, then two again: tap queues detach and attach.
        assert_eq!(net.ctrl_mq_set_pairs(1).unwrap(), OK, "MQ_VQ_PAIRS_SET 1");
        after("MQ_VQ_PAIRS_SET 1");
        host.assert_exchange(net, 0, GUEST_MAC, &format!("round {round}, one pair"));
        assert_eq!(net.ctrl_mq_set_pairs(2).unwrap(), OK, "MQ_VQ_PAIRS_SET 2");
        after("MQ_VQ_PAIRS_SET 2");
        host.assert_exchange(net, 1, GUEST_MAC, &format!("round {round}, two pairs"));
        // Promiscuous: a frame for another MAC reaches the guest too.
        assert_eq!(net.ctrl_rx_promisc(true).unwrap(), OK, "RX_PROMISC on");
        after("RX_PROMISC on");
        let other = [0x02, 0, 0, 0, 0, 0x77];
        let payload = format!("promiscuous {round}");
        host.inject(&udp([0x02, 0, 0, 0, 0, 0xfe], other, payload.as_bytes()));
        assert!(
            recv_payload(net, payload.as_bytes(), Duration::from_secs(5)).is_some(),
            "round {round}: in promiscuous mode a frame to another MAC did not arrive"
        );
        assert_eq!(net.ctrl_rx_promisc(false).unwrap(), OK, "RX_PROMISC off");
        assert_eq!(net.ctrl_rx_allmulti(true).unwrap(), OK, "RX_ALLMULTI on");
        after("RX_PROMISC off, RX_ALLMULTI on");
        host.assert_exchange(net, 0, GUEST_MAC, &format!("round {round}, RX modes"));
        after("RX modes");
    }

    fn leave_in_flight(&mut self, round: u64) {
        let frame = udp(
            GUEST_MAC,
            [0x02, 0, 0, 0, 0, 0xfe],
            format!("left in flight {round}").as_bytes(),
        );
        let batch = [(VirtioNetHdr::plain(), &frame[..]); 32];
        for pair in 0..PAIRS {
            self.net.send_batch(pair, &batch).unwrap();
        }
    }
}
