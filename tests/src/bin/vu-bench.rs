//! `vu-bench`: drives vhost-user backends through the userspace driver and
//! prints one side-by-side table (plus JSON lines) for every workload.
//!
//! ```text
//! vu-bench --start-references                  # qemu-storage-daemon + QEMU's C virtiofsd
//! vu-bench --start-references --start-ours --pread-baseline --workloads blk-randread-4k-qd32
//! vu-bench --blk ours=/run/blk.sock,pid=1234 --blk qsd=/tmp/qsd.sock,pid=99
//! vu-bench --start-ours --workloads net-tx-64b,net-rx-64b   # vhost-net-daemon vs tap-direct (root)
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vu_driver::bench::net::tap::{self, TapBench};
use vu_driver::bench::{self, Row};
use vu_driver::blk::{BlkClient, BlkOptions, SECTOR_SIZE};
use vu_driver::error_chain;
use vu_driver::fixture::{Daemon, QsdOpts, Readiness};
use vu_driver::fs::{FsClient, FsOptions};
use vu_driver::net::testpmd::{TestPmd, TestPmdOptions};
use vu_driver::net::NetClient;
use vu_driver::ours::{self, BlkDaemonOpts};

/// Benchmark vhost-user backends side by side.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A vhost-user-blk backend: NAME=SOCKET[,pid=PID][,inflight]. Repeatable.
    /// `inflight`: this backend's frontend acks INFLIGHT_SHMFD (as
    /// --inflight does for all), so one run compares tracking on and off.
    #[arg(long = "blk", value_name = "NAME=SOCKET[,pid=PID][,inflight]")]
    blk: Vec<String>,
    /// A virtio-fs backend: NAME=SOCKET,dir=SHARED_DIR[,pid=PID][,inflight].
    /// Repeatable. The bench creates its files in SHARED_DIR (host side)
    /// before it starts.
    #[arg(long = "fs", value_name = "NAME=SOCKET,dir=DIR[,pid=PID][,inflight]")]
    fs: Vec<String>,
    /// A virtio-net backend that sends every frame back (macswap or loopback):
    /// NAME=SOCKET[,pid=PID]. Repeatable.
    #[arg(long = "net", value_name = "NAME=SOCKET[,pid=PID]")]
    net: Vec<String>,
    /// Also start the references: qemu-storage-daemon (blk), QEMU's C virtiofsd (fs)
    /// and DPDK's testpmd in macswap mode (net), with image and share in --scratch-dir.
    #[arg(long)]
    start_references: bool,
    /// Also start our own daemons (built next to vu-bench: `cargo build
    /// --release --workspace --bins`), each on its own copy of the same
    /// filled image, after the references.
    #[arg(long)]
    start_ours: bool,
    /// Add a row per block read workload: one thread calling pread(2) on the
    /// image our daemon serves (needs --start-ours), the ceiling to compare with.
    #[arg(long, requires = "start_ours")]
    pread_baseline: bool,
    /// Add a row per block workload: fio's io_uring engine on the image our
    /// daemon serves (needs --start-ours and fio), same block size, pattern
    /// and depth, O_DIRECT when our daemon runs with --direct: the device's
    /// own limit.
    #[arg(long, requires = "start_ours")]
    fio_ceiling: bool,
    /// Start qemu-storage-daemon with `cache.direct=on,aio=io_uring` (the
    /// production setting on real disks), to compare with ours `--direct`.
    #[arg(long, requires = "start_references")]
    qsd_direct: bool,
    /// Arguments added to our vhost-blk-daemon's command line (e.g. "--num-queues 2").
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    ours_args: Vec<String>,
    /// Arguments added to our virtiofsd's command line (e.g. "--poll-us 50").
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    ours_fs_args: Vec<String>,
    /// Arguments added to vhost-net-daemon's command line (e.g. "--queue-size 1024").
    /// With --start-ours, the net-tx-*/net-rx-* workloads run it on a tap in a
    /// network namespace of their own (needs root), next to tap-direct: a plain
    /// loop reading and writing an identical tap, the ceiling.
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    net_daemon_args: Vec<String>,
    /// Inject net-rx-* frames in bursts that let the tap run empty between
    /// them, instead of continuously (the default).
    #[arg(long)]
    net_rx_paced: bool,
    /// Where --start-references and --start-ours put images and shares (tmpfs by default).
    #[arg(long, default_value = "/dev/shm")]
    scratch_dir: PathBuf,
    /// Size of the disk image --start-references creates, in MiB.
    #[arg(long, default_value_t = 256)]
    image_mib: u64,
    /// Comma-separated workloads (default: all that apply to the given backends).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Seconds per repetition.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Repetitions per backend (alternating between backends).
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Append results as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The blk and fs frontends ack INFLIGHT_SHMFD when offered
    /// (GET/SET_INFLIGHT_FD before the rings), so a backend that supports
    /// it tracks requests in flight: run once with and once without, or
    /// name one backend twice, once with `,inflight`, to see what tracking
    /// costs.
    #[arg(long)]
    inflight: bool,
}

/// A backend named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    name: String,
    socket: PathBuf,
    pid: Option<u32>,
    dir: Option<PathBuf>,
    /// Ack INFLIGHT_SHMFD for this backend.
    inflight: bool,
}

impl Spec {
    /// A backend the bench started: `name`, listening on `socket`, process
    /// `pid`, sharing `dir` (fs).
    fn started(name: &str, socket: &Path, pid: u32, dir: Option<PathBuf>) -> Spec {
        Spec {
            name: name.into(),
            socket: socket.to_owned(),
            pid: Some(pid),
            dir,
            inflight: false,
        }
    }

    /// [`Spec::started`] for a daemon the bench started: its socket and pid.
    fn of_daemon(name: &str, daemon: &Daemon, dir: Option<PathBuf>) -> Spec {
        Spec::started(name, daemon.socket(), daemon.pid(), dir)
    }
}

fn parse_spec(s: &str) -> Result<Spec, String> {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or_default();
    let (name, socket) = first
        .split_once('=')
        .ok_or_else(|| format!("backend {s:?}: expected NAME=SOCKET"))?;
    if name.is_empty() || socket.is_empty() {
        return Err(format!("backend {s:?}: empty name or socket"));
    }
    let mut spec = Spec {
        name: name.to_owned(),
        socket: socket.into(),
        pid: None,
        dir: None,
        inflight: false,
    };
    for p in parts {
        if p == "inflight" {
            spec.inflight = true;
            continue;
        }
        match p.split_once('=') {
            Some(("pid", v)) => {
                spec.pid = Some(
                    v.parse()
                        .map_err(|_| format!("backend {name}: bad pid {v:?}"))?,
                )
            }
            Some(("dir", v)) => spec.dir = Some(v.into()),
            _ => return Err(format!("backend {name}: unknown option {p:?}")),
        }
    }
    Ok(spec)
}

/// A connected backend: its spec and the driver's client for it.
struct Target<C> {
    spec: Spec,
    client: C,
}

/// The workloads of `all` that --workloads asks for (all when it is empty).
fn selected<W: Copy>(args: &Args, all: &[W], name: impl Fn(&W) -> &str) -> Vec<W> {
    all.iter()
        .copied()
        .filter(|w| args.workloads.is_empty() || args.workloads.iter().any(|a| a == name(w)))
        .collect()
}

fn run_blk(args: &Args, specs: &[Spec], rows: &mut Vec<Row>) -> Result<(), String> {
    let workloads = selected(args, &bench::blk::STANDARD, |w| w.name);
    if specs.is_empty() || workloads.is_empty() {
        return Ok(());
    }
    let mut targets = connect_all(specs, "blk", |s| {
        let mut opts = BlkOptions {
            max_io: 128 * 1024,
            ..BlkOptions::default()
        };
        if args.inflight || s.inflight {
            opts.device.protocol_features |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        let mut client = BlkClient::connect(&s.socket, &opts).map_err(|e| error_chain(&e))?;
        let capacity = client.config().map_err(|e| error_chain(&e))?.capacity * SECTOR_SIZE;
        Ok((client, capacity))
    })?;
    let duration = Duration::from_secs_f64(args.duration);
    for w in workloads {
        let mut seed = 1;
        measure(args, &mut targets, w.name, rows, |t| {
            seed += 1;
            let (client, capacity) = &mut t.client;
            w.run(client, *capacity, duration, seed)
        })?;
    }
    Ok(())
}

/// A target per spec, connected by `connect`; its error is named after the
/// backend (`KIND backend NAME: ...`).
fn connect_all<C>(
    specs: &[Spec],
    kind: &str,
    mut connect: impl FnMut(&Spec) -> Result<C, String>,
) -> Result<Vec<Target<C>>, String> {
    specs
        .iter()
        .map(|s| {
            let client = connect(s).map_err(|e| format!("{kind} backend {}: {e}", s.name))?;
            Ok(Target {
                spec: s.clone(),
                client,
            })
        })
        .collect()
}

/// Runs one workload on every target (alternating) and adds a row per target.
fn measure<C, E: std::error::Error>(
    args: &Args,
    targets: &mut [Target<C>],
    workload: &str,
    rows: &mut Vec<Row>,
    mut run: impl FnMut(&mut Target<C>) -> Result<bench::Sample, E>,
) -> Result<(), String> {
    let samples = bench::alternate(
        targets,
        args.reps,
        |t| t.spec.pid,
        |t| {
            run(t).map_err(|e| {
                format!(
                    "backend {}: workload {workload}: {}",
                    t.spec.name,
                    error_chain(&e)
                )
            })
        },
    )?;
    for (t, s) in targets.iter().zip(samples) {
        let spec = &t.spec;
        rows.push(Row::from_samples(workload, &spec.name, &s, spec.pid));
    }
    eprintln!("done: {workload}");
    Ok(())
}

/// A directory of ours under --scratch-dir, removed at exit.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(base: &std::path::Path, tag: &str) -> std::io::Result<Self> {
        let p = base.join(format!("vu-bench.{}.{tag}", std::process::id()));
        std::fs::create_dir(&p)?;
        Ok(ScratchDir(p))
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Makes directory `name` in it (a share).
    fn new_share(&self, name: &str) -> Result<PathBuf, String> {
        let share = self.join(name);
        std::fs::create_dir(&share).map_err(|e| format!("{}: {e}", share.display()))?;
        Ok(share)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct References {
    // Declared first so the daemons stop before their directory goes.
    _daemons: Vec<Daemon>,
    _testpmd: TestPmd,
    _dir: ScratchDir,
}

fn start_references(
    args: &Args,
    blk: &mut Vec<Spec>,
    fs: &mut Vec<Spec>,
    net: &mut Vec<Spec>,
) -> Result<References, String> {
    let dir = ScratchDir::new(&args.scratch_dir, "references")
        .map_err(|e| format!("scratch dir in {}: {e}", args.scratch_dir.display()))?;
    let image = dir.join("qsd.img");
    fill_image(&image, args.image_mib << 20).map_err(|e| format!("{}: {e}", image.display()))?;
    let mut daemons = Vec::new();
    let qsd_opts = QsdOpts {
        direct: args.qsd_direct,
        aio: args.qsd_direct.then(|| "io_uring".to_owned()),
        ..QsdOpts::default()
    };
    let qsd = Daemon::qemu_storage_daemon_blk(&image, &dir.join("qsd.sock"), &qsd_opts)
        .map_err(|e| error_chain(&e))?;
    blk.push(Spec::of_daemon("qsd", &qsd, None));
    daemons.push(qsd);
    let share = dir.new_share("c-virtiofsd-share")?;
    let vfs = Daemon::c_virtiofsd(&share, &dir.join("c-virtiofsd.sock"), &[])
        .map_err(|e| error_chain(&e))?;
    fs.push(Spec::of_daemon("c-virtiofsd", &vfs, Some(share)));
    daemons.push(vfs);
    match rust_virtiofsd() {
        Some(bin) => {
            let share = dir.new_share("rust-virtiofsd-share")?;
            let sock = dir.join("rust-virtiofsd.sock");
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg("--socket-path").arg(&sock).arg("--shared-dir").arg(&share).arg("--cache=auto");
            let d = Daemon::spawn(
                "rust-virtiofsd",
                cmd,
                &sock,
                &[Readiness::Path(sock.clone())],
                vu_driver::fixture::DEFAULT_READY_TIMEOUT,
            )
            .map_err(|e| error_chain(&e))?;
            fs.push(Spec::started("rust-virtiofsd", &sock, d.pid(), Some(share)));
            daemons.push(d);
        }
        None => eprintln!(
            "note: the Rust virtiofsd is not installed (scripts/bench-setup.sh installs it in /opt/rust-virtiofsd)"
        ),
    }
    let pmd = TestPmd::spawn(&TestPmdOptions::new(&dir.join("testpmd.sock"), 1))
        .map_err(|e| error_chain(&e))?;
    net.push(Spec::started("dpdk-testpmd", pmd.socket(), pmd.pid(), None));
    Ok(References {
        _daemons: daemons,
        _testpmd: pmd,
        _dir: dir,
    })
}

/// The Rust virtiofsd: `$RUST_VIRTIOFSD`, else where scripts/bench-setup.sh
/// installs it.
fn rust_virtiofsd() -> Option<PathBuf> {
    let p = std::env::var_os("RUST_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/rust-virtiofsd/bin/virtiofsd"));
    p.is_file().then_some(p)
}

/// Writes non-zero data everywhere so reads are not served from holes.
fn fill_image(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = bench::Rng::new(42);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..size.div_ceil(1 << 20) {
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.flush()
}

/// Our daemons, started by --start-ours (declared first: they stop before their directory goes).
struct Ours {
    _daemons: Vec<Daemon>,
    blk_image: PathBuf,
    _dir: ScratchDir,
}

fn start_ours(args: &Args, blk: &mut Vec<Spec>, fs: &mut Vec<Spec>) -> Result<Ours, String> {
    let dir = ScratchDir::new(&args.scratch_dir, "ours")
        .map_err(|e| format!("scratch dir in {}: {e}", args.scratch_dir.display()))?;
    let image = dir.join("ours.img");
    fill_image(&image, args.image_mib << 20).map_err(|e| format!("{}: {e}", image.display()))?;
    let opts = BlkDaemonOpts {
        extra_args: args
            .ours_args
            .iter()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect(),
        ..BlkDaemonOpts::default()
    };
    let d = ours::vhost_blk_daemon(&image, &dir.join("ours-blk.sock"), &opts)
        .map_err(|e| error_chain(&e))?;
    blk.push(Spec::of_daemon("vhost-blk-daemon", &d, None));
    let share = dir.new_share("ours-share")?;
    let mut fs_args = vec!["--cache=auto"];
    fs_args.extend(
        args.ours_fs_args
            .iter()
            .filter(|a| !a.is_empty())
            .map(String::as_str),
    );
    let vfs = ours::virtiofsd(&share, &dir.join("ours-fs.sock"), &fs_args)
        .map_err(|e| error_chain(&e))?;
    fs.push(Spec::of_daemon("virtiofsd (ours)", &vfs, Some(share)));
    Ok(Ours {
        _daemons: vec![d, vfs],
        blk_image: image,
        _dir: dir,
    })
}

/// Rows for --pread-baseline: each selected block read workload, as one
/// thread of pread(2) on `image`.
fn run_pread_baseline(
    args: &Args,
    image: &std::path::Path,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let duration = Duration::from_secs_f64(args.duration);
    for w in selected(args, &bench::blk::STANDARD, |w| w.name) {
        if w.dir != bench::blk::Dir::Read {
            continue;
        }
        let samples = (0..args.reps)
            .map(|rep| bench::blk::pread_baseline(image, &w, duration, u64::from(rep) + 1))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("pread baseline on {}: {e}", image.display()))?;
        rows.push(Row::from_samples(w.name, "pread-1-thread", &samples, None));
    }
    Ok(())
}

/// Rows for --fio-ceiling: each selected block workload as one fio job
/// (io_uring) on `image`, one sample per repetition.
fn run_fio_ceiling(args: &Args, image: &Path, rows: &mut Vec<Row>) -> Result<(), String> {
    let duration = Duration::from_secs_f64(args.duration);
    let direct = args.ours_args.iter().any(|a| a == "--direct");
    for w in selected(args, &bench::blk::STANDARD, |w| w.name) {
        let runs = (0..args.reps)
            .map(|_| bench::blk::fio_ceiling(image, &w, direct, duration))
            .collect::<Result<Vec<_>, _>>()?;
        let n = runs.len().max(1) as f64;
        let mean = |f: fn(&bench::blk::FioResult) -> f64| runs.iter().map(f).sum::<f64>() / n;
        let mut row = Row::from_samples(w.name, "fio io_uring (ceiling)", &[], None);
        row.reps = args.reps;
        row.ops_per_s = mean(|r| r.ops_per_s);
        row.mib_per_s = mean(|r| r.mib_per_s);
        row.mean_us = mean(|r| r.mean_us);
        row.p99_us = mean(|r| r.p99_us);
        rows.push(row);
    }
    Ok(())
}

fn run_fs(args: &Args, specs: &[Spec], rows: &mut Vec<Row>) -> Result<(), String> {
    let workloads = selected(args, &bench::fs::ALL, |w| w.name());
    if specs.is_empty() || workloads.is_empty() {
        return Ok(());
    }
    // Anonymous memory of each daemon before any frontend connected.
    for s in specs {
        if let Some(kib) = s.pid.and_then(bench::rss_anon_kib) {
            let mut row = Row::from_samples("fs-idle", &s.name, &[], None);
            row.rss_anon_kib = Some(kib);
            rows.push(row);
        }
    }
    let mut targets = connect_all(specs, "fs", |s| {
        let dir = s.dir.as_ref().ok_or("needs dir=SHARED_DIR")?;
        for w in &workloads {
            w.prepare_host(dir).map_err(|e| error_chain(&e))?;
        }
        let mut opts = FsOptions::default();
        if args.inflight || s.inflight {
            opts.device.protocol_features |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        FsClient::connect(&s.socket, opts).map_err(|e| error_chain(&e))
    })?;
    let duration = Duration::from_secs_f64(args.duration);
    for w in workloads {
        let mut rep = 0;
        measure(args, &mut targets, w.name(), rows, |t| {
            rep += 1;
            w.run(&mut t.client, duration, rep)
        })?;
    }
    Ok(())
}

fn run_net(args: &Args, specs: &[Spec], rows: &mut Vec<Row>) -> Result<(), String> {
    let workloads = selected(args, &bench::net::STANDARD, |w| w.name);
    if specs.is_empty() || workloads.is_empty() {
        return Ok(());
    }
    // The bench needs no control queue (DPDK offers one it does not serve).
    let mut targets = connect_all(specs, "net", |s| {
        NetClient::connect(&s.socket, &TestPmd::net_options(1)).map_err(|e| error_chain(&e))
    })?;
    let duration = Duration::from_secs_f64(args.duration);
    for w in workloads {
        measure(args, &mut targets, w.name, rows, |t| {
            w.run(&mut t.client, duration)
        })?;
    }
    Ok(())
}

/// The tap workloads (with --start-ours): our vhost-net-daemon and
/// tap-direct; returns their details table. Skipped with a note when the
/// namespace cannot be made (not root).
fn run_net_tap(args: &Args, rows: &mut Vec<Row>) -> Result<Option<String>, String> {
    let workloads = selected(args, &tap::STANDARD, |w| w.name);
    if !args.start_ours || workloads.is_empty() {
        return Ok(None);
    }
    let extra: Vec<String> = args
        .net_daemon_args
        .iter()
        .filter(|a| !a.is_empty())
        .cloned()
        .collect();
    let mut tb = match TapBench::start(&extra) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("note: net tap workloads skipped: {}", error_chain(&e));
            return Ok(None);
        }
    };
    tb.set_rx_continuous(!args.net_rx_paced);
    let duration = Duration::from_secs_f64(args.duration);
    let mut results = Vec::new();
    for w in workloads {
        let r = tb.run(&w, duration, args.reps).map_err(|e| {
            format!(
                "workload {}: {}\nvhost-net-daemon's log ends:\n{}",
                w.name,
                error_chain(&e),
                tb.daemon_log_tail(20)
            )
        })?;
        eprintln!("done: {}", w.name);
        results.extend(r);
    }
    rows.extend(results.iter().map(|r| r.row.clone()));
    Ok(Some(tap::details_table(&results)))
}

/// Every workload name vu-bench knows.
fn known_workloads() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = bench::blk::STANDARD.iter().map(|w| w.name).collect();
    v.extend(bench::fs::ALL.iter().map(|w| w.name()));
    v.extend(bench::net::STANDARD.iter().map(|w| w.name));
    v.extend(tap::STANDARD.iter().map(|w| w.name));
    v
}

/// An unknown name in --workloads is an error, not an empty table.
fn check_workloads(asked: &[String]) -> Result<(), String> {
    let known = known_workloads();
    match asked.iter().find(|a| !known.contains(&a.as_str())) {
        Some(a) => Err(format!(
            "unknown workload {a:?}; known: {}",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

fn run(args: Args) -> Result<(), String> {
    check_workloads(&args.workloads)?;
    let parse_all = |v: &[String]| {
        v.iter()
            .map(|s| parse_spec(s))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut blk = parse_all(&args.blk)?;
    let mut fs = parse_all(&args.fs)?;
    let mut net = parse_all(&args.net)?;
    let _refs = if args.start_references {
        Some(start_references(&args, &mut blk, &mut fs, &mut net)?)
    } else {
        None
    };
    let ours = if args.start_ours {
        Some(start_ours(&args, &mut blk, &mut fs)?)
    } else {
        None
    };
    if blk.is_empty() && fs.is_empty() && net.is_empty() {
        return Err(
            "no backend given: use --blk, --fs, --net, --start-references or --start-ours".into(),
        );
    }
    let mut rows = Vec::new();
    run_blk(&args, &blk, &mut rows)?;
    if let (true, Some(o)) = (args.pread_baseline, &ours) {
        run_pread_baseline(&args, &o.blk_image, &mut rows)?;
    }
    if let (true, Some(o)) = (args.fio_ceiling, &ours) {
        run_fio_ceiling(&args, &o.blk_image, &mut rows)?;
        // Keep each workload's rows together in the table.
        let order: Vec<String> =
            rows.iter()
                .map(|r| r.workload.clone())
                .fold(Vec::new(), |mut v, w| {
                    if !v.contains(&w) {
                        v.push(w);
                    }
                    v
                });
        rows.sort_by_key(|r| order.iter().position(|w| *w == r.workload));
    }
    run_fs(&args, &fs, &mut rows)?;
    run_net(&args, &net, &mut rows)?;
    let tap_details = run_net_tap(&args, &mut rows)?;
    print!("{}", bench::table(&rows));
    if let Some(t) = tap_details {
        print!("\n{t}");
    }
    if let Some(path) = &args.json {
        bench::append_json(path, &rows).map_err(|e| error_chain(&e))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vu-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        let s = parse_spec("ours=/tmp/a.sock,pid=12,dir=/srv").unwrap();
        assert_eq!(s.name, "ours");
        assert_eq!(s.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(s.pid, Some(12));
        assert_eq!(s.dir, Some(PathBuf::from("/srv")));
        assert!(!s.inflight);
        assert!(parse_spec("t=/tmp/a.sock,inflight").unwrap().inflight);
        assert!(parse_spec("noequals").is_err());
        assert!(parse_spec("a=/s,pid=x").is_err());
        assert!(parse_spec("a=/s,bogus=1").is_err());
        assert!(parse_spec("=/s").is_err());
    }

    #[test]
    fn an_unknown_workload_is_refused() {
        assert!(check_workloads(&["fs-create+release-qd16".into()]).is_ok());
        assert!(check_workloads(&["blk-randread-4k-qd32".into()]).is_ok());
        let e = check_workloads(&["fs-create".into()]).unwrap_err();
        assert!(
            e.contains("\"fs-create\"") && e.contains("fs-lookup+getattr-10k"),
            "{e}"
        );
    }
}
