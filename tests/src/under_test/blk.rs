//! `vhost-blk-daemon` under test: a sparse image in a temporary directory;
//! a round writes data and reads it back through the daemon and on the
//! host, after checking what the previous round wrote. Its request queue
//! is fed malformed chains made from a read ([`BLK_READ`]) and from a
//! write ([`BLK_WRITE`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use vm_memory::GuestAddress;

use super::rings::{Chain, Ring, RingUnderTest, FILL, T};
use super::{set_example_var, Busy, Contrib, DaemonUnderTest, Env, Fixture, Rounds, Scratch};
use crate::blk::raw::RequestBuilder;
use crate::blk::{req, status, BlkClient, BlkError, BlkOptions, BlkQueue, Request, SECTOR_SIZE};
use crate::device::VuDevice;
use crate::fixture::{create_sparse_image, poll_until, Daemon};
use crate::image::pattern;
use crate::virtqueue::{QueueError, Used, VirtQueue};

/// `vhost-blk-daemon`.
pub static BLK: DaemonUnderTest = DaemonUnderTest {
    name: "vhost-blk-daemon",
    capabilities: "{\"type\":\"block\",\"features\":[\"read-only\",\"blk-file\"]}\n",
    // Logged by the process that serves, after its jail is set up: the
    // socket exists before the jail forks, so waiting for it alone let a
    // test measure the supervisor mid-setup.
    ready_line: Some(crate::under_test::LISTENING_LINE),
    watchdog_args: &["--sandbox", "namespace"],
    contrib: Contrib {
        kind: "block",
        installed_binary: "/usr/libexec/vhost-blk-daemon",
        instance: "disk0",
        example_conf: "systemd/example.conf",
        // "OK" by systemd's own scoring.
        max_exposure: 20,
        read_write_paths: true,
        watchdog: true,
    },
    env: |test| Box::new(image_env(test)),
};

/// The image's size (sparse).
pub const IMAGE_SIZE: u64 = 256 << 20;
/// Where [`Frontend::exercise`] works: the image's second half.
const EXERCISE_SECTOR: u64 = IMAGE_SIZE / SECTOR_SIZE / 2;
/// Where [`Frontend::leave_in_flight`] writes: the last quarter.
const IN_FLIGHT_SECTOR: u64 = IMAGE_SIZE / SECTOR_SIZE / 4 * 3;
/// Bytes of each write [`Env::keep_busy`] keeps in flight.
const BUSY_WRITE_LEN: u32 = 128 * 1024;

/// A sparse image in the test's directory.
#[derive(Debug)]
pub struct Image {
    /// The image file.
    pub image: PathBuf,
    /// What the last round wrote: sector and data.
    last: Mutex<Option<(u64, Vec<u8>)>>,
}

impl Image {
    /// A sparse `disk.img` of [`IMAGE_SIZE`] in `scratch`.
    pub fn new(scratch: &Scratch) -> Self {
        let image = scratch.join("disk.img");
        create_sparse_image(&image, IMAGE_SIZE).unwrap();
        Image {
            image,
            last: Mutex::new(None),
        }
    }
}

/// The environment of [`BLK`].
pub type BlkEnv = Fixture<Image>;

/// A fresh [`BlkEnv`]; `test` names its directory.
pub fn image_env(test: &str) -> BlkEnv {
    Fixture::new("blk", test, Image::new)
}

/// Reads the image on the host, past the daemon.
fn host_read(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Driver options sized for short tests: 16 slots of 64 KiB.
fn small_opts() -> BlkOptions {
    let mut o = BlkOptions {
        max_io: 64 * 1024,
        slots_per_queue: 16,
        ..BlkOptions::default()
    };
    o.device.mem_size = 8 << 20;
    o
}

impl Env for BlkEnv {
    fn args(&self) -> Vec<OsString> {
        vec!["--blk-file".into(), self.served().image.clone().into()]
    }

    fn keep_busy(&self, socket: &Path, busy: &Busy) -> Box<dyn FnOnce() + Send> {
        let mut opts = small_opts();
        opts.max_io = u64::from(BUSY_WRITE_LEN);
        opts.slots_per_queue = 32;
        let mut c = BlkClient::connect(socket, &opts).unwrap();
        let body = pattern(0, BUSY_WRITE_LEN as usize);
        let done = keep_writing(&mut c.queue(0), &body, busy);
        let image = self.served().image.clone();
        Box::new(move || {
            eprintln!("{} writes completed", done.len());
            let failed: Vec<_> = done
                .iter()
                .filter(|w| w.status != status::OK)
                .map(|w| (w.index, w.status))
                .collect();
            assert!(
                failed.is_empty(),
                "{} of {} completed writes have a bad status: {:?}",
                failed.len(),
                done.len(),
                &failed[..failed.len().min(10)]
            );
            for w in &done {
                let len = BUSY_WRITE_LEN as usize;
                let on_disk = host_read(&image, w.index * u64::from(BUSY_WRITE_LEN), len);
                assert!(
                    on_disk == stamped(&body, w.index),
                    "write {} completed OK but is not on the image ({} completed)",
                    w.index,
                    done.len()
                );
            }
        })
    }

    fn configure_unit(&self, vars: &mut BTreeMap<String, String>) {
        set_example_var(
            vars,
            "VHOST_BLK_FILE",
            self.served().image.to_str().unwrap(),
        );
    }

    fn assert_unit_options(&self, socket: &Path, _vars: &BTreeMap<String, String>) {
        // The example asks for 2 queues and serial disk0.
        let mut c = BlkClient::connect(socket, &BlkOptions::default()).unwrap();
        assert_eq!(c.config().unwrap().num_queues, 2);
        assert_eq!(c.get_id().unwrap(), "disk0");
        c.write(8, &[0xa5; 4096]).unwrap();
        assert_eq!(c.read(8, 4096).unwrap(), vec![0xa5; 4096]);
    }
}

/// Through a `BlkClient`.
impl Rounds for Image {
    type Client = BlkClient;

    fn client(&self, socket: &Path) -> BlkClient {
        BlkClient::connect(socket, &small_opts())
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()))
    }

    fn device(c: &mut BlkClient) -> &mut VuDevice {
        c.device()
    }

    fn serve(&self, c: &mut BlkClient, round: u64) {
        let cfg = c.config().unwrap();
        assert_eq!(cfg.capacity, IMAGE_SIZE / SECTOR_SIZE, "round {round}");
        let mut last = self.last.lock().unwrap();
        if let Some((sector, data)) = last.as_ref() {
            let back = c.read(*sector, data.len() as u32).unwrap();
            assert!(
                back == *data,
                "round {round}: the previous round's data at sector {sector} is gone"
            );
        }
        let data = pattern(round as u32, 4096);
        let sector = (round % 1000) * 8;
        c.write(sector, &data).unwrap();
        assert_eq!(c.read(sector, 4096).unwrap(), data, "round {round}");
        assert!(
            host_read(&self.image, sector * SECTOR_SIZE, data.len()) == data,
            "round {round}: not on the image"
        );
        *last = Some((sector, data));
    }

    fn exercise(&self, c: &mut BlkClient, round: u64, after: &mut dyn FnMut(&str)) {
        let base = EXERCISE_SECTOR;
        let data = vec![0xa5 ^ round as u8; 8192];
        c.write(base + 8, &data).unwrap();
        assert_eq!(c.read(base + 8, 8192).unwrap(), data);
        after("WRITE and READ");
        c.flush().unwrap();
        after("FLUSH");
        c.discard(base + 64, 8).unwrap();
        after("DISCARD");
        c.write_zeroes(base + 8, 16, false).unwrap();
        assert_eq!(c.read(base + 8, 8192).unwrap(), vec![0u8; 8192]);
        c.write_zeroes(base + 80, 8, true).unwrap();
        after("WRITE_ZEROES");
        assert_eq!(c.get_id().unwrap(), "disk.img");
        after("GET_ID");
    }

    fn leave_in_flight(&self, c: &mut BlkClient, round: u64) {
        let mut q = c.queue(0);
        let mem = q.virtqueue().mem().clone();
        for i in 0..16u64 {
            let slot = q.peek_slot().unwrap();
            let data = pattern((round * 100 + i) as u32, 64 * 1024);
            mem.write(q.data_addr(slot), &data).unwrap();
            q.submit(Request::Write {
                sector: IN_FLIGHT_SECTOR + i * 128,
                len: 64 * 1024,
            })
            .unwrap();
        }
        q.kick().unwrap();
    }
}

/// What write `index` puts on the disk: a fixed body stamped with the
/// index in its first 8 bytes, so that submitting costs one small copy and
/// the daemon, not the driver, is the slow side (requests pile up in it).
fn stamped(body: &[u8], index: u64) -> Vec<u8> {
    let mut v = body.to_vec();
    v[..8].copy_from_slice(&index.to_le_bytes());
    v
}

/// One write the driver saw complete.
struct Done {
    index: u64,
    status: u8,
}

/// Keeps up to 32 writes of [`BUSY_WRITE_LEN`] in flight (write `i` goes
/// to byte `i * BUSY_WRITE_LEN` and holds `stamped(body, i)`) until `stop`
/// is told to stop and no completion arrived for 100 ms; tells `busy` that
/// requests stream after 64 completions.
fn keep_writing(q: &mut BlkQueue<'_>, body: &[u8], busy: &Busy) -> Vec<Done> {
    let max = IMAGE_SIZE / u64::from(BUSY_WRITE_LEN);
    let mem = q.virtqueue().mem().clone();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut next = 0u64;
    let mut done = Vec::new();
    let mut batch = Vec::new();
    let mut filled = HashSet::new();
    loop {
        if !busy.stopping() {
            let mut added = false;
            while in_flight.len() < 32 && next < max {
                let Some(slot) = q.peek_slot() else { break };
                if filled.insert(slot) {
                    mem.write(q.data_addr(slot), body).unwrap();
                }
                mem.write(q.data_addr(slot), &next.to_le_bytes()).unwrap();
                let sector = next * u64::from(BUSY_WRITE_LEN) / SECTOR_SIZE;
                let used = q
                    .submit(Request::Write {
                        sector,
                        len: BUSY_WRITE_LEN,
                    })
                    .unwrap();
                in_flight.insert(used, next);
                next += 1;
                added = true;
            }
            if added {
                q.kick().unwrap();
            }
        }
        batch.clear();
        match q.reap(Duration::from_millis(100), &mut batch) {
            Ok(()) => {}
            Err(BlkError::Queue(QueueError::Timeout { .. })) if busy.stopping() => break,
            Err(BlkError::Queue(QueueError::Timeout { .. })) => continue,
            Err(e) => panic!("reaping completions: {e}"),
        }
        for c in &batch {
            let index = in_flight
                .remove(&c.slot)
                .expect("a completion for a slot in flight");
            done.push(Done {
                index,
                status: c.status,
            });
        }
        if done.len() >= 64 {
            busy.set_streaming();
        }
    }
    done
}

/// `vhost-blk-daemon`'s first request queue (of two) with a 512-byte read
/// at sector 0 as the good chain. The contract: a malformed chain comes
/// back on the used ring with len 0 and nothing written (the status byte
/// keeps its preset value), a warning containing "malformed" names the
/// head, and the queue keeps serving.
pub static BLK_READ: RingUnderTest = RingUnderTest {
    name: "blk_read",
    rig: || Box::new(BlkRing::new(req::IN)),
};

/// [`BLK_READ`] with a 512-byte write at sector 0 as the good chain: a
/// malformed one also leaves the image as it was.
pub static BLK_WRITE: RingUnderTest = RingUnderTest {
    name: "blk_write",
    rig: || Box::new(BlkRing::new(req::OUT)),
};

/// A daemon serving two queues and a driver, for raw chains on queue 0.
struct BlkRing {
    env: BlkEnv,
    daemon: Daemon,
    c: Option<BlkClient>,
    type_: u32,
}

impl BlkRing {
    fn new(type_: u32) -> Self {
        let env = image_env("malformed");
        let mut cmd = BLK.socket_command(&env);
        cmd.args(["--num-queues", "2"]);
        let daemon = BLK.spawn(cmd, env.socket(), true);
        let c = Some(Self::client(env.socket()));
        BlkRing {
            env,
            daemon,
            c,
            type_,
        }
    }

    fn client(socket: &Path) -> BlkClient {
        let mut opts = BlkOptions::default();
        opts.device.num_queues = 2;
        BlkClient::connect(socket, &opts).unwrap()
    }

    /// The driver.
    fn c(&mut self) -> &mut BlkClient {
        self.c.as_mut().expect("connected")
    }

    /// A 4 KiB write then read on queue `qi`.
    fn assert_queue_serves(&mut self, qi: usize) {
        let exit = self.daemon.try_wait().unwrap();
        assert_eq!(exit, None, "daemon exited: {exit:?}");
        let data = pattern(qi as u32 + 1, 4096);
        let mut q = self.c().queue(qi);
        let mem = q.virtqueue().mem().clone();
        mem.write(q.data_addr(q.peek_slot().unwrap()), &data)
            .unwrap();
        q.execute(
            Request::Write {
                sector: 64,
                len: 4096,
            },
            T,
        )
        .unwrap_or_else(|e| panic!("valid write on queue {qi}: {e}"));
        let r = q
            .execute(
                Request::Read {
                    sector: 64,
                    len: 4096,
                },
                T,
            )
            .unwrap_or_else(|e| panic!("valid read on queue {qi}: {e}"));
        assert_eq!(mem.read_vec(q.data_addr(r.slot), 4096).unwrap(), data);
    }
}

impl Ring for BlkRing {
    fn queue(&mut self) -> &mut VirtQueue {
        self.c().device().queue(0)
    }

    fn good_chain(&mut self) -> Chain {
        let mem = self.c().device().mem().clone();
        let b = RequestBuilder::new(&mem).header(self.type_, 0).unwrap();
        let b = if self.type_ == req::IN {
            b.writable(512, FILL).unwrap()
        } else {
            b.readable(&pattern(1, 512)).unwrap()
        };
        Chain {
            descs: b.status().unwrap().build().raw_descs(),
        }
    }

    fn assert_refused(&mut self, head: u16, used: Used, untouched: &[(GuestAddress, Vec<u8>)]) {
        assert_eq!(used.len, 0, "used len of a malformed chain: {used:?}");
        let mem = self.c().device().mem().clone();
        for (at, was) in untouched {
            let now = mem.read_vec(*at, was.len()).unwrap();
            assert!(now == *was, "buffer at {:#x} written", at.0);
        }
        if self.type_ == req::OUT {
            assert_eq!(
                host_read(&self.env.served().image, 0, 4096),
                vec![0u8; 4096],
                "image written"
            );
        }
        let logged = poll_until(T, || {
            self.daemon.log_contents().lines().any(|l| {
                l.to_lowercase().contains("malformed") && l.contains(&format!("head {head}:"))
            })
        });
        assert!(
            logged,
            "no log line containing \"malformed\" naming head {head}:\n{}",
            self.daemon.log_contents()
        );
        self.assert_queue_serves(0);
    }

    fn assert_serves(&mut self) {
        self.assert_queue_serves(0);
    }

    fn assert_other_queues_serve(&mut self) {
        self.assert_queue_serves(1);
    }

    fn reconnect_and_serve(&mut self) {
        // The daemon serves one frontend at a time: this one goes first.
        self.c = None;
        self.c = Some(Self::client(self.env.socket()));
        self.assert_queue_serves(0);
        self.assert_queue_serves(1);
    }

    fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}
