//! `virtiofsd` under test, with its defaults (the namespace sandbox and
//! the seccomp filter): a share holding `hello.txt`; a round reads it,
//! checks the file the previous round made and makes its own. Its request
//! queue is fed malformed chains made from a GETATTR ([`FS_REQUEST`]).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{EntryOut, Opcode, WriteIn, ROOT_ID};

use vm_memory::GuestAddress;

use super::rings::{Chain, Ring, RingUnderTest};
use super::{set_example_var, Busy, Contrib, DaemonUnderTest, Env, Fixture, Rounds, Scratch};
use crate::device::VuDevice;
use crate::fixture::Daemon;
use crate::fs::wire::{Request, OUT_HEADER_LEN};
use crate::fs::{FsClient, FsError, FsOptions, SetAttr};
use crate::image::pattern;
use crate::virtqueue::{RawDesc, Used, VirtQueue, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

/// `virtiofsd`.
pub static FS: DaemonUnderTest = DaemonUnderTest {
    name: "virtiofsd",
    capabilities: "{\"type\":\"fs\",\"features\":[\"separate-options\"]}\n",
    ready_line: Some(READY_LINE),
    watchdog_args: &[],
    contrib: Contrib {
        kind: "fs",
        installed_binary: "/usr/libexec/virtiofsd",
        instance: "share0",
        example_conf: "systemd/virtiofsd-example.conf",
        // CAP_SYS_ADMIN and the passthrough's capabilities cost exposure
        // the block daemon's unit does not have; still "OK".
        max_exposure: 35,
        read_write_paths: true,
        watchdog: true,
    },
    env: |test| Box::new(share_env(test)),
};

/// The line Kata's runtime waits for on stderr (with the dots).
pub const READY_LINE: &str = "Waiting for vhost-user socket connection...";
/// What the share's `hello.txt` holds.
pub const HELLO: &str = "hello from the host's shared directory\n";
/// Bytes of each WRITE [`Env::keep_busy`] keeps in flight (the
/// pipeline's slots carry the data with the request).
const BUSY_WRITE_LEN: usize = 1024;
/// WRITEs [`Env::keep_busy`] keeps in flight.
const BUSY_DEPTH: usize = 16;

/// A share with `hello.txt` in the test's directory.
#[derive(Debug)]
pub struct Share {
    /// The shared directory.
    pub share: PathBuf,
    /// The file the last round made, and what it holds.
    last: Mutex<Option<(String, Vec<u8>)>>,
}

impl Share {
    /// `share/` holding `hello.txt` ([`HELLO`]) in `scratch`.
    pub fn new(scratch: &Scratch) -> Self {
        let share = scratch.join("share");
        fs::create_dir(&share).unwrap();
        fs::write(share.join("hello.txt"), HELLO).unwrap();
        Share {
            share,
            last: Mutex::new(None),
        }
    }
}

/// The environment of [`FS`].
pub type FsEnv = Fixture<Share>;

/// A fresh [`FsEnv`]; `test` names its directory.
pub fn share_env(test: &str) -> FsEnv {
    Fixture::new("fs", test, Share::new)
}

/// A driver connected to `socket`, INIT done.
fn client(socket: &Path) -> FsClient {
    FsClient::connect(socket, FsOptions::default())
        .unwrap_or_else(|e| panic!("connecting to {}: {e}: {e:?}", socket.display()))
}

impl Env for FsEnv {
    fn args(&self) -> Vec<OsString> {
        vec!["--shared-dir".into(), self.served().share.clone().into()]
    }

    fn keep_busy(&self, socket: &Path, busy: &Busy) -> Box<dyn FnOnce() + Send> {
        let mut fs = client(socket);
        let (e, open) = fs
            .create(ROOT_ID, "busy", libc::S_IFREG | 0o644, libc::O_WRONLY)
            .unwrap();
        // Replies are awaited briefly and again, so a daemon that has gone
        // is noticed soon after `stop`.
        fs.set_timeout(Duration::from_millis(100));
        let mut p = fs.pipeline(BUSY_DEPTH).unwrap();
        let mut in_flight: HashMap<usize, u64> = HashMap::new();
        let (mut next, mut done, mut failed) = (0u64, Vec::new(), Vec::new());
        loop {
            if !busy.stopping() {
                while in_flight.len() < BUSY_DEPTH {
                    let slot = (0..BUSY_DEPTH)
                        .find(|s| !in_flight.contains_key(s))
                        .expect("a free slot");
                    let mut req = Request::new("WRITE", Opcode::Write, e.nodeid).arg(&WriteIn {
                        fh: open.fh,
                        offset: next * BUSY_WRITE_LEN as u64,
                        size: BUSY_WRITE_LEN as u32,
                        ..WriteIn::default()
                    });
                    req.args.extend_from_slice(&stamped(BUSY_WRITE_LEN, next));
                    p.send(&mut fs, slot, &req).unwrap();
                    in_flight.insert(slot, next);
                    next += 1;
                }
                p.kick(&mut fs).unwrap();
            }
            match p.recv(&mut fs) {
                Ok((slot, reply)) => {
                    let index = in_flight
                        .remove(&slot)
                        .expect("a reply for a slot in flight");
                    let written =
                        reply.map(|body| u32::from_le_bytes(body[..4].try_into().unwrap()));
                    match written {
                        Ok(n) if n as usize == BUSY_WRITE_LEN => done.push(index),
                        other => failed.push((index, format!("{other:?}"))),
                    }
                }
                Err(FsError::Timeout { .. }) if busy.stopping() => break,
                Err(FsError::Timeout { .. }) => continue,
                Err(e) => panic!("a WRITE reply: {e}"),
            }
            if done.len() >= 64 {
                busy.set_streaming();
            }
        }
        let file = self.served().share.join("busy");
        Box::new(move || {
            eprintln!("{} WRITEs completed", done.len());
            assert!(
                failed.is_empty(),
                "{} of {} completed WRITEs failed: {:?}",
                failed.len(),
                done.len() + failed.len(),
                &failed[..failed.len().min(10)]
            );
            let f = fs::File::open(&file).unwrap();
            for &i in &done {
                let mut got = vec![0u8; BUSY_WRITE_LEN];
                f.read_exact_at(&mut got, i * BUSY_WRITE_LEN as u64)
                    .unwrap_or_else(|e| panic!("WRITE {i} completed but the file is short: {e}"));
                assert!(
                    got == stamped(BUSY_WRITE_LEN, i),
                    "WRITE {i} completed but is not in the file ({} completed)",
                    done.len()
                );
            }
        })
    }

    fn configure_unit(&self, vars: &mut BTreeMap<String, String>) {
        set_example_var(
            vars,
            "VIRTIOFSD_SHARED_DIR",
            self.served().share.to_str().unwrap(),
        );
        vars.insert("VIRTIOFSD_TAG".into(), "from-unit".into());
        // What systemd sets for StateDirectory= (the --state-file's).
        let state = self.scratch.join("state");
        std::fs::create_dir_all(&state).unwrap();
        vars.insert("STATE_DIRECTORY".into(), state.to_str().unwrap().into());
    }

    fn assert_unit_options(&self, socket: &Path, _vars: &BTreeMap<String, String>) {
        let mut c = client(socket);
        assert_eq!(c.tag(), Some("from-unit"));
        let entry = c.lookup(ROOT_ID, "hello.txt").unwrap();
        assert_eq!(entry.attr.size, HELLO.len() as u64);
    }
}

/// Checks that INIT ran (protocol 7), LOOKUPs the share's `hello.txt`,
/// OPENs it read-only and READs [`HELLO`]; returns the entry and the open
/// handle (left open).
#[track_caller]
pub fn assert_reads_hello(fs: &mut FsClient) -> (EntryOut, u64) {
    let session = *fs.session().expect("INIT ran at connect");
    assert_eq!(session.init.major, 7, "{:?}", session.init);
    let hello = fs.lookup(ROOT_ID, "hello.txt").unwrap();
    assert_ne!(hello.nodeid, 0);
    assert_eq!(hello.attr.size, HELLO.len() as u64);
    let fh = fs.open(hello.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(
        fs.read(fh, hello.nodeid, 0, 4096).unwrap(),
        HELLO.as_bytes()
    );
    (hello, fh)
}

/// What write `index` holds: `len` bytes of its own.
fn stamped(len: usize, index: u64) -> Vec<u8> {
    pattern(index as u32 + 1, len)
}

/// Through a connected, initialised `FsClient`.
impl Rounds for Share {
    type Client = FsClient;

    fn client(&self, socket: &Path) -> FsClient {
        client(socket)
    }

    fn device(fs: &mut FsClient) -> &mut VuDevice {
        fs.device()
    }

    fn serve(&self, fs: &mut FsClient, round: u64) {
        // The handle stays open: the session's end must close it.
        assert_reads_hello(fs);
        let mut last = self.last.lock().unwrap();
        if let Some((name, data)) = last.as_ref() {
            let e = fs
                .lookup(ROOT_ID, name)
                .unwrap_or_else(|e| panic!("round {round}: the previous round's {name}: {e}"));
            assert_eq!(e.attr.size, data.len() as u64, "round {round}: {name}");
        }
        let name = format!("served-{round}");
        let data = pattern(round as u32, 4096);
        let (e, o) = fs
            .create(ROOT_ID, &name, libc::S_IFREG | 0o644, libc::O_WRONLY)
            .unwrap();
        assert_eq!(fs.write(o.fh, e.nodeid, 0, &data).unwrap(), 4096);
        fs.release(o.fh, e.nodeid, libc::O_WRONLY).unwrap();
        assert!(
            fs::read(self.share.join(&name)).unwrap() == data,
            "round {round}: {name} differs on the host"
        );
        *last = Some((name, data));
    }

    fn exercise(&self, fs: &mut FsClient, round: u64, after: &mut dyn FnMut(&str)) {
        let share = &self.share;
        let dir = format!("exercise-{round}");
        let d = fs.mkdir(ROOT_ID, &dir, 0o755).unwrap();
        let (f, o) = fs
            .create(d.nodeid, "f", libc::S_IFREG | 0o644, libc::O_RDWR)
            .unwrap();
        let data = pattern(round as u32 + 1000, 8192);
        assert_eq!(fs.write(o.fh, f.nodeid, 0, &data).unwrap(), 8192);
        fs.flush(o.fh, f.nodeid).unwrap();
        fs.fsync(o.fh, f.nodeid, true).unwrap();
        assert_eq!(fs.read(o.fh, f.nodeid, 0, 8192).unwrap(), data);
        let truncate = SetAttr {
            size: Some(4096),
            ..SetAttr::default()
        };
        assert_eq!(fs.setattr(f.nodeid, &truncate).unwrap().attr.size, 4096);
        fs.release(o.fh, f.nodeid, libc::O_RDWR).unwrap();
        after("MKDIR, CREATE, WRITE, FLUSH, FSYNC, READ, SETATTR, RELEASE");
        let names: Vec<Vec<u8>> = fs
            .list_dir(d.nodeid)
            .unwrap()
            .iter()
            .map(|e| e.name().to_vec())
            .collect();
        assert!(names.contains(&b"f".to_vec()), "{names:?}");
        fs.rename(d.nodeid, "f", d.nodeid, "g").unwrap();
        let l = fs.symlink(d.nodeid, "l", "g").unwrap();
        assert_eq!(fs.readlink(l.nodeid).unwrap(), b"g");
        assert_eq!(fs::read(share.join(&dir).join("g")).unwrap(), data[..4096]);
        after("READDIRPLUS, RENAME, SYMLINK, READLINK");
        fs.statfs(ROOT_ID).unwrap();
        fs.getattr(d.nodeid, None).unwrap();
        fs.unlink(d.nodeid, "l").unwrap();
        fs.unlink(d.nodeid, "g").unwrap();
        fs.rmdir(ROOT_ID, &dir).unwrap();
        for node in [f.nodeid, l.nodeid, d.nodeid] {
            fs.forget(node, 1).unwrap();
        }
        fs.wait_forgets().unwrap();
        assert!(!share.join(&dir).exists(), "{dir} still on the host");
        after("STATFS, GETATTR, UNLINK, RMDIR, FORGET");
    }

    fn leave_in_flight(&self, fs: &mut FsClient, round: u64) {
        let mut p = fs.pipeline(16).unwrap();
        for slot in 0..16 {
            let req = if (slot as u64 + round) % 2 == 0 {
                Request::lookup(ROOT_ID, b"hello.txt").unwrap()
            } else {
                Request::getattr(ROOT_ID, None)
            };
            p.send(fs, slot, &req).unwrap();
        }
        p.kick(fs).unwrap();
    }
}

/// `virtiofsd`'s request queue (1), with its defaults (the namespace
/// sandbox and the seccomp filter); the good chain is a GETATTR of the
/// root and a 256-byte reply buffer. The contract: the head comes back,
/// with len 0 or an errno reply, never a success and never a hang, and the
/// daemon keeps serving.
pub static FS_REQUEST: RingUnderTest = RingUnderTest {
    name: "fs_request",
    rig: || Box::new(FsRing::new()),
};

/// The request queue.
const REQUEST_QUEUE: usize = 1;

/// A daemon and an initialised driver, for raw chains on the request queue.
struct FsRing {
    env: FsEnv,
    daemon: Daemon,
    fs: Option<FsClient>,
}

impl FsRing {
    fn new() -> Self {
        let env = share_env("malformed");
        let daemon = FS.start(&env);
        let mut fs = client(env.socket());
        // A request the daemon should answer must come back soon; a hang
        // is a failure.
        fs.set_timeout(Duration::from_secs(5));
        FsRing {
            env,
            daemon,
            fs: Some(fs),
        }
    }
}

impl FsRing {
    /// The driver.
    fn fs(&mut self) -> &mut FsClient {
        self.fs.as_mut().expect("connected")
    }
}

impl Ring for FsRing {
    fn queue(&mut self) -> &mut VirtQueue {
        self.fs().device().queue(REQUEST_QUEUE)
    }

    fn good_chain(&mut self) -> Chain {
        let (_, bytes) = self.fs().encode(&Request::getattr(ROOT_ID, None), 0);
        let mem = self.fs().device().mem().clone();
        let at = mem.alloc(4096, 4096).unwrap();
        mem.write(at, &bytes).unwrap();
        let reply = mem.alloc(4096, 4096).unwrap();
        Chain {
            descs: vec![
                RawDesc::new(at.0, bytes.len() as u32, VRING_DESC_F_NEXT, 1),
                RawDesc::new(reply.0, 256, VRING_DESC_F_WRITE, 0),
            ],
        }
    }

    fn assert_refused(&mut self, head: u16, used: Used, untouched: &[(GuestAddress, Vec<u8>)]) {
        if used.len != 0 {
            // Only an errno reply, in the reply buffer the good chain had.
            let (reply, _) = &untouched[0];
            let out: [u8; OUT_HEADER_LEN] = self.fs().device().mem().read_obj(*reply).unwrap();
            let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
            assert!(
                error < 0,
                "head {head}: used len {} with a success reply (error {error})",
                used.len
            );
        }
        self.assert_serves();
    }

    fn assert_serves(&mut self) {
        let exit = self.daemon.try_wait().unwrap();
        assert_eq!(exit, None, "the daemon exited: {exit:?}");
        let a = self
            .fs()
            .getattr(ROOT_ID, None)
            .unwrap_or_else(|e| panic!("GETATTR of the root: {e}"));
        let share = fs::metadata(&self.env.served().share).unwrap();
        assert_eq!(a.attr.ino, share.ino(), "the root is not the share");
    }

    fn assert_other_queues_serve(&mut self) {
        // The high-priority queue still takes FORGETs.
        self.fs().forget(0xdead_beef, 1).unwrap();
        self.fs().wait_forgets().unwrap();
        let exit = self.daemon.try_wait().unwrap();
        assert_eq!(exit, None, "the daemon exited: {exit:?}");
    }

    fn reconnect_and_serve(&mut self) {
        // The daemon serves one frontend at a time: this one goes first.
        self.fs = None;
        self.fs = Some(client(self.env.socket()));
        self.assert_serves();
    }

    fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}
