//! vhost-blk-daemon serves under its seccomp allow-list: the filter is
//! really installed (by default, in kill mode) and the whole data path
//! (every request type, reconnect, SIGTERM) runs under it.

use std::time::Duration;

use vu_driver::blk::{BlkClient, BlkOptions};
use vu_driver::fixture::{create_sparse_image, poll_until, TempDir};
use vu_driver::ours::{vhost_blk_daemon, BlkDaemonOpts};
use vu_driver::process;

/// The `Seccomp:` mode of /proc/PID/status (0 none, 2 filter).
fn seccomp_mode(pid: u32) -> u32 {
    process::seccomp_mode(pid).unwrap()
}

#[test]
fn default_daemon_runs_every_request_type_under_a_filter() {
    let dir = TempDir::new("vutest-blk-seccomp").unwrap();
    let image = dir.join("disk.img");
    create_sparse_image(&image, 16 << 20).unwrap();
    let mut d = vhost_blk_daemon(&image, &dir.join("blk.sock"), &BlkDaemonOpts::default()).unwrap();
    // The socket exists (ready) a moment before the filter goes on.
    let pid = d.pid();
    assert!(
        poll_until(Duration::from_secs(5), || seccomp_mode(pid) == 2),
        "no seccomp filter installed by default"
    );
    for round in 0..2u8 {
        let mut c = BlkClient::connect(d.socket(), &BlkOptions::default()).unwrap();
        let data = vec![0xa5 ^ round; 8192];
        c.write(8, &data).unwrap();
        assert_eq!(c.read(8, 8192).unwrap(), data);
        c.flush().unwrap();
        c.discard(64, 8).unwrap();
        c.write_zeroes(8, 16, false).unwrap();
        assert_eq!(c.read(8, 8192).unwrap(), vec![0u8; 8192]);
        c.write_zeroes(80, 8, true).unwrap();
        assert_eq!(c.get_id().unwrap(), "disk.img");
    }
    assert_eq!(
        d.try_wait().unwrap(),
        None,
        "the daemon died under its filter:\n{}",
        d.log_contents()
    );
    let status = d.stop().unwrap();
    assert!(
        status.success(),
        "exit {status} under the filter:\n{}",
        d.log_contents()
    );
}

#[test]
fn seccomp_none_installs_no_filter() {
    let dir = TempDir::new("vutest-blk-seccomp").unwrap();
    let image = dir.join("disk.img");
    create_sparse_image(&image, 1 << 20).unwrap();
    let opts = BlkDaemonOpts {
        extra_args: vec!["--seccomp".into(), "none".into()],
        ..BlkDaemonOpts::default()
    };
    let d = vhost_blk_daemon(&image, &dir.join("blk.sock"), &opts).unwrap();
    assert_eq!(seccomp_mode(d.pid()), 0);
}
