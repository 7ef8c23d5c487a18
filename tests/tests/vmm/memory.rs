//! The shape of guest RAM (issue #17): huge pages (a hugetlbfs memfd,
//! still shared with the device daemons) and prefaulting, as Cloud
//! Hypervisor's `--memory hugepages=on,prefault=on` and QEMU's
//! `-mem-path`/`-mem-prealloc` give them.

use std::path::Path;
use std::time::Duration;

use vu_driver::fixture::{poll_until, TempDir};
use vu_driver::fw_devices;
use vu_driver::process::status_kib;
use vu_driver::vmm::{
    guest_logs, press_power_button, serial, shutdown_vmm, spawn_test_guest_with_memory,
    wait_for_serial, WAITING,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(60);
const GUEST_MIB: u64 = 64;
const PAGE_KIB: u64 = 2048;
const HUGE: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

fn huge(file: &str) -> u64 {
    std::fs::read_to_string(Path::new(HUGE).join(file))
        .unwrap_or_else(|e| panic!("{HUGE}/{file}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// Gives the huge page pool back its size when dropped (also when a test
/// fails).
struct HugePool(u64);

impl Drop for HugePool {
    fn drop(&mut self) {
        let _ = std::fs::write(Path::new(HUGE).join("nr_hugepages"), self.0.to_string());
    }
}

/// Makes at least `pages` 2 MiB pages free (root), until the returned
/// guard is dropped.
fn reserve_huge_pages(pages: u64) -> HugePool {
    let total = huge("nr_hugepages");
    let pool = HugePool(total);
    let free = huge("free_hugepages");
    if free < pages {
        let want = total + (pages - free);
        std::fs::write(Path::new(HUGE).join("nr_hugepages"), want.to_string()).unwrap();
        assert!(
            huge("free_hugepages") >= pages,
            "the kernel gave {} of {want} huge pages",
            huge("nr_hugepages")
        );
    }
    pool
}

#[test]
fn guest_ram_on_prefaulted_huge_pages_is_shared_with_the_daemons() {
    let pages = GUEST_MIB * 1024 / PAGE_KIB;
    let _pool = reserve_huge_pages(pages);
    let free_before = huge("free_hugepages");
    let dir = TempDir::new("vmm-huge").unwrap();
    let b = fw_devices::blk(&dir);
    let (api, console) = (dir.join("api.sock"), dir.join("console.txt"));
    let mut vmm = spawn_test_guest_with_memory(
        &api,
        &console,
        "wait-power-button",
        &format!("size={GUEST_MIB}M,hugepages=on,prefault=on"),
        &["--disk".into(), format!("socket={}", b.socket.display())],
        TIMEOUT,
    );
    let show = |vmm: &vu_driver::fixture::Daemon| guest_logs(&console, vmm, &[&b.daemon]);
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
    // The daemon mapped them too and served the guest's sector.
    let out = serial(&console);
    assert!(
        out.contains("blk: capacity") && out.contains("wrote and read back sector 8: ok"),
        "{}",
        show(&vmm)
    );
    press_power_button(&api, &vmm, WAIT, || show(&vmm));
    let all = show(&vmm);
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
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
    let guest_kib = GUEST_MIB * 1024;
    let eager = rss_shmem_kib("vmm-prefault", &format!("size={GUEST_MIB}M,prefault=on"));
    assert!(eager >= guest_kib, "RssShmem {eager} KiB with prefault=on");
    let lazy = rss_shmem_kib("vmm-lazy", &format!("size={GUEST_MIB}M"));
    assert!(
        lazy < guest_kib / 2,
        "RssShmem {lazy} KiB without prefault (the test guest touches little)"
    );
}
