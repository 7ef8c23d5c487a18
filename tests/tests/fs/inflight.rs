//! In-flight I/O tracking in `virtiofsd` (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD):
//! after a kill and a restart on the same socket, a request the dead
//! daemon took and did not answer is answered exactly once by the new one
//! (EIO: its FUSE session did not survive the crash; served when the daemon
//! resumes it from `--state-file`, issue 13 item 3), and
//! one it answered is not answered again, even when it answered a later
//! request first; in a resumed session a request that is not safe to
//! repeat (MKDIR) is answered EIO where one that is (READ) is served.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::GuestAddress;
use vu_driver::crash::kill_hard;
use vu_driver::fixture::{poll_until, Daemon, TempDir};
use vu_driver::fs::wire::Request;
use vu_driver::fs::{FsClient, FsOptions};
use vu_driver::ours::virtiofsd;
use vu_driver::virtqueue::VirtQueue;

const T: Duration = Duration::from_secs(30);
/// The request queue (queue 0 is hiprio).
const Q: usize = 1;

/// The head at avail position `i` of `vq`.
fn avail_head(vq: &VirtQueue, i: u16) -> u16 {
    let at = vq.avail_addr().0 + 4 + 2 * u64::from(i % vq.size());
    vq.mem().read_obj::<u16>(GuestAddress(at)).unwrap()
}

#[test]
fn a_request_left_in_flight_behind_an_answered_one_is_answered_once_after_a_restart() {
    // Inline, and on a thread pool (completions from its threads).
    for args in [&[][..], &["--thread-pool-size", "4"][..]] {
        answered_once(args, false);
    }
}

/// The chroot jail's connections pass through the relay too, so it
/// offers INFLIGHT_SHMFD and answers what a crash left in flight.
#[test]
fn in_the_chroot_jail_a_request_left_in_flight_is_answered_once_after_a_restart() {
    answered_once(&["--sandbox", "chroot"], false);
}

/// With `--state-file` the restarted daemon resumes the FUSE session, so
/// the request left in flight is served, not refused.
#[test]
fn with_a_state_file_a_request_left_in_flight_is_served_after_a_restart() {
    for args in [&[][..], &["--thread-pool-size", "4"][..]] {
        answered_once(args, true);
    }
}

/// The daemon's arguments plus `--state-file` in `dir` when `state`.
fn with_state(dir: &TempDir, args: &[&str], state: bool) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if state {
        v.push("--state-file".into());
        v.push(dir.join("fs.state").to_str().unwrap().into());
    }
    v
}

/// What a daemon killed with `in_flight` taken and not answered leaves:
/// each head marked in flight in the request queue's part of the region,
/// and the used index (in the ring and in the region's header) at
/// `used_idx`, the entries before it as they are.
fn leave_in_flight(fs: &mut FsClient, used_idx: u16, in_flight: &[u16]) {
    let region = fs.device().inflight_region().unwrap().try_clone().unwrap();
    let part = (16 * 256 + 2u64).next_multiple_of(64);
    for &h in in_flight {
        region
            .write_all_at(&[1], part + 16 + 16 * u64::from(h))
            .unwrap();
    }
    region
        .write_all_at(&used_idx.to_le_bytes(), part + 14)
        .unwrap();
    let vq = fs.device().queue(Q);
    vq.mem()
        .store_u16(
            GuestAddress(vq.used_addr().0 + 2),
            used_idx,
            Ordering::Release,
        )
        .unwrap();
}

/// Starts the daemon again on `socket` and reconnects `fs` to it.
fn restart(fs: &mut FsClient, share: &Path, socket: &Path, args: &[&str]) -> Daemon {
    let _ = std::fs::remove_file(socket);
    let restarted = virtiofsd(share, socket, args).unwrap();
    let dopts = {
        let mut d = fs.options().device.clone();
        d.num_queues = 2;
        d.queue_size = 256;
        d
    };
    fs.device().reconnect(&dopts).unwrap();
    restarted
}

/// A client on `socket` offering in-flight tracking.
fn connect(socket: &Path) -> FsClient {
    let mut opts = FsOptions::default();
    opts.device.protocol_features |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
    FsClient::connect(socket, opts).unwrap()
}

fn answered_once(args: &[&str], state: bool) {
    let dir = TempDir::new("fs-inflight").unwrap();
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    let socket = dir.join("fs.sock");
    let args = with_state(&dir, args, state);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = virtiofsd(&share, &socket, &args).unwrap();
    let mut fs = connect(&socket);
    let mut p = fs.pipeline(2).unwrap();
    // A then B; both answered (INIT came before, at avail position 0).
    p.send(&mut fs, 0, &Request::getattr(1, None)).unwrap();
    p.send(&mut fs, 1, &Request::getattr(1, None)).unwrap();
    p.kick(&mut fs).unwrap();
    let vq = fs.device().queue(Q);
    assert!(
        poll_until(T, || vq.used_idx().unwrap() == 3),
        "A and B not answered"
    );
    let (head_a, head_b) = (avail_head(vq, 1), avail_head(vq, 2));
    kill_hard(&mut daemon, T).unwrap();

    // What the daemon would have left had it answered B, not A: the used
    // ring [INIT, B], A in flight.
    let entry = |i: u64| GuestAddress(vq.used_addr().0 + 4 + 8 * i);
    let b_used = [1, 2]
        .map(|i| vq.mem().read_obj::<[u32; 2]>(entry(i)).unwrap())
        .into_iter()
        .find(|e| e[0] == u32::from(head_b))
        .expect("B on the used ring");
    vq.mem().write_obj(entry(1), b_used).unwrap();
    leave_in_flight(&mut fs, 2, &[head_a]);

    let restarted = restart(&mut fs, &share, &socket, &args);
    let (slot, reply) = p.recv(&mut fs).unwrap();
    assert_eq!(slot, 1, "B, answered before the crash");
    assert!(reply.is_ok(), "{reply:?}");
    let (slot, reply) = p.recv(&mut fs).unwrap();
    assert_eq!(slot, 0, "A, answered by the restarted daemon");
    if state {
        assert!(reply.is_ok(), "in the resumed session: {reply:?}");
    } else {
        assert_eq!(reply.unwrap_err().errno(), Some(libc::EIO));
    }
    // A new request after it; nothing answered twice (a second answer to A
    // or B would come first and match no request in flight).
    p.send(&mut fs, 0, &Request::getattr(1, None)).unwrap();
    p.kick(&mut fs).unwrap();
    let (slot, _) = p.recv(&mut fs).unwrap();
    assert_eq!(slot, 0);
    assert_eq!(fs.device().queue(Q).used_idx().unwrap(), 4);
    let log = restarted.log_contents();
    assert!(log.contains("resubmitting 1 request(s)"), "{log}");
}

/// A MKDIR and a READ the killed daemon took (and ran) but did not
/// answer: in the resumed session the READ, safe to repeat, is served
/// again; the MKDIR is not run twice (which would answer EEXIST for the
/// directory the dead daemon made) but answered EIO. Each is answered
/// exactly once, and the directory exists once.
#[test]
fn with_a_state_file_a_resubmitted_mkdir_is_eio_and_a_read_is_served() {
    for args in [&[][..], &["--thread-pool-size", "4"][..]] {
        replayed_by_kind(args);
    }
}

fn replayed_by_kind(args: &[&str]) {
    let dir = TempDir::new("fs-inflight-kind").unwrap();
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("data"), b"kept across the crash").unwrap();
    let socket = dir.join("fs.sock");
    let args = with_state(&dir, args, true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = virtiofsd(&share, &socket, &args).unwrap();
    let mut fs = connect(&socket);
    let node = fs.lookup(1, "data").unwrap().nodeid;
    let fh = fs.open(node, libc::O_RDONLY).unwrap().fh;
    let before = fs.device().queue(Q).used_idx().unwrap();
    let mut p = fs.pipeline(2).unwrap();
    p.send(&mut fs, 0, &Request::mkdir(1, b"made", 0o755).unwrap())
        .unwrap();
    p.send(&mut fs, 1, &Request::read(fh, node, 0, 64)).unwrap();
    p.kick(&mut fs).unwrap();
    let vq = fs.device().queue(Q);
    assert!(
        poll_until(T, || vq.used_idx().unwrap() == before + 2),
        "MKDIR and READ not run"
    );
    let heads = [avail_head(vq, before), avail_head(vq, before + 1)];
    kill_hard(&mut daemon, T).unwrap();
    assert!(share.join("made").is_dir(), "the dead daemon ran the MKDIR");
    // Both ran, neither was answered.
    leave_in_flight(&mut fs, before, &heads);

    let restarted = restart(&mut fs, &share, &socket, &args);
    let mut replies = [None, None];
    for _ in 0..2 {
        let (slot, reply) = p.recv(&mut fs).unwrap();
        assert!(replies[slot].is_none(), "slot {slot} answered twice");
        replies[slot] = Some(reply);
    }
    let [mkdir, read] = replies.map(Option::unwrap);
    assert_eq!(
        mkdir.unwrap_err().errno(),
        Some(libc::EIO),
        "a resubmitted MKDIR"
    );
    assert_eq!(read.unwrap(), b"kept across the crash", "the READ");
    assert_eq!(fs.device().queue(Q).used_idx().unwrap(), before + 2);
    // The directory is there once; a new request is answered next and
    // nothing comes twice.
    let names: Vec<_> = std::fs::read_dir(&share)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "made").count(),
        1,
        "{names:?}"
    );
    p.send(&mut fs, 0, &Request::lookup(1, b"made").unwrap())
        .unwrap();
    p.kick(&mut fs).unwrap();
    let (slot, reply) = p.recv(&mut fs).unwrap();
    assert_eq!(slot, 0);
    assert!(reply.is_ok(), "LOOKUP of the directory: {reply:?}");
    assert_eq!(fs.device().queue(Q).used_idx().unwrap(), before + 3);
    let log = restarted.log_contents();
    assert!(log.contains("resubmitting 2 request(s)"), "{log}");
    assert!(log.contains("resubmitted after a restart"), "{log}");
}
