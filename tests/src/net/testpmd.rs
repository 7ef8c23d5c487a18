//! DPDK's `dpdk-testpmd` with a vhost-user PMD (`net_vhost`) as a
//! third-party virtio-net backend: it listens on a socket, and in `macswap`
//! mode sends every frame it receives back on the same queue with source
//! and destination MAC swapped.
//!
//! Runs without hugepages (`--no-huge`, memory from malloc). In Debian 12
//! the binary is in the `dpdk-dev` package (not in `dpdk`); it pulls in the
//! vhost PMD, `librte-net-vhost23`, through `libdpdk-dev`.
//!
//! testpmd without `-i` starts forwarding, then blocks reading stdin; the
//! guard holds that pipe open, and kills the process on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ;

use super::{NetOptions, NET_DRIVER_FEATURES};

/// Errors while starting testpmd.
#[derive(Debug, thiserror::Error)]
pub enum TestPmdError {
    /// `dpdk-testpmd` is not on PATH.
    #[error("dpdk-testpmd not found on PATH (Debian: apt-get install dpdk-dev)")]
    NotInstalled,
    /// Creating the log file failed.
    #[error("creating log file {0}")]
    Log(PathBuf, #[source] std::io::Error),
    /// The process could not be started.
    #[error("spawning {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    /// It exited before creating its socket.
    #[error("dpdk-testpmd exited with {status} before creating {socket}; log:\n{log}")]
    Exited {
        /// Exit status.
        status: ExitStatus,
        /// Socket it should have created.
        socket: PathBuf,
        /// Its output.
        log: String,
    },
    /// The socket did not appear in time.
    #[error("dpdk-testpmd did not create {socket} within {timeout:?}; log:\n{log}")]
    Timeout {
        /// Socket it should have created.
        socket: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// Its output.
        log: String,
    },
    /// Polling the child failed.
    #[error("waiting for dpdk-testpmd")]
    Wait(#[source] std::io::Error),
}

/// How to run testpmd.
#[derive(Debug, Clone)]
pub struct TestPmdOptions {
    /// The vhost-user socket testpmd creates (it is the server).
    pub socket: PathBuf,
    /// Queue pairs of the vhost port (`queues=` and `--rxq/--txq`).
    pub queues: u16,
    /// testpmd forwarding mode.
    pub forward_mode: String,
    /// MiB of malloc memory (`-m`).
    pub mem_mb: u32,
    /// Mbufs in the pool (the default pool wants more memory than `-m 512` holds).
    pub mbufs: u32,
    /// Where the output goes; None: next to the socket, `<socket>.log`.
    pub log: Option<PathBuf>,
    /// How long to wait for the socket.
    pub start_timeout: Duration,
}

impl TestPmdOptions {
    /// macswap on `socket` with `queues` pairs.
    pub fn new(socket: &Path, queues: u16) -> Self {
        TestPmdOptions {
            socket: socket.to_owned(),
            queues,
            forward_mode: "macswap".into(),
            mem_mb: 512,
            mbufs: 16384,
            log: None,
            start_timeout: Duration::from_secs(30),
        }
    }

    /// EAL prefix, unique per socket so parallel instances never share state.
    fn prefix(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.socket.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        format!("vu-driver-{}-{:x}", std::process::id(), h & 0xffff_ffff)
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<String> {
        let q = self.queues.max(1);
        vec![
            // Two lcores (main + one forwarding core) floating over every CPU we may use.
            format!("--lcores=(0,1)@({})", allowed_cpus()),
            "--no-huge".into(),
            "-m".into(),
            self.mem_mb.to_string(),
            "--no-pci".into(),
            "--no-shconf".into(),
            "--no-telemetry".into(),
            format!("--file-prefix={}", self.prefix()),
            "--vdev".into(),
            format!("net_vhost0,iface={},queues={q}", self.socket.display()),
            "--".into(),
            format!("--rxq={q}"),
            format!("--txq={q}"),
            format!("--total-num-mbufs={}", self.mbufs),
            format!("--forward-mode={}", self.forward_mode),
            "--stats-period=0".into(),
        ]
    }
}

/// This process's CPU list as the kernel prints it (e.g. `0-1`).
fn allowed_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "0".into())
}

/// Finds `dpdk-testpmd` on PATH.
pub fn find_testpmd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("dpdk-testpmd"))
        .find(|p| p.is_file())
}

/// A running testpmd; dropping it kills the process and removes its files.
/// If the thread is panicking (a failed test) the log is printed and kept,
/// else it is removed.
#[derive(Debug)]
pub struct TestPmd {
    child: Child,
    stdin: Option<ChildStdin>,
    socket: PathBuf,
    log: PathBuf,
    runtime_dir: PathBuf,
}

impl TestPmd {
    /// Starts testpmd and returns once its socket exists.
    pub fn spawn(opts: &TestPmdOptions) -> Result<Self, TestPmdError> {
        let bin = find_testpmd().ok_or(TestPmdError::NotInstalled)?;
        let log = opts
            .log
            .clone()
            .unwrap_or_else(|| opts.socket.with_extension("testpmd.log"));
        let out = File::create(&log).map_err(|e| TestPmdError::Log(log.clone(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| TestPmdError::Log(log.clone(), e))?;
        let _ = std::fs::remove_file(&opts.socket);
        let mut child = Command::new(&bin)
            .args(opts.args())
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| TestPmdError::Spawn(bin.clone(), e))?;
        let stdin = child.stdin.take();
        let runtime_dir = dpdk_runtime_dir().join(opts.prefix());
        let mut pmd = TestPmd {
            child,
            stdin,
            socket: opts.socket.clone(),
            log,
            runtime_dir,
        };
        pmd.wait_for_socket(opts.start_timeout)?;
        Ok(pmd)
    }

    /// Polls until the socket exists or the process dies.
    fn wait_for_socket(&mut self, timeout: Duration) -> Result<(), TestPmdError> {
        use std::os::unix::fs::FileTypeExt;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(TestPmdError::Wait)? {
                return Err(TestPmdError::Exited {
                    status,
                    socket: self.socket.clone(),
                    log: self.log_text(),
                });
            }
            if std::fs::symlink_metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestPmdError::Timeout {
                    socket: self.socket.clone(),
                    timeout,
                    log: self.log_text(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The socket to connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Everything testpmd has printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// [`NetOptions`] that suit DPDK's vhost library: no control queue (it
    /// offers VIRTIO_NET_F_CTRL_VQ but leaves that queue to the VMM). It
    /// offers no GET_CONFIG for net, so [`super::NetClient::config`] stays empty.
    pub fn net_options(pairs: u16) -> NetOptions {
        NetOptions {
            pairs,
            feature_mask: NET_DRIVER_FEATURES & !(1u64 << VIRTIO_NET_F_CTRL_VQ),
            ..NetOptions::default()
        }
    }
}

/// Where DPDK keeps per-prefix runtime files (created even with --no-shconf).
fn dpdk_runtime_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to this process's uid; no libc call needed.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        return PathBuf::from("/var/run/dpdk");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("dpdk")
}

impl Drop for TestPmd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- dpdk-testpmd log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}
