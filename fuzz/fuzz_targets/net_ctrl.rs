//! vhost-net-daemon's control queue over a ring from the input: the worker
//! loop, the chain walker and `ctrl::process` (RX mode, MAC table,
//! VQ_PAIRS_SET) on the RX filter. Byte 1: the negotiated features (bits
//! 0-5 as in `net_tx`) and, in bits 6-7, the pairs the device has - 1.

#![no_main]

use std::sync::Mutex;

use fuzz::ring::Ring;
use libfuzzer_sys::fuzz_target;
use vhost_net_daemon::config::Acked;
use vhost_net_daemon::ctrl::{self, Effect, RxFilter};

fuzz_target!(|data: &[u8]| {
    let Some(ring) = Ring::new(data) else { return };
    let b = ring.extra;
    let acked = Acked {
        csum: b & 1 != 0,
        mq: b & 16 != 0,
        ctrl_rx: b & 32 != 0,
        ..Acked::default()
    };
    let max_pairs = u16::from(b >> 6) + 1;
    let filter = Mutex::new(RxFilter::default());
    ring.drain(
        |chain, mem| match ctrl::process(chain, mem, &acked, max_pairs, &filter) {
            Ok((used, effect)) => {
                assert_eq!(used, 1);
                if let Effect::Pairs(n) = effect {
                    assert!(acked.mq && n >= 1 && n <= max_pairs);
                }
                used
            }
            Err(_) => 0,
        },
    );
    // The filter the guest left behind answers for any address.
    let f = filter.lock().unwrap();
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    assert!(f.accepts(&mac, &mac));
    assert!(f.accepts(&mac, &[0xff; 6]));
    let group = |d: &[u8; 6]| d[0] & 1 != 0;
    for dest in f.unicast.iter().filter(|d| !group(d)) {
        assert!(f.accepts(&mac, dest));
    }
    for dest in f.multicast.iter().filter(|d| group(d)) {
        assert!(f.accepts(&mac, dest));
    }
    f.accepts(&mac, &[0x01, 0, 0x5e, 0, 0, 1]);
});
