//! A killed blk daemon restarted on its socket (issue #13 step 1): the test
//! guest loops over blk I/O (`blk-loop`: write a sector, read it back,
//! compare, print `blk-loop: round N ok`). The host SIGKILLs
//! vhost-blk-daemon mid-run; `vm.info` shows the disk `connecting` while no
//! daemon listens; a new daemon on the same socket is reconnected by the
//! VMM (the ring resumes at the used index, the request the dead daemon
//! had taken is read again), `vm.info` shows it `connected` with one
//! reconnect, and the guest's rounds go on. At the power button the guest
//! reports no error, and the image holds what the last rounds wrote.
//! Each prints the time from the new daemon listening to the guest's next
//! completed round (blk, fs, net).
//!
//! The same for vhost-net-daemon while the guest keeps sending a frame
//! (`net-loop`): the NIC is `connecting`, then `connected` with one
//! reconnect, and the guest's frames go on, none left unsent.
//!
//! And for virtiofsd with `--state-file` (issue #13 step 3) while the guest
//! keeps READing a file through the node id and handle it got before the
//! kill (`fs-loop`): the restarted daemon resumes the FUSE session without
//! a new INIT, the reads go on with the same bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vu_driver::fixture::{poll_until, Daemon, TempDir};
use vu_driver::fw_devices;
use vu_driver::ours::{vhost_blk_daemon, vhost_net_daemon, BlkDaemonOpts};
use vu_driver::vmm::{
    blk_loop_rounds, loop_rounds, press_power_button, serial, shutdown_vmm, spawn_test_guest,
    vm_counter,
};

/// KVM here emulates the guest's kernel mode: generous for loaded machines.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(60);

/// Byte `i` of the sector written in round `n` (guest-fw `blk::loop_byte`).
fn loop_byte(n: u64, i: usize) -> u8 {
    ((n.wrapping_mul(7) + i as u64) % 253) as u8
}

fn show(console: &Path, vmm: &Daemon, blk: &Daemon) -> String {
    let out = serial(console);
    let tail: String = out
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "--- serial (last lines)\n{tail}\n--- vmm log\n{}--- {} log\n{}",
        vmm.log_contents(),
        blk.name(),
        blk.log_contents()
    )
}

fn call(api: &Path, method: &str, path: &str) -> (u16, Value) {
    vu_driver::http::call(api, method, path, None)
}

fn disk_state(api: &Path) -> String {
    let (status, vm) = call(api, "GET", "/api/v1/vm.info");
    assert_eq!(status, 200, "{vm}");
    vm["devices"][0]["backend_state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn counter(api: &Path, name: &str) -> u64 {
    vm_counter(api, "disk0", name)
}

/// Watches, from before a new daemon is started on `socket` (the dead
/// one's file removed), for the socket to appear (the daemon listening:
/// the VMM's connect succeeds from then on) and for the guest's `mode`
/// loop to complete a round past `before`, both polled every millisecond.
/// Joined, it gives the time between the two (the recovery, printed by the
/// tests and never asserted on), `None` if the round did not come within
/// [`WAIT`].
fn watch_recovery(
    socket: &Path,
    console: &Path,
    mode: &'static str,
    before: u64,
) -> std::thread::JoinHandle<Option<Duration>> {
    let (socket, console) = (socket.to_owned(), console.to_owned());
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut listening = None;
        while start.elapsed() < WAIT {
            if listening.is_none() && socket.exists() {
                listening = Some(Instant::now());
            }
            if loop_rounds(&console, mode) > before {
                let done = Instant::now();
                return Some(done.saturating_duration_since(listening.unwrap_or(done)));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    })
}

/// The test guest with `guest_args` and the devices `extra`: its API
/// socket and console file in `dir`, and the VMM.
fn guest(dir: &TempDir, guest_args: &str, extra: &[String]) -> (PathBuf, PathBuf, Daemon) {
    let api = dir.join("api.sock");
    let console = dir.join("console.txt");
    let vmm = spawn_test_guest(&api, &console, guest_args, extra, BOOT_TIMEOUT);
    (api, console, vmm)
}

#[test]
fn a_killed_blk_daemon_restarted_on_its_socket_is_reconnected_and_the_guest_never_notices() {
    let dir = TempDir::new("vmm-reconnect").unwrap();
    let mut b = fw_devices::blk(&dir);
    let (api, console, mut vmm) = guest(
        &dir,
        "blk-loop",
        &["--disk".into(), format!("socket={}", b.socket.display())],
    );
    assert!(
        poll_until(BOOT_TIMEOUT, || blk_loop_rounds(&console) >= 3),
        "the guest does not loop over blk I/O\n{}",
        show(&console, &vmm, &b.daemon)
    );
    assert_eq!(disk_state(&api), "connected");
    assert_eq!(counter(&api, "reconnects"), 0);

    // Kill the daemon: the disk is reconnecting, the guest's request waits.
    vu_driver::crash::kill_hard(&mut b.daemon, WAIT).unwrap();
    assert!(
        poll_until(WAIT, || disk_state(&api) == "connecting"),
        "{}",
        show(&console, &vmm, &b.daemon)
    );
    assert_eq!(counter(&api, "reconnecting"), 1);
    assert_eq!(counter(&api, "needs_reset"), 0);
    let before = blk_loop_rounds(&console);

    // A new daemon on the same socket (the dead one's file removed, so
    // readiness means listening).
    let _ = std::fs::remove_file(&b.socket);
    let watch = watch_recovery(&b.socket, &console, "blk-loop", before);
    b.daemon = vhost_blk_daemon(&b.image, &b.socket, &BlkDaemonOpts::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let recovery = watch.join().unwrap().unwrap_or_else(|| {
        panic!(
            "the guest's I/O did not resume\n{}",
            show(&console, &vmm, &b.daemon)
        )
    });
    println!("blk: from the new daemon's socket listening to the guest's next completed round: {recovery:?}");
    let log = vmm.log_contents();
    for l in log
        .lines()
        .filter(|l| l.contains("resumes at used") || l.contains("reconnected"))
    {
        println!("{l}");
    }
    assert!(
        poll_until(WAIT, || disk_state(&api) == "connected"),
        "{}",
        show(&console, &vmm, &b.daemon)
    );
    assert_eq!(counter(&api, "reconnects"), 1);
    assert_eq!(counter(&api, "reconnecting"), 0);
    assert_eq!(counter(&api, "needs_reset"), 0);
    // The vmm handed the new daemon the activation's in-flight region
    // (INFLIGHT_SHMFD) before its ring.
    assert!(
        b.daemon.log_contents().contains("in-flight region set"),
        "{}",
        show(&console, &vmm, &b.daemon)
    );
    assert!(
        poll_until(WAIT, || blk_loop_rounds(&console) >= before + 20),
        "{}",
        show(&console, &vmm, &b.daemon)
    );

    // The power button ends the loop; the guest reports and powers off.
    press_power_button(&api, &vmm, WAIT, || show(&console, &vmm, &b.daemon));
    let out = serial(&console);
    let all = show(&console, &vmm, &b.daemon);
    let stopped = out
        .lines()
        .find_map(|l| l.strip_prefix("blk-loop: stopped after "))
        .unwrap_or_else(|| panic!("no summary\n{all}"));
    let n: u64 = stopped
        .strip_suffix(" rounds, no error")
        .unwrap_or_else(|| panic!("{stopped:?}\n{all}"))
        .parse()
        .unwrap();
    assert!(n >= before + 20, "{n}\n{all}");
    assert!(!out.contains("FAILED"), "{all}");

    // Sectors 16..24 hold what the last round for each wrote.
    let image = std::fs::read(&b.image).unwrap();
    for k in 0..8u64 {
        let last = (0..n).rev().find(|r| r % 8 == k).unwrap();
        let at = (16 + k as usize) * 512;
        let want: Vec<u8> = (0..512).map(|i| loop_byte(last, i)).collect();
        assert_eq!(image[at..at + 512], want[..], "sector {}\n{all}", 16 + k);
    }

    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
}

#[test]
fn a_killed_net_daemon_restarted_on_its_socket_is_reconnected() {
    let dir = TempDir::new("vmm-reconnect-net").unwrap();
    let mut n = fw_devices::net(&dir);
    let (api, console, mut vmm) = guest(
        &dir,
        "net-loop",
        &[
            "--net".into(),
            format!("socket={},mac={}", n.socket.display(), fw_devices::MAC),
        ],
    );
    assert!(
        poll_until(BOOT_TIMEOUT, || loop_rounds(&console, "net-loop") >= 3),
        "the guest does not loop over frames\n{}",
        show(&console, &vmm, &n.daemon)
    );
    assert!(
        serial(&console).contains("net: mac "),
        "{}",
        show(&console, &vmm, &n.daemon)
    );
    // The only device is the NIC: vm.info's first.
    assert_eq!(disk_state(&api), "connected");

    vu_driver::crash::kill_hard(&mut n.daemon, WAIT).unwrap();
    assert!(
        poll_until(WAIT, || disk_state(&api) == "connecting"),
        "{}",
        show(&console, &vmm, &n.daemon)
    );
    let before = loop_rounds(&console, "net-loop");
    let _ = std::fs::remove_file(&n.socket);
    let watch = watch_recovery(&n.socket, &console, "net-loop", before);
    n.daemon = vhost_net_daemon(
        &n.ns,
        &n.socket,
        &["--tap", fw_devices::TAP, "--mac", fw_devices::MAC],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let recovery = watch.join().unwrap().unwrap_or_else(|| {
        panic!(
            "the guest's frames did not go on\n{}",
            show(&console, &vmm, &n.daemon)
        )
    });
    println!("net: from the new daemon's socket listening to the guest's next completed round: {recovery:?}");
    assert!(
        poll_until(WAIT, || disk_state(&api) == "connected"),
        "{}",
        show(&console, &vmm, &n.daemon)
    );
    assert_eq!(vm_counter(&api, "net0", "reconnects"), 1);
    assert_eq!(vm_counter(&api, "net0", "needs_reset"), 0);
    assert!(
        poll_until(WAIT, || loop_rounds(&console, "net-loop") >= before + 10),
        "{}",
        show(&console, &vmm, &n.daemon)
    );

    // The power button ends the loop: every frame was sent (a device that
    // needed a reset would have left one unsent).
    press_power_button(&api, &vmm, WAIT, || show(&console, &vmm, &n.daemon));
    let out = serial(&console);
    let all = show(&console, &vmm, &n.daemon);
    let stopped = out
        .lines()
        .find_map(|l| l.strip_prefix("net-loop: stopped after "))
        .unwrap_or_else(|| panic!("no summary\n{all}"));
    assert!(stopped.ends_with(" rounds, no error"), "{stopped:?}\n{all}");
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
}

/// virtiofsd with `--state-file` (issue #13 step 3): the test guest keeps
/// READing `hello.txt` through the node id and handle it got before the
/// kill (`fs-loop`); the share's device is `connecting` while no daemon
/// listens, then the restarted daemon resumes the FUSE session (no new
/// INIT) and the rounds go on with the same bytes, no DEVICE_NEEDS_RESET.
#[test]
fn a_killed_virtiofsd_restarted_with_its_state_file_is_reconnected_and_the_guest_reads_on() {
    let dir = TempDir::new("vmm-reconnect-fs").unwrap();
    let state = dir.join("fs.state");
    let args = ["--tag", "myfs", "--state-file", state.to_str().unwrap()];
    let mut f = fw_devices::fs_share(&dir, &args);
    // The default for --fs is to reconnect.
    let (api, console, mut vmm) = guest(
        &dir,
        "fs-loop",
        &[
            "--fs".into(),
            format!("tag=myfs,socket={}", f.socket.display()),
        ],
    );
    assert!(
        poll_until(BOOT_TIMEOUT, || loop_rounds(&console, "fs-loop") >= 3),
        "the guest does not loop over fs reads\n{}",
        show(&console, &vmm, &f.daemon)
    );
    assert_eq!(disk_state(&api), "connected");

    vu_driver::crash::kill_hard(&mut f.daemon, WAIT).unwrap();
    assert!(
        poll_until(WAIT, || disk_state(&api) == "connecting"),
        "{}",
        show(&console, &vmm, &f.daemon)
    );
    assert_eq!(vm_counter(&api, "fs0", "needs_reset"), 0);
    let before = loop_rounds(&console, "fs-loop");

    let _ = std::fs::remove_file(&f.socket);
    let watch = watch_recovery(&f.socket, &console, "fs-loop", before);
    f.daemon = vu_driver::ours::virtiofsd(&dir.join("share"), &f.socket, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let recovery = watch.join().unwrap().unwrap_or_else(|| {
        panic!(
            "the guest's reads did not resume\n{}",
            show(&console, &vmm, &f.daemon)
        )
    });
    println!("fs: from the new daemon's socket listening to the guest's next completed round: {recovery:?}");
    assert!(
        poll_until(WAIT, || loop_rounds(&console, "fs-loop") >= before + 10),
        "the guest's reads did not resume\n{}",
        show(&console, &vmm, &f.daemon)
    );
    assert_eq!(disk_state(&api), "connected");
    assert_eq!(vm_counter(&api, "fs0", "reconnects"), 1);
    assert_eq!(vm_counter(&api, "fs0", "needs_reset"), 0);
    assert!(
        f.daemon
            .log_contents()
            .contains("resuming the FUSE session of the state file"),
        "{}",
        show(&console, &vmm, &f.daemon)
    );

    press_power_button(&api, &vmm, WAIT, || show(&console, &vmm, &f.daemon));
    let out = serial(&console);
    let all = show(&console, &vmm, &f.daemon);
    let stopped = out
        .lines()
        .find_map(|l| l.strip_prefix("fs-loop: stopped after "))
        .unwrap_or_else(|| panic!("no summary\n{all}"));
    assert!(stopped.ends_with(" rounds, no error"), "{stopped:?}\n{all}");
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
}
