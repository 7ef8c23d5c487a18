//! The shape of guest RAM (issue #17): huge pages (a hugetlbfs memfd,
//! still shared with the device daemons), prefaulting and zones in given
//! files, as Cloud Hypervisor's `--memory hugepages=on,prefault=on`,
//! `--memory-zone file=` and QEMU's `-mem-path`/`-mem-prealloc` give them.
//!
//! The huge page tests resize the host's 2 MiB pool
//! (`/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`, the sysctl
//! `vm.nr_hugepages`) and give it back its size when they end, pass or
//! fail ([`HugePool`]); one at a time ([`POOL_LOCK`]), since each counts
//! the pool's free pages.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use vu_driver::fixture::{poll_until, TempDir};
use vu_driver::fw_devices;
use vu_driver::process::{mappings, process_tree, status_kib, Finished};
use vu_driver::vmm::{
    assert_one_line_refusal, guest_logs, press_power_button, serial, shutdown_vmm,
    spawn_test_guest_with_memory, test_guest, wait_for_serial, TwoNodeGuest, WAITING,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(60);
const GUEST_MIB: u64 = 64;
const ZONE_MIB: u64 = 32;
const PAGE_KIB: u64 = 2048;
const HUGE: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

fn huge(file: &str) -> u64 {
    std::fs::read_to_string(Path::new(HUGE).join(file))
        .unwrap_or_else(|e| panic!("{HUGE}/{file}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// `/proc/meminfo`'s `HugePages_Total - HugePages_Free`: the default
/// (2 MiB) pool's pages in use.
fn huge_pages_in_use() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/meminfo"))
    };
    field("HugePages_Total:") - field("HugePages_Free:")
}

/// Held by the one test at a time that resizes the huge page pool.
static POOL_LOCK: Mutex<()> = Mutex::new(());

/// The huge page pool resized by [`reserve_huge_pages`]: dropped (also
/// when a test fails), it gives the pool back the size it had, then lets
/// the next test have it.
struct HugePool {
    before: u64,
    _lock: MutexGuard<'static, ()>,
}

impl Drop for HugePool {
    fn drop(&mut self) {
        let path = Path::new(HUGE).join("nr_hugepages");
        if let Err(e) = std::fs::write(&path, self.before.to_string()) {
            eprintln!(
                "{}: could not give back {}: {e}",
                path.display(),
                self.before
            );
        }
    }
}

/// The pool for one test, at its size (nothing reserved by this test).
fn take_huge_pool() -> HugePool {
    // A test that failed holding it poisoned it; its guard still restored
    // the pool.
    let lock = POOL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    HugePool {
        before: huge("nr_hugepages"),
        _lock: lock,
    }
}

/// Makes at least `pages` 2 MiB pages free (root), until the returned
/// guard is dropped.
fn reserve_huge_pages(pages: u64) -> HugePool {
    let pool = take_huge_pool();
    let free = huge("free_hugepages");
    if free < pages {
        let want = pool.before + (pages - free);
        std::fs::write(Path::new(HUGE).join("nr_hugepages"), want.to_string()).unwrap();
        assert!(
            huge("free_hugepages") >= pages,
            "the kernel gave {} of {want} huge pages",
            huge("nr_hugepages")
        );
    }
    pool
}

/// Guest RAM on prefaulted huge pages with a disk, a share and a NIC:
/// every page is taken from the pool (HugePages_Total - HugePages_Free
/// grows by the guest's RAM) and each daemon, mapping the hugetlbfs memfd,
/// serves its device (a sector, a file over FUSE, a frame on the tap).
#[test]
fn guest_ram_on_prefaulted_huge_pages_is_shared_with_the_daemons() {
    let pages = GUEST_MIB * 1024 / PAGE_KIB;
    let _pool = reserve_huge_pages(pages);
    let free_before = huge("free_hugepages");
    let used_before = huge_pages_in_use();
    let dir = TempDir::new("vmm-huge").unwrap();
    let b = fw_devices::blk(&dir);
    let f = fw_devices::fs_share(&dir, &[]);
    let n = fw_devices::net(&dir);
    let (api, console) = (dir.join("api.sock"), dir.join("console.txt"));
    let mut vmm = spawn_test_guest_with_memory(
        &api,
        &console,
        "wait-power-button",
        &format!("size={GUEST_MIB}M,hugepages=on,prefault=on"),
        &[
            "--disk".into(),
            format!("socket={}", b.socket.display()),
            "--fs".into(),
            format!("tag={},socket={}", fw_devices::TAG, f.socket.display()),
            "--net".into(),
            format!("socket={},mac={}", n.socket.display(), fw_devices::MAC),
        ],
        TIMEOUT,
    );
    let daemons = [&b.daemon, &f.daemon, &n.daemon];
    let show = |vmm: &vu_driver::fixture::Daemon| guest_logs(&console, vmm, &daemons);
    wait_for_serial(&mut vmm, &console, WAITING, TIMEOUT, show);
    // The guest's RAM is the huge pages, all of them taken from the pool
    // (prefaulted; without prefault=on they would be reserved at mmap and
    // taken as the guest touches them).
    assert_eq!(
        free_before - huge("free_hugepages"),
        pages,
        "{}",
        show(&vmm)
    );
    assert_eq!(huge_pages_in_use() - used_before, pages, "{}", show(&vmm));
    // Each daemon's serving process maps the memfd.
    for d in daemons {
        let procs = process_tree(d.pid());
        assert!(
            procs
                .iter()
                .any(|&p| !mappings(p, "vmm-guest-ram-mem0").is_empty()),
            "{} ({procs:?}) does not map the huge page memfd\n{}",
            d.name(),
            show(&vmm)
        );
    }
    press_power_button(&api, &vmm, WAIT, || show(&vmm));
    let all = show(&vmm);
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
    // And each served its device.
    let run = Finished {
        status: None,
        stdout: serial(&console),
        stderr: vmm.log_contents(),
    };
    fw_devices::assert_blk(&run, &b, &daemons);
    fw_devices::assert_fs(&run, fw_devices::TAG, &daemons);
    fw_devices::assert_net(&run, &n, true, &daemons);
    assert!(poll_until(WAIT, || huge("free_hugepages") == free_before));
}

/// The VMM's shared-memory RSS (KiB) while the test guest waits, with
/// `--memory memory`.
fn rss_shmem_kib(name: &str, memory: &str) -> u64 {
    let dir = TempDir::new(name).unwrap();
    let (api, console) = (dir.join("api.sock"), dir.join("console.txt"));
    let mut vmm =
        spawn_test_guest_with_memory(&api, &console, "wait-power-button", memory, &[], TIMEOUT);
    wait_for_serial(&mut vmm, &console, WAITING, TIMEOUT, |v| v.log_contents());
    let rss = status_kib(vmm.pid(), "RssShmem").unwrap();
    let all = vmm.log_contents();
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
    rss
}

#[test]
fn prefault_puts_all_guest_ram_in_memory_before_the_guest_runs() {
    // Large enough that the VMM prefaults it with a thread per host CPU
    // (one per 64 MiB at least).
    const GUEST_MIB: u64 = 256;
    let guest_kib = GUEST_MIB * 1024;
    // QEMU's word for it (`-mem-prealloc`); Cloud Hypervisor's is
    // prefault=on, which the huge page test uses.
    let eager = rss_shmem_kib("vmm-prefault", &format!("size={GUEST_MIB}M,prealloc=on"));
    assert!(eager >= guest_kib, "RssShmem {eager} KiB with prealloc=on");
    let lazy = rss_shmem_kib("vmm-lazy", &format!("size={GUEST_MIB}M"));
    assert!(
        lazy < guest_kib / 2,
        "RssShmem {lazy} KiB without prefault (the test guest touches little)"
    );
}

/// A zone on huge pages next to one on /dev/shm, made guest NUMA node 1:
/// its mapping reserves the zone's pages in the host's pool at once
/// (HugePages_Rsvd) and the pages the guest and the daemon touch are taken
/// (Total - Free); the daemon maps the hugetlbfs memfd and serves the
/// guest's sector 9 through the top of that zone.
#[test]
fn a_huge_page_zone_is_reserved_and_served_through() {
    let pages = ZONE_MIB * 1024 / PAGE_KIB;
    let _pool = reserve_huge_pages(pages);
    let (free_before, used_before) = (huge("free_hugepages"), huge_pages_in_use());
    let resv_before = huge("resv_hugepages");
    let dir = TempDir::new("vmm-huge-zone").unwrap();
    let mut g = TwoNodeGuest::start(
        &dir,
        [
            &format!("id=plain,size={ZONE_MIB}M"),
            &format!("id=huge,size={ZONE_MIB}M,hugepages=on,hugepage_size=2M"),
        ],
        [
            "guest_numa_id=0,cpus=[0],memory_zones=[plain]",
            "guest_numa_id=1,cpus=[1],memory_zones=[huge]",
        ],
    );
    let zone = ZONE_MIB << 20;
    g.assert_far_sector(2 * zone);
    // Every page of the zone is the pool's: taken, or reserved for it.
    let taken = free_before - huge("free_hugepages");
    let reserved = huge("resv_hugepages") - resv_before;
    assert_eq!(
        taken + reserved,
        pages,
        "{taken} taken, {reserved} reserved\n{}",
        g.show()
    );
    assert!(
        taken >= 1,
        "the sector 9 pages are not huge pages\n{}",
        g.show()
    );
    assert_eq!(huge_pages_in_use() - used_before, taken);
    // The daemon's serving process maps the zone's memfd, whole.
    let daemons = process_tree(g.blk.daemon.pid());
    let m: Vec<_> = daemons
        .iter()
        .flat_map(|&p| mappings(p, "vmm-guest-ram-huge"))
        .collect();
    assert!(
        m.iter().any(|&(_, size)| size == zone),
        "no daemon process of {daemons:?} maps the huge page zone: {m:?}\n{}",
        g.show()
    );
    g.power_off();
    assert!(poll_until(WAIT, || huge("free_hugepages") == free_before
        && huge("resv_hugepages") == resv_before));
}

/// With no huge pages free, `hugepages=on` is refused before the guest
/// runs: one line naming the option and the sysctl to raise.
#[test]
fn huge_pages_without_a_reserve_are_one_line_naming_the_sysctl() {
    let _pool = take_huge_pool();
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    // More than is free (none, normally).
    let mib = (huge("free_hugepages") + 1) * 2;
    let mib = mib.max(GUEST_MIB);
    let memory = format!("size={mib}M,hugepages=on");
    let zone = format!("id=big,size={mib}M,hugepages=on");
    let guest = guest.to_str().unwrap();
    for args in [
        &["--kernel", guest, "--memory", &memory][..],
        &[
            "--kernel",
            guest,
            "--memory",
            "size=0",
            "--memory-zone",
            &zone,
        ][..],
    ] {
        assert_one_line_refusal(
            args,
            1,
            &[
                "hugepages=on",
                "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
                "vm.nr_hugepages",
            ],
            WAIT,
        );
    }
}

/// `--memory-zone file=PATH`: the zone's RAM is that file (kept after
/// the VM), so what the guest wrote to its memory and what the daemon
/// read into it from the disk are in the file.
#[test]
fn a_zone_in_a_given_file_holds_its_guest_ram() {
    let dir = TempDir::new("vmm-file-zone").unwrap();
    let path = dir.join("zone1.ram");
    let zone = ZONE_MIB << 20;
    let mut g = TwoNodeGuest::start(
        &dir,
        [
            &format!("id=shm,size={ZONE_MIB}M"),
            &format!("id=file,size={ZONE_MIB}M,file={}", path.display()),
        ],
        [
            "guest_numa_id=0,cpus=[0],memory_zones=[shm]",
            "guest_numa_id=1,cpus=[1],memory_zones=[file]",
        ],
    );
    g.assert_far_sector(2 * zone);
    // The top two pages of the zone: the guest's buffer (written by the
    // guest) and the one the daemon read sector 9 into.
    let check = |when: &str, logs: String| {
        let ram = std::fs::read(&path).unwrap();
        assert_eq!(ram.len() as u64, zone, "{when}");
        let at = |page: u64| {
            let start = (zone - page * 0x1000) as usize;
            &ram[start..start + 512]
        };
        let want = TwoNodeGuest::far_sector();
        assert_eq!(at(2), &want[..], "{when}: the guest's page\n{logs}");
        assert_eq!(at(1), &want[..], "{when}: the daemon's page\n{logs}");
    };
    check("while the VM runs", g.show());
    let daemons = process_tree(g.blk.daemon.pid());
    let name = path.to_str().unwrap();
    assert!(
        daemons.iter().any(|&p| !mappings(p, name).is_empty()),
        "no daemon process of {daemons:?} maps {name}\n{}",
        g.show()
    );
    g.power_off();
    check("after the VM", g.show());
}

/// A `file=` that cannot hold guest RAM is refused with the options: one
/// line naming the option and the path.
#[test]
fn a_bad_memory_file_is_one_line_naming_the_option() {
    let dir = TempDir::new("vmm-bad-file").unwrap();
    let missing = dir.join("no-such-dir/ram");
    let (here, missing) = (dir.path().to_str().unwrap(), missing.to_str().unwrap());
    let zone_dir = format!("id=z,size=32M,file={here}");
    let zone_missing = format!("id=z,size=32M,file={missing}");
    let memory_dir = format!("size=32M,file={here}");
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["--memory", "size=0", "--memory-zone", &zone_dir],
            &["--memory-zone", "id=z", here, "is a directory"],
        ),
        (
            &["--memory", "size=0", "--memory-zone", &zone_missing],
            &["--memory-zone", "id=z", missing, "does not exist"],
        ),
        (
            &["--memory", &memory_dir],
            &["--memory", here, "is a directory"],
        ),
    ];
    for (args, culprits) in cases {
        let all: Vec<&str> = ["--kernel", "/nonexistent/k"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        assert_one_line_refusal(&all, 2, culprits, WAIT);
    }
}
