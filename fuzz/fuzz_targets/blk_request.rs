//! vhost-blk-daemon's request path over a ring from the input: the worker
//! loop, the chain walker (`common::iov`), `request::parse`, `plan` and
//! `execute` against a 64 KiB image. Byte 0 bit 4: a read-only export.

#![no_main]

use std::sync::OnceLock;

use common::iov::total_len;
use fuzz::ring::Ring;
use libfuzzer_sys::fuzz_target;
use vhost_blk_daemon::config::DeviceConfig;
use vhost_blk_daemon::disk::{Disk, SECTOR};
use vhost_blk_daemon::request::{self, req_type, Plan, Scratch, Target};

const IMAGE_LEN: u64 = 64 * 1024;

/// The image, opened as the daemon opens it; unlinked at once.
fn disk(read_only: bool) -> &'static Disk {
    static DISKS: [OnceLock<Disk>; 2] = [OnceLock::new(), OnceLock::new()];
    DISKS[usize::from(read_only)].get_or_init(|| {
        let name = if read_only { "blk-ro" } else { "blk-rw" };
        fuzz::blk_image(name, IMAGE_LEN, read_only)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(ring) = Ring::new(data) else { return };
    let read_only = ring.flags & 1 != 0;
    let config = DeviceConfig::new(IMAGE_LEN, 512, 1, 128, read_only);
    let serial = *b"fuzz-serial\0\0\0\0\0\0\0\0\0";
    let target = Target {
        disk: disk(read_only),
        config: &config,
        serial: &serial,
    };
    let capacity = config.capacity * SECTOR;
    let mut scratch = Scratch::default();
    ring.drain(|chain, mem| {
        let Ok(parsed) = request::parse(chain, mem, &mut scratch) else {
            return 0;
        };
        let readable = total_len(parsed.data(true)) as u64;
        let writable = total_len(parsed.data(false)) as u64;
        match parsed.plan(&config) {
            Plan::Read { offset } => {
                assert_eq!(parsed.ty, req_type::IN);
                assert!(writable % SECTOR == 0 && offset + writable <= capacity);
            }
            Plan::Write { offset } => {
                assert_eq!(parsed.ty, req_type::OUT);
                assert!(!read_only);
                assert!(readable % SECTOR == 0 && offset + readable <= capacity);
            }
            Plan::Flush => assert_eq!(parsed.ty, req_type::FLUSH),
            Plan::Finished(done) => assert_ne!(done.status, request::status::OK),
            Plan::Ranges(discard) => {
                assert!(!read_only);
                let want = if discard {
                    req_type::DISCARD
                } else {
                    req_type::WRITE_ZEROES
                };
                assert_eq!(parsed.ty, want);
                // Every checked range lies inside the image.
                let ranges = parsed
                    .ranges(&config, discard)
                    .expect("planned ranges check");
                for r in ranges.as_slice() {
                    assert!(r
                        .offset
                        .checked_add(r.len)
                        .is_some_and(|end| end <= capacity));
                    assert!(r.unmap || !discard);
                }
            }
            Plan::Sync => {}
        }
        let done = parsed.execute(&target);
        // The used length counts the status byte and never more than the
        // driver gave to write into.
        assert!(done.used_len >= 1 && u64::from(done.used_len) <= writable + 1);
        assert!(done.status <= request::status::UNSUPP);
        done.used_len
    });
});
