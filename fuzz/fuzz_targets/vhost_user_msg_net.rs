//! vhost-net-daemon as a hostile frontend sees it: [`vhost_user_msg`]'s
//! frontend (`fuzz::vu_frontend`: messages with any descriptors, kicks,
//! guest memory writes, optionally through `common::relay`; well formed
//! replies, the connection ends within 5 s of the hang-up, every thread
//! joined) against vhost-net-daemon's device over a real tap, as
//! `backend::run` builds it: the process moves once into a network
//! namespace of its own (needs root) and creates and brings up the tap
//! there, so frames the guest sends go nowhere on the host.
//!
//! Byte 0 sets the daemon up: bit 1 two queue pairs (else one), bit 2 the
//! relay (the daemon always relays; without it the handler is reached
//! directly), bit 3 `--mtu 1400`. The rest is `fuzz::vu`'s format.

#![no_main]

use std::sync::{Arc, OnceLock};

use common::daemon::Service;
use common::ratelimit::RateLimited;
use fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vhost_net_daemon::backend::{Net, Stats};
use vhost_net_daemon::config::NetConfig;
use vhost_net_daemon::tap::{offload, Tap};

/// The device of setup bits 1 and 3, made once per process.
fn net(setup: u8) -> Arc<Net> {
    static NETNS: OnceLock<()> = OnceLock::new();
    static NETS: [OnceLock<Arc<Net>>; 4] = [const { OnceLock::new() }; 4];
    NETNS.get_or_init(|| {
        // SAFETY: a plain system call; the process's other threads (none
        // that use the network) stay where they are.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
    });
    let (two, mtu) = (setup & 2 != 0, setup & 8 != 0);
    let i = usize::from(two) | usize::from(mtu) << 1;
    NETS[i]
        .get_or_init(|| {
            let pairs = 1 + u16::from(two);
            let tap = Tap::open(&format!("fuzz{i}"), usize::from(pairs), true).expect("tap");
            let mtu = mtu.then_some(1400);
            if let Some(m) = mtu {
                tap.set_mtu(m).expect("tap MTU");
            }
            tap.set_up().expect("tap up");
            let tap_offloads = tap
                .probe_offloads(offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN);
            Arc::new(Net {
                config: NetConfig {
                    mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                    pairs,
                    queue_size: 256,
                    mtu,
                    tap_offloads,
                },
                tap,
                stats: Stats::default(),
                malformed: RateLimited::default(),
                tap_errors: RateLimited::default(),
            })
        })
        .clone()
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let Some(setup) = input.u8() else { return };
    fuzz::vu_frontend::relay_dir("vhost_user_msg_net");
    let net = net(setup);
    let device = net.connect().expect("connect the device");
    fuzz::vu_frontend::drive(input, device, setup & 4 != 0);
    assert!(net.after_disconnect(), "the device serves again");
}

fuzz_target!(|data: &[u8]| run(data));
