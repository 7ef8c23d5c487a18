//! Our `vhost-blk-daemon` driven by the userspace driver, checked against
//! the behaviour contract (`notes/blk-spec.md`): data round trips (also on
//! the host image), flush, discard and write-zeroes, error statuses,
//! several queues at depth 32, O_DIRECT, scattered buffers and EVENT_IDX on
//! and off.
//!
//! GET_ID, config space, features and read-only are in
//! `device.rs`, malformed rings in `malformed.rs`.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use vm_memory::ByteValued;
use vu_driver::blk::raw::RequestBuilder;
use vu_driver::blk::{req, status, BlkClient, BlkOptions, DiscardWz, OutHdr, Request, SECTOR_SIZE};
use vu_driver::device::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vu_driver::fixture::{create_sparse_image, poll_until};
use vu_driver::ours::{vhost_blk_daemon, BlkDaemonOpts};
use vu_driver::virtqueue::VRING_USED_F_NO_NOTIFY;

use crate::common::*;

/// The `flags:` of every descriptor the daemon holds on `image`
/// (from /proc/PID/fdinfo).
fn image_fd_flags(pid: u32, image: &Path) -> Vec<u32> {
    let image = fs::canonicalize(image).unwrap();
    let mut flags = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        if fs::read_link(entry.path()).ok().as_deref() != Some(image.as_path()) {
            continue;
        }
        let fd = entry.file_name().into_string().unwrap();
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let line = info.lines().find(|l| l.starts_with("flags:")).unwrap();
        flags.push(u32::from_str_radix(line["flags:".len()..].trim(), 8).unwrap());
    }
    flags
}

#[test]
fn write_read_round_trip_matches_the_host_image() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);

    let data = pattern(7, 64 * 1024);
    assert_status_ok(write_req(&mut c, 100, &data), 1, "write");
    let rd = run(
        &mut c,
        Request::Read {
            sector: 100,
            len: data.len() as u32,
        },
    );
    assert_status_ok(rd, data.len() as u32 + 1, "read");
    assert_eq!(c.read(100, data.len() as u32).unwrap(), data);
    assert_eq!(host_read(&s.image, 100, data.len()), data);

    // The guest sees what the host wrote.
    let hostdata = pattern(99, 4096);
    host_write(&s.image, 8192, &hostdata);
    assert_eq!(c.read(8192, 4096).unwrap(), hostdata);

    // The last sector is inside the disk.
    let last = IMAGE_SIZE / SECTOR_SIZE - 1;
    c.write(last, &pattern(5, 512)).unwrap();
    assert_eq!(c.read(last, 512).unwrap(), pattern(5, 512));
    assert_eq!(host_read(&s.image, last, 512), pattern(5, 512));
    assert_eq!(fs::metadata(&s.image).unwrap().len(), IMAGE_SIZE);

    // Without --direct the image is open read-write and without O_DIRECT.
    let flags = image_fd_flags(s.daemon.pid(), &s.image);
    assert!(!flags.is_empty(), "daemon holds no descriptor on the image");
    for f in flags {
        assert_eq!(
            f & libc::O_ACCMODE as u32,
            libc::O_RDWR as u32,
            "flags {f:o}"
        );
        assert_eq!(f & libc::O_DIRECT as u32, 0, "flags {f:o}");
    }
}

#[test]
fn flush_succeeds() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    c.write(0, &pattern(1, 4096)).unwrap();
    assert_status_ok(run(&mut c, Request::Flush), 1, "flush");
    // A flush on an idle device as well.
    assert_status_ok(run(&mut c, Request::Flush), 1, "second flush");
    assert_eq!(host_read(&s.image, 0, 4096), pattern(1, 4096));
}

/// 1 MiB of data at sector 2048, with a 4 KiB guard on either side, then
/// `r` over the 1 MiB (`what`): it succeeds, the range reads back as zeros
/// through the daemon and on the host, the guards are intact, the blocks
/// are given back, and the image keeps its size.
fn assert_punches_a_hole(r: Request, what: &str) {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    let data = pattern(3, 1 << 20);
    c.write(2040, &pattern(1, 4096)).unwrap();
    c.write(2048, &data).unwrap();
    c.write(4096, &pattern(2, 4096)).unwrap();
    c.flush().unwrap();
    let before = host_blocks(&s.image);
    assert!(before >= 2048 + 16, "image holds only {before} blocks");

    assert_status_ok(run(&mut c, r), 1, what);
    assert!(c.read(2048, 1 << 20).unwrap().iter().all(|&b| b == 0));
    assert!(host_read(&s.image, 2048, 1 << 20).iter().all(|&b| b == 0));
    assert_eq!(c.read(2040, 4096).unwrap(), pattern(1, 4096));
    assert_eq!(c.read(4096, 4096).unwrap(), pattern(2, 4096));
    let after = host_blocks(&s.image);
    // At least three quarters of the 2048 blocks are given back (the
    // filesystem may keep some metadata).
    assert!(
        after + 1536 <= before,
        "{what}: st_blocks {before} -> {after}: no hole punched"
    );
    assert_eq!(fs::metadata(&s.image).unwrap().len(), IMAGE_SIZE);
}

#[test]
fn discard_punches_a_hole_and_reads_back_zeros() {
    assert_punches_a_hole(
        Request::Discard {
            sector: 2048,
            num_sectors: 2048,
        },
        "discard",
    );
}

#[test]
fn write_zeroes_without_unmap_zeroes_the_range() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    let data = pattern(3, 32 * 1024);
    c.write(2048, &data).unwrap();
    let done = run(
        &mut c,
        Request::WriteZeroes {
            sector: 2048 + 8,
            num_sectors: 16,
            unmap: false,
        },
    );
    assert_status_ok(done, 1, "write-zeroes");
    let back = c.read(2048, data.len() as u32).unwrap();
    assert_eq!(&back[..4096], &data[..4096]);
    assert!(back[4096..4096 + 8192].iter().all(|&b| b == 0));
    assert_eq!(&back[12288..], &data[12288..]);
    assert_eq!(host_read(&s.image, 2048, data.len()), back);
    assert_eq!(fs::metadata(&s.image).unwrap().len(), IMAGE_SIZE);
}

#[test]
fn write_zeroes_with_unmap_punches_a_hole() {
    assert_punches_a_hole(
        Request::WriteZeroes {
            sector: 2048,
            num_sectors: 2048,
            unmap: true,
        },
        "write-zeroes unmap",
    );
}

#[test]
fn discard_past_the_end_or_over_the_limits_is_ioerr() {
    // Large enough (sparse) that max_discard_sectors + 1 still fits.
    let size = 4u64 << 30;
    let s = daemon_with("big.img", size, &BlkDaemonOpts::default());
    let mut c = connect(&s);
    let cap = size / SECTOR_SIZE;
    let discard = |sector, num_sectors| Request::Discard {
        sector,
        num_sectors,
    };

    let done = run(&mut c, discard(cap - 8, 16));
    assert_status(done, status::IOERR, "discard straddling the end");
    let done = run(&mut c, discard(cap, 8));
    assert_status(done, status::IOERR, "discard at the end");
    let done = run(&mut c, discard(u64::MAX - 4, 8));
    assert_status(done, status::IOERR, "discard wrapping around u64");
    let done = run(&mut c, discard(0, MAX_DWZ_SECTORS + 1));
    assert_status(done, status::IOERR, "discard over max_discard_sectors");
    let wz = run(
        &mut c,
        Request::WriteZeroes {
            sector: cap - 8,
            num_sectors: 16,
            unmap: false,
        },
    );
    assert_ne!(wz.status, status::OK, "write-zeroes straddling the end");
    assert_eq!(fs::metadata(&s.image).unwrap().len(), size, "image grew");

    // Exactly the limit, and the last sectors, are fine.
    assert_status_ok(run(&mut c, discard(0, MAX_DWZ_SECTORS)), 1, "max discard");
    assert_status_ok(run(&mut c, discard(cap - 8, 8)), 1, "last sectors");
}

/// A discard request carrying `segs`, run on queue 0; returns (used_len, status).
fn discard_segments(c: &mut BlkClient, segs: &[DiscardWz]) -> (u32, u8) {
    let mem = c.device().mem().clone();
    let r = RequestBuilder::new(&mem)
        .header(req::DISCARD, 0)
        .unwrap()
        .dwz_segments(segs)
        .unwrap()
        .status()
        .unwrap()
        .build();
    let done = r.run(c.device().queue(0), T).unwrap();
    (done.used_len, done.status)
}

#[test]
fn discard_with_several_segments() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    c.write(0, &pattern(1, 64 * 1024)).unwrap();
    let seg = |sector, num_sectors| DiscardWz {
        sector,
        num_sectors,
        flags: 0,
    };
    assert_eq!(
        discard_segments(&mut c, &[seg(8, 8), seg(64, 16)]),
        (1, status::OK)
    );
    let back = c.read(0, 64 * 1024).unwrap();
    let data = pattern(1, 64 * 1024);
    for (i, (&b, &d)) in back.iter().zip(&data).enumerate() {
        let sector = i as u64 / SECTOR_SIZE;
        let zeroed = (8..16).contains(&sector) || (64..80).contains(&sector);
        assert_eq!(b, if zeroed { 0 } else { d }, "byte {i}");
    }

    // One segment more than max_discard_seg.
    c.write(0, &data).unwrap();
    let many: Vec<DiscardWz> = (0..u64::from(MAX_DWZ_SEG) + 1)
        .map(|i| seg(i * 2, 1))
        .collect();
    assert_eq!(discard_segments(&mut c, &many), (1, status::IOERR));
    // The limit itself is accepted.
    assert_eq!(
        discard_segments(&mut c, &many[..MAX_DWZ_SEG as usize]),
        (1, status::OK)
    );
    assert!(c.read(0, 512).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn discard_with_unmap_flag_is_unsupp() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    c.write(0, &pattern(4, 4096)).unwrap();
    let seg = DiscardWz {
        sector: 0,
        num_sectors: 8,
        flags: 1,
    };
    assert_eq!(discard_segments(&mut c, &[seg]), (1, status::UNSUPP));
    assert_eq!(c.read(0, 4096).unwrap(), pattern(4, 4096));
}

#[test]
fn out_of_range_requests_are_ioerr() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    let cap = IMAGE_SIZE / SECTOR_SIZE;
    let last = pattern(6, 512);
    c.write(cap - 1, &last).unwrap();

    let rd = |sector, len| Request::Read { sector, len };
    assert_status(run(&mut c, rd(cap, 512)), status::IOERR, "read at end");
    assert_status(
        run(&mut c, rd(cap - 1, 1024)),
        status::IOERR,
        "read straddling",
    );
    assert_status(
        run(&mut c, rd(cap + 1000, 4096)),
        status::IOERR,
        "read past end",
    );
    // sector * 512 and sector + len overflow u64.
    let huge = u64::MAX / SECTOR_SIZE + 1;
    assert_status(
        run(&mut c, rd(huge, 512)),
        status::IOERR,
        "read, offset overflows",
    );
    assert_status(
        run(&mut c, rd(u64::MAX, 512)),
        status::IOERR,
        "read at u64::MAX",
    );

    let w = write_req(&mut c, cap - 1, &pattern(1, 1024));
    assert_status(w, status::IOERR, "write straddling");
    let w = write_req(&mut c, cap, &pattern(1, 512));
    assert_status(w, status::IOERR, "write at end");
    let w = write_req(&mut c, huge, &pattern(1, 512));
    assert_status(w, status::IOERR, "write, offset overflows");
    assert_eq!(
        fs::metadata(&s.image).unwrap().len(),
        IMAGE_SIZE,
        "image grew"
    );
    assert_eq!(
        host_read(&s.image, cap - 1, 512),
        last,
        "last sector changed"
    );
    assert_eq!(c.read(cap - 1, 512).unwrap(), last);
}

#[test]
fn unknown_request_types_are_unsupp() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    for type_ in [2, 3, 10, 14, 16, 0x7777, u32::MAX] {
        let done = run(&mut c, Request::Raw { type_, sector: 0 });
        assert_status(done, status::UNSUPP, &format!("type {type_}"));
    }
    c.write(0, &pattern(1, 512)).unwrap();
    assert_eq!(c.read(0, 512).unwrap(), pattern(1, 512));
}

#[test]
fn request_framing_does_not_depend_on_descriptor_boundaries() {
    // virtio 1.x, 2.6.4.1: the device must not assume a particular
    // arrangement of descriptors; the request is framed by bytes.
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    let mem = c.device().mem().clone();
    let hdr = |type_, sector| OutHdr {
        type_,
        ioprio: 0,
        sector,
    };
    // A write whose header and data share one descriptor.
    let mut buf = hdr(req::OUT, 8).as_slice().to_vec();
    buf.extend(pattern(1, 1024));
    let w = RequestBuilder::new(&mem)
        .readable(&buf)
        .unwrap()
        .status()
        .unwrap()
        .build();
    let done = w.run(c.device().queue(0), T).unwrap();
    assert_eq!((done.used_len, done.status), (1, status::OK));
    assert_eq!(host_read(&s.image, 8, 1024), pattern(1, 1024));

    // A read whose header is split 8 + 8 and whose status byte is the last
    // byte of the data's descriptor.
    let h = hdr(req::IN, 8);
    let r = RequestBuilder::new(&mem)
        .readable(&h.as_slice()[..8])
        .unwrap()
        .readable(&h.as_slice()[8..])
        .unwrap()
        .writable(1025, 0xee)
        .unwrap()
        .build();
    let done = r.run(c.device().queue(0), T).unwrap();
    assert_eq!(done.used_len, 1025);
    let back = r.writable_data(&mem, 0).unwrap();
    assert_eq!(&back[..1024], &pattern(1, 1024)[..]);
    assert_eq!(back[1024], status::OK);
}

#[test]
fn data_length_not_a_multiple_of_512_is_ioerr() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    let data = pattern(11, 4096);
    c.write(0, &data).unwrap();
    for len in [100, 513, 4095] {
        let r = run(&mut c, Request::Read { sector: 0, len });
        assert_status(r, status::IOERR, &format!("read of {len} bytes"));
    }
    for len in [1000usize, 511] {
        let w = write_req(&mut c, 0, &pattern(1, len));
        assert_status(w, status::IOERR, &format!("write of {len} bytes"));
    }
    assert_eq!(host_read(&s.image, 0, 4096), data);
    assert_eq!(c.read(0, 4096).unwrap(), data);
}

/// `n` queues at depth 32 each, every chain through an indirect table with
/// its data split in 3; writes then reads, all checked.
fn queues_at_depth_32(n: u16) {
    let s = daemon(&BlkDaemonOpts {
        num_queues: Some(n),
        ..BlkDaemonOpts::default()
    });
    let mut opts = BlkOptions::default();
    opts.device.num_queues = usize::from(n);
    opts.max_io = 64 * 1024;
    let mut c = BlkClient::connect(s.daemon.socket(), &opts).unwrap();
    assert_eq!(c.config().unwrap().num_queues, n);
    assert_eq!(c.device().max_queues(), Some(u64::from(n)));
    let acked = c.device().features();
    assert_ne!(
        acked & VIRTIO_RING_F_INDIRECT_DESC,
        0,
        "INDIRECT_DESC not negotiated"
    );

    let sector_of = |qi: usize, i: u64| (qi as u64 * 32 + i) * 8;
    std::thread::scope(|scope| {
        for (qi, mut q) in c.queues().into_iter().enumerate() {
            scope.spawn(move || {
                q.set_data_segments(3);
                q.virtqueue().set_force_indirect(true);
                let mem = q.virtqueue().mem().clone();
                let mut want = std::collections::HashMap::new();
                for i in 0..32u64 {
                    let sector = sector_of(qi, i);
                    submit_write(&mut q, sector, &pattern(sector as u8, 4096));
                }
                let done = kick_and_reap(&mut q, 32);
                assert!(done
                    .iter()
                    .all(|d| d.status == status::OK && d.used_len == 1));

                for i in 0..32u64 {
                    let sector = sector_of(qi, i);
                    let slot = q.peek_slot().unwrap();
                    mem.write(q.data_addr(slot), &[0u8; 4096]).unwrap();
                    let slot = q.submit(Request::Read { sector, len: 4096 }).unwrap();
                    want.insert(slot, sector);
                }
                for d in &kick_and_reap(&mut q, 32) {
                    assert_eq!((d.status, d.used_len), (status::OK, 4097), "{d:?}");
                    let sector = want[&d.slot];
                    let got = mem.read_vec(q.data_addr(d.slot), 4096).unwrap();
                    assert_eq!(
                        got,
                        pattern(sector as u8, 4096),
                        "queue {qi} sector {sector}"
                    );
                }
            });
        }
    });
    for qi in 0..usize::from(n) {
        for i in 0..32u64 {
            let sector = sector_of(qi, i);
            assert_eq!(
                host_read(&s.image, sector, 4096),
                pattern(sector as u8, 4096)
            );
        }
    }
}

#[test]
fn two_queues_at_depth_32_through_indirect_tables() {
    queues_at_depth_32(2);
}

#[test]
fn four_queues_at_depth_32_through_indirect_tables() {
    queues_at_depth_32(4);
}

/// A directory under /var/tmp (a disk filesystem, unlike a tmpfs /tmp),
/// removed on drop.
pub(crate) struct VarTmpDir(pub(crate) PathBuf);

impl VarTmpDir {
    pub(crate) fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = PathBuf::from(format!(
            "/var/tmp/blk-daemon-direct.{}.{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&p).unwrap();
        VarTmpDir(p)
    }
}

impl Drop for VarTmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn direct_io_on_a_disk_filesystem() {
    let dir = VarTmpDir::new();
    let image = dir.0.join("direct.img");
    create_sparse_image(&image, IMAGE_SIZE).unwrap();
    // The filesystem must take O_DIRECT, or this test proves nothing: fail.
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&image)
        .unwrap_or_else(|e| panic!("O_DIRECT open of {} failed: {e}", image.display()));
    let opts = BlkDaemonOpts {
        direct: true,
        ..BlkDaemonOpts::default()
    };
    let d = vhost_blk_daemon(&image, &dir.0.join("blk.sock"), &opts).unwrap();
    let mut c = BlkClient::connect(d.socket(), &BlkOptions::default()).unwrap();

    let data = pattern(21, 256 * 1024);
    c.write(8, &data).unwrap();
    c.flush().unwrap();
    assert_eq!(c.read(8, data.len() as u32).unwrap(), data);
    assert_eq!(host_read(&image, 8, data.len()), data);
    let hostdata = pattern(77, 8192);
    host_write(&image, 4096, &hostdata);
    assert_eq!(c.read(4096, 8192).unwrap(), hostdata);

    let flags = image_fd_flags(d.pid(), &image);
    assert!(!flags.is_empty(), "daemon holds no descriptor on the image");
    for f in flags {
        assert_ne!(
            f & libc::O_DIRECT as u32,
            0,
            "image open without O_DIRECT: {f:o}"
        );
    }
}

#[test]
fn data_split_over_many_small_descriptors() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut opts = BlkOptions::default();
    opts.device.queue_size = 256;
    opts.device.max_indirect = 256;
    opts.max_io = 64 * 1024;
    opts.slots_per_queue = 16;
    let mut c = BlkClient::connect(s.daemon.socket(), &opts).unwrap();
    let mut q = c.queue(0);
    let mem = q.virtqueue().mem().clone();

    // (bytes, descriptors, through an indirect table): 128 x 512 B direct
    // and indirect, and odd pieces whose lengths are not multiples of 512.
    let cases = [
        (64 * 1024, 128, false),
        (64 * 1024, 128, true),
        (4096, 7, false),
        (12 * 1024, 250, true),
    ];
    for (i, &(len, segs, indirect)) in cases.iter().enumerate() {
        let sector = 1024 * i as u64;
        let data = pattern(i as u8 + 50, len as usize);
        q.set_data_segments(segs);
        q.virtqueue().set_force_indirect(indirect);
        let w = run_q(&mut q, Request::Write { sector, len }, Some(&data));
        assert_status_ok(w, 1, &format!("write case {i}"));
        let r = run_q(
            &mut q,
            Request::Read { sector, len },
            Some(&vec![0; len as usize]),
        );
        assert_status_ok(r, len + 1, &format!("read case {i}"));
        assert_eq!(
            mem.read_vec(q.data_addr(r.slot), len as usize).unwrap(),
            data
        );
        assert_eq!(host_read(&s.image, sector, len as usize), data, "case {i}");
    }
}

/// Sequential requests and a batch of 32 with EVENT_IDX on or off; returns
/// the client for checks on the ring.
fn notification_workout(event_idx: bool, indirect: bool) -> (Setup, BlkClient) {
    let s = daemon(&BlkDaemonOpts::default());
    let mut opts = BlkOptions::default();
    opts.device.event_idx = event_idx;
    opts.device.indirect = indirect;
    let mut c = BlkClient::connect(s.daemon.socket(), &opts).unwrap();
    assert_eq!(
        c.device().features() & VIRTIO_RING_F_EVENT_IDX != 0,
        event_idx
    );
    for i in 0..50u64 {
        c.write(i * 8, &pattern(i as u8, 4096)).unwrap();
        assert_eq!(c.read(i * 8, 4096).unwrap(), pattern(i as u8, 4096));
    }
    let mut q = c.queue(0);
    for i in 0..32u64 {
        submit_write(&mut q, 1000 + i, &pattern(i as u8 ^ 0x55, 512));
    }
    let done = kick_and_reap(&mut q, 32);
    assert!(done.iter().all(|d| d.status == status::OK));
    for i in 0..32u64 {
        assert_eq!(
            host_read(&s.image, 1000 + i, 512),
            pattern(i as u8 ^ 0x55, 512)
        );
    }
    let kicks = c.device().queue(0).kicks_sent();
    assert!(
        (1..=101).contains(&kicks),
        "{kicks} kicks for 101 submissions"
    );
    (s, c)
}

#[test]
fn event_idx_on() {
    let (_s, mut c) = notification_workout(true, true);
    // Idle, the device asks to be kicked at the next available index.
    let vq = c.device().queue(0);
    let next = vq.published_avail_idx();
    assert_eq!(next, 50 * 2 + 32);
    assert!(
        poll_until(T, || vq.avail_event().unwrap() == next),
        "avail_event {} != avail idx {next}",
        vq.avail_event().unwrap()
    );
    assert_eq!(vq.used_idx().unwrap(), next);
}

#[test]
fn event_idx_off() {
    let (_s, mut c) = notification_workout(false, false);
    // Idle, the device has notifications enabled again.
    let vq = c.device().queue(0);
    assert!(
        poll_until(T, || vq.used_flags().unwrap() & VRING_USED_F_NO_NOTIFY == 0),
        "used.flags {:#x}: NO_NOTIFY left set while idle",
        vq.used_flags().unwrap()
    );
    assert_eq!(vq.used_idx().unwrap(), vq.published_avail_idx());
    // One more round trip still gets through.
    c.write(0, &pattern(3, 512)).unwrap();
    assert_eq!(c.read(0, 512).unwrap(), pattern(3, 512));
}
