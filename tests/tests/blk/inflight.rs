//! In-flight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): the
//! driver takes a region from `vhost-blk-daemon` (GET_INFLIGHT_FD), and
//! after the daemon is killed and restarted on the same socket it
//! reconnects as a VMM does (SET_INFLIGHT_FD, each ring with
//! SET_VRING_BASE = its used index): every request the dead daemon took
//! and did not complete is completed exactly once by the new one, none
//! that completed comes back, and new requests follow.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::GuestAddress;
use vu_driver::blk::{BlkClient, BlkOptions, Request};
use vu_driver::crash::kill_hard;
use vu_driver::fixture::{poll_until, Daemon};
use vu_driver::ours::{vhost_blk_daemon, BlkDaemonOpts};
use vu_driver::process::serving_pid;
use vu_driver::virtqueue::VirtQueue;

use crate::common::*;

const ENGINES: [&str; 2] = ["sync", "io_uring"];
/// Deadline for a daemon to go or come back.
const LONG: Duration = Duration::from_secs(30);

fn opts(engine: &str) -> BlkDaemonOpts {
    BlkDaemonOpts {
        extra_args: vec!["--aio".into(), engine.into()],
        ..BlkDaemonOpts::default()
    }
}

/// [`opts`] in the jail `sandbox` (`namespace`, the default, or `chroot`).
fn jailed_opts(engine: &str, sandbox: &str) -> BlkDaemonOpts {
    let mut o = opts(engine);
    o.extra_args.extend(["--sandbox".into(), sandbox.into()]);
    o
}

/// Starts the daemon again on `socket`. The dead one's image lock goes
/// only once the kernel has torn down its io_uring (which holds the image
/// as a registered file), so a start that finds the image locked is
/// retried until `LONG` has passed.
fn restart(image: &std::path::Path, socket: &std::path::Path, opts: &BlkDaemonOpts) -> Daemon {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let _ = std::fs::remove_file(socket);
        match vhost_blk_daemon(image, socket, opts) {
            Ok(d) => return d,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("restarting the daemon: {e}; again");
            }
            Err(e) => panic!("the daemon does not start again: {e}"),
        }
    }
}

fn client_opts() -> BlkOptions {
    let mut o = BlkOptions::default();
    o.device.protocol_features |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
    o
}

/// Queue 0's part of the region: header fields and descriptor states.
struct Region(std::fs::File);

impl Region {
    fn of(c: &mut BlkClient) -> Region {
        let f = c
            .device()
            .inflight_region()
            .expect("INFLIGHT_SHMFD negotiated");
        Region(f.try_clone().unwrap())
    }

    fn u16_at(&self, at: u64) -> u16 {
        let mut b = [0u8; 2];
        self.0.read_exact_at(&mut b, at).unwrap();
        u16::from_le_bytes(b)
    }
    fn set_u16(&self, at: u64, v: u16) {
        self.0.write_all_at(&v.to_le_bytes(), at).unwrap();
    }
    fn used_idx(&self) -> u16 {
        self.u16_at(14)
    }
    fn set_used_idx(&self, v: u16) {
        self.set_u16(14, v)
    }
    fn set_last_batch_head(&self, head: u16) {
        self.set_u16(12, head)
    }
    fn inflight(&self, head: u16) -> bool {
        let mut b = [0u8];
        self.0
            .read_exact_at(&mut b, 16 + 16 * u64::from(head))
            .unwrap();
        b[0] == 1
    }
    fn set_inflight(&self, head: u16, on: bool) {
        self.0
            .write_all_at(&[u8::from(on)], 16 + 16 * u64::from(head))
            .unwrap();
    }
    fn counter(&self, head: u16) -> u64 {
        let mut b = [0u8; 8];
        self.0
            .read_exact_at(&mut b, 16 + 16 * u64::from(head) + 8)
            .unwrap();
        u64::from_le_bytes(b)
    }
}

/// The head at avail position `i`.
fn avail_head(vq: &VirtQueue, i: u16) -> u16 {
    let at = vq.avail_addr().0 + 4 + 2 * u64::from(i % vq.size());
    vq.mem().read_obj::<u16>(GuestAddress(at)).unwrap()
}

/// Puts `heads` on the used ring from position 0 and sets its index, as
/// a backend that completed exactly those would have left it.
fn fake_used_ring(vq: &VirtQueue, heads: &[u16]) {
    for (i, &h) in heads.iter().enumerate() {
        let at = vq.used_addr().0 + 4 + 8 * i as u64;
        vq.mem()
            .write_obj(GuestAddress(at), [u32::from(h), 1u32])
            .unwrap();
    }
    vq.mem()
        .store_u16(
            GuestAddress(vq.used_addr().0 + 2),
            heads.len() as u16,
            Ordering::Release,
        )
        .unwrap();
}

/// Takes the next used entry; a head the driver no longer has in flight
/// (one completed before) fails the test.
fn next_used_token(vq: &mut VirtQueue) -> u64 {
    let u = vq.wait_used(T).unwrap();
    u.token
        .unwrap_or_else(|| panic!("head {} was completed a second time", u.head))
}

/// Two writes A then B, B completed and A not when the daemon dies (the
/// state an out-of-order completion leaves; `inside_b`: the crash came
/// while B was being completed, after the used index moved and before
/// the region caught up). The restarted daemon completes A exactly once
/// (its data is on the image again), not B, then a new request.
fn later_completed_first(engine: &str, inside_b: bool) {
    later_completed_first_in(&opts(engine), inside_b);
}

/// [`later_completed_first`] with the daemon started with `opts`.
fn later_completed_first_in(opts: &BlkDaemonOpts, inside_b: bool) {
    let s = daemon(opts);
    let mut c = BlkClient::connect(s.daemon.socket(), &client_opts()).unwrap();
    let (a_data, b_data) = (pattern(1, 4096), pattern(2, 4096));
    let mut q = c.queue(0);
    let mem = q.virtqueue().mem().clone();
    let submit = |q: &mut vu_driver::blk::BlkQueue<'_>, sector: u64, data: &[u8]| {
        let slot = q.peek_slot().unwrap();
        mem.write(q.data_addr(slot), data).unwrap();
        q.submit(Request::Write { sector, len: 4096 }).unwrap()
    };
    let a = submit(&mut q, 0, &a_data);
    let b = submit(&mut q, 8, &b_data);
    q.kick().unwrap();
    let vq = q.virtqueue();
    assert!(
        poll_until(T, || vq.used_idx().unwrap() == 2),
        "the two writes did not complete"
    );
    let (head_a, head_b) = (avail_head(vq, 0), avail_head(vq, 1));
    let mut daemon = s.daemon;
    kill_hard(&mut daemon, LONG).unwrap();

    // What the daemon would have left had it died with A in the kernel.
    let region = Region::of(&mut c);
    assert!(!region.inflight(head_a) && !region.inflight(head_b));
    assert!(
        region.counter(head_a) < region.counter(head_b),
        "A taken first"
    );
    assert_eq!(region.used_idx(), 2);
    let vq = c.device().queue(0);
    fake_used_ring(vq, &[head_b]);
    region.set_inflight(head_a, true);
    region.set_last_batch_head(head_b);
    if inside_b {
        region.set_inflight(head_b, true);
        region.set_used_idx(0);
    } else {
        region.set_used_idx(1);
    }
    host_write(&s.image, 0, &[0u8; 4096]);

    let restarted = restart(&s.image, daemon.socket(), opts);
    c.device().reconnect(&client_opts().device).unwrap();
    let vq = c.device().queue(0);
    assert_eq!(
        next_used_token(vq),
        u64::from(b),
        "B, from before the crash"
    );
    assert_eq!(next_used_token(vq), u64::from(a), "A, resubmitted");
    let mut q = c.queue(0);
    let slot = q.peek_slot().unwrap();
    let at = q.data_addr(slot);
    q.virtqueue().mem().write(at, &pattern(3, 4096)).unwrap();
    let new = q
        .submit(Request::Write {
            sector: 16,
            len: 4096,
        })
        .unwrap();
    q.kick().unwrap();
    let vq = q.virtqueue();
    assert_eq!(next_used_token(vq), u64::from(new), "the new request");
    assert_eq!(vq.used_idx().unwrap(), 3, "three used entries, none twice");
    assert_eq!(host_read(&s.image, 0, 4096), a_data, "A ran again");
    assert_eq!(host_read(&s.image, 8, 4096), b_data);
    assert_eq!(host_read(&s.image, 16, 4096), pattern(3, 4096));
    let log = restarted.log_contents();
    assert!(
        log.contains("resubmitting 1 request(s)"),
        "the daemon's log:\n{log}"
    );
    drop(restarted);
    drop(daemon);
}

#[test]
fn a_request_left_in_flight_behind_a_later_completed_one_is_resubmitted_once() {
    for engine in ENGINES {
        later_completed_first(engine, false);
    }
}

/// The chroot jail's connections pass through the relay too, so it
/// offers INFLIGHT_SHMFD and resubmits what a crash left in flight.
#[test]
fn in_the_chroot_jail_a_request_left_in_flight_is_resubmitted_once() {
    for engine in ENGINES {
        later_completed_first_in(&jailed_opts(engine, "chroot"), false);
    }
}

#[test]
fn a_crash_inside_a_completion_neither_loses_nor_repeats_it() {
    for engine in ENGINES {
        later_completed_first(engine, true);
    }
}

/// A real crash with completions out of order: each round is a flush
/// (through io_uring, waiting for writeback) then 31 writes (on ext4 the
/// engine writes buffered data at once, so they complete before the
/// flush); the daemon is stopped (SIGSTOP) until the region shows a
/// request taken and not completed behind one taken later and completed
/// (otherwise SIGCONT, and another round), then SIGKILLed and restarted.
/// Every request completes exactly once, the writes' data is on the
/// image, and the used ring holds exactly as many entries as requests.
#[test]
fn a_daemon_killed_with_requests_in_flight_completes_each_once_after_restart() {
    const N: u64 = 32;
    const LEN: usize = 64 << 10;
    let s = daemon_with("disk.img", 256 << 20, &opts("io_uring"));
    let mut daemon = s.daemon;
    let mut c = BlkClient::connect(daemon.socket(), &client_opts()).unwrap();
    let mut submitted = 0u64;
    let mut caught = None;
    for round in 0..200u64 {
        let mut q = c.queue(0);
        let mem = q.virtqueue().mem().clone();
        let mut writes = Vec::new();
        q.submit(Request::Flush).unwrap();
        for i in 1..N {
            let n = round * N + i;
            let slot = q.peek_slot().unwrap();
            mem.write(q.data_addr(slot), &pattern(n as u8, LEN))
                .unwrap();
            let sector = (n % 2000) * (LEN as u64 / 512);
            q.submit(Request::Write {
                sector,
                len: LEN as u32,
            })
            .unwrap();
            writes.push((sector, n));
        }
        submitted += N;
        q.kick().unwrap();
        let pid = serving_pid(daemon.pid());
        // SAFETY: kill(2) with a pid and a signal touches no memory.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let region = Region::of(&mut c);
        let in_flight: Vec<u16> = (0..128).filter(|&h| region.inflight(h)).collect();
        let last = region.counter(region.u16_at(12));
        let overtaken = in_flight
            .iter()
            .filter(|&&h| region.counter(h) < last)
            .count();
        if overtaken > 0 {
            caught = Some((round, in_flight.len(), overtaken, writes));
            break;
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        let mut q = c.queue(0);
        let mut done = Vec::new();
        while q.in_flight() > 0 {
            q.reap(T, &mut done).unwrap();
        }
    }
    let (round, in_flight, overtaken, writes) = caught
        .expect("no stop in 200 rounds found a request in flight behind a later completed one");
    eprintln!(
        "round {round}: {in_flight} request(s) in flight at the kill, {overtaken} of them \
         overtaken by a later one"
    );
    kill_hard(&mut daemon, LONG).unwrap();
    let restarted = restart(&s.image, daemon.socket(), &opts("io_uring"));
    c.device().reconnect(&client_opts().device).unwrap();
    let mut q = c.queue(0);
    let mut done = Vec::new();
    while q.in_flight() > 0 {
        q.reap(T, &mut done).unwrap();
    }
    q.execute(Request::Flush, T).unwrap();
    submitted += 1;
    let used = q.virtqueue().used_idx().unwrap();
    assert_eq!(
        u64::from(used),
        submitted,
        "used entries for {submitted} requests"
    );
    for (sector, n) in writes {
        assert!(
            host_read(&s.image, sector, LEN) == pattern(n as u8, LEN),
            "write {n} at sector {sector} is not on the image"
        );
    }
    drop(restarted);
}
