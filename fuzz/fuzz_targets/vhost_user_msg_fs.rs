//! virtiofsd as a hostile frontend sees it: [`vhost_user_msg`]'s frontend
//! (`fuzz::vu_frontend`: messages with any descriptors, kicks, guest
//! memory writes, optionally through `common::relay`; well formed
//! replies, the connection ends within 5 s of the hang-up, every thread
//! joined) against virtiofsd's device: a `Share` built as
//! `setup::share` builds it (the passthrough over a temporary directory,
//! `fs::Guarded`), connected per input as `common::serve` connects it, and
//! reset after the frontend left as `Service::after_disconnect` does. The
//! FUSE requests themselves are `fs_request`'s business; here it is the
//! vhost-user protocol (memory tables, vrings in any order, in-flight
//! tracking, config space, reset, hang-ups mid-message).
//!
//! Byte 0 sets the daemon up: bit 0 `--readonly`, bit 1
//! `--thread-pool-size 2` (requests run on a pool), bit 2 the relay,
//! bit 3 `--xattr`. The rest is `fuzz::vu`'s format.
//!
//! The process runs without CAP_MKNOD and with a 1 MiB file-size limit,
//! as `fs_request` does.

#![no_main]

use std::sync::{Arc, OnceLock};

use clap::Parser;
use common::daemon::Service;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuzz::Input;
use libfuzzer_sys::fuzz_target;
use virtiofsd::backend::Share;
use virtiofsd::cli::Cli;
use virtiofsd::persist::Persist;
use virtiofsd::setup;

/// The share of setup bits 0, 1 and 3, made once per process over its
/// own temporary directory.
fn share(setup: u8) -> Arc<Share> {
    static SHARES: [OnceLock<Arc<Share>>; 8] = [const { OnceLock::new() }; 8];
    let i = usize::from(setup & 3) | usize::from((setup >> 3) & 1) << 2;
    SHARES[i]
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("fuzz-vu-fs-{i}-{}", std::process::id()));
            fuzz::fuse::make_share(&dir);
            let root = dir.display().to_string();
            let mut args = vec![
                "virtiofsd",
                "--shared-dir",
                &root,
                "--socket-path",
                "/nonexistent.sock",
            ];
            if setup & 1 != 0 {
                args.push("--readonly");
            }
            if setup & 2 != 0 {
                args.extend(["--thread-pool-size", "2"]);
            }
            if setup & 8 != 0 {
                args.push("--xattr");
            }
            let cli = Cli::try_parse_from(&args).expect("fuzz command line");
            let fs = PassthroughFs::<()>::new(setup::passthrough_config(&cli, &root))
                .expect("passthrough");
            fs.import().expect("import");
            // As the daemon without --state-file: the session layer with
            // nothing to resume.
            Arc::new(setup::share_over(
                Persist::new(fs),
                &cli,
                format!("fuzz share {root}"),
            ))
        })
        .clone()
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let Some(setup) = input.u8() else { return };
    fuzz::fuse::setup_process();
    fuzz::vu_frontend::relay_dir("vhost_user_msg_fs");
    let share = share(setup);
    let device = share.connect().expect("connect the device");
    fuzz::vu_frontend::drive(input, device, setup & 4 != 0);
    assert!(share.after_disconnect(), "the share serves again");
}

fuzz_target!(|data: &[u8]| run(data));
