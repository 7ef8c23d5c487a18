//! In-flight I/O tracking in `virtiofsd` (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD):
//! after a kill and a restart on the same socket, a request the dead
//! daemon took and did not answer is answered exactly once by the new one
//! (EIO: its FUSE session did not survive the crash; served when the daemon
//! resumes it from `--state-file`, issue 13 item 3), and
//! one it answered is not answered again, even when it answered a later
//! request first.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::GuestAddress;
use vu_driver::crash::kill_hard;
use vu_driver::fixture::{poll_until, TempDir};
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

fn answered_once(args: &[&str], state: bool) {
    let dir = TempDir::new("fs-inflight").unwrap();
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    let socket = dir.join("fs.sock");
    let state_file = dir.join("fs.state");
    let state_arg = ["--state-file", state_file.to_str().unwrap()];
    let args = if state {
        [args, &state_arg[..]].concat()
    } else {
        args.to_vec()
    };
    let args = &args[..];
    let mut daemon = virtiofsd(&share, &socket, args).unwrap();
    let mut opts = FsOptions::default();
    opts.device.protocol_features |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
    let mut fs = FsClient::connect(&socket, opts).unwrap();
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
    // ring [INIT, B], A in flight in the region (queue 1's part).
    let region = fs.device().inflight_region().unwrap().try_clone().unwrap();
    let part = (16 * 256 + 2u64).next_multiple_of(64);
    let desc = |h: u16| part + 16 + 16 * u64::from(h);
    let vq = fs.device().queue(Q);
    let entry = |i: u64| GuestAddress(vq.used_addr().0 + 4 + 8 * i);
    let b_used = [1, 2]
        .map(|i| vq.mem().read_obj::<[u32; 2]>(entry(i)).unwrap())
        .into_iter()
        .find(|e| e[0] == u32::from(head_b))
        .expect("B on the used ring");
    vq.mem().write_obj(entry(1), b_used).unwrap();
    vq.mem()
        .store_u16(GuestAddress(vq.used_addr().0 + 2), 2, Ordering::Release)
        .unwrap();
    region.write_all_at(&[1], desc(head_a)).unwrap();
    region.write_all_at(&2u16.to_le_bytes(), part + 14).unwrap();
    region
        .write_all_at(&head_b.to_le_bytes(), part + 12)
        .unwrap();

    let _ = std::fs::remove_file(&socket);
    let restarted = virtiofsd(&share, &socket, args).unwrap();
    let dopts = {
        let mut d = fs.options().device.clone();
        d.num_queues = 2;
        d.queue_size = 256;
        d
    };
    fs.device().reconnect(&dopts).unwrap();
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
