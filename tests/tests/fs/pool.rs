//! `virtiofsd --thread-pool-size N`: request-queue requests run on a pool
//! of N threads (each replying on its own), under the sandbox and the
//! seccomp filter, across reconnects, and SIGTERM still waits for them.

use std::collections::BTreeMap;
use std::fs;

use crate::common::*;
use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
use vu_driver::fs::{FsClient, FsOptions};

/// Threads of `pid` named `fs-pool-*`, with the read/write system calls
/// each made (`/proc/PID/task/TID/io`).
fn pool_threads(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("fs-pool-") {
            continue;
        }
        let io = fs::read_to_string(t.path().join("io")).unwrap_or_default();
        let calls: u64 = io
            .lines()
            .filter(|l| l.starts_with("syscr:") || l.starts_with("syscw:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(comm.to_string(), calls);
    }
    out
}

/// Creates, writes, reads back and lists `n` files through `fs`.
fn exercise(fs: &mut FsClient, n: usize, seed: u8) {
    for i in 0..n {
        let name = format!("f{seed}-{i}");
        let data = pattern(4096 + i, seed);
        let (e, o) = fs.create(ROOT_ID, &name, 0o644, libc::O_RDWR).unwrap();
        assert_eq!(
            fs.write(o.fh, e.nodeid, 0, &data).unwrap() as usize,
            data.len()
        );
        assert_eq!(
            fs.read(o.fh, e.nodeid, 0, data.len() as u32).unwrap(),
            data,
            "{name}"
        );
        fs.release(o.fh, e.nodeid, libc::O_RDWR).unwrap();
    }
    let names = fs.list_dir(ROOT_ID).unwrap();
    let mine = names
        .iter()
        .filter(|d| d.name().starts_with(format!("f{seed}-").as_bytes()))
        .count();
    assert_eq!(mine, n);
}

#[test]
fn a_pool_of_four_serves_requests_on_its_own_threads() {
    let mut s = start(&["--thread-pool-size", "4"]);
    exercise(&mut s.fs, 200, 1);
    for i in 0..200 {
        assert_eq!(
            fs::read(s.host(&format!("f1-{i}"))).unwrap(),
            pattern(4096 + i, 1)
        );
    }
    let threads = pool_threads(s.run.daemon.pid());
    assert_eq!(threads.len(), 4, "{threads:?}");
    // The file I/O happened on pool threads, spread over more than one.
    let busy = threads.values().filter(|&&c| c > 0).count();
    assert!(
        busy >= 2,
        "pool threads and their read/write calls: {threads:?}"
    );
    assert!(threads.values().sum::<u64>() >= 400, "{threads:?}");
}

#[test]
fn the_pool_works_in_the_sandbox_under_seccomp_and_after_a_reconnect() {
    let run = run(&[
        "--thread-pool-size",
        "3",
        "--sandbox",
        "namespace",
        "--seccomp",
        "kill",
    ]);
    for round in 0..2u8 {
        let mut fs = connect(&run, FsOptions::default());
        exercise(&mut fs, 50, 10 + round);
    }
    assert!(
        run.daemon.log_contents().contains("3 pool threads"),
        "{}",
        run.daemon.log_contents()
    );
}

#[test]
fn sigterm_with_a_pool_exits_zero() {
    let mut s = start(&["--thread-pool-size", "2"]);
    exercise(&mut s.fs, 20, 3);
    let pid = s.run.daemon.pid() as i32;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = s.run.daemon.wait_timeout(T).unwrap().expect("exited");
    assert!(status.success(), "{status:?}");
}

/// 32 LOOKUPs in flight at once, each answered in its own slot: every
/// reply carries the size of the file it was asked about, whichever order
/// the daemon answers in (inline, or on a pool where replies overtake).
fn lookups_in_flight_get_their_own_replies(args: &[&str]) {
    use fuse_backend_rs::abi::fuse_abi::EntryOut;
    use vu_driver::fs::wire::{body_struct, Request};
    const N: usize = 32;
    let mut s = start_with(args, |share| {
        for i in 0..N {
            fs::write(share.join(format!("sized-{i}")), vec![7u8; 100 + i]).unwrap();
        }
    });
    let mut p = s.fs.pipeline(N).unwrap();
    let lookup = |i: usize| Request::lookup(ROOT_ID, format!("sized-{i}").as_bytes()).unwrap();
    for i in 0..N {
        p.send(&mut s.fs, i, &lookup(i)).unwrap();
    }
    p.kick(&mut s.fs).unwrap();
    let mut seen = vec![0u32; N];
    // Each slot asks again once answered, so the rounds interleave.
    let mut sent = N;
    while p.in_flight() > 0 {
        let (slot, body) = p.recv(&mut s.fs).unwrap();
        let e: EntryOut = body_struct("LOOKUP", &body.unwrap()).unwrap();
        assert_eq!(e.attr.size, 100 + slot as u64, "reply in slot {slot}");
        seen[slot] += 1;
        if sent < 4 * N {
            p.send(&mut s.fs, slot, &lookup(slot)).unwrap();
            p.kick(&mut s.fs).unwrap();
            sent += 1;
        }
    }
    assert_eq!(seen.iter().sum::<u32>() as usize, 4 * N, "{seen:?}");
    // The daemon still serves plain requests afterwards.
    assert_eq!(s.fs.lookup(ROOT_ID, "sized-3").unwrap().attr.size, 103);
}

#[test]
fn many_requests_in_flight_inline() {
    lookups_in_flight_get_their_own_replies(&[]);
}

#[test]
fn many_requests_in_flight_on_a_pool() {
    lookups_in_flight_get_their_own_replies(&["--thread-pool-size", "4"]);
}
