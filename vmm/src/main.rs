//! `vmm [--kernel PATH [--initramfs PATH] [--cmdline ..] [--cpus boot=N]
//! [--memory size=..[,file=..]] [--memory-zone id=..,size=..]... [--numa ..]... [--serial ..] [--disk socket=..]...
//! [--fs tag=..,socket=..]... [--net socket=..]...] [--api-socket PATH]
//! [--log-level ..] [-v]... [--log-file PATH] [--seccomp true|false|log] [--no-reboot] [--pidfile PATH]`
//!
//! With `--kernel` the VM is created and booted at once; without it (then
//! `--api-socket` is required) the VMM starts empty and waits for
//! `vm.create` and `vm.boot`, as Cloud Hypervisor does.
//!
//! Exits 0 when the guest powers off, or resets with `--no-reboot` (with
//! `--api-socket`: on `vmm.shutdown`); a guest reset otherwise reboots; 1 with one `error:` line when the VM given on the
//! command line cannot be built, the API socket cannot be bound, the log
//! or pid file cannot be opened (or the pid file is locked), or a vCPU
//! fails; 2 on a bad command line.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vmm::api;
use vmm::cli::Args;
use vmm::config;
use vmm::lifecycle::{Runner, Vmm};
use vmm::seccomp;
use vmm::vm::{exit_name, VmError, VmExit};

fn main() -> ExitCode {
    let start = Instant::now();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph, on one line (no usage, no hints).
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", first.join(" "));
            return ExitCode::from(2);
        }
    };
    // The options checked together (zones, NUMA nodes, the host's nodes,
    // read here before the seccomp filter).
    let plan = match config::from_cli(&args, vmm::numa::HostNuma::get()) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut logger = env_logger::Builder::new();
    logger.filter_level(args.log_filter()).format_target(false);
    if let Some(path) = &args.log_file {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => {
                logger.target(env_logger::Target::Pipe(Box::new(file)));
            }
            Err(e) => {
                eprintln!("error: log file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    logger.init();

    // Held until main returns: removed on every exit but a crash.
    let _pidfile = match args.pidfile.as_deref().map(vmm::pidfile::PidFile::create) {
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        pidfile => pidfile,
    };
    // Bound before anything else, so a socket in use fails fast.
    let api = match args.api_socket.as_deref().map(api::bind).transpose() {
        Ok(api) => api,
        Err(e) => {
            eprintln!("error: {}", vmm::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    // Before the VM is built: every thread it starts inherits the filter.
    if let Err(e) = seccomp::init(args.seccomp) {
        eprintln!("error: {}", vmm::error_chain(&e));
        return ExitCode::FAILURE;
    }
    let (vmm, runner) = Vmm::new(start, !args.no_reboot);
    if let Some(plan) = plan {
        // The command line's VM takes the API's path: create, then boot.
        let booted = vmm.create_plan(plan).and_then(|()| vmm.boot_from_cli());
        if let Err(e) = booted {
            eprintln!("error: {}", vmm::error_chain(&e));
            return ExitCode::FAILURE;
        }
    }
    let result = match api {
        None => runner.run(false),
        Some((listener, socket_file)) => serve_and_run(vmm, runner, listener, socket_file),
    };
    match result {
        Ok(Some(exit)) => {
            log::info!(
                "guest {} after {:.1} ms",
                exit_name(exit),
                start.elapsed().as_secs_f64() * 1000.0
            );
            ExitCode::SUCCESS
        }
        Ok(None) => {
            log::info!("vmm.shutdown with no VM running");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", vmm::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs the VMM with the control API served on `listener` until
/// `vmm.shutdown`; then stops the server (a reply being written is
/// finished first) and removes the socket file.
fn serve_and_run(
    vmm: std::sync::Arc<Vmm>,
    runner: Runner,
    listener: std::os::unix::net::UnixListener,
    socket_file: api::SocketFile,
) -> Result<Option<VmExit>, VmError> {
    let stop = api::ApiStop::new().map_err(VmError::Api)?;
    let server = api::serve(listener, vmm, stop.clone()).map_err(VmError::Api)?;
    log::info!("control API on {}", socket_file.path().display());
    let result = runner.run(true);
    stop.stop();
    let _ = server.join();
    drop(socket_file);
    result
}
