//! `vmm-bench`: how fast our VMM starts, and what it costs in memory, side
//! by side with `qemu-system-x86_64`, with the same three vhost-user
//! devices served by our daemons (vhost-blk-daemon on an image, virtiofsd
//! on a share, vhost-net-daemon on a tap in a private network namespace:
//! needs root). Two guests (`--guest`):
//!
//! - `fw` (the default): the freestanding test guest (`tests/guest-fw`, a
//!   PVH ELF);
//! - `linux`: the Linux kit (`target/guest-kit/linux`, from
//!   `scripts/setup.sh`): the same `vmlinux` (PVH ELF), `initrd.cpio` and
//!   kernel command line for both, our vmm on KVM and QEMU under TCG.
//!
//! ```text
//! cargo build --release --workspace --bins && target/release/vmm-bench --runs 10
//! target/release/vmm-bench --guest linux --runs 3
//! ```
//!
//! Every time is measured from outside, from just before the `spawn` of
//! the VMM process (fork + exec included) to the arrival of output on its
//! pipes.
//!
//! With the test guest:
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
//! `RssAnon` and `VmRSS` are shown too.
//!
//! With Linux, the kit's command line loses `quiet` and gains
//! `printk.time=1`, so the kernel's messages reach the serial console, and
//! every byte of the console is stamped with its arrival (a marker may
//! share a line with firmware output: QEMU's SeaBIOS prints
//! `Booting from ROM..` without a line break). The phases: the first
//! console byte; `Linux version` (the first kernel message, which arrives
//! when the serial console registers and replays the log); `Run /init as
//! init process` (and the kernel's own printk stamp on it);
//! `VUTEST-BEGIN` (`/init` has mounted the share and starts the script);
//! the `VUTEST-RESULT` line; the process's exit. The script is tiny (a
//! line, the share's file, the disk's and the NIC's presence). Memory is
//! read in the same runs, stopped at the script's first line (a few
//! milliseconds, inside the power-off time).
//!
//! Runs alternate between the two VMMs; the table shows medians.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
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
    /// Which guest both VMMs boot.
    #[arg(long, value_enum, default_value_t = Guest::Fw)]
    guest: Guest,
    /// Runs per VMM (alternating); with the test guest, as many again for
    /// memory.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// QEMU's accelerator: kvm, tcg, or auto (test guest: kvm if one boot
    /// with it works, else tcg; Linux: tcg).
    #[arg(long, default_value = "auto")]
    qemu_accel: String,
    /// The test guest ELF (default: build tests/guest-fw).
    #[arg(long)]
    fw_elf: Option<PathBuf>,
    /// Guest RAM in MiB of our VMM (QEMU's command line has 256).
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    /// Leave QEMU out.
    #[arg(long)]
    no_qemu: bool,
    /// How long one boot may take [default: 120 for the test guest, 900
    /// for Linux].
    #[arg(long)]
    timeout_s: Option<u64>,
}

/// The guest of `--guest`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Guest {
    /// The freestanding test guest (tests/guest-fw).
    Fw,
    /// The Linux kit's vmlinux + initrd.cpio (target/guest-kit/linux).
    Linux,
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

impl Backends {
    /// Our VMM's options for the three devices.
    fn vmm_args(&self) -> [OsString; 6] {
        vu_driver::vmm::device_args(&self.blk, TAG, &self.fs, &self.net, MAC)
    }
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
    /// The process's memory at the devices line (memory runs).
    memory: Option<Memory>,
    ok: bool,
    log: String,
}

/// Which stream a line came from.
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    Out,
    Err,
}

fn pump(r: Box<dyn std::io::Read + Send>, s: Stream, tx: Sender<Arrival<String>>) {
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

/// A process's memory, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Memory {
    /// The sum of `Rss` over every mapping but guest RAM.
    overhead: u64,
    /// `RssAnon`: private anonymous memory (guest RAM is shared memory).
    anon: u64,
    /// `VmRSS`, touched guest RAM included.
    vm_rss: u64,
}

/// The memory of process `pid`.
fn memory_of(pid: u32) -> Option<Memory> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Memory {
        overhead: overhead_kib(&smaps)?,
        anon: status_kib(&status, "RssAnon:")?,
        vm_rss: status_kib(&status, "VmRSS:")?,
    })
}

/// The sum of `Rss` in `smaps` outside guest RAM (mappings of `/dev/shm`
/// files), in KiB.
fn overhead_kib(smaps: &str) -> Option<u64> {
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
    Some(total)
}

/// The value of `/proc/PID/status` field `key` (`VmRSS:`), in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What a pump thread sends: when, from which stream, what it read.
type Arrival<T> = (Instant, Stream, T);

/// Spawns `cmd` with stdin closed and stdout and stderr read by `pump`
/// threads: the child, the instant just before the spawn and the receiver
/// of both streams, or the error as a log line.
fn spawn_pumped<T>(
    mut cmd: Command,
    pump: fn(Box<dyn std::io::Read + Send>, Stream, Sender<Arrival<T>>),
) -> Result<(Child, Instant, Receiver<Arrival<T>>), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let (tx, rx) = channel();
    pump(
        Box::new(child.stdout.take().expect("piped")),
        Stream::Out,
        tx.clone(),
    );
    pump(
        Box::new(child.stderr.take().expect("piped")),
        Stream::Err,
        tx,
    );
    Ok((child, start, rx))
}

/// Kills `child` unless it has exited, then reaps it.
fn reap(child: &mut Child) -> std::io::Result<ExitStatus> {
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    child.wait()
}

/// Spawns `cmd`, follows its output until it exits or `timeout` passes;
/// with `memory`, stops it at the devices line to read its memory.
fn boot(cmd: Command, timeout: Duration, memory: bool) -> Run {
    let (mut child, start, rx) = match spawn_pumped(cmd, pump) {
        Ok(spawned) => spawned,
        Err(log) => {
            return Run {
                log,
                ..Run::default()
            }
        }
    };
    let mut run = Run::default();
    follow(&mut run, &rx, start, timeout, |r| {
        if memory {
            stopped_memory(r, child.id());
        }
    });
    let status = reap(&mut child);
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
    rx: &Receiver<Arrival<String>>,
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
    run.memory = memory_stopped(pid);
}

/// The memory of our child `pid`, read while it is stopped.
fn memory_stopped(pid: u32) -> Option<Memory> {
    let pid_t = pid as libc::pid_t;
    // SAFETY: signals to our own child, which is not reaped yet.
    unsafe { libc::kill(pid_t, libc::SIGSTOP) };
    let memory = memory_of(pid);
    // SAFETY: as above.
    unsafe { libc::kill(pid_t, libc::SIGCONT) };
    memory
}

fn vmm_command(vmm: &Path, guest: &Path, b: &Backends, mib: u32) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("--no-reboot")
        .arg("--kernel")
        .arg(guest)
        .args(["--memory", &format!("size={mib}M"), "--serial", "stdio"])
        .args(b.vmm_args());
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

/// The median of the values (the lower one of an even count).
fn median_kib(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len().checked_sub(1)? / 2).copied()
}

/// The memory rows' cells (overhead, RssAnon, VmRSS): the medians of
/// what the runs measured.
fn memory_cells<'a>(measured: impl Iterator<Item = &'a Memory> + Clone) -> [String; 3] {
    let k = |f: fn(&Memory) -> u64| kib(median_kib(measured.clone().map(f).collect()));
    [k(|m| m.overhead), k(|m| m.anon), k(|m| m.vm_rss)]
}

/// Prints the table: one row a line, our VMM's column and QEMU's (empty
/// without QEMU), each `width` wide.
fn print_table(rows: &[&str], heads: [&str; 2], ours: &[String], qemu: &[String], width: usize) {
    let [vmm, qemu_head] = heads;
    println!("{:<48} {vmm:>width$} {qemu_head:>width$}", "");
    for (i, row) in rows.iter().enumerate() {
        let q = qemu.get(i).map_or("", String::as_str);
        println!("{row:<48} {:>width$} {q:>width$}", ours[i]);
    }
}

/// The medians of one VMM's runs, as table cells.
fn column(timed: &[Run], mem: &[Run]) -> Vec<String> {
    let t = |f: fn(&Run) -> Option<Duration>| ms(median(timed.iter().filter_map(f).collect()));
    let mut cells = vec![
        t(|r| r.post),
        t(|r| r.post_internal),
        t(|r| r.entry),
        t(|r| r.devices),
        t(|r| r.exit),
    ];
    cells.extend(memory_cells(mem.iter().filter_map(|r| r.memory.as_ref())));
    cells.push(format!(
        "{}/{}",
        timed.iter().chain(mem).filter(|r| r.ok).count(),
        timed.len() + mem.len()
    ));
    cells
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.guest {
        Guest::Fw => bench(&args),
        Guest::Linux => linux::bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<(), String> {
    let guest = match &args.fw_elf {
        Some(g) => g.clone(),
        None => test_guest()?,
    };
    let vmm = project_binary("vmm").map_err(|e| e.to_string())?;
    let b = backends()?;
    let timeout = Duration::from_secs(args.timeout_s.unwrap_or(120));
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
        "RssAnon",
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
    print_table(&rows, ["vmm", &qemu_name], &ours_col, &qemu_col, 14);
    Ok(())
}

/// `--guest linux`: the Linux kit under both VMMs.
mod linux {
    use std::io::Read;

    use vu_driver::guest::{ConsoleParser, GuestStatus};
    use vu_driver::linux::OurLinux;

    use super::*;

    /// The script's first line: memory is read when it arrives.
    pub(super) const READY: &str = "vmm-bench: script running";
    /// The kernel's message just before it executes `/init`.
    pub(super) const RUN_INIT: &str = "Run /init as init process";
    /// `/init` has mounted the share and starts the script.
    pub(super) const BEGIN: &str = "VUTEST-BEGIN";
    /// `/init`'s verdict, just before power-off.
    pub(super) const RESULT: &str = "VUTEST-RESULT: ";
    /// The first kernel message.
    pub(super) const LINUX_VERSION: &str = "Linux version ";
    /// The script's own limit, in the guest (init kills it after this).
    const SCRIPT_TIMEOUT_S: u64 = 120;
    const SHARED_TEXT: &str = "hello from the host";

    /// The guest's script: one line at once, then the three devices used
    /// or seen, as `VUTEST-KV` lines (echo, not `vutest-kv`: every exec is
    /// emulated kernel work).
    fn script() -> String {
        format!(
            r#"echo "{READY}"
echo "VUTEST-KV shared=$(cat "$VUTEST_FS/hello.txt")"
test -b /dev/vda && echo "VUTEST-KV disk=vda"
echo "VUTEST-KV mac=$(cat /sys/class/net/eth0/address)"
"#
        )
    }

    /// The kit's command line for the bench: without `quiet` (the kernel's
    /// messages are the phases) and with `printk.time=1` (their stamps).
    pub(super) fn bench_cmdline(cmdline: &str) -> String {
        let mut words: Vec<&str> = cmdline
            .split_whitespace()
            .filter(|w| *w != "quiet" && !w.starts_with("printk.time="))
            .collect();
        words.push("printk.time=1");
        words.join(" ")
    }

    /// One stream's bytes, each chunk stamped with its arrival.
    #[derive(Debug, Default, Clone)]
    pub(super) struct Arrivals {
        pub(super) bytes: Vec<u8>,
        /// (offset of the chunk's first byte, its arrival after exec).
        chunks: Vec<(usize, Duration)>,
    }

    impl Arrivals {
        pub(super) fn push(&mut self, at: Duration, data: &[u8]) {
            if !data.is_empty() {
                self.chunks.push((self.bytes.len(), at));
                self.bytes.extend_from_slice(data);
            }
        }

        /// When the byte at `offset` arrived.
        pub(super) fn at(&self, offset: usize) -> Option<Duration> {
            if offset >= self.bytes.len() {
                return None;
            }
            let i = self.chunks.partition_point(|(o, _)| *o <= offset);
            Some(self.chunks[i.checked_sub(1)?].1)
        }

        /// The offset of the first `needle` at or after `from`.
        pub(super) fn find_from(&self, needle: &str, from: usize) -> Option<usize> {
            let n = needle.as_bytes();
            let hay = self.bytes.get(from..)?;
            hay.windows(n.len()).position(|w| w == n).map(|p| from + p)
        }

        /// When the first `needle` began to arrive.
        pub(super) fn when(&self, needle: &str) -> Option<Duration> {
            self.at(self.find_from(needle, 0)?)
        }

        /// The printk stamp of the line holding the first `needle`.
        pub(super) fn stamp_of(&self, needle: &str) -> Option<Duration> {
            let at = self.find_from(needle, 0)?;
            let line_start = self.bytes[..at]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1);
            printk_stamp(&String::from_utf8_lossy(&self.bytes[line_start..at]))
        }

        pub(super) fn text(&self) -> String {
            String::from_utf8_lossy(&self.bytes).into_owned()
        }
    }

    /// The stamp of a kernel message from the text before it on its line:
    /// `[   12.345678] ` -> 12.345678 s (firmware output may precede it).
    pub(super) fn printk_stamp(before: &str) -> Option<Duration> {
        let open = before.rfind('[')?;
        let (stamp, rest) = before[open + 1..].split_once(']')?;
        if !rest.trim().is_empty() {
            return None;
        }
        let secs: f64 = stamp.trim().parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
    }

    /// One Linux boot, as seen from outside; times from exec.
    #[derive(Debug, Default, Clone)]
    pub(super) struct Boot {
        first_byte: Option<Duration>,
        linux_version: Option<Duration>,
        run_init: Option<Duration>,
        /// The kernel's own stamp on its `Run /init` message.
        run_init_stamp: Option<Duration>,
        begin: Option<Duration>,
        result: Option<Duration>,
        exit: Option<Duration>,
        /// At the script's first line.
        memory: Option<Memory>,
        ok: bool,
        /// Why not ok, and what the process printed.
        log: String,
    }

    fn pump_chunks(mut r: Box<dyn Read + Send>, s: Stream, tx: Sender<Arrival<Vec<u8>>>) {
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 || tx.send((Instant::now(), s, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        });
    }

    /// Spawns `cmd`, stamps its output until it exits or `timeout` passes,
    /// reads its memory at the script's first line.
    fn boot(cmd: Command, timeout: Duration) -> Boot {
        let (mut child, start, rx) = match spawn_pumped(cmd, pump_chunks) {
            Ok(spawned) => spawned,
            Err(log) => {
                return Boot {
                    log,
                    ..Boot::default()
                }
            }
        };
        let mut run = Boot::default();
        let (mut out, mut err) = (Arrivals::default(), Arrivals::default());
        let mut take = |at: Instant, s: Stream, data: &[u8]| {
            let t = at.duration_since(start);
            match s {
                Stream::Out => out.push(t, data),
                Stream::Err => err.push(t, data),
            }
            // Whether the script's first line is in this chunk.
            s == Stream::Out
                && out
                    .find_from(
                        READY,
                        out.bytes.len().saturating_sub(data.len() + READY.len()),
                    )
                    .is_some()
        };
        let deadline = start + timeout;
        let mut timed_out = false;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((at, s, data)) => {
                    if take(at, s, &data) && run.memory.is_none() {
                        run.memory = memory_stopped(child.id());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = reap(&mut child);
        run.exit = Some(start.elapsed());
        for (at, s, data) in rx.iter() {
            take(at, s, &data);
        }
        run.first_byte = out.at(0);
        run.linux_version = out.when(LINUX_VERSION);
        run.run_init = out.when(RUN_INIT);
        run.run_init_stamp = out.stamp_of(RUN_INIT);
        run.begin = out.when(BEGIN);
        run.result = out.when(RESULT);
        let problems = check(&out.text(), &status);
        run.ok = problems.is_empty() && !timed_out;
        if timed_out {
            run.log.push_str(&format!("timed out after {timeout:?}\n"));
        }
        for p in problems {
            run.log.push_str(&p);
            run.log.push('\n');
        }
        run.log.push_str(&format!(
            "--- console\n{}--- stderr\n{}",
            out.text(),
            err.text()
        ));
        run
    }

    /// What is wrong with a run whose console was `console`.
    pub(super) fn check(
        console: &str,
        status: &std::io::Result<std::process::ExitStatus>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let p = ConsoleParser::parse(console);
        match p.result {
            Some(r) if r.status == GuestStatus::Pass && r.exit_code == 0 => {}
            other => problems.push(format!("guest result {other:?}, not status=pass exit=0")),
        }
        for (key, want) in [("shared", SHARED_TEXT), ("disk", "vda"), ("mac", MAC)] {
            let got = p.kv.get(key).map(String::as_str);
            if got != Some(want) {
                problems.push(format!("{key}: {got:?}, not {want:?}"));
            }
        }
        for e in &p.errors {
            problems.push(format!("init: {e}"));
        }
        match status {
            Ok(s) if s.success() => {}
            other => problems.push(format!("exit status {other:?}")),
        }
        problems
    }

    fn os(s: impl Into<OsString>) -> OsString {
        s.into()
    }

    fn vmm_command(vmm: &Path, linux: &OurLinux, cmdline: &str, b: &Backends, mib: u32) -> Command {
        let mut cmd = Command::new(vmm);
        cmd.args([
            os("--kernel"),
            os(&linux.kernel),
            os("--initramfs"),
            os(&linux.initrd),
            os("--cmdline"),
            os(cmdline),
            os("--memory"),
            os(format!("size={mib}M")),
            os("--cpus"),
            os("boot=1"),
            os("--serial"),
            os("stdio"),
        ])
        .args(b.vmm_args());
        cmd
    }

    /// The test guest's QEMU command line (devices, shared RAM) with the
    /// kit's kernel, initramfs and command line.
    fn qemu_command(
        qemu: &Path,
        linux: &OurLinux,
        cmdline: &str,
        b: &Backends,
        accel: &str,
    ) -> Command {
        let mut cmd = super::qemu_command(qemu, &linux.kernel, b, accel);
        cmd.arg("-initrd")
            .arg(&linux.initrd)
            .arg("-append")
            .arg(cmdline);
        cmd
    }

    fn secs(d: Option<Duration>) -> String {
        d.map_or("-".into(), |d| format!("{:.3} s", d.as_secs_f64()))
    }

    /// The medians of one VMM's runs, as table cells.
    fn column(runs: &[Boot]) -> Vec<String> {
        let t =
            |f: fn(&Boot) -> Option<Duration>| secs(median(runs.iter().filter_map(f).collect()));
        let mut cells = vec![
            t(|r| r.first_byte),
            t(|r| r.linux_version),
            t(|r| r.run_init),
            t(|r| r.run_init_stamp),
            t(|r| r.begin),
            t(|r| r.result),
            t(|r| r.exit),
        ];
        cells.extend(memory_cells(runs.iter().filter_map(|r| r.memory.as_ref())));
        cells.push(format!(
            "{}/{}",
            runs.iter().filter(|r| r.ok).count(),
            runs.len()
        ));
        cells
    }

    pub(super) fn bench(args: &Args) -> Result<(), String> {
        let linux = OurLinux::small("vmm-bench --guest linux: the same vmlinux for both".into())
            .map_err(|e| e.to_string())?;
        let cmdline = bench_cmdline(&linux.cmdline(&script(), TAG, SCRIPT_TIMEOUT_S));
        // x86's COMMAND_LINE_SIZE.
        if cmdline.len() >= 2048 {
            return Err(format!("the command line is {} bytes", cmdline.len()));
        }
        let vmm = project_binary("vmm").map_err(|e| e.to_string())?;
        let b = backends()?;
        let timeout = Duration::from_secs(args.timeout_s.unwrap_or(900));
        let qemu = if args.no_qemu {
            None
        } else {
            let bin = find_binary("qemu-system-x86_64").map_err(|e| e.to_string())?;
            let accel = match args.qemu_accel.as_str() {
                "auto" => "tcg",
                a => a,
            };
            Some((bin, accel.to_string()))
        };
        if args.memory_mib != 256 && qemu.is_some() {
            eprintln!(
                "vmm-bench: QEMU's command line has 256 MiB; --memory-mib only applies to ours"
            );
        }
        eprintln!(
            "vmm-bench: {} ({}), command line: {cmdline}",
            linux.kernel.display(),
            linux.release
        );
        let (mut ours, mut theirs) = (vec![], vec![]);
        for i in 1..=args.runs {
            let r = boot(
                vmm_command(&vmm, &linux, &cmdline, &b, args.memory_mib),
                timeout,
            );
            report(i, args.runs, "vmm", &r);
            ours.push(r);
            if let Some((bin, accel)) = &qemu {
                let r = boot(qemu_command(bin, &linux, &cmdline, &b, accel), timeout);
                report(i, args.runs, &format!("qemu ({accel})"), &r);
                theirs.push(r);
            }
        }
        let rows = [
            "exec -> first console byte",
            "exec -> `Linux version` (first printk line)",
            "exec -> `Run /init as init process`",
            "  the kernel's own stamp on that line",
            "exec -> /init starts the script (VUTEST-BEGIN)",
            "exec -> script done (VUTEST-RESULT)",
            "exec -> exit (guest powered off)",
            "RSS overhead (all but guest RAM)",
            "RssAnon",
            "VmRSS (incl. touched guest RAM)",
            "runs ok",
        ];
        let ours_col = column(&ours);
        let (qemu_name, qemu_col) = match &qemu {
            Some((_, a)) => (format!("qemu ({a})"), column(&theirs)),
            None => (String::new(), vec![]),
        };
        println!(
            "median of {} runs each, alternating; Linux {} (the kit's vmlinux + initrd.cpio, \
             one command line), {} MiB, 1 vCPU, vhost-user blk + fs + net (our daemons)",
            args.runs, linux.release, args.memory_mib
        );
        print_table(&rows, ["vmm (kvm)", &qemu_name], &ours_col, &qemu_col, 12);
        Ok(())
    }

    /// One line per run on stderr (a run takes a minute or more), the
    /// whole log if it failed.
    fn report(i: usize, n: usize, who: &str, r: &Boot) {
        eprintln!(
            "vmm-bench: run {i}/{n} {who}: /init script at {}, exit at {}, {}",
            secs(r.begin),
            secs(r.exit),
            if r.ok { "ok" } else { "FAILED" }
        );
        if !r.ok {
            eprintln!("{}", r.log);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

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
        assert_eq!(median_kib(vec![7, 1, 5]), Some(5));
        assert_eq!(median_kib(vec![]), None);
    }

    #[test]
    fn memory_outside_guest_ram_is_summed() {
        let smaps = "\
55d0-55e0 r-xp 00000000 08:01 123   /usr/bin/vmm
Rss:                 100 kB
7f00-7f10 rw-s 00000000 00:19 9     /dev/shm/vmm-mem-1-0 (deleted)
Rss:              200000 kB
7f20-7f30 rw-p 00000000 00:00 0
Rss:                  30 kB
VmFlags: rd wr mr mw me ac
";
        assert_eq!(overhead_kib(smaps), Some(130));
        let status = "Name:\tvmm\nVmRSS:\t  200130 kB\nRssAnon:\t      30 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(200_130));
        assert_eq!(status_kib(status, "RssAnon:"), Some(30));
        assert_eq!(status_kib(status, "RssFile:"), None);
    }

    #[test]
    fn the_bench_cmdline_is_not_quiet_and_has_printk_stamps() {
        assert_eq!(
            linux::bench_cmdline(
                "console=ttyS0 quiet noxsave printk.time=0 vutest.script=cXVpZXQ="
            ),
            "console=ttyS0 noxsave vutest.script=cXVpZXQ= printk.time=1"
        );
        assert_eq!(linux::bench_cmdline("a  b"), "a b printk.time=1");
    }

    #[test]
    fn printk_stamps_are_read_before_the_message() {
        let s = |x: f64| Some(Duration::from_secs_f64(x));
        assert_eq!(linux::printk_stamp("[    0.517191] "), s(0.517191));
        assert_eq!(linux::printk_stamp("Booting from ROM..[   12.5] "), s(12.5));
        assert_eq!(linux::printk_stamp("[1.0] text "), None);
        assert_eq!(linux::printk_stamp("no stamp "), None);
        assert_eq!(linux::printk_stamp("[abc] "), None);
        assert_eq!(linux::printk_stamp("[-1.0] "), None);
    }

    #[test]
    fn console_markers_are_stamped_with_their_first_byte() {
        let ms = Duration::from_millis;
        let mut a = linux::Arrivals::default();
        assert_eq!(a.at(0), None);
        a.push(ms(10), b"SeaBIOS\r\nBooting from ROM..");
        a.push(ms(20), b"");
        a.push(ms(30), b"[    0.000000] Linux ver");
        a.push(
            ms(40),
            b"sion 6.1\r\n[    2.250000] Run /init as init process\r\n",
        );
        a.push(ms(50), b"VUTEST-BEGIN\r\n");
        assert_eq!(a.at(0), Some(ms(10)));
        // A marker that spans two chunks: its first byte's chunk.
        assert_eq!(a.when(linux::LINUX_VERSION), Some(ms(30)));
        assert_eq!(a.when(linux::RUN_INIT), Some(ms(40)));
        assert_eq!(a.when(linux::BEGIN), Some(ms(50)));
        assert_eq!(a.when(linux::RESULT), None);
        assert_eq!(
            a.stamp_of(linux::RUN_INIT),
            Some(Duration::from_secs_f64(2.25))
        );
        // The first message shares its line with SeaBIOS's.
        assert_eq!(a.stamp_of(linux::LINUX_VERSION), Some(Duration::ZERO));
        assert_eq!(a.stamp_of(linux::BEGIN), None);
        assert_eq!(a.find_from("Run", 0), a.find_from("Run", 40));
        assert_eq!(a.find_from("SeaBIOS", 1), None);
        assert_eq!(a.find_from("x", 10_000), None);
    }

    #[test]
    fn a_run_passes_only_with_the_result_every_value_and_exit_0() {
        let ok = std::process::ExitStatus::from_raw(0);
        let console = format!(
            "VUTEST-BEGIN\r\n{}\r\nVUTEST-KV shared=hello from the host\r\n\
             VUTEST-KV disk=vda\r\nVUTEST-KV mac={MAC}\r\nVUTEST-RESULT: status=pass exit=0\r\n",
            linux::READY
        );
        assert_eq!(linux::check(&console, &Ok(ok)), Vec::<String>::new());
        let failed = std::process::ExitStatus::from_raw(1 << 8);
        assert_eq!(linux::check(&console, &Ok(failed)).len(), 1);
        let no_disk = console.replace("disk=vda", "disk=");
        assert_eq!(linux::check(&no_disk, &Ok(ok)).len(), 1);
        let fail = console.replace("status=pass exit=0", "status=fail exit=3");
        assert_eq!(linux::check(&fail, &Ok(ok)).len(), 1);
        assert_eq!(linux::check("", &Ok(ok)).len(), 4);
    }
}
