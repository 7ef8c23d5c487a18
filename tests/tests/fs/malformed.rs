//! Our `virtiofsd` fed the FUSE and descriptor input of NOTES.md's list
//! through the driver's raw mode. The answer must be an errno reply, or,
//! where the contract says so (a request fuse-backend-rs cannot decode, a
//! chain that cannot be read), the head back on the used ring with len 0;
//! never a success, never a hang. Afterwards the daemon must still be
//! running and answer a valid request. The descriptor-level cases every
//! ring gets (loops, indices, indirect tables, buffers outside guest
//! memory, a jumping avail index) are in `daemons/malformed.rs`; those
//! here are about a FUSE request's framing.

use std::fs;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    BatchForgetIn, ForgetIn, ForgetOne, GetattrIn, Opcode, ReadIn, RenameIn, WriteIn, ROOT_ID,
};
use vm_memory::GuestAddress;
use vu_driver::fs::wire::{
    dirent_align, Request, DIRENTPLUS_LEN, DIRENT_LEN, IN_HEADER_LEN, OUT_HEADER_LEN,
};
use vu_driver::fs::{FsClient, FsOptions, Malformed, Outcome, RawReply, HIPRIO_QUEUE};
use vu_driver::virtqueue::{RawDesc, Used, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::common::*;

/// How long a request the daemon should answer may take here (a hang is a failure).
const RAW_T: Duration = Duration::from_secs(5);

/// What came back for a bad request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The head with used len 0.
    Dropped,
    /// A reply with this errno.
    Errno(i32),
}

/// Classifies a raw reply to the request with `unique`: len 0 or an errno
/// reply are fine; a success reply, a reply to another request or a reply
/// whose header disagrees with the used length are failures.
fn answer(what: &str, unique: u64, r: &RawReply) -> Answer {
    if r.used_len == 0 {
        return Answer::Dropped;
    }
    let h = r
        .header()
        .unwrap_or_else(|| panic!("{what}: {} bytes, no fuse_out_header: {r:?}", r.used_len));
    assert_eq!(h.unique, unique, "{what}: reply to another request: {h:?}");
    assert_eq!(
        h.len, r.used_len,
        "{what}: out_header.len vs used len: {h:?}"
    );
    match r.errno() {
        Some(e) => Answer::Errno(e),
        None => panic!(
            "{what}: the daemon answered success ({} body bytes) where an errno or len 0 was expected",
            r.body().len()
        ),
    }
}

/// A daemon over a share with a file `f` and a directory `d`.
fn rig(opts: FsOptions) -> Setup {
    let run = run_with(&[], |d| {
        fs::write(d.join("f"), b"file data").unwrap();
        fs::create_dir(d.join("d")).unwrap();
    });
    let mut fs = connect(&run, opts);
    fs.set_timeout(RAW_T);
    Setup { fs, run }
}

fn alive(s: &mut Setup, what: &str) {
    let share = s.run.share.clone();
    still_serving(&mut s.fs, &mut s.run.daemon, &share, what);
}

/// Sends one of the driver's malformed cases; returns what came back.
fn malformed(s: &mut Setup, case: Malformed) -> (u64, RawReply) {
    match s.fs.send_malformed(case).unwrap() {
        (unique, Outcome::Replied(r)) => (unique, r),
        (_, Outcome::Dropped) => panic!(
            "{case:?}: the head never came back (hang); log:\n{}",
            log_tail(&s.run.daemon, 10)
        ),
    }
}

#[test]
fn truncated_header_is_returned_with_len_0_and_logged() {
    let mut s = rig(FsOptions::default());
    let (_, r) = malformed(&mut s, Malformed::TruncatedHeader);
    assert_eq!(r.used_len, 0, "{r:?}");
    alive(&mut s, "a truncated header");
    assert!(
        s.run.daemon.log_contents().contains("malformed"),
        "no warning containing \"malformed\":\n{}",
        log_tail(&s.run.daemon, 10)
    );
}

/// A fresh daemon gets the malformed `case` (`what`): it answers with an
/// errno or drops it (see [`answer`]), and still serves after it (`after`).
fn refused(case: Malformed, what: &str, after: &str) {
    let mut s = rig(FsOptions::default());
    let (unique, r) = malformed(&mut s, case);
    answer(what, unique, &r);
    alive(&mut s, after);
}

#[test]
fn len_larger_than_the_buffer_is_refused() {
    refused(
        Malformed::LenTooLarge,
        "len 4096 on a 56-byte GETATTR",
        "len too large",
    );
}

#[test]
fn len_smaller_than_the_header_is_refused() {
    refused(
        Malformed::LenTooSmall,
        "len 8 on a 56-byte GETATTR",
        "len too small",
    );
}

#[test]
fn missing_arguments_are_refused() {
    refused(
        Malformed::MissingArgs,
        "READ without fuse_read_in",
        "missing arguments",
    );
}

#[test]
fn a_header_split_across_descriptors_is_served() {
    let mut s = rig(FsOptions::default());
    let (unique, r) = malformed(&mut s, Malformed::SplitMidHeader);
    let h = r.header().expect("a reply");
    assert_eq!((h.unique, h.error, h.len), (unique, 0, r.used_len), "{r:?}");
    assert_eq!(r.used_len as usize, OUT_HEADER_LEN + 104, "a fuse_attr_out");
    alive(&mut s, "a split header");
}

/// Sends `req` (header + args, then `extra` raw bytes) on the request
/// queue with a 4 KiB reply buffer; `len_adjust` is added to the header's
/// `len` after encoding.
fn send(s: &mut Setup, req: &Request, extra: &[u8], len_adjust: i64) -> (u64, RawReply) {
    let (unique, mut bytes) = s.fs.encode(req, extra.len());
    let len = (i64::from(u32::from_le_bytes(bytes[..4].try_into().unwrap())) + len_adjust) as u32;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(extra);
    let r =
        s.fs.raw_request(1, &bytes, 4096)
            .unwrap_or_else(|e| panic!("{}: {e}; log:\n{}", req.op, log_tail(&s.run.daemon, 10)));
    (unique, r)
}

#[test]
fn unknown_and_unserved_opcodes_get_an_errno() {
    let mut s = rig(FsOptions::default());
    // 0, beyond the table, CUSE_INIT, u32::MAX: ENOSYS. SETUPMAPPING and
    // REMOVEMAPPING without a DAX window, IOCTL, locks, COPY_FILE_RANGE:
    // some errno.
    for opcode in [0u32, 999, 4096, u32::MAX, 48, 49, 39, 31, 32, 33, 47, 40] {
        let mut req = Request::new("RAW", Opcode::Getattr, ROOT_ID);
        req.args.extend_from_slice(&[0u8; 64]);
        req.opcode = opcode;
        let (unique, r) = send(&mut s, &req, &[], 0);
        let a = answer(&format!("opcode {opcode}"), unique, &r);
        if [0, 999, 4096, u32::MAX].contains(&opcode) {
            assert_eq!(a, Answer::Errno(libc::ENOSYS), "opcode {opcode}");
        }
        alive(&mut s, &format!("opcode {opcode}"));
    }
}

#[test]
fn requests_before_init_get_an_errno() {
    let mut s = rig(FsOptions {
        init: false,
        ..FsOptions::default()
    });
    let mut failures = Vec::new();
    for (what, r) in [
        ("GETATTR", s.fs.getattr(ROOT_ID, None).map(|_| ())),
        ("LOOKUP", s.fs.lookup(ROOT_ID, "f").map(|_| ())),
        ("OPENDIR", s.fs.opendir(ROOT_ID).map(|_| ())),
        ("STATFS", s.fs.statfs(ROOT_ID).map(|_| ())),
        (
            "CREATE",
            s.fs.create(ROOT_ID, "before-init", libc::S_IFREG | 0o644, libc::O_RDWR)
                .map(|_| ()),
        ),
    ] {
        match r {
            Err(e) if e.errno().is_some() => {}
            Err(e) => panic!("{what} before INIT: not an errno: {e:?}"),
            Ok(()) => failures.push(what),
        }
    }
    let created = s.host("before-init").exists();
    // INIT still works afterwards, and so does everything else.
    s.fs.init().unwrap();
    alive(&mut s, "requests before INIT");
    assert!(
        failures.is_empty() && !created,
        "served before INIT: {failures:?} (file created on the host: {created})"
    );
}

#[test]
fn a_second_init_does_not_break_the_session() {
    let mut s = rig(FsOptions::default());
    let e = s.fs.lookup(ROOT_ID, "f").unwrap();
    match s.fs.init() {
        Ok(_) => {}
        Err(err) => assert!(err.errno().is_some(), "second INIT: {err:?}"),
    }
    alive(&mut s, "a second INIT");
    s.fs.getattr(e.nodeid, None).unwrap();
}

/// Names a kernel never sends in a request that takes one, and names
/// encoded wrongly: each gets an errno and changes nothing.
/// Names a kernel never sends, in every op that takes a name: each gets
/// an errno and changes nothing (see `bad_name_matrix`).
#[test]
fn bad_names_get_an_errno_in_every_op() {
    let mut s = rig(FsOptions::default());
    let bad = bad_name_matrix(&mut s.fs, &mut s.run);
    alive(&mut s, "bad names");
    bad.assert_none("(names that must be refused, --sandbox none)");
}

#[test]
fn names_encoded_wrongly_get_an_errno() {
    let mut s = rig(FsOptions::default());
    // A LOOKUP whose name has no NUL terminator.
    let mut req = Request::new("LOOKUP", Opcode::Lookup, ROOT_ID);
    req.args.extend_from_slice(b"f");
    let (unique, r) = send(&mut s, &req, &[], 0);
    answer("LOOKUP without NUL", unique, &r);
    // A LOOKUP with no name at all.
    let (unique, r) = send(
        &mut s,
        &Request::new("LOOKUP", Opcode::Lookup, ROOT_ID),
        &[],
        0,
    );
    answer("LOOKUP without a name", unique, &r);
    // `len` cuts the name short (no NUL left inside `len`).
    let req = Request::new("LOOKUP", Opcode::Lookup, ROOT_ID)
        .name(b"f-long-name")
        .unwrap();
    let (unique, r) = send(&mut s, &req, &[], -4);
    answer("LOOKUP with len cutting the name", unique, &r);
    // A RENAME and a SYMLINK with one string where two belong.
    let req = Request::new("RENAME", Opcode::Rename, ROOT_ID)
        .arg(&RenameIn { newdir: ROOT_ID })
        .name(b"f")
        .unwrap();
    let (unique, r) = send(&mut s, &req, &[], 0);
    answer("RENAME with one name", unique, &r);
    let req = Request::new("SYMLINK", Opcode::Symlink, ROOT_ID)
        .name(b"sl")
        .unwrap();
    let (unique, r) = send(&mut s, &req, &[], 0);
    answer("SYMLINK with one name", unique, &r);
    assert!(s.host("f").exists());
    assert!(!s.host("sl").exists());
    alive(&mut s, "names encoded wrongly");
}

/// Sends raw bytes on the high-priority queue (no reply buffer) and
/// returns the used length.
fn hiprio(s: &mut Setup, bytes: &[u8]) -> u32 {
    s.fs.raw_request(HIPRIO_QUEUE, bytes, 0)
        .unwrap_or_else(|e| panic!("hiprio: {e}; log:\n{}", log_tail(&s.run.daemon, 10)))
        .used_len
}

#[test]
fn forget_of_unknown_nodes_and_bad_batch_forgets_are_harmless() {
    let mut s = rig(FsOptions::default());
    let f = s.fs.lookup(ROOT_ID, "f").unwrap().nodeid;
    for (node, n) in [
        (0xdead_beef, 1),
        (0, 1),
        (u64::MAX, u64::MAX),
        (ROOT_ID, u64::MAX),
        (f + 1000, 5),
    ] {
        s.fs.forget(node, n).unwrap();
    }
    s.fs.wait_forgets().unwrap();
    alive(&mut s, "FORGET of unknown nodes and of the root");
    // The file's node survives FORGETs of other nodes.
    s.fs.getattr(f, None).unwrap();

    // BATCH_FORGET: a count larger than the entries sent, a count of
    // u32::MAX, unknown nodes, and a FORGET without its argument.
    let batch = |count: u32, entries: &[(u64, u64)]| {
        let mut req = Request::new("BATCH_FORGET", Opcode::BatchForget, 0)
            .arg(&BatchForgetIn { count, dummy: 0 });
        for &(nodeid, nlookup) in entries {
            req = req.arg(&ForgetOne { nodeid, nlookup });
        }
        req
    };
    for (what, req) in [
        ("count 1000, one entry", batch(1000, &[(0xdead, 1)])),
        ("count u32::MAX", batch(u32::MAX, &[])),
        (
            "unknown nodes",
            batch(2, &[(0xdead, 1), (u64::MAX, u64::MAX)]),
        ),
        (
            "FORGET without nlookup",
            Request::new("FORGET", Opcode::Forget, f),
        ),
        (
            "FORGET of the root",
            Request::new("FORGET", Opcode::Forget, ROOT_ID).arg(&ForgetIn { nlookup: u64::MAX }),
        ),
    ] {
        let (_, bytes) = s.fs.encode(&req, 0);
        assert_eq!(hiprio(&mut s, &bytes), 0, "{what}: a FORGET has no reply");
        alive(&mut s, what);
    }
    s.fs.getattr(f, None).unwrap();
}

#[test]
fn huge_writes_are_refused() {
    let mut s = rig(FsOptions {
        max_io: 2 << 20,
        ..FsOptions::default()
    });
    let e = s.fs.lookup(ROOT_ID, "f").unwrap();
    let fh = s.fs.open(e.nodeid, libc::O_RDWR).unwrap().fh;
    let data = pattern(4096, 3);
    let write = |size: u32, offset: u64| {
        Request::new("WRITE", Opcode::Write, e.nodeid).arg(&WriteIn {
            fh,
            offset,
            size,
            ..Default::default()
        })
    };
    let mut bad = Failures::default();
    for (what, req, extra, adjust) in [
        (
            "size 16 MiB, 4 KiB sent",
            write(16 << 20, 0),
            &data[..],
            0i64,
        ),
        (
            "size u32::MAX, 4 KiB sent",
            write(u32::MAX, 0),
            &data[..],
            0,
        ),
        (
            "len claims 16 MiB more",
            write(4096, 0),
            &data[..],
            16 << 20,
        ),
        (
            "offset near u64::MAX",
            write(4096, u64::MAX - 100),
            &data[..],
            0,
        ),
    ] {
        let (unique, r) = send(&mut s, &req, extra, adjust);
        if r.used_len != 0 && r.errno().is_none() {
            let written = r
                .body()
                .get(..4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
            bad.push(format!("{what}: success, {written:?} bytes written"));
        } else {
            answer(what, unique, &r);
        }
        let host = fs::read(s.host("f")).unwrap();
        assert!(
            host.len() <= 4096 && (host == b"file data" || host == data[..host.len()]),
            "{what}: the host file became {} bytes",
            host.len()
        );
        alive(&mut s, what);
    }
    // A real payload larger than max_write (1 MiB): refused, nothing written.
    let max = s.fs.max_write();
    assert!(max >= 1 << 20);
    let big = pattern(max as usize + 8192, 9);
    bad.expect_errno(
        "WRITE larger than max_write",
        s.fs.write(fh, e.nodeid, 1 << 20, &big),
    );
    let size = fs::metadata(s.host("f")).unwrap().len();
    bad.check(size < 1 << 20, || {
        format!("WRITE larger than max_write: file of {size} bytes")
    });
    alive(&mut s, "a WRITE larger than max_write");
    bad.assert_none("(huge WRITEs)");
}

#[test]
fn tiny_and_oversized_readdir_buffers() {
    let mut s = rig(FsOptions::default());
    for i in 0..20 {
        fs::write(s.host(&format!("entry-{i}")), b"e").unwrap();
    }
    let fh = s.fs.opendir(ROOT_ID).unwrap().fh;
    // What fits is returned, nothing more; an errno is fine too.
    for size in [0u32, 1, 8, 23, 24, 25, 31] {
        match s.fs.readdir(fh, ROOT_ID, 0, size) {
            Ok(v) => {
                let used: usize = v
                    .iter()
                    .map(|d| dirent_align(DIRENT_LEN + d.name.len()))
                    .sum();
                assert!(used <= size as usize, "READDIR size {size}: {v:?}");
            }
            Err(e) => assert!(e.errno().is_some(), "READDIR size {size}: {e:?}"),
        }
        alive(&mut s, &format!("READDIR of {size} bytes"));
    }
    for size in [0u32, 1, 100, 151, 152, 159] {
        match s.fs.readdirplus(fh, ROOT_ID, 0, size) {
            Ok(v) => {
                let used: usize = v
                    .iter()
                    .map(|d| dirent_align(DIRENTPLUS_LEN + d.name().len()))
                    .sum();
                assert!(used <= size as usize, "READDIRPLUS size {size}: {v:?}");
            }
            Err(e) => assert!(e.errno().is_some(), "READDIRPLUS size {size}: {e:?}"),
        }
        alive(&mut s, &format!("READDIRPLUS of {size} bytes"));
    }
    // `size` larger than the reply buffer offered, and u32::MAX.
    for size in [65536u32, u32::MAX] {
        let req = Request::new("READDIR", Opcode::Readdir, ROOT_ID).arg(&ReadIn {
            fh,
            size,
            ..Default::default()
        });
        let (unique, r) = send(&mut s, &req, &[], 0);
        answer(&format!("READDIR size {size} into 4 KiB"), unique, &r);
    }
    // The handle still lists everything.
    let all = s.fs.readdir(fh, ROOT_ID, 0, 65536).unwrap();
    assert_eq!(
        all.iter().filter(|d| d.name.starts_with(b"entry-")).count(),
        20
    );
    s.fs.releasedir(fh, ROOT_ID).unwrap();
    alive(&mut s, "tiny READDIR buffers");
}

// ---- Chains framed badly for FUSE ----

/// A valid GETATTR of the root written into fresh guest memory; returns
/// its address, length and a 256-byte reply buffer's address.
fn getattr_in_memory(fs: &mut FsClient) -> (u64, u32, u64) {
    let req = Request::new("GETATTR", Opcode::Getattr, ROOT_ID).arg(&GetattrIn::default());
    let (_, bytes) = fs.encode(&req, 0);
    let mem = fs.device().mem().clone();
    let at = mem.alloc(4096, 4096).unwrap();
    mem.write(at, &bytes).unwrap();
    let reply = mem.alloc(4096, 4096).unwrap();
    (at.0, bytes.len() as u32, reply.0)
}

/// Publishes `descs` as a raw chain on the request queue, kicks, and waits
/// for the head: it must come back (no hang) with len 0 or an errno reply
/// written at `reply` (if any).
fn chain_case(what: &str, build: impl FnOnce(&mut FsClient, u64, u32, u64) -> Vec<RawDesc>) {
    let mut s = rig(FsOptions::default());
    let (req, req_len, reply) = getattr_in_memory(&mut s.fs);
    let descs = build(&mut s.fs, req, req_len, reply);
    let vq = s.fs.device().queue(1);
    let slots = vq.raw_chain(&descs).unwrap();
    if !vq.kick().unwrap() {
        vq.notify().unwrap();
    }
    let used: Used = vq.wait_used(RAW_T).unwrap_or_else(|e| {
        panic!(
            "{what}: head {} never came back: {e}; log:\n{}",
            slots[0],
            log_tail(&s.run.daemon, 10)
        )
    });
    vq.release_descs(&slots);
    assert_eq!(used.head, slots[0], "{what}: another head came back");
    if used.len != 0 {
        let out: [u8; OUT_HEADER_LEN] = s.fs.device().mem().read_obj(GuestAddress(reply)).unwrap();
        let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
        assert!(
            error < 0,
            "{what}: used len {} with a success reply (error {error})",
            used.len
        );
    }
    alive(&mut s, what);
}

#[test]
fn chain_without_a_writable_buffer() {
    chain_case("GETATTR with no writable descriptor", |_, req, len, _| {
        vec![RawDesc::new(req, len, 0, 0)]
    });
}

#[test]
fn chain_with_only_writable_buffers() {
    chain_case("request in a writable descriptor", |_, req, len, _| {
        vec![RawDesc::new(req, len, VRING_DESC_F_WRITE, 0)]
    });
}

#[test]
fn readable_after_writable() {
    chain_case(
        "readable descriptor after a writable one",
        |_, req, len, reply| {
            vec![
                RawDesc::new(reply, 256, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                RawDesc::new(req, len, 0, 0),
            ]
        },
    );
}

#[test]
fn zero_length_descriptors() {
    chain_case("zero-length descriptors", |_, req, _, reply| {
        vec![
            RawDesc::new(req, 0, VRING_DESC_F_NEXT, 1),
            RawDesc::new(reply, 0, VRING_DESC_F_WRITE, 0),
        ]
    });
}

#[test]
fn chain_total_overflows_u32() {
    // 72 readable descriptors of 60 MiB each over the same memory: more
    // than 4 GiB in one chain.
    chain_case("a chain of more than 4 GiB", |_, _, _, reply| {
        let mut v: Vec<RawDesc> = (0..72u16)
            .map(|i| RawDesc::new(0, 60 << 20, VRING_DESC_F_NEXT, i + 1))
            .collect();
        v.push(RawDesc::new(reply, 256, VRING_DESC_F_WRITE, 0));
        v
    });
}

#[test]
fn header_in_front_of_a_short_request_buffer() {
    // The in-header claims a GETATTR, but the readable bytes stop inside
    // fuse_getattr_in.
    chain_case("a request cut inside its arguments", |_, req, _, reply| {
        vec![
            RawDesc::new(req, IN_HEADER_LEN as u32 + 4, VRING_DESC_F_NEXT, 1),
            RawDesc::new(reply, 256, VRING_DESC_F_WRITE, 0),
        ]
    });
}

/// Sends one bad request.
type BadRequest<'a> = dyn Fn(&mut Setup) + 'a;

/// Lines in the daemon's log.
fn log_lines(s: &Setup) -> usize {
    s.run.daemon.log_contents().lines().count()
}

/// A guest repeating a bad request must not flood the host's log: the
/// warnings it causes are rate-limited (logged 1-10 times, then at powers
/// of two), whatever path the request takes.
#[test]
fn repeated_bad_requests_do_not_flood_the_log() {
    const REPEAT: usize = 300;
    /// At most 10 lines, then one per power of two, plus slack.
    const MAX_LINES: usize = 10 + 9 + 5;
    let mut s = rig(FsOptions::default());
    let mut bad = Failures::default();
    let getattr = Request::new("GETATTR", Opcode::Getattr, ROOT_ID).arg(&GetattrIn::default());
    let cases: [(&str, &BadRequest<'_>); 4] = [
        ("truncated header", &|s: &mut Setup| {
            malformed(s, Malformed::TruncatedHeader);
        }),
        ("len beyond the 1 MiB limit (ENOMEM)", &|s: &mut Setup| {
            send(s, &getattr, &[], 2 << 20);
        }),
        ("READ without arguments", &|s: &mut Setup| {
            malformed(s, Malformed::MissingArgs);
        }),
        ("LOOKUP without NUL", &|s: &mut Setup| {
            let mut req = Request::new("LOOKUP", Opcode::Lookup, ROOT_ID);
            req.args.extend_from_slice(b"f");
            send(s, &req, &[], 0);
        }),
    ];
    for (what, case) in cases {
        let before = log_lines(&s);
        for _ in 0..REPEAT {
            case(&mut s);
        }
        let added = log_lines(&s) - before;
        bad.check(added <= MAX_LINES, || {
            format!(
                "{what} x{REPEAT}: {added} log lines (at most {MAX_LINES}); last:\n{}",
                log_tail(&s.run.daemon, 2)
            )
        });
        alive(&mut s, what);
    }
    bad.assert_none("(log flooding)");
}

/// The bad requests above under the default sandbox and seccomp filter:
/// whatever path a bad request takes (decode error, panic guard, errno
/// reply, DESTROY's re-import, rate-limited warning) must use only system
/// calls the filter allows, or the daemon is killed.
#[test]
fn bad_requests_under_the_default_sandbox_and_seccomp() {
    let dirs = Dirs::new();
    fs::write(dirs.share.join("f"), b"file data").unwrap();
    let cmd = dirs.command(&[]);
    let run = dirs.spawn(cmd);
    let mut fs = connect(&run, FsOptions::default());
    fs.set_timeout(RAW_T);
    let mut s = Setup { fs, run };
    for case in Malformed::ALL {
        malformed(&mut s, case);
        alive(&mut s, &format!("{case:?}"));
    }
    // Opcodes without a reply or without a handler: INTERRUPT, DESTROY
    // (ends the FUSE session: everything but INIT gets EIO until a new
    // INIT, as in libfuse), unknown ones.
    for opcode in [36u32, 38, 999, 48] {
        let mut req = Request::new("RAW", Opcode::Getattr, ROOT_ID);
        req.args.extend_from_slice(&[0u8; 64]);
        req.opcode = opcode;
        send(&mut s, &req, &[], 0);
        if opcode == 38 {
            let err = s.fs.getattr(ROOT_ID, None).unwrap_err();
            assert!(
                err.to_string().contains("os error 5"),
                "GETATTR after DESTROY: {err}"
            );
            s.fs.init().unwrap();
        }
        alive(&mut s, &format!("opcode {opcode}"));
    }
    let getattr = Request::new("GETATTR", Opcode::Getattr, ROOT_ID).arg(&GetattrIn::default());
    let (unique, r) = send(&mut s, &getattr, &[], 2 << 20);
    answer("len beyond the limit", unique, &r);
    let vq = s.fs.device().queue(1);
    let slots = vq.raw_chain(&[RawDesc::new(1 << 40, 64, 0, 0)]).unwrap();
    if !vq.kick().unwrap() {
        vq.notify().unwrap();
    }
    vq.wait_used(RAW_T).unwrap();
    vq.release_descs(&slots);
    for _ in 0..40 {
        malformed(&mut s, Malformed::TruncatedHeader);
    }
    alive(&mut s, "bad requests under seccomp");
    let e = s.fs.lookup(ROOT_ID, "f").unwrap();
    let fh = s.fs.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(s.fs.read(fh, e.nodeid, 0, 64).unwrap(), b"file data");
}
