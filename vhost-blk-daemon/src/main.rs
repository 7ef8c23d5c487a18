//! `vhost-blk-daemon`: a vhost-user virtio-blk backend over a file or block
//! device. See `--help`, and ARCHITECTURE.md for why it is fast.

use std::process::ExitCode;

use clap::Parser;
use common::daemon::DaemonError;

use vhost_blk_daemon::backend;
use vhost_blk_daemon::cli::Cli;

/// Capabilities for QEMU's vhost-user JSON (docs/interop/vhost-user.json).
const CAPABILITIES: &[&str] = &["read-only", "blk-file"];

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.vhost_user.print_capabilities {
        println!("{}", common::cli::capabilities_json("block", CAPABILITIES));
        return ExitCode::SUCCESS;
    }
    let Some(path) = cli.blk_file.clone() else {
        let usage = "--blk-file PATH is required (the image to serve)";
        return common::daemon::exit(Err(DaemonError::Usage(usage.into())));
    };
    common::logging::init(backend::NAME, cli.vhost_user.log_level);
    common::daemon::exit(backend::run(cli, &path))
}
