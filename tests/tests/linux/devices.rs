//! A real Linux guest under OUR VMM, on every machine: Debian's kernel
//! where KVM is hardware-accelerated, the Linux kit's small kernel where
//! `/dev/kvm` is an instruction emulator ([`OurLinux::locate`]). One vCPU,
//! serial on stdout, and our three daemons: virtiofsd sharing a directory
//! as `kataShared`, vhost-blk-daemon on an image, and vhost-net-daemon on a
//! tap in a private network namespace with the host side at 10.0.7.1/24;
//! and Kata's agent channel: `--vsock cid=3,socket=PATH`, for which the
//! VMM runs rust-vmm's vhost-device-vsock itself.
//!
//! The guest's script (run by the kit's `/init`) reads a file of the share
//! and writes one; reads 1 MiB the host put on the disk and writes 1 MiB
//! the host then finds in the image; pings the host side and sends 1 MiB
//! over TCP to a listener the test runs in the namespace; reports its wall
//! clock (from our CMOS RTC) and whether the kernel complained about our
//! platform (timer wiring, ACPI, MSRs). Meanwhile the kit's `vsock-echo`
//! serves AF_VSOCK port 1024 (where kata-agent listens) and, once it
//! listens, creates a file in the share; the host then connects to the
//! hybrid socket, writes `CONNECT 1024\n`, reads `OK <port>\n` and gets its
//! bytes back, as Kata's shim reaches its agent. The script waits for that
//! connection to end and reports the guest's cid (`guest_cid` of the
//! device configuration, read through `/dev/vsock`). Then it powers off (ACPI S5) and the VMM must exit
//! 0, the hybrid socket gone with its daemon.
//!
//! The data the guest writes is made in user mode (`seq`), which runs
//! natively even on the emulator; /dev/urandom would cost ~29 s per MiB of
//! emulated kernel code. Needs root (namespace, tap), `scripts/setup.sh`
//! (the kits) and `cargo build --workspace --bins`; anything missing is a
//! failure.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vu_driver::fixture::{create_sparse_image, TempDir};
use vu_driver::guest::{ConsoleParser, GuestStatus};
use vu_driver::image;
use vu_driver::linux::{OurLinux, PLATFORM_COMPLAINTS};
use vu_driver::netns::NetNs;
use vu_driver::ours::{vhost_blk_daemon, vhost_net_daemon, virtiofsd_share, BlkDaemonOpts};
use vu_driver::process::Finished;
use vu_driver::vmm::{device_args, run_vmm_with_vsock};
use vu_driver::vsock::{self, AGENT_PORT};

const TAG: &str = "kataShared";
const TAP: &str = "vmmlin0";
const HOST_IP: &str = "10.0.7.1";
const GUEST_IP: &str = "10.0.7.2";
const TCP_PORT: u16 = 5555;
const MAC: &str = "52:54:00:12:34:70";
const SHARED_TEXT: &str = "hello from the host over virtio-fs";
/// The script's own limit (init kills it after this), below the VMM's.
const SCRIPT_TIMEOUT_S: u64 = 400;
/// Generous: the small kernel takes ~90 s on an idle emulating machine.
const VMM_TIMEOUT: Duration = Duration::from_secs(600);
const MIB: u64 = 1 << 20;
/// Where the host's pattern is (the guest reads it) and where the guest
/// writes its data (the host reads it), in 64 KiB blocks.
const HOST_BLOCK: u64 = 16;
const GUEST_BLOCK: u64 = 48;
/// The guest's wall clock may differ from the host's by this much.
const CLOCK_SLACK_S: u64 = 60;
/// The guest's vsock context id.
const VSOCK_CID: u64 = 3;
/// What the host sends through the vsock and must get back.
const VSOCK_BYTES: usize = 16 * 1024;

/// The guest's script (busybox sh); every check reports a value and a
/// failure exits non-zero with its own code.
fn script() -> String {
    format!(
        r#"set -e
{vsock_start}
test -n "$VUTEST_FS" || exit 10
vutest-kv release "$(uname -r)"
vutest-kv clock "$(date +%s)"
vutest-kv shared "$(cat "$VUTEST_FS/hello.txt")"
uname -r >"$VUTEST_FS/from-guest.txt"
vutest-kv disk_read "$(dd if=/dev/vda bs=64k skip={HOST_BLOCK} count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
seq 1000000 | head -c {MIB} >/tmp/w
dd if=/tmp/w of=/dev/vda bs=64k seek={GUEST_BLOCK} oflag=direct conv=notrunc,fsync 2>/dev/null || exit 11
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
vutest-kv mac "$(cat /sys/class/net/eth0/address)"
if ! ping -c 3 -i 0.2 -w 60 {HOST_IP} >/tmp/ping 2>&1; then cat /tmp/ping; exit 21; fi
vutest-kv ping_received "$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping)"
timeout 120 nc {HOST_IP} {TCP_PORT} </tmp/w || exit 22
c="$(dmesg | grep -E '{PLATFORM_COMPLAINTS}' | tr '\n' '|' || true)"
vutest-kv complaints "${{c:-none}}"
{vsock_end}"#,
        vsock_start = vsock::guest_echo_start(),
        vsock_end = vsock::guest_echo_end(),
    )
}

/// What `seq 1000000 | head -c 1048576` prints.
fn seq_mib() -> Vec<u8> {
    image::seq_from(1, MIB as usize)
}

fn show(run: &Finished) -> String {
    format!(
        "status {:?}\n--- stdout (console)\n{}--- stderr\n{}",
        run.status, run.stdout, run.stderr
    )
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Accepts one connection on `listener` on a thread, reads it until its
/// end or 1 MiB and closes it (busybox's small `nc` ends when the peer
/// does, not at the end of its input); the bytes arrive on the returned
/// channel.
fn receive_one(listener: TcpListener) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let got = listener.accept().and_then(|(conn, _)| {
            let mut data = Vec::new();
            conn.take(MIB).read_to_end(&mut data).map(|_| data)
        });
        let _ = tx.send(got);
    });
    rx
}

#[test]
fn linux_guest_uses_a_share_a_disk_and_a_nic() {
    let (linux, _turn) = OurLinux::for_test("linux::devices");
    let dir = TempDir::new("vmm-linux").unwrap();

    let fs = virtiofsd_share(dir.path(), TAG).unwrap_or_else(|e| panic!("{e}"));
    let (share, fs_sock) = (&fs.path, &fs.socket);
    std::fs::write(share.join("hello.txt"), format!("{SHARED_TEXT}\n")).unwrap();

    let image = dir.join("disk.img");
    create_sparse_image(&image, 64 * MIB).unwrap();
    let pattern = image::pattern(0x9e37_79b9, MIB as usize);
    image::write_at(&image, HOST_BLOCK * 64 * 1024, &pattern);
    let blk_sock = dir.join("blk.sock");
    let _blk = vhost_blk_daemon(&image, &blk_sock, &BlkDaemonOpts::default())
        .unwrap_or_else(|e| panic!("{e}"));

    let ns =
        NetNs::with_tap("vmmlin", TAP, &format!("{HOST_IP}/24")).unwrap_or_else(|e| panic!("{e}"));
    let listener = ns
        .listen_tcp(HOST_IP, TCP_PORT)
        .unwrap_or_else(|e| panic!("{e}"));
    let received = receive_one(listener);
    let net_sock = dir.join("net.sock");
    let _net = vhost_net_daemon(&ns, &net_sock, &["--tap", TAP, "--mac", MAC])
        .unwrap_or_else(|e| panic!("{e}"));

    let hybrid = dir.join("vsock.sock");
    let payload = image::pattern(0x5eed_0001, VSOCK_BYTES);
    let echoed = vsock::echo_in_background(
        share.join(vsock::READY_FILE),
        hybrid.clone(),
        AGENT_PORT,
        payload.clone(),
        VMM_TIMEOUT,
    );

    let mut args = linux.vmm_args(&script(), TAG, SCRIPT_TIMEOUT_S);
    args.extend(["--cpus".into(), "boot=1".into()]);
    args.extend(device_args(&blk_sock, TAG, fs_sock, &net_sock, MAC));
    args.extend([
        "--vsock".into(),
        format!("cid={VSOCK_CID},socket={}", hybrid.display()).into(),
    ]);
    let started = now_s();
    let run = run_vmm_with_vsock(args, VMM_TIMEOUT);
    let ended = now_s();

    let console = ConsoleParser::parse(&run.stdout);
    assert!(console.errors.is_empty(), "{}", show(&run));
    let result = console
        .result
        .as_ref()
        .unwrap_or_else(|| panic!("no VUTEST-RESULT line\n{}", show(&run)));
    assert_eq!(
        (result.status, result.exit_code),
        (GuestStatus::Pass, 0),
        "{}",
        show(&run)
    );
    let kv = |k: &str| console.kv.get(k).map(String::as_str);
    assert_eq!(
        kv("release"),
        Some(linux.release.as_str()),
        "{}",
        show(&run)
    );
    // virtio-fs both ways.
    assert_eq!(kv("shared"), Some(SHARED_TEXT), "{}", show(&run));
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).ok(),
        Some(format!("{}\n", linux.release))
    );
    // virtio-blk both ways: the guest read the host's MiB, and its own MiB
    // is in the image where it put it.
    let guest_data = seq_mib();
    let pattern_sha = image::sha256_hex(&pattern).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kv("disk_read"), Some(pattern_sha.as_str()));
    assert!(
        read_at(&image, GUEST_BLOCK * 64 * 1024, MIB) == guest_data,
        "the image does not hold the guest's MiB at block {GUEST_BLOCK}\n{}",
        show(&run)
    );
    // virtio-net: the MAC, ICMP, and a MiB over TCP.
    assert_eq!(kv("mac"), Some(MAC), "{}", show(&run));
    assert_eq!(kv("ping_received"), Some("3"), "{}", show(&run));
    let tcp = received
        .recv_timeout(Duration::from_secs(30))
        .expect("the listener thread did not finish")
        .expect("receiving the guest's TCP stream");
    assert!(
        tcp == guest_data,
        "the TCP stream differs from the guest's MiB ({} bytes)",
        tcp.len()
    );
    // The platform: the CMOS clock and the timer wiring Linux checks.
    let clock: u64 = kv("clock")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no clock\n{}", show(&run)));
    assert!(
        clock + CLOCK_SLACK_S >= started && clock <= ended + CLOCK_SLACK_S,
        "guest clock {clock}, host {started}..{ended}"
    );
    assert_eq!(kv("complaints"), Some("none"), "{}", show(&run));
    // The agent channel: hybrid vsock to the guest's port and back.
    let echoed = echoed
        .recv_timeout(Duration::from_secs(30))
        .expect("the vsock thread did not finish")
        .unwrap_or_else(|e| panic!("vsock: {e}\n{}", show(&run)));
    let reply = &echoed.reply;
    assert!(
        reply.starts_with("OK ") && reply.ends_with('\n'),
        "CONNECT {AGENT_PORT} got {reply:?}"
    );
    assert!(
        echoed.bytes == payload,
        "the vsock echo differs from what the host sent"
    );
    // The cid the guest has is the one the device's configuration gave.
    assert_eq!(
        kv("vsock_cid"),
        Some(VSOCK_CID.to_string().as_str()),
        "{}",
        show(&run)
    );
    assert!(
        !hybrid.exists(),
        "{} is left behind after the VMM exited",
        hybrid.display()
    );
    assert!(run.stderr.contains("guest powered off"), "{}", show(&run));
    assert_eq!(run.code(), Some(0), "{}", show(&run));
}

#[test]
fn the_script_fits_on_the_command_line() {
    // x86's COMMAND_LINE_SIZE is 2048; the VMM accepts up to 4096.
    let linux = OurLinux::locate().unwrap_or_else(|e| panic!("{e}"));
    let c = linux.cmdline(&script(), TAG, SCRIPT_TIMEOUT_S);
    assert!(c.len() < 2048, "{} bytes", c.len());
    assert!(c.starts_with("console=ttyS0 "));
    assert!(c.contains(&format!("vutest.fs={TAG}")));
}

#[test]
fn the_host_knows_what_the_guest_writes() {
    let data = seq_mib();
    assert_eq!(data.len() as u64, MIB);
    assert!(data.starts_with(b"1\n2\n3\n"));
    // 1..=9 take 18 bytes, 10..=99 270, 100..=999 3600, ...
    assert_eq!(&data[18..21], b"10\n");
    assert_ne!(image::pattern(0x9e37_79b9, MIB as usize), data);
}
