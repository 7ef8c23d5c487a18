//! The Linux a test boots under our own `vmm`, chosen by what this
//! machine's KVM can run ([`crate::kvm_probe`]):
//!
//! - where KVM is hardware-accelerated, Debian's kernel and the kit's
//!   initramfs ([`GuestKit`], from `scripts/setup.sh`), 512 MiB;
//! - where `/dev/kvm` is an instruction emulator (our build machines), the
//!   Linux kit `scripts/build-linux-kit.sh` builds: a small Linux 6.1 with
//!   three emulator workarounds and the same `/init`, uncompressed, 256 MiB,
//!   with the command line of `tests/guest/linux/cmdline` (the CPU features
//!   the emulator cannot run in kernel mode hidden) and `tsc_early_khz=`
//!   from KVM_GET_TSC_KHZ.
//!
//! Either way the guest runs `tests/guest/init`: the script a test passes
//! comes in base64 on the command line, the share tagged `fs_tag` is
//! mounted at `$VUTEST_FS`, and the console ends with one `VUTEST-RESULT`
//! line ([`crate::guest::ConsoleParser`]).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use crate::guest::{base64_encode, kit_dir, read_kit, GuestKit, Result};

/// The command line file of the small kit.
const SMALL_CMDLINE: &str = include_str!("../guest/linux/cmdline");
/// Debian's kernel: nothing to hide.
const DEBIAN_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=k";

/// Which Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinuxKind {
    /// Debian's stock kernel (hardware-accelerated KVM).
    Debian,
    /// The Linux kit's small kernel (emulating KVM).
    Small,
}

/// A kernel, its initramfs and the command line our `vmm` boots them with.
#[derive(Debug, Clone)]
pub struct OurLinux {
    /// Which one.
    pub kind: LinuxKind,
    /// `--kernel`: a bzImage (Debian) or an ELF `vmlinux` with a PVH note.
    pub kernel: PathBuf,
    /// `--initramfs`.
    pub initrd: PathBuf,
    /// The kernel release it reports.
    pub release: String,
    /// `--memory size=`.
    pub memory: &'static str,
    /// Why this one (for a test's or the demo's log).
    pub why: String,
    base_cmdline: String,
}

/// What Linux prints when it finds our platform wanting (the timer's
/// wiring, ACPI tables and registers, MSRs): a `grep -E` pattern for the
/// guest's dmesg.
pub const PLATFORM_COMPLAINTS: &str = "MP-BIOS bug|Firmware Bug|ACPI Error|ACPI Warning|ACPI BIOS";

impl OurLinux {
    /// The Linux for this machine: Debian's where KVM is fast, else the
    /// small kit. An error names the missing kit file and the script that
    /// builds it.
    pub fn locate() -> Result<Self> {
        match crate::kvm_probe::linux_capable() {
            Ok(()) => Self::debian(),
            Err(why) => Self::small(why),
        }
    }

    /// [`OurLinux::locate`] for a test named `test`, which says on stderr
    /// which Linux it boots and why; panics with the error if there is none.
    /// The test holds the returned turn while its guest runs: one Linux
    /// guest at a time in a test binary, since where KVM emulates, the
    /// guest kernel takes a whole core and two would each miss the
    /// deadlines written for one.
    pub fn for_test(test: &str) -> (Self, MutexGuard<'static, ()>) {
        static ONE_GUEST: Mutex<()> = Mutex::new(());
        // A test that panicked with its turn leaves nothing to repair.
        let turn = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
        let linux = Self::locate().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{test}: {} ({})", linux.why, linux.release);
        (linux, turn)
    }

    /// Debian's kernel from the guest kit.
    pub fn debian() -> Result<Self> {
        let kit = GuestKit::locate()?;
        Ok(OurLinux {
            kind: LinuxKind::Debian,
            kernel: kit.kernel,
            initrd: kit.initrd,
            release: kit.kernel_version,
            memory: "512M",
            why: "KVM is hardware-accelerated: Debian's kernel".to_string(),
            base_cmdline: DEBIAN_CMDLINE.to_string(),
        })
    }

    /// The Linux kit's small kernel; `why` says why not Debian's.
    pub fn small(why: String) -> Result<Self> {
        let dir = kit_dir().join("linux");
        let kernel = dir.join("vmlinux");
        let initrd = dir.join("initrd.cpio");
        let release = read_kit(&kernel, &initrd, &dir.join("kernel-release"))?;
        let mut base_cmdline = small_cmdline(SMALL_CMDLINE);
        if let Some(khz) = crate::kvm_probe::tsc_khz() {
            base_cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        Ok(OurLinux {
            kind: LinuxKind::Small,
            kernel,
            initrd,
            release,
            memory: "256M",
            why: format!("{why}; booting the Linux kit's small kernel (tests/guest/linux)"),
            base_cmdline,
        })
    }

    /// The kernel command line: the base for this kernel, the share tagged
    /// `fs_tag` (none if empty), `script` in base64, killed after
    /// `timeout_s`.
    pub fn cmdline(&self, script: &str, fs_tag: &str, timeout_s: u64) -> String {
        let mut c = format!("{} vutest.timeout={timeout_s}", self.base_cmdline);
        if !fs_tag.is_empty() {
            c.push_str(&format!(" vutest.fs={fs_tag}"));
        }
        c.push_str(" vutest.script=");
        c.push_str(&base64_encode(script.as_bytes()));
        c
    }

    /// `--kernel K --initramfs I --cmdline C --memory size=M --serial stdio
    /// --no-reboot` (the kit's kernel reboots on a panic: that ends the run).
    pub fn vmm_args(&self, script: &str, fs_tag: &str, timeout_s: u64) -> Vec<std::ffi::OsString> {
        self.vmm_args_with_memory(script, fs_tag, timeout_s, &format!("size={}", self.memory))
    }

    /// [`vmm_args`](Self::vmm_args) with `--memory memory` (`size=0` for
    /// `--memory-zone`s the caller adds).
    pub fn vmm_args_with_memory(
        &self,
        script: &str,
        fs_tag: &str,
        timeout_s: u64,
        memory: &str,
    ) -> Vec<std::ffi::OsString> {
        vec![
            "--no-reboot".into(),
            "--kernel".into(),
            self.kernel.clone().into_os_string(),
            "--initramfs".into(),
            self.initrd.clone().into_os_string(),
            "--cmdline".into(),
            self.cmdline(script, fs_tag, timeout_s).into(),
            "--memory".into(),
            memory.into(),
            "--serial".into(),
            "stdio".into(),
        ]
    }
}

/// The command line file's words: `#` lines dropped, the rest joined with
/// single spaces.
fn small_cmdline(file: &str) -> String {
    file.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_cmdline_hides_what_the_emulator_cannot_run() {
        let c = small_cmdline(SMALL_CMDLINE);
        assert!(c.starts_with("console=ttyS0 "), "{c}");
        assert!(!c.contains('#'), "{c}");
        let words: Vec<&str> = c.split(' ').collect();
        assert!(words.contains(&"noxsave"), "{c}");
        let clear = words
            .iter()
            .find_map(|w| w.strip_prefix("clearcpuid="))
            .unwrap_or_else(|| panic!("no clearcpuid= in {c}"));
        // The kernel copies clearcpuid= into a 128-byte buffer.
        assert!(clear.len() < 128, "{} bytes", clear.len());
        for f in ["smap", "popcnt", "erms"] {
            assert!(clear.split(',').any(|x| x == f), "{f} not in {clear}");
        }
    }

    #[test]
    fn comments_and_line_breaks_are_dropped() {
        assert_eq!(small_cmdline("# a\n a  b\n\n  # c\nd\n"), "a b d");
    }

    #[test]
    fn the_cmdline_carries_the_script_the_share_and_the_timeout() {
        let linux = OurLinux {
            kind: LinuxKind::Small,
            kernel: PathBuf::from("k"),
            initrd: PathBuf::from("i"),
            release: "r".into(),
            memory: "256M",
            why: String::new(),
            base_cmdline: "console=ttyS0".into(),
        };
        let c = linux.cmdline("echo hi\n", "kataShared", 90);
        assert_eq!(
            c,
            format!(
                "console=ttyS0 vutest.timeout=90 vutest.fs=kataShared vutest.script={}",
                base64_encode(b"echo hi\n")
            )
        );
        assert!(!linux.cmdline("x", "", 1).contains("vutest.fs"));
    }
}
