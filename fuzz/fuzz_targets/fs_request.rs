//! virtiofsd's request path: each message of the input becomes a chain
//! (its bytes in one or two readable descriptors, then a writable reply
//! buffer) that goes through the daemon's checks (`request::inspect`,
//! `request::judge`) and then fuse-backend-rs's `Server` over the
//! passthrough of a fresh temporary share, set up as the daemon sets it
//! up (`setup::passthrough_config`, `fs::Guarded`).
//!
//! Input: byte 0: bit 0 sends a good INIT first; bits 1-5 pick options
//! (`--xattr`, `--readonly`, `--posix-acl`, `--writeback`,
//! `--announce-submounts`); bits 6-7 `--cache`. Then messages, each
//! `[len: le16][split: u8][reply: u8]` and `len` bytes: the request is
//! cut into two descriptors at `split` (0: one), and the reply buffer
//! holds `16 + 64 * reply` bytes.
//!
//! The process runs without CAP_MKNOD (no device nodes in the share) and
//! with a 1 MiB file-size limit (no huge files from FALLOCATE or WRITE).

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use fuzz::fuse::init_message;
use fuzz::Input;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use virtiofsd::cli::Cli;
use virtiofsd::fs::Guarded;
use virtiofsd::persist::Persist;
use virtiofsd::request::{self, opcode, Verdict, OUT_HEADER_LEN};
use virtiofsd::setup;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_LEN: usize = 0x40000;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const REQUEST: u64 = 0x1000;
const REPLY: u64 = 0x20000;
const QUEUE: u16 = 4;

fn cli(flags: u8, dir: &Path) -> Cli {
    let mut args: Vec<String> = vec!["virtiofsd".into(), "--shared-dir".into()];
    args.push(dir.display().to_string());
    args.extend(["--socket-path".into(), "/nonexistent.sock".into()]);
    for (bit, opt) in [
        (1, "--xattr"),
        (2, "--readonly"),
        (3, "--posix-acl"),
        (4, "--writeback"),
        (5, "--announce-submounts"),
    ] {
        if flags & (1 << bit) != 0 {
            args.push(opt.into());
        }
    }
    let cache = ["auto", "never", "metadata", "always"][usize::from(flags >> 6)];
    args.push(format!("--cache={cache}"));
    Cli::try_parse_from(&args).expect("fuzz command line")
}

/// One message as a chain on a fresh ring; returns the bytes the server
/// (or our refusal) wrote into the reply buffer.
struct Conn {
    server: Server<Arc<Guarded<Persist<PassthroughFs<()>>>>>,
    mem: GuestMemoryMmap<()>,
    initialized: bool,
}

impl Conn {
    fn message(&mut self, msg: &[u8], split: usize, reply_len: u32) {
        let mem = &self.mem;
        mem.write_slice(msg, GuestAddress(REQUEST))
            .expect("request");
        let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&d, GuestAddress(DESC + 16 * i))
                .expect("desc");
        };
        let (next, write) = (1u16, 2u16);
        let len = msg.len() as u32;
        let mut i = 0;
        if split > 0 && split < msg.len() {
            desc(0, REQUEST, split as u32, next, 1);
            desc(1, REQUEST + split as u64, len - split as u32, next, 2);
            i = 2;
        } else {
            desc(0, REQUEST, len, next, 1);
            i += 1;
        }
        desc(i, REPLY, reply_len, write, 0);
        // avail: flags 0, idx 1, ring[0] = 0.
        mem.write_slice(&[0, 0, 1, 0, 0, 0], GuestAddress(AVAIL))
            .expect("avail");
        mem.write_slice(&[0u8; OUT_HEADER_LEN], GuestAddress(REPLY))
            .expect("reply");

        let mut q = Queue::new(QUEUE).expect("queue");
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        let chain = q.pop_descriptor_chain(mem).expect("one chain");

        let Ok((header, shape)) = request::inspect(&chain, mem) else {
            return;
        };
        let n = match request::judge(&header, &shape, self.initialized) {
            Verdict::Drop => return,
            Verdict::Refuse(errno) => {
                let mut w = VirtioFsWriter::new(mem, chain).expect("writer");
                let reply = request::error_reply(header.unique, errno);
                if std::io::Write::write_all(&mut w, &reply).is_err() {
                    return;
                }
                reply.len()
            }
            Verdict::Serve => {
                let reader = Reader::from_descriptor_chain(mem, chain.clone()).expect("reader");
                let writer = Writer::from(VirtioFsWriter::new(mem, chain).expect("writer"));
                let Ok(n) = self.server.handle_message(reader, writer, None, None) else {
                    return;
                };
                match header.opcode {
                    opcode::INIT => self.initialized = n > 0,
                    opcode::DESTROY => self.initialized = false,
                    _ => {}
                }
                n
            }
        };
        if n == 0 {
            return;
        }
        // A reply is a whole `fuse_out_header` whose `len` is what was
        // written, for the request's `unique`, inside the buffer.
        assert!(
            n >= OUT_HEADER_LEN && n <= reply_len as usize,
            "reply of {n} bytes"
        );
        let mut out = [0u8; OUT_HEADER_LEN];
        mem.read_slice(&mut out, GuestAddress(REPLY))
            .expect("reply");
        let out_len = u32::from_le_bytes(out[0..4].try_into().unwrap());
        let unique = u64::from_le_bytes(out[8..16].try_into().unwrap());
        assert_eq!(out_len as usize, n, "out header len");
        assert_eq!(unique, header.unique, "out header unique");
    }
}

fuzz_target!(|data: &[u8]| {
    fuzz::fuse::setup_process();
    let mut input = Input(data);
    let Some(flags) = input.u8() else { return };
    let dir: PathBuf = std::env::temp_dir().join(format!("fuzz-fs-{}", std::process::id()));
    fuzz::fuse::make_share(&dir);
    let cli = cli(flags, &dir);
    let root = dir.display().to_string();
    let fs = PassthroughFs::<()>::new(setup::passthrough_config(&cli, &root)).expect("passthrough");
    fs.import().expect("import");
    let fs = Arc::new(
        Guarded::new(
            Persist::new(fs),
            cli.readonly,
            cli.announce_submounts,
            cli.writeback,
        )
        .with_posix_acl(cli.posix_acl),
    );
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_LEN)]).expect("memory");
    let mut conn = Conn {
        server: Server::new(fs),
        mem,
        initialized: false,
    };
    if flags & 1 != 0 {
        conn.message(&init_message(), 0, 256);
    }
    while let (Some(len), Some(split), Some(reply)) = (input.u16(), input.u8(), input.u8()) {
        let len = usize::from(len)
            .min(input.0.len())
            .min((REPLY - REQUEST) as usize);
        let Some(msg) = input.take(len) else { break };
        conn.message(msg, usize::from(split), 16 + 64 * u32::from(reply));
    }
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
});
