//! The userspace driver against qemu-storage-daemon's vhost-user-blk export,
//! a backend nobody here wrote. Every data check is also made on the host
//! image file.

use std::fs;
use std::os::unix::fs::FileExt;

use vu_driver::blk::{features, status, BlkClient, BlkError, BlkOptions, Request, SECTOR_SIZE};
use vu_driver::device::VIRTIO_RING_F_EVENT_IDX;
use vu_driver::fixture::{create_sparse_image, Daemon, QsdOpts, TempDir};

use crate::common::{kick_and_reap, pattern, submit_write, IMAGE_SIZE, T};

struct Setup {
    _dir: TempDir,
    image: std::path::PathBuf,
    daemon: Daemon,
}

fn qsd(opts: QsdOpts) -> Setup {
    let dir = TempDir::new("blk-qsd").unwrap();
    let image = dir.join("disk.img");
    create_sparse_image(&image, IMAGE_SIZE).unwrap();
    let socket = dir.join("blk.sock");
    let daemon = Daemon::qemu_storage_daemon_blk(&image, &socket, &opts).unwrap();
    Setup {
        _dir: dir,
        image,
        daemon,
    }
}

#[test]
fn write_read_flush_get_id_and_config() {
    let s = qsd(QsdOpts::default());
    let mut c = BlkClient::connect(s.daemon.socket(), &BlkOptions::default()).unwrap();

    let cfg = c.config().unwrap();
    assert_eq!(cfg.capacity, IMAGE_SIZE / SECTOR_SIZE);
    assert_eq!(cfg.blk_size, 512);
    assert!(c.device().has_feature(features::FLUSH));
    assert!(!c.device().has_feature(features::RO));

    let data = pattern(7, 64 * 1024);
    c.write(100, &data).unwrap();
    c.flush().unwrap();
    assert_eq!(c.read(100, data.len() as u32).unwrap(), data);

    // The host sees the same bytes at the same offset.
    let mut host = vec![0u8; data.len()];
    fs::File::open(&s.image)
        .unwrap()
        .read_exact_at(&mut host, 100 * SECTOR_SIZE)
        .unwrap();
    assert_eq!(host, data);

    // And the guest sees what the host wrote.
    let hostdata = pattern(99, 4096);
    fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap()
        .write_all_at(&hostdata, 8192 * SECTOR_SIZE)
        .unwrap();
    assert_eq!(c.read(8192, 4096).unwrap(), hostdata);

    let id = c.get_id().unwrap();
    assert!(!id.is_empty() && id.len() <= 20, "id {id:?}");
}

#[test]
fn discard_and_write_zeroes_zero_the_range() {
    let s = qsd(QsdOpts::default());
    let mut c = BlkClient::connect(s.daemon.socket(), &BlkOptions::default()).unwrap();
    assert!(c.device().has_feature(features::WRITE_ZEROES));
    let data = pattern(3, 32 * 1024);
    c.write(2048, &data).unwrap();
    c.write_zeroes(2048 + 8, 16, false).unwrap();
    let back = c.read(2048, data.len() as u32).unwrap();
    assert_eq!(&back[..4096], &data[..4096]);
    assert!(back[4096..4096 + 8192].iter().all(|&b| b == 0));
    assert_eq!(&back[12288..], &data[12288..]);
    if c.device().has_feature(features::DISCARD) {
        c.discard(2048, 64).unwrap();
    }
}

#[test]
fn bad_requests_get_error_status_and_device_keeps_serving() {
    let s = qsd(QsdOpts::default());
    let mut c = BlkClient::connect(s.daemon.socket(), &BlkOptions::default()).unwrap();
    let end = IMAGE_SIZE / SECTOR_SIZE;
    let err = c.read(end, 4096).unwrap_err();
    assert!(
        matches!(
            err,
            BlkError::Status {
                status: status::IOERR,
                ..
            }
        ),
        "{err}"
    );
    let err = c
        .queue(0)
        .execute(
            Request::Raw {
                type_: 0x7777,
                sector: 0,
            },
            T,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            BlkError::Status {
                status: status::UNSUPP,
                ..
            }
        ),
        "{err}"
    );
    // Still serving.
    c.write(0, &pattern(1, 512)).unwrap();
    assert_eq!(c.read(0, 512).unwrap(), pattern(1, 512));
}

#[test]
fn read_only_export_refuses_writes() {
    let s = qsd(QsdOpts {
        read_only: true,
        ..QsdOpts::default()
    });
    let mut c = BlkClient::connect(s.daemon.socket(), &BlkOptions::default()).unwrap();
    assert!(c.device().has_feature(features::RO));
    let err = c.write(0, &[0xaa; 512]).unwrap_err();
    assert!(matches!(err, BlkError::Status { .. }), "{err}");
    assert_eq!(c.read(0, 512).unwrap(), vec![0u8; 512]);
    let mut host = [0u8; 512];
    fs::File::open(&s.image)
        .unwrap()
        .read_exact_at(&mut host, 0)
        .unwrap();
    assert_eq!(host, [0u8; 512]);
}

#[test]
fn queue_depth_32_on_two_queues_with_fragmented_indirect_buffers() {
    let s = qsd(QsdOpts {
        num_queues: 2,
        ..QsdOpts::default()
    });
    let mut opts = BlkOptions::default();
    opts.device.num_queues = 2;
    opts.max_io = 64 * 1024;
    let mut c = BlkClient::connect(s.daemon.socket(), &opts).unwrap();
    assert_eq!(c.config().unwrap().num_queues, 2);
    assert_eq!(c.device().max_queues(), Some(2));

    // Each queue writes 32 distinct 4 KiB blocks at once, split into 3
    // descriptors each and sent through indirect tables.
    std::thread::scope(|scope| {
        for (qi, mut q) in c.queues().into_iter().enumerate() {
            scope.spawn(move || {
                q.set_data_segments(3);
                q.virtqueue().set_force_indirect(true);
                for i in 0..32u64 {
                    let sector = (qi as u64 * 32 + i) * 8;
                    submit_write(&mut q, sector, &pattern(sector as u8, 4096));
                }
                let done = kick_and_reap(&mut q, 32);
                assert!(done.iter().all(|d| d.status == status::OK));
            });
        }
    });
    for i in 0..64u64 {
        assert_eq!(c.read(i * 8, 4096).unwrap(), pattern((i * 8) as u8, 4096));
    }
}

#[test]
fn without_event_idx_every_kick_is_sent() {
    let s = qsd(QsdOpts::default());
    let mut opts = BlkOptions::default();
    opts.device.event_idx = false;
    opts.device.indirect = false;
    let mut c = BlkClient::connect(s.daemon.socket(), &opts).unwrap();
    assert_eq!(c.device().features() & VIRTIO_RING_F_EVENT_IDX, 0);
    for i in 0..10u64 {
        c.write(i, &pattern(i as u8, 512)).unwrap();
    }
    assert_eq!(c.device().queue(0).kicks_sent(), 10);
    for i in 0..10u64 {
        assert_eq!(c.read(i, 512).unwrap(), pattern(i as u8, 512));
    }
}
