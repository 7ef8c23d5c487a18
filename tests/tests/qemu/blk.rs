//! A real Linux guest (Debian's kernel under QEMU TCG, `vhost-user-blk-pci`)
//! drives our `vhost-blk-daemon`: direct I/O on the raw disk, an ext2
//! filesystem checked on the host with `e2fsck` and `debugfs`, two request
//! queues used from two vCPUs, and a read-only export. Every value the guest
//! reports comes from its serial console and is checked against the host's
//! image file.
//!
//! `VUTEST_BLK_BACKEND=qsd` runs the same tests against qemu-storage-daemon,
//! a backend nobody here wrote, to tell a broken test from a broken daemon
//! (default: `ours`).
//!
//! Needs `scripts/setup.sh` (guest kit, e2fsprogs) and
//! `cargo build --workspace --bins`; anything missing is a failure.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use vu_driver::fixture::find_binary;
use vu_driver::guest::{GuestKit, GuestOutput, QemuGuest};
use vu_driver::image::{pattern, write_at};
use vu_driver::ours::ServedImage;

const DISK_SIZE: u64 = 64 << 20;
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);
/// dd block size of the raw-disk scripts.
const BS: u64 = 64 << 10;

/// A sparse image of `size` bytes, `prepare`d by the host, then served
/// on a socket with `num_queues` request queues (None: the default).
fn disk(
    size: u64,
    num_queues: Option<u16>,
    read_only: bool,
    prepare: impl FnOnce(&Path),
) -> ServedImage {
    ServedImage::new("vutest-guest-blk", size, num_queues, read_only, prepare)
}

/// What the tests do with a served image.
trait Disk {
    fn run_guest(&mut self, what: &str, guest: QemuGuest, script: &str) -> GuestOutput;
    fn read(&self, offset: u64, len: u64) -> Vec<u8>;
}

impl Disk for ServedImage {
    /// Boots a guest with `disk` as `/dev/vda` and `script`, and returns its
    /// output once it passed; the backend must still be serving afterwards.
    fn run_guest(&mut self, what: &str, guest: QemuGuest, script: &str) -> GuestOutput {
        let out = guest
            .script(script)
            .timeout(GUEST_TIMEOUT)
            .run()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        out.expect_pass(what);
        let status = self.daemon.try_wait().unwrap();
        assert_eq!(
            status,
            None,
            "{what}: {} exited while or after the guest ran",
            self.daemon.name()
        );
        out
    }

    fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        read_at(&self.image, offset, len)
    }
}

fn guest() -> QemuGuest {
    QemuGuest::with_kit(GuestKit::locate().unwrap_or_else(|e| panic!("{e}")))
}

fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; usize::try_from(len).unwrap()];
    fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, offset))
        .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", path.display()));
    buf
}

/// A host program from `scripts/setup.sh`'s packages, also looked for in
/// the sbin directories that a user's `$PATH` may lack.
fn host_tool(name: &str) -> PathBuf {
    find_binary(name)
        .or_else(|_| find_binary(&format!("/usr/sbin/{name}")))
        .or_else(|_| find_binary(&format!("/sbin/{name}")))
        .unwrap_or_else(|e| panic!("{e} (scripts/setup.sh installs it)"))
}

/// Runs the host program `name` with `args` (stdin closed) and checks
/// that it exits 0; a failure names `what` and shows the exit status and
/// the program's output.
fn run_host_tool(name: &str, args: &[&OsStr], what: &str) -> Output {
    let out = Command::new(host_tool(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {name}: {e:?}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Shell that reports `vutest-kv KEY <sha256 of FILE>`.
fn report_sha(key: &str, file: &str) -> String {
    format!("vutest-kv {key} \"$(sha256sum <{file} | cut -d' ' -f1)\"\n")
}

fn sha256(data: &[u8]) -> String {
    vu_driver::image::sha256_hex(data).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn guest_dd_direct_4mib_random_matches_the_host_image() {
    // The guest writes 4 MiB at 64 KiB block 131 (not MiB aligned) and
    // reads back a 1 MiB pattern the host put at 32 MiB.
    const SEEK: u64 = 131;
    const COUNT: u64 = 64;
    const HOST_OFF: u64 = 32 << 20;
    const HOST_LEN: u64 = 1 << 20;
    let host_pattern = pattern(7, HOST_LEN as usize);
    let mut disk = disk(DISK_SIZE, None, false, |img| {
        write_at(img, HOST_OFF, &host_pattern)
    });

    let mut script = format!(
        "set -e
vutest-kv sectors \"$(cat /sys/block/vda/size)\"
dd if=/dev/urandom of=/tmp/rand bs={BS} count={COUNT} iflag=fullblock
dd if=/tmp/rand of=/dev/vda bs={BS} seek={SEEK} oflag=direct conv=notrunc,fsync
echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs={BS} skip={SEEK} count={COUNT} iflag=direct
dd if=/dev/vda of=/tmp/host bs={BS} skip={hskip} count={hcount} iflag=direct
vutest-kv readback_size \"$(stat -c %s /tmp/back)\"
",
        hskip = HOST_OFF / BS,
        hcount = HOST_LEN / BS,
    );
    script += &report_sha("written_sha256", "/tmp/rand");
    script += &report_sha("readback_sha256", "/tmp/back");
    script += &report_sha("host_pattern_sha256", "/tmp/host");

    let g = guest().blk(&disk.socket);
    let out = disk.run_guest("dd", g, &script);

    assert_eq!(out.expect_kv("sectors"), (DISK_SIZE / 512).to_string());
    assert_eq!(out.expect_kv("readback_size"), (COUNT * BS).to_string());
    let written = out.expect_kv("written_sha256");
    assert_eq!(written.len(), 64, "written_sha256={written}");
    assert_eq!(out.expect_kv("readback_sha256"), written, "guest read-back");
    // The host's image holds the guest's bytes at the same offset ...
    let offset = SEEK * BS;
    let len = COUNT * BS;
    assert_eq!(sha256(&disk.read(offset, len)), written, "host image");
    // ... and nothing around it was touched.
    assert!(disk.read(offset - BS, BS).iter().all(|&b| b == 0));
    assert!(disk.read(offset + len, BS).iter().all(|&b| b == 0));
    // The guest read what the host wrote.
    assert_eq!(
        out.expect_kv("host_pattern_sha256"),
        sha256(&host_pattern),
        "guest read of the host's pattern"
    );
}

/// Runs `debugfs -R REQUEST IMAGE` on the host and returns its stdout.
fn debugfs(image: &Path, request: &str) -> Vec<u8> {
    let args = ["-R".as_ref(), request.as_ref(), image.as_os_str()];
    let out = run_host_tool("debugfs", &args, &format!("debugfs -R '{request}'"));
    // debugfs reports a missing path on stderr with exit status 0.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("not found") && !stderr.contains("File not found"),
        "debugfs -R '{request}': {stderr}"
    );
    out.stdout
}

#[test]
fn guest_ext2_filesystem_is_readable_by_host_debugfs() {
    const HELLO: &str = "hello from the guest over vhost-user-blk";
    const NUMBERS: u32 = 40_000;
    const RANDOM_KIB: u32 = 1200;
    let mut disk = disk(DISK_SIZE, None, false, |_| {});

    let mut script = format!(
        "set -e
mke2fs -F -L vutest /dev/vda
mount -t ext2 /dev/vda /mnt/disk
vutest-kv fstype \"$(awk '$2 == \"/mnt/disk\" {{ print $3 }}' /proc/mounts)\"
mkdir -p /mnt/disk/dir/sub /mnt/disk/dir/empty
printf '%s\\n' '{HELLO}' >/mnt/disk/hello.txt
seq 1 {NUMBERS} >/mnt/disk/dir/sub/numbers.txt
dd if=/dev/urandom of=/mnt/disk/dir/random.bin bs=1024 count={RANDOM_KIB} iflag=fullblock
"
    );
    script += &report_sha("random_sha256", "/mnt/disk/dir/random.bin");
    script += "umount /mnt/disk
echo 3 >/proc/sys/vm/drop_caches
mount -t ext2 -o ro /dev/vda /mnt/disk
";
    script += &report_sha("remount_sha256", "/mnt/disk/dir/random.bin");
    script += "vutest-kv remount_hello \"$(cat /mnt/disk/hello.txt)\"
umount /mnt/disk
";

    let g = guest().blk(&disk.socket);
    let out = disk.run_guest("ext2", g, &script);
    assert_eq!(out.expect_kv("fstype"), "ext2");
    let random_sha = out.expect_kv("random_sha256");
    assert_eq!(random_sha.len(), 64, "random_sha256={random_sha}");
    assert_eq!(out.expect_kv("remount_sha256"), random_sha);
    assert_eq!(out.expect_kv("remount_hello"), HELLO);

    // The filesystem the guest left behind is consistent ...
    let args = ["-f".as_ref(), "-n".as_ref(), disk.image.as_os_str()];
    run_host_tool("e2fsck", &args, "e2fsck -fn");
    // ... and holds the guest's files with their contents.
    assert_eq!(
        debugfs(&disk.image, "cat /hello.txt"),
        format!("{HELLO}\n").into_bytes()
    );
    let numbers: String = (1..=NUMBERS).map(|n| format!("{n}\n")).collect();
    assert_eq!(
        debugfs(&disk.image, "cat /dir/sub/numbers.txt"),
        numbers.into_bytes()
    );
    let random = debugfs(&disk.image, "cat /dir/random.bin");
    assert_eq!(random.len(), RANDOM_KIB as usize * 1024);
    assert_eq!(sha256(&random), random_sha);
    let listing = String::from_utf8(debugfs(&disk.image, "ls -p /dir")).unwrap();
    // `ls -p`: /inode/mode/uid/gid/name/size/ per entry.
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .collect();
    for want in ["sub", "empty", "random.bin"] {
        assert!(names.contains(&want), "{want} missing in /dir: {listing}");
    }
    let label = String::from_utf8(debugfs(&disk.image, "stats")).unwrap();
    assert!(
        label.contains("Filesystem volume name:   vutest"),
        "{label}"
    );
}

#[test]
fn guest_uses_two_request_queues_one_per_vcpu() {
    // One MiB from each vCPU, at 0 and at 4 MiB; with one hardware queue per
    // CPU each queue carries its CPU's requests and raises its interrupts.
    const COUNT: u64 = 16;
    const STRIDE: u64 = 64;
    let mut disk = disk(DISK_SIZE, Some(2), false, |_| {});

    let mut script = format!(
        "set -e
vutest-kv cpus \"$(nproc)\"
vutest-kv hw_queues \"$(ls /sys/block/vda/mq | wc -l)\"
vutest-kv cpu_list_0 \"$(cat /sys/block/vda/mq/0/cpu_list)\"
vutest-kv cpu_list_1 \"$(cat /sys/block/vda/mq/1/cpu_list)\"
vdev=\"$(basename \"$(readlink /sys/block/vda/device)\")\"
for c in 0 1; do
    dd if=/dev/urandom of=/tmp/r$c bs={BS} count={COUNT} iflag=fullblock
    taskset -c $c dd if=/tmp/r$c of=/dev/vda bs={BS} seek=$((c * {STRIDE})) oflag=direct conv=notrunc,fsync
done
echo 3 >/proc/sys/vm/drop_caches
for c in 0 1; do
    taskset -c $c dd if=/dev/vda of=/tmp/b$c bs={BS} skip=$((c * {STRIDE})) count={COUNT} iflag=direct
    vutest-kv written_sha256_$c \"$(sha256sum </tmp/r$c | cut -d' ' -f1)\"
    vutest-kv readback_sha256_$c \"$(sha256sum </tmp/b$c | cut -d' ' -f1)\"
    vutest-kv irq_req_$c \"$(awk -v q=\"$vdev-req.$c\" '$NF == q {{ s = 0; for (i = 2; i <= NF; i++) {{ if ($i !~ /^[0-9]+$/) break; s += $i }}; print s }}' /proc/interrupts)\"
done
"
    );
    script.push_str("grep -- '-req\\.' /proc/interrupts\n");

    let g = guest().cpus(2).blk_queues(&disk.socket, 2);
    let out = disk.run_guest("two queues", g, &script);

    assert_eq!(out.expect_kv("cpus"), "2");
    assert_eq!(
        out.expect_kv("hw_queues"),
        "2",
        "entries in /sys/block/vda/mq"
    );
    assert_eq!(out.expect_kv("cpu_list_0"), "0");
    assert_eq!(out.expect_kv("cpu_list_1"), "1");
    for c in 0..2u64 {
        let written = out.expect_kv(&format!("written_sha256_{c}"));
        assert_eq!(written.len(), 64);
        assert_eq!(
            out.expect_kv(&format!("readback_sha256_{c}")),
            written,
            "cpu {c}"
        );
        let host = disk.read(c * STRIDE * BS, COUNT * BS);
        assert_eq!(sha256(&host), written, "host image, cpu {c}");
        let irqs: u64 = out
            .expect_kv(&format!("irq_req_{c}"))
            .parse()
            .unwrap_or_else(|e| panic!("irq_req_{c}: {e}; console:\n{}", out.console_text()));
        assert!(irqs > 0, "no interrupt on request queue {c}");
    }
}

#[test]
fn guest_cannot_write_a_read_only_export() {
    const SIZE: u64 = 16 << 20;
    const LEN: u64 = 1 << 20;
    let data = pattern(42, LEN as usize);
    let mut disk = disk(SIZE, None, true, |img| write_at(img, 0, &data));
    let before = disk.read(0, SIZE);

    let script = format!(
        "vutest-kv ro \"$(cat /sys/block/vda/ro)\"
vutest-kv sectors \"$(cat /sys/block/vda/size)\"
dd if=/dev/vda of=/tmp/before bs={BS} count={count} iflag=direct
dd if=/dev/urandom of=/tmp/rand bs={BS} count={count} iflag=fullblock
if dd if=/tmp/rand of=/dev/vda bs={BS} oflag=direct conv=notrunc,fsync; then rc=0; else rc=$?; fi
vutest-kv direct_write_rc $rc
if dd if=/tmp/rand of=/dev/vda bs={BS} seek={count} conv=notrunc,fsync; then rc=0; else rc=$?; fi
vutest-kv buffered_write_rc $rc
echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/after bs={BS} count={count} iflag=direct
{before}{after}",
        count = LEN / BS,
        before = report_sha("before_sha256", "/tmp/before"),
        after = report_sha("after_sha256", "/tmp/after"),
    );

    let g = guest().blk(&disk.socket);
    let out = disk.run_guest("read-only", g, &script);

    assert_eq!(out.expect_kv("ro"), "1", "/sys/block/vda/ro");
    assert_eq!(out.expect_kv("sectors"), (SIZE / 512).to_string());
    assert_ne!(
        out.expect_kv("direct_write_rc"),
        "0",
        "O_DIRECT write succeeded"
    );
    assert_ne!(
        out.expect_kv("buffered_write_rc"),
        "0",
        "buffered write succeeded"
    );
    let want = sha256(&data);
    assert_eq!(
        out.expect_kv("before_sha256"),
        want,
        "guest read of the image"
    );
    assert_eq!(
        out.expect_kv("after_sha256"),
        want,
        "guest read after the writes"
    );
    assert!(disk.read(0, SIZE) == before, "the read-only image changed");
}
