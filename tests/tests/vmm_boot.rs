//! Our VMM boots the freestanding test guest (`tests/guest-fw`) under KVM:
//! PVH entry, a port write at entry, COM1 output, the APs started with
//! INIT-SIPI-SIPI, ACPI power-off, exit code 0; PCI bus 0 enumerated through
//! CF8/CFC (the host bridge) and the MCFG's ECAM window agreeing with it.
//! And its command-line errors.

use std::time::Duration;

use vu_driver::process::Finished;
use vu_driver::vmm::{
    assert_one_line_refusal, boot_test_guest, run_vmm, show_run as show, test_guest,
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
    ];
    for (option, culprits) in cases {
        refusal(&[&["--kernel", "k"][..], option].concat(), 2, culprits);
    }
    refusal(&["--memory", "size=64M"], 2, &["--kernel"]);
}
