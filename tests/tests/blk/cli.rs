//! What only `vhost-blk-daemon`'s command line has (contract:
//! /work/notes/blk-spec.md, "CLI"): `--blk-file` and the options of the
//! disk, and what its systemd unit says beyond what every daemon's does.
//! The options every daemon shares, its capabilities and contrib files are
//! checked in the `daemons` binary.
//!
//! Every refusal is checked the same way: the exit code, exactly one line
//! starting with `error: ` (the first line that mentions an error at all)
//! naming the culprit, and no panic.

use std::ffi::OsString;
use std::fs;
use std::time::Duration;

use vu_driver::blk::{BlkClient, BlkOptions, SECTOR_SIZE};
use vu_driver::contrib::{contrib, unit};
use vu_driver::ours::{run_to_exit, vhost_blk_daemon, BlkDaemonOpts};
use vu_driver::process::Finished;
use vu_driver::under_test::blk::{image_env, BlkEnv, IMAGE_SIZE};
use vu_driver::under_test::Env as _;

const T: Duration = Duration::from_secs(10);

/// A temporary directory with an image and a (not yet existing) socket
/// path, as the daemons suites have.
fn env(name: &str) -> BlkEnv {
    image_env(&format!("cli-{name}"))
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
fn args(e: &BlkEnv, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "--socket-path".into(),
        e.socket().into(),
        "--blk-file".into(),
        e.served().image.clone().into(),
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
fn missing_blk_file_option_is_a_usage_error() {
    let e = env("noblk");
    let f = run(["--socket-path".into(), e.socket().as_os_str().to_owned()]);
    assert_refused(&f, &[2], &["--blk-file"]);
    assert!(!e.socket().exists(), "socket created anyway");
}

#[test]
fn missing_blk_file_exits_1_naming_the_path() {
    let e = env("missing");
    let missing = e.dir().join("no-such-dir").join("nothing.img");
    let f = run([
        OsString::from("--socket-path"),
        e.socket().into(),
        "--blk-file".into(),
        missing.clone().into(),
    ]);
    assert_refused(&f, &[1], &[missing.to_str().unwrap()]);
    assert!(
        !e.socket().exists(),
        "socket {} left behind",
        e.socket().display()
    );
}

#[test]
fn directory_as_blk_file_exits_1_naming_it() {
    let e = env("dir");
    let f = run([
        OsString::from("--socket-path"),
        e.socket().into(),
        "--blk-file".into(),
        e.dir().into(),
    ]);
    assert_refused(&f, &[1], &[e.dir().to_str().unwrap()]);
    assert!(
        !e.socket().exists(),
        "socket {} left behind",
        e.socket().display()
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
        assert!(!e.socket().exists(), "{extra:?}: socket created anyway");
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
    let mut d = vhost_blk_daemon(&e.served().image, e.socket(), &opts).unwrap();
    {
        let mut c = BlkClient::connect(e.socket(), &BlkOptions::default()).unwrap();
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
    let mut d = vhost_blk_daemon(&e.served().image, e.socket(), &opts).unwrap();
    assert!(d.stop().unwrap().success());
}

// ---- contrib/ ----

const SERVICE: &str = "systemd/vhost-blk-daemon@.service";

/// What only this daemon's unit says (what every daemon's says is checked
/// in the `daemons` binary).
#[test]
fn unit_files_have_the_key_settings() {
    let s = unit(SERVICE);
    let exec = s.one("Service", "ExecStart");
    assert!(
        exec.contains("--blk-file ${VHOST_BLK_FILE}"),
        "ExecStart={exec}"
    );
    s.assert_service(&[
        ("RestrictAddressFamilies", "AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "vhost-blk-daemon"),
    ]);
    // The ReadWritePaths= drop-in for images elsewhere is documented.
    let text = fs::read_to_string(contrib(SERVICE)).unwrap();
    assert!(
        text.contains("# [Service]") || text.contains("#   [Service]"),
        "drop-in example"
    );
}
