//! `virtiofsd --state-file`: the FUSE session survives a SIGKILL. The
//! node ids, file handles and INIT of the dead daemon are valid in the
//! one restarted on the same socket and state file, once the driver has
//! reconnected as a VMM does; a node unlinked while no daemon ran gets
//! ESTALE, and the daemon serves on.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use vu_driver::crash::kill_hard;
use vu_driver::fixture::{poll_until, TempDir};
use vu_driver::fs::{FsClient, FsOptions};
use vu_driver::ours::virtiofsd;

const T: Duration = Duration::from_secs(30);

fn errno<T: std::fmt::Debug>(r: Result<T, vu_driver::fs::FsError>) -> Option<i32> {
    r.expect_err("an error").errno()
}

#[test]
fn node_ids_and_handles_survive_a_kill_and_restart() {
    // Inline, and on a thread pool.
    for extra in [&[][..], &["--thread-pool-size", "4"][..]] {
        survive(extra);
    }
}

fn survive(extra: &[&str]) {
    let dir = TempDir::new("fs-restart").unwrap();
    let share = dir.join("share");
    let c_host = share.join("a/b/c");
    std::fs::create_dir_all(&c_host).unwrap();
    std::fs::write(c_host.join("file"), b"hello world").unwrap();
    std::fs::write(c_host.join("x"), b"").unwrap();
    std::fs::write(share.join("a/gone"), b"soon unlinked").unwrap();
    let socket = dir.join("fs.sock");
    let state = dir.join("fs.state");
    let state_arg = state.to_str().unwrap();
    let args = [&["--state-file", state_arg][..], extra].concat();
    let mut daemon = virtiofsd(&share, &socket, &args).unwrap();
    let mut fs = FsClient::connect(&socket, FsOptions::default()).unwrap();
    fs.set_timeout(T);

    let a = fs.lookup(1, "a").unwrap().nodeid;
    let b = fs.lookup(a, "b").unwrap().nodeid;
    let c = fs.lookup(b, "c").unwrap().nodeid;
    let file = fs.lookup(c, "file").unwrap().nodeid;
    let gone = fs.lookup(a, "gone").unwrap().nodeid;
    let fh = fs.open(file, libc::O_RDWR).unwrap().fh;
    let dh = fs.opendir(c).unwrap().fh;
    let gone_fh = fs.open(gone, libc::O_RDONLY).unwrap().fh;

    kill_hard(&mut daemon, T).unwrap();
    std::fs::remove_file(share.join("a/gone")).unwrap();
    let _ = std::fs::remove_file(&socket);
    let restarted = virtiofsd(&share, &socket, &args).unwrap();
    let dopts = {
        let mut d = fs.options().device.clone();
        d.num_queues = 2;
        d.queue_size = fs.options().queue_size;
        d
    };
    fs.device().reconnect(&dopts).unwrap();

    // No INIT: the old session's ids answer.
    let attr = fs.getattr(c, None).unwrap().attr;
    assert_eq!(attr.ino, std::fs::metadata(&c_host).unwrap().ino(), "c");
    assert_eq!(fs.getattr(file, Some(fh)).unwrap().attr.size, 11);
    assert_eq!(fs.read(fh, file, 0, 64).unwrap(), b"hello world");
    assert_eq!(fs.write(fh, file, 0, b"HELLO").unwrap(), 5);
    assert_eq!(
        std::fs::read(c_host.join("file")).unwrap(),
        b"HELLO world",
        "written through the old handle"
    );
    let mut names: Vec<Vec<u8>> = fs
        .readdir(dh, c, 0, 4096)
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [&b"."[..], b"..", b"file", b"x"],
        "old directory handle"
    );
    // A new lookup of a known file gives its old node id.
    assert_eq!(fs.lookup(c, "file").unwrap().nodeid, file);
    assert_ne!(fs.lookup(c, "x").unwrap().nodeid, 0);

    // Unlinked while no daemon ran: a clean error, not a hang.
    assert_eq!(errno(fs.getattr(gone, None)), Some(libc::ESTALE));
    assert_eq!(errno(fs.read(gone_fh, gone, 0, 16)), Some(libc::ESTALE));
    fs.release(gone_fh, gone, libc::O_RDONLY).unwrap();
    fs.forget(gone, 1).unwrap();

    // RELEASE, RELEASEDIR and FORGET end them.
    fs.release(fh, file, libc::O_RDWR).unwrap();
    fs.releasedir(dh, c).unwrap();
    assert_eq!(
        errno(fs.release(fh, file, libc::O_RDWR)),
        Some(libc::EBADF),
        "released twice"
    );
    // FORGET goes on the hiprio queue, unordered with the request queue.
    fs.forget(file, 2).unwrap();
    let forgotten = || fs.getattr(file, None).err().and_then(|e| e.errno()) == Some(libc::EBADF);
    assert!(
        poll_until(T, forgotten),
        "FORGET of both lookups did not end the node"
    );
    assert_eq!(fs.getattr(a, None).unwrap().attr.ino, {
        std::fs::metadata(share.join("a")).unwrap().ino()
    });
    let log = restarted.log_contents();
    assert!(
        log.contains("resuming the FUSE session of the state file: 5 node(s), 3 handle(s)"),
        "{log}"
    );
}
