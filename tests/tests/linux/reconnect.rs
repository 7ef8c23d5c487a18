//! Crash recovery with a real Linux guest under OUR VMM (issue #13): the
//! guest never notices that its disk's and its NIC's daemons were killed
//! and restarted.
//!
//! - **blk**: two writers in the guest keep 64 KiB O_DIRECT writes in
//!   flight on `/dev/vda` (256 KiB rounds of distinct content, each writer
//!   in its own region) until the host puts `stop` in the share. Meanwhile
//!   the host SIGKILLs vhost-blk-daemon twice, each time with a write in
//!   flight (the daemon is stopped first until the guest's kick waits in
//!   its eventfd), and starts a new one on the same socket; `vm.info`
//!   shows the disk `connecting`, then `connected`, the VMM's reconnect
//!   finds the write still to be done, and both writers go on. No write fails, the guest's
//!   kernel logs no I/O error, and the image holds exactly the last round
//!   of each writer.
//! - **net**: the guest sends 1 MiB over TCP to a listener in the host's
//!   namespace that stops reading after the first 64 KiB; while the
//!   connection waits, the host SIGKILLs vhost-net-daemon twice and
//!   restarts it on the same tap; then it reads on, and the stream matches
//!   byte for byte (frames lost while no daemon ran are retransmitted by
//!   TCP).
//!
//! - **fs**: the guest holds an open descriptor on a file in the share
//!   (`held`), another appending to one (`log`), its working directory in
//!   the share, and a copy of 1 MiB through the share (`dd` by 64 KiB
//!   chunks into one open `copy`). The host SIGKILLs virtiofsd (with
//!   `--state-file`) twice while the copy runs, each time between two
//!   chunks (the guest waits for a file the host makes after the restart;
//!   a WRITE left in flight would be answered EIO by design, as the dead
//!   daemon may have done it) and starts a new one on the same socket:
//!   the copy finishes with the same checksum, the held descriptors read
//!   and append, the working directory lists and takes a new file.
//!
//! The guest's data is made in user mode (`seq`), which runs natively even
//! where KVM emulates the guest's kernel. Needs root (namespace, tap),
//! `scripts/setup.sh` (the Linux kit) and `cargo build --workspace --bins`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use vu_driver::crash;
use vu_driver::fixture::{create_sparse_image, poll_until, Daemon, TempDir};
use vu_driver::guest::{ConsoleParser, GuestStatus};
use vu_driver::image::seq_from;
use vu_driver::linux::OurLinux;
use vu_driver::netns::NetNs;
use vu_driver::ours::{
    vhost_blk_daemon, vhost_net_daemon, virtiofsd, virtiofsd_share, BlkDaemonOpts,
};
use vu_driver::vmm::{
    device_args, serial, shutdown_vmm, spawn_vmm, vm_counter, vm_info, POWERED_OFF,
};

const TAG: &str = "kataShared";
const TAP: &str = "vmmrec0";
const HOST_IP: &str = "10.0.8.1";
const GUEST_IP: &str = "10.0.8.2";
const TCP_PORT: u16 = 5556;
const MAC: &str = "52:54:00:12:34:71";
/// The script's own limit (init kills it after this), below the test's.
const SCRIPT_TIMEOUT_S: u64 = 900;
/// Generous: the small kernel boots in ~90 s on an idle emulating machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const WAIT: Duration = Duration::from_secs(300);
const MIB: usize = 1 << 20;
/// What the TCP listener reads before it waits for the kills.
const TCP_FIRST: usize = 64 << 10;
/// What the guest's kernel must not log.
const IO_ERRORS: &str = "I/O error|blk_update_request|transmit queue .* timed out";

fn script() -> String {
    format!(
        r#"set -e
test -n "$VUTEST_FS" || exit 10
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
{writers}seq 1 999999999 | head -c {MIB} >/tmp/t
timeout 600 nc {HOST_IP} {TCP_PORT} </tmp/t || exit 22
c="$(dmesg | grep -E '{IO_ERRORS}' | tr '\n' '|' || true)"
vutest-kv io_errors "${{c:-none}}"
"#,
        writers = crash::writers_script()
    )
}

/// The fs copy's size and chunk (64 KiB `dd` blocks).
const COPY: usize = MIB;
/// The chunks before which the copy waits for the host's `go<N>` file.
const FS_PAUSES: [u32; 2] = [5, 10];

fn fs_script() -> String {
    let chunks = COPY / (64 << 10);
    let [a, b] = FS_PAUSES;
    format!(
        r#"set -e
test -n "$VUTEST_FS" || exit 10
cd "$VUTEST_FS/w"
exec 3<held 4>>log 5>&1
echo start >&4
c() {{
i=0
while [ $i -lt {chunks} ]; do
if [ $i = {a} ] || [ $i = {b} ]; then
echo "copy: waiting at $i" >&5
until [ -e go$i ]; do sleep 1; done
fi
dd if=src bs=64k skip=$i count=1 2>/dev/null
i=$((i+1))
done
}}
c >copy || exit 31
cmp src copy || exit 32
vutest-kv src_md5 "$(md5sum <src | cut -d' ' -f1)"
vutest-kv copy_md5 "$(md5sum <copy | cut -d' ' -f1)"
read l <&3
vutest-kv held "$l"
echo after >&4
vutest-kv cwd "$(pwd)"
vutest-kv listed "$(ls | tr '\n' ' ')"
echo rel >rel
c="$(dmesg | grep -E '{IO_ERRORS}' | tr '\n' '|' || true)"
vutest-kv io_errors "${{c:-none}}"
"#
    )
}

/// The last round writer `w` reported done on the console.
fn rounds(console: &Path, w: u64) -> u64 {
    serial(console)
        .lines()
        .filter_map(|l| crash::round_done(l, w))
        .max()
        .unwrap_or(0)
}

fn device_state(api: &Path, id: &str) -> String {
    let info: Value = vm_info(api);
    info["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["id"] == id))
        .and_then(|d| d["backend_state"].as_str())
        .unwrap_or_default()
        .to_string()
}

struct Vm {
    api: PathBuf,
    console: PathBuf,
    vmm: Daemon,
}

impl Vm {
    /// Linux with `script`, one vCPU, its console in a file and an API
    /// socket in `dir`, and `devices`.
    fn boot(
        linux: &OurLinux,
        dir: &TempDir,
        script: &str,
        devices: impl IntoIterator<Item = OsString>,
    ) -> Vm {
        let api = dir.join("api.sock");
        let console = dir.join("console.txt");
        let mut args = linux.vmm_args(script, TAG, SCRIPT_TIMEOUT_S);
        let serial_at = args.iter().position(|a| a == "--serial").unwrap();
        args[serial_at + 1] = format!("file={}", console.display()).into();
        args.extend([
            "--cpus".into(),
            "boot=1".into(),
            "--api-socket".into(),
            api.clone().into(),
        ]);
        args.extend(devices);
        let vmm = spawn_vmm(args, &api, &["control API on"], BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        Vm { api, console, vmm }
    }

    /// Waits for the guest to power off and checks that its script
    /// passed; returns what it reported and everything to show on a
    /// failure.
    fn passed(&self, daemons: &[&Daemon]) -> (ConsoleParser, String) {
        assert!(
            poll_until(WAIT, || self.vmm.log_contents().contains(POWERED_OFF)),
            "the guest does not power off\n{}",
            self.show(daemons)
        );
        let all = self.show(daemons);
        let parsed = ConsoleParser::parse(&serial(&self.console));
        assert!(parsed.errors.is_empty(), "{:?}\n{all}", parsed.errors);
        let result = parsed
            .result
            .as_ref()
            .unwrap_or_else(|| panic!("no VUTEST-RESULT line\n{all}"));
        assert_eq!(
            (result.status, result.exit_code),
            (GuestStatus::Pass, 0),
            "{all}"
        );
        assert_eq!(
            parsed.kv.get("io_errors").map(String::as_str),
            Some("none"),
            "{all}"
        );
        (parsed, all)
    }

    fn show(&self, daemons: &[&Daemon]) -> String {
        let out = serial(&self.console);
        let tail: Vec<&str> = out.lines().rev().take(40).collect();
        let mut s = format!(
            "--- serial (last lines)\n{}\n--- vmm log\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            self.vmm.log_contents()
        );
        for d in daemons {
            s.push_str(&format!("--- {} log\n{}", d.name(), d.log_contents()));
        }
        s
    }
}

/// Stops `daemon` until the guest has kicked it: a request is then in
/// flight, taken by nobody, when the daemon dies.
fn stop_with_a_request_in_flight(vm: &Vm, daemon: &mut Daemon) {
    if let Err(e) = crash::stop_with_a_request_in_flight(daemon, WAIT) {
        panic!("{e}\n{}", vm.show(&[&*daemon]));
    }
}

/// How many requests each reconnect of `socket` found in queue 0 (the
/// VMM's "resumes at used index" lines).
fn resumed_requests(vm: &Vm, socket: &Path) -> Vec<u64> {
    let tag = format!("{}: queue 0 resumes at used index ", socket.display());
    vm.vmm
        .log_contents()
        .lines()
        .filter_map(|l| l.split_once(&tag)?.1.split_once(", ")?.1.split_once(' '))
        .filter_map(|(n, _)| n.parse().ok())
        .collect()
}

/// SIGKILLs `daemon`, waits until the VMM shows `id` connecting, starts
/// `restart()` on the same socket and waits until `id` is connected again
/// with `n` reconnects in all.
fn kill_and_restart(
    vm: &Vm,
    id: &str,
    n: u64,
    daemon: &mut Daemon,
    socket: &Path,
    restart: impl FnOnce() -> Daemon,
) {
    if let Err(e) = crash::kill_hard(daemon, WAIT) {
        panic!("{e}\n{}", vm.show(&[&*daemon]));
    }
    assert!(
        poll_until(WAIT, || device_state(&vm.api, id) == "connecting"),
        "{id} is not reconnecting\n{}",
        vm.show(&[&*daemon])
    );
    let _ = std::fs::remove_file(socket);
    *daemon = restart();
    assert!(
        poll_until(WAIT, || device_state(&vm.api, id) == "connected"),
        "{id} is not reconnected\n{}",
        vm.show(&[&*daemon])
    );
    assert_eq!(vm_counter(&vm.api, id, "reconnects"), n);
    assert_eq!(vm_counter(&vm.api, id, "needs_reset"), 0);
}

#[test]
fn linux_guest_rides_out_killed_blk_and_net_daemons() {
    let (linux, _turn) = OurLinux::for_test("linux::reconnect");
    let dir = TempDir::new("vmm-linux-rec").unwrap();

    let fs = virtiofsd_share(dir.path(), TAG).unwrap_or_else(|e| panic!("{e}"));
    let (share, fs_sock) = (&fs.path, &fs.socket);

    let image = dir.join("disk.img");
    create_sparse_image(&image, 64 * MIB as u64).unwrap();
    let blk_sock = dir.join("blk.sock");
    let start_blk = || {
        vhost_blk_daemon(&image, &blk_sock, &BlkDaemonOpts::default())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut blk = start_blk();

    let ns =
        NetNs::with_tap("vmmrec", TAP, &format!("{HOST_IP}/24")).unwrap_or_else(|e| panic!("{e}"));
    let listener = ns
        .listen_tcp(HOST_IP, TCP_PORT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (partial_tx, partial) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let received = crash::receive_in_two_parts(listener, TCP_FIRST, MIB, WAIT, partial_tx, go_rx);
    let net_sock = dir.join("net.sock");
    let start_net = || {
        vhost_net_daemon(&ns, &net_sock, &["--tap", TAP, "--mac", MAC])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut net = start_net();

    let devices = device_args(&blk_sock, TAG, fs_sock, &net_sock, MAC);
    let mut vm = Vm::boot(&linux, &dir, &script(), devices);

    // blk: both writers under way, then two kills, each while they write.
    assert!(
        poll_until(BOOT_TIMEOUT, || rounds(&vm.console, 1) >= 1
            && rounds(&vm.console, 2) >= 1),
        "the guest's writers do not start\n{}",
        vm.show(&[&blk])
    );
    for n in 1..=2 {
        let before = (rounds(&vm.console, 1), rounds(&vm.console, 2));
        stop_with_a_request_in_flight(&vm, &mut blk);
        kill_and_restart(&vm, "disk0", n, &mut blk, &blk_sock, start_blk);
        assert!(
            poll_until(WAIT, || rounds(&vm.console, 1) >= before.0 + 2
                && rounds(&vm.console, 2) >= before.1 + 2),
            "the writers do not go on after kill {n}\n{}",
            vm.show(&[&blk])
        );
    }
    std::fs::write(share.join("stop"), b"").unwrap();

    // net: the guest's stream waits half-read while the daemon dies twice.
    assert!(
        partial.recv_timeout(WAIT).is_ok(),
        "the guest's TCP stream does not arrive\n{}",
        vm.show(&[&net])
    );
    for n in 1..=2 {
        kill_and_restart(&vm, "net0", n, &mut net, &net_sock, start_net);
    }
    go.send(()).unwrap();
    let tcp = received
        .join()
        .unwrap()
        .expect("receiving the guest's TCP stream");

    // The guest ends its script and powers off; the VMM serves on.
    let (parsed, all) = vm.passed(&[&blk, &net, &fs.daemon]);
    assert!(
        !serial(&vm.console).lines().any(crash::write_failed),
        "{all}"
    );
    let kv = |k: &str| parsed.kv.get(k).map(String::as_str);

    // The image holds exactly each writer's last round.
    let last = [1, 2].map(|w| {
        let n: u64 = kv(&format!("rounds{w}"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no rounds{w}\n{all}"));
        assert!(n >= 5, "writer {w}: {n} rounds\n{all}");
        n
    });
    crash::check_last_rounds(&image, last).unwrap_or_else(|e| panic!("{e}\n{all}"));
    assert!(
        tcp == seq_from(1, MIB),
        "the TCP stream differs from the guest's MiB ({} bytes)",
        tcp.len()
    );
    // Each blk kill left a write in flight, which the new daemon did.
    let resumed = resumed_requests(&vm, &blk_sock);
    assert_eq!(resumed.len(), 2, "{all}");
    assert!(resumed.iter().all(|n| *n >= 1), "{resumed:?}\n{all}");
    println!("blk: requests in flight at each reconnect: {resumed:?}");
    println!(
        "net: RX buffers and TX frames at each reconnect: {:?}",
        resumed_requests(&vm, &net_sock)
    );
    assert_eq!(vm_counter(&vm.api, "disk0", "reconnects"), 2);
    assert_eq!(vm_counter(&vm.api, "net0", "reconnects"), 2);
    shutdown_vmm(&vm.api, &mut vm.vmm, WAIT, |_| all.clone());
}

#[test]
fn linux_guest_rides_out_a_killed_virtiofsd() {
    let (linux, _turn) = OurLinux::for_test("linux::reconnect (virtiofsd)");
    let dir = TempDir::new("vmm-linux-rec-fs").unwrap();
    let share = dir.join("share");
    let w = share.join("w");
    std::fs::create_dir_all(&w).unwrap();
    let src = seq_from(1, COPY);
    std::fs::write(w.join("src"), &src).unwrap();
    std::fs::write(w.join("held"), b"before\n").unwrap();
    let socket = dir.join("fs.sock");
    let state = dir.join("fs.state");
    let args = ["--tag", TAG, "--state-file", state.to_str().unwrap()];
    let start_fs = || virtiofsd(&share, &socket, &args).unwrap_or_else(|e| panic!("{e}"));
    let mut fs = start_fs();
    let devices: [OsString; 2] = [
        "--fs".into(),
        format!("tag={TAG},socket={}", socket.display()).into(),
    ];
    let mut vm = Vm::boot(&linux, &dir, &fs_script(), devices);

    for (n, at) in (1..).zip(FS_PAUSES) {
        let line = format!("copy: waiting at {at}");
        assert!(
            poll_until(BOOT_TIMEOUT, || serial(&vm.console).contains(&line)),
            "the guest's copy does not reach chunk {at}\n{}",
            vm.show(&[&fs])
        );
        kill_and_restart(&vm, "fs0", n, &mut fs, &socket, start_fs);
        std::fs::write(w.join(format!("go{at}")), b"").unwrap();
    }

    let (parsed, all) = vm.passed(&[&fs]);
    let kv = |k: &str| parsed.kv.get(k).map(String::as_str).unwrap_or_default();
    assert_eq!(std::fs::read(w.join("copy")).unwrap(), src, "{all}");
    assert!(!kv("copy_md5").is_empty(), "{all}");
    assert_eq!(kv("copy_md5"), kv("src_md5"), "{all}");
    assert_eq!(kv("held"), "before", "{all}");
    assert_eq!(
        std::fs::read(w.join("log")).unwrap(),
        b"start\nafter\n",
        "{all}"
    );
    assert_eq!(kv("cwd"), "/mnt/fs/w", "{all}");
    assert!(kv("listed").contains("copy"), "{all}");
    assert_eq!(std::fs::read(w.join("rel")).unwrap(), b"rel\n", "{all}");
    let log = fs.log_contents();
    assert!(
        log.contains("resuming the FUSE session of the state file"),
        "{all}"
    );
    assert_eq!(vm_counter(&vm.api, "fs0", "reconnects"), 2);
    assert_eq!(vm_counter(&vm.api, "fs0", "needs_reset"), 0);
    shutdown_vmm(&vm.api, &mut vm.vmm, WAIT, |_| all.clone());
}

#[test]
fn the_scripts_fit_on_the_command_line() {
    let linux = OurLinux::locate().unwrap_or_else(|e| panic!("{e}"));
    for s in [script(), fs_script()] {
        assert!(linux.cmdline(&s, TAG, SCRIPT_TIMEOUT_S).len() < 2048);
    }
}
