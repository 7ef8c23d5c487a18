//! Our VMM boots the freestanding test guest (`tests/guest-fw`) under KVM:
//! PVH entry, a port write at entry, COM1 output, the APs started with
//! INIT-SIPI-SIPI, ACPI power-off, exit code 0; PCI bus 0 enumerated through
//! CF8/CFC (the host bridge) and the MCFG's ECAM window agreeing with it;
//! `--cpus topology=` as the guest reads it in CPUID 4, 0xB/0x1F and the MADT,
//! `pmu=off` as leaf 0xA; a guest reset rebooting, or ending the VMM with
//! `--no-reboot`. And its command-line errors.

use std::time::Duration;

use vu_driver::fixture::{poll_until, TempDir};
use vu_driver::process::Finished;
use vu_driver::vmm::{
    assert_one_line_refusal, boot_test_guest, guest_logs, run_test_guest, run_vmm, serial,
    show_run as show, shutdown_vmm, spawn_vmm, test_guest,
};

/// KVM here emulates every instruction (~1 µs each); the guest needs well
/// under a second, the margin is for loaded CI machines.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const CLI_TIMEOUT: Duration = Duration::from_secs(20);

fn assert_booted(run: &Finished, cpus: u8) {
    assert_eq!(run.code(), Some(0), "{}", show(run));
    for line in [
        "hello from the test guest\n".to_string(),
        "cpu 0: apic id 0, bootstrap processor\n".to_string(),
        format!("acpi: {cpus} cpu(s), PM1a control port 0x604\n"),
        "pci 00:00.0 1b36:0008 class 0600\n".to_string(),
        "ecam 0xe8000000: 00:00.0 id 00081b36 matches cf8\n".to_string(),
        format!("all {cpus} cpu(s) up; powering off\n"),
    ] {
        assert!(
            run.stdout.contains(&line),
            "missing {line:?}\n{}",
            show(run)
        );
    }
    for n in 1..cpus {
        let line = format!("cpu {n}: apic id {n} reported in\n");
        assert!(
            run.stdout.contains(&line),
            "missing {line:?}\n{}",
            show(run)
        );
    }
    assert!(!run.stdout.contains("did not report in"), "{}", show(run));
    assert!(
        run.stderr.contains("guest wrote 0x01 to port 0x80"),
        "{}",
        show(run)
    );
    assert!(
        run.stderr.contains("debugcon at") && run.stderr.contains("guest-fw: entry"),
        "{}",
        show(run)
    );
    assert!(run.stderr.contains("guest powered off"), "{}", show(run));
}

#[test]
fn boots_the_test_guest_and_powers_off() {
    assert_booted(&boot_test_guest(1, BOOT_TIMEOUT), 1);
}

#[test]
fn second_cpu_reports_in() {
    assert_booted(&boot_test_guest(2, BOOT_TIMEOUT), 2);
}

#[test]
fn four_cpus_report_in() {
    assert_booted(&boot_test_guest(4, BOOT_TIMEOUT), 4);
}

/// What the guest reports of CPUID leaf `leaf`.`sub` (see `report_cpuid`
/// in the guest): `cpuid 0xb.1: eax 0x2 ebx 0x3 ecx 0x201 edx 0x0`.
fn cpuid_line(leaf: &str, sub: u32, [eax, ebx, ecx, edx]: [u32; 4]) -> String {
    format!("cpuid {leaf}.{sub}: eax {eax:#x} ebx {ebx:#x} ecx {ecx:#x} edx {edx:#x}\n")
}

/// The guest's leaf 4 lines (`report_caches` in the guest): each cache's
/// (level, threads sharing it, cores per package).
fn caches(run: &Finished) -> Vec<(u32, u32, u32)> {
    run.stdout
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.strip_prefix("cpuid 0x4.")?.split_once(": level ")?;
            let (level, rest) = rest.split_once(", shared by ")?;
            let (threads, rest) = rest.split_once(" thread(s), ")?;
            let cores = rest.strip_suffix(" core(s) per package")?;
            Some((
                level.parse().ok()?,
                threads.parse().ok()?,
                cores.parse().ok()?,
            ))
        })
        .collect()
}

/// Leaf 4 as the topology says: L1 and L2 shared by a core's threads, L3
/// by the package's (each rounded up to a power of two, as the APIC id's
/// fields are), and the cores per package (rounded the same way).
fn assert_caches(run: &Finished, core_threads: u32, package_threads: u32, cores: u32) {
    let seen = caches(run);
    assert!(!seen.is_empty(), "no cpuid 0x4 line\n{}", show(run));
    for &(level, threads, per_package) in &seen {
        let want = if level <= 2 {
            core_threads
        } else {
            package_threads
        };
        assert_eq!(
            (threads, per_package),
            (want, cores),
            "level {level} cache\n{}",
            show(run)
        );
    }
}

fn assert_lines(run: &Finished, lines: &[String]) {
    assert_eq!(run.code(), Some(0), "{}", show(run));
    for line in lines {
        assert!(run.stdout.contains(line), "missing {line:?}\n{}", show(run));
    }
    assert!(!run.stdout.contains("did not report in"), "{}", show(run));
}

/// `topology=1:3:1:2` with 4 of 6 vCPUs booted and `pmu=off`: the guest
/// reads CPUID 0xB and 0x1F as the topology says (3 cores take 2 bits of
/// the APIC id, so the second package starts at 4), the MADT's 4 enabled
/// CPUs come up with APIC ids 0, 1, 2, 4 (the other 2 are listed
/// disabled), and leaf 0xA is zero.
#[test]
fn the_guest_sees_the_topology_in_cpuid_and_the_madt() {
    let args = [
        "--cpus".into(),
        "boot=4,max=6,topology=1:3:1:2,pmu=off".into(),
    ];
    let run = vu_driver::vmm::run_test_guest(&args, BOOT_TIMEOUT);
    let mut lines = vec![
        "acpi: 4 cpu(s), PM1a control port 0x604\n".to_string(),
        cpuid_line("0xb", 0, [0, 1, 0x100, 0]),
        cpuid_line("0xb", 1, [2, 3, 0x201, 0]),
        cpuid_line("0xb", 2, [0, 0, 2, 0]),
        cpuid_line("0x1f", 0, [0, 1, 0x100, 0]),
        cpuid_line("0x1f", 1, [2, 3, 0x201, 0]),
        cpuid_line("0x1f", 2, [2, 3, 0x502, 0]),
        cpuid_line("0xa", 0, [0, 0, 0, 0]),
        "all 4 cpu(s) up; powering off\n".to_string(),
    ];
    for (n, id) in [(1, 1), (2, 2), (3, 4)] {
        lines.push(format!("cpu {n}: cpuid 0xb x2apic id {id}\n"));
        lines.push(format!("cpu {n}: apic id {id} reported in\n"));
    }
    assert_lines(&run, &lines);
    // One thread per core; 3 cores in a package take 2 bits: 4.
    assert_caches(&run, 1, 4, 4);
    assert!(run.stderr.contains("pmu=off:"), "{}", show(&run));
}

/// `topology=2:2:1:1`: two threads per core, so 0xB's SMT level shifts
/// by 1 and counts 2.
#[test]
fn two_threads_per_core_in_cpuid() {
    let args = ["--cpus".into(), "boot=4,topology=2:2:1:1".into()];
    let run = vu_driver::vmm::run_test_guest(&args, BOOT_TIMEOUT);
    let mut lines = vec![
        cpuid_line("0xb", 0, [1, 2, 0x100, 0]),
        cpuid_line("0xb", 1, [2, 4, 0x201, 0]),
        cpuid_line("0x1f", 2, [2, 4, 0x502, 0]),
        "all 4 cpu(s) up; powering off\n".to_string(),
    ];
    for n in 1..4 {
        lines.push(format!("cpu {n}: cpuid 0xb x2apic id {n}\n"));
    }
    assert_lines(&run, &lines);
    // L1 and L2 shared by a core's 2 threads, L3 by the package's 4; 2 cores.
    assert_caches(&run, 2, 4, 2);
}

#[test]
fn serial_to_a_file_and_memory_in_a_given_file() {
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("vmm-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serial = dir.join("serial.log");
    let mem = dir.join("mem");
    let run = run_vmm(
        [
            "--kernel".into(),
            guest.into_os_string(),
            "--memory".into(),
            format!("size=32M,file={}", mem.display()).into(),
            "--serial".into(),
            format!("file={}", serial.display()).into(),
        ],
        BOOT_TIMEOUT,
    );
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    let mem_len = std::fs::metadata(&mem).map(|m| m.len()).ok();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.code(), Some(0), "{}", show(&run));
    assert!(
        out.contains("hello from the test guest"),
        "serial file: {out:?}"
    );
    assert!(!run.stdout.contains("hello"), "{}", show(&run));
    // A file the user named is kept (and sized); a created one is not.
    assert_eq!(mem_len, Some(32 << 20));
}

fn refusal(args: &[&str], code: i32, culprits: &[&str]) {
    assert_one_line_refusal(args, code, culprits, CLI_TIMEOUT);
}

#[test]
fn missing_kernel_is_one_line() {
    refusal(
        &["--kernel", "/nonexistent/vmlinux", "--memory", "size=16M"],
        1,
        &["/nonexistent/vmlinux", "No such file"],
    );
}

#[test]
fn not_a_kernel_is_one_line() {
    let junk = std::env::temp_dir().join(format!("vmm-junk-{}", std::process::id()));
    std::fs::write(&junk, vec![0x5au8; 16384]).unwrap();
    let path = junk.to_str().unwrap().to_string();
    refusal(
        &["--kernel", &path, "--memory", "size=16M"],
        1,
        &[&path, "not a kernel"],
    );
    std::fs::remove_file(&junk).unwrap();
}

#[test]
fn odd_memory_size_is_one_line() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--memory", "size=1000K"],
            &["--memory", "multiple of 1 MiB"],
        ),
        (&["--memory", "size=lots"], &["--memory", "not a size"]),
        (&["--cpus", "boot=0"], &["--cpus", "boot=0"]),
        (&["--serial", "pty"], &["--serial", "pty"]),
        (
            &["--cpus", "boot=2,max=4,topology=1:2:1:1"],
            &["--cpus", "topology: 1:2:1:1 makes 2 vCPUs, not max 4"],
        ),
        (
            &["--cpus", "boot=2,topology=1:0:2:1"],
            &["--cpus", "no count may be 0"],
        ),
        (
            &["--cpus", "boot=2,affinity=[2@[0]]"],
            &["--cpus", "vCPU 2 is not below max 2"],
        ),
        (
            &["--cpus", "boot=1,affinity=[0@[100000]]"],
            &[
                "--cpus",
                "host CPU 100000 is not one this process may run on",
            ],
        ),
        (
            &["--cpus", "boot=1,affinity=[0@2]"],
            &["--cpus", "`2` is not [CPUS]"],
        ),
    ];
    for (option, culprits) in cases {
        refusal(&[&["--kernel", "k"][..], option].concat(), 2, culprits);
    }
    refusal(&["--memory", "size=64M"], 2, &["--kernel"]);
}

/// A guest reset reboots the VM unless `--no-reboot` (QEMU's flag) is
/// given: with it the first reset ends the VMM (exit 0, one run of the
/// guest); without it the VM is built again and the guest runs again,
/// each run's lines appended to the serial file, until `vmm.shutdown`.
/// The same VMM writes `--pidfile`.
#[test]
fn a_guest_reset_reboots_unless_no_reboot() {
    let reset = ["--cmdline".to_string(), "console=ttyS0 reset".to_string()];
    let run = run_test_guest(&reset, BOOT_TIMEOUT);
    assert_eq!(run.code(), Some(0), "{}", show(&run));
    assert_eq!(
        run.stdout.matches("resetting as asked").count(),
        1,
        "{}",
        show(&run)
    );
    assert!(run.stderr.contains("guest reset after"), "{}", show(&run));

    let dir = TempDir::new("vmm-reboot").unwrap();
    let (api, console) = (dir.join("api.sock"), dir.join("console.txt"));
    let pidfile = dir.join("vmm.pid");
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let serial_arg = format!("file={}", console.display());
    let args = [
        "--pidfile".as_ref(),
        pidfile.as_os_str(),
        "--kernel".as_ref(),
        guest.as_os_str(),
        reset[0].as_ref(),
        reset[1].as_ref(),
        "--memory".as_ref(),
        "size=64M".as_ref(),
        "--serial".as_ref(),
        serial_arg.as_ref(),
        "--api-socket".as_ref(),
        api.as_os_str(),
    ];
    let mut vmm =
        spawn_vmm(args, &api, &["control API on"], BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let runs = || {
        serial(&console)
            .matches("hello from the test guest")
            .count()
    };
    assert!(
        poll_until(BOOT_TIMEOUT, || runs() >= 3),
        "the guest did not run three times\n{}",
        guest_logs(&console, &vmm, &[])
    );
    assert!(
        serial(&console).matches("resetting as asked").count() >= 2,
        "{}",
        guest_logs(&console, &vmm, &[])
    );
    assert!(
        vmm.log_contents().contains("guest reset: rebooting"),
        "{}",
        guest_logs(&console, &vmm, &[])
    );
    // --pidfile (QEMU's -pidfile): the VMM's pid while it runs, the file
    // gone when it ends.
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", vmm.pid())
    );
    shutdown_vmm(&api, &mut vmm, BOOT_TIMEOUT, |v| {
        guest_logs(&console, v, &[])
    });
    assert!(!pidfile.exists(), "--pidfile left behind");
}
