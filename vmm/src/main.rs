//! `vmm --kernel PATH [--initramfs PATH] [--cmdline ..] [--cpus boot=N]
//! [--memory size=..[,file=..]] [--serial ..] [--log-level ..]
//! [--disk socket=..]... [--fs tag=..,socket=..]... [--net socket=..]...`
//!
//! Exits 0 when the guest powers off or resets; 1 with one `error:` line
//! when the VM cannot be built or a vCPU fails; 2 on a bad command line.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vmm::cli::Args;
use vmm::vm::{Vm, VmConfig, VmExit};

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
    let config = VmConfig {
        kernel: args.kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        cpus: args.cpus.boot,
        memory: args.memory,
        serial: args.serial,
        devices,
    };
    match Vm::new(&config, start).and_then(Vm::run) {
        Ok(exit) => {
            let how = match exit {
                VmExit::PowerOff => "powered off",
                VmExit::Reset => "reset",
            };
            log::info!(
                "guest {how} after {:.1} ms",
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
