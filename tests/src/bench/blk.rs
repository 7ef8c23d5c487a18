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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_names_are_unique_and_found() {
        for w in STANDARD {
            assert_eq!(by_name(w.name), Some(w));
        }
        assert_eq!(by_name("nope"), None);
    }
}
