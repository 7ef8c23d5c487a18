//! A real Linux guest (Debian's kernel under QEMU TCG, `vhost-user-fs-pci`)
//! mounts tag `kataShared` from our `virtiofsd` (contract:
//! /work/notes/fs-spec.md) and works on the share with busybox and
//! Debian's `setfattr`/`getfattr`; the host then checks the same bytes,
//! names, modes, owners and extended attributes in the shared directory.
//! Also: files the host changes while the guest runs (cache=never and
//! cache=auto), and a second guest served by the same daemon process after
//! the first one powered off.
//!
//! The daemon runs with its defaults otherwise: the namespace sandbox and
//! the seccomp filter that kills.
//!
//! The host reacts to lines the guest prints on its serial console; nothing
//! waits a fixed time. Needs `scripts/setup.sh` and
//! `cargo build --workspace --bins`; anything missing is a failure.
//!
//! `VUTEST_FS_BACKEND=c` runs the same guests against QEMU's C virtiofsd,
//! a backend nobody here wrote, to tell a broken test from a broken daemon
//! (default: `ours`). The C virtiofsd serves one frontend and then exits, so
//! the second-guest test cannot pass against it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vu_driver::fixture::{find_binary, Daemon, TempDir};
use vu_driver::fs::host::{lgetxattr, lsetxattr};
use vu_driver::guest::{GuestKit, GuestOutput, QemuGuest};
use vu_driver::ours::{reference_backend, virtiofsd};

const TAG: &str = "kataShared";
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);
/// Files the guest creates in one directory and lists.
const MANY: usize = 5000;
/// The line the guest prints when the host should change the share.
const REWRITE_NOW: &str = "VUTEST-HOST-REWRITE-NOW";

const BACKEND_ENV: &str = "VUTEST_FS_BACKEND";

/// A directory served by our virtiofsd (or QEMU's C one, see
/// [`BACKEND_ENV`]) in its own temporary directory.
struct Share {
    _dir: TempDir,
    root: PathBuf,
    daemon: Daemon,
    /// Ours serves the next frontend after one left; QEMU's C one exits.
    serves_again: bool,
}

impl Share {
    /// An empty share, `prepare`d by the host, then served with
    /// `--cache=CACHE` and, if `xattr`, `--xattr`.
    fn new(cache: &str, xattr: bool, prepare: impl FnOnce(&Path)) -> Share {
        let dir = TempDir::new("vutest-guest-fs").unwrap();
        let root = dir.join("share");
        fs::create_dir(&root).unwrap();
        prepare(&root);
        let socket = dir.join("fs.sock");
        let c_virtiofsd = reference_backend(BACKEND_ENV, "c");
        let daemon = if c_virtiofsd {
            let cache = format!("cache={}", if cache == "never" { "none" } else { cache });
            let mut args = vec!["-o", &cache];
            if xattr {
                args.extend(["-o", "xattr"]);
            }
            Daemon::c_virtiofsd(&root, &socket, &args)
        } else {
            // The default sandbox (namespace) and seccomp filter (kill).
            let cache = format!("--cache={cache}");
            let mut args = vec![cache.as_str()];
            if xattr {
                args.push("--xattr");
            }
            virtiofsd(&root, &socket, &args)
        };
        let daemon = daemon.unwrap_or_else(|e| panic!("{e}"));
        Share {
            _dir: dir,
            root,
            daemon,
            serves_again: !c_virtiofsd,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Boots a guest that mounts the share at `$VUTEST_FS` and runs
    /// `script`, calling `on_line` with each console line; returns its
    /// output once it passed. The daemon must still be serving afterwards.
    fn run_guest(&mut self, what: &str, script: &str, on_line: impl FnMut(&str)) -> GuestOutput {
        let kit = GuestKit::locate().unwrap_or_else(|e| panic!("{e}"));
        let out = QemuGuest::with_kit(kit)
            .fs(self.daemon.socket(), TAG)
            .script(script)
            .timeout(GUEST_TIMEOUT)
            .run_watching(on_line)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        out.expect_pass(what);
        let status = self.daemon.try_wait().unwrap();
        assert!(
            status.is_none() || !self.serves_again,
            "{what}: {} exited while or after the guest ran",
            self.daemon.name()
        );
        assert!(
            !self.daemon.log_contents().contains("panicked"),
            "{what}: virtiofsd panicked:\n{}",
            self.daemon.log_contents()
        );
        out
    }
}

/// The hex SHA-256 of a host file, by the host's `sha256sum`.
fn sha256_file(path: &Path) -> String {
    let tool = find_binary("sha256sum").unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(tool)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("spawn sha256sum");
    assert!(
        out.status.success(),
        "sha256sum {}: {}",
        path.display(),
        out.status
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(hex.len(), 64, "sha256sum printed {text:?}");
    hex
}

/// Changes the owner of `path` (the test runs as root, like the daemon).
fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// What `seq 1 N` prints.
fn seq(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

const HOST_TEXT: &str = "written by the host before the guest booted";
const HOST_XATTR: &str = "set by the host";
const GUEST_XATTR: &str = "xattr value from the guest";

/// The script of [`guest_file_operations_match_the_host`]. `step NAME`
/// reports how far it got, so a failure names the operation.
fn operations_script() -> String {
    format!(
        r#"set -e
step() {{ vutest-kv step "$1"; }}
cd "$VUTEST_FS"
step create-write-read
printf 'hello virtio-fs\n' > created.txt
vutest-kv read "$(cat created.txt)"
step append
printf 'appended line\n' >> created.txt
vutest-kv lines "$(wc -l < created.txt)"
step truncate
seq 1 10000 > truncated.txt
truncate -s 1000 truncated.txt
: > grown.bin
truncate -s 70000 grown.bin
vutest-kv truncated_size "$(stat -c %s truncated.txt)"
step rename
printf 'moving\n' > before-rename.txt
mv before-rename.txt after-rename.txt
mkdir -p dir/sub
mv after-rename.txt dir/sub/renamed.txt
step unlink
printf 'x' > doomed.txt
rm doomed.txt
[ ! -e doomed.txt ]
step mkdir-rmdir
mkdir gone-dir
rmdir gone-dir
[ ! -e gone-dir ]
mkdir kept-dir
step umask
(umask 000; printf 'open to all\n' > umask0.txt; mkdir umask0-dir)
step readdir
mkdir many
i=0
while [ $i -lt {MANY} ]; do : > many/f$i; i=$((i + 1)); done
vutest-kv many_ls "$(ls many | wc -l)"
vutest-kv many_ls_big_a "$(ls -A many | wc -l)"
vutest-kv many_ls_a "$(ls -a many | wc -l)"
vutest-kv many_find "$(find many -type f | wc -l)"
vutest-kv many_sorted_last "$(ls many | sort -t f -k 2 -n | tail -n 1)"
step symlink
ln -s dir/sub/renamed.txt link-to-renamed
vutest-kv readlink "$(readlink link-to-renamed)"
vutest-kv via_link "$(cat link-to-renamed)"
step hardlink
printf 'linked\n' > hard-a
ln hard-a hard-b
vutest-kv hard_nlink "$(stat -c %h hard-b)"
[ "$(stat -c %i hard-a)" = "$(stat -c %i hard-b)" ]
step chmod
printf 'mode\n' > modes.txt
chmod 0604 modes.txt
chmod 0711 kept-dir
chmod 4755 hard-a
step chown
chown 1234:5678 modes.txt
chown 4321 hard-b
vutest-kv modes_stat "$(stat -c '%a %u %g' modes.txt)"
vutest-kv hard_stat "$(stat -c '%a %u %g' hard-a)"
step xattr
setfattr -n user.vutest -v '{GUEST_XATTR}' created.txt
setfattr -n user.gone -v temporary created.txt
setfattr -x user.gone created.txt
vutest-kv xattr "$(getfattr --only-values -n user.vutest created.txt)"
vutest-kv xattr_names "$(getfattr --absolute-names -m '^user\.' created.txt | grep -c '^user\.')"
vutest-kv host_xattr "$(getfattr --only-values -n user.host from-host.txt)"
step fsync
dd if=/dev/urandom of=synced.bin bs=4096 count=24 2>/dev/null
sync synced.bin
sync -d synced.bin
vutest-kv synced_sha256 "$(sha256sum < synced.bin | cut -d' ' -f1)"
step stat
vutest-kv stat_created "$(stat -c '%s %h %a %F' created.txt)"
vutest-kv stat_grown "$(stat -c '%s %F' grown.bin)"
vutest-kv stat_dir "$(stat -c '%a %F' kept-dir)"
vutest-kv stat_link "$(stat -c '%F' link-to-renamed)"
vutest-kv host_file "$(cat from-host.txt)"
vutest-kv host_stat "$(stat -c '%s %a %u %g' from-host.txt)"
step done
"#
    )
}

#[test]
fn guest_file_operations_match_the_host() {
    let mut share = Share::new("auto", true, |root| {
        let f = root.join("from-host.txt");
        fs::write(&f, HOST_TEXT).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        chown(&f, 777, 888);
        lsetxattr(&f, "user.host", HOST_XATTR.as_bytes()).unwrap();
    });
    let out = share.run_guest("operations", &operations_script(), |_| {});
    let p = |rel: &str| share.path(rel);
    let meta =
        |rel: &str| fs::symlink_metadata(p(rel)).unwrap_or_else(|e| panic!("host: {rel}: {e}"));
    assert_eq!(out.expect_kv("step"), "done");

    // create, write, read, append.
    assert_eq!(out.expect_kv("read"), "hello virtio-fs");
    assert_eq!(out.expect_kv("lines"), "2");
    assert_eq!(
        fs::read_to_string(p("created.txt")).unwrap(),
        "hello virtio-fs\nappended line\n"
    );
    // truncate, shrinking and growing (a hole).
    assert_eq!(out.expect_kv("truncated_size"), "1000");
    assert_eq!(
        fs::read(p("truncated.txt")).unwrap(),
        seq(10000).as_bytes()[..1000]
    );
    assert_eq!(fs::read(p("grown.bin")).unwrap(), vec![0u8; 70000]);
    // rename, within a directory and into another.
    assert_eq!(
        fs::read_to_string(p("dir/sub/renamed.txt")).unwrap(),
        "moving\n"
    );
    for gone in [
        "before-rename.txt",
        "after-rename.txt",
        "doomed.txt",
        "gone-dir",
    ] {
        assert!(!p(gone).exists(), "{gone} still exists on the host");
    }
    // mkdir, chmod of a directory.
    let kept = meta("kept-dir");
    assert!(kept.is_dir());
    assert_eq!(kept.mode() & 0o7777, 0o711);
    assert_eq!(out.expect_kv("stat_dir"), "711 directory");
    // The guest's umask 000 applies, not the daemon's own umask.
    assert_eq!(
        meta("umask0.txt").mode() & 0o7777,
        0o666,
        "file created under umask 000"
    );
    assert_eq!(
        meta("umask0-dir").mode() & 0o7777,
        0o777,
        "directory created under umask 000"
    );
    // readdir of 5000 entries: the guest counted them, the host has exactly those names.
    assert_eq!(out.expect_kv("many_ls"), MANY.to_string());
    assert_eq!(out.expect_kv("many_ls_big_a"), MANY.to_string());
    // `.` and `..` are listed, as on a local filesystem: `ls -a` shows
    // exactly what the daemon sent.
    assert_eq!(out.expect_kv("many_ls_a"), (MANY + 2).to_string());
    assert_eq!(out.expect_kv("many_find"), MANY.to_string());
    assert_eq!(out.expect_kv("many_sorted_last"), format!("f{}", MANY - 1));
    let names: BTreeSet<String> = fs::read_dir(p("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let want: BTreeSet<String> = (0..MANY).map(|i| format!("f{i}")).collect();
    assert!(
        names == want,
        "host sees {} entries in many/, not f0..f{}",
        names.len(),
        MANY - 1
    );
    // symlink.
    assert!(meta("link-to-renamed").file_type().is_symlink());
    assert_eq!(
        fs::read_link(p("link-to-renamed")).unwrap(),
        Path::new("dir/sub/renamed.txt")
    );
    assert_eq!(out.expect_kv("readlink"), "dir/sub/renamed.txt");
    assert_eq!(out.expect_kv("via_link"), "moving");
    assert_eq!(out.expect_kv("stat_link"), "symbolic link");
    // hardlink: one inode, two names, its mode (setuid) and owner.
    let (a, b) = (meta("hard-a"), meta("hard-b"));
    assert_eq!(
        a.ino(),
        b.ino(),
        "hard-a and hard-b are different inodes on the host"
    );
    assert_eq!(a.nlink(), 2);
    assert_eq!(out.expect_kv("hard_nlink"), "2");
    assert_eq!(fs::read_to_string(p("hard-b")).unwrap(), "linked\n");
    // chown 4321 (uid only) keeps gid 0; chown clears setuid, as on any Linux fs.
    assert_eq!((a.uid(), a.gid()), (4321, 0));
    assert_eq!(
        a.mode() & 0o7777,
        0o755,
        "mode of hard-a after chmod 4755 + chown"
    );
    assert_eq!(out.expect_kv("hard_stat"), "755 4321 0");
    // chmod, chown.
    let m = meta("modes.txt");
    assert_eq!(m.mode() & 0o7777, 0o604);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(out.expect_kv("modes_stat"), "604 1234 5678");
    // xattrs both ways; the removed one is gone.
    assert_eq!(
        lgetxattr(&p("created.txt"), "user.vutest").unwrap(),
        GUEST_XATTR.as_bytes()
    );
    let gone = lgetxattr(&p("created.txt"), "user.gone").unwrap_err();
    assert_eq!(
        gone.raw_os_error(),
        Some(libc::ENODATA),
        "user.gone: {gone}"
    );
    assert_eq!(out.expect_kv("xattr"), GUEST_XATTR);
    assert_eq!(out.expect_kv("xattr_names"), "1");
    assert_eq!(out.expect_kv("host_xattr"), HOST_XATTR);
    // fsync'd data.
    let synced = out.expect_kv("synced_sha256");
    assert_eq!(synced.len(), 64, "synced_sha256={synced}");
    assert_eq!(sha256_file(&p("synced.bin")), synced);
    assert_eq!(meta("synced.bin").len(), 24 * 4096);
    // stat as the guest sees it, against the host.
    let c = meta("created.txt");
    assert_eq!(
        out.expect_kv("stat_created"),
        format!(
            "{} {} {:o} regular file",
            c.len(),
            c.nlink(),
            c.mode() & 0o7777
        )
    );
    assert_eq!(out.expect_kv("stat_grown"), "70000 regular file");
    // The host's file, its mode and owner as the guest sees them.
    assert_eq!(out.expect_kv("host_file"), HOST_TEXT);
    assert_eq!(
        out.expect_kv("host_stat"),
        format!("{} 640 777 888", HOST_TEXT.len())
    );
}

/// Shell that reports `vutest-kv KEY <sha256 of FILE>`.
fn report_sha(key: &str, file: &str) -> String {
    format!("vutest-kv {key} \"$(sha256sum < {file} | cut -d' ' -f1)\"\n")
}

#[test]
fn second_guest_on_the_same_daemon_sees_the_first_guests_files() {
    let mut share = Share::new("auto", false, |_| {});
    let pid = share.daemon.pid();

    // The first guest: a 4 MiB file written with dd, and a small tree.
    let mut first = String::from(
        "set -e
cd \"$VUTEST_FS\"
vutest-kv boot_id \"$(cat /proc/sys/kernel/random/boot_id)\"
dd if=/dev/urandom of=/tmp/big bs=1M count=4 iflag=fullblock 2>/dev/null
dd if=/tmp/big of=big.bin bs=1M conv=fsync 2>/dev/null
mkdir -p tree/deeper
printf 'first guest\\n' > tree/deeper/a.txt
ln -s deeper/a.txt tree/link
echo 3 > /proc/sys/vm/drop_caches
vutest-kv big_size \"$(stat -c %s big.bin)\"
",
    );
    first += &report_sha("written_sha256", "/tmp/big");
    first += &report_sha("share_sha256", "big.bin");
    let out1 = share.run_guest("first guest", &first, |_| {});
    let written = out1.expect_kv("written_sha256").to_string();
    assert_eq!(written.len(), 64, "written_sha256={written}");
    assert_eq!(
        out1.expect_kv("share_sha256"),
        written,
        "first guest's read-back"
    );
    assert_eq!(out1.expect_kv("big_size"), (4 << 20).to_string());
    assert_eq!(fs::metadata(share.path("big.bin")).unwrap().len(), 4 << 20);
    assert_eq!(
        sha256_file(&share.path("big.bin")),
        written,
        "host checksum"
    );

    // The second guest: a new QEMU on the same socket, same daemon process.
    let mut second = String::from(
        "set -e
cd \"$VUTEST_FS\"
vutest-kv boot_id \"$(cat /proc/sys/kernel/random/boot_id)\"
vutest-kv a_txt \"$(cat tree/link)\"
vutest-kv tree \"$(ls tree | tr '\\n' ' ')\"
vutest-kv big_size \"$(stat -c %s big.bin)\"
printf 'second guest\\n' > from-second.txt
",
    );
    second += &report_sha("big_sha256", "big.bin");
    let out2 = share.run_guest("second guest", &second, |_| {});
    assert_ne!(
        out2.expect_kv("boot_id"),
        out1.expect_kv("boot_id"),
        "not a second boot"
    );
    assert_eq!(share.daemon.pid(), pid);
    assert_eq!(out2.expect_kv("a_txt"), "first guest");
    assert_eq!(out2.expect_kv("tree"), "deeper link ");
    assert_eq!(out2.expect_kv("big_size"), (4 << 20).to_string());
    assert_eq!(
        out2.expect_kv("big_sha256"),
        written,
        "second guest's checksum"
    );
    assert_eq!(
        fs::read_to_string(share.path("from-second.txt")).unwrap(),
        "second guest\n"
    );
}

const OLD_TEXT: &str = "version 1 from the host";
const NEW_TEXT: &str = "version 2, rewritten in place by the host while the guest runs";
const HELD_OLD: &str = "held open by the guest";
const HELD_NEW: &str = "held open by the guest, and rewritten in place by the host";
const REPLACED_OLD: &str = "replaced: old inode";
const REPLACED_NEW: &str = "replaced: a new inode renamed over the old name";
const CREATED_TEXT: &str = "created by the host while the guest runs";
/// Guest polls of at most 100 ms each before it gives up on seeing a change.
const MAX_TRIES: u32 = 100;

/// The guest reads the files (keeping `held.txt` open in a background
/// process), prints [`REWRITE_NOW`], waits for the host's
/// marker file, then polls until it sees the host's changes and reports
/// how many extra reads that took (`tries`, 0 = the first read after the
/// marker already saw everything).
fn host_change_script() -> String {
    format!(
        r#"set -e
cd "$VUTEST_FS"
state() {{
    printf '%s|%s|%s|%s|%s' "$(cat changing.txt)" "$(cat held.txt)" "$(cat replaced.txt)" \
        "$(cat created.txt 2>/dev/null || echo none)" \
        "$([ -e deleted.txt ] && echo present || echo absent)"
}}
# A process keeps held.txt open, so its inode stays cached in the guest.
sleep 1000 < held.txt &
holder=$!
vutest-kv before "$(state)"
echo {REWRITE_NOW}
n=0
while [ ! -e marker ]; do
    n=$((n + 1))
    [ $n -lt 600 ] || {{ echo "no marker from the host"; exit 3; }}
    sleep 0.1
done
want='{NEW_TEXT}|{HELD_NEW}|{REPLACED_NEW}|{CREATED_TEXT}|absent'
tries=0
while s="$(state)"; [ "$s" != "$want" ]; do
    tries=$((tries + 1))
    [ $tries -lt {MAX_TRIES} ] || break
    sleep 0.1
done
vutest-kv after "$s"
vutest-kv tries $tries
kill $holder
"#
    )
}

/// Runs [`host_change_script`] against a daemon with `--cache=CACHE`; the
/// host changes the share when the guest asks. Returns the guest's output.
fn host_changes_seen_by_the_guest(cache: &str) -> GuestOutput {
    let mut share = Share::new(cache, false, |root| {
        fs::write(root.join("changing.txt"), OLD_TEXT).unwrap();
        fs::write(root.join("held.txt"), HELD_OLD).unwrap();
        fs::write(root.join("replaced.txt"), REPLACED_OLD).unwrap();
        fs::write(root.join("deleted.txt"), "to be deleted").unwrap();
    });
    let root = share.root.clone();
    let ino_before = fs::metadata(root.join("changing.txt")).unwrap().ino();
    let mut changed = 0;
    let out = share.run_guest(&format!("cache={cache}"), &host_change_script(), |line| {
        if !line.contains(REWRITE_NOW) || changed > 0 {
            return;
        }
        changed += 1;
        // In place (same inode), by rename over the name, a new file and a
        // removed one; then the marker the guest waits for.
        fs::write(root.join("changing.txt"), NEW_TEXT).unwrap();
        fs::write(root.join("held.txt"), HELD_NEW).unwrap();
        fs::write(root.join("replaced.tmp"), REPLACED_NEW).unwrap();
        fs::rename(root.join("replaced.tmp"), root.join("replaced.txt")).unwrap();
        fs::write(root.join("created.txt"), CREATED_TEXT).unwrap();
        fs::remove_file(root.join("deleted.txt")).unwrap();
        fs::write(root.join("marker"), "go").unwrap();
    });
    assert_eq!(changed, 1, "the guest never asked for the change");
    assert_eq!(
        fs::metadata(root.join("changing.txt")).unwrap().ino(),
        ino_before,
        "changing.txt was not rewritten in place"
    );
    assert_eq!(
        out.expect_kv("before"),
        format!("{OLD_TEXT}|{HELD_OLD}|{REPLACED_OLD}|none|present")
    );
    assert_eq!(
        out.expect_kv("after"),
        format!("{NEW_TEXT}|{HELD_NEW}|{REPLACED_NEW}|{CREATED_TEXT}|absent"),
        "cache={cache}: the guest does not see the host's changes after {MAX_TRIES} polls"
    );
    out
}

#[test]
fn host_changes_are_seen_at_once_with_cache_never() {
    let out = host_changes_seen_by_the_guest("never");
    // Nothing is cached: the first read after the change sees it.
    assert_eq!(
        out.expect_kv("tries"),
        "0",
        "cache=never served stale data or names"
    );
}

#[test]
fn host_changes_are_seen_within_the_timeout_with_cache_auto() {
    let out = host_changes_seen_by_the_guest("auto");
    // Attributes and names may be cached for 1 s: allow 3 s of polls.
    let tries: u32 = out.expect_kv("tries").parse().unwrap();
    eprintln!("cache=auto: the guest saw the host's changes after {tries} extra polls");
    assert!(
        tries <= 30,
        "cache=auto: {tries} polls of 100 ms before the change was seen"
    );
}
