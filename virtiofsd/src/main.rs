//! `virtiofsd`: a virtio-fs vhost-user backend on fuse-backend-rs's
//! passthrough filesystem, a drop-in for the command lines Kata Containers
//! and libvirt pass to virtiofsd. Unlike other virtiofsd implementations it
//! serves the next frontend after one disconnects (a guest reboot), unless
//! `--exit-on-disconnect`.

mod backend;
mod cli;
mod dots;
mod fs;
mod pool;
mod request;
mod seccomp_fs;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use common::ratelimit::RateLimited;
use common::signals::Shutdown;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use crate::backend::{Device, FsConnection};
use crate::cli::{Cache, Cli, InodeFileHandles, TAG_MAX};
use crate::fs::Guarded;

const NAME: &str = "virtiofsd";

/// The line Kata Containers waits for on stderr before it starts the VM.
const READY_LINE: &str = "Waiting for vhost-user socket connection...";

/// Request queues offered (QEMU's vhost-user-fs-pci uses 1 by default).
const REQUEST_QUEUES: u16 = 1;
/// Largest queue.
const QUEUE_SIZE: u16 = 1024;
/// Most `--thread-pool-size` threads.
const MAX_POOL: usize = 256;

/// An error for `main`: the message and the exit code.
struct Failure(String, u8);

fn usage(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), 2)
}

fn runtime(msg: impl std::fmt::Display) -> Failure {
    Failure(msg.to_string(), 1)
}

fn passthrough_config(cli: &Cli, root_dir: &str) -> Config {
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

fn run(mut cli: Cli) -> Result<(), Failure> {
    cli.apply_legacy().map_err(|e| usage(e.to_string()))?;
    let Some(shared_dir) = cli.shared_dir.clone() else {
        return Err(usage("--shared-dir DIR (or -o source=DIR) is required"));
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
        common::logging::init_syslog(NAME, cli.vhost_user.log_level).map_err(runtime)?;
    } else {
        common::logging::init(NAME, cli.vhost_user.log_level);
    }
    cli.vhost_user.apply_ring_options();
    let meta = std::fs::metadata(&shared_dir)
        .map_err(|e| runtime(format!("--shared-dir {}: {e}", shared_dir.display())))?;
    if !meta.is_dir() {
        return Err(runtime(format!(
            "--shared-dir {}: not a directory",
            shared_dir.display()
        )));
    }
    use common::sandbox::{self, Capability, SandboxMode};
    use common::seccomp::{self, SeccompAction};
    let mode = match cli.sandbox {
        crate::cli::Sandbox::Namespace => SandboxMode::Namespace,
        crate::cli::Sandbox::Chroot => SandboxMode::Chroot,
        crate::cli::Sandbox::None => SandboxMode::None,
    };
    let action = match cli.seccomp {
        crate::cli::Seccomp::Kill => SeccompAction::Kill,
        crate::cli::Seccomp::Log => SeccompAction::Log,
        crate::cli::Seccomp::Trap => SeccompAction::Trap,
        crate::cli::Seccomp::None => SeccompAction::None,
    };
    common::systemd::connect();
    // Before forking: the sandboxed child (PID 1) inherits the handler.
    let shutdown = Shutdown::install().map_err(runtime)?;
    // Before forking: socket activation names this process's pid.
    let mut socket = cli.vhost_user.socket_source().listen().map_err(runtime)?;
    sandbox::enter_namespaces(mode).map_err(runtime)?;
    sandbox::raise_nofile_limit(cli.rlimit_nofile).map_err(runtime)?;
    // How the root is built. fuse-backend-rs reaches extended attributes
    // through /proc/self/fd, which a chroot hides: with --xattr, chroot
    // mode gets the namespace mode's root (the share plus a read-only
    // /proc) in a private mount namespace, when the process may make one.
    let root_mode = if mode == SandboxMode::Chroot && cli.xattr {
        // SAFETY: unshare(CLONE_NEWNS) only changes this process's mount
        // namespace; nothing is passed by pointer.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(runtime(format!(
                "--sandbox chroot with --xattr needs a private mount namespace for /proc \
                 (fuse-backend-rs reaches extended attributes through /proc/self/fd): {}",
                std::io::Error::last_os_error()
            )));
        }
        SandboxMode::Namespace
    } else {
        mode
    };
    sandbox::prepare_root(root_mode, &shared_dir).map_err(runtime)?;
    let root = sandbox::root_after(root_mode, &shared_dir)
        .to_string_lossy()
        .into_owned();
    let new_fs = || {
        PassthroughFs::<()>::new(passthrough_config(&cli, &root))
            .map_err(|e| runtime(format!("cannot set up the passthrough filesystem: {e}")))
    };
    // chroot: /proc is out of reach after pivot.
    let early = if root_mode == SandboxMode::Chroot {
        Some(new_fs()?)
    } else {
        None
    };
    sandbox::pivot(root_mode, &shared_dir).map_err(runtime)?;
    let fs = match early {
        Some(fs) => fs,
        None => new_fs()?,
    };
    fs.import()
        .map_err(|e| runtime(format!("--shared-dir {}: {e}", shared_dir.display())))?;
    sandbox::drop_supplementary_groups().map_err(runtime)?;
    sandbox::limit_capabilities(&[
        Capability::CAP_CHOWN,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_DAC_READ_SEARCH,
        Capability::CAP_FOWNER,
        Capability::CAP_FSETID,
        Capability::CAP_SETGID,
        Capability::CAP_SETUID,
        Capability::CAP_MKNOD,
        Capability::CAP_SETFCAP,
    ])
    .map_err(runtime)?;
    let mut allowed = seccomp::VHOST_USER_BASE.to_vec();
    allowed.extend_from_slice(seccomp_fs::VIRTIOFSD);
    seccomp::apply(action, &allowed, seccomp::VHOST_USER_IOCTLS).map_err(runtime)?;
    let fs = Arc::new(
        Guarded::new(fs, cli.readonly, cli.announce_submounts, cli.writeback)
            .with_posix_acl(cli.posix_acl),
    );
    let mut tag = [0u8; TAG_MAX];
    tag[..cli.tag.len()].copy_from_slice(cli.tag.as_bytes());
    let device = Arc::new(Device {
        server: Server::new(fs.clone()),
        fs,
        tag,
        request_queues: REQUEST_QUEUES,
        queue_size: QUEUE_SIZE,
        pool_size: cli.thread_pool_size,
        malformed: RateLimited::default(),
        refused: RateLimited::default(),
    });
    log::info!(
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
    );
    eprintln!("{READY_LINE}");
    let exit_on_disconnect = cli.exit_on_disconnect;
    common::serve::serve(
        NAME,
        &mut socket,
        &shutdown,
        || FsConnection::new(device.clone()).map(Arc::new),
        || {
            device.reset();
            !exit_on_disconnect
        },
    )
    .map_err(runtime)?;
    drop(socket);
    log::info!("stopped ({} malformed requests)", device.malformed.count());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.vhost_user.print_capabilities {
        println!(
            "{}",
            common::cli::capabilities_json("fs", &["separate-options"])
        );
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}
