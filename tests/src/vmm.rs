//! Our VMM (`target/<profile>/vmm`) and the freestanding test guest it boots
//! (`tests/guest-fw`, built for `x86_64-unknown-none` into
//! `target/guest-fw/`, outside the workspace).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::ours::run_to_exit;
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

/// Boots the test guest with `cpus` vCPUs and 64 MiB, serial on stdout.
pub fn boot_test_guest(cpus: u8, timeout: Duration) -> Finished {
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let cpus = format!("boot={cpus}");
    run_vmm(
        [
            "--kernel".as_ref(),
            guest.as_os_str(),
            "--memory".as_ref(),
            "size=64M".as_ref(),
            "--serial".as_ref(),
            "stdio".as_ref(),
            "--cpus".as_ref(),
            cpus.as_ref(),
        ],
        timeout,
    )
}
