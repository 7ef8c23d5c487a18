//! `vhost-net-daemon`: a vhost-user virtio-net backend over a tap device.
//! See `--help`, and ARCHITECTURE.md for the data path.

mod backend;
mod cli;
mod config;
mod ctrl;
mod rx;
mod tap;
mod tx;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::Parser;
use common::ratelimit::RateLimited;
use common::relay::RelayDir;
use common::signals::Shutdown;

use crate::backend::{Device, NetConnection, Stats};
use crate::cli::{format_mac, random_mac, Cli};
use crate::config::NetConfig;
use crate::tap::{offload, Tap};

const NAME: &str = "vhost-net-daemon";

/// System calls beyond `common::seccomp::VHOST_USER_BASE`: the relay makes
/// one unix socket per connection in a directory of its own.
const SECCOMP_NET: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    // Removing the relay's directory on exit.
    libc::SYS_rmdir,
];

/// tap ioctls the data path and the control queue use.
const TAP_IOCTLS: &[u64] = &[
    0x4004_54d0, /* TUNSETOFFLOAD */
    0x4004_54d9, /* TUNSETQUEUE */
];

/// Capabilities for QEMU's vhost-user JSON (docs/interop/vhost-user.json).
const CAPABILITIES: &[&str] = &[];

fn open_tap(cli: &Cli, pairs: u16) -> Result<Tap, String> {
    let tap = match &cli.tap {
        Some(name) => Tap::open(name, usize::from(pairs), cli.create),
        None => Tap::from_fds(&cli.tap_fd),
    }
    .map_err(|e| e.to_string())?;
    if let Some(mtu) = cli.mtu {
        if let Err(e) = tap.set_mtu(mtu) {
            log::warn!("{e}; the guest is told MTU {mtu} anyway");
        }
    }
    if tap.created() {
        tap.set_up().map_err(|e| e.to_string())?;
    }
    Ok(tap)
}

fn run(cli: Cli, pairs: u16) -> Result<(), String> {
    let shutdown = Shutdown::install().map_err(|e| e.to_string())?;
    let tap = open_tap(&cli, pairs)?;
    let tap_offloads =
        tap.probe_offloads(offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN);
    let mut socket = cli
        .vhost_user
        .socket_source()
        .listen()
        .map_err(|e| e.to_string())?;
    let relay_parent = std::env::var_os("RUNTIME_DIRECTORY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let relay_dir = RelayDir::create(&relay_parent).map_err(|e| e.to_string())?;
    common::systemd::connect();
    let mut allowed = common::seccomp::VHOST_USER_BASE.to_vec();
    allowed.extend_from_slice(SECCOMP_NET);
    let mut ioctls = common::seccomp::VHOST_USER_IOCTLS.to_vec();
    ioctls.extend_from_slice(TAP_IOCTLS);
    common::seccomp::apply(cli.seccomp, &allowed, &ioctls).map_err(|e| e.to_string())?;

    let config = NetConfig {
        mac: cli.mac.unwrap_or_else(random_mac),
        pairs,
        queue_size: cli.queue_size,
        mtu: cli.mtu,
        tap_offloads,
    };
    log::info!(
        "serving tap {}{} to MAC {}, {} queue pair(s) of up to {}{}, guest offloads {:#x}",
        tap.name(),
        if tap.created() { " (created)" } else { "" },
        format_mac(&config.mac),
        pairs,
        cli.queue_size,
        cli.mtu.map(|m| format!(", MTU {m}")).unwrap_or_default(),
        tap_offloads
    );
    let device = Arc::new(Device {
        config,
        tap,
        stats: Stats::default(),
        malformed: RateLimited::default(),
        tap_errors: RateLimited::default(),
    });
    common::serve::serve_relayed(
        NAME,
        &mut socket,
        &shutdown,
        &relay_dir,
        || Ok::<_, std::convert::Infallible>(Arc::new(NetConnection::new(device.clone()))),
        || true,
    )
    .map_err(|e| e.to_string())?;
    drop(socket); // removes the socket file we created
    let s = &device.stats;
    log::info!(
        "stopped (TX {} frames, {} malformed, {} refused by the tap; RX {} frames, {} dropped, {} bad buffers)",
        s.tx_frames.load(Ordering::Relaxed),
        s.tx_malformed.load(Ordering::Relaxed),
        s.tx_errors.load(Ordering::Relaxed),
        s.rx_frames.load(Ordering::Relaxed),
        s.rx_dropped.load(Ordering::Relaxed),
        s.rx_malformed.load(Ordering::Relaxed),
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.vhost_user.print_capabilities {
        println!("{}", common::cli::capabilities_json("net", CAPABILITIES));
        return ExitCode::SUCCESS;
    }
    let pairs = match cli.pairs() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    common::logging::init(NAME, cli.vhost_user.log_level);
    cli.vhost_user.apply_ring_options();
    match run(cli, pairs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
