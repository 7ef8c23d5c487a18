//! vhost-blk-daemon as a hostile frontend sees it: a fresh connection per
//! input, built as `common::serve` builds it (the daemon's `Service`
//! connects a `BlkQueues` device, `common::backend::Backend` over it,
//! `vhost-user-backend`'s `VhostUserDaemon` with its request handler and
//! worker threads, optionally `common::relay` in front), and the input's
//! messages, descriptors, kicks and guest memory writes sent to it by the
//! target acting as frontend (the format: `fuzz::vu`; the frontend and
//! its checks: `fuzz::vu_frontend`).

#![no_main]

use std::sync::{Arc, OnceLock};

use common::daemon::Service;
use common::ratelimit::RateLimited;
use fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vhost_blk_daemon::cli::{Aio, SERIAL_MAX};
use vhost_blk_daemon::config::DeviceConfig;
use vhost_blk_daemon::device::Blk;

const IMAGE_LEN: u64 = 64 * 1024;

/// The device of setup bits 0, 1 and 3 (read-only, two queues,
/// io_uring), made once per process: the image is opened as the daemon
/// opens it and unlinked at once.
fn blk(setup: u8) -> Arc<Blk> {
    static BLKS: [OnceLock<Arc<Blk>>; 8] = [const { OnceLock::new() }; 8];
    let (read_only, two, uring) = (setup & 1 != 0, setup & 2 != 0, setup & 8 != 0);
    let i = usize::from(read_only) | usize::from(two) << 1 | usize::from(uring) << 2;
    BLKS[i]
        .get_or_init(|| {
            let disk = fuzz::blk_image(&format!("vu-{i}"), IMAGE_LEN, read_only);
            let mut serial = [0u8; SERIAL_MAX];
            serial[..4].copy_from_slice(b"fuzz");
            Arc::new(Blk {
                disk,
                config: DeviceConfig::new(IMAGE_LEN, 512, 1 + u16::from(two), 128, read_only),
                serial,
                malformed: RateLimited::default(),
                io_errors: RateLimited::default(),
                aio: if uring { Aio::IoUring } else { Aio::Sync },
            })
        })
        .clone()
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let Some(setup) = input.u8() else { return };
    fuzz::vu_frontend::relay_dir("vhost_user_msg");
    let device = blk(setup).connect().expect("connect the device");
    fuzz::vu_frontend::drive(input, device, setup & 4 != 0);
}

fuzz_target!(|data: &[u8]| run(data));
