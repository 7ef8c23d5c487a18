//! vhost-blk-daemon on a block device (a loop device over a file the test
//! creates, set up with losetup from util-linux): reads and writes reach the
//! device, capacity comes from the device's size, and DISCARD and
//! WRITE_ZEROES go through BLKDISCARD / BLKZEROOUT and read back as zeros.

use std::path::PathBuf;
use std::process::Command;

use vu_driver::blk::{BlkClient, BlkOptions, SECTOR_SIZE};
use vu_driver::fixture::{create_sparse_image, find_binary, TempDir};
use vu_driver::ours::{vhost_blk_daemon, BlkDaemonOpts};

/// A loop device over a file, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &std::path::Path) -> Loop {
        let losetup = find_binary("losetup").unwrap();
        let out = Command::new(losetup)
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup --find --show {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn a_loop_device_is_served_like_a_file() {
    let dir = TempDir::new("vutest-blk-loopdev").unwrap();
    let backing = dir.join("backing.img");
    create_sparse_image(&backing, 16 << 20).unwrap();
    let dev = Loop::attach(&backing);
    let d = vhost_blk_daemon(&dev.0, &dir.join("blk.sock"), &BlkDaemonOpts::default()).unwrap();
    let mut c = BlkClient::connect(d.socket(), &BlkOptions::default()).unwrap();
    assert_eq!(c.config().unwrap().capacity * SECTOR_SIZE, 16 << 20);

    let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8 | 1).collect();
    c.write(2048, &data).unwrap();
    c.flush().unwrap();
    assert_eq!(c.read(2048, data.len() as u32).unwrap(), data);
    let on_file = std::fs::read(&backing).unwrap();
    assert_eq!(
        &on_file[2048 * 512..2048 * 512 + data.len()],
        &data[..],
        "the write did not reach the device"
    );

    // BLKZEROOUT and BLKDISCARD through the device.
    c.write_zeroes(2048, 32, false).unwrap();
    c.discard(2080, 32).unwrap();
    c.flush().unwrap();
    assert_eq!(c.read(2048, 16384).unwrap(), vec![0u8; 16384]);
    assert_eq!(
        c.read(2080, 16384).unwrap(),
        vec![0u8; 16384],
        "a discarded loop range must read as zeros"
    );
    assert_eq!(
        c.read(2112, 512).unwrap(),
        data[32768..33280].to_vec(),
        "data after the ranges is untouched"
    );
    // Past the end of the device.
    assert!(c.read(32768, 512).is_err());
    drop(c);
    assert!(
        d.log_contents().contains("Block"),
        "the daemon did not see a block device:\n{}",
        d.log_contents()
    );
}
