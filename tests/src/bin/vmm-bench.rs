//! `vmm-bench`: how fast our VMM starts, and what it costs in memory, side
//! by side with `qemu-system-x86_64`, both booting the freestanding test
//! guest (`tests/guest-fw`, a PVH ELF) with the same three vhost-user
//! devices served by our daemons (vhost-blk-daemon on an image, virtiofsd
//! on a share, vhost-net-daemon on a tap in a private network namespace:
//! needs root).
//!
//! ```text
//! cargo build --release --workspace --bins && target/release/vmm-bench --runs 10
//! ```
//!
//! Every time is measured from outside, from just before the `spawn` of
//! the VMM process (fork + exec included) to the arrival of a line on its
//! pipes:
//! - guest entry: the test guest's first debug-port line (`guest-fw: entry`
//!   on port 0x402; our VMM logs it as `debugcon at ..`, QEMU writes it to
//!   an `isa-debugcon` chardev on its stderr). For our VMM, also the
//!   `guest wrote 0x01 to port 0x80` log line (the guest's first
//!   instruction that exits), and the time that line states itself, which
//!   runs from the VMM's `main()`, not from exec;
//! - devices done: the guest's `virtio: N device(s)` serial line, printed
//!   once it has driven every device (blk sector write and read, FUSE
//!   INIT..READ, one frame out);
//! - exit: the process ended (the guest powered off).
//!
//! Memory overhead is measured in separate runs (so the timings do not
//! include it): at the `virtio:` line the process is stopped (SIGSTOP),
//! `/proc/PID/smaps` is read, and it continues. Overhead = the sum of `Rss`
//! over every mapping except guest RAM (the `/dev/shm` file both VMMs map);
//! `VmRSS` is shown too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use vu_driver::fixture::{create_sparse_image, find_binary, Daemon, TempDir};
use vu_driver::fw_qemu::FwQemu;
use vu_driver::netns::NetNs;
use vu_driver::ours::{
    project_binary, vhost_blk_daemon, vhost_net_daemon, virtiofsd, BlkDaemonOpts,
};
use vu_driver::vmm::test_guest;

/// Start-up time and memory of our VMM vs QEMU with three vhost-user devices.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Runs per VMM for the timings (alternating), and again for memory.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// QEMU's accelerator: kvm, tcg, or auto (kvm if one boot with it
    /// works, else tcg).
    #[arg(long, default_value = "auto")]
    qemu_accel: String,
    /// The test guest ELF (default: build tests/guest-fw).
    #[arg(long)]
    guest: Option<PathBuf>,
    /// Guest RAM in MiB, for both.
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// Leave QEMU out.
    #[arg(long)]
    no_qemu: bool,
    /// How long one boot may take.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
}

const TAP: &str = "vmmbench0";
const MAC: &str = "52:54:00:12:34:56";
const TAG: &str = "kataShared";
const DEVICES_LINE: &str = "virtio: ";
const ENTRY_LINE: &str = "guest-fw: entry";
const POST_LINE: &str = "guest wrote 0x01 to port 0x80 at ";

/// The three daemons and what they serve.
struct Backends {
    _dir: TempDir,
    _ns: NetNs,
    _daemons: Vec<Daemon>,
    blk: PathBuf,
    fs: PathBuf,
    net: PathBuf,
}

fn backends() -> Result<Backends, String> {
    let dir = TempDir::new("vmm-bench").map_err(|e| e.to_string())?;
    let image = dir.join("disk.img");
    create_sparse_image(&image, 16 << 20).map_err(|e| e.to_string())?;
    let blk = dir.join("blk.sock");
    let b = vhost_blk_daemon(&image, &blk, &BlkDaemonOpts::default()).map_err(|e| e.to_string())?;
    let share = dir.join("share");
    std::fs::create_dir_all(&share).map_err(|e| e.to_string())?;
    std::fs::write(share.join("hello.txt"), "hello from the host\n").map_err(|e| e.to_string())?;
    let fs = dir.join("fs.sock");
    let f = virtiofsd(&share, &fs, &["--tag", TAG]).map_err(|e| e.to_string())?;
    let ns = NetNs::new("vmmbench").map_err(|e| format!("{e} (the net device needs root)"))?;
    ns.add_tap(TAP, false, Some("10.0.8.1/24"))
        .map_err(|e| e.to_string())?;
    let net = dir.join("net.sock");
    let n =
        vhost_net_daemon(&ns, &net, &["--tap", TAP, "--mac", MAC]).map_err(|e| e.to_string())?;
    Ok(Backends {
        _dir: dir,
        _ns: ns,
        _daemons: vec![b, f, n],
        blk,
        fs,
        net,
    })
}

/// One boot, as seen from outside.
#[derive(Debug, Default, Clone)]
struct Run {
    /// exec -> the guest's debug-port entry line.
    entry: Option<Duration>,
    /// exec -> the port-0x80 log line (our VMM only).
    post: Option<Duration>,
    /// What that line says: main() -> port 0x80.
    post_internal: Option<Duration>,
    /// exec -> `virtio: N device(s)`.
    devices: Option<Duration>,
    /// exec -> the process ended.
    exit: Option<Duration>,
    /// How many devices the guest drove.
    device_count: Option<u32>,
    /// Sum of Rss outside guest RAM, and VmRSS, in KiB (memory runs).
    overhead_kib: Option<u64>,
    vm_rss_kib: Option<u64>,
    ok: bool,
    log: String,
}

/// Which stream a line came from.
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    Out,
    Err,
}

fn pump(
    r: impl std::io::Read + Send + 'static,
    s: Stream,
    tx: std::sync::mpsc::Sender<(Instant, Stream, String)>,
) {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if tx.send((Instant::now(), s, line)).is_err() {
                break;
            }
            buf.clear();
        }
    });
}

/// `virtio: 3 device(s)` -> 3.
fn device_count(line: &str) -> Option<u32> {
    line.strip_prefix(DEVICES_LINE)?
        .strip_suffix(" device(s)")?
        .parse()
        .ok()
}

/// `... guest wrote 0x01 to port 0x80 at 12.3 ms` -> 12.3 ms.
fn post_time(line: &str) -> Option<Duration> {
    let rest = &line[line.find(POST_LINE)? + POST_LINE.len()..];
    let ms: f64 = rest.strip_suffix(" ms")?.trim().parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1000.0))
}

/// Rss outside guest RAM (mappings of `/dev/shm` files) and VmRSS, in KiB.
fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut total = 0;
    let mut guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path].
            let path = line.split_whitespace().nth(5).unwrap_or_default();
            guest = path.starts_with("/dev/shm/");
        } else if first == "Rss:" && !guest {
            total += words.next()?.parse::<u64>().ok()?;
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let vm_rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((total, vm_rss))
}

/// Spawns `cmd`, follows its output until it exits or `timeout` passes;
/// with `memory`, stops it at the devices line to read its memory.
fn boot(mut cmd: Command, timeout: Duration, memory: bool) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = Run::default();
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            run.log = format!("spawn: {e}");
            return run;
        }
    };
    let (tx, rx) = channel();
    pump(child.stdout.take().expect("piped"), Stream::Out, tx.clone());
    pump(child.stderr.take().expect("piped"), Stream::Err, tx);
    follow(&mut run, &rx, start, timeout, |r| {
        if memory {
            stopped_memory(r, child.id());
        }
    });
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    let status = child.wait();
    run.exit = Some(start.elapsed());
    // The rest of the output.
    for (at, s, line) in rx.iter() {
        note(&mut run, start, at, s, &line);
    }
    let success = status.as_ref().is_ok_and(|s| s.success());
    run.ok = run.ok && success;
    if !success {
        run.log.push_str(&format!("status {status:?}\n"));
    }
    run
}

/// Reads lines until both pipes close or the deadline; calls `at_devices`
/// once the devices line arrived.
fn follow(
    run: &mut Run,
    rx: &Receiver<(Instant, Stream, String)>,
    start: Instant,
    timeout: Duration,
    mut at_devices: impl FnMut(&mut Run),
) {
    let deadline = start + timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((at, s, line)) => {
                let had = run.devices.is_some();
                note(run, start, at, s, &line);
                if !had && run.devices.is_some() {
                    at_devices(run);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                run.log.push_str("timed out\n");
                run.ok = false;
                return;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn note(run: &mut Run, start: Instant, at: Instant, s: Stream, line: &str) {
    let t = at.duration_since(start);
    run.log.push_str(line);
    run.log.push('\n');
    if run.entry.is_none() && line.contains(ENTRY_LINE) {
        run.entry = Some(t);
    }
    if s == Stream::Err && run.post.is_none() {
        if let Some(internal) = post_time(line) {
            run.post = Some(t);
            run.post_internal = Some(internal);
        }
    }
    if run.devices.is_none() {
        if let Some(n) = device_count(line) {
            run.devices = Some(t);
            run.device_count = Some(n);
            run.ok = n == 3;
        }
    }
}

fn stopped_memory(run: &mut Run, pid: u32) {
    let pid_t = pid as libc::pid_t;
    // SAFETY: signals to our own child, which is not reaped yet.
    unsafe { libc::kill(pid_t, libc::SIGSTOP) };
    if let Some((over, rss)) = memory_of(pid) {
        run.overhead_kib = Some(over);
        run.vm_rss_kib = Some(rss);
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid_t, libc::SIGCONT) };
}

fn vmm_command(vmm: &Path, guest: &Path, b: &Backends, mib: u32) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(guest)
        .args(["--memory", &format!("size={mib}M"), "--serial", "stdio"])
        .arg("--disk")
        .arg(format!("socket={}", b.blk.display()))
        .arg("--fs")
        .arg(format!("tag={TAG},socket={}", b.fs.display()))
        .arg("--net")
        .arg(format!("socket={},mac={MAC}", b.net.display()));
    cmd
}

fn qemu_command(qemu: &Path, guest: &Path, b: &Backends, accel: &str) -> Command {
    let fw = FwQemu::new().blk(&b.blk).fs(&b.fs, TAG).net(&b.net, MAC);
    let mut cmd = Command::new(qemu);
    for a in fw.args(guest) {
        if a == "q35,accel=tcg" {
            cmd.arg(format!("q35,accel={accel}"));
        } else {
            cmd.arg(a);
        }
    }
    // The guest's port-0x402 lines on QEMU's stderr, like our VMM's log.
    cmd.args([
        "-chardev",
        "file,id=dbg,path=/dev/stderr",
        "-device",
        "isa-debugcon,iobase=0x402,chardev=dbg",
    ]);
    cmd
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len().checked_sub(1)? / 2).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

fn kib(k: Option<u64>) -> String {
    k.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// The medians of one VMM's runs, as table cells.
fn column(timed: &[Run], mem: &[Run]) -> Vec<String> {
    let t = |f: fn(&Run) -> Option<Duration>| ms(median(timed.iter().filter_map(f).collect()));
    let k = |f: fn(&Run) -> Option<u64>| {
        let mut v: Vec<u64> = mem.iter().filter_map(f).collect();
        v.sort_unstable();
        kib(v.get(v.len().saturating_sub(1) / 2).copied())
    };
    vec![
        t(|r| r.post),
        t(|r| r.post_internal),
        t(|r| r.entry),
        t(|r| r.devices),
        t(|r| r.exit),
        k(|r| r.overhead_kib),
        k(|r| r.vm_rss_kib),
        format!(
            "{}/{}",
            timed.iter().chain(mem).filter(|r| r.ok).count(),
            timed.len() + mem.len()
        ),
    ]
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<(), String> {
    let guest = match &args.guest {
        Some(g) => g.clone(),
        None => test_guest()?,
    };
    let vmm = project_binary("vmm").map_err(|e| e.to_string())?;
    let b = backends()?;
    let timeout = Duration::from_secs(args.timeout_s);
    let ours = || vmm_command(&vmm, &guest, &b, args.memory_mib);
    let qemu = if args.no_qemu {
        None
    } else {
        let bin = find_binary("qemu-system-x86_64").map_err(|e| e.to_string())?;
        let accel = match args.qemu_accel.as_str() {
            "auto" => {
                let probe = boot(qemu_command(&bin, &guest, &b, "kvm"), timeout, false);
                if probe.ok {
                    "kvm"
                } else {
                    eprintln!(
                        "vmm-bench: QEMU with accel=kvm did not boot the test guest; using tcg\n{}",
                        probe.log
                    );
                    "tcg"
                }
            }
            a => a,
        }
        .to_string();
        Some((bin, accel))
    };
    // QEMU's memory-backend-file has no size of its own beyond -m.
    if args.memory_mib != 256 && qemu.is_some() {
        eprintln!("vmm-bench: QEMU's test-guest command line has 256 MiB; --memory-mib only applies to ours");
    }
    let (mut ours_t, mut ours_m, mut qemu_t, mut qemu_m) = (vec![], vec![], vec![], vec![]);
    for memory in [false, true] {
        for _ in 0..args.runs {
            let r = boot(ours(), timeout, memory);
            if !r.ok {
                eprintln!("vmm-bench: a run of our vmm failed:\n{}", r.log);
            }
            if memory { &mut ours_m } else { &mut ours_t }.push(r);
            if let Some((bin, accel)) = &qemu {
                let r = boot(qemu_command(bin, &guest, &b, accel), timeout, memory);
                if !r.ok {
                    eprintln!("vmm-bench: a QEMU run failed:\n{}", r.log);
                }
                if memory { &mut qemu_m } else { &mut qemu_t }.push(r);
            }
        }
    }
    let rows = [
        "exec -> port 0x80 log line (first guest exit)",
        "  the VMM's own stamp: main() -> port 0x80",
        "exec -> guest entry (debugcon line)",
        "exec -> 3 devices driven (virtio: line)",
        "exec -> exit (guest powered off)",
        "RSS overhead (all but guest RAM)",
        "VmRSS (incl. touched guest RAM)",
        "runs ok",
    ];
    let ours_col = column(&ours_t, &ours_m);
    let qemu_col = qemu
        .as_ref()
        .map(|_| column(&qemu_t, &qemu_m))
        .unwrap_or_default();
    let qemu_name = qemu
        .as_ref()
        .map(|(_, a)| format!("qemu ({a})"))
        .unwrap_or_default();
    println!(
        "median of {} runs each; test guest, {} MiB, 1 vCPU, vhost-user blk + fs + net (our daemons)",
        args.runs, args.memory_mib
    );
    println!("{:<48} {:>12} {:>14}", "", "vmm", qemu_name);
    for (i, row) in rows.iter().enumerate() {
        println!(
            "{row:<48} {:>12} {:>14}",
            ours_col[i],
            qemu_col.get(i).map_or("", String::as_str)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_recognised() {
        assert_eq!(device_count("virtio: 3 device(s)"), Some(3));
        assert_eq!(device_count("virtio 00:01.0 blk: common"), None);
        assert_eq!(
            post_time("[2026 INFO ] guest wrote 0x01 to port 0x80 at 28.2 ms"),
            Some(Duration::from_secs_f64(0.0282))
        );
        assert_eq!(median(vec![]), None);
        let d = |n| Duration::from_millis(n);
        assert_eq!(median(vec![d(3), d(1), d(2), d(9)]), Some(d(2)));
    }
}
