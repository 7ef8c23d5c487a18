//! Command line of our `vhost-blk-daemon` (contract: /work/notes/blk-spec.md,
//! "CLI"), and its contrib files: the systemd units in `contrib/systemd/`
//! and the QEMU vhost-user descriptor in `contrib/qemu/`.
//!
//! Every refusal is checked the same way: the exit code, exactly one line
//! starting with `error: ` (the first line that mentions an error at all)
//! naming the culprit, and no panic.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vu_driver::blk::{BlkClient, BlkOptions, SECTOR_SIZE};
use vu_driver::fixture::{create_sparse_image, find_binary, Daemon, Readiness, TempDir};
use vu_driver::ours::{project_binary, vhost_blk_daemon, BlkDaemonOpts};
use vu_driver::process::{inherit_fd_as, run_bounded, without_systemd_env, Finished};

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
    let mut cmd = Command::new(project_binary("vhost-blk-daemon").unwrap());
    without_systemd_env(&mut cmd);
    cmd
}

/// Runs the daemon with `args` until it exits (killed after 10 s).
fn run<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut cmd = daemon_command();
    cmd.args(args.into_iter().map(Into::into));
    run_bounded(&mut cmd, T).unwrap()
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

/// Asserts that the daemon refused to run: exited by itself with one of
/// `codes`, with exactly one `error: ` line on stderr, which is the first
/// line mentioning an error and contains every string of `culprits`; and
/// that it did not panic. Returns the error line.
fn assert_refused(f: &Finished, codes: &[i32], culprits: &[&str]) -> String {
    let Some(status) = f.status else {
        panic!(
            "still running after {T:?} instead of refusing; stderr:\n{}",
            f.stderr
        );
    };
    assert!(
        f.code().is_some_and(|c| codes.contains(&c)),
        "exit status {status}, expected code {codes:?}; stderr:\n{}",
        f.stderr
    );
    assert!(!f.stderr.contains("panicked"), "it panicked:\n{}", f.stderr);
    let first = f
        .stderr
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("error"))
        .unwrap_or_else(|| panic!("no error line on stderr:\n{}", f.stderr));
    assert!(
        first.starts_with("error: "),
        "the first error line does not start with `error: `: {first:?}\nstderr:\n{}",
        f.stderr
    );
    let error_lines = f.stderr.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(
        error_lines, 1,
        "expected one `error:` line; stderr:\n{}",
        f.stderr
    );
    for c in culprits {
        assert!(
            first.contains(c),
            "the error line does not name {c:?}: {first:?}"
        );
    }
    first.to_string()
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
    assert!(
        UnixStream::connect(&e.socket).is_err(),
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

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(rel)
}

const SERVICE: &str = "systemd/vhost-blk-daemon@.service";
const SOCKET: &str = "systemd/vhost-blk-daemon@.socket";
const INSTALLED_BINARY: &str = "/usr/libexec/vhost-blk-daemon";

/// A unit file: (section, key) -> every value given, in order.
type Unit = BTreeMap<(String, String), Vec<String>>;

/// Parses a systemd unit file (no line continuations are used in ours).
fn parse_unit(path: &Path) -> Unit {
    let text = fs::read_to_string(path).unwrap();
    let mut unit = Unit::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "{}:{}: continuation line",
            path.display(),
            n + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: not key=value: {line}", path.display(), n + 1));
        unit.entry((section.clone(), k.trim().to_string()))
            .or_default()
            .push(v.trim().to_string());
    }
    unit
}

fn get<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a [String] {
    unit.get(&(section.to_string(), key.to_string()))
        .map_or(&[], Vec::as_slice)
}

/// The one value of `key`, failing if it is missing or given twice.
fn one<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    match get(unit, section, key) {
        [v] => v,
        other => panic!("[{section}] {key}= should be given once, found {other:?}"),
    }
}

/// Seconds of a systemd time span like `10s`, `10`, `2min`, `500ms`.
fn seconds(span: &str) -> f64 {
    let digits = span.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: f64 = digits
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("time span {span:?}"));
    match &span[digits.len()..] {
        "" | "s" | "sec" => n,
        "ms" | "msec" => n / 1000.0,
        "min" | "m" => n * 60.0,
        unit => panic!("time span unit {unit:?} in {span:?}"),
    }
}

#[test]
fn qemu_descriptor_agrees_with_print_capabilities_and_the_unit() {
    let path = contrib("qemu/50-vhost-blk-daemon.json");
    let desc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let caps_run = run(["--print-capabilities"]);
    assert_eq!(caps_run.code(), Some(0), "{caps_run:?}");
    let caps: serde_json::Value = serde_json::from_str(&caps_run.stdout).unwrap();

    assert!(
        desc["description"]
            .as_str()
            .is_some_and(|d| !d.trim().is_empty()),
        "description: {}",
        desc["description"]
    );
    assert_eq!(desc["type"], caps["type"]);
    assert_eq!(desc["type"], "block");
    assert_eq!(desc["features"], caps["features"]);
    let binary = desc["binary"].as_str().expect("binary is a string");
    assert_eq!(binary, INSTALLED_BINARY);
    // The unit runs the same binary.
    let service = parse_unit(&contrib(SERVICE));
    let exec = one(&service, "Service", "ExecStart");
    assert_eq!(
        exec.split_whitespace().next(),
        Some(binary),
        "ExecStart={exec}"
    );
}

#[test]
fn unit_files_have_the_key_settings() {
    let socket = parse_unit(&contrib(SOCKET));
    assert_eq!(
        one(&socket, "Socket", "ListenStream"),
        "/run/vhost-blk-daemon/%i.sock"
    );
    assert!(
        get(&socket, "Socket", "Accept")
            .iter()
            .all(|v| v == "no" || v == "false"),
        "one daemon serves every connection: Accept= must stay no"
    );
    assert_eq!(one(&socket, "Socket", "RemoveOnStop"), "yes");
    assert!(get(&socket, "Install", "WantedBy")
        .iter()
        .any(|v| v == "sockets.target"));

    let s = parse_unit(&contrib(SERVICE));
    assert!(get(&s, "Unit", "Requires")
        .iter()
        .any(|v| v == "vhost-blk-daemon@%i.socket"));
    assert_eq!(one(&s, "Service", "Type"), "notify");
    assert_eq!(
        one(&s, "Service", "EnvironmentFile"),
        "/etc/vhost-blk-daemon/%i.conf"
    );
    let exec = one(&s, "Service", "ExecStart");
    assert!(
        exec.contains("--blk-file ${VHOST_BLK_FILE}"),
        "ExecStart={exec}"
    );
    assert!(
        !exec.contains("--socket-path") && !exec.contains("--fd"),
        "the socket comes from the .socket unit: ExecStart={exec}"
    );
    let watchdog = seconds(one(&s, "Service", "WatchdogSec"));
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
        assert_eq!(one(&s, "Service", key), want, "[Service] {key}=");
    }
    // The ReadWritePaths= drop-in for images elsewhere is documented.
    let text = fs::read_to_string(contrib(SERVICE)).unwrap();
    assert!(
        text.contains("# [Service]") || text.contains("#   [Service]"),
        "drop-in example"
    );
    assert!(
        text.contains("ReadWritePaths="),
        "ReadWritePaths= drop-in documented"
    );
}

/// Copies of the units as instance `disk0`, the service's binary pointing
/// at the one built here (verify checks that it is executable).
fn instance_units(dir: &TempDir) -> (PathBuf, PathBuf) {
    let daemon = project_binary("vhost-blk-daemon").unwrap();
    let service = fs::read_to_string(contrib(SERVICE)).unwrap();
    assert!(service.contains(INSTALLED_BINARY));
    let service = service.replace(INSTALLED_BINARY, daemon.to_str().unwrap());
    let svc = dir.join("vhost-blk-daemon@disk0.service");
    let sock = dir.join("vhost-blk-daemon@disk0.socket");
    fs::write(&svc, service).unwrap();
    fs::copy(contrib(SOCKET), &sock).unwrap();
    (svc, sock)
}

#[test]
fn unit_files_pass_systemd_analyze_verify_and_security() {
    let analyze = find_binary("systemd-analyze").unwrap();
    let dir = TempDir::new("blk-cli-units").unwrap();
    let (svc, sock) = instance_units(&dir);
    let mut cmd = Command::new(&analyze);
    cmd.arg("verify").arg("--man=no").arg(&svc).arg(&sock);
    let f = run_bounded(&mut cmd, Duration::from_secs(60)).unwrap();
    assert_eq!(f.code(), Some(0), "systemd-analyze verify: {f:?}");
    // verify exits 0 on unknown keys and bad values too; it only warns.
    assert!(
        f.stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{}",
        f.stderr
    );

    // Exposure at most 2.0 of 10 ("OK") by systemd's own scoring.
    let mut cmd = Command::new(&analyze);
    cmd.args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&svc);
    let f = run_bounded(&mut cmd, Duration::from_secs(60)).unwrap();
    assert_eq!(
        f.code(),
        Some(0),
        "systemd-analyze security:\n{}{}",
        f.stdout,
        f.stderr
    );
}

/// KEY=VALUE lines of an EnvironmentFile (quotes removed, comments skipped).
fn parse_env_file(path: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l}"));
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// Expands an ExecStart= line as systemd does for what ours uses: `%i`,
/// `${VAR}` (one argument) and `$VAR` (split on white space).
fn expand_exec(exec: &str, instance: &str, vars: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for word in exec.split_whitespace() {
        let word = word.replace("%i", instance);
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            out.push(vars.get(name).cloned().unwrap_or_default());
        } else if let Some(name) = word.strip_prefix('$') {
            let value = vars.get(name).cloned().unwrap_or_default();
            out.extend(value.split_whitespace().map(str::to_string));
        } else {
            out.push(word);
        }
    }
    out
}

#[test]
fn unit_command_line_with_the_example_config_serves_under_socket_activation() {
    let activate = find_binary("systemd-socket-activate").unwrap();
    let e = env("unit-cmd");
    let service = parse_unit(&contrib(SERVICE));
    // Environment= defaults first, then the EnvironmentFile overrides them.
    let mut vars = BTreeMap::new();
    for env_line in get(&service, "Service", "Environment") {
        for assignment in env_line.split_whitespace() {
            let (k, v) = assignment.split_once('=').unwrap();
            vars.insert(k.to_string(), v.to_string());
        }
    }
    vars.extend(parse_env_file(&contrib("systemd/example.conf")));
    assert!(
        vars.contains_key("VHOST_BLK_FILE"),
        "example.conf sets VHOST_BLK_FILE"
    );
    vars.insert("VHOST_BLK_FILE".into(), e.image.to_str().unwrap().into());
    let argv = expand_exec(one(&service, "Service", "ExecStart"), "disk0", &vars);
    assert_eq!(argv[0], INSTALLED_BINARY);

    let notify_path = e.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut cmd = Command::new(activate);
    without_systemd_env(&mut cmd);
    // systemd-socket-activate passes on only TERM, PATH, USER, HOME and -E.
    let mut notify_env = OsString::from("NOTIFY_SOCKET=");
    notify_env.push(&notify_path);
    cmd.arg("-l")
        .arg(&e.socket)
        .arg("-E")
        .arg(notify_env)
        .arg(project_binary("vhost-blk-daemon").unwrap())
        .args(&argv[1..]);
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
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen
        .iter()
        .any(|m: &String| m.lines().any(|l| l == "READY=1"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no READY=1 for Type=notify; got {seen:?}");
        notify.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = notify.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(d.stop().unwrap().success());
}
