//! `--poll-us`: after draining a ring the worker keeps looking for the
//! driver's next request before it sleeps, and meanwhile does not ask for
//! kicks (EVENT_IDX), so requests that follow each other closely cost no
//! kick. Without polling every request of a sequential stream needs one.

use std::time::Duration;

use vu_driver::blk::{BlkClient, BlkOptions};
use vu_driver::fixture::{create_sparse_image, TempDir};
use vu_driver::ours::{vhost_blk_daemon, BlkDaemonOpts};

const REQUESTS: u64 = 200;

/// Kicks the driver had to send for `REQUESTS` sequential 4 KiB reads.
fn kicks_for_sequential_reads(poll_us: &str) -> u64 {
    let dir = TempDir::new("vutest-poll").unwrap();
    let image = dir.join("disk.img");
    create_sparse_image(&image, 1 << 20).unwrap();
    let opts = BlkDaemonOpts {
        // Polling is the synchronous engine's (the io_uring one does not
        // poll yet), whichever engine the suite runs with.
        extra_args: vec![
            "--poll-us".into(),
            poll_us.into(),
            "--aio".into(),
            "sync".into(),
        ],
        ..BlkDaemonOpts::default()
    };
    let d = vhost_blk_daemon(&image, &dir.join("blk.sock"), &opts).unwrap();
    let mut blk = BlkClient::connect(d.socket(), &BlkOptions::default()).unwrap();
    let before = blk.queue(0).virtqueue().kicks_sent();
    for i in 0..REQUESTS {
        assert_eq!(blk.read(8 * (i % 32), 4096).unwrap().len(), 4096);
    }
    blk.queue(0).virtqueue().kicks_sent() - before
}

#[test]
fn polling_saves_the_kicks_of_a_sequential_stream() {
    let without = kicks_for_sequential_reads("0");
    assert_eq!(without, REQUESTS, "without polling every request kicks");
    // A 1 ms window: the next request comes long before it ends (the
    // driver only waits for the reply), unless the machine is very busy.
    let with = kicks_for_sequential_reads("1000");
    assert!(
        with <= REQUESTS / 4,
        "{with} kicks for {REQUESTS} requests with --poll-us 1000"
    );
}

#[test]
fn poll_us_is_bounded() {
    let r = vu_driver::ours::run_to_exit(
        "vhost-blk-daemon",
        [
            "--poll-us",
            "1001",
            "--blk-file",
            "/dev/null",
            "--socket-path",
            "/tmp/x.sock",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(r.code(), Some(2), "{r:?}");
}
