//! From the command line to a confined process serving the share: the
//! checks, logging, and the sandbox in the order it needs (listen before
//! the namespace sandbox forks, so socket activation's LISTEN_PID
//! matches; `common::daemon::run` binds the socket before it calls
//! [`confine`]): namespaces, the open-file limit, the root (the share at
//! `/share` beside a read-only `/proc`, or a chroot), the passthrough,
//! groups and capabilities; seccomp follows in `common::daemon::run`.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use common::daemon::{BoxError, DaemonError, Relay, Spec};
use common::ratelimit::RateLimited;
use common::sandbox::{self, Capability, SandboxMode};
use common::seccomp::SeccompAction;
use common::socket::BoundSocket;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use crate::backend::Share;
use crate::cli::{Cache, Cli, InodeFileHandles, TAG_MAX};
use crate::fs::Guarded;
use crate::persist::Persist;
use crate::seccomp_fs;
use crate::state::{StateFile, Table};

/// The program name.
pub const NAME: &str = "virtiofsd";

/// Request queues offered (QEMU's vhost-user-fs-pci uses 1 by default).
const REQUEST_QUEUES: u16 = 1;
/// Largest queue.
const QUEUE_SIZE: u16 = 1024;
/// Most `--thread-pool-size` threads.
const MAX_POOL: usize = 256;

/// The capabilities the passthrough keeps (it switches to the guest's
/// uid and gid per request, and creates what the guest asks).
const KEEP_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_MKNOD,
    Capability::CAP_SETFCAP,
];

/// The passthrough's configuration for `cli`, serving `root_dir` (also what
/// the `fs_request` fuzz target serves).
pub fn passthrough_config(cli: &Cli, root_dir: &str) -> Config {
    let (policy, timeout) = match cli.cache {
        Cache::Never => (CachePolicy::Never, 0),
        Cache::Metadata => (CachePolicy::Metadata, 86400),
        Cache::Auto => (CachePolicy::Auto, 1),
        Cache::Always => (CachePolicy::Always, 86400),
    };
    Config {
        attr_timeout: std::time::Duration::from_secs(timeout),
        entry_timeout: std::time::Duration::from_secs(timeout),
        cache_policy: policy,
        writeback: cli.writeback,
        root_dir: root_dir.to_string(),
        xattr: cli.xattr,
        // (true also makes the passthrough validate names)
        do_import: true,
        inode_file_handles: cli.inode_file_handles != InodeFileHandles::Never,
        allow_direct_io: cli.allow_direct_io,
        // Host inode numbers (with a per-filesystem prefix): the default
        // keeps a mapping for every file ever looked up, forever.
        use_host_ino: true,
        ..Config::default()
    }
}

/// Checks the command line, sets up logging and serves the share.
pub fn run(mut cli: Cli) -> Result<(), DaemonError> {
    let usage = DaemonError::Usage;
    cli.apply_legacy().map_err(|e| usage(e.to_string()))?;
    let Some(shared_dir) = cli.shared_dir.clone() else {
        return Err(usage(
            "--shared-dir DIR (or -o source=DIR) is required".into(),
        ));
    };
    if cli.posix_acl && !cli.xattr {
        // As the Rust virtiofsd: ACLs live in xattrs.
        cli.xattr = true;
    }
    if cli.thread_pool_size > MAX_POOL {
        return Err(usage(format!(
            "--thread-pool-size {}: at most {MAX_POOL}",
            cli.thread_pool_size
        )));
    }
    if cli.syslog {
        common::logging::init_syslog(NAME, cli.vhost_user.log_level);
    } else {
        common::logging::init(NAME, cli.vhost_user.log_level);
    }
    let meta = std::fs::metadata(&shared_dir)
        .map_err(|e| DaemonError::setup(format!("--shared-dir {}: {e}", shared_dir.display())))?;
    if !meta.is_dir() {
        let e = format!("--shared-dir {}: not a directory", shared_dir.display());
        return Err(DaemonError::setup(e));
    }
    let seccomp = match cli.seccomp {
        crate::cli::Seccomp::Kill => SeccompAction::Kill,
        crate::cli::Seccomp::Log => SeccompAction::Log,
        crate::cli::Seccomp::Trap => SeccompAction::Trap,
        crate::cli::Seccomp::None => SeccompAction::None,
    };
    let spec = Spec {
        name: NAME,
        vhost_user: &cli.vhost_user,
        seccomp,
        syscalls: seccomp_fs::VIRTIOFSD,
        ioctls: &[],
        relay: Relay::for_sandbox(cli.sandbox.mode()),
        // The passthrough opens files for the guest.
        no_files: false,
    };
    common::daemon::run(spec, |socket| confine(&cli, &shared_dir, socket))
}

/// Enters the sandbox and opens the share in it. Nothing that reaches
/// outside the sandbox stays open in it: the socket file's removal (a
/// descriptor of its host directory) goes to the namespace sandbox's
/// supervising parent (which serves nothing), files and directories
/// inherited from whoever started the daemon are closed, and a chroot
/// gets a private mount namespace with `/proc` inside its root where it
/// can.
fn confine(cli: &Cli, shared_dir: &Path, socket: &mut BoundSocket) -> Result<Share, BoxError> {
    let mode = cli.sandbox.mode();
    // A regular file: its descriptor reaches nothing else outside the jail.
    let state = cli.state_file.as_deref().map(open_state).transpose()?;
    let keep: Vec<i32> = state.iter().map(|f| f.as_raw_fd()).collect();
    sandbox::enter_jail(mode, socket, &keep)?;
    sandbox::raise_nofile_limit(cli.rlimit_nofile)?;
    // How the root is built. fuse-backend-rs needs /proc/self/fd (to reopen
    // O_PATH inodes, and for their extended attributes) and
    // /proc/self/mountinfo; in a plain chroot it keeps descriptors of the
    // host's /proc, from which `..` leads out to the host's root. So chroot
    // mode gets the namespace mode's root (the share plus a read-only
    // /proc) in a private mount namespace when the process may make one;
    // --xattr needs it (the extended-attribute calls use absolute
    // /proc/self/fd paths), otherwise a plain chroot is the fallback.
    let root_mode = if mode == SandboxMode::Chroot {
        match sandbox::unshare_mount_namespace() {
            Ok(()) => SandboxMode::Namespace,
            Err(e) if cli.xattr => {
                return Err(format!(
                    "--sandbox chroot with --xattr needs a private mount namespace for /proc \
                     (fuse-backend-rs reaches extended attributes through /proc/self/fd): {e}"
                )
                .into())
            }
            Err(e) => {
                log::warn!(
                    "--sandbox chroot: no private mount namespace for /proc ({e}); the \
                     descriptors of /proc/self/fd and /proc/self/mountinfo the passthrough \
                     needs stay open outside the chroot"
                );
                SandboxMode::Chroot
            }
        }
    } else {
        mode
    };
    sandbox::prepare_root(root_mode, shared_dir)?;
    let root = sandbox::root_after(root_mode, shared_dir)
        .to_string_lossy()
        .into_owned();
    let new_fs = || {
        PassthroughFs::<()>::new(passthrough_config(cli, &root))
            .map_err(|e| format!("cannot set up the passthrough filesystem: {e}"))
    };
    // chroot: /proc is out of reach after pivot.
    let early = if root_mode == SandboxMode::Chroot {
        Some(new_fs()?)
    } else {
        None
    };
    sandbox::pivot(root_mode, shared_dir)?;
    let fs = match early {
        Some(fs) => fs,
        None => new_fs()?,
    };
    fs.import()
        .map_err(|e| format!("--shared-dir {}: {e}", shared_dir.display()))?;
    sandbox::drop_supplementary_groups()?;
    sandbox::limit_capabilities(KEEP_CAPS)?;
    let fs = match state {
        None => Persist::new(fs),
        Some(file) => {
            let path = cli.state_file.as_deref().unwrap_or(Path::new(""));
            let (file, table) = match StateFile::load(file.try_clone()?) {
                Ok(v) => v,
                Err(e) => {
                    // Nothing to resume: the guest's next request gets EIO
                    // (no INIT), as without the file.
                    log::warn!("--state-file {}: {e}; starting afresh", path.display());
                    (StateFile::load_empty(file)?, Table::new())
                }
            };
            Persist::resume(fs, file, table)
                .map_err(|e| format!("--state-file {}: resuming INIT: {e}", path.display()))?
        }
    };
    Ok(share_over(fs, cli, serving_line(cli, shared_dir)))
}

/// The share `cli` describes over the session layer `fs` (the fuzz
/// targets build theirs the same way, without the jail), logging `serving`
/// once it serves.
pub fn share_over(fs: Persist<PassthroughFs<()>>, cli: &Cli, serving: String) -> Share {
    let fs = Arc::new(
        Guarded::new(fs, cli.readonly, cli.announce_submounts, cli.writeback)
            .with_posix_acl(cli.posix_acl),
    );
    let mut tag = [0u8; TAG_MAX];
    tag[..cli.tag.len()].copy_from_slice(cli.tag.as_bytes());
    Share {
        server: Server::new(fs.clone()),
        fs,
        tag,
        request_queues: REQUEST_QUEUES,
        queue_size: QUEUE_SIZE,
        pool_size: cli.thread_pool_size,
        malformed: RateLimited::default(),
        refused: RateLimited::default(),
        serving,
        exit_on_disconnect: cli.exit_on_disconnect,
    }
}

/// Opens (creates) the state file, read-write, for the owner only.
fn open_state(path: &Path) -> Result<std::fs::File, BoxError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("--state-file {}: {e}", path.display()).into())
}

/// What is shared and how, for the log.
fn serving_line(cli: &Cli, shared_dir: &Path) -> String {
    format!(
        "sharing {} as tag {:?} (cache {:?}{}{}{}{})",
        shared_dir.display(),
        cli.tag,
        cli.cache,
        if cli.readonly { ", read-only" } else { "" },
        if cli.xattr { ", xattr" } else { "" },
        if cli.announce_submounts {
            ", submounts"
        } else {
            ""
        },
        if cli.thread_pool_size > 1 {
            format!(", {} pool threads", cli.thread_pool_size)
        } else {
            String::new()
        },
    )
}
