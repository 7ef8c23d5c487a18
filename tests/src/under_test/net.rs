//! `vhost-net-daemon` under test: a network namespace of its own (the
//! daemon runs in it through `ip netns exec`, which execs it under the
//! same pid) with a multi-queue tap served as two queue pairs; a round is
//! a frame each way between the driver and the tap's host side. A [`Rig`]
//! (a namespace with IPv6 off, a tap and the daemon) is what the net tests
//! and the malformed-ring suite ([`NET_TX`], [`NET_RX`]) start from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use vm_memory::GuestAddress;

use super::rings::{Chain, Ring, RingUnderTest, FILL};
use super::{set_example_var, Busy, Contrib, DaemonUnderTest, Env, Fixture, Rounds};
use crate::device::VuDevice;
use crate::fixture::{poll_until, Daemon, TempDir};
use crate::net::frame::Mac;
use crate::net::tagged::{
    assert_rx, assert_tx, tap_frames_before, to_guest, to_host, unique_tag, GUEST_MAC_ARG, T,
};
use crate::net::{NetClient, NetOptions, VirtioNetHdr};
use crate::netns::{NetNs, PacketSocket};
use crate::ours::vhost_net_daemon;
use crate::tap::{link, recv_payload, udp, HostSide};
use crate::virtqueue::{RawDesc, Used, VirtQueue, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

/// `vhost-net-daemon`.
pub static NET: DaemonUnderTest = DaemonUnderTest {
    name: "vhost-net-daemon",
    capabilities: "{\"type\":\"net\",\"features\":[]}\n",
    // Logged by the process that serves, after its jail is set up: the
    // socket exists before the jail forks, so waiting for it alone let a
    // test measure the supervisor mid-setup.
    ready_line: Some(crate::under_test::LISTENING_LINE),
    watchdog_args: &["--sandbox", "namespace"],
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
    env: |test| Box::new(Fixture::new("net", test, |_| MultiQueueTap::new())),
};

/// The tap in each [`Env`]'s namespace.
const ENV_TAP: &str = "vnd-dut";
/// The guest's MAC address in an [`Env`] (`--mac`).
const ENV_MAC: &str = "02:00:00:00:00:31";
/// [`ENV_MAC`] as bytes.
const ENV_GUEST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x31];
/// Queue pairs an [`Env`]'s daemon serves.
const PAIRS: u16 = 2;
/// `VIRTIO_NET_OK`.
const OK: u8 = 0;

/// A namespace with a multi-queue tap.
#[derive(Debug)]
struct MultiQueueTap {
    ns: NetNs,
}

impl MultiQueueTap {
    fn new() -> Self {
        let ns = NetNs::new("vnd-dut").unwrap();
        ns.add_tap(ENV_TAP, true, None).unwrap();
        MultiQueueTap { ns }
    }
}

/// The environment of [`NET`]: a namespace with a multi-queue tap, and
/// the test's directory.
type NetEnv = Fixture<MultiQueueTap>;

/// A driver of `pairs` pairs with small rings (64 entries), so that many
/// connections stay cheap.
fn client(socket: &Path, pairs: u16) -> NetClient {
    let mut opts = NetOptions {
        pairs,
        ..NetOptions::default()
    };
    opts.device.queue_size = 64;
    NetClient::connect(socket, &opts)
        .unwrap_or_else(|e| panic!("connecting to {}: {e:?}", socket.display()))
}

impl Env for NetEnv {
    fn args(&self) -> Vec<OsString> {
        let pairs = PAIRS.to_string();
        [
            "--tap",
            ENV_TAP,
            "--mac",
            ENV_MAC,
            "--num-queue-pairs",
            &pairs,
        ]
        .map(OsString::from)
        .to_vec()
    }

    fn command_in(&self, program: &Path) -> Command {
        self.served().ns.command(program)
    }

    fn keep_busy(&self, socket: &Path, busy: &Busy) -> Box<dyn FnOnce() + Send> {
        let mut net = client(socket, PAIRS);
        let host = HostSide::open(&self.served().ns, ENV_TAP);
        host.assert_exchange(&mut net, 0, ENV_GUEST_MAC, "before the flood");
        let sent = AtomicU64::new(0);
        let injected = AtomicU64::new(0);
        let host_mac = [0x02, 0, 0, 0, 0, 0xfe];
        let tx_frame = udp(ENV_GUEST_MAC, host_mac, &[0x5a; 1000]);
        let rx_frame = udp(host_mac, ENV_GUEST_MAC, &[0xa5; 1000]);
        let hdr = VirtioNetHdr::plain();
        // Frames both ways: the driver sending on every pair, a host
        // thread writing to the guest's MAC on the tap, until told to stop
        // or the daemon is gone.
        thread::scope(|scope| {
            scope.spawn(|| {
                while !busy.stopping() {
                    if host.socket().send(&rx_frame).is_ok() {
                        injected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            'driver: while !busy.stopping() {
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
                    busy.set_streaming();
                }
            }
        });
        let (sent, injected) = (sent.into_inner(), injected.into_inner());
        Box::new(move || eprintln!("{sent} frames sent, {injected} injected"))
    }

    fn assert_left_alone(&self) {
        assert!(
            link(&self.served().ns, ENV_TAP).is_some(),
            "the daemon removed a tap it did not create"
        );
    }

    fn configure_unit(&self, vars: &mut BTreeMap<String, String>) {
        // The example's tap, made as its comment says, under this test's name.
        set_example_var(vars, "VHOST_NET_TAP", ENV_TAP);
    }

    fn assert_unit_options(&self, socket: &Path, vars: &BTreeMap<String, String>) {
        let opts = &vars["VHOST_NET_OPTS"];
        let value = |name: &str| opts.split_whitespace().skip_while(|w| *w != name).nth(1);
        let pairs: u16 = value("--num-queue-pairs").map_or(1, |n| n.parse().unwrap());
        let mut net = client(socket, pairs);
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
        let host = HostSide::open(&self.served().ns, ENV_TAP);
        for pair in 0..pairs {
            host.assert_exchange(&mut net, pair, mac, &format!("unit pair {pair}"));
        }
    }
}

/// Through a `NetClient` with both pairs.
impl Rounds for MultiQueueTap {
    type Client = NetClient;

    fn client(&self, socket: &Path) -> NetClient {
        client(socket, PAIRS)
    }

    fn device(net: &mut NetClient) -> &mut VuDevice {
        net.device()
    }

    fn serve(&self, net: &mut NetClient, round: u64) {
        let pair = (round % u64::from(PAIRS)) as u16;
        let host = HostSide::open(&self.ns, ENV_TAP);
        host.assert_exchange(net, pair, ENV_GUEST_MAC, &format!("round {round}"));
    }

    fn exercise(&self, net: &mut NetClient, round: u64, after: &mut dyn FnMut(&str)) {
        let host = HostSide::open(&self.ns, ENV_TAP);
        for pair in 0..PAIRS {
            host.assert_exchange(
                net,
                pair,
                ENV_GUEST_MAC,
                &format!("round {round} pair {pair}"),
            );
        }
        after("TX and RX");
        // One pair, then two again: tap queues detach and attach.
        assert_eq!(net.ctrl_mq_set_pairs(1).unwrap(), OK, "MQ_VQ_PAIRS_SET 1");
        after("MQ_VQ_PAIRS_SET 1");
        host.assert_exchange(net, 0, ENV_GUEST_MAC, &format!("round {round}, one pair"));
        assert_eq!(net.ctrl_mq_set_pairs(2).unwrap(), OK, "MQ_VQ_PAIRS_SET 2");
        after("MQ_VQ_PAIRS_SET 2");
        host.assert_exchange(net, 1, ENV_GUEST_MAC, &format!("round {round}, two pairs"));
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
        host.assert_exchange(net, 0, ENV_GUEST_MAC, &format!("round {round}, RX modes"));
        after("RX modes");
    }

    fn leave_in_flight(&self, net: &mut NetClient, round: u64) {
        let frame = udp(
            ENV_GUEST_MAC,
            [0x02, 0, 0, 0, 0, 0xfe],
            format!("left in flight {round}").as_bytes(),
        );
        let batch = [(VirtioNetHdr::plain(), &frame[..]); 32];
        for pair in 0..PAIRS {
            net.send_batch(pair, &batch).unwrap();
        }
    }
}

/// The tap of a [`Rig`]'s namespace.
pub const TAP: &str = "tap0";

/// A namespace with tap [`TAP`], the daemon serving it, and an AF_PACKET
/// socket on the tap's host side. The daemon is stopped (its log printed
/// if the test failed) and the namespace deleted on drop.
pub struct Rig {
    /// The daemon (declared first: stopped before the namespace goes).
    pub daemon: Daemon,
    /// The host side of the tap.
    pub pkt: PacketSocket,
    /// The namespace.
    pub ns: NetNs,
    _dir: TempDir,
}

/// A fresh namespace (IPv6 off, so the kernel sends nothing of its own on
/// the tap) with tap [`TAP`] (`multi_queue` for several pairs).
pub fn namespace(multi_queue: bool) -> NetNs {
    let ns = NetNs::new("vnd").unwrap();
    ns.disable_ipv6().unwrap();
    ns.sysctl("net.ipv4.conf.all.send_redirects", "0").unwrap();
    ns.sysctl("net.ipv4.conf.default.send_redirects", "0")
        .unwrap();
    ns.add_tap(TAP, multi_queue, None).unwrap();
    ns
}

/// A daemon on a single-queue tap: `--tap tap0 --mac GUEST_MAC` and `args`.
pub fn rig(args: &[&str]) -> Rig {
    rig_with(false, args)
}

/// A daemon on a tap made with or without `multi_queue`.
pub fn rig_with(multi_queue: bool, args: &[&str]) -> Rig {
    let ns = namespace(multi_queue);
    let dir = TempDir::new("vnd").unwrap();
    let sock = dir.join("net.sock");
    let mut all = vec!["--tap", TAP, "--mac", GUEST_MAC_ARG];
    all.extend_from_slice(args);
    let daemon = vhost_net_daemon(&ns, &sock, &all).unwrap();
    let pkt = ns.packet_socket(TAP).unwrap();
    Rig {
        daemon,
        pkt,
        ns,
        _dir: dir,
    }
}

impl Rig {
    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        self.daemon.socket()
    }

    /// A driver with `opts`.
    pub fn connect(&self, opts: &NetOptions) -> NetClient {
        NetClient::connect(self.socket(), opts).unwrap()
    }

    /// A driver with the default options.
    pub fn client(&self) -> NetClient {
        self.connect(&NetOptions::default())
    }

    /// Panics if the daemon exited.
    pub fn assert_alive(&mut self) {
        let exit = self.daemon.try_wait().unwrap();
        assert_eq!(exit, None, "daemon exited: {exit:?}");
    }

    /// Writes `frame` on the tap's host side: the daemon must read it.
    pub fn inject(&self, frame: &[u8]) {
        self.pkt.send(frame).unwrap();
    }

    /// Asserts that frames cross both ways on `pair` and that the daemon lives.
    pub fn assert_serves(&mut self, net: &mut NetClient, pair: u16) {
        self.assert_alive();
        let tag = unique_tag("serves");
        assert_tx(net, &self.pkt, pair, &tag);
        assert_rx(net, &self.pkt, pair, &tag);
        self.assert_alive();
    }

    /// Waits until the daemon's log has a line containing every one of
    /// `needles`.
    pub fn assert_logged(&self, needles: &[&str]) {
        let found = poll_until(T, || {
            self.daemon
                .log_contents()
                .lines()
                .any(|l| needles.iter().all(|n| l.contains(n)))
        });
        assert!(
            found,
            "no log line with {needles:?}:\n{}",
            self.daemon.log_contents()
        );
    }

    /// Sends a good frame and checks it is the first to reach the tap:
    /// what was sent before it was dropped.
    pub fn assert_nothing_leaked(&self, net: &mut NetClient) {
        let tag = unique_tag("after");
        net.send(0, &VirtioNetHdr::plain(), &to_host(&tag, 100))
            .unwrap();
        let before = tap_frames_before(&self.pkt, &tag);
        assert!(
            before.is_empty(),
            "{} frame(s) reached the tap: {:?}",
            before.len(),
            before.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
}

/// `vhost-net-daemon`'s TX queue (1); the good chain is a 12-byte header
/// and a tagged 100-byte frame. The contract: a malformed chain comes back
/// used with len 0, nothing reaches the tap, the drop is logged with its
/// head.
pub static NET_TX: RingUnderTest = RingUnderTest {
    name: "net_tx",
    rig: || Box::new(NetRing::new(TX_QUEUE)),
};

/// `vhost-net-daemon`'s RX queue (0), on a driver that posted no buffers
/// of its own; the good chain is two writable 1 KiB buffers. The contract:
/// a malformed chain comes back with len 0, untouched, and is logged.
pub static NET_RX: RingUnderTest = RingUnderTest {
    name: "net_rx",
    rig: || Box::new(NetRing::new(RX_QUEUE)),
};

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;

/// A [`Rig`] and a driver, for raw chains on queue `queue`.
struct NetRing {
    rig: Rig,
    net: Option<NetClient>,
    queue: usize,
}

impl NetRing {
    fn new(queue: usize) -> Self {
        let rig = rig(&[]);
        let net = if queue == RX_QUEUE {
            NetClient::connect_unfilled(rig.socket(), &NetOptions::default()).unwrap()
        } else {
            rig.client()
        };
        NetRing {
            rig,
            net: Some(net),
            queue,
        }
    }
}

impl NetRing {
    /// The driver.
    fn net(&mut self) -> &mut NetClient {
        self.net.as_mut().expect("connected")
    }
}

impl Ring for NetRing {
    fn queue(&mut self) -> &mut VirtQueue {
        let queue = self.queue;
        self.net().device().queue(queue)
    }

    fn good_chain(&mut self) -> Chain {
        let mem = self.net().device().mem().clone();
        let (n, w) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
        let descs = if self.queue == TX_QUEUE {
            self.net().tx_flush(0, T).unwrap();
            let mut bytes = VirtioNetHdr::plain().to_bytes().to_vec();
            bytes.extend_from_slice(&to_host(&unique_tag("leak"), 100));
            let at = mem.alloc(bytes.len() as u64, 64).unwrap();
            mem.write(at, &bytes).unwrap();
            let len = bytes.len() as u32;
            vec![
                RawDesc::new(at.0, 12, n, 1),
                RawDesc::new(at.0 + 12, len - 12, 0, 0),
            ]
        } else {
            let buf = || {
                let at = mem.alloc(1024, 64).unwrap();
                mem.write(at, &[FILL; 1024]).unwrap();
                at.0
            };
            vec![
                RawDesc::new(buf(), 1024, w | n, 1),
                RawDesc::new(buf(), 1024, w, 0),
            ]
        };
        Chain { descs }
    }

    fn assert_refused(&mut self, head: u16, used: Used, untouched: &[(GuestAddress, Vec<u8>)]) {
        assert_eq!(used.len, 0, "{used:?}");
        if self.queue == TX_QUEUE {
            self.rig
                .assert_logged(&["TX frame dropped", &format!("head {head}:")]);
            let net = self.net.as_mut().expect("connected");
            self.rig.assert_nothing_leaked(net);
        } else {
            let mem = self.net().device().mem().clone();
            for (at, was) in untouched {
                let now = mem.read_vec(*at, was.len()).unwrap();
                assert!(now == *was, "buffer at {:#x} written", at.0);
            }
            self.rig
                .assert_logged(&["queue 0", "RX chain(s) returned unused"]);
            self.rig.assert_alive();
        }
        self.assert_serves();
    }

    fn assert_serves(&mut self) {
        if self.queue == RX_QUEUE {
            self.net().rx_fill(0).unwrap();
        }
        let net = self.net.as_mut().expect("connected");
        self.rig.assert_serves(net, 0);
    }

    fn assert_other_queues_serve(&mut self) {
        if self.queue == TX_QUEUE {
            let net = self.net.as_mut().expect("connected");
            assert_rx(net, &self.rig.pkt, 0, &unique_tag("rx-still"));
        } else {
            // A frame arrives for the broken ring; TX still works.
            self.rig.inject(&to_guest(&unique_tag("lost"), 100));
            let net = self.net.as_mut().expect("connected");
            assert_tx(net, &self.rig.pkt, 0, &unique_tag("tx-still"));
        }
        self.rig.assert_alive();
    }

    fn reconnect_and_serve(&mut self) {
        // The daemon serves one frontend at a time: this one goes first.
        self.net = None;
        let mut net = self.rig.client();
        self.rig.assert_serves(&mut net, 0);
        self.net = Some(net);
    }

    fn daemon(&mut self) -> &mut Daemon {
        &mut self.rig.daemon
    }
}
