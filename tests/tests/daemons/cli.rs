//! Each daemon's command line where all of them agree: the options of
//! `common::cli` (`--print-capabilities`, `--socket-path`, `--fd`,
//! `--log-level`) and what is refused.
//!
//! Every refusal is checked the same way: the exit code, exactly one line
//! starting with `error: ` (the first line that mentions an error at all)
//! naming the culprit, no panic (see `Finished::refusal`), no socket left
//! behind, and no ready line printed.

use std::ffi::OsString;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

use vu_driver::fixture::poll_until;
use vu_driver::ours::run_to_exit;
use vu_driver::process::{run_bounded, Finished};
use vu_driver::under_test::{DaemonUnderTest, Env, T};

for_each_daemon!(
    print_capabilities_prints_exact_json_and_exits_0,
    socket_path_with_fd_is_a_usage_error_naming_both,
    no_socket_option_and_no_activation_is_refused,
    unknown_option_is_a_usage_error_naming_it,
    log_level_bogus_is_a_usage_error,
    socket_path_of_a_live_listener_is_refused_and_left_alone,
    stale_socket_file_is_replaced,
    fd_that_is_not_open_is_refused,
    fd_of_a_regular_file_is_refused,
    fd_of_a_datagram_socket_is_refused,
);

/// Runs the daemon over `env` with `extra` options until it exits
/// (killed after [`T`]).
fn run(d: &DaemonUnderTest, env: &dyn Env, extra: &[OsString]) -> Finished {
    let mut cmd = d.command(env);
    cmd.args(extra);
    run_bounded(&mut cmd, T).unwrap()
}

/// `--socket-path SOCKET` and `extra`.
fn on_socket(env: &dyn Env, extra: &[&str]) -> Vec<OsString> {
    let mut v = vec!["--socket-path".into(), env.socket().as_os_str().to_owned()];
    v.extend(extra.iter().map(OsString::from));
    v
}

/// Asserts that the daemon refused to run with one of `codes`, naming
/// `culprits`, and printed no ready line; returns the error line.
fn assert_refused(d: &DaemonUnderTest, f: &Finished, codes: &[i32], culprits: &[&str]) -> String {
    let line = f.refusal(codes, culprits).unwrap_or_else(|m| panic!("{m}"));
    eprintln!("refused: {line}");
    if let Some(ready) = d.ready_line {
        assert!(
            !f.stderr.contains(ready),
            "ready line printed, then refused:\n{}",
            f.stderr
        );
    }
    line
}

/// [`assert_refused`], and the socket path was not created.
fn assert_refused_no_socket(
    d: &DaemonUnderTest,
    env: &dyn Env,
    f: &Finished,
    codes: &[i32],
    culprits: &[&str],
) {
    let line = assert_refused(d, f, codes, culprits);
    assert!(!env.socket().exists(), "socket created anyway ({line})");
}

fn print_capabilities_prints_exact_json_and_exits_0(d: &DaemonUnderTest) {
    let f = run_to_exit(d.name, ["--print-capabilities"], T);
    assert_eq!(f.code(), Some(0), "{f:?}");
    assert_eq!(f.stdout, d.capabilities);
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    assert_eq!(v["type"], d.contrib.kind);
    assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
}

/// Runs the daemon over a fresh environment (named `test`) with
/// `--socket-path SOCKET` (if `with_socket`) and `extra`, and asserts it was
/// refused with one of `codes`, naming `culprits`, with no socket created.
fn assert_options_refused(
    d: &DaemonUnderTest,
    test: &str,
    with_socket: bool,
    extra: &[&str],
    codes: &[i32],
    culprits: &[&str],
) {
    let env = d.env(test);
    let args = match with_socket {
        true => on_socket(&*env, extra),
        false => extra.iter().map(OsString::from).collect(),
    };
    let f = run(d, &*env, &args);
    assert_refused_no_socket(d, &*env, &f, codes, culprits);
}

fn socket_path_with_fd_is_a_usage_error_naming_both(d: &DaemonUnderTest) {
    let both = ["--socket-path", "--fd"];
    assert_options_refused(d, "both", true, &["--fd", "3"], &[2], &both);
}

fn no_socket_option_and_no_activation_is_refused(d: &DaemonUnderTest) {
    let both = ["--socket-path", "--fd"];
    assert_options_refused(d, "nosock", false, &[], &[1], &both);
}

fn unknown_option_is_a_usage_error_naming_it(d: &DaemonUnderTest) {
    let unknown = ["--frobnicate"];
    assert_options_refused(d, "unknown", true, &unknown, &[2], &unknown);
}

fn log_level_bogus_is_a_usage_error(d: &DaemonUnderTest) {
    let extra = ["--log-level", "bogus"];
    assert_options_refused(d, "loglevel", true, &extra, &[2], &extra);
}

fn socket_path_of_a_live_listener_is_refused_and_left_alone(d: &DaemonUnderTest) {
    let env = d.env("inuse");
    let socket = env.socket();
    let other = UnixListener::bind(socket).unwrap();
    let f = run(d, &*env, &on_socket(&*env, &[]));
    assert_refused(d, &f, &[1], &[socket.to_str().unwrap()]);
    assert!(
        socket.exists(),
        "the other listener's socket file was removed"
    );
    // And it still reaches the other listener.
    let _client = UnixStream::connect(socket).unwrap();
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_ok(), "the other listener lost its socket");
}

fn stale_socket_file_is_replaced(d: &DaemonUnderTest) {
    let env = d.env("stale");
    let socket = env.socket();
    drop(UnixListener::bind(socket).unwrap());
    assert!(socket.exists());
    // A child another test forks holds a copy of the listener until it
    // execs: wait for that to pass.
    assert!(
        poll_until(T, || UnixStream::connect(socket).is_err()),
        "nobody should listen"
    );
    // The file exists already: readiness is a working connection below.
    let mut daemon = d.spawn(d.socket_command(&*env), socket, false);
    d.serve(&*env, socket, 0);
    assert!(daemon.stop().unwrap().success());
    assert!(!socket.exists(), "socket left behind");
}

/// Runs the daemon over `env` with `fd` handed over as descriptor 7 and
/// `--fd 7`.
fn run_with_fd(d: &DaemonUnderTest, env: &dyn Env, fd: &impl AsRawFd) -> Finished {
    run_bounded(&mut d.fd_command(env, fd.as_raw_fd(), 7), T).unwrap()
}

fn fd_that_is_not_open_is_refused(d: &DaemonUnderTest) {
    assert_options_refused(d, "fd99", false, &["--fd", "99"], &[1], &["99"]);
}

fn fd_of_a_regular_file_is_refused(d: &DaemonUnderTest) {
    let env = d.env("fdfile");
    let file = std::fs::File::create(env.dir().join("not-a-socket")).unwrap();
    let f = run_with_fd(d, &*env, &file);
    assert_refused(d, &f, &[1], &["7", "socket"]);
}

fn fd_of_a_datagram_socket_is_refused(d: &DaemonUnderTest) {
    let env = d.env("fddgram");
    let dgram = UnixDatagram::bind(env.dir().join("dgram.sock")).unwrap();
    let f = run_with_fd(d, &*env, &dgram);
    assert_refused(d, &f, &[1], &["7"]);
}
