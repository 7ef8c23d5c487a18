//! Our VMM (`target/<profile>/vmm`) and the freestanding test guest it boots
//! (`tests/guest-fw`, built for `x86_64-unknown-none` into
//! `target/guest-fw/`, outside the workspace).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::fixture::{poll_until, Daemon, Readiness, Result as FixtureResult, TempDir};
use crate::fw_devices::Blk;
use crate::ours::{bare_command, run_to_exit};
use crate::process::Finished;

/// The target triple of the test guest.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";

/// The test guest's crate.
pub fn guest_fw_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-fw/Cargo.toml")
}

/// The `target/` directory the running test binary lives in
/// (`target/<profile>/deps/<test>`), or the workspace's `target/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The command that builds the test guest into `target_dir`.
fn guest_build_command(target_dir: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        GUEST_TARGET,
        "--manifest-path",
    ])
    .arg(guest_fw_manifest())
    .arg("--target-dir")
    .arg(target_dir);
    cmd
}

/// Builds the test guest (once per test process) and returns its ELF.
/// The error names the command to run, and `rustup target add` when the
/// target is missing.
pub fn test_guest() -> Result<PathBuf, String> {
    static GUEST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let dir = target_dir().join("guest-fw");
            let mut cmd = guest_build_command(&dir);
            let shown = format!(
                "cargo build --release --target {GUEST_TARGET} --manifest-path {} --target-dir {}",
                guest_fw_manifest().display(),
                dir.display()
            );
            let out = cmd
                .output()
                .map_err(|e| format!("running `{shown}`: {e}"))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let hint = if stderr.contains("target may not be installed")
                    || stderr.contains("can't find crate for `core`")
                {
                    format!(" (the target is missing: `rustup target add {GUEST_TARGET}`, as scripts/setup.sh does)")
                } else {
                    String::new()
                };
                return Err(format!("building the test guest failed{hint}: `{shown}`\n{stderr}"));
            }
            let elf = dir.join(GUEST_TARGET).join("release/guest-fw");
            if elf.is_file() {
                Ok(elf)
            } else {
                Err(format!("`{shown}` succeeded but {} is missing", elf.display()))
            }
        })
        .clone()
}

/// Runs our `vmm` with `args` until it exits (killed after `timeout`).
pub fn run_vmm<I, S>(args: I, timeout: Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    run_to_exit("vmm", args, timeout)
}

/// The directory of rust-vmm's `vhost-device-vsock`, the backend our vmm
/// runs for `--vsock`: the kit's `bin/`, where `scripts/setup.sh`
/// installs it. Missing is an error naming the command that installs it.
pub fn vsock_backend_dir() -> FixtureResult<PathBuf> {
    let dir = crate::guest::kit_dir().join("bin");
    if dir.join(VSOCK_BACKEND).is_file() {
        return Ok(dir);
    }
    Err(crate::fixture::FixtureError::MissingBinary {
        name: VSOCK_BACKEND.into(),
        looked: format!("{} (scripts/setup.sh installs it)", dir.display()),
    })
}

/// rust-vmm's vsock backend.
pub const VSOCK_BACKEND: &str = "vhost-device-vsock";

/// Puts [`vsock_backend_dir`] first on `vmm`'s `PATH`, for `--vsock` (or
/// `vm.create`'s `vsock`): the vmm finds its vsock backend there. Where
/// it is missing, a vsock test fails on the vmm's error naming the program.
pub fn with_vsock_backend(vmm: &mut Command) {
    let Ok(dir) = vsock_backend_dir() else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(dir).chain(std::env::split_paths(&path));
    vmm.env(
        "PATH",
        std::env::join_paths(dirs).unwrap_or_else(|e| panic!("PATH: {e}")),
    );
}

/// [`run_vmm`] [`with_vsock_backend`].
pub fn run_vmm_with_vsock<I, S>(args: I, timeout: Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut cmd = bare_command("vmm").unwrap_or_else(|e| panic!("{e}"));
    with_vsock_backend(&mut cmd);
    cmd.args(args.into_iter().map(Into::into));
    crate::process::run_bounded(&mut cmd, timeout).unwrap_or_else(|e| panic!("running vmm: {e}"))
}

/// Our vmm's options for a disk, a share and a NIC whose backends serve on
/// these sockets: `--disk socket=BLK --fs tag=TAG,socket=FS --net
/// socket=NET,mac=MAC`.
pub fn device_args(
    blk_socket: &Path,
    tag: &str,
    fs_socket: &Path,
    net_socket: &Path,
    mac: &str,
) -> [OsString; 6] {
    [
        "--disk".into(),
        format!("socket={}", blk_socket.display()).into(),
        "--fs".into(),
        format!("tag={tag},socket={}", fs_socket.display()).into(),
        "--net".into(),
        format!("socket={},mac={mac}", net_socket.display()).into(),
    ]
}

/// Boots the test guest with `cpus` vCPUs and 64 MiB, serial on stdout.
pub fn boot_test_guest(cpus: u8, timeout: Duration) -> Finished {
    run_test_guest(&["--cpus".into(), format!("boot={cpus}")], timeout)
}

/// Runs the test guest with 64 MiB, serial on stdout, and `extra` (the
/// devices, `--cpus`) to its end. Here and in the other launchers of the
/// test guest and Linux, a guest reset ends the VMM (`--no-reboot`): the
/// guests reset only when they fail, and a test should see that at once.
pub fn run_test_guest(extra: &[String], timeout: Duration) -> Finished {
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let mut args: Vec<std::ffi::OsString> = vec![
        "--no-reboot".into(),
        "--kernel".into(),
        guest.into_os_string(),
        "--memory".into(),
        "size=64M".into(),
        "--serial".into(),
        "stdio".into(),
    ];
    args.extend(extra.iter().map(Into::into));
    run_vmm(args, timeout)
}

/// The last `blk-loop: round N ok` on the test guest's console (its
/// `blk-loop` mode writes, reads back and compares a sector per round).
pub fn blk_loop_rounds(console: &Path) -> u64 {
    loop_rounds(console, "blk-loop")
}

/// The last `MODE: round N ok` on the test guest's console, for its
/// `blk-loop`, `fs-loop` and `net-loop` modes (one line per completed
/// request round).
pub fn loop_rounds(console: &Path, mode: &str) -> u64 {
    let prefix = format!("{mode}: round ");
    serial(console)
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.strip_suffix(" ok"))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Our `vmm` booting the test guest with `console=ttyS0 guest_args` and
/// 64 MiB, the serial console in the file `console` (apart from the VMM's
/// log, so lines do not interleave), the API on `api`, and `extra` (the
/// devices, `--cpus`); returned once the API listens. Panics if it cannot
/// start, as [`boot_test_guest`] does.
pub fn spawn_test_guest(
    api: &Path,
    console: &Path,
    guest_args: &str,
    extra: &[String],
    timeout: Duration,
) -> Daemon {
    spawn_test_guest_with_memory(api, console, guest_args, "size=64M", extra, timeout)
}

/// [`spawn_test_guest`] with `--memory memory`.
pub fn spawn_test_guest_with_memory(
    api: &Path,
    console: &Path,
    guest_args: &str,
    memory: &str,
    extra: &[String],
    timeout: Duration,
) -> Daemon {
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let mut args: Vec<std::ffi::OsString> = vec![
        "--no-reboot".into(),
        "--kernel".into(),
        guest.into_os_string(),
        "--cmdline".into(),
        format!("console=ttyS0 {guest_args}").into(),
        "--memory".into(),
        memory.into(),
        "--serial".into(),
        format!("file={}", console.display()).into(),
        "--api-socket".into(),
        api.as_os_str().to_owned(),
    ];
    args.extend(extra.iter().map(Into::into));
    spawn_vmm(args, api, &["control API on"], timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// `vmm --api-socket API --no-reboot` with no VM yet, as Kata starts it;
/// returned once the API listens. Panics if it cannot start.
pub fn spawn_empty_vmm(api: &Path, timeout: Duration) -> Daemon {
    let args = [
        "--api-socket".as_ref(),
        api.as_os_str(),
        "--no-reboot".as_ref(),
    ];
    spawn_vmm(args, api, &["control API on"], timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// What a failed test shows: the guest's serial console (the file
/// `console`), the VMM's log and each of `daemons`' logs.
pub fn guest_logs(console: &Path, vmm: &Daemon, daemons: &[&Daemon]) -> String {
    let mut s = format!(
        "--- serial\n{}\n--- vmm log\n{}",
        serial(console),
        vmm.log_contents()
    );
    for d in daemons {
        s += &format!("--- {} log\n{}", d.name(), d.log_contents());
    }
    s
}

/// What the test guest prints once it waits for the power button
/// (`wait-power-button` on its command line): everything before it is done.
pub const WAITING: &str = "waiting for the power button";

/// The test guest on two `--memory-zone`s made guest NUMA nodes 0 and 1,
/// with a disk the blk daemon serves: the guest reads the SRAT and does
/// its sector 9 round trip through the top pages of node 1's memory
/// (`guest-fw/src/blk.rs`), so the daemon reads and writes that zone.
pub struct TwoNodeGuest {
    pub vmm: Daemon,
    pub blk: Blk,
    pub api: PathBuf,
    pub console: PathBuf,
}

impl TwoNodeGuest {
    /// Boots it with 2 vCPUs, `--memory-zone zones[i]` and `--numa
    /// nodes[i]`, in `dir`; returned once the guest waits for the power
    /// button (panics with the logs if it does not get there).
    pub fn start(dir: &TempDir, zones: [&str; 2], nodes: [&str; 2]) -> Self {
        let blk = crate::fw_devices::blk(dir);
        let (api, console) = (dir.join("api.sock"), dir.join("console.txt"));
        let mut extra = vec!["--cpus".to_string(), "boot=2".into()];
        for (zone, node) in zones.iter().zip(nodes) {
            extra.extend(["--memory-zone".into(), zone.to_string()]);
            extra.extend(["--numa".into(), node.to_string()]);
        }
        extra.extend(["--disk".into(), format!("socket={}", blk.socket.display())]);
        let mut vmm = spawn_test_guest_with_memory(
            &api,
            &console,
            "wait-power-button",
            "size=0",
            &extra,
            GUEST_TIMEOUT,
        );
        wait_for_serial(&mut vmm, &console, WAITING, GUEST_TIMEOUT, |v| {
            guest_logs(&console, v, &[&blk.daemon])
        });
        TwoNodeGuest {
            vmm,
            blk,
            api,
            console,
        }
    }

    /// The serial console, the VMM's and the daemon's logs.
    pub fn show(&self) -> String {
        guest_logs(&self.console, &self.vmm, &[&self.blk.daemon])
    }

    /// The guest's sector 9 round trip went through the pages below
    /// `node1_end`, the end of node 1's memory.
    pub fn assert_far_sector(&self, node1_end: u64) {
        let want = format!(
            "blk: sector 9 through node 1 memory at {:#x}: ok",
            node1_end - 0x2000
        );
        assert!(
            serial(&self.console).contains(&want),
            "no {want:?}\n{}",
            self.show()
        );
    }

    /// What the guest wrote to sector 9 (from node 1's memory) and the
    /// daemon read back into the page after it: `loop_byte(9, i)` of
    /// `guest-fw/src/blk.rs`.
    pub fn far_sector() -> Vec<u8> {
        (0..512).map(|i| ((9 * 7 + i) % 253) as u8).collect()
    }

    /// Presses the power button and shuts the VMM down (its status 0).
    pub fn power_off(&mut self) {
        let wait = Duration::from_secs(60);
        press_power_button(&self.api, &self.vmm, wait, || self.show());
        let all = self.show();
        shutdown_vmm(&self.api, &mut self.vmm, wait, |_| all.clone());
    }
}

/// How long the test guest may take to boot on a loaded machine.
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What the VMM logs when the guest powers off while the API serves on.
pub const POWERED_OFF: &str = "guest powered off; serving the API until vmm.shutdown";

/// A finished `vmm` run (status, stdout, stderr), for failure messages.
pub fn show_run(run: &Finished) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        run.status, run.stdout, run.stderr
    )
}

/// Runs our `vmm` with `args` and checks that it refuses them: exit `code`
/// and one stderr line, the `error: ` line naming every one of `culprits`.
pub fn assert_one_line_refusal(args: &[&str], code: i32, culprits: &[&str], timeout: Duration) {
    let run = run_vmm(args.iter().copied(), timeout);
    let line = run
        .refusal(&[code], culprits)
        .unwrap_or_else(|e| panic!("vmm {args:?}: {e}"));
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "not one line: {line}\n{}",
        show_run(&run)
    );
}

/// The guest's serial console file so far (empty before it exists).
pub fn serial(console: &Path) -> String {
    std::fs::read_to_string(console).unwrap_or_default()
}

/// Waits until the console file holds `line`, or the VMM exits; panics
/// unless the console holds it, with `context(vmm)` (the logs to show).
pub fn wait_for_serial(
    vmm: &mut Daemon,
    console: &Path,
    line: &str,
    timeout: Duration,
    context: impl Fn(&Daemon) -> String,
) {
    let seen = poll_until(timeout, || {
        serial(console).contains(line) || !matches!(vmm.try_wait(), Ok(None))
    });
    assert!(
        seen && serial(console).contains(line),
        "the guest's console does not get to {line:?}\n{}",
        context(vmm)
    );
}

/// `vm.power-button` (answered 204), then waits for the VMM to log
/// [`POWERED_OFF`]; panics with `context()` if it does not.
pub fn press_power_button(
    api: &Path,
    vmm: &Daemon,
    timeout: Duration,
    context: impl Fn() -> String,
) {
    assert_eq!(
        crate::http::call(api, "PUT", "/api/v1/vm.power-button", None).0,
        204
    );
    assert!(
        poll_until(timeout, || vmm.log_contents().contains(POWERED_OFF)),
        "the guest did not power off\n{}",
        context()
    );
}

/// `vmm.shutdown` (answered 204), then the VMM exits with 0 within
/// `timeout`; `context(vmm)` (the logs) is shown if not. Returns its status.
pub fn shutdown_vmm(
    api: &Path,
    vmm: &mut Daemon,
    timeout: Duration,
    context: impl Fn(&Daemon) -> String,
) -> ExitStatus {
    assert_eq!(
        crate::http::call(api, "PUT", "/api/v1/vmm.shutdown", None).0,
        204,
        "{}",
        context(vmm)
    );
    let status = vmm
        .wait_timeout(timeout)
        .unwrap()
        .unwrap_or_else(|| panic!("the VMM did not exit\n{}", context(vmm)));
    assert_eq!(status.code(), Some(0), "{}", context(vmm));
    status
}

/// The test guest's console lists a disk, a share and a NIC, plugged in
/// that order from slot 1, and counts three virtio devices; `context()`
/// (the logs) is shown for a missing line.
pub fn assert_disk_share_nic_listed(stdout: &str, context: impl Fn() -> String) {
    assert_devices_listed(stdout, &[], context)
}

/// [`assert_disk_share_nic_listed`] with more virtio devices after them,
/// each the console's `pci` line of its slot (`00:04.0 1af4:1053`).
pub fn assert_devices_listed(stdout: &str, more: &[&str], context: impl Fn() -> String) {
    let count = format!("virtio: {} device(s)\n", 3 + more.len());
    let lines = [
        "pci 00:01.0 1af4:1042 class 0180\n",
        "pci 00:02.0 1af4:105a class 0180\n",
        "pci 00:03.0 1af4:1041 class 0200\n",
    ];
    for line in lines.iter().chain(more).chain([&count.as_str()]) {
        assert!(stdout.contains(line), "missing {line:?}\n{}", context());
    }
}

/// `vm.info` (answered 200).
pub fn vm_info(api: &Path) -> Value {
    let (status, body) = crate::http::call(api, "GET", "/api/v1/vm.info", None);
    assert_eq!(status, 200, "{body}");
    body
}

/// The counter `who.name` of `vm.counters` (answered 200).
pub fn vm_counter(api: &Path, who: &str, name: &str) -> u64 {
    let (status, body) = crate::http::call(api, "GET", "/api/v1/vm.counters", None);
    assert_eq!(status, 200, "{body}");
    body[who][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {who}.{name} in {body}"))
}

/// Where [`halting_kernel`] loads its one segment (1 MiB, where RAM above
/// the legacy hole starts).
const HALT_LOAD_ADDR: u64 = 0x10_0000;

/// The bytes of a minimal 64-bit ELF "kernel" (no PVH note, so the VMM
/// enters it in long mode) whose entry is `hlt; jmp .-1` with interrupts
/// off: the vCPU halts for good and the VMM runs until it is stopped. For
/// tests that need a VM that stays up (the test guest powers off within a
/// second).
pub fn halting_kernel_image() -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let code: [u8; 3] = [0xf4, 0xeb, 0xfd]; // hlt; jmp -3 (back to hlt)
    let len = EHDR + PHDR + code.len() as u64;
    let mut elf = Vec::with_capacity(len as usize);
    // e_ident: magic, ELFCLASS64, little-endian, version 1, System V.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&(HALT_LOAD_ADDR + EHDR + PHDR).to_le_bytes()); // e_entry
    elf.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&[0; 4]); // e_shnum, e_shstrndx
                                    // The one PT_LOAD segment: the whole file at HALT_LOAD_ADDR, R+X.
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&HALT_LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&HALT_LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&len.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&len.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(&code);
    elf
}

/// Writes [`halting_kernel_image`] to `path`.
pub fn halting_kernel(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, halting_kernel_image())
}

/// Spawns our `vmm` with `args` as a [`Daemon`] (its log is stdout and
/// stderr; dropping it stops it), ready when its log contains every one of
/// `ready_lines`. `socket` is only what [`Daemon::socket`] reports.
pub fn spawn_vmm<I, S>(
    args: I,
    socket: &Path,
    ready_lines: &[&str],
    timeout: Duration,
) -> FixtureResult<Daemon>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = bare_command("vmm")?;
    with_vsock_backend(&mut cmd);
    cmd.args(args);
    let ready: Vec<Readiness> = ready_lines
        .iter()
        .map(|l| Readiness::LogLine((*l).to_string()))
        .collect();
    Daemon::spawn("vmm", cmd, socket, &ready, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_halting_kernel_is_a_well_formed_elf() {
        let elf = halting_kernel_image();
        assert_eq!(elf.len(), 64 + 56 + 3);
        assert_eq!(&elf[..4], b"\x7fELF");
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
        assert_eq!(u64_at(24), HALT_LOAD_ADDR + 120); // e_entry: the hlt
        assert_eq!(u64_at(32), 64); // e_phoff
        assert_eq!(u64_at(64 + 32), elf.len() as u64); // p_filesz
        assert_eq!(&elf[120..], &[0xf4, 0xeb, 0xfd]);
    }
}
