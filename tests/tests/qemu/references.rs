//! A real Linux guest (Debian's kernel under QEMU TCG) as a third-party
//! frontend of the reference backends: QEMU's C virtiofsd and
//! qemu-storage-daemon. This checks the guest test kit end to end; the same
//! kit drives our own daemons in other tests.
//!
//! Needs `scripts/setup.sh` to have run; without the kit these tests fail
//! (CI runs setup first, so a missing kit is a real error).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use vu_driver::fixture::{create_sparse_image, Daemon, QsdOpts, TempDir};
use vu_driver::guest::{GuestError, GuestKit, GuestStatus, QemuGuest, ScriptTransport};

const DISK_SIZE: u64 = 64 << 20;
/// Where the guest writes its pattern on /dev/vda, in 4 KiB blocks.
const PATTERN_BLOCK: u64 = 1024;
const PATTERN_LEN: usize = 1 << 20;
const PATTERN_LINE: &str = "vutest-pattern-0123456789\n";
const GUEST_TEXT: &str = "written by the guest over virtio-fs: 0xC0FFEE";

fn kit() -> GuestKit {
    GuestKit::locate().unwrap_or_else(|e| panic!("{e}"))
}

/// The bytes `yes vutest-pattern-0123456789 | head -c 1048576` produces.
fn expected_pattern() -> Vec<u8> {
    PATTERN_LINE
        .as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(PATTERN_LEN)
        .collect()
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", path.display()));
    buf
}

#[test]
fn guest_uses_c_virtiofsd_share_and_qsd_disk() {
    let kit = kit();
    let tmp = TempDir::new("vutest-guest-qemu").unwrap();
    let share = tmp.join("share");
    fs::create_dir(&share).unwrap();
    let host_text = format!("created by the host, pid {}", std::process::id());
    fs::write(share.join("from-host.txt"), &host_text).unwrap();
    let image = tmp.join("disk.img");
    create_sparse_image(&image, DISK_SIZE).unwrap();

    let fs_sock = tmp.join("fs.sock");
    let blk_sock = tmp.join("blk.sock");
    let _virtiofsd = Daemon::c_virtiofsd(&share, &fs_sock, &[]).unwrap();
    let _qsd = Daemon::qemu_storage_daemon_blk(&image, &blk_sock, &QsdOpts::default()).unwrap();

    let script = format!(
        r#"set -e
printf '%s' '{GUEST_TEXT}' > "$VUTEST_FS/from-guest.txt"
vutest-kv host_text "$(cat "$VUTEST_FS/from-host.txt")"
vutest-kv disk_sectors "$(cat /sys/block/vda/size)"
yes '{line}' | head -c {PATTERN_LEN} > /tmp/pattern
dd if=/tmp/pattern of=/dev/vda bs=4096 seek={PATTERN_BLOCK} conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/readback bs=4096 skip={PATTERN_BLOCK} count={blocks} iflag=direct 2>/dev/null
vutest-kv pattern_md5 "$(md5sum < /tmp/pattern | cut -d' ' -f1)"
vutest-kv readback_md5 "$(md5sum < /tmp/readback | cut -d' ' -f1)"
cmp /tmp/pattern /tmp/readback
"#,
        line = PATTERN_LINE.trim_end(),
        blocks = PATTERN_LEN / 4096,
    );

    let out = QemuGuest::with_kit(kit)
        .fs(&fs_sock, "kataShared")
        .blk(&blk_sock)
        .memory_mib(512)
        .script(&script)
        .script_transport(ScriptTransport::Cmdline)
        .timeout(Duration::from_secs(180))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest boot+script+poweroff took {:?}, QEMU {}",
        out.duration, out.qemu_status
    );
    out.ensure_pass().unwrap_or_else(|e| panic!("{e}"));

    // The guest read the host's file through the share.
    assert_eq!(out.kv("host_text"), Some(host_text.as_str()));
    // The host sees the guest's file with the right bytes.
    let written = fs::read(share.join("from-guest.txt")).expect("guest file on the share");
    assert_eq!(written, GUEST_TEXT.as_bytes());
    // The disk has the image's size, and the pattern read back intact.
    assert_eq!(
        out.kv("disk_sectors"),
        Some(&*(DISK_SIZE / 512).to_string())
    );
    assert!(out.kv("pattern_md5").is_some_and(|m| m.len() == 32));
    assert_eq!(out.kv("pattern_md5"), out.kv("readback_md5"));
    // The host reads the pattern from the image at the right offset, with
    // zeros (never written) just before it.
    let offset = PATTERN_BLOCK * 4096;
    assert_eq!(read_at(&image, offset, PATTERN_LEN), expected_pattern());
    assert!(read_at(&image, offset - 4096, 4096).iter().all(|&b| b == 0));
}

#[test]
fn failing_long_script_reports_its_exit_code_and_values() {
    // Too long for the kernel command line: it goes on a script disk.
    let mut script =
        String::from("vutest-kv stage before-exit\nvutest-kv kernel \"$(uname -r)\"\n");
    for i in 0..200 {
        script.push_str(&format!(
            "# padding line {i} to exceed the command line limit\n"
        ));
    }
    script.push_str("exit 7\n");
    assert!(script.len() > 4096);

    let kit = kit();
    let kernel_version = kit.kernel_version.clone();
    let out = QemuGuest::with_kit(kit)
        .script(&script)
        .timeout(Duration::from_secs(120))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let result = out.result.unwrap_or_else(|| {
        panic!(
            "no result line; stderr: {}\nconsole:\n{}",
            out.qemu_stderr,
            out.console_text()
        )
    });
    assert_eq!(result.status, GuestStatus::Fail);
    assert_eq!(result.exit_code, 7);
    assert_eq!(out.kv("stage"), Some("before-exit"));
    assert_eq!(out.kv("kernel"), Some(kernel_version.as_str()));
    assert!(out.ensure_pass().is_err());
}

#[test]
fn script_from_share_runs() {
    let kit = kit();
    let tmp = TempDir::new("vutest-guest-share").unwrap();
    let share = tmp.join("share");
    fs::create_dir(&share).unwrap();
    let fs_sock = tmp.join("fs.sock");
    let _virtiofsd = Daemon::c_virtiofsd(&share, &fs_sock, &[]).unwrap();

    let out = QemuGuest::with_kit(kit)
        .fs(&fs_sock, "scripts")
        .script("vutest-kv mounted \"$(grep -c ' /mnt/fs virtiofs ' /proc/mounts)\"\n")
        .script_transport(ScriptTransport::Share(share.clone()))
        .timeout(Duration::from_secs(120))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.ensure_pass().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.kv("mounted"), Some("1"));
    assert!(share.join("vutest.sh").is_file());
}

#[test]
fn hung_guest_is_killed_at_the_timeout() {
    // The guest's own script timeout is raised (a later parameter wins), so
    // the host has to kill QEMU. The timeout counts from QEMU's start and
    // the guest must reach its script before it: Debian's kernel boots in
    // ~5 s under TCG on an idle machine, but took over 12 s (the earlier
    // value) on a loaded CI machine, so the test waits 90 s.
    let timeout = Duration::from_secs(90);
    let err = QemuGuest::with_kit(kit())
        .cmdline_arg("vutest.timeout=100000")
        .script("vutest-kv sleeping 1\nsleep 1000\n")
        .timeout(timeout)
        .run()
        .expect_err("a guest that never finishes must time out");
    let msg = err.to_string();
    assert!(
        matches!(err, GuestError::Timeout { timeout: t, .. } if t == timeout),
        "{msg}"
    );
    assert!(msg.contains("did not finish"), "{msg}");
    // It hung in the script, not earlier.
    assert!(msg.contains("VUTEST-KV sleeping=1"), "{msg}");
}
