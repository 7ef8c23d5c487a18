//! RX under sustained load: frames arrive faster than one RX batch can end,
//! so the daemon takes, fills and gives back buffers for thousands of
//! frames in one go. Every buffer must come back to the driver exactly
//! once (the driver fails on a used id it does not own), none empty, and
//! every frame either arrives or is counted as dropped by the kernel at
//! the tap (its queue is full), never lost inside the daemon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vu_driver::net::NetClient;

use crate::common::*;

const FRAMES: u64 = 20_000;

/// Adds what arrives on queue 0 within `wait` to the frames `got` and the
/// buffers returned empty (`short`); nothing arriving is no error.
fn recv_some(net: &mut NetClient, wait: Duration, got: &mut u64, short: &mut u64) {
    match net.recv_count(0, wait) {
        Ok(c) => {
            *got += c.frames;
            *short += c.short;
        }
        Err(e) if e.is_timeout() => {}
        Err(e) => panic!("after {got} frames: {e}"),
    }
}

#[test]
fn a_long_rx_batch_returns_every_buffer_once() {
    let rig = rig(&[]);
    let mut net = rig.client();
    let frame = to_guest(&unique_tag("batch"), 64);
    let sent_all = AtomicBool::new(false);
    let mut got = 0u64;
    let mut short = 0u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..FRAMES {
                rig.pkt.send(&frame).unwrap();
            }
            sent_all.store(true, Ordering::Release);
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let dropped = rig.ns.counter(TAP, "tx_dropped").unwrap();
            if sent_all.load(Ordering::Acquire) && got + dropped >= FRAMES {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{got} received + {dropped} dropped of {FRAMES}"
            );
            recv_some(&mut net, Duration::from_millis(200), &mut got, &mut short);
        }
    });
    let dropped = rig.ns.counter(TAP, "tx_dropped").unwrap();
    assert_eq!(got + dropped, FRAMES, "{got} received, {dropped} dropped");
    assert_eq!(short, 0, "buffers returned empty");
    assert!(got >= 1000, "only {got} frames arrived");
    let log = rig.daemon.log_contents();
    assert!(!log.contains("returned unused"), "{log}");
}

/// 1200 frames wait in the tap before the driver posts 1024 buffers at
/// once: the daemon's next RX batch fills all of them in one go.
#[test]
fn one_batch_fills_a_whole_1024_entry_ring() {
    const QUEUED: usize = 1200;
    let rig = rig(&["--queue-size", "1024"]);
    rig.ns
        .ip(&["link", "set", TAP, "txqueuelen", "5000"])
        .unwrap();
    let mut opts = vu_driver::net::NetOptions::default();
    opts.device.queue_size = 1024;
    let mut net = NetClient::connect_unfilled(rig.socket(), &opts).unwrap();
    let tag = unique_tag("queued");
    for i in 0..QUEUED {
        rig.inject(&to_guest(&format!("{tag}-{i:05}"), 64));
    }
    let posted = net.rx_fill(0).unwrap();
    assert_eq!(posted, 1024);
    let mut got = 0u64;
    let mut short = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < QUEUED as u64 && Instant::now() < deadline {
        recv_some(&mut net, Duration::from_millis(500), &mut got, &mut short);
    }
    let dropped = rig.ns.counter(TAP, "tx_dropped").unwrap();
    assert_eq!(short, 0, "buffers returned empty");
    assert_eq!(
        got + dropped,
        QUEUED as u64,
        "{got} received, {dropped} dropped"
    );
    assert_eq!(dropped, 0);
    let log = rig.daemon.log_contents();
    assert!(!log.contains("returned unused"), "{log}");
}
