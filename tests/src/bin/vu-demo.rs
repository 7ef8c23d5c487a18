//! `vu-demo`: the main job end to end on built-in defaults.
//!
//! Creates a share, a disk image and a tap, starts a vhost-user backend
//! for each, drives them with the userspace driver (no VM), then boots
//! virtual machines on the same backends and prints what each guest did
//! with each device.
//!
//! The disk is served by our `vhost-blk-daemon`, the share by our
//! `virtiofsd` and the NIC by our `vhost-net-daemon` on a tap inside a
//! private network namespace (no frame leaves it), one process each for the
//! driver and then the VMs (they serve again after a frontend leaves). Our
//! `vmm` boots Linux first: Debian's kernel where KVM is hardware-accelerated,
//! the Linux kit's small kernel where `/dev/kvm` emulates guest kernel code
//! (our machines; `vu_driver::linux`), saying which and why; it also has
//! a vsock (a vhost-device-vsock the vmm runs) and echoes what the host
//! sends to port 1024 through the hybrid socket. Then Debian's
//! Linux under `qemu-system-x86_64 -accel tcg` uses the same backends as a
//! third-party frontend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vu_driver::blk::{BlkClient, BlkOptions};
use vu_driver::fixture::{create_sparse_image, Daemon, TempDir};
use vu_driver::fs::{FsClient, FsOptions};
use vu_driver::guest::{QemuGuest, ScriptTransport};
use vu_driver::net::frame::{parse_udp, UdpFrame};
use vu_driver::net::{NetClient, NetOptions, VirtioNetHdr};
use vu_driver::netns::NetNs;
use vu_driver::ours::{self, BlkDaemonOpts};
use vu_driver::vsock;

/// Run a VM with a virtio-fs share, a virtio-blk disk and a virtio-net NIC,
/// each served by its own vhost-user backend process.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Keep the share and the disk image here instead of a temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Disk image size in MiB.
    #[arg(long, default_value_t = 64)]
    disk_mib: u64,
    /// virtio-fs tag.
    #[arg(long, default_value = "kataShared")]
    tag: String,
    /// Skip booting the guest (driver only).
    #[arg(long)]
    no_vm: bool,
}

const HELLO: &str = "hello from the host\n";
const DRIVER_TEXT: &str = "written by the userspace driver over virtio-fs\n";
const DRIVER_SECTOR: u64 = 2048;
/// The tap's name, its host-side address and the guest's.
const TAP: &str = "vudemo0";
const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.2";
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x02, 0x02];

fn err<E: std::error::Error>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {}", vu_driver::error_chain(&e))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn driver_phase(
    share: &Path,
    image: &Path,
    blkd: &Daemon,
    vfs: &Daemon,
    tag: &str,
) -> Result<(), String> {
    println!("== userspace driver (no VM)");
    let mut blk =
        BlkClient::connect(blkd.socket(), &BlkOptions::default()).map_err(err("blk connect"))?;
    let cfg = blk.config().map_err(err("blk config"))?;
    let data = pattern(64 * 1024);
    blk.write(DRIVER_SECTOR, &data).map_err(err("blk write"))?;
    blk.flush().map_err(err("blk flush"))?;
    let back = blk
        .read(DRIVER_SECTOR, data.len() as u32)
        .map_err(err("blk read"))?;
    let id = blk.get_id().map_err(err("blk get-id"))?;
    println!(
        "blk: capacity {} sectors, id {id:?}; wrote 64 KiB at sector {DRIVER_SECTOR} and read it back: {}",
        cfg.capacity,
        if back == data { "match" } else { "MISMATCH" }
    );
    if back != data {
        return Err("blk: data read back differs".into());
    }
    drop(blk);

    let mut fs =
        FsClient::connect(vfs.socket(), FsOptions::default()).map_err(err("fs connect"))?;
    let hello = fs.lookup(1, "hello.txt").map_err(err("fs lookup"))?;
    let fh = fs
        .open(hello.nodeid, libc::O_RDONLY)
        .map_err(err("fs open"))?
        .fh;
    let text = fs.read(fh, hello.nodeid, 0, 4096).map_err(err("fs read"))?;
    fs.release(fh, hello.nodeid, 0).map_err(err("fs release"))?;
    let (e, o) = fs
        .create(1, "from-driver.txt", 0o644, libc::O_RDWR)
        .map_err(err("fs create"))?;
    fs.write(o.fh, e.nodeid, 0, DRIVER_TEXT.as_bytes())
        .map_err(err("fs write"))?;
    fs.release(o.fh, e.nodeid, libc::O_RDWR)
        .map_err(err("fs release"))?;
    let names: Vec<String> = fs
        .list_dir(1)
        .map_err(err("fs readdirplus"))?
        .into_iter()
        .map(|d| String::from_utf8_lossy(d.name()).into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    println!(
        "fs: tag {:?} (from config: {}), read hello.txt = {:?}, created from-driver.txt, READDIRPLUS lists {:?}",
        tag,
        fs.tag().unwrap_or("not offered"),
        String::from_utf8_lossy(&text),
        names
    );
    let on_host = std::fs::read_to_string(share.join("from-driver.txt")).unwrap_or_default();
    if on_host != DRIVER_TEXT || text != HELLO.as_bytes() {
        return Err("fs: host and driver disagree on the share's contents".into());
    }
    println!("fs: the host sees from-driver.txt with the same bytes");
    let _ = image;
    Ok(())
}

fn net_driver_phase(ns: &NetNs, netd: &Daemon) -> Result<(), String> {
    let mut net =
        NetClient::connect(netd.socket(), &NetOptions::default()).map_err(err("net connect"))?;
    let host = ns.packet_socket(TAP).map_err(err("host side of the tap"))?;
    let out = UdpFrame {
        src_mac: GUEST_MAC,
        ..UdpFrame::default()
    }
    .build(b"from the driver");
    net.send(0, &VirtioNetHdr::plain(), &out)
        .map_err(err("net send"))?;
    let seen = host
        .recv_matching(Duration::from_secs(5), |f| {
            parse_udp(f).is_some_and(|u| u.payload == b"from the driver")
        })
        .map_err(err("tap read"))?;
    let back = UdpFrame {
        dst_mac: GUEST_MAC,
        ..UdpFrame::default()
    }
    .build(b"from the host");
    host.send(&back).map_err(err("tap write"))?;
    // The host stack talks on the tap too (IPv6 neighbour discovery):
    // look for our frame among what arrives.
    let mut got = Vec::new();
    for _ in 0..32 {
        got = net
            .recv(0, Duration::from_secs(5))
            .map_err(err("net receive"))?
            .1;
        if got == back {
            break;
        }
    }
    println!(
        "net: MAC {}, a {}-byte UDP frame sent by the driver {} on tap {TAP}; one written on the tap reached the driver: {}",
        net.config()
            .mac
            .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
            .unwrap_or_default(),
        out.len(),
        if seen.as_deref() == Some(&out[..]) { "appeared" } else { "did NOT appear" },
        if got == back { "match" } else { "MISMATCH" }
    );
    if seen.as_deref() != Some(&out[..]) || got != back {
        return Err("net: frames did not cross the tap intact".into());
    }
    Ok(())
}

/// The three backends a VM's devices use, and the share's host side and tag.
struct Backends<'a> {
    share: &'a Path,
    blkd: &'a Daemon,
    vfs: &'a Daemon,
    netd: &'a Daemon,
    tag: &'a str,
}

/// Our VMM with the three backends. Where KVM cannot run Linux (an
/// instruction emulator, as on our machines), the freestanding test guest
/// drives each device instead; the demo says which and why.
fn vmm_phase(b: &Backends) -> Result<(), String> {
    println!("== VM: Linux under our vmm (KVM), each device through its backend process");
    let linux = vu_driver::linux::OurLinux::locate().map_err(err("Linux for our vmm"))?;
    println!("vmm: {} ({})", linux.why, linux.release);
    // Kata's agent channel too: a vsock whose vhost-device-vsock the vmm
    // runs; the guest echoes on port 1024 what the host sends through the
    // hybrid socket.
    let script = format!(
        "{}{}{}",
        vsock::guest_echo_start(),
        linux_script(),
        vsock::guest_echo_end()
    );
    let mut args = linux.vmm_args(&script, b.tag, 400);
    args.extend(vu_driver::vmm::device_args(
        b.blkd.socket(),
        b.tag,
        b.vfs.socket(),
        b.netd.socket(),
        "02:00:00:00:02:02",
    ));
    let hybrid = b.share.parent().unwrap_or(b.share).join("vsock.sock");
    args.extend([
        "--vsock".into(),
        format!("cid=3,socket={}", hybrid.display()).into(),
    ]);
    let payload = pattern(4096);
    let echoed = vsock::echo_in_background(
        b.share.join(vsock::READY_FILE),
        hybrid.clone(),
        vsock::AGENT_PORT,
        payload.clone(),
        Duration::from_secs(600),
    );
    let started = std::time::Instant::now();
    let run = vu_driver::vmm::run_vmm_with_vsock(args, Duration::from_secs(600));
    let console = vu_driver::guest::ConsoleParser::parse(&run.stdout);
    print_kv(&console.kv);
    let passed = console
        .result
        .as_ref()
        .is_some_and(|r| r.status == vu_driver::guest::GuestStatus::Pass && r.exit_code == 0);
    if !passed || run.code() != Some(0) {
        return Err(format!(
            "Linux under our vmm did not pass ({:?}):\n{}{}",
            run.status, run.stdout, run.stderr
        ));
    }
    check_linux(b.share, &console.kv)?;
    let echoed = echoed
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "vsock: the host's connection did not finish".to_string())?
        .map_err(|e| format!("vsock: {e}"))?;
    if echoed.bytes != payload {
        return Err("vsock: the guest's echo differs from what the host sent".into());
    }
    println!(
        "host: CONNECT {} on {} answered {:?}; {} bytes echoed by the guest (cid {})",
        vsock::AGENT_PORT,
        hybrid.display(),
        echoed.reply.trim_end(),
        echoed.bytes.len(),
        console.kv.get("vsock_cid").map_or("?", String::as_str)
    );
    println!(
        "host: the guest powered off and our vmm exited 0 after {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Prints what the guest's script reported.
fn print_kv(kv: &BTreeMap<String, String>) {
    for (k, v) in kv {
        println!("guest: {k} = {v}");
    }
}

/// What the host checks after [`linux_script`] ran, under either frontend,
/// in the values `kv` the script reported.
fn check_linux(share: &Path, kv: &BTreeMap<String, String>) -> Result<(), String> {
    let kv = |k: &str| kv.get(k).map(String::as_str);
    let driver_md5 = md5_hex(&pattern(64 * 1024));
    if kv("disk_driver_md5") != Some(driver_md5.as_str()) {
        return Err("guest: the driver's disk pattern has a different checksum in the VM".into());
    }
    if kv("net_ping") != Some("3 packets received") {
        return Err(format!(
            "guest: ping {HOST_IP} over vhost-net-daemon: {:?}",
            kv("net_ping")
        ));
    }
    if kv("disk_write_readback") != Some("ok") {
        return Err("guest: writing /dev/vda and reading it back failed".into());
    }
    let from_guest = std::fs::read_to_string(share.join("from-guest.txt")).unwrap_or_default();
    println!(
        "host: from-guest.txt on the share says {:?}; the guest saw the driver's disk data (md5 match)",
        from_guest.trim_end(),
    );
    Ok(())
}

/// What Debian's Linux does with each device, under either frontend.
fn linux_script() -> String {
    format!(
        r#"set -e
ip addr add {GUEST_IP}/24 dev eth0
ip link set eth0 up
vutest-kv net_ping "$(ping -c 3 -W 5 {HOST_IP} | grep -o '[0-9]* packets received')"
vutest-kv fs_files "$(ls "$VUTEST_FS" | tr '\n' ' ')"
vutest-kv fs_hello "$(cat "$VUTEST_FS/hello.txt")"
vutest-kv fs_driver_file "$(cat "$VUTEST_FS/from-driver.txt")"
echo "written by Linux $(uname -r)" > "$VUTEST_FS/from-guest.txt"
vutest-kv disk_bytes "$(( $(cat /sys/block/vda/size) * 512 ))"
vutest-kv disk_driver_md5 "$(dd if=/dev/vda bs=512 skip={DRIVER_SECTOR} count=128 2>/dev/null | md5sum | cut -d' ' -f1)"
seq 100000 | head -c 262144 >/tmp/p
dd if=/tmp/p of=/dev/vda bs=4096 seek=4096 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/r bs=4096 skip=4096 count=64 iflag=direct 2>/dev/null
cmp /tmp/p /tmp/r
vutest-kv disk_write_readback ok
"#
    )
}

fn vm_phase(b: &Backends) -> Result<(), String> {
    println!("== VM: Debian's Linux under QEMU TCG (a third-party frontend) on the same backends");
    let script = linux_script();
    let out = QemuGuest::locate()
        .map_err(err("guest kit"))?
        .fs(b.vfs.socket(), b.tag)
        .blk(b.blkd.socket())
        .net_vhost_user(b.netd.socket())
        .memory_mib(512)
        .script(&script)
        .script_transport(ScriptTransport::Cmdline)
        .timeout(Duration::from_secs(300))
        .run()
        .map_err(err("guest"))?;
    print_kv(&out.kv);
    out.ensure_pass().map_err(err("guest script"))?;
    check_linux(b.share, &out.kv)?;
    println!("host: QEMU's guest ran {:.1?}", out.duration);
    Ok(())
}

/// md5 via coreutils (what the guest's script uses), so the demo needs no
/// hashing crate; empty if md5sum fails, which then fails the comparison.
fn md5_hex(data: &[u8]) -> String {
    vu_driver::image::digest_hex("md5sum", data).unwrap_or_default()
}

fn run(args: Args) -> Result<(), String> {
    let tmp;
    let dir = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(err("work dir"))?;
            d.clone()
        }
        None => {
            tmp = TempDir::new("vu-demo").map_err(err("temporary directory"))?;
            tmp.path().to_owned()
        }
    };
    let share = dir.join("share");
    std::fs::create_dir_all(&share).map_err(err("share"))?;
    std::fs::write(share.join("hello.txt"), HELLO).map_err(err("share/hello.txt"))?;
    let image = dir.join("disk.img");
    create_sparse_image(&image, args.disk_mib << 20).map_err(err("disk image"))?;
    println!(
        "share: {} (tag {})\ndisk:  {} ({} MiB)",
        share.display(),
        args.tag,
        image.display(),
        args.disk_mib
    );
    let blkd = ours::vhost_blk_daemon(&image, &dir.join("blk.sock"), &BlkDaemonOpts::default())
        .map_err(err("start vhost-blk-daemon"))?;
    println!(
        "blk backend: vhost-blk-daemon pid {} on {} (serves the driver, then the VM)",
        blkd.pid(),
        blkd.socket().display()
    );
    let vfs = ours::virtiofsd(&share, &dir.join("fs.sock"), &["--tag", &args.tag])
        .map_err(err("start virtiofsd"))?;
    println!(
        "fs backend:  virtiofsd pid {} on {} (sandboxed; serves the driver, then the VM)",
        vfs.pid(),
        vfs.socket().display()
    );
    let ns = NetNs::new("vu-demo").map_err(err("network namespace"))?;
    ns.add_tap(TAP, false, Some(&format!("{HOST_IP}/24")))
        .map_err(err("tap"))?;
    let netd = ours::vhost_net_daemon(
        &ns,
        &dir.join("net.sock"),
        &["--tap", TAP, "--mac", "02:00:00:00:02:02"],
    )
    .map_err(err("start vhost-net-daemon"))?;
    println!(
        "net backend: vhost-net-daemon pid {} on {} (tap {TAP}, {HOST_IP}/24, in network namespace {})",
        netd.pid(),
        netd.socket().display(),
        ns.name()
    );
    driver_phase(&share, &image, &blkd, &vfs, &args.tag)?;
    net_driver_phase(&ns, &netd)?;
    if !args.no_vm {
        let backends = Backends {
            share: &share,
            blkd: &blkd,
            vfs: &vfs,
            netd: &netd,
            tag: &args.tag,
        };
        vmm_phase(&backends)?;
        vm_phase(&backends)?;
    }
    println!("== done: every device answered through its own backend process");
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vu-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
