//! `vhost-blk-daemon`: a vhost-user virtio-blk backend over a file or block
//! device. See `--help`, and ARCHITECTURE.md for why it is fast.

mod backend;
mod cli;
mod config;
mod disk;
mod request;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use common::ratelimit::RateLimited;
use common::signals::Shutdown;

use crate::backend::{BlkConnection, Device};
use crate::cli::{Cli, SERIAL_MAX};
use crate::config::DeviceConfig;
use crate::disk::Disk;

const NAME: &str = "vhost-blk-daemon";

/// System calls the data path needs beyond `common::seccomp::VHOST_USER_BASE`.
const SECCOMP_BLK: &[i64] = &[
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
];

/// Capabilities for QEMU's vhost-user JSON (docs/interop/vhost-user.json).
const CAPABILITIES: &[&str] = &["read-only", "blk-file"];

fn default_serial(cli: &Cli, disk: &Disk) -> [u8; SERIAL_MAX] {
    let mut id = [0u8; SERIAL_MAX];
    let name = match &cli.serial {
        Some(s) => s.as_bytes().to_vec(),
        None => disk
            .path()
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .unwrap_or_default(),
    };
    let n = name.len().min(SERIAL_MAX);
    id[..n].copy_from_slice(&name[..n]);
    id
}

fn run(cli: Cli, path: &std::path::Path) -> Result<(), String> {
    let shutdown = Shutdown::install().map_err(|e| e.to_string())?;
    let disk = Disk::open(path, cli.read_only, cli.direct).map_err(|e| e.to_string())?;
    let mut socket = cli
        .vhost_user
        .socket_source()
        .listen()
        .map_err(|e| e.to_string())?;
    // Everything that opens a socket or file is done; from here on the
    // process only serves requests, under an allow-list.
    common::systemd::connect();
    let mut allowed = common::seccomp::VHOST_USER_BASE.to_vec();
    allowed.extend_from_slice(SECCOMP_BLK);
    let mut ioctls = common::seccomp::VHOST_USER_IOCTLS.to_vec();
    ioctls.extend_from_slice(&[disk::BLKDISCARD, disk::BLKZEROOUT]);
    common::seccomp::apply(cli.seccomp, &allowed, &ioctls).map_err(|e| e.to_string())?;
    let config = DeviceConfig::new(
        disk.size(),
        cli.logical_block_size,
        cli.num_queues,
        cli.queue_size,
        cli.read_only,
    );
    if config.capacity == 0 {
        log::warn!(
            "--blk-file {} holds no whole {}-byte block; the guest sees an empty disk",
            path.display(),
            cli.logical_block_size
        );
    }
    log::info!(
        "serving {} ({:?}, {} bytes, {} sectors{}{}), {} queue(s) of up to {}",
        path.display(),
        disk.kind(),
        disk.size(),
        config.capacity,
        if disk.read_only() { ", read-only" } else { "" },
        if cli.direct { ", O_DIRECT" } else { "" },
        cli.num_queues,
        cli.queue_size
    );
    let device = Arc::new(Device {
        serial: default_serial(&cli, &disk),
        disk,
        config,
        malformed: RateLimited::default(),
        io_errors: RateLimited::default(),
    });
    common::serve::serve(
        NAME,
        &mut socket,
        &shutdown,
        || Ok::<_, std::convert::Infallible>(Arc::new(BlkConnection::new(device.clone()))),
        || true,
    )
    .map_err(|e| e.to_string())?;
    if let Err(e) = device.disk.flush() {
        log::error!(
            "flushing {} on exit failed: {e}",
            device.disk.path().display()
        );
    }
    drop(socket); // removes the socket file we created
    log::info!(
        "stopped ({} malformed requests, {} host I/O errors)",
        device.malformed.count(),
        device.io_errors.count()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.vhost_user.print_capabilities {
        println!("{}", common::cli::capabilities_json("block", CAPABILITIES));
        return ExitCode::SUCCESS;
    }
    let Some(path) = cli.blk_file.clone() else {
        eprintln!("error: --blk-file PATH is required (the image to serve)");
        return ExitCode::from(2);
    };
    common::logging::init(NAME, cli.vhost_user.log_level);
    cli.vhost_user.apply_ring_options();
    match run(cli, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
