//! The yardstick: workloads driven through the userspace driver against
//! several backends in one run, with alternating repetitions, printed side by
//! side and as JSON lines.

pub mod blk;
pub mod fs;
pub mod net;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Preparing a workload failed.
    #[error("preparing {what}")]
    Prepare {
        /// What was being prepared.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing results failed.
    #[error("writing results to {0}")]
    Output(String, #[source] std::io::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, BenchError>;

/// `pid` and its live descendants (a daemon may fork its worker, as QEMU's
/// C virtiofsd does for its sandbox).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parent_of.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let cur = tree[i];
        tree.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// Fields of /proc/PID/stat after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds (user + system) used so far by every thread of `pid` and of
/// its live descendants.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let one = |p: u32| -> Option<f64> {
        let f = stat_fields(p)?;
        // utime and stime are fields 14 and 15.
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) / hz)
    };
    tree_sum(pid, one)
}

/// Anonymous resident memory of `pid` and its live descendants, in KiB
/// (RssAnon in /proc/PID/status).
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    let one = |p: u32| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    tree_sum(pid, one)
}

/// `read(pid)` plus `read` of each live descendant (None if `pid` itself is gone).
fn tree_sum<T: std::iter::Sum<T> + std::ops::Add<Output = T>>(
    pid: u32,
    read: impl Fn(u32) -> Option<T>,
) -> Option<T> {
    let own = read(pid)?;
    let rest: T = process_tree(pid)
        .into_iter()
        .skip(1)
        .filter_map(&read)
        .sum();
    Some(own + rest)
}

/// What one repetition measured.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Operations completed.
    pub ops: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Per-operation latencies in nanoseconds.
    pub lat_ns: Vec<u32>,
    /// Backend CPU seconds, when its PID is known.
    pub cpu_s: Option<f64>,
}

impl Sample {
    /// Records one finished operation.
    pub fn record(&mut self, started: Instant, bytes: u64) {
        self.ops += 1;
        self.bytes += bytes;
        let ns = started.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32;
        self.lat_ns.push(ns);
    }
}

/// The aggregate of every repetition of one workload on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Workload name.
    pub workload: String,
    /// Backend name.
    pub backend: String,
    /// Repetitions merged.
    pub reps: u32,
    /// Operations per second.
    pub ops_per_s: f64,
    /// MiB per second.
    pub mib_per_s: f64,
    /// Mean latency in microseconds.
    pub mean_us: f64,
    /// 99th percentile latency in microseconds.
    pub p99_us: f64,
    /// Backend CPU microseconds per operation.
    pub cpu_us_per_op: Option<f64>,
    /// Operations per backend CPU-second.
    pub ops_per_cpu_s: Option<f64>,
    /// Backend anonymous RSS after the workload, KiB.
    pub rss_anon_kib: Option<u64>,
    /// Unix time of the run.
    pub unix_time: u64,
}

impl Row {
    /// Merges repetitions.
    pub fn from_samples(
        workload: &str,
        backend: &str,
        samples: &[Sample],
        pid: Option<u32>,
    ) -> Row {
        let ops: u64 = samples.iter().map(|s| s.ops).sum();
        let bytes: u64 = samples.iter().map(|s| s.bytes).sum();
        let secs: f64 = samples.iter().map(|s| s.elapsed.as_secs_f64()).sum();
        let mut lat: Vec<u32> = samples
            .iter()
            .flat_map(|s| s.lat_ns.iter().copied())
            .collect();
        lat.sort_unstable();
        let mean_us = if lat.is_empty() {
            0.0
        } else {
            lat.iter().map(|&l| f64::from(l)).sum::<f64>() / lat.len() as f64 / 1e3
        };
        let p99_us = lat
            .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |&l| f64::from(l) / 1e3);
        let cpu: Option<f64> = samples.iter().map(|s| s.cpu_s).sum();
        let per_s = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        Row {
            workload: workload.to_owned(),
            backend: backend.to_owned(),
            reps: samples.len() as u32,
            ops_per_s: per_s(ops as f64),
            mib_per_s: per_s(bytes as f64 / (1 << 20) as f64),
            mean_us,
            p99_us,
            cpu_us_per_op: cpu.filter(|_| ops > 0).map(|c| c * 1e6 / ops as f64),
            ops_per_cpu_s: cpu.filter(|&c| c > 0.0).map(|c| ops as f64 / c),
            rss_anon_kib: pid.and_then(rss_anon_kib),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// Runs `run` for each backend in turn, `reps` times, so that the backends
/// alternate (A B A B ...) and drift on the machine hits them alike.
pub fn alternate<B, E>(
    backends: &mut [B],
    reps: u32,
    pid: impl Fn(&B) -> Option<u32>,
    mut run: impl FnMut(&mut B) -> std::result::Result<Sample, E>,
) -> std::result::Result<Vec<Vec<Sample>>, E> {
    let mut out: Vec<Vec<Sample>> = backends.iter().map(|_| Vec::new()).collect();
    for _ in 0..reps {
        for (i, b) in backends.iter_mut().enumerate() {
            let p = pid(b);
            let before = p.and_then(cpu_seconds);
            let mut s = run(b)?;
            // Without a PID, keep whatever CPU time the run measured itself
            // (a baseline loop in this process times its own thread).
            if p.is_some() {
                let after = p.and_then(cpu_seconds);
                s.cpu_s = before.zip(after).map(|(a, b)| b - a);
            }
            out[i].push(s);
        }
    }
    Ok(out)
}

/// Formats rows as a side-by-side table, workloads grouped, with each
/// backend's throughput relative to the first backend of its workload.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<24} {:<16} {:>11} {:>9} {:>9} {:>9} {:>9} {:>11} {:>7} {:>9}\n",
        "workload",
        "backend",
        "ops/s",
        "MiB/s",
        "mean µs",
        "p99 µs",
        "CPU µs/op",
        "ops/CPU-s",
        "vs 1st",
        "anon KiB"
    ));
    let mut first: Option<(String, f64)> = None;
    for r in rows {
        let base = match &first {
            Some((w, b)) if *w == r.workload => *b,
            _ => {
                first = Some((r.workload.clone(), r.ops_per_s));
                r.ops_per_s
            }
        };
        let opt = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"))
        };
        s.push_str(&format!(
            "{:<24} {:<16} {:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>11} {:>6.2}x {:>9}\n",
            r.workload,
            r.backend,
            r.ops_per_s,
            r.mib_per_s,
            r.mean_us,
            r.p99_us,
            opt(r.cpu_us_per_op, 2),
            opt(r.ops_per_cpu_s, 0),
            if base > 0.0 { r.ops_per_s / base } else { 0.0 },
            r.rss_anon_kib
                .map_or_else(|| "-".to_owned(), |k| k.to_string()),
        ));
    }
    s
}

/// Appends rows as JSON lines to `path`.
pub fn append_json(path: &Path, rows: &[Row]) -> Result<()> {
    let name = path.display().to_string();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| BenchError::Output(name.clone(), e))?;
    for r in rows {
        let line = serde_json::to_string(r).expect("rows serialize");
        writeln!(f, "{line}").map_err(|e| BenchError::Output(name.clone(), e))?;
    }
    Ok(())
}

/// A small, fast, deterministic PRNG (xorshift64*), so workloads repeat exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator (0 is mapped to a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ops: u64, ms: u64, lat: &[u32], cpu: Option<f64>) -> Sample {
        Sample {
            ops,
            bytes: ops * 4096,
            elapsed: Duration::from_millis(ms),
            lat_ns: lat.to_vec(),
            cpu_s: cpu,
        }
    }

    #[test]
    fn rows_merge_repetitions() {
        let lat: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        let a = sample(1000, 500, &lat[..50], Some(0.25));
        let b = sample(1000, 500, &lat[50..], Some(0.25));
        let r = Row::from_samples("w", "b", &[a, b], None);
        assert_eq!(r.reps, 2);
        assert!((r.ops_per_s - 2000.0).abs() < 1e-6);
        assert!((r.mib_per_s - 2000.0 * 4096.0 / 1048576.0).abs() < 1e-6);
        assert!((r.mean_us - 50.5).abs() < 1e-6);
        assert!((r.p99_us - 100.0).abs() < 1e-6);
        assert!((r.cpu_us_per_op.unwrap() - 250.0).abs() < 1e-6);
        assert!((r.ops_per_cpu_s.unwrap() - 4000.0).abs() < 1e-6);
    }

    #[test]
    fn cpu_is_unknown_if_any_rep_lacks_it() {
        let r = Row::from_samples(
            "w",
            "b",
            &[sample(1, 1, &[1], Some(1.0)), sample(1, 1, &[1], None)],
            None,
        );
        assert!(r.cpu_us_per_op.is_none());
    }

    #[test]
    fn alternate_interleaves_backends() {
        let mut order = Vec::new();
        let mut backends = vec!["a", "b"];
        let out = alternate(
            &mut backends,
            3,
            |_| None,
            |b| {
                order.push(*b);
                Ok::<_, BenchError>(Sample::default())
            },
        )
        .unwrap();
        assert_eq!(order, ["a", "b", "a", "b", "a", "b"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), 3);
    }

    #[test]
    fn table_shows_ratio_to_first_backend() {
        let rows = vec![
            Row::from_samples("w", "ref", &[sample(100, 1000, &[1], None)], None),
            Row::from_samples("w", "ours", &[sample(250, 1000, &[1], None)], None),
        ];
        let t = table(&rows);
        assert!(t.contains("1.00x"), "{t}");
        assert!(t.contains("2.50x"), "{t}");
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let pid = std::process::id();
        let a = cpu_seconds(pid).unwrap();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_seconds(pid).unwrap() > a);
        assert!(rss_anon_kib(pid).unwrap() > 0);
    }

    #[test]
    fn process_tree_finds_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let tree = process_tree(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(tree[0], std::process::id());
        assert!(tree.contains(&child.id()), "{tree:?}");
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(5);
        let mut b = Rng::new(5);
        for _ in 0..100 {
            let v = a.below(10);
            assert_eq!(v, b.below(10));
            assert!(v < 10);
        }
    }
}
