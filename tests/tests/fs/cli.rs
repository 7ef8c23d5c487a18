//! What only `virtiofsd`'s command line has (contract:
//! /work/notes/fs-spec.md, "CLI"): Kata's and libvirt's command lines,
//! `--syslog`, the share and tag options, and what its systemd unit says
//! beyond what every daemon's does. The options every daemon shares, its
//! lifecycle, capabilities and contrib files are checked in the `daemons` binary.
//!
//! The command lines Kata Containers (both styles) and libvirt pass must
//! start the daemon unchanged: the readiness line appears on stderr and the
//! driver can INIT, LOOKUP and READ a file. Every refusal is checked the
//! same way: the exit code, exactly one line starting with `error: ` (the
//! first line that mentions an error at all) naming the culprit, no panic
//! (see [`Finished::refusal`]). The daemon runs with its default sandbox
//! (namespace) and seccomp filter (kill) unless a command line says otherwise.

use std::ffi::OsString;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{EntryOut, ROOT_ID};
use vu_driver::contrib::unit;
use vu_driver::fixture::{find_binary, Daemon, Readiness};
use vu_driver::fs::{FsClient, FsOptions};
use vu_driver::ours::{bare_command, run_to_exit, spawn_virtiofsd, virtiofsd_command};
use vu_driver::process::{inherit_fd_as, without_systemd_env, Finished};
use vu_driver::under_test::fs::{assert_reads_hello, share_env, FsEnv, HELLO, READY_LINE};
use vu_driver::under_test::Env as _;

const T: Duration = Duration::from_secs(10);
/// How long a signalled daemon may take to exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(2);

/// A temporary directory with a share holding `hello.txt` and a (not yet
/// existing) socket path, as the daemons suites have.
fn env(name: &str) -> FsEnv {
    share_env(&format!("cli-{name}"))
}

fn daemon_command() -> Command {
    bare_command("virtiofsd").unwrap()
}

/// Runs the daemon with `args` until it exits (killed after [`T`]).
fn run<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    run_to_exit("virtiofsd", args, T)
}

/// Binds a listening socket at `e.socket` and hands it to `cmd` as
/// descriptor `fd`, as Kata's Go runtime and libvirt do; ready when the log
/// shows [`READY_LINE`]. Our copy of the listener is closed once the daemon
/// is up, so only the daemon listens.
fn spawn_with_listener(mut cmd: Command, e: &FsEnv, fd: i32) -> Daemon {
    let listener = UnixListener::bind(e.socket()).unwrap();
    inherit_fd_as(&mut cmd, listener.as_raw_fd(), fd);
    let ready = [Readiness::LogLine(READY_LINE.to_string())];
    let d = Daemon::spawn("virtiofsd", cmd, e.socket(), &ready, T)
        .unwrap_or_else(|err| panic!("{err}"));
    drop(listener);
    d
}

/// Connects (INIT), LOOKUPs `hello.txt` and READs it; returns the entry.
fn assert_serves(socket: &Path) -> EntryOut {
    let mut c =
        FsClient::connect(socket, FsOptions::default()).unwrap_or_else(|e| panic!("{e}: {e:?}"));
    let (entry, fh) = assert_reads_hello(&mut c);
    c.release(fh, entry.nodeid, libc::O_RDONLY).unwrap();
    entry
}

/// Sends SIGTERM and waits up to [`EXIT_DEADLINE`]; returns the status.
fn sigterm(d: &mut Daemon) -> ExitStatus {
    let t0 = Instant::now();
    d.signal(libc::SIGTERM).unwrap();
    let status = d.wait_timeout(EXIT_DEADLINE).unwrap();
    let Some(status) = status else {
        panic!("no exit within {EXIT_DEADLINE:?} of SIGTERM");
    };
    eprintln!("exited {status} {:?} after SIGTERM", t0.elapsed());
    status
}

fn assert_no_panic(d: &Daemon) {
    let log = d.log_contents();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

/// Stops a daemon serving an inherited socket: exit 0 on SIGTERM, and the
/// socket file, which the daemon did not create, is left alone.
fn stop_inherited(d: &mut Daemon, e: &FsEnv) {
    let status = sigterm(d);
    assert!(status.success(), "exit status {status}");
    assert!(
        e.socket().exists(),
        "the daemon removed {}, a socket it did not create",
        e.socket().display()
    );
    assert_no_panic(d);
}

// ---- Kata Containers: --syslog, which needs /dev/log ----

/// Wraps `cmd` so that it runs in a private mount namespace whose `/dev`
/// is a tmpfs of symlinks to the real `/dev` entries, plus `/dev/log` ->
/// `dev_log` if given (and no `/dev/log` otherwise), whatever the host has.
/// Its stdout goes to /dev/null, so the log shows what it wrote on stderr.
fn with_private_dev(cmd: &Command, e: &FsEnv, dev_log: Option<&Path>) -> Command {
    const SCRIPT: &str = r#"set -e
real="$VUTEST_REAL_DEV"
mkdir -p "$real"
mount --rbind /dev "$real"
mount -t tmpfs -o mode=755 vutest-dev /dev
for f in "$real"/* "$real"/.[!.]*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    ln -s "$f" "/dev/${f##*/}"
done
rm -f /dev/log
[ -z "$VUTEST_DEV_LOG" ] || ln -s "$VUTEST_DEV_LOG" /dev/log
exec "$@" >/dev/null
"#;
    let mut w = Command::new(find_binary("unshare").unwrap());
    w.args([
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        SCRIPT,
        "sh",
    ])
    .arg(cmd.get_program())
    .args(cmd.get_args())
    .env("VUTEST_REAL_DEV", e.dir().join("real-dev"))
    .env(
        "VUTEST_DEV_LOG",
        dev_log.map(Path::as_os_str).unwrap_or_default(),
    );
    without_systemd_env(&mut w);
    w
}

/// Kata's Rust runtime command line, unchanged (socket as fd 3).
fn kata_rust_args(e: &FsEnv) -> Vec<OsString> {
    let mut shared = OsString::from("--shared-dir=");
    shared.push(&e.served().share);
    vec![
        "--syslog".into(),
        "--cache=auto".into(),
        shared,
        "--fd=3".into(),
        "--thread-pool-size=1".into(),
        "--announce-submounts".into(),
    ]
}

#[test]
fn kata_rust_command_line_serves_and_logs_to_dev_log() {
    let e = env("kata-rust");
    let syslog_path = e.dir().join("syslog.sock");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    let mut inner = daemon_command();
    inner.args(kata_rust_args(&e));
    let cmd = with_private_dev(&inner, &e, Some(&syslog_path));
    let mut d = spawn_with_listener(cmd, &e, 3);

    let entry = assert_serves(e.socket());
    // --cache=auto: names and attributes are cached for 1 s.
    assert_eq!((entry.entry_valid, entry.attr_valid), (1, 1), "{entry:?}");

    // The log went to /dev/log as `<PRI>virtiofsd[PID]: message`, facility daemon.
    let mut msgs = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + T;
    while !msgs.iter().any(|m: &String| m.contains("virtiofsd[")) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "nothing from virtiofsd on /dev/log; got {msgs:?}"
        );
        syslog.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = syslog.recv(&mut buf) {
            msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    for m in &msgs {
        let pri: u32 = m
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .and_then(|(p, _)| p.parse().ok())
            .unwrap_or_else(|| panic!("syslog message without <PRI>: {m:?}"));
        assert_eq!(pri >> 3, 3, "facility of {m:?} is not daemon");
    }
    // With --syslog, stderr has the readiness line but not the log lines.
    let log = d.log_contents();
    assert!(
        !log.contains("sharing"),
        "--syslog, yet the log went to stderr:\n{log}"
    );
    eprintln!("syslog: {msgs:?}");
    stop_inherited(&mut d, &e);
}

/// Issue 14.4: with no `/dev/log` (a private `/dev` without it) `--syslog`
/// serves anyway, as the C virtiofsd does, logging to stderr after one
/// warning that names `--syslog` and `/dev/log`.
#[test]
fn kata_rust_command_line_without_dev_log_serves_and_logs_to_stderr() {
    let e = env("kata-nolog");
    let mut inner = daemon_command();
    inner.args(kata_rust_args(&e));
    let cmd = with_private_dev(&inner, &e, None);
    let mut d = spawn_with_listener(cmd, &e, 3);
    assert_serves(e.socket());
    let log = d.log_contents();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("--syslog") && l.contains("/dev/log"))
        .collect();
    assert_eq!(warnings.len(), 1, "not one warning about /dev/log:\n{log}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(
        log.contains("sharing"),
        "the log lines did not go to stderr:\n{log}"
    );
    stop_inherited(&mut d, &e);
}

// ---- Kata legacy and libvirt: -o options, socket as --fd ----

#[test]
fn kata_legacy_command_line_serves() {
    let e = env("kata-legacy");
    let mut cmd = daemon_command();
    let mut source = OsString::from("source=");
    source.push(&e.served().share);
    cmd.arg("--fd=3")
        .arg("-o")
        .arg(source)
        .args(["-o", "cache=auto", "-o", "announce_submounts"]);
    let mut d = spawn_with_listener(cmd, &e, 3);
    let entry = assert_serves(e.socket());
    assert_eq!((entry.entry_valid, entry.attr_valid), (1, 1), "{entry:?}");
    // A second frontend after the first left.
    assert_serves(e.socket());
    stop_inherited(&mut d, &e);
}

/// libvirt's command line: `--fd=N -o source=DIR,<opts>` (one `-o`).
fn libvirt(name: &str, opts: &str) -> (FsEnv, Daemon, EntryOut) {
    let e = env(name);
    let mut o = OsString::from("source=");
    o.push(&e.served().share);
    o.push(",");
    o.push(opts);
    let mut cmd = daemon_command();
    cmd.arg("--fd=23").arg("-o").arg(o);
    let d = spawn_with_listener(cmd, &e, 23);
    let entry = assert_serves(e.socket());
    (e, d, entry)
}

#[test]
fn libvirt_command_line_cache_always_serves() {
    let (e, mut d, entry) = libvirt("libvirt-always", "cache=always,sandbox=chroot,xattr");
    // cache=always: the guest may keep names and attributes for long.
    assert!(
        entry.entry_valid >= 60 && entry.attr_valid >= 60,
        "cache=always: {entry:?}"
    );
    stop_inherited(&mut d, &e);
}

#[test]
fn libvirt_command_line_cache_none_serves() {
    let (e, mut d, entry) = libvirt(
        "libvirt-none",
        "cache=none,sandbox=chroot,no_xattr,no_flock,no_posix_lock",
    );
    // cache=none (= never): nothing may be cached.
    let valid = (
        entry.entry_valid,
        entry.entry_valid_nsec,
        entry.attr_valid,
        entry.attr_valid_nsec,
    );
    assert_eq!(valid, (0, 0, 0, 0), "cache=none: {entry:?}");
    stop_inherited(&mut d, &e);
}

// ---- --print-capabilities and refusals ----

/// `--socket-path SOCKET --shared-dir SHARE` (unless `shared` is None),
/// then `extra`.
fn args(e: &FsEnv, shared: Option<&Path>, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["--socket-path".into(), e.socket().into()];
    if let Some(dir) = shared {
        v.push("--shared-dir".into());
        v.push(dir.into());
    }
    v.extend(extra.iter().map(OsString::from));
    v
}

/// Runs the daemon with `args` and checks that it is refused with one of
/// `codes`, naming `culprits`, and creates no socket.
fn assert_refused(e: &FsEnv, args: Vec<OsString>, codes: &[i32], culprits: &[&str]) {
    let f = run(args.clone());
    let line = f
        .refusal(codes, culprits)
        .unwrap_or_else(|m| panic!("{args:?}: {m}"));
    eprintln!("{args:?}: {line}");
    assert!(!e.socket().exists(), "{args:?}: socket created anyway");
    assert!(
        !f.stderr.contains(READY_LINE),
        "{args:?}: ready line printed:\n{}",
        f.stderr
    );
}

#[test]
fn missing_shared_dir_is_a_usage_error() {
    let e = env("noshare");
    assert_refused(&e, args(&e, None, &[]), &[2], &["--shared-dir"]);
}

#[test]
fn shared_dir_that_is_a_file_or_missing_is_refused_naming_it() {
    let e = env("notdir");
    for dir in [
        e.served().share.join("hello.txt"),
        e.dir().join("no-such-dir"),
    ] {
        assert_refused(
            &e,
            args(&e, Some(&dir), &[]),
            &[1, 2],
            &[dir.to_str().unwrap()],
        );
    }
}

#[test]
fn legacy_flock_is_unsupported_and_bogus_is_unknown() {
    let e = env("legacy-bad");
    let share = Some(e.served().share.as_path());
    assert_refused(
        &e,
        args(&e, share, &["-o", "flock"]),
        &[2],
        &["-o flock", "not supported"],
    );
    assert_refused(
        &e,
        args(&e, share, &["-o", "bogus"]),
        &[2],
        &["-o bogus", "unknown option"],
    );
    // Also inside a list, after options that are fine.
    assert_refused(
        &e,
        args(&e, share, &["-o", "cache=auto,xattr,bogus"]),
        &[2],
        &["bogus"],
    );
}

#[test]
fn thread_pool_size_past_256_is_refused() {
    let e = env("pool");
    let extra = ["--thread-pool-size", "257"];
    assert_refused(
        &e,
        args(&e, Some(&e.served().share), &extra),
        &[1, 2],
        &["--thread-pool-size", "257"],
    );
}

#[test]
fn tag_of_37_bytes_is_refused_and_36_is_served() {
    let e = env("tag");
    let tag37 = "t".repeat(37);
    assert_refused(
        &e,
        args(&e, Some(&e.served().share), &["--tag", &tag37]),
        &[2],
        &["--tag"],
    );
    assert_refused(
        &e,
        args(&e, Some(&e.served().share), &["--tag", ""]),
        &[2],
        &["--tag"],
    );

    let tag36 = "0123456789abcdefghijklmnopqrstuvwxyz";
    let cmd = virtiofsd_command(&e.served().share, e.socket(), &["--tag", tag36]).unwrap();
    let mut d = spawn_virtiofsd(cmd, e.socket()).unwrap();
    let c = FsClient::connect(e.socket(), FsOptions::default()).unwrap();
    assert_eq!(c.tag(), Some(tag36), "GET_CONFIG tag");
    assert_eq!(c.config_num_request_queues(), Some(1));
    drop(c);
    assert!(sigterm(&mut d).success());
}

// ---- SIGTERM without the sandbox ----

/// SIGTERM while a frontend stays connected, without the sandbox (the
/// daemon's own process serves; with the default namespace sandbox a
/// supervisor forwards the signal, checked in the `daemons` binary).
#[test]
fn sigterm_while_connected_without_sandbox_exits_0_and_removes_the_socket() {
    let e = env("term-connected");
    let cmd = virtiofsd_command(
        &e.served().share,
        e.socket(),
        &["--sandbox", "none", "--seccomp", "none"],
    )
    .unwrap();
    let mut d = spawn_virtiofsd(cmd, e.socket()).unwrap_or_else(|err| panic!("{err}"));
    let mut c = FsClient::connect(e.socket(), FsOptions::default()).unwrap();
    let entry = c.lookup(ROOT_ID, "hello.txt").unwrap();
    assert_eq!(entry.attr.size, HELLO.len() as u64);
    let status = sigterm(&mut d);
    assert!(status.success(), "exit status {status}");
    assert!(
        !e.socket().exists(),
        "socket {} left behind",
        e.socket().display()
    );
    assert_no_panic(&d);
    drop(c);
}

// ---- contrib/ ----

const SERVICE: &str = "systemd/virtiofsd@.service";
/// What the namespace sandbox and a passthrough file system need, and all
/// the service may have.
const CAPABILITIES_NEEDED: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_MKNOD",
    "CAP_SETFCAP",
    "CAP_DAC_READ_SEARCH",
];

/// What only this daemon's unit says (what every daemon's says is checked
/// in the `daemons` binary).
#[test]
fn unit_files_have_the_key_settings() {
    let s = unit(SERVICE);
    // The sandboxed daemon notifies from its forked child.
    assert_eq!(s.one("Service", "NotifyAccess"), "all");
    let exec = s.one("Service", "ExecStart");
    assert!(
        exec.contains("--shared-dir ${VIRTIOFSD_SHARED_DIR}"),
        "ExecStart={exec}"
    );
    assert!(
        !exec.contains("--sandbox") && !exec.contains("--seccomp"),
        "defaults: ExecStart={exec}"
    );

    // Exactly the capabilities the daemon needs.
    let mut caps = s.words("Service", "CapabilityBoundingSet");
    caps.sort();
    let mut want: Vec<String> = CAPABILITIES_NEEDED.iter().map(|c| c.to_string()).collect();
    want.sort();
    assert_eq!(caps, want, "CapabilityBoundingSet=");
    // The namespace sandbox must be allowed: unshare(NEWNS|NEWPID|NEWNET), mount, pivot_root.
    for v in s.get("Service", "RestrictNamespaces") {
        let allowed: Vec<&str> = v.split_whitespace().collect();
        assert!(
            ["mnt", "pid", "net"].iter().all(|ns| allowed.contains(ns)),
            "RestrictNamespaces={v} forbids the namespace sandbox"
        );
    }
    let filter = s.words("Service", "SystemCallFilter");
    assert!(
        filter.iter().any(|f| f == "@mount"),
        "SystemCallFilter= lacks @mount: {filter:?}"
    );
    assert!(
        !filter
            .iter()
            .any(|f| f.starts_with('~') && f.contains("@mount")),
        "{filter:?}"
    );
    // PrivateDevices= would take CAP_MKNOD away.
    assert!(s.get("Service", "PrivateDevices").iter().all(|v| v == "no"));
    s.assert_service(&[
        ("RestrictAddressFamilies", "AF_UNIX"),
        ("StateDirectory", "virtiofsd"),
        ("KillMode", "mixed"),
    ]);
}
