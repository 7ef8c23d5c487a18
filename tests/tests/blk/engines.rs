//! Both I/O engines of `vhost-blk-daemon` (`--aio sync|io_uring`, the
//! latter also with `--poll-us`): the
//! whole `blk` suite runs again with io_uring (the daemon reads
//! `VHOST_BLK_AIO`, so every test here starts it with that engine), and
//! what only an asynchronous engine can get wrong is checked on each:
//! a queue full of requests in flight, each completed exactly once with
//! its own data, and reads the image can no longer satisfy.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use vu_driver::blk::{status, BlkClient, BlkOptions, BlkQueue, Request};
use vu_driver::fixture::{create_sparse_image, Daemon};
use vu_driver::ours::{vhost_blk_daemon, BlkDaemonOpts};

use crate::common::*;

/// The environment variable the daemon takes `--aio` from.
const AIO_ENV: &str = "VHOST_BLK_AIO";
/// The engines, and io_uring again with `--poll-us` (its worker watches
/// the completion queue between wake-ups).
const ENGINES: [&str; 3] = ["sync", "io_uring", "io_uring+poll"];

fn opts(engine: &str) -> BlkDaemonOpts {
    let extra_args = match engine.split_once('+') {
        Some((aio, "poll")) => vec!["--aio".into(), aio.into(), "--poll-us".into(), "200".into()],
        _ => vec!["--aio".into(), engine.into()],
    };
    BlkDaemonOpts {
        extra_args,
        ..BlkDaemonOpts::default()
    }
}

/// The rest of this binary once more, with every daemon on io_uring.
#[test]
fn every_blk_test_again_with_io_uring() {
    if std::env::var_os(AIO_ENV).is_some() {
        eprintln!("{AIO_ENV} is set: this run already chose the engine");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .env(AIO_ENV, "io_uring")
        .args(["--skip", "engines::every_blk_test_again_with_io_uring"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .filter(|l| l.starts_with("test result:") || l.contains("FAILED"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("with {AIO_ENV}=io_uring:\n{summary}");
    assert!(
        out.status.success(),
        "the blk suite fails with io_uring:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Write-zeroes without UNMAP and a two-range discard, with each engine,
/// on an image in tmpfs (which has no FALLOC_FL_ZERO_RANGE: io_uring's
/// FALLOCATE fails with EOPNOTSUPP and the engine falls back) and in
/// `$TMPDIR`: the ranges read as zeros, their neighbours keep their data.
#[test]
fn write_zeroes_and_discard_zero_their_ranges_on_tmpfs_and_tmpdir() {
    use vu_driver::fixture::TempDir;
    for base in [Path::new("/dev/shm").to_path_buf(), std::env::temp_dir()] {
        for engine in ENGINES {
            let what = format!("{engine} in {}", base.display());
            let dir = TempDir::new_in(&base, "blk-zeroes").unwrap();
            let image = dir.join("disk.img");
            create_sparse_image(&image, IMAGE_SIZE).unwrap();
            let d = vhost_blk_daemon(&image, &dir.join("blk.sock"), &opts(engine)).unwrap();
            let mut c = BlkClient::connect(d.socket(), &BlkOptions::default()).unwrap();
            let data = pattern(7, 64 * 1024);
            c.write(0, &data).unwrap();
            let zeroes = Request::WriteZeroes {
                sector: 8,
                num_sectors: 16,
                unmap: false,
            };
            assert_status_ok(run(&mut c, zeroes), 1, &format!("write-zeroes, {what}"));
            let discard = Request::Discard {
                sector: 64,
                num_sectors: 8,
            };
            assert_status_ok(run(&mut c, discard), 1, &format!("discard, {what}"));
            let back = c.read(0, data.len() as u32).unwrap();
            assert_eq!(host_read(&image, 0, data.len()), back, "{what}");
            for (i, (&b, &want)) in back.iter().zip(&data).enumerate() {
                let sector = i / 512;
                let zeroed = (8..24).contains(&sector) || (64..72).contains(&sector);
                assert_eq!(b, if zeroed { 0 } else { want }, "byte {i}, {what}");
            }
            assert_eq!(fs::metadata(&image).unwrap().len(), IMAGE_SIZE, "{what}");
        }
    }
}

/// A queue of 40 requests (the ring holds 42 of three descriptors) of mixed sizes (4 KiB to 1 MiB) kicked at once:
/// every one completes exactly once, with its own data.
#[test]
fn a_full_queue_completes_each_request_once_with_its_data() {
    for engine in ENGINES {
        let s = daemon(&opts(engine));
        // Distinct data everywhere the reads look.
        let extent = |i: u64| (i * 2048, 4096usize << (i % 9));
        for i in 0..40u64 {
            let (sector, len) = extent(i);
            host_write(&s.image, sector, &pattern(i as u8, len));
        }
        let mut c = BlkClient::connect(s.daemon.socket(), &BlkOptions::default()).unwrap();
        let mut q = c.queue(0);
        let mem = q.virtqueue().mem().clone();
        let mut want = std::collections::HashMap::new();
        for i in 0..40u64 {
            let (sector, len) = extent(i);
            let slot = q.peek_slot().unwrap();
            mem.write(q.data_addr(slot), &vec![0xee; len]).unwrap();
            let slot = q
                .submit(Request::Read {
                    sector,
                    len: len as u32,
                })
                .unwrap();
            want.insert(slot, i);
        }
        let done = kick_and_reap(&mut q, 40);
        assert_eq!(done.len(), 40, "{engine}: completions");
        let mut order = Vec::new();
        for d in &done {
            let i = want
                .remove(&d.slot)
                .unwrap_or_else(|| panic!("{engine}: slot {} completed twice", d.slot));
            let (_, len) = extent(i);
            assert_eq!(
                (d.status, d.used_len),
                (status::OK, len as u32 + 1),
                "{engine}: request {i}"
            );
            let got = mem.read_vec(q.data_addr(d.slot), len).unwrap();
            assert!(got == pattern(i as u8, len), "{engine}: request {i} data");
            order.push(i);
        }
        assert!(want.is_empty(), "{engine}: never completed: {want:?}");
        let moved = order.windows(2).filter(|w| w[0] > w[1]).count();
        eprintln!("{engine}: {moved} completions before one submitted earlier");
    }
}

/// The image shrank under the daemon (whose capacity stays): a read that
/// runs into the new end is an error, never a short success, and one
/// that starts past it too; reads before it still work.
#[test]
fn reads_past_the_end_of_a_shrunk_image_are_ioerr() {
    for engine in ENGINES {
        let s = daemon_with("disk.img", 1 << 20, &opts(engine));
        host_write(&s.image, 0, &pattern(3, 8192));
        let mut c = connect(&s);
        let f = fs::OpenOptions::new().write(true).open(&s.image).unwrap();
        // 512 KiB and half a 4 KiB read.
        f.set_len((512 << 10) + 2048).unwrap();
        for (sector, what) in [(1024, "across the new end"), (1100, "past the new end")] {
            let r = run(&mut c, Request::Read { sector, len: 4096 });
            assert_status(r, status::IOERR, &format!("{engine}: read {what}"));
        }
        let ok = run(
            &mut c,
            Request::Read {
                sector: 0,
                len: 8192,
            },
        );
        assert_status_ok(ok, 8193, &format!("{engine}: read before the end"));
        assert_eq!(c.read(0, 8192).unwrap(), pattern(3, 8192), "{engine}");
        let log = s.daemon.log_contents();
        assert!(
            log.contains("host I/O error"),
            "{engine}: the failed reads are logged:\n{log}"
        );
    }
}

/// A daemon with `engine` and O_DIRECT serving a fresh sparse image of
/// `size` bytes on a disk filesystem (/var/tmp), which `populate` fills
/// first: its directory, the image and the daemon.
fn direct_daemon(
    engine: &str,
    size: u64,
    populate: impl FnOnce(&Path),
) -> (crate::io::VarTmpDir, PathBuf, Daemon) {
    let dir = crate::io::VarTmpDir::new();
    let image = dir.0.join("direct.img");
    create_sparse_image(&image, size).unwrap();
    populate(&image);
    let mut opts = opts(engine);
    opts.direct = true;
    let d = vhost_blk_daemon(&image, &dir.0.join("blk.sock"), &opts).unwrap();
    (dir, image, d)
}

/// Submits reads of `len` bytes at `sector(i)` for i in 0..n, each into a
/// zeroed buffer, without kicking; returns each slot's i.
fn submit_zeroed_reads(
    q: &mut BlkQueue<'_>,
    n: u64,
    len: usize,
    sector: impl Fn(u64) -> u64,
) -> HashMap<u16, u64> {
    let mem = q.virtqueue().mem().clone();
    let mut want = HashMap::new();
    for i in 0..n {
        let slot = q
            .submit(Request::Read {
                sector: sector(i),
                len: len as u32,
            })
            .unwrap();
        mem.write(q.data_addr(slot), &vec![0u8; len]).unwrap();
        want.insert(slot, i);
    }
    want
}

/// SIGTERM while O_DIRECT reads of a disk image are in the kernel: every
/// request the daemon took completes, with its data, before it exits 0.
#[test]
fn sigterm_with_direct_reads_in_the_kernel_completes_them() {
    const N: u64 = 40;
    const LEN: usize = 1 << 20;
    for engine in ENGINES {
        let (_dir, _, mut d) = direct_daemon(engine, N * LEN as u64, |image| {
            for i in 0..N {
                host_write(image, i * 2048, &pattern(i as u8, LEN));
            }
        });
        let mut c = BlkClient::connect(d.socket(), &BlkOptions::default()).unwrap();
        let mut q = c.queue(0);
        let mem = q.virtqueue().mem().clone();
        let mut want = submit_zeroed_reads(&mut q, N, LEN, |i| i * 2048);
        q.kick().unwrap();
        // The first completion means the daemon took the whole batch.
        let mut done = Vec::new();
        q.reap(T, &mut done).unwrap();
        d.signal(libc::SIGTERM).unwrap();
        while done.len() < N as usize {
            q.reap(T, &mut done)
                .unwrap_or_else(|e| panic!("{engine}: {} of {N} completed: {e}", done.len()));
        }
        for c in &done {
            let i = want.remove(&c.slot).expect("each slot completes once");
            assert_eq!((c.status, c.used_len), (status::OK, LEN as u32 + 1));
            let got = mem.read_vec(q.data_addr(c.slot), LEN).unwrap();
            assert!(got == pattern(i as u8, LEN), "{engine}: request {i} data");
        }
        let exit = d.wait_timeout(T).unwrap().expect("exits after SIGTERM");
        assert!(exit.success(), "{engine}: exit status {exit}");
    }
}

/// O_DIRECT on a disk filesystem, where the io_uring engine puts writes and
/// reads in the kernel: 40 writes kicked at once, a flush, then 40 reads,
/// each completed once, the data right on both sides.
#[test]
fn direct_writes_and_reads_at_depth_round_trip() {
    const N: u64 = 40;
    const LEN: usize = 64 << 10;
    for engine in ENGINES {
        let (_dir, image, d) = direct_daemon(engine, N * 2 * LEN as u64, |_| {});
        let mut c = BlkClient::connect(d.socket(), &BlkOptions::default()).unwrap();
        let sector = |i: u64| i * 2 * (LEN as u64 / 512);
        {
            let mut q = c.queue(0);
            for i in 0..N {
                submit_write(&mut q, sector(i), &pattern(i as u8 ^ 0x5a, LEN));
            }
            let done = kick_and_reap(&mut q, N as usize);
            let mut slots: Vec<_> = done.iter().map(|d| d.slot).collect();
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), N as usize, "{engine}: a write completed twice");
            for d in &done {
                assert_eq!((d.status, d.used_len), (status::OK, 1), "{engine}: {d:?}");
            }
        }
        c.flush().unwrap();
        for i in 0..N {
            let want = pattern(i as u8 ^ 0x5a, LEN);
            assert!(
                host_read(&image, sector(i), LEN) == want,
                "{engine}: write {i} on the host image"
            );
        }
        let mut q = c.queue(0);
        let mem = q.virtqueue().mem().clone();
        let mut want = submit_zeroed_reads(&mut q, N, LEN, sector);
        for d in &kick_and_reap(&mut q, N as usize) {
            let i = want.remove(&d.slot).expect("each read completes once");
            assert_eq!((d.status, d.used_len), (status::OK, LEN as u32 + 1));
            let got = mem.read_vec(q.data_addr(d.slot), LEN).unwrap();
            assert!(got == pattern(i as u8 ^ 0x5a, LEN), "{engine}: read {i}");
        }
    }
}
