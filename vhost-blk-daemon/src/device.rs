//! The device one daemon serves, shared by every connection and engine:
//! the image, its config space and id, the engine chosen, and the
//! (rate-limited) counts of what went wrong.

use std::io;

use common::ratelimit::RateLimited;

use crate::cli::{Aio, SERIAL_MAX};
use crate::config::DeviceConfig;
use crate::disk::Disk;
use crate::request::{Done, Malformed};

/// What outlives connections: the image and how it is presented.
#[derive(Debug)]
pub struct Blk {
    /// The image.
    pub disk: Disk,
    /// Features, limits and config space.
    pub config: DeviceConfig,
    /// GET_ID answer.
    pub serial: [u8; SERIAL_MAX],
    /// Log every malformed chain at most this way.
    pub malformed: RateLimited,
    /// Host I/O errors, likewise.
    pub io_errors: RateLimited,
    /// The I/O engine.
    pub aio: Aio,
}

impl Blk {
    /// The used length of request `head` of queue `q` that ended as `r`,
    /// logging (rate-limited) a host error or a malformed chain.
    pub fn outcome(&self, q: usize, head: u16, r: Result<Done, Malformed>) -> u32 {
        match r {
            Ok(done) => {
                if let Some((what, errno)) = done.host_error {
                    if let Some(n) = self.io_errors.hit() {
                        log::warn!(
                            "queue {q} head {head}: {what} on {} failed: {} (host I/O error #{n})",
                            self.disk.path().display(),
                            io::Error::from_raw_os_error(errno)
                        );
                    }
                }
                done.used_len
            }
            Err(why) => {
                if let Some(n) = self.malformed.hit() {
                    log::warn!("queue {q} head {head}: malformed request dropped: {why} (#{n})");
                }
                0
            }
        }
    }
}
