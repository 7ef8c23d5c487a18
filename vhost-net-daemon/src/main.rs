//! `vhost-net-daemon`: a vhost-user virtio-net backend over a tap device.
//! See `--help`, and ARCHITECTURE.md for the data path.

use std::process::ExitCode;

use clap::Parser;
use common::daemon::DaemonError;

use vhost_net_daemon::backend;
use vhost_net_daemon::cli::Cli;

/// Capabilities for QEMU's vhost-user JSON (docs/interop/vhost-user.json).
const CAPABILITIES: &[&str] = &[];

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.vhost_user.print_capabilities {
        println!("{}", common::cli::capabilities_json("net", CAPABILITIES));
        return ExitCode::SUCCESS;
    }
    let pairs = match cli.pairs() {
        Ok(p) => p,
        Err(e) => return common::daemon::exit(Err(DaemonError::Usage(e))),
    };
    common::logging::init(backend::NAME, cli.vhost_user.log_level);
    common::daemon::exit(backend::run(cli, pairs))
}
