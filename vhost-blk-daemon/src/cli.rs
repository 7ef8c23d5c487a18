//! The command line, in QEMU's vhost-user backend conventions.

use std::path::PathBuf;

use clap::Parser;
use common::cli::VhostUserArgs;
use common::sandbox::SandboxMode;
use common::seccomp::SeccompAction;

/// Longest `--serial`: the virtio-blk GET_ID answer is 20 bytes.
pub const SERIAL_MAX: usize = 20;
/// Most request queues.
pub const MAX_QUEUES: u16 = 64;

/// vhost-user virtio-blk backend serving a file or block device.
#[derive(Debug, Parser)]
#[command(name = "vhost-blk-daemon", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub vhost_user: VhostUserArgs,

    /// The image: a regular file or a block device.
    /// Required unless --print-capabilities (checked in `main`, so the
    /// error is one line naming the option).
    #[arg(long, value_name = "PATH")]
    pub blk_file: Option<PathBuf>,

    /// Export read-only: the file is opened O_RDONLY and writes fail.
    #[arg(long)]
    pub read_only: bool,

    /// Number of request queues (1 to 64), one worker thread each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUES as i64))]
    pub num_queues: u16,

    /// Largest queue size the frontend may choose (a power of two, 2 to 32768).
    #[arg(long, default_value_t = 1024, value_parser = common::cli::parse_queue_size)]
    pub queue_size: u16,

    /// Open the image with O_DIRECT (bypass the host page cache).
    #[arg(long)]
    pub direct: bool,

    /// Serial number answered to GET_ID (at most 20 bytes; default: the
    /// image's file name, truncated).
    #[arg(long, value_name = "ID", value_parser = parse_serial)]
    pub serial: Option<String>,

    /// What a system call outside the daemon's allow-list does.
    #[arg(long, value_enum, default_value_t = SeccompAction::Kill)]
    pub seccomp: SeccompAction,

    /// The jail, entered once the image and the socket are open:
    /// `namespace` (new pid, mount, network, IPC and UTS namespaces; an empty
    /// read-only root; no capabilities; a supervising parent removes the
    /// socket file at exit), `chroot` (a private mount namespace with the
    /// same empty root, no pid or network isolation), or `none`.
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    pub sandbox: SandboxMode,

    /// How reads, writes and flushes reach the image: `io_uring` keeps
    /// every request of a queue in the kernel at once (falling back to
    /// `sync`, logged, where the kernel refuses io_uring); `sync` runs them
    /// one at a time per queue with preadv/pwritev; `auto`: `io_uring` with
    /// `--direct`, `sync` on the page cache.
    #[arg(long, value_enum, default_value_t = Aio::Auto, env = "VHOST_BLK_AIO")]
    pub aio: Aio,

    /// Logical block size the guest sees: 512, 1024, 2048 or 4096.
    #[arg(long, default_value_t = 512, value_parser = parse_block_size)]
    pub logical_block_size: u32,
}

/// The I/O engine (`--aio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Aio {
    /// `io_uring` with `--direct` (on real storage it keeps a queue's
    /// requests in the device at once: 4-5x the IOPS of `sync` at queue
    /// depth 32), `sync` on the page cache (where both are as fast and
    /// `sync` spends less per request at queue depth 1).
    Auto,
    /// One io_uring per queue.
    #[value(name = "io_uring")]
    IoUring,
    /// preadv/pwritev on the worker thread.
    Sync,
}

impl Aio {
    /// The engine `Auto` stands for with or without `--direct`.
    pub fn resolve(self, direct: bool) -> Aio {
        match self {
            Aio::Auto if direct => Aio::IoUring,
            Aio::Auto => Aio::Sync,
            other => other,
        }
    }
}

fn parse_serial(s: &str) -> Result<String, String> {
    if s.len() > SERIAL_MAX {
        return Err(format!(
            "{} bytes; at most {SERIAL_MAX} fit in GET_ID",
            s.len()
        ));
    }
    Ok(s.to_string())
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n @ (512 | 1024 | 2048 | 4096)) => Ok(n),
        _ => Err(format!("{s:?} is not one of 512, 1024, 2048, 4096")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vhost-blk-daemon").chain(args.iter().copied()))
    }

    #[test]
    fn auto_aio_is_io_uring_with_direct_and_sync_on_the_page_cache() {
        assert_eq!(Aio::Auto.resolve(true), Aio::IoUring);
        assert_eq!(Aio::Auto.resolve(false), Aio::Sync);
        assert_eq!(Aio::Sync.resolve(true), Aio::Sync);
        assert_eq!(Aio::IoUring.resolve(false), Aio::IoUring);
    }

    #[test]
    fn defaults() {
        let c = parse(&["--socket-path", "/s", "--blk-file", "/f"]).unwrap();
        assert_eq!(
            (c.num_queues, c.queue_size, c.logical_block_size),
            (1, 1024, 512)
        );
        assert!(!c.read_only && !c.direct && c.serial.is_none());
        if std::env::var_os("VHOST_BLK_AIO").is_none() {
            assert_eq!(c.aio, Aio::Auto);
        }
        let c = parse(&["--blk-file", "/f", "--aio", "io_uring"]).unwrap();
        assert_eq!(c.aio, Aio::IoUring);
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &["--blk-file", "/f", "--num-queues", "0"][..],
            &["--blk-file", "/f", "--num-queues", "65"],
            &["--blk-file", "/f", "--queue-size", "100"],
            &["--blk-file", "/f", "--queue-size", "65536"],
            &["--blk-file", "/f", "--logical-block-size", "1000"],
            &["--blk-file", "/f", "--serial", "123456789012345678901"],
            &["--blk-file", "/f", "--socket-path", "/s", "--fd", "3"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn print_capabilities_needs_nothing_else() {
        assert!(
            parse(&["--print-capabilities"])
                .unwrap()
                .vhost_user
                .print_capabilities
        );
    }
}
