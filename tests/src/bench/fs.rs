//! virtio-fs workloads: metadata (LOOKUP+GETATTR, CREATE) and 1 MiB
//! sequential READ and WRITE, one request in flight as a single guest task
//! would issue them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{BenchError, Sample};
use crate::fs::{FsClient, FsError};

/// FUSE's root node id.
pub const ROOT: u64 = 1;
/// Files in the metadata set.
pub const META_FILES: usize = 10_000;
/// Bytes per sequential operation.
pub const IO_SIZE: u32 = 1 << 20;
/// Size of the file the READ and WRITE workloads cycle through.
pub const IO_FILE_SIZE: u64 = 256 << 20;

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
}

/// Every workload, in table order.
pub const ALL: [FsWorkload; 4] = [
    FsWorkload::LookupGetattr,
    FsWorkload::Create,
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
        }
    }

    /// Creates, on the host side of the share, what the workload needs.
    pub fn prepare_host(self, shared_dir: &Path) -> Result<(), BenchError> {
        match self {
            FsWorkload::LookupGetattr => {
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
            FsWorkload::Create => {
                let p: PathBuf = shared_dir.join(CREATE_DIR);
                if p.exists() {
                    std::fs::remove_dir_all(&p).map_err(io_err(p.display().to_string()))?;
                }
                std::fs::create_dir(&p).map_err(io_err(p.display().to_string()))
            }
            FsWorkload::Write1M => Ok(()),
        }
    }

    /// Runs for `duration`; `rep` makes CREATE's names unique.
    pub fn run(self, fs: &mut FsClient, duration: Duration, rep: u32) -> Result<Sample, FsError> {
        match self {
            FsWorkload::LookupGetattr => lookup_getattr(fs, duration),
            FsWorkload::Create => create(fs, duration, rep),
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
        fs.forget(node, n)?;
        if fs.forgets_in_flight() > 64 {
            fs.wait_forgets()?;
        }
    }
    fs.wait_forgets()?;
    fs.forget(dir, 1)?;
    fs.wait_forgets()?;
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
        fs.forget(e.nodeid, 1)?;
        if fs.forgets_in_flight() > 64 {
            fs.wait_forgets()?;
        }
        s.record(started, 0);
        i += 1;
    }
    s.elapsed = t0.elapsed();
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
