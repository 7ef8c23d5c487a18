//! virtio-fs on top of [`VuDevice`]: a FUSE client that plays the guest
//! kernel's `virtiofs` driver with no VM.
//!
//! Queue 0 is the high-priority queue (FORGET), queues 1.. carry requests.
//! Request and reply buffers are allocated in guest memory once, at connect,
//! sized for the largest READ/WRITE, so a benchmark loop allocates no guest
//! memory per operation; [`FsClient::read_into`] and [`FsClient::write_from`]
//! leave the data in those buffers.
//!
//! - [`wire`]: FUSE encoding and parsing (pure, unit-tested).
//! - [`host`]: extended attributes of a host path, beside what is served.
//! - `ops`: the typed operations (INIT, LOOKUP, ..., STATFS).
//! - `ops_more`: links, MKNOD, xattrs, FALLOCATE, LSEEK, ACCESS.
//! - `raw`: requests made of arbitrary bytes, for bad-input tests.
//! - `pipeline`: several requests in flight at once, replies in any order.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{FsOptions as InitFlags, InitOut};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::{Address, GuestAddress};

use crate::device::{DeviceError, DeviceOptions, VuDevice};
use crate::memory::MemoryError;
use crate::virtqueue::{QueueError, Seg};

pub mod host;
mod io;
mod ops;
mod pipeline;
mod raw;
pub mod wire;

pub use ops::SetAttr;
pub use pipeline::Pipeline;
pub use raw::{Malformed, Outcome, RawReply};
pub use wire::{Creds, DirEntry, DirEntryPlus};

/// virtio device id of virtio-fs.
pub const VIRTIO_ID_FS: u32 = 26;
/// Size of the `tag` field of the config space.
pub const TAG_LEN: usize = 36;
/// The high-priority queue's index.
pub const HIPRIO_QUEUE: usize = 0;
/// Bytes before each data area for headers and argument structs.
const HDR_AREA: u64 = 4096;
/// Bytes of each FORGET slot on the high-priority queue.
const FORGET_SLOT: u64 = 64;

/// Errors of the virtio-fs client. Each names the FUSE op it happened in.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The server answered with an error.
    #[error("FUSE {op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Errno {
        /// The request.
        op: &'static str,
        /// The positive errno.
        errno: i32,
    },
    /// Connecting or setting up the vhost-user device failed.
    #[error("virtio-fs device setup")]
    Device(#[from] DeviceError),
    /// A virtqueue operation failed.
    #[error("FUSE {op}: virtqueue")]
    Queue {
        /// The request.
        op: &'static str,
        /// The queue error.
        #[source]
        source: QueueError,
    },
    /// Guest memory access failed.
    #[error("FUSE {op}: guest memory")]
    Memory {
        /// The request.
        op: &'static str,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
    /// No reply came in time (the backend dropped or is stuck on the request).
    #[error("FUSE {op}: no reply on queue {queue} within {timeout:?}")]
    Timeout {
        /// The request.
        op: &'static str,
        /// The virtqueue.
        queue: usize,
        /// How long we waited.
        timeout: Duration,
    },
    /// The reply does not follow the protocol.
    #[error("FUSE {op}: bad reply: {reason}")]
    BadReply {
        /// The request.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A name with a NUL byte or too long for a typed request.
    #[error("FUSE {op}: name {name:?} cannot be sent (NUL inside or too long)")]
    BadName {
        /// The request.
        op: &'static str,
        /// The name.
        name: String,
    },
    /// The request does not fit the preallocated buffers or the layout.
    #[error("FUSE {op}: {len} bytes do not fit (limit {max})")]
    TooBig {
        /// The request.
        op: &'static str,
        /// Bytes asked for.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A request queue or queue index that does not exist.
    #[error("FUSE {op}: no queue {queue}")]
    NoQueue {
        /// The request.
        op: &'static str,
        /// The queue asked for.
        queue: usize,
    },
}

impl FsError {
    /// The errno of an [`FsError::Errno`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            FsError::Errno { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, FsError>;

/// How requests and replies are cut into descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Whole request in one device-readable descriptor, whole reply in one
    /// device-writable descriptor.
    Single,
    /// As Linux's virtiofs driver: `fuse_in_header` | arguments | payload;
    /// `fuse_out_header` | reply body or data.
    #[default]
    Linux,
    /// Like [`Layout::Linux`], with payloads (WRITE data, READ and READDIR
    /// data) cut into descriptors of at most `chunk` bytes that lie `gap`
    /// bytes apart in guest memory, so a device that assumes contiguity is caught.
    Fragmented {
        /// Bytes per payload descriptor (> 0).
        chunk: u32,
        /// Bytes between two payload descriptors (at most `chunk`).
        gap: u32,
    },
}

/// What to ask of the virtio-fs backend.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Request queues (the device gets one more: hiprio).
    pub num_request_queues: usize,
    /// Descriptors per queue.
    pub queue_size: u16,
    /// Largest READ or WRITE payload; sizes the preallocated buffers.
    pub max_io: u32,
    /// Descriptor layout of requests and replies.
    pub layout: Layout,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// Send FUSE_INIT at connect.
    pub init: bool,
    /// FUSE minor version offered in INIT (major is 7). 31 keeps
    /// `fuse_init_in` at 16 bytes; 36+ would need the INIT_EXT layout.
    pub minor: u32,
    /// Flags offered in INIT.
    pub init_flags: InitFlags,
    /// Identity in request headers; defaults to this process's euid/egid/pid.
    pub creds: Creds,
    /// Base device options; `num_queues` and `queue_size` are set from the fields above.
    pub device: DeviceOptions,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            num_request_queues: 1,
            queue_size: 256,
            max_io: 1 << 20,
            layout: Layout::default(),
            timeout: Duration::from_secs(10),
            init: true,
            minor: 31,
            init_flags: InitFlags::ASYNC_READ
                | InitFlags::ATOMIC_O_TRUNC
                | InitFlags::BIG_WRITES
                | InitFlags::DO_READDIRPLUS
                | InitFlags::MAX_PAGES
                | InitFlags::PARALLEL_DIROPS,
            creds: current_creds(),
            device: DeviceOptions {
                // Enough for a 1 MiB payload cut into 4 KiB descriptors.
                max_indirect: 300,
                ..DeviceOptions::default()
            },
        }
    }
}

/// This process's effective uid and gid and its pid.
pub fn current_creds() -> Creds {
    // SAFETY: geteuid and getegid cannot fail and touch no memory of ours.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    Creds {
        uid,
        gid,
        pid: std::process::id(),
    }
}

/// A header area followed by a data area, in guest memory.
#[derive(Debug, Clone, Copy)]
struct Area {
    /// Start of the data area; headers sit just below it.
    data: GuestAddress,
    /// Bytes in the data area.
    data_len: u64,
}

impl Area {
    fn alloc(dev: &VuDevice, data_len: u64) -> std::result::Result<Self, MemoryError> {
        let base = dev.mem().alloc(HDR_AREA + data_len, 4096)?;
        Ok(Area {
            data: base.unchecked_add(HDR_AREA),
            data_len,
        })
    }
    /// Address of `len` header bytes that end where the data area starts.
    fn hdr(&self, len: usize) -> GuestAddress {
        self.data.unchecked_sub(len as u64)
    }
}

/// The negotiated FUSE session, from the INIT reply.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// The reply as sent (zero-extended if the server's struct is shorter).
    pub init: InitOut,
    /// Bytes of `fuse_init_out` the server sent.
    pub init_len: usize,
    /// Flags both sides agreed on (offered ∩ returned, including `flags2`).
    pub flags: InitFlags,
}

/// A virtio-fs device driven from userspace.
pub struct FsClient {
    dev: VuDevice,
    opts: FsOptions,
    tag: Option<String>,
    config_queues: Option<u32>,
    session: Option<Session>,
    unique: u64,
    req_queue: usize,
    req: Area,
    rep: Area,
    raw_req: Area,
    raw_rep: Area,
    forget_slots: GuestAddress,
    free_forget: VecDeque<u16>,
    /// Body descriptors of the last typed reply, for gathering READ data.
    last_body: Vec<Seg>,
}

impl std::fmt::Debug for FsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsClient")
            .field("dev", &self.dev)
            .field("tag", &self.tag)
            .field("layout", &self.opts.layout)
            .field("session", &self.session.map(|s| s.flags))
            .finish()
    }
}

impl FsClient {
    /// Connects to the virtio-fs backend at `socket`, starts hiprio plus
    /// `num_request_queues` request queues, reads the config space when the
    /// CONFIG protocol feature was negotiated, and sends FUSE_INIT if
    /// `opts.init`.
    pub fn connect(socket: &Path, opts: FsOptions) -> Result<Self> {
        let mut dopts = opts.device.clone();
        dopts.num_queues = 1 + opts.num_request_queues.max(1);
        dopts.queue_size = opts.queue_size;
        let mut dev = VuDevice::connect(socket, &dopts)?;
        let (tag, config_queues) = if dev
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            let cfg = dev.get_config(0, (TAG_LEN + 4) as u32)?;
            parse_config(&cfg)
        } else {
            (None, None)
        };
        // Gaps between payload descriptors need at most as much room again.
        let data_len = 2 * u64::from(opts.max_io) + 4096;
        let merr = |source| FsError::Memory {
            op: "connect",
            source,
        };
        let req = Area::alloc(&dev, data_len).map_err(merr)?;
        let rep = Area::alloc(&dev, data_len).map_err(merr)?;
        let raw_req = Area::alloc(&dev, data_len).map_err(merr)?;
        let raw_rep = Area::alloc(&dev, data_len).map_err(merr)?;
        let slots = opts.queue_size;
        let forget_slots = dev
            .mem()
            .alloc(FORGET_SLOT * u64::from(slots), 64)
            .map_err(merr)?;
        let mut fs = FsClient {
            dev,
            tag,
            config_queues,
            session: None,
            unique: 0,
            req_queue: 1,
            req,
            rep,
            raw_req,
            raw_rep,
            forget_slots,
            free_forget: (0..slots).collect(),
            last_body: Vec::new(),
            opts,
        };
        fs.set_layout(fs.opts.layout)?;
        if fs.opts.init {
            fs.init()?;
        }
        Ok(fs)
    }

    /// The `tag` from the config space, if the backend serves GET_CONFIG.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    /// `num_request_queues` from the config space, if the backend serves GET_CONFIG.
    pub fn config_num_request_queues(&self) -> Option<u32> {
        self.config_queues
    }
    /// The negotiated session, once INIT succeeded.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }
    /// The underlying device (for vring-level tests).
    pub fn device(&mut self) -> &mut VuDevice {
        &mut self.dev
    }
    /// Gives the device back (drops the FUSE state).
    pub fn into_device(self) -> VuDevice {
        self.dev
    }
    /// The options in force.
    pub fn options(&self) -> &FsOptions {
        &self.opts
    }
    /// The largest payload the buffers hold.
    pub fn max_io(&self) -> u32 {
        self.opts.max_io
    }
    /// The reply timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.opts.timeout = timeout;
    }

    /// Changes the descriptor layout for the next requests.
    pub fn set_layout(&mut self, layout: Layout) -> Result<()> {
        if let Layout::Fragmented { chunk, gap } = layout {
            if chunk == 0 || gap > chunk {
                return Err(FsError::TooBig {
                    op: "set_layout",
                    len: u64::from(gap),
                    max: u64::from(chunk),
                });
            }
        }
        self.opts.layout = layout;
        Ok(())
    }

    /// Sends typed requests on request queue `i` (0-based, so virtqueue `1 + i`).
    pub fn set_request_queue(&mut self, i: usize) -> Result<()> {
        if i >= self.opts.num_request_queues {
            return Err(FsError::NoQueue {
                op: "set_request_queue",
                queue: i,
            });
        }
        self.req_queue = 1 + i;
        Ok(())
    }
}

/// Splits a virtio-fs config space into its tag (up to the first NUL) and
/// `num_request_queues`.
pub fn parse_config(cfg: &[u8]) -> (Option<String>, Option<u32>) {
    let tag = cfg.get(..TAG_LEN).map(|t| {
        let end = t.iter().position(|&b| b == 0).unwrap_or(TAG_LEN);
        String::from_utf8_lossy(&t[..end]).into_owned()
    });
    let queues = cfg
        .get(TAG_LEN..TAG_LEN + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    (tag, queues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_parses() {
        let mut cfg = vec![0u8; 40];
        cfg[..10].copy_from_slice(b"kataShared");
        cfg[36..].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(parse_config(&cfg), (Some("kataShared".into()), Some(3)));
        // A tag filling all 36 bytes has no NUL.
        let cfg = vec![b'x'; 40];
        assert_eq!(parse_config(&cfg).0.unwrap().len(), 36);
        assert_eq!(parse_config(&[]), (None, None));
    }
}
