//! vhost-net-daemon's TX path over a ring from the input: the worker loop,
//! the chain walker and `tx::prepare` (chain shape, virtio-net header,
//! offload checks); an accepted frame is written to /dev/null with the
//! daemon's `writev`. Byte 1: the negotiated offloads.

#![no_main]

use std::fs::File;
use std::sync::OnceLock;

use common::iov::{total_len, writev};
use fuzz::ring::Ring;
use libfuzzer_sys::fuzz_target;
use vhost_net_daemon::config::{Acked, MAX_GSO_FRAME};
use vhost_net_daemon::tap::VNET_HDR_LEN;
use vhost_net_daemon::tx::{self, TxScratch};

/// The Ethernet header every frame needs.
const ETH_HLEN: usize = 14;

fn null() -> &'static File {
    static NULL: OnceLock<File> = OnceLock::new();
    NULL.get_or_init(|| {
        File::options()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null")
    })
}

/// Offloads from one byte.
pub fn acked(b: u8) -> Acked {
    Acked {
        csum: b & 1 != 0,
        tso4: b & 2 != 0,
        tso6: b & 4 != 0,
        ecn: b & 8 != 0,
        mq: b & 16 != 0,
        ctrl_rx: b & 32 != 0,
        mrg_rxbuf: b & 64 != 0,
        guest_gso: b & 128 != 0,
        ..Acked::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(ring) = Ring::new(data) else { return };
    let acked = acked(ring.extra);
    let mut scratch = TxScratch::default();
    ring.drain(|chain, mem| {
        if let Ok(iovs) = tx::prepare(chain, mem, &acked, &mut scratch) {
            let len = total_len(iovs);
            assert!(len >= VNET_HDR_LEN + ETH_HLEN);
            assert!(len - VNET_HDR_LEN <= MAX_GSO_FRAME);
            let written = writev(null(), iovs).expect("writev to /dev/null");
            assert_eq!(written, len);
        }
        // TX chains are returned with nothing written.
        0
    });
});
