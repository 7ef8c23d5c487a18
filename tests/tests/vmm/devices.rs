//! Our VMM with vhost-user devices served by our daemons: `--disk`
//! (vhost-blk-daemon), `--fs` (virtiofsd), `--net` (vhost-net-daemon on a
//! tap in a private network namespace). The test guest lists PCI bus 0 and
//! drives each device (see `vu_driver::fw_devices`: a sector written and
//! read back, a file read over FUSE, a frame on the tap), with MSI-X. A
//! missing socket is a one-line startup error naming it; a backend killed
//! while the VM runs leaves the VMM running, the device marked as needing
//! a reset.

use std::path::Path;
use std::time::Duration;

use vu_driver::fixture::{poll_until, TempDir};
use vu_driver::fw_devices;
use vu_driver::process::Finished;
use vu_driver::vmm::{
    assert_disk_share_nic_listed, assert_one_line_refusal, halting_kernel, run_vmm,
    show_run as show, spawn_vmm, test_guest,
};

/// KVM here emulates every instruction; the guest needs a few seconds at
/// most, the margin is for loaded CI machines.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(30);

fn arg(key_values: &[(&str, &Path)]) -> String {
    key_values
        .iter()
        .map(|(k, v)| format!("{k}={}", v.display()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn the_guest_drives_a_disk_a_share_and_a_nic() {
    let dir = TempDir::new("vmm-devices").unwrap();
    let b = fw_devices::blk(&dir);
    let f = fw_devices::fs_share(&dir, &["--tag", "myfs"]);
    let n = fw_devices::net(&dir);
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    // Twice: the daemons serve the next VMM once the first one is gone.
    for round in 0..2 {
        if round == 1 {
            // The second guest rewrites the same sector: start from zeros.
            std::fs::write(&b.image, vec![0u8; fw_devices::DISK_SIZE as usize]).unwrap();
        }
        let run = boot_with_devices(&guest, &b.socket, &f.socket, &n.socket);
        let daemons = [&b.daemon, &f.daemon, &n.daemon];
        fw_devices::assert_blk(&run, &b, &daemons);
        fw_devices::assert_fs(&run, "myfs", &daemons);
        fw_devices::assert_net(&run, &n, true, &daemons);
    }
}

fn boot_with_devices(guest: &Path, blk_sock: &Path, fs_sock: &Path, net_sock: &Path) -> Finished {
    let run = run_vmm(
        [
            "--kernel".into(),
            guest.as_os_str().to_owned(),
            // Our VMM loses no kick (it kicks every ring once a device is
            // activated): the guest never kicks twice, so a lost kick is
            // a timeout whatever the load, where a re-kick could hide it.
            "--cmdline".into(),
            "console=ttyS0 no-rekick".into(),
            "--memory".into(),
            "size=64M".into(),
            "--disk".into(),
            arg(&[("socket", blk_sock)]).into(),
            "--fs".into(),
            format!("tag=myfs,{}", arg(&[("socket", fs_sock)])).into(),
            "--net".into(),
            format!("{},mac={}", arg(&[("socket", net_sock)]), fw_devices::MAC).into(),
        ],
        BOOT_TIMEOUT,
    );
    assert_eq!(run.code(), Some(0), "{}", show(&run));
    assert_disk_share_nic_listed(&run.stdout, || show(&run));
    for (kind, sock, bdf, queues) in [
        ("blk", blk_sock, "0000:00:01.0", 1),
        ("fs", fs_sock, "0000:00:02.0", 2),
        ("net", net_sock, "0000:00:03.0", 3),
    ] {
        let line = format!(
            "vhost-user {kind} {}: PCI {bdf}, {queues} queues",
            sock.display()
        );
        assert!(
            run.stderr.contains(&line),
            "missing {line:?}\n{}",
            show(&run)
        );
    }
    for bad in ["backend is gone", "the backend serves", "FAILED", "re-kick"] {
        assert!(
            !run.stderr.contains(bad) && !run.stdout.contains(bad),
            "{bad:?}\n{}",
            show(&run)
        );
    }
    assert!(run.stderr.contains("guest powered off"), "{}", show(&run));
    run
}

fn refusal(args: &[&str], code: i32, culprits: &[&str]) {
    assert_one_line_refusal(args, code, culprits, CLI_TIMEOUT);
}

#[test]
fn a_missing_socket_is_one_line_naming_it() {
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let guest = guest.to_str().unwrap();
    let dir = TempDir::new("vmm-nosock").unwrap();
    let sock = dir.join("nobody-listens.sock");
    let sock = sock.to_str().unwrap();
    for (option, value, kind) in [
        ("--disk", format!("socket={sock}"), "blk"),
        ("--fs", format!("tag=t,socket={sock}"), "fs"),
        ("--net", format!("socket={sock}"), "net"),
    ] {
        refusal(
            &[
                "--log-level",
                "error",
                "--kernel",
                guest,
                "--memory",
                "size=32M",
                option,
                &value,
            ],
            1,
            &[sock, kind, "cannot connect", "No such file"],
        );
    }
}

#[test]
fn bad_device_options_are_one_line() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("--disk", "num_queues=2", &["--disk", "missing socket=PATH"]),
        (
            "--disk",
            "socket=/s,cache=on",
            &["--disk", "unknown key `cache`"],
        ),
        (
            "--disk",
            "socket=/s,num_queues=x",
            &["num_queues=x is not a number"],
        ),
        (
            "--disk",
            "socket=/s,queue_size=100",
            &["queue_size=100 is not a power of two"],
        ),
        ("--fs", "socket=/s", &["--fs", "missing tag=TAG"]),
        (
            "--fs",
            "tag=0123456789012345678901234567890123456,socket=/s",
            &["--fs", "37 bytes; a tag has 1 to 36"],
        ),
        (
            "--net",
            "socket=/s,mac=52:54:00:12:34",
            &["--net", "not a MAC address"],
        ),
        (
            "--net",
            "socket=/s,num_queues=3",
            &["--net", "num_queues=3 is odd"],
        ),
        (
            "--vsock",
            "cid=2,socket=/tmp/clh.sock",
            &["--vsock", "cid=2 is reserved"],
        ),
        (
            "--vsock",
            "cid=3,socket=/no/such/dir/clh.sock",
            &[
                "--vsock",
                "socket=/no/such/dir/clh.sock",
                "directory /no/such/dir",
            ],
        ),
        (
            "--vhost-user",
            "socket=/s,type=teapot",
            &["--vhost-user", "type=teapot is not"],
        ),
        (
            "--vhost-user",
            "socket=/s",
            &["--vhost-user", "missing type="],
        ),
    ];
    for (option, value, culprits) in cases {
        refusal(&["--kernel", "k", option, value], 2, culprits);
    }
}

/// /proc/PID/status `SigIgn` has SIGPIPE.
fn ignores_sigpipe(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGPIPE - 1)) != 0)
}

fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

#[test]
fn a_backend_killed_while_the_vm_runs_leaves_the_vmm_running() {
    let dir = TempDir::new("vmm-kill").unwrap();
    let kernel = dir.join("halt.elf");
    halting_kernel(&kernel).unwrap();
    let mut blk = fw_devices::blk(&dir);
    let blk_sock = blk.socket.clone();
    // virtiofsd's default tag, kataShared, is not the command line's.
    let fs = fw_devices::fs_share(&dir, &[]);
    let fs_sock = &fs.socket;
    let blk_line = format!("vhost-user blk {}: PCI 0000:00:01.0", blk_sock.display());
    let fs_line = format!("vhost-user fs {}: PCI 0000:00:02.0", fs_sock.display());
    let mut vmm = spawn_vmm(
        [
            "--kernel".into(),
            kernel.into_os_string(),
            "--memory".into(),
            "size=32M".into(),
            "--serial".into(),
            "off".into(),
            "--disk".into(),
            // No reconnect: the killed backend fails the disk at once.
            format!("{},reconnect=off", arg(&[("socket", &blk_sock)])).into(),
            "--fs".into(),
            format!("tag=myfs,{}", arg(&[("socket", fs_sock)])).into(),
        ],
        &blk_sock,
        &[
            &blk_line,
            &fs_line,
            "vu-watch: watching 2 vhost-user backend socket(s)",
        ],
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pid = vmm.pid();
    let tag_warning = format!(
        "vhost-user fs {}: the backend serves tag \"kataShared\", not \"myfs\"",
        fs_sock.display()
    );
    assert!(
        vmm.log_contents().contains(&tag_warning),
        "{}",
        vmm.log_contents()
    );
    // The thread names itself once it runs.
    assert!(
        poll_until(WAIT, || thread_names(pid).iter().any(|n| n == "vu-watch")),
        "threads: {:?}",
        thread_names(pid)
    );
    assert!(ignores_sigpipe(pid), "SIGPIPE is not ignored by the VMM");

    vu_driver::crash::kill_hard(&mut blk.daemon, WAIT).unwrap();
    let gone = format!(
        "vhost-user blk device 0000:00:01.0 ({}): the backend is gone; DEVICE_NEEDS_RESET set",
        blk_sock.display()
    );
    assert!(
        poll_until(WAIT, || vmm.log_contents().contains(&gone)),
        "no {gone:?} in the VMM's log:\n{}",
        vmm.log_contents()
    );
    // Still running, logged once, and the share is unaffected.
    assert_eq!(vmm.try_wait().unwrap(), None, "{}", vmm.log_contents());
    let log = vmm.log_contents();
    assert_eq!(log.matches("the backend is gone").count(), 1, "{log}");
    assert!(!log.contains("vhost-user fs device"), "{log}");
    assert!(ignores_sigpipe(pid));
    let status = vmm.stop().unwrap();
    // It was running until stopped: ended by SIGTERM, not by itself.
    assert_eq!(status.code(), None, "{}", vmm.log_contents());
}

/// The generic device (`--vhost-user`): a device type by number (19,
/// virtio-vsock) served by a third-party backend the test runs, rust-vmm's
/// vhost-device-vsock. The guest finds it on the bus (1af4:1053; the test
/// guest has no vsock driver); the VMM negotiated with the backend (its
/// MQ and CONFIG protocol features, and REPLY_ACK, 0x209) and gave the device 3 queues,
/// of which the backend gets RX and TX.
#[test]
fn a_generic_vhost_user_device_of_any_type_is_plugged() {
    use vu_driver::fixture::{Daemon, Readiness};
    use vu_driver::vmm::{run_test_guest, vsock_backend_dir, VSOCK_BACKEND};
    let dir = TempDir::new("vmm-generic").unwrap();
    let sock = dir.join("vsock-vu.sock");
    let hybrid = dir.join("vsock.sock");
    let backend_dir = vsock_backend_dir().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = std::process::Command::new(backend_dir.join(VSOCK_BACKEND));
    cmd.args([
        "--vm".to_string(),
        format!(
            "guest-cid=7,socket={},uds-path={}",
            sock.display(),
            hybrid.display()
        ),
    ]);
    let backend = Daemon::spawn(
        VSOCK_BACKEND,
        cmd,
        &sock,
        &[Readiness::Path(sock.clone())],
        WAIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let run = run_test_guest(
        &[
            "--vhost-user".into(),
            format!("socket={},type=19", sock.display()),
        ],
        BOOT_TIMEOUT,
    );
    let context = || format!("{}\n--- backend\n{}", show(&run), backend.log_contents());
    assert_eq!(run.code(), Some(0), "{}", context());
    for line in [
        "pci 00:01.0 1af4:1053",
        "virtio: type 13, no driver",
        "virtio: 1 device(s)",
    ] {
        assert!(run.stdout.contains(line), "missing {line:?}\n{}", context());
    }
    let negotiated = format!(
        "vhost-user vsock {}: features 0x161000000, protocol features 0x209",
        sock.display()
    );
    let plugged = format!(
        "vhost-user vsock {}: PCI 0000:00:01.0, 3 queues",
        sock.display()
    );
    for line in [negotiated, plugged] {
        assert!(
            run.stderr.contains(&line),
            "missing {line:?}\n{}",
            context()
        );
    }
}
