//! Block workloads: fio-like random and sequential I/O at a fixed queue depth
//! on one virtqueue.

use std::time::{Duration, Instant};

use super::{Rng, Sample};
use crate::blk::{status, BlkClient, BlkError, Request, SECTOR_SIZE};

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Reads.
    Read,
    /// Writes.
    Write,
}

/// One block workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkWorkload {
    /// Name in the table.
    pub name: &'static str,
    /// Direction.
    pub dir: Dir,
    /// Random offsets (else sequential, wrapping).
    pub random: bool,
    /// Block size in bytes.
    pub bs: u32,
    /// Requests kept in flight.
    pub qd: u16,
}

/// The standard set.
pub const STANDARD: [BlkWorkload; 4] = [
    BlkWorkload {
        name: "blk-randread-4k-qd1",
        dir: Dir::Read,
        random: true,
        bs: 4096,
        qd: 1,
    },
    BlkWorkload {
        name: "blk-randread-4k-qd32",
        dir: Dir::Read,
        random: true,
        bs: 4096,
        qd: 32,
    },
    BlkWorkload {
        name: "blk-randwrite-4k-qd32",
        dir: Dir::Write,
        random: true,
        bs: 4096,
        qd: 32,
    },
    BlkWorkload {
        name: "blk-seqread-128k-qd8",
        dir: Dir::Read,
        random: false,
        bs: 128 * 1024,
        qd: 8,
    },
];

/// Looks a workload up by name.
pub fn by_name(name: &str) -> Option<BlkWorkload> {
    STANDARD.iter().copied().find(|w| w.name == name)
}

impl BlkWorkload {
    /// Runs for `duration` on queue 0 of `client`, whose device holds
    /// `capacity_bytes`.
    pub fn run(
        &self,
        client: &mut BlkClient,
        capacity_bytes: u64,
        duration: Duration,
        seed: u64,
    ) -> Result<Sample, BlkError> {
        let blocks = (capacity_bytes / u64::from(self.bs)).max(1);
        let mut rng = Rng::new(seed);
        let mut next_seq = 0u64;
        let mut q = client.queue(0);
        let mut started = vec![Instant::now(); usize::from(q.virtqueue().size())];
        let mut sample = Sample::default();
        let mut done = Vec::with_capacity(usize::from(self.qd));
        let mut submit = |q: &mut crate::blk::BlkQueue<'_>, started: &mut Vec<Instant>| {
            let block = if self.random {
                rng.below(blocks)
            } else {
                let b = next_seq % blocks;
                next_seq += 1;
                b
            };
            let sector = block * u64::from(self.bs) / SECTOR_SIZE;
            let r = match self.dir {
                Dir::Read => Request::Read {
                    sector,
                    len: self.bs,
                },
                Dir::Write => Request::Write {
                    sector,
                    len: self.bs,
                },
            };
            let slot = q.submit(r)?;
            started[usize::from(slot)] = Instant::now();
            Ok::<_, BlkError>(())
        };
        let t0 = Instant::now();
        let end = t0 + duration;
        for _ in 0..self.qd {
            submit(&mut q, &mut started)?;
        }
        q.kick()?;
        let mut in_flight = usize::from(self.qd);
        while in_flight > 0 {
            done.clear();
            q.reap(Duration::from_secs(10), &mut done)?;
            let now = Instant::now();
            for c in &done {
                in_flight -= 1;
                if c.status != status::OK {
                    return Err(BlkError::Status {
                        op: "bench",
                        sector: 0,
                        status: c.status,
                    });
                }
                sample.record(started[usize::from(c.slot)], u64::from(self.bs));
            }
            if now < end {
                for _ in 0..done.len() {
                    submit(&mut q, &mut started)?;
                    in_flight += 1;
                }
                q.kick()?;
            }
        }
        sample.elapsed = t0.elapsed();
        Ok(sample)
    }
}

/// CPU seconds the calling thread has used (user + system).
fn thread_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into `ru`, which we own.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The ceiling a block backend is compared with: one thread calling
/// pread(2) on the image itself, same block size and offsets as `w`'s
/// reads, no virtqueue in between. CPU is this thread's own.
pub fn pread_baseline(
    image: &std::path::Path,
    w: &BlkWorkload,
    duration: Duration,
    seed: u64,
) -> std::io::Result<Sample> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(image)?;
    let capacity = file.metadata()?.len();
    let blocks = (capacity / u64::from(w.bs)).max(1);
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; w.bs as usize];
    let mut sample = Sample::default();
    let mut next_seq = 0u64;
    let cpu0 = thread_cpu_seconds();
    let t0 = Instant::now();
    let end = t0 + duration;
    while Instant::now() < end {
        let block = if w.random {
            rng.below(blocks)
        } else {
            next_seq += 1;
            (next_seq - 1) % blocks
        };
        let started = Instant::now();
        file.read_exact_at(&mut buf, block * u64::from(w.bs))?;
        sample.record(started, u64::from(w.bs));
    }
    sample.elapsed = t0.elapsed();
    sample.cpu_s = Some(thread_cpu_seconds() - cpu0);
    Ok(sample)
}

/// The device's own limit a block backend is compared with: fio's io_uring
/// engine on the image itself, `w`'s block size, pattern and depth, one job
/// (`direct`: O_DIRECT, as a daemon run with `--direct`). Returns
/// operations/s, MiB/s, mean and p99 completion latency in microseconds.
pub fn fio_ceiling(
    image: &std::path::Path,
    w: &BlkWorkload,
    direct: bool,
    duration: Duration,
) -> Result<FioResult, String> {
    let rw = match (w.dir, w.random) {
        (Dir::Read, true) => "randread",
        (Dir::Read, false) => "read",
        (Dir::Write, true) => "randwrite",
        (Dir::Write, false) => "write",
    };
    let secs = duration.as_secs().max(1);
    let out = std::process::Command::new("fio")
        .args([
            "--name=ceiling",
            "--ioengine=io_uring",
            "--output-format=json",
            "--time_based",
            "--numjobs=1",
            "--randrepeat=0",
            "--norandommap",
        ])
        .arg(format!("--filename={}", image.display()))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={}", w.bs))
        .arg(format!("--iodepth={}", w.qd))
        .arg(format!("--direct={}", u8::from(direct)))
        .arg(format!("--runtime={secs}"))
        .output()
        .map_err(|e| format!("fio: {e} (install fio)"))?;
    if !out.status.success() {
        return Err(format!(
            "fio {rw} on {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    FioResult::parse(&out.stdout, w.dir)
}

/// What [`fio_ceiling`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FioResult {
    /// Operations per second.
    pub ops_per_s: f64,
    /// MiB per second.
    pub mib_per_s: f64,
    /// Mean completion latency, microseconds.
    pub mean_us: f64,
    /// 99th percentile completion latency, microseconds.
    pub p99_us: f64,
}

impl FioResult {
    /// Reads fio's `--output-format=json` report of one job.
    pub fn parse(json: &[u8], dir: Dir) -> Result<FioResult, String> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("fio's JSON report: {e}"))?;
        let side = if dir == Dir::Read { "read" } else { "write" };
        let job = &v["jobs"][0][side];
        let num = |f: &serde_json::Value, what: &str| {
            f.as_f64()
                .ok_or_else(|| format!("fio's JSON report has no jobs[0].{side}.{what}"))
        };
        Ok(FioResult {
            ops_per_s: num(&job["iops"], "iops")?,
            mib_per_s: num(&job["bw_bytes"], "bw_bytes")? / (1024.0 * 1024.0),
            mean_us: num(&job["clat_ns"]["mean"], "clat_ns.mean")? / 1e3,
            p99_us: num(&job["clat_ns"]["percentile"]["99.000000"], "clat_ns p99")? / 1e3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_reports_are_read_per_direction() {
        let json = br#"{"jobs": [{"read": {"iops": 1000.5, "bw_bytes": 4194304,
            "clat_ns": {"mean": 2500.0, "percentile": {"99.000000": 8000}}},
            "write": {"iops": 0, "bw_bytes": 0, "clat_ns": {"mean": 0}}}]}"#;
        let r = FioResult::parse(json, Dir::Read).unwrap();
        assert_eq!(
            r,
            FioResult {
                ops_per_s: 1000.5,
                mib_per_s: 4.0,
                mean_us: 2.5,
                p99_us: 8.0
            }
        );
        // The write side has no percentiles: a clear error, not a zero.
        let e = FioResult::parse(json, Dir::Write).unwrap_err();
        assert!(e.contains("jobs[0].write.clat_ns p99"), "{e}");
        assert!(FioResult::parse(b"not json", Dir::Read).is_err());
    }

    #[test]
    fn standard_names_are_unique_and_found() {
        for w in STANDARD {
            assert_eq!(by_name(w.name), Some(w));
        }
        assert_eq!(by_name("nope"), None);
    }
}
