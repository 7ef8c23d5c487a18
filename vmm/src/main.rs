//! `vmm --kernel PATH [--initramfs PATH] [--cmdline ..] [--cpus boot=N]
//! [--memory size=..[,file=..]] [--serial ..] [--log-level ..]
//! [--api-socket PATH] [--disk socket=..]... [--fs tag=..,socket=..]...
//! [--net socket=..]...`
//!
//! Exits 0 when the guest powers off or resets (with `--api-socket`: on
//! `vmm.shutdown`, after the guest ended or was stopped); 1 with one
//! `error:` line when the VM cannot be built, the API socket cannot be
//! bound, or a vCPU fails; 2 on a bad command line.

use std::process::ExitCode;
use std::time::Instant;

use std::os::unix::net::UnixListener;

use clap::Parser;
use vmm::api;
use vmm::cli::Args;
use vmm::vm::{exit_name, Vm, VmConfig, VmError, VmExit};

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
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .format_target(false)
        .init();

    let devices = args.vhost_user_devices();
    // Bound before anything else, so a socket in use fails fast.
    let api = match args.api_socket.as_deref().map(api::bind).transpose() {
        Ok(api) => api,
        Err(e) => {
            eprintln!("error: {}", vmm::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let config = VmConfig {
        kernel: args.kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        cpus: args.cpus.boot,
        memory: args.memory,
        serial: args.serial,
        devices,
    };
    let result = Vm::new(&config, start).and_then(|vm| match api {
        None => vm.run(),
        Some((listener, socket_file)) => serve_and_run(vm, listener, socket_file),
    });
    match result {
        Ok(exit) => {
            log::info!(
                "guest {} after {:.1} ms",
                exit_name(exit),
                start.elapsed().as_secs_f64() * 1000.0
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", vmm::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs `vm` with the control API served on `listener` until
/// `vmm.shutdown`; then stops the server (a reply being written is
/// finished first) and removes the socket file.
fn serve_and_run(
    vm: Vm,
    listener: UnixListener,
    socket_file: api::SocketFile,
) -> Result<VmExit, VmError> {
    let stop = api::ApiStop::new().map_err(VmError::Api)?;
    let server = api::serve(listener, vm.controller(), stop.clone()).map_err(VmError::Api)?;
    log::info!("control API on {}", socket_file.path().display());
    let result = vm.run_serving();
    stop.stop();
    let _ = server.join();
    drop(socket_file);
    result
}
