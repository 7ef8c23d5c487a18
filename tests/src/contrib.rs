//! The project's `contrib/` files as a test sees them: the systemd units in
//! `contrib/systemd/` and the QEMU vhost-user descriptors in `contrib/qemu/`,
//! with the checks that the block and file-system daemons' files share.
//! The `assert_*` functions panic with what is wrong.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::fixture::find_binary;
use crate::process::{run_bounded, Finished};
use crate::systemd::Unit;

/// How long one `systemd-analyze` run may take.
const ANALYZE_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of `rel` below the workspace's `contrib/`.
pub fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(rel)
}

/// `contrib/REL` parsed as a unit file.
pub fn unit(rel: &str) -> Unit {
    Unit::parse(&contrib(rel)).unwrap_or_else(|e| panic!("{e}"))
}

/// `systemd/NAME@.service` and `systemd/NAME@.socket`, relative to `contrib/`.
pub fn unit_names(name: &str) -> (String, String) {
    (
        format!("systemd/{name}@.service"),
        format!("systemd/{name}@.socket"),
    )
}

/// Copies of `name`'s units as instance `instance` in `dir`, the service's
/// `installed_binary` replaced by `binary` (`systemd-analyze verify` checks
/// that it is executable); returns the service's and the socket's path.
pub fn instance_units(
    dir: &Path,
    name: &str,
    instance: &str,
    installed_binary: &str,
    binary: &Path,
) -> (PathBuf, PathBuf) {
    let (service_rel, socket_rel) = unit_names(name);
    let service = fs::read_to_string(contrib(&service_rel)).unwrap();
    assert!(service.contains(installed_binary));
    let service = service.replace(installed_binary, binary.to_str().unwrap());
    let svc = dir.join(format!("{name}@{instance}.service"));
    let sock = dir.join(format!("{name}@{instance}.socket"));
    fs::write(&svc, service).unwrap();
    fs::copy(contrib(&socket_rel), &sock).unwrap();
    (svc, sock)
}

/// `systemd-analyze verify` accepts `svc` and `sock` without a warning, and
/// `systemd-analyze security --offline` rates `svc`'s exposure at most
/// `threshold` tenths of 10; returns the security run.
pub fn assert_systemd_analyze(svc: &Path, sock: &Path, threshold: u32) -> Finished {
    let analyze = find_binary("systemd-analyze").unwrap();
    let mut cmd = Command::new(&analyze);
    cmd.arg("verify").arg("--man=no").arg(svc).arg(sock);
    let f = run_bounded(&mut cmd, ANALYZE_TIMEOUT).unwrap();
    assert_eq!(f.code(), Some(0), "systemd-analyze verify: {f:?}");
    // verify exits 0 on unknown keys and bad values too; it only warns.
    assert!(
        f.stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{}",
        f.stderr
    );

    let mut cmd = Command::new(&analyze);
    cmd.args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={threshold}"))
        .arg(svc);
    let f = run_bounded(&mut cmd, ANALYZE_TIMEOUT).unwrap();
    assert_eq!(
        f.code(),
        Some(0),
        "systemd-analyze security:\n{}{}",
        f.stdout,
        f.stderr
    );
    f
}

/// What `name@.socket` must say: it listens on `/run/NAME/%i.sock`, one
/// daemon serves every connection (`Accept=no`), the socket file goes on
/// stop, and it is wanted by `sockets.target`.
pub fn assert_socket_unit(name: &str) {
    let socket = unit(&unit_names(name).1);
    assert_eq!(
        socket.one("Socket", "ListenStream"),
        format!("/run/{name}/%i.sock")
    );
    assert!(
        socket
            .get("Socket", "Accept")
            .iter()
            .all(|v| v == "no" || v == "false"),
        "one daemon serves every connection: Accept= must stay no"
    );
    assert_eq!(socket.one("Socket", "RemoveOnStop"), "yes");
    assert!(socket
        .get("Install", "WantedBy")
        .iter()
        .any(|v| v == "sockets.target"));
}

/// What `name@.service` must say: [`assert_service_unit_basics`], and it
/// documents a `ReadWritePaths=` drop-in (for the daemons that serve files).
/// Returns the parsed unit for the daemon's own checks.
pub fn assert_service_unit(name: &str) -> Unit {
    let s = assert_service_unit_basics(name);
    let text = fs::read_to_string(contrib(&unit_names(name).0)).unwrap();
    assert!(
        text.contains("ReadWritePaths="),
        "ReadWritePaths= drop-in documented"
    );
    s
}

/// What `name@.service` must say whatever the daemon: it requires its
/// socket unit, is `Type=notify`, reads `/etc/NAME/%i.conf`, and takes its
/// socket from the socket unit (no `--socket-path` or `--fd` in
/// `ExecStart=`). Returns the parsed unit for the daemon's own checks.
pub fn assert_service_unit_basics(name: &str) -> Unit {
    let service_rel = unit_names(name).0;
    let s = unit(&service_rel);
    assert!(s
        .get("Unit", "Requires")
        .iter()
        .any(|v| *v == format!("{name}@%i.socket")));
    assert_eq!(s.one("Service", "Type"), "notify");
    assert_eq!(
        s.one("Service", "EnvironmentFile"),
        format!("/etc/{name}/%i.conf")
    );
    let exec = s.one("Service", "ExecStart");
    assert!(
        !exec.contains("--socket-path") && !exec.contains("--fd"),
        "the socket comes from the .socket unit: ExecStart={exec}"
    );
    s
}

/// The QEMU descriptor `contrib/REL` agrees with what `--print-capabilities`
/// printed (`capabilities`): a description, type `kind` (also the printed
/// one), the printed features, `installed_binary` as the binary, and the
/// same binary as `service`'s `ExecStart=`.
pub fn assert_qemu_descriptor(
    rel: &str,
    capabilities: &str,
    kind: &str,
    installed_binary: &str,
    service: &Unit,
) {
    let desc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(contrib(rel)).unwrap()).unwrap();
    let caps: serde_json::Value = serde_json::from_str(capabilities).unwrap();
    assert!(
        desc["description"]
            .as_str()
            .is_some_and(|d| !d.trim().is_empty()),
        "description: {}",
        desc["description"]
    );
    assert_eq!(desc["type"], kind);
    assert_eq!(desc["type"], caps["type"]);
    assert_eq!(desc["features"], caps["features"]);
    let binary = desc["binary"].as_str().expect("binary is a string");
    assert_eq!(binary, installed_binary);
    // The unit runs the same binary.
    let exec = service.one("Service", "ExecStart");
    assert_eq!(
        exec.split_whitespace().next(),
        Some(binary),
        "ExecStart={exec}"
    );
}
