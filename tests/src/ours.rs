//! Launchers for the project's own daemons, built into the same `target/`
//! directory as the test binaries (`scripts/test.sh` runs
//! `cargo build --workspace --bins` first).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixture::{
    create_sparse_image, Daemon, FixtureError, QsdOpts, Readiness, Result, TempDir,
    DEFAULT_READY_TIMEOUT,
};
use crate::netns::NetNs;
use crate::process::{run_bounded, without_systemd_env, Finished};

/// The path of one of the workspace's binaries (`vhost-blk-daemon`, ...),
/// next to the running test executable's profile directory
/// (`target/<profile>/`). A missing binary is an error naming the command
/// that builds it; a test never skips because of it.
pub fn project_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test>-<hash> or target/<profile>/<bin>
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(profile) = dir.parent() {
                dirs.push(profile.to_path_buf());
            }
        }
        dirs.push(dir.to_path_buf());
    }
    for dir in &dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(FixtureError::MissingBinary {
        name: name.to_string(),
        looked: format!(
            "{} (build it with `cargo build --workspace --bins`)",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// One of our binaries as a command with no arguments and systemd's
/// variables removed from its environment (see [`without_systemd_env`]).
pub fn bare_command(name: &str) -> Result<Command> {
    let mut cmd = Command::new(project_binary(name)?);
    without_systemd_env(&mut cmd);
    Ok(cmd)
}

/// Runs our binary `name` with `args` until it exits (killed after
/// `timeout`), for command-line tests.
pub fn run_to_exit<I, S>(name: &str, args: I, timeout: std::time::Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    let mut cmd = bare_command(name).unwrap_or_else(|e| panic!("{e}"));
    cmd.args(args.into_iter().map(Into::into));
    run_bounded(&mut cmd, timeout).unwrap_or_else(|e| panic!("running {name}: {e}"))
}

/// Options of [`vhost_blk_daemon`]; each maps to the command-line option of
/// the same name.
#[derive(Debug, Clone, Default)]
pub struct BlkDaemonOpts {
    /// `--num-queues` (None: the daemon's default, 1).
    pub num_queues: Option<u16>,
    /// `--queue-size`.
    pub queue_size: Option<u16>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--direct`.
    pub direct: bool,
    /// `--serial`.
    pub serial: Option<String>,
    /// `--logical-block-size`.
    pub logical_block_size: Option<u32>,
    /// Further arguments, appended as given.
    pub extra_args: Vec<String>,
}

/// The `vhost-blk-daemon` command line for `image` on `socket` (not spawned),
/// for tests that need to add environment or wrap it.
pub fn vhost_blk_daemon_command(
    image: &Path,
    socket: &Path,
    opts: &BlkDaemonOpts,
) -> Result<Command> {
    let mut cmd = Command::new(project_binary("vhost-blk-daemon")?);
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--blk-file")
        .arg(image);
    if let Some(n) = opts.num_queues {
        cmd.arg("--num-queues").arg(n.to_string());
    }
    if let Some(n) = opts.queue_size {
        cmd.arg("--queue-size").arg(n.to_string());
    }
    if opts.read_only {
        cmd.arg("--read-only");
    }
    if opts.direct {
        cmd.arg("--direct");
    }
    if let Some(s) = &opts.serial {
        cmd.arg("--serial").arg(s);
    }
    if let Some(n) = opts.logical_block_size {
        cmd.arg("--logical-block-size").arg(n.to_string());
    }
    cmd.args(&opts.extra_args);
    Ok(cmd)
}

/// Spawns our `vhost-blk-daemon` serving `image` on `socket`; ready when the
/// socket exists (it is bound and listening in one step).
pub fn vhost_blk_daemon(image: &Path, socket: &Path, opts: &BlkDaemonOpts) -> Result<Daemon> {
    let cmd = vhost_blk_daemon_command(image, socket, opts)?;
    Daemon::spawn(
        "vhost-blk-daemon",
        cmd,
        socket,
        &[Readiness::Path(socket.to_path_buf())],
        DEFAULT_READY_TIMEOUT,
    )
}

/// Whether the environment variable `var` asks for the reference backend
/// `reference` (one nobody here wrote, to tell a broken test from a broken
/// daemon) rather than ours (`ours`, the default); panics naming any other
/// value.
pub fn reference_backend(var: &str, reference: &str) -> bool {
    match std::env::var(var).as_deref() {
        Ok("ours") | Err(_) => false,
        Ok(v) if v == reference => true,
        Ok(other) => panic!("{var}={other}: expected `ours` or `{reference}`"),
    }
}

/// The variable that picks the blk backend of [`serve_blk`]: `ours`
/// (the default) or `qsd` (qemu-storage-daemon).
pub const BLK_BACKEND_ENV: &str = "VUTEST_BLK_BACKEND";

/// `image` served on `socket` by the backend [`BLK_BACKEND_ENV`] names:
/// our `vhost-blk-daemon` with `num_queues` request queues (None: its
/// default), or qemu-storage-daemon with as many (None: 1).
pub fn serve_blk(
    image: &Path,
    socket: &Path,
    num_queues: Option<u16>,
    read_only: bool,
) -> Result<Daemon> {
    if reference_backend(BLK_BACKEND_ENV, "qsd") {
        let opts = QsdOpts {
            num_queues: num_queues.unwrap_or(1),
            read_only,
            ..QsdOpts::default()
        };
        Daemon::qemu_storage_daemon_blk(image, socket, &opts)
    } else {
        let opts = BlkDaemonOpts {
            num_queues,
            read_only,
            ..BlkDaemonOpts::default()
        };
        vhost_blk_daemon(image, socket, &opts)
    }
}

/// A sparse image in a temporary directory, prepared by the host and
/// served by [`serve_blk`]'s backend; removed on drop.
pub struct ServedImage {
    _dir: TempDir,
    /// The image file.
    pub image: PathBuf,
    /// The backend's socket.
    pub socket: PathBuf,
    /// The backend.
    pub daemon: Daemon,
}

impl ServedImage {
    /// A sparse image of `size` bytes in a fresh `<tmp>/<prefix>...`,
    /// `prepare`d by the host, then served on a socket with `num_queues`
    /// request queues (see [`serve_blk`]).
    pub fn new(
        prefix: &str,
        size: u64,
        num_queues: Option<u16>,
        read_only: bool,
        prepare: impl FnOnce(&Path),
    ) -> ServedImage {
        let dir = TempDir::new(prefix).unwrap();
        let image = dir.join("disk.img");
        create_sparse_image(&image, size).unwrap();
        prepare(&image);
        let socket = dir.join("blk.sock");
        let daemon =
            serve_blk(&image, &socket, num_queues, read_only).unwrap_or_else(|e| panic!("{e}"));
        ServedImage {
            _dir: dir,
            image,
            socket,
            daemon,
        }
    }
}

/// The `virtiofsd` command line sharing `shared_dir` on `socket`
/// (`--socket-path`, `--shared-dir`, then `extra_args` as given), not
/// spawned, for tests that need to change its environment or limits.
/// systemd's variables are removed from its environment (see
/// [`without_systemd_env`]).
pub fn virtiofsd_command(shared_dir: &Path, socket: &Path, extra_args: &[&str]) -> Result<Command> {
    let mut cmd = bare_command("virtiofsd")?;
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(shared_dir)
        .args(extra_args);
    Ok(cmd)
}

/// Spawns a `virtiofsd` command built by [`virtiofsd_command`] (perhaps
/// changed since); ready when its log shows
/// [`VIRTIOFSD_READY_LINE`](crate::fixture::VIRTIOFSD_READY_LINE) and
/// `socket` exists.
pub fn spawn_virtiofsd(cmd: Command, socket: &Path) -> Result<Daemon> {
    Daemon::spawn_virtiofsd("virtiofsd", cmd, socket)
}

/// Spawns our `virtiofsd` sharing `shared_dir` on `socket` with
/// `extra_args` (`--cache`, `--sandbox`, ...); see [`spawn_virtiofsd`] for
/// when it counts as ready.
pub fn virtiofsd(shared_dir: &Path, socket: &Path, extra_args: &[&str]) -> Result<Daemon> {
    spawn_virtiofsd(virtiofsd_command(shared_dir, socket, extra_args)?, socket)
}

/// A directory shared by our `virtiofsd`: [`virtiofsd_share`].
#[derive(Debug)]
pub struct Share {
    /// The shared directory, `DIR/share`.
    pub path: PathBuf,
    /// Its vhost-user socket, `DIR/fs.sock`.
    pub socket: PathBuf,
    /// The daemon serving it.
    pub daemon: Daemon,
}

/// Creates `dir/share` and spawns our `virtiofsd` sharing it on
/// `dir/fs.sock` under `tag` (see [`virtiofsd`]).
pub fn virtiofsd_share(dir: &Path, tag: &str) -> Result<Share> {
    let path = dir.join("share");
    std::fs::create_dir_all(&path).map_err(|source| FixtureError::CreateTempDir {
        path: path.clone(),
        source,
    })?;
    let socket = dir.join("fs.sock");
    let daemon = virtiofsd(&path, &socket, &["--tag", tag])?;
    Ok(Share {
        path,
        socket,
        daemon,
    })
}

/// `vhost-net-daemon` run inside `ns` (`ip netns exec`, which execs it
/// under its own pid) with no arguments yet and systemd's variables
/// removed from its environment; not spawned.
pub fn vhost_net_daemon_in(ns: &NetNs) -> Result<Command> {
    let mut cmd = ns.command(&project_binary("vhost-net-daemon")?);
    without_systemd_env(&mut cmd);
    Ok(cmd)
}

/// The `vhost-net-daemon` command serving on `socket` with `args`
/// (`--tap NAME`, ...), run inside `ns` (`ip netns exec`), not spawned.
/// systemd's variables are removed from its environment.
pub fn vhost_net_daemon_command(ns: &NetNs, socket: &Path, args: &[&str]) -> Result<Command> {
    let mut cmd = vhost_net_daemon_in(ns)?;
    cmd.arg("--socket-path").arg(socket).args(args);
    Ok(cmd)
}

/// Spawns `vhost-net-daemon` in `ns` serving on `socket` with `args`;
/// ready when the socket exists.
pub fn vhost_net_daemon(ns: &NetNs, socket: &Path, args: &[&str]) -> Result<Daemon> {
    Daemon::spawn(
        "vhost-net-daemon",
        vhost_net_daemon_command(ns, socket, args)?,
        socket,
        &[Readiness::Path(socket.to_path_buf())],
        DEFAULT_READY_TIMEOUT,
    )
}
