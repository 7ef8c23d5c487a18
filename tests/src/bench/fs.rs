//! virtio-fs workloads: metadata (LOOKUP+GETATTR, CREATE) and 1 MiB
//! sequential READ and WRITE, one request in flight as a single guest task
//! would issue them; and the metadata pair again with [`QD`] streams in
//! flight at once, as a guest's tasks sharing the mount keep them (`find`,
//! `ls -l`, a build, a container image unpacked).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{EntryOut, Opcode, OpenOut};

use super::{BenchError, Sample};
use crate::fs::wire::{body_struct, Request};
use crate::fs::{FsClient, FsError, Pipeline};

/// FUSE's root node id.
pub const ROOT: u64 = 1;
/// Files in the metadata set.
pub const META_FILES: usize = 10_000;
/// Bytes per sequential operation.
pub const IO_SIZE: u32 = 1 << 20;
/// Size of the file the READ and WRITE workloads cycle through.
pub const IO_FILE_SIZE: u64 = 256 << 20;
/// Independent streams in flight in the `-qd16` workloads.
pub const QD: usize = 16;

const META_DIR: &str = "vu-bench-meta";
const READ_FILE: &str = "vu-bench-read.dat";
const WRITE_FILE: &str = "vu-bench-write.dat";
const CREATE_DIR: &str = "vu-bench-create";

/// One file-system workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsWorkload {
    /// LOOKUP + GETATTR of one of 10,000 files (one op = both requests).
    LookupGetattr,
    /// CREATE + RELEASE (+ FORGET, no reply) of a new empty file.
    Create,
    /// 1 MiB sequential READ.
    Read1M,
    /// 1 MiB sequential WRITE.
    Write1M,
    /// [`FsWorkload::LookupGetattr`] in [`QD`] streams at once.
    LookupGetattrQd,
    /// [`FsWorkload::Create`] in [`QD`] streams at once.
    CreateQd,
    /// One request of an opcode no server implements, answered ENOSYS
    /// without touching the file system: the round trip every request
    /// pays (kick, wake-up, reply, interrupt), the floor under the rest.
    NullRoundTrip,
}

/// Every workload, in table order.
pub const ALL: [FsWorkload; 7] = [
    FsWorkload::NullRoundTrip,
    FsWorkload::LookupGetattr,
    FsWorkload::LookupGetattrQd,
    FsWorkload::Create,
    FsWorkload::CreateQd,
    FsWorkload::Read1M,
    FsWorkload::Write1M,
];

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Prepare { what, source }
}

impl FsWorkload {
    /// Name in the table.
    pub fn name(self) -> &'static str {
        match self {
            FsWorkload::LookupGetattr => "fs-lookup+getattr-10k",
            FsWorkload::Create => "fs-create+release",
            FsWorkload::Read1M => "fs-read-1m-seq",
            FsWorkload::Write1M => "fs-write-1m-seq",
            FsWorkload::LookupGetattrQd => "fs-lookup+getattr-10k-qd16",
            FsWorkload::CreateQd => "fs-create+release-qd16",
            FsWorkload::NullRoundTrip => "fs-null-roundtrip",
        }
    }

    /// Creates, on the host side of the share, what the workload needs.
    pub fn prepare_host(self, shared_dir: &Path) -> Result<(), BenchError> {
        match self {
            FsWorkload::LookupGetattr | FsWorkload::LookupGetattrQd => {
                let dir = shared_dir.join(META_DIR);
                if dir.join(format!("f{}", META_FILES - 1)).exists() {
                    return Ok(());
                }
                std::fs::create_dir_all(&dir).map_err(io_err(dir.display().to_string()))?;
                for i in 0..META_FILES {
                    let p = dir.join(format!("f{i}"));
                    std::fs::write(&p, b"").map_err(io_err(p.display().to_string()))?;
                }
                Ok(())
            }
            FsWorkload::Read1M => {
                let p = shared_dir.join(READ_FILE);
                if std::fs::metadata(&p).is_ok_and(|m| m.len() == IO_FILE_SIZE) {
                    return Ok(());
                }
                let data: Vec<u8> = (0..IO_FILE_SIZE as usize / 4096)
                    .flat_map(|i| std::iter::repeat_n(i as u8, 4096))
                    .collect();
                std::fs::write(&p, data).map_err(io_err(p.display().to_string()))
            }
            FsWorkload::Create | FsWorkload::CreateQd => {
                let p: PathBuf = shared_dir.join(CREATE_DIR);
                if p.exists() {
                    std::fs::remove_dir_all(&p).map_err(io_err(p.display().to_string()))?;
                }
                std::fs::create_dir(&p).map_err(io_err(p.display().to_string()))
            }
            FsWorkload::Write1M | FsWorkload::NullRoundTrip => Ok(()),
        }
    }

    /// Runs for `duration`; `rep` makes CREATE's names unique.
    pub fn run(self, fs: &mut FsClient, duration: Duration, rep: u32) -> Result<Sample, FsError> {
        match self {
            FsWorkload::LookupGetattr => lookup_getattr(fs, duration),
            FsWorkload::Create => create(fs, duration, rep),
            FsWorkload::LookupGetattrQd => lookup_getattr_qd(fs, duration),
            FsWorkload::CreateQd => create_qd(fs, duration, rep),
            FsWorkload::NullRoundTrip => null_round_trip(fs, duration),
            FsWorkload::Read1M | FsWorkload::Write1M => seq_io(fs, duration, self),
        }
    }
}

fn lookup_getattr(fs: &mut FsClient, duration: Duration) -> Result<Sample, FsError> {
    let dir = fs.lookup(ROOT, META_DIR)?.nodeid;
    let names: Vec<String> = (0..META_FILES).map(|i| format!("f{i}")).collect();
    let mut looked_up: HashMap<u64, u64> = HashMap::new();
    let mut s = Sample::default();
    let t0 = Instant::now();
    let mut i = 0;
    while t0.elapsed() < duration {
        let started = Instant::now();
        let e = fs.lookup(dir, &names[i % META_FILES])?;
        fs.getattr(e.nodeid, None)?;
        s.record(started, 0);
        *looked_up.entry(e.nodeid).or_default() += 1;
        i += 1;
    }
    s.elapsed = t0.elapsed();
    // Give the references back, as the kernel would on eviction (not timed).
    for (node, n) in looked_up {
        forget_paced(fs, node, n)?;
    }
    fs.wait_forgets()?;
    fs.forget(dir, 1)?;
    fs.wait_forgets()?;
    Ok(s)
}

/// An opcode FUSE does not define.
const NULL_OPCODE: u32 = 9999;

fn null_round_trip(fs: &mut FsClient, duration: Duration) -> Result<Sample, FsError> {
    let mut req = Request::new("NULL", Opcode::Getattr, ROOT);
    req.opcode = NULL_OPCODE;
    let (_, bytes) = fs.encode(&req, 0);
    let mut s = Sample::default();
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        let started = Instant::now();
        let r = fs.raw_request(1, &bytes, 64)?;
        if r.errno() != Some(libc::ENOSYS) {
            return Err(FsError::BadReply {
                op: "NULL",
                reason: format!("expected ENOSYS for opcode {NULL_OPCODE}, got {r:?}"),
            });
        }
        s.record(started, 0);
    }
    s.elapsed = t0.elapsed();
    Ok(s)
}

fn create(fs: &mut FsClient, duration: Duration, rep: u32) -> Result<Sample, FsError> {
    let dir = fs.lookup(ROOT, CREATE_DIR)?.nodeid;
    let mut s = Sample::default();
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < duration {
        let name = format!("r{rep}-{i}");
        let started = Instant::now();
        let (e, o) = fs.create(dir, &name, 0o644, libc::O_RDWR)?;
        fs.release(o.fh, e.nodeid, libc::O_RDWR)?;
        // The kernel forgets evicted inodes; without it the server keeps an
        // fd per file and runs out.
        forget_paced(fs, e.nodeid, 1)?;
        s.record(started, 0);
        i += 1;
    }
    s.elapsed = t0.elapsed();
    fs.wait_forgets()?;
    fs.forget(dir, 1)?;
    fs.wait_forgets()?;
    Ok(s)
}

/// Where a stream of a `-qd16` workload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Lookup,
    Getattr,
    Create,
    Release,
}

fn lookup_req(dir: u64, names: &[String], i: usize) -> Result<Request, FsError> {
    Request::lookup(dir, names[i % names.len()].as_bytes())
}

fn create_req(dir: u64, rep: u32, i: usize) -> Result<Request, FsError> {
    Request::create(dir, format!("q{rep}-{i}").as_bytes(), 0o644, libc::O_RDWR)
}

/// FORGETs `n` references to `node` without waiting, unless more than 64
/// are still with the server (the kernel sends them in the background).
fn forget_paced(fs: &mut FsClient, node: u64, n: u64) -> Result<(), FsError> {
    fs.forget(node, n)?;
    if fs.forgets_in_flight() > 64 {
        fs.wait_forgets()?;
    }
    Ok(())
}

/// The streams of a `-qd16` workload: each runs its steps one after the
/// other (a LOOKUP's GETATTR needs its node id), [`QD`] of them at once.
/// `step` gets a stream's index, finished step and reply body, and whether
/// time is left; it returns the stream's next request, or `None` when the
/// stream stops.
fn run_streams(
    fs: &mut FsClient,
    duration: Duration,
    first: Step,
    mut first_req: impl FnMut(usize) -> Result<Request, FsError>,
    mut step: impl FnMut(
        &mut FsClient,
        usize,
        Step,
        &[u8],
        bool,
    ) -> Result<Option<(Step, Request)>, FsError>,
) -> Result<Sample, FsError> {
    let mut p: Pipeline = fs.pipeline(QD)?;
    let mut s = Sample::default();
    let mut at = vec![(first, Instant::now()); QD];
    let t0 = Instant::now();
    for (i, a) in at.iter_mut().enumerate() {
        p.send(fs, i, &first_req(i)?)?;
        a.1 = Instant::now();
    }
    p.kick(fs)?;
    while p.in_flight() > 0 {
        let (slot, body) = p.recv(fs)?;
        let body = body?;
        let (was, started) = at[slot];
        let more = t0.elapsed() < duration;
        match step(fs, slot, was, &body, more)? {
            Some((next, req)) => {
                if next == first {
                    s.record(started, 0);
                    at[slot].1 = Instant::now();
                }
                at[slot].0 = next;
                p.send(fs, slot, &req)?;
                p.kick(fs)?;
            }
            None if was != first => s.record(started, 0),
            None => {}
        }
    }
    s.elapsed = t0.elapsed();
    Ok(s)
}

fn lookup_getattr_qd(fs: &mut FsClient, duration: Duration) -> Result<Sample, FsError> {
    let dir = fs.lookup(ROOT, META_DIR)?.nodeid;
    let names: Vec<String> = (0..META_FILES).map(|i| format!("f{i}")).collect();
    let mut looked_up: HashMap<u64, u64> = HashMap::new();
    let mut next = QD;
    let s = run_streams(
        fs,
        duration,
        Step::Lookup,
        |i| lookup_req(dir, &names, i),
        |_, _, was, body, more| match was {
            Step::Lookup => {
                let e: EntryOut = body_struct("LOOKUP", body)?;
                *looked_up.entry(e.nodeid).or_default() += 1;
                Ok(Some((Step::Getattr, Request::getattr(e.nodeid, None))))
            }
            _ if more => {
                next += 1;
                Ok(Some((Step::Lookup, lookup_req(dir, &names, next - 1)?)))
            }
            _ => Ok(None),
        },
    )?;
    for (node, n) in looked_up {
        forget_paced(fs, node, n)?;
    }
    fs.forget(dir, 1)?;
    fs.wait_forgets()?;
    Ok(s)
}

fn create_qd(fs: &mut FsClient, duration: Duration, rep: u32) -> Result<Sample, FsError> {
    let dir = fs.lookup(ROOT, CREATE_DIR)?.nodeid;
    let mut next = QD;
    let mut node = [0u64; QD];
    let s = run_streams(
        fs,
        duration,
        Step::Create,
        |i| create_req(dir, rep, i),
        |fs, i, was, body, more| {
            if was == Step::Create {
                let e: EntryOut = body_struct("CREATE", body)?;
                let o: OpenOut =
                    body_struct("CREATE", &body[body.len().min(size_of::<EntryOut>())..])?;
                node[i] = e.nodeid;
                return Ok(Some((
                    Step::Release,
                    Request::release(o.fh, e.nodeid, libc::O_RDWR),
                )));
            }
            // Closed: the kernel forgets an evicted inode; without it the
            // server keeps an fd per file.
            forget_paced(fs, node[i], 1)?;
            if !more {
                return Ok(None);
            }
            next += 1;
            Ok(Some((Step::Create, create_req(dir, rep, next - 1)?)))
        },
    )?;
    fs.wait_forgets()?;
    fs.forget(dir, 1)?;
    fs.wait_forgets()?;
    Ok(s)
}

fn seq_io(fs: &mut FsClient, duration: Duration, w: FsWorkload) -> Result<Sample, FsError> {
    let write = w == FsWorkload::Write1M;
    let (node, fh) = if write {
        let (e, o) = match fs.create(ROOT, WRITE_FILE, 0o644, libc::O_RDWR) {
            Ok(v) => v,
            Err(FsError::Errno { errno, .. }) if errno == libc::EEXIST => {
                let e = fs.lookup(ROOT, WRITE_FILE)?;
                let o = fs.open(e.nodeid, libc::O_RDWR)?;
                (e, o)
            }
            Err(e) => return Err(e),
        };
        (e.nodeid, o.fh)
    } else {
        let e = fs.lookup(ROOT, READ_FILE)?;
        let o = fs.open(e.nodeid, libc::O_RDONLY)?;
        (e.nodeid, o.fh)
    };
    let chunk = fs.max_write().min(IO_SIZE);
    if write {
        let data: Vec<u8> = (0..chunk).map(|i| i as u8).collect();
        fs.fill_write_buf(&data)?;
    }
    let mut s = Sample::default();
    let mut offset = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        let started = Instant::now();
        let mut done = 0u32;
        while done < IO_SIZE {
            let len = chunk.min(IO_SIZE - done);
            let at = offset + u64::from(done);
            let n = if write {
                fs.write_from(fh, node, at, len)?
            } else {
                fs.read_into(fh, node, at, len)?
            };
            if n == 0 {
                break;
            }
            done += n;
        }
        s.record(started, u64::from(done));
        offset = (offset + u64::from(IO_SIZE)) % IO_FILE_SIZE;
    }
    s.elapsed = t0.elapsed();
    fs.release(fh, node, 0)?;
    fs.forget(node, 1)?;
    fs.wait_forgets()?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = ALL.iter().map(|w| w.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn prepare_host_builds_the_sets_once() {
        let dir = crate::fixture::TempDir::new("bench-fs-prepare").unwrap();
        FsWorkload::LookupGetattr.prepare_host(dir.path()).unwrap();
        let n = std::fs::read_dir(dir.join(META_DIR)).unwrap().count();
        assert_eq!(n, META_FILES);
        FsWorkload::Create.prepare_host(dir.path()).unwrap();
        std::fs::write(dir.join(CREATE_DIR).join("x"), b"").unwrap();
        FsWorkload::Create.prepare_host(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.join(CREATE_DIR)).unwrap().count(), 0);
    }
}
