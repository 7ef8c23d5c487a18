//! Command line of our `vhost-blk-daemon` (contract: /work/notes/blk-spec.md,
//! "CLI"), and its contrib files: the systemd units in `contrib/systemd/`
//! and the QEMU vhost-user descriptor in `contrib/qemu/`.
//!
//! Every refusal is checked the same way: the exit code, exactly one line
//! starting with `error: ` (the first line that mentions an error at all)
//! naming the culprit, and no panic.

use std::ffi::OsString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vu_driver::blk::{BlkClient, BlkOptions, SECTOR_SIZE};
use vu_driver::contrib::{
    assert_qemu_descriptor, assert_service_unit, assert_socket_unit, assert_systemd_analyze,
    contrib, instance_units, unit,
};
use vu_driver::fixture::{create_sparse_image, poll_until, Daemon, Readiness, TempDir};
use vu_driver::ours::{bare_command, project_binary, run_to_exit, vhost_blk_daemon, BlkDaemonOpts};
use vu_driver::process::{inherit_fd_as, run_bounded, Finished};
use vu_driver::systemd::{
    environment_file, expand_exec, socket_activate_command, time_span_secs, NotifyListener,
};

const CAPABILITIES: &str = "{\"type\":\"block\",\"features\":[\"read-only\",\"blk-file\"]}\n";
const IMAGE_SIZE: u64 = 16 << 20;
const T: Duration = Duration::from_secs(10);

/// A temporary directory with an image and a (not yet existing) socket path.
struct Env {
    dir: TempDir,
    image: PathBuf,
    socket: PathBuf,
}

fn env(name: &str) -> Env {
    let dir = TempDir::new(&format!("blk-cli-{name}")).unwrap();
    let image = dir.join("disk.img");
    create_sparse_image(&image, IMAGE_SIZE).unwrap();
    let socket = dir.join("blk.sock");
    Env { dir, image, socket }
}

fn daemon_command() -> Command {
    bare_command("vhost-blk-daemon").unwrap()
}

/// Runs the daemon with `args` until it exits (killed after 10 s).
fn run<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    run_to_exit("vhost-blk-daemon", args, T)
}

/// `--socket-path SOCKET --blk-file IMAGE` followed by `extra`.
fn args(e: &Env, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "--socket-path".into(),
        e.socket.clone().into(),
        "--blk-file".into(),
        e.image.clone().into(),
    ];
    v.extend(extra.iter().map(OsString::from));
    v
}

/// Asserts that the daemon refused to run (see [`Finished::refusal`]):
/// exited by itself with one of `codes`, with exactly one `error: ` line on
/// stderr, which is the first line mentioning an error and contains every
/// string of `culprits`; and that it did not panic. Returns the error line.
fn assert_refused(f: &Finished, codes: &[i32], culprits: &[&str]) -> String {
    f.refusal(codes, culprits).unwrap_or_else(|m| panic!("{m}"))
}

#[test]
fn print_capabilities_prints_exact_json_and_exits_0() {
    let f = run(["--print-capabilities"]);
    assert_eq!(f.code(), Some(0), "{f:?}");
    assert_eq!(f.stdout, CAPABILITIES);
    assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
}

#[test]
fn socket_path_with_fd_is_a_usage_error_naming_both() {
    let e = env("both");
    let f = run(args(&e, &["--fd", "3"]));
    assert_refused(&f, &[2], &["--socket-path", "--fd"]);
    assert!(!e.socket.exists(), "socket created anyway");
}

#[test]
fn no_socket_option_and_no_activation_is_refused() {
    let e = env("nosock");
    let f = run(["--blk-file".into(), e.image.clone().into_os_string()]);
    assert_refused(&f, &[1], &["--socket-path", "--fd"]);
}

#[test]
fn missing_blk_file_option_is_a_usage_error() {
    let e = env("noblk");
    let f = run(["--socket-path".into(), e.socket.clone().into_os_string()]);
    assert_refused(&f, &[2], &["--blk-file"]);
    assert!(!e.socket.exists(), "socket created anyway");
}

#[test]
fn missing_blk_file_exits_1_naming_the_path() {
    let e = env("missing");
    let missing = e.dir.join("no-such-dir").join("nothing.img");
    let f = run([
        OsString::from("--socket-path"),
        e.socket.clone().into(),
        "--blk-file".into(),
        missing.clone().into(),
    ]);
    assert_refused(&f, &[1], &[missing.to_str().unwrap()]);
    assert!(
        !e.socket.exists(),
        "socket {} left behind",
        e.socket.display()
    );
}

#[test]
fn directory_as_blk_file_exits_1_naming_it() {
    let e = env("dir");
    let f = run([
        OsString::from("--socket-path"),
        e.socket.clone().into(),
        "--blk-file".into(),
        e.dir.path().into(),
    ]);
    assert_refused(&f, &[1], &[e.dir.path().to_str().unwrap()]);
    assert!(
        !e.socket.exists(),
        "socket {} left behind",
        e.socket.display()
    );
}

/// Runs the daemon with each `extra` option (and a valid socket and image)
/// and checks that it is refused naming `culprits` and creates no socket.
fn assert_option_refused(name: &str, cases: &[(&[&str], &[&str])]) {
    let e = env(name);
    for (extra, culprits) in cases {
        let f = run(args(&e, extra));
        // A value clap refuses is a usage error (2); one checked later, a runtime error (1).
        let line = assert_refused(&f, &[1, 2], culprits);
        eprintln!("{extra:?}: {line}");
        assert!(!e.socket.exists(), "{extra:?}: socket created anyway");
    }
}

#[test]
fn serial_of_21_bytes_is_refused() {
    let serial21 = "s".repeat(21);
    assert_option_refused("serial", &[(&["--serial", &serial21], &["serial"])]);
}

#[test]
fn num_queues_0_and_65_are_refused() {
    assert_option_refused(
        "queues",
        &[
            (&["--num-queues", "0"], &["num-queues"]),
            (&["--num-queues", "65"], &["num-queues", "65"]),
        ],
    );
}

#[test]
fn queue_size_not_a_power_of_two_or_out_of_range_is_refused() {
    assert_option_refused(
        "qsize",
        &[
            (&["--queue-size", "100"], &["queue-size", "100"]),
            (&["--queue-size", "65536"], &["queue-size", "65536"]),
            (&["--queue-size", "1"], &["queue-size"]),
        ],
    );
}

#[test]
fn logical_block_size_1000_is_refused() {
    assert_option_refused(
        "lbs",
        &[
            (
                &["--logical-block-size", "1000"],
                &["logical-block-size", "1000"],
            ),
            (
                &["--logical-block-size", "8192"],
                &["logical-block-size", "8192"],
            ),
        ],
    );
}

#[test]
fn log_level_bogus_is_refused() {
    assert_option_refused("loglevel", &[(&["--log-level", "bogus"], &["bogus"])]);
}

#[test]
fn unknown_option_is_a_usage_error_naming_it() {
    let e = env("unknown");
    let f = run(args(&e, &["--frobnicate"]));
    assert_refused(&f, &[2], &["--frobnicate"]);
}

#[test]
fn boundary_values_are_accepted_and_take_effect() {
    let e = env("bounds");
    let serial20 = "0123456789abcdefghij";
    let opts = BlkDaemonOpts {
        num_queues: Some(64),
        queue_size: Some(32768),
        logical_block_size: Some(4096),
        serial: Some(serial20.to_string()),
        extra_args: vec!["--log-level".into(), "off".into()],
        ..BlkDaemonOpts::default()
    };
    let mut d = vhost_blk_daemon(&e.image, &e.socket, &opts).unwrap();
    {
        let mut c = BlkClient::connect(&e.socket, &BlkOptions::default()).unwrap();
        let cfg = c.config().unwrap();
        assert_eq!(cfg.num_queues, 64);
        assert_eq!(cfg.blk_size, 4096);
        assert_eq!(cfg.capacity, IMAGE_SIZE / SECTOR_SIZE);
        assert_eq!(c.get_id().unwrap(), serial20);
    }
    assert!(d.stop().unwrap().success());

    let e = env("bounds-low");
    let opts = BlkDaemonOpts {
        num_queues: Some(1),
        queue_size: Some(2),
        logical_block_size: Some(512),
        ..BlkDaemonOpts::default()
    };
    let mut d = vhost_blk_daemon(&e.image, &e.socket, &opts).unwrap();
    assert!(d.stop().unwrap().success());
}

#[test]
fn socket_path_of_a_live_listener_is_refused_and_left_alone() {
    let e = env("inuse");
    let other = UnixListener::bind(&e.socket).unwrap();
    let f = run(args(&e, &[]));
    assert_refused(&f, &[1], &[e.socket.to_str().unwrap()]);
    assert!(
        e.socket.exists(),
        "the other listener's socket file was removed"
    );
    // And it still reaches the other listener.
    let _client = UnixStream::connect(&e.socket).unwrap();
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_ok(), "the other listener lost its socket");
}

#[test]
fn stale_socket_file_is_replaced() {
    let e = env("stale");
    drop(UnixListener::bind(&e.socket).unwrap());
    assert!(e.socket.exists());
    // A child another test forks holds a copy of the listener until it
    // execs: wait for that to pass.
    assert!(
        poll_until(T, || UnixStream::connect(&e.socket).is_err()),
        "nobody should listen"
    );
    let mut cmd = daemon_command();
    cmd.args(args(&e, &[]));
    // The file exists already: readiness is a working connection below.
    let mut d = Daemon::spawn("vhost-blk-daemon", cmd, &e.socket, &[], T).unwrap();
    {
        let mut c = BlkClient::connect(&e.socket, &BlkOptions::default()).unwrap();
        c.write(0, &[0x5a; 512]).unwrap();
        assert_eq!(c.read(0, 512).unwrap(), vec![0x5a; 512]);
    }
    assert!(d.stop().unwrap().success());
    assert!(!e.socket.exists(), "socket left behind");
}

/// Runs the daemon with `fd` handed over as descriptor 7 and `--fd 7`.
fn run_with_fd(e: &Env, fd: &impl AsRawFd) -> Finished {
    let mut cmd = daemon_command();
    cmd.arg("--fd").arg("7").arg("--blk-file").arg(&e.image);
    inherit_fd_as(&mut cmd, fd.as_raw_fd(), 7);
    run_bounded(&mut cmd, T).unwrap()
}

#[test]
fn fd_that_is_not_open_is_refused() {
    let e = env("fd99");
    let f = run([
        "--fd".into(),
        "99".into(),
        "--blk-file".into(),
        e.image.into_os_string(),
    ]);
    assert_refused(&f, &[1], &["99"]);
}

#[test]
fn fd_of_a_regular_file_is_refused() {
    let e = env("fdfile");
    let file = fs::File::open(&e.image).unwrap();
    let f = run_with_fd(&e, &file);
    assert_refused(&f, &[1], &["7", "socket"]);
}

#[test]
fn fd_of_a_datagram_socket_is_refused() {
    let e = env("fddgram");
    let dgram = UnixDatagram::bind(e.dir.join("dgram.sock")).unwrap();
    let f = run_with_fd(&e, &dgram);
    assert_refused(&f, &[1], &["7"]);
}

// ---- contrib/ ----

const NAME: &str = "vhost-blk-daemon";
const SERVICE: &str = "systemd/vhost-blk-daemon@.service";
const INSTALLED_BINARY: &str = "/usr/libexec/vhost-blk-daemon";

#[test]
fn qemu_descriptor_agrees_with_print_capabilities_and_the_unit() {
    let caps_run = run(["--print-capabilities"]);
    assert_eq!(caps_run.code(), Some(0), "{caps_run:?}");
    assert_qemu_descriptor(
        "qemu/50-vhost-blk-daemon.json",
        &caps_run.stdout,
        "block",
        INSTALLED_BINARY,
        &unit(SERVICE),
    );
}

#[test]
fn unit_files_have_the_key_settings() {
    assert_socket_unit(NAME);
    let s = assert_service_unit(NAME);
    let exec = s.one("Service", "ExecStart");
    assert!(
        exec.contains("--blk-file ${VHOST_BLK_FILE}"),
        "ExecStart={exec}"
    );
    let watchdog = time_span_secs(s.one("Service", "WatchdogSec"));
    assert!((1.0..=60.0).contains(&watchdog), "WatchdogSec {watchdog} s");
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("StateDirectory", "vhost-blk-daemon"),
    ] {
        assert_eq!(s.one("Service", key), want, "[Service] {key}=");
    }
    // The ReadWritePaths= drop-in for images elsewhere is documented.
    let text = fs::read_to_string(contrib(SERVICE)).unwrap();
    assert!(
        text.contains("# [Service]") || text.contains("#   [Service]"),
        "drop-in example"
    );
}

#[test]
fn unit_files_pass_systemd_analyze_verify_and_security() {
    let dir = TempDir::new("blk-cli-units").unwrap();
    let daemon = project_binary(NAME).unwrap();
    let (svc, sock) = instance_units(dir.path(), NAME, "disk0", INSTALLED_BINARY, &daemon);
    // Exposure at most 2.0 of 10 ("OK") by systemd's own scoring.
    assert_systemd_analyze(&svc, &sock, 20);
}

#[test]
fn unit_command_line_with_the_example_config_serves_under_socket_activation() {
    let e = env("unit-cmd");
    let service = unit(SERVICE);
    // Environment= defaults first, then the EnvironmentFile overrides them.
    let mut vars = service.environment("disk0");
    vars.extend(environment_file(&contrib("systemd/example.conf")).unwrap());
    assert!(
        vars.contains_key("VHOST_BLK_FILE"),
        "example.conf sets VHOST_BLK_FILE"
    );
    vars.insert("VHOST_BLK_FILE".into(), e.image.to_str().unwrap().into());
    let argv = expand_exec(service.one("Service", "ExecStart"), "disk0", &vars);
    assert_eq!(argv[0], INSTALLED_BINARY);

    let mut n = NotifyListener::bind(e.dir.path()).unwrap();
    let daemon = project_binary(NAME).unwrap();
    let cmd = socket_activate_command(&e.socket, Some(n.path()), &daemon, &argv[1..]).unwrap();
    let ready = [Readiness::Path(e.socket.clone())];
    let mut d = Daemon::spawn("systemd-socket-activate", cmd, &e.socket, &ready, T).unwrap();
    {
        // The connection starts the daemon; example.conf asks for 2 queues, serial disk0.
        let mut c = BlkClient::connect(&e.socket, &BlkOptions::default()).unwrap();
        assert_eq!(c.config().unwrap().num_queues, 2);
        assert_eq!(c.get_id().unwrap(), "disk0");
        c.write(8, &[0xa5; 4096]).unwrap();
        assert_eq!(c.read(8, 4096).unwrap(), vec![0xa5; 4096]);
    }
    // Type=notify: READY=1 must have been sent.
    assert!(
        n.wait_for("READY=1", T).unwrap(),
        "no READY=1 for Type=notify; got {:?}",
        n.seen
    );
    assert!(d.stop().unwrap().success());
}
