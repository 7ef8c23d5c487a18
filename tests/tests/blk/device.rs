//! Our `vhost-blk-daemon` as a device, checked against the behaviour
//! contract (`notes/blk-spec.md`): GET_ID, the config space, SET_CONFIG,
//! the feature bits offered, and a read-only disk's refusals.
//!
//! Data paths are in `io.rs`, malformed rings in
//! `malformed.rs`.

use std::fs;

use vhost::vhost_user::VhostUserProtocolFeatures;
use vu_driver::blk::raw::RequestBuilder;
use vu_driver::blk::{features, req, status, BlkClient, BlkOptions, Request, SECTOR_SIZE};
use vu_driver::device::{
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use vu_driver::fixture::{create_sparse_image, TempDir};
use vu_driver::ours::{vhost_blk_daemon, BlkDaemonOpts};

use crate::common::*;

/// GET_ID into a buffer of `len` bytes preset to 0xee; returns
/// (used_len, status, buffer).
fn get_id_raw(c: &mut BlkClient, len: u32) -> (u32, u8, Vec<u8>) {
    let mem = c.device().mem().clone();
    let r = RequestBuilder::new(&mem)
        .header(req::GET_ID, 0)
        .unwrap()
        .writable(len, 0xee)
        .unwrap()
        .status()
        .unwrap()
        .build();
    let done = r.run(c.device().queue(0), T).unwrap();
    (
        done.used_len,
        done.status,
        r.writable_data(&mem, 0).unwrap(),
    )
}

fn padded(id: &[u8]) -> Vec<u8> {
    let mut v = id.to_vec();
    v.resize(20, 0);
    v
}

#[test]
fn get_id_defaults_to_the_image_name_truncated_to_20_bytes() {
    let s = daemon_with(
        "a-rather-long-image-name-for-get-id.raw",
        IMAGE_SIZE,
        &BlkDaemonOpts::default(),
    );
    let mut c = connect(&s);
    assert_eq!(
        get_id_raw(&mut c, 20),
        (21, status::OK, b"a-rather-long-image-".to_vec())
    );
    assert_eq!(c.get_id().unwrap(), "a-rather-long-image-");
}

#[test]
fn get_id_of_a_short_name_is_nul_padded() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    assert_eq!(
        get_id_raw(&mut c, 20),
        (21, status::OK, padded(b"disk.img"))
    );
    // A buffer shorter than the id gets what fits.
    assert_eq!(get_id_raw(&mut c, 4), (5, status::OK, b"disk".to_vec()));
}

#[test]
fn get_id_uses_serial() {
    let s = daemon(&BlkDaemonOpts {
        serial: Some("serial-1234".into()),
        ..BlkDaemonOpts::default()
    });
    let mut c = connect(&s);
    assert_eq!(
        get_id_raw(&mut c, 20),
        (21, status::OK, padded(b"serial-1234"))
    );
    let s = daemon(&BlkDaemonOpts {
        serial: Some("ABCDEFGHIJ0123456789".into()),
        ..BlkDaemonOpts::default()
    });
    let mut c = connect(&s);
    assert_eq!(c.get_id().unwrap(), "ABCDEFGHIJ0123456789");
}

#[test]
fn config_space_defaults() {
    // Not a whole number of 4 KiB blocks: capacity counts 512-byte blocks.
    let size = IMAGE_SIZE + 3584;
    let s = daemon_with("disk.img", size, &BlkDaemonOpts::default());
    let mut c = connect(&s);
    let cfg = c.config().unwrap();
    assert_eq!(cfg.capacity, size / SECTOR_SIZE);
    assert_eq!(cfg.blk_size, 512);
    assert_eq!(cfg.seg_max, 1024 - 2);
    assert_eq!(cfg.physical_block_exp, 0);
    assert_eq!(cfg.min_io_size, 1);
    assert_eq!(cfg.opt_io_size, 0);
    assert_eq!(cfg.writeback, 0);
    assert_eq!(cfg.num_queues, 1);
    assert_eq!(cfg.max_discard_sectors, MAX_DWZ_SECTORS);
    assert_eq!(cfg.max_discard_seg, MAX_DWZ_SEG);
    assert_eq!(cfg.discard_sector_alignment, 1);
    assert_eq!(cfg.max_write_zeroes_sectors, MAX_DWZ_SECTORS);
    assert_eq!(cfg.max_write_zeroes_seg, MAX_DWZ_SEG);
    assert_eq!(cfg.write_zeroes_may_unmap, 1);
    assert_eq!(c.device().max_queues(), Some(1));

    // Raw bytes: alignment_offset (25) is 0, and everything past byte 60 reads as zero.
    let raw = c.device().get_config(0, 64).unwrap();
    assert_eq!(raw.len(), 64);
    assert_eq!(raw[25], 0, "alignment_offset");
    assert_eq!(&raw[60..], &[0u8; 4], "bytes beyond 60");
    assert_eq!(c.device().get_config(64, 32).unwrap(), vec![0u8; 32]);
    // A partial read at an offset agrees with the full one.
    assert_eq!(c.device().get_config(20, 4).unwrap(), &raw[20..24]);
}

#[test]
fn config_space_with_4k_blocks_queue_size_and_four_queues() {
    let size = IMAGE_SIZE + 3584;
    let s = daemon_with(
        "disk.img",
        size,
        &BlkDaemonOpts {
            logical_block_size: Some(4096),
            queue_size: Some(256),
            num_queues: Some(4),
            ..BlkDaemonOpts::default()
        },
    );
    let mut c = connect(&s);
    let cfg = c.config().unwrap();
    assert_eq!(
        cfg.capacity,
        IMAGE_SIZE / SECTOR_SIZE,
        "rounded down to 4 KiB"
    );
    assert_eq!(cfg.blk_size, 4096);
    assert_eq!(cfg.seg_max, 254);
    assert_eq!(cfg.num_queues, 4);
    assert_eq!(cfg.discard_sector_alignment, 8);
    assert_eq!(cfg.physical_block_exp, 0);
    assert_eq!(cfg.min_io_size, 1);
    assert_eq!(c.device().max_queues(), Some(4));
    assert!(c.device().has_feature(features::BLK_SIZE));

    let data = pattern(8, 4096);
    c.write(8, &data).unwrap();
    assert_eq!(c.read(8, 4096).unwrap(), data);
    assert_eq!(host_read(&s.image, 8, 4096), data);
}

#[test]
fn set_config_is_refused() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    let before = c.config().unwrap();
    let err = c.device().set_config(0, &[0xff; 8]);
    assert!(err.is_err(), "SET_CONFIG was acked as success");
    drop(c);
    // Nothing changed, as seen by a fresh connection.
    let mut c = connect(&s);
    assert_eq!(c.config().unwrap(), before);
    assert_eq!(c.config().unwrap().capacity, IMAGE_SIZE / SECTOR_SIZE);
}

/// Device feature bits (0..24) the contract lists for a writable device.
const RW_DEVICE_FEATURES: u64 = (1 << features::SEG_MAX)
    | (1 << features::BLK_SIZE)
    | (1 << features::FLUSH)
    | (1 << features::TOPOLOGY)
    | (1 << features::MQ)
    | (1 << features::DISCARD)
    | (1 << features::WRITE_ZEROES);
const TRANSPORT_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES;

#[test]
fn features_offered() {
    let s = daemon(&BlkDaemonOpts::default());
    let mut c = connect(&s);
    let offered = c.device().offered_features();
    assert_eq!(offered & 0x00ff_ffff, RW_DEVICE_FEATURES, "{offered:#x}");
    assert_eq!(
        offered & TRANSPORT_FEATURES,
        TRANSPORT_FEATURES,
        "{offered:#x}"
    );
    assert_eq!(
        c.device().protocol_features(),
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    );
}

#[test]
fn features_offered_read_only() {
    let s = daemon(&BlkDaemonOpts {
        read_only: true,
        ..BlkDaemonOpts::default()
    });
    let mut c = connect(&s);
    let offered = c.device().offered_features();
    let want = (RW_DEVICE_FEATURES & !(1 << features::DISCARD) & !(1 << features::WRITE_ZEROES))
        | (1 << features::RO);
    assert_eq!(offered & 0x00ff_ffff, want, "{offered:#x}");
    assert_eq!(
        offered & TRANSPORT_FEATURES,
        TRANSPORT_FEATURES,
        "{offered:#x}"
    );
    assert!(c.device().has_feature(features::RO));
}

#[test]
fn read_only_refuses_writes_discard_and_write_zeroes() {
    let dir = TempDir::new("blk-daemon").unwrap();
    let image = dir.join("ro.img");
    create_sparse_image(&image, IMAGE_SIZE).unwrap();
    let data = pattern(42, 64 * 1024);
    host_write(&image, 0, &data);
    let blocks = host_blocks(&image);
    let opts = BlkDaemonOpts {
        read_only: true,
        ..BlkDaemonOpts::default()
    };
    let d = vhost_blk_daemon(&image, &dir.join("blk.sock"), &opts).unwrap();
    let mut c = BlkClient::connect(d.socket(), &BlkOptions::default()).unwrap();

    let done = write_req(&mut c, 0, &pattern(1, 4096));
    assert_status(done, status::IOERR, "write");
    let done = run(
        &mut c,
        Request::Discard {
            sector: 0,
            num_sectors: 8,
        },
    );
    assert_status(done, status::IOERR, "discard");
    for unmap in [false, true] {
        let wz = Request::WriteZeroes {
            sector: 8,
            num_sectors: 8,
            unmap,
        };
        assert_status(run(&mut c, wz), status::IOERR, "write-zeroes");
    }
    // Reads, flush and GET_ID still work.
    assert_eq!(c.read(0, data.len() as u32).unwrap(), data);
    assert_status_ok(run(&mut c, Request::Flush), 1, "flush");
    assert_eq!(c.get_id().unwrap(), "ro.img");
    assert_eq!(host_read(&image, 0, data.len()), data);
    assert_eq!(host_blocks(&image), blocks);
    assert_eq!(fs::metadata(&image).unwrap().len(), IMAGE_SIZE);
}
