//! The guest test kit: boot Debian's kernel with the busybox initramfs built
//! by `scripts/setup.sh` under QEMU (TCG), attached to vhost-user backends,
//! run a shell script in the guest and collect its result.
//!
//! The guest's `/init` (tests/guest/init) prints on the serial console:
//! `VUTEST-KV key=value` for each `vutest-kv key value` the script calls,
//! `VUTEST-ERROR: message` when init itself fails, and finally
//! `VUTEST-RESULT: status=pass|fail exit=N` before it powers off.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use vu_driver::guest::QemuGuest;
//! let out = QemuGuest::locate()?
//!     .blk("/tmp/blk.sock")
//!     .script("vutest-kv size $(cat /sys/block/vda/size)")
//!     .run()?;
//! out.ensure_pass()?;
//! assert_eq!(out.kv("size"), Some("131072"));
//! # Ok(()) }
//! ```

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::fixture::{find_binary, qemu_escape, qemu_shared_memory_args, FixtureError, TempDir};

mod console;

use console::tail;
pub use console::{base64_encode, ConsoleParser, GuestOutput, GuestResult, GuestStatus};

/// Environment variable overriding the kit directory.
pub const KIT_DIR_ENV: &str = "VUTEST_KIT_DIR";
/// Serial number of the disk carrying the script ([`ScriptTransport::Disk`]).
pub const SCRIPT_DISK_SERIAL: &str = "vutest-script";
/// Name of the script file on a share ([`ScriptTransport::Share`]).
pub const SHARE_SCRIPT_NAME: &str = "vutest.sh";
/// Longest kernel command line we build (x86 COMMAND_LINE_SIZE is 2048).
pub const MAX_CMDLINE: usize = 2000;
/// How long QEMU gets to exit after the guest printed its result.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Errors of the guest kit.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The kit (kernel, initramfs) is not there.
    #[error(
        "guest kit incomplete: {missing} not found; run scripts/setup.sh (or set {KIT_DIR_ENV})"
    )]
    KitMissing {
        /// The missing file.
        missing: PathBuf,
    },
    /// A fixture (binary lookup, temporary directory) failed.
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    /// Writing the script for the guest failed.
    #[error("cannot write the guest script to {path}")]
    WriteScript {
        /// Where it was written.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The script does not fit on the kernel command line.
    #[error("kernel command line would be {len} bytes (max {MAX_CMDLINE}); use ScriptTransport::Disk or Share")]
    CmdlineTooLong {
        /// The length it would have.
        len: usize,
    },
    /// [`ScriptTransport::Share`] without a virtio-fs device to mount.
    #[error("script transport Share needs a virtio-fs device (.fs()) with automount on")]
    NoShareForScript,
    /// Spawning QEMU failed.
    #[error("cannot spawn {program}")]
    SpawnQemu {
        /// The QEMU binary.
        program: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Waiting for QEMU failed.
    #[error("cannot wait for QEMU (pid {pid})")]
    WaitQemu {
        /// QEMU's pid.
        pid: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The guest did not finish in time; QEMU was killed.
    #[error("guest did not finish within {timeout:?}; QEMU killed. QEMU stderr:\n{stderr}\nconsole (last lines):\n{console_tail}")]
    Timeout {
        /// The timeout.
        timeout: Duration,
        /// Last console lines.
        console_tail: String,
        /// QEMU's stderr.
        stderr: String,
    },
    /// The guest did not pass ([`GuestOutput::ensure_pass`]).
    #[error("guest test failed: {summary}. QEMU stderr:\n{stderr}\nconsole (last lines):\n{console_tail}")]
    GuestFailed {
        /// What went wrong.
        summary: String,
        /// Last console lines.
        console_tail: String,
        /// QEMU's stderr.
        stderr: String,
    },
}

/// Result of the guest kit.
pub type Result<T> = std::result::Result<T, GuestError>;

/// The files `scripts/setup.sh` produces.
#[derive(Debug, Clone)]
pub struct GuestKit {
    /// The kit directory.
    pub dir: PathBuf,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
}

/// The kit directory: `$VUTEST_KIT_DIR`, else `target/guest-kit` in the
/// workspace root.
pub fn kit_dir() -> PathBuf {
    match std::env::var_os(KIT_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("guest-kit"),
    }
}

impl GuestKit {
    /// The kit at [`kit_dir()`]; an error naming the missing file and
    /// `scripts/setup.sh` if setup was not run.
    pub fn locate() -> Result<Self> {
        Self::at(&kit_dir())
    }

    /// The kit in `dir`.
    pub fn at(dir: &Path) -> Result<Self> {
        let kernel = dir.join("vmlinuz");
        let initrd = dir.join("initrd.gz");
        let kernel_version = read_kit(&kernel, &initrd, &dir.join("kernel-version"))?;
        Ok(GuestKit {
            dir: dir.to_path_buf(),
            kernel,
            initrd,
            kernel_version,
        })
    }
}

/// Checks that a kit's `kernel`, `initrd` and `version` files are there
/// ([`GuestError::KitMissing`] names the first that is not); the version
/// (`version`'s trimmed text).
pub(crate) fn read_kit(kernel: &Path, initrd: &Path, version: &Path) -> Result<String> {
    let missing = |f: &Path| GuestError::KitMissing {
        missing: f.to_path_buf(),
    };
    if let Some(f) = [kernel, initrd, version].into_iter().find(|f| !f.is_file()) {
        return Err(missing(f));
    }
    let text = fs::read_to_string(version).map_err(|_| missing(version))?;
    Ok(text.trim().to_string())
}

/// How the script reaches the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ScriptTransport {
    /// On the command line if it fits, else on a disk.
    #[default]
    Auto,
    /// Base64 on the kernel command line (`vutest.script=`), ~1.4 KiB max.
    Cmdline,
    /// A raw virtio-blk disk with serial [`SCRIPT_DISK_SERIAL`], attached
    /// after every other device so it does not take `/dev/vda`.
    Disk,
    /// Written as `vutest.sh` into this host directory, which must be the
    /// directory shared by the first [`QemuGuest::fs`] device.
    Share(PathBuf),
}

#[derive(Debug, Clone)]
enum Device {
    Fs {
        socket: PathBuf,
        tag: String,
    },
    Blk {
        socket: PathBuf,
        num_queues: Option<u16>,
    },
    Net {
        socket: PathBuf,
        mac: String,
        queue_pairs: u16,
    },
}

/// Options of a vhost-user virtio-net device ([`QemuGuest::net_vhost_user_with`]).
#[derive(Debug, Clone, Default)]
pub struct NetDeviceOpts {
    /// The guest's MAC (None: `52:54:00:12:34:NN`, NN counting from 0x56).
    pub mac: Option<String>,
    /// Queue pairs (None: 1). More than one puts `queues=N` on the netdev
    /// and `mq=on` on the device; the guest's virtio_net enables at most
    /// one pair per vCPU (see [`QemuGuest::cpus`]).
    pub queue_pairs: Option<u16>,
}

/// Builder and runner of one guest boot.
#[derive(Debug, Clone)]
pub struct QemuGuest {
    kit: GuestKit,
    qemu: String,
    devices: Vec<Device>,
    memory_mib: u32,
    cpus: u32,
    script: String,
    transport: ScriptTransport,
    timeout: Duration,
    automount_fs: bool,
    cmdline: Vec<String>,
    qemu_args: Vec<String>,
    /// `reconnect=N` on every vhost-user chardev.
    reconnect_s: Option<u32>,
}

impl QemuGuest {
    /// A guest using the kit in `kit_dir` (checked now).
    pub fn new(kit_dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::with_kit(GuestKit::at(kit_dir.as_ref())?))
    }

    /// A guest using the kit at [`kit_dir()`].
    pub fn locate() -> Result<Self> {
        Ok(Self::with_kit(GuestKit::locate()?))
    }

    /// A guest using `kit`. Defaults: 512 MiB, 1 vCPU, 120 s timeout,
    /// script `true`.
    pub fn with_kit(kit: GuestKit) -> Self {
        QemuGuest {
            kit,
            qemu: "qemu-system-x86_64".to_string(),
            devices: Vec::new(),
            memory_mib: 512,
            cpus: 1,
            script: "true\n".to_string(),
            transport: ScriptTransport::Auto,
            timeout: Duration::from_secs(120),
            automount_fs: true,
            cmdline: Vec::new(),
            qemu_args: Vec::new(),
            reconnect_s: None,
        }
    }

    /// Adds a vhost-user-fs-pci device on `socket` with mount tag `tag`. The
    /// first one is mounted at `/mnt/fs` (`$VUTEST_FS`) unless
    /// [`Self::automount_fs`] turned that off.
    pub fn fs(mut self, socket: impl AsRef<Path>, tag: &str) -> Self {
        self.devices.push(Device::Fs {
            socket: socket.as_ref().to_path_buf(),
            tag: tag.to_string(),
        });
        self
    }

    /// QEMU reconnects each vhost-user blk and net socket `secs` seconds
    /// after its backend went away (`-chardev socket,...,reconnect=N`),
    /// replaying the setup on the new connection (QEMU 7.2 cannot start
    /// vhost-user-fs on a reconnecting socket, so shares keep a plain one).
    pub fn reconnect(mut self, secs: u32) -> Self {
        self.reconnect_s = Some(secs);
        self
    }

    /// Adds a vhost-user-blk-pci device on `socket` (repeatable; the first is
    /// `/dev/vda`, the next `/dev/vdb`, ...). QEMU picks its number of
    /// request queues (one per vCPU, capped by the backend).
    pub fn blk(mut self, socket: impl AsRef<Path>) -> Self {
        self.devices.push(Device::Blk {
            socket: socket.as_ref().to_path_buf(),
            num_queues: None,
        });
        self
    }

    /// Like [`Self::blk`] with `num-queues=N` on the device. The guest's
    /// virtio_blk uses at most one queue per vCPU, so give it
    /// [`Self::cpus`] >= N to see N hardware queues.
    pub fn blk_queues(mut self, socket: impl AsRef<Path>, num_queues: u16) -> Self {
        self.devices.push(Device::Blk {
            socket: socket.as_ref().to_path_buf(),
            num_queues: Some(num_queues),
        });
        self
    }

    /// Adds a virtio-net-pci device backed by vhost-user on `socket`, with
    /// MAC `52:54:00:12:34:NN` (NN counting from 0x56). It has `vectors=0`:
    /// QEMU 7.2 under TCG crashes with MSI-X on a vhost-user netdev.
    pub fn net_vhost_user(self, socket: impl AsRef<Path>) -> Self {
        self.net_vhost_user_with(socket, &NetDeviceOpts::default())
    }

    /// Like [`Self::net_vhost_user`] with a chosen MAC and number of
    /// queue pairs.
    pub fn net_vhost_user_with(mut self, socket: impl AsRef<Path>, opts: &NetDeviceOpts) -> Self {
        let n = self
            .devices
            .iter()
            .filter(|d| matches!(d, Device::Net { .. }))
            .count();
        let mac = opts
            .mac
            .clone()
            .unwrap_or_else(|| format!("52:54:00:12:34:{:02x}", 0x56 + n));
        self.devices.push(Device::Net {
            socket: socket.as_ref().to_path_buf(),
            mac,
            queue_pairs: opts.queue_pairs.unwrap_or(1).max(1),
        });
        self
    }

    /// Guest memory in MiB (a shared `/dev/shm` file, as vhost-user needs).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// The shell script the guest runs (busybox sh). Exit status 0 is a
    /// pass. `vutest-kv KEY VALUE` reports a value; `$VUTEST_FS` is the
    /// mounted share, if any.
    pub fn script(mut self, script: &str) -> Self {
        self.script = script.to_string();
        self
    }

    /// How the script reaches the guest (default [`ScriptTransport::Auto`]).
    pub fn script_transport(mut self, transport: ScriptTransport) -> Self {
        self.transport = transport;
        self
    }

    /// Whether init mounts the first virtio-fs device at `/mnt/fs`.
    pub fn automount_fs(mut self, on: bool) -> Self {
        self.automount_fs = on;
        self
    }

    /// Kills QEMU if the guest has not finished after this long. The script
    /// itself is killed by the guest a little earlier.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Appends a kernel command line parameter.
    pub fn cmdline_arg(mut self, arg: &str) -> Self {
        self.cmdline.push(arg.to_string());
        self
    }

    /// Appends raw QEMU arguments.
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The QEMU binary (default `qemu-system-x86_64` from `$PATH`).
    pub fn qemu_binary(mut self, qemu: &str) -> Self {
        self.qemu = qemu.to_string();
        self
    }

    fn first_fs_tag(&self) -> Option<&str> {
        self.devices.iter().find_map(|d| match d {
            Device::Fs { tag, .. } => Some(tag.as_str()),
            _ => None,
        })
    }

    fn guest_script_timeout(&self) -> u64 {
        self.timeout.as_secs().saturating_sub(15).max(10)
    }

    /// The kernel command line, and the script disk's contents when the
    /// script goes on a disk.
    fn cmdline_and_disk(&self) -> Result<(String, Option<Vec<u8>>)> {
        let mut base = vec![
            "console=ttyS0".to_string(),
            "quiet".to_string(),
            "panic=-1".to_string(),
            format!("vutest.timeout={}", self.guest_script_timeout()),
        ];
        let fs_tag = self.first_fs_tag().filter(|_| self.automount_fs);
        if let Some(tag) = fs_tag {
            base.push(format!("vutest.fs={tag}"));
        }
        base.extend(self.cmdline.iter().cloned());
        let with_script = || {
            let mut v = base.clone();
            v.push(format!(
                "vutest.script={}",
                base64_encode(self.script.as_bytes())
            ));
            v.join(" ")
        };
        let on_disk = || {
            let mut v = base.clone();
            v.push(format!("vutest.disk={SCRIPT_DISK_SERIAL}"));
            let mut bytes = self.script.as_bytes().to_vec();
            bytes.resize(bytes.len().div_ceil(4096).max(1) * 4096, 0);
            (v.join(" "), Some(bytes))
        };
        let (cmdline, disk) = match &self.transport {
            ScriptTransport::Cmdline => (with_script(), None),
            ScriptTransport::Auto => {
                let c = with_script();
                if c.len() <= MAX_CMDLINE {
                    (c, None)
                } else {
                    on_disk()
                }
            }
            ScriptTransport::Disk => on_disk(),
            ScriptTransport::Share(dir) => {
                if fs_tag.is_none() {
                    return Err(GuestError::NoShareForScript);
                }
                let path = dir.join(SHARE_SCRIPT_NAME);
                fs::write(&path, &self.script)
                    .map_err(|source| GuestError::WriteScript { path, source })?;
                (base.join(" "), None)
            }
        };
        if cmdline.len() > MAX_CMDLINE {
            return Err(GuestError::CmdlineTooLong { len: cmdline.len() });
        }
        Ok((cmdline, disk))
    }

    /// The QEMU arguments for this guest; `script_disk` is the raw file
    /// carrying the script, if any.
    fn qemu_command_args(&self, cmdline: &str, script_disk: Option<&Path>) -> Vec<String> {
        let mut a: Vec<String> = [
            "-machine",
            "q35,accel=tcg",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(qemu_shared_memory_args(self.memory_mib));
        a.extend([
            "-smp".to_string(),
            self.cpus.to_string(),
            "-kernel".to_string(),
            self.kit.kernel.to_string_lossy().into_owned(),
            "-initrd".to_string(),
            self.kit.initrd.to_string_lossy().into_owned(),
            "-append".to_string(),
            cmdline.to_string(),
        ]);
        for (i, dev) in self.devices.iter().enumerate() {
            let socket = match dev {
                Device::Fs { socket, .. }
                | Device::Blk { socket, .. }
                | Device::Net { socket, .. } => socket,
            };
            a.push("-chardev".into());
            // QEMU 7.2's vhost-user-fs cannot start on a reconnecting
            // socket ("Failed to set msg fds"): only blk and net get it.
            let reconnect = self
                .reconnect_s
                .filter(|_| !matches!(dev, Device::Fs { .. }))
                .map(|n| format!(",reconnect={n}"))
                .unwrap_or_default();
            a.push(format!(
                "socket,id=vu{i},path={}{reconnect}",
                qemu_escape(socket.as_os_str())
            ));
            match dev {
                Device::Fs { tag, .. } => a.extend([
                    "-device".to_string(),
                    format!("vhost-user-fs-pci,chardev=vu{i},tag={tag}"),
                ]),
                Device::Blk { num_queues, .. } => a.extend([
                    "-device".to_string(),
                    match num_queues {
                        Some(n) => format!("vhost-user-blk-pci,chardev=vu{i},num-queues={n}"),
                        None => format!("vhost-user-blk-pci,chardev=vu{i}"),
                    },
                ]),
                Device::Net {
                    mac, queue_pairs, ..
                } => a.extend(if *queue_pairs > 1 {
                    [
                        "-netdev".to_string(),
                        format!("vhost-user,id=net{i},chardev=vu{i},queues={queue_pairs}"),
                        "-device".to_string(),
                        format!("virtio-net-pci,netdev=net{i},mac={mac},mq=on,vectors=0"),
                    ]
                } else {
                    [
                        "-netdev".to_string(),
                        format!("vhost-user,id=net{i},chardev=vu{i}"),
                        "-device".to_string(),
                        format!("virtio-net-pci,netdev=net{i},mac={mac},vectors=0"),
                    ]
                }),
            }
        }
        if let Some(disk) = script_disk {
            a.push("-drive".into());
            a.push(format!(
                "file={},format=raw,if=none,id=vutest-script,read-only=on",
                qemu_escape(disk.as_os_str())
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-blk-pci,drive=vutest-script,serial={SCRIPT_DISK_SERIAL}"
            ));
        }
        a.extend(self.qemu_args.iter().cloned());
        a
    }

    /// Boots the guest and waits, reading the console line by line, until
    /// QEMU exits or the timeout kills it. Returns `Ok` whenever QEMU ran to
    /// its end (see [`GuestOutput::ensure_pass`] for the verdict) and
    /// [`GuestError::Timeout`] if it had to be killed.
    pub fn run(&self) -> Result<GuestOutput> {
        self.run_watching(|_| {})
    }

    /// Like [`Self::run`], and calls `on_line` with each console line as it
    /// arrives, while the guest runs: the host can react to a line the
    /// script prints (change the share, then let the guest go on) instead
    /// of guessing how long the guest needs. `on_line` runs on the thread
    /// that waits for QEMU, so it should not block for long.
    pub fn run_watching(&self, mut on_line: impl FnMut(&str)) -> Result<GuestOutput> {
        let qemu = find_binary(&self.qemu)?;
        let work = TempDir::new("vutest-guest")?;
        let (cmdline, disk) = self.cmdline_and_disk()?;
        let disk_path = match disk {
            Some(bytes) => {
                let path = work.join("script.img");
                fs::write(&path, bytes).map_err(|source| GuestError::WriteScript {
                    path: path.clone(),
                    source,
                })?;
                Some(path)
            }
            None => None,
        };
        let args = self.qemu_command_args(&cmdline, disk_path.as_deref());
        log::debug!("{} {}", qemu.display(), args.join(" "));

        let start = Instant::now();
        let child = Command::new(&qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| GuestError::SpawnQemu {
                program: qemu.clone(),
                source,
            })?;
        let mut qemu_proc = KillOnDrop(child);
        let stdout = qemu_proc.0.stdout.take();
        let stderr = qemu_proc.0.stderr.take();

        let (tx, rx) = mpsc::channel::<String>();
        let out_thread = thread::spawn(move || {
            if let Some(out) = stdout {
                let mut reader = BufReader::new(out);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf);
                            let line = line.trim_end_matches(['\n', '\r']).to_string();
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let err_thread = thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut err) = stderr {
                let mut bytes = Vec::new();
                let _ = err.read_to_end(&mut bytes);
                s = String::from_utf8_lossy(&bytes).into_owned();
            }
            s
        });

        let deadline = start + self.timeout;
        let mut parser = ConsoleParser::default();
        let mut timed_out = false;
        loop {
            let now = Instant::now();
            let limit = match parser.result {
                // After the result line QEMU only has to exit.
                Some(_) => deadline.min(now + EXIT_GRACE),
                None => deadline,
            };
            let wait = limit.saturating_duration_since(now);
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    log::trace!("guest: {line}");
                    on_line(&line);
                    parser.feed_line(&line);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    timed_out = parser.result.is_none();
                    // Unblocks the reader: QEMU's stdout closes.
                    let _ = qemu_proc.0.kill();
                    break;
                }
            }
        }
        let pid = qemu_proc.0.id();
        let status = qemu_proc
            .0
            .wait()
            .map_err(|source| GuestError::WaitQemu { pid, source })?;
        // Drain what the reader still holds.
        let _ = out_thread.join();
        for line in rx.try_iter() {
            parser.feed_line(&line);
        }
        let stderr = err_thread.join().unwrap_or_default();
        let duration = start.elapsed();
        if timed_out {
            return Err(GuestError::Timeout {
                timeout: self.timeout,
                console_tail: tail(&parser.lines),
                stderr,
            });
        }
        Ok(GuestOutput {
            console: parser.lines,
            qemu_stderr: stderr,
            result: parser.result,
            kv: parser.kv,
            errors: parser.errors,
            qemu_status: status,
            duration,
        })
    }
}

/// Kills and reaps the child if still owned on drop (error paths).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_kit() -> GuestKit {
        GuestKit {
            dir: PathBuf::from("/kit"),
            kernel: PathBuf::from("/kit/vmlinuz"),
            initrd: PathBuf::from("/kit/initrd.gz"),
            kernel_version: "test".into(),
        }
    }

    #[test]
    fn long_scripts_go_on_a_disk_short_ones_on_the_cmdline() {
        let short = QemuGuest::with_kit(fake_kit()).script("echo hi");
        let (cmdline, disk) = short.cmdline_and_disk().unwrap();
        assert!(cmdline.contains(&format!("vutest.script={}", base64_encode(b"echo hi"))));
        assert!(disk.is_none());

        let long_script = "# padding\n".repeat(300);
        let long = QemuGuest::with_kit(fake_kit()).script(&long_script);
        let (cmdline, disk) = long.cmdline_and_disk().unwrap();
        assert!(cmdline.contains("vutest.disk=vutest-script"), "{cmdline}");
        let disk = disk.unwrap();
        assert_eq!(disk.len() % 4096, 0);
        assert!(disk.starts_with(long_script.as_bytes()));

        let forced = long.script_transport(ScriptTransport::Cmdline);
        assert!(matches!(
            forced.cmdline_and_disk(),
            Err(GuestError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn net_devices_get_vectors_zero_and_distinct_macs() {
        let g = QemuGuest::with_kit(fake_kit())
            .net_vhost_user("/s/n0")
            .blk("/s/b,0")
            .net_vhost_user("/s/n1")
            .blk_queues("/s/mq", 2)
            .net_vhost_user_with(
                "/s/n2",
                &NetDeviceOpts {
                    mac: Some("02:00:00:00:00:01".into()),
                    queue_pairs: Some(2),
                },
            );
        let args = g.qemu_command_args("console=ttyS0", None).join(" ");
        assert!(args.contains("vhost-user-blk-pci,chardev=vu3,num-queues=2"));
        assert!(args.contains("virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,vectors=0"));
        assert!(args.contains("virtio-net-pci,netdev=net2,mac=52:54:00:12:34:57,vectors=0"));
        assert!(args.contains("vhost-user,id=net4,chardev=vu4,queues=2"));
        assert!(args.contains("virtio-net-pci,netdev=net4,mac=02:00:00:00:00:01,mq=on,vectors=0"));
        assert!(args.contains("socket,id=vu1,path=/s/b,,0"));
        assert!(args.contains("vhost-user-blk-pci,chardev=vu1"));
        assert!(args.contains("accel=tcg"));
    }

    #[test]
    fn missing_kit_names_the_file_and_setup() {
        let dir = TempDir::new("vutest-unit").unwrap();
        let msg = GuestKit::at(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("vmlinuz"), "{msg}");
        assert!(msg.contains("scripts/setup.sh"), "{msg}");
    }
}
