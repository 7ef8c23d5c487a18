//! `virtiofsd`: a virtio-fs vhost-user backend on fuse-backend-rs's
//! passthrough filesystem, a drop-in for the command lines Kata Containers
//! and libvirt pass to virtiofsd. Unlike other virtiofsd implementations it
//! serves the next frontend after one disconnects (a guest reboot), unless
//! `--exit-on-disconnect`.

use std::process::ExitCode;

use clap::Parser;

use virtiofsd::cli::Cli;
use virtiofsd::setup;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.vhost_user.print_capabilities {
        println!(
            "{}",
            common::cli::capabilities_json("fs", &["separate-options"])
        );
        return ExitCode::SUCCESS;
    }
    common::daemon::exit(setup::run(cli))
}
