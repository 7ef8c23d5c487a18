//! Each daemon serves under its seccomp allow-list: the filter is really
//! installed (by default, in kill mode, in the process that serves) and
//! every kind of request, reconnects and SIGTERM run under it;
//! `--seccomp none` installs none.

use std::time::Duration;

use vu_driver::fixture::{poll_until, Daemon};
use vu_driver::lifecycle::assert_no_panic;
use vu_driver::process::{seccomp_mode, serving_pid};
use vu_driver::under_test::DaemonUnderTest;

for_each_daemon!(
    default_daemon_serves_every_request_type_under_a_filter,
    seccomp_none_installs_no_filter,
);

/// Fails with `what` and the daemon's log unless `ok`.
fn assert_or_log(d: &Daemon, ok: bool, what: String) {
    assert!(ok, "{what}:\n{}", d.log_contents());
}

/// Fails, with the log, if the daemon is gone (a filter kill is SIGSYS).
fn assert_alive(d: &mut Daemon, after: &str) {
    let status = d.try_wait().unwrap();
    let what = format!("the daemon died under its filter after {after} ({status:?})");
    assert_or_log(d, status.is_none(), what);
}

/// Stops the daemon (SIGTERM): it exits 0.
fn assert_stops_cleanly(d: &mut Daemon, how: &str) {
    let status = d.stop().unwrap();
    assert_or_log(d, status.success(), format!("exit {status} {how}"));
}

fn default_daemon_serves_every_request_type_under_a_filter(d: &DaemonUnderTest) {
    let env = d.env("seccomp");
    let socket = env.socket();
    let mut daemon = d.start(&*env);
    // The socket exists (ready) a moment before the jail's child is
    // forked and the filter goes on.
    assert!(
        poll_until(Duration::from_secs(5), || {
            seccomp_mode(serving_pid(daemon.pid())).unwrap_or(0) == 2
        }),
        "no seccomp filter installed by default"
    );
    for round in 0..3 {
        let mut f = env.connect(socket);
        assert_alive(&mut daemon, &format!("connection {round}"));
        f.exercise(round, &mut |what| {
            assert_alive(&mut daemon, &format!("{what} (connection {round})"))
        });
        if round == 1 {
            // Like QEMU: stop the rings before disconnecting.
            f.device().stop_queues().unwrap();
        }
    }
    assert_alive(&mut daemon, "three connections");
    assert_no_panic(&daemon);
    assert_stops_cleanly(&mut daemon, "under the filter");
}

fn seccomp_none_installs_no_filter(d: &DaemonUnderTest) {
    let env = d.env("seccomp-none");
    let socket = env.socket();
    let mut cmd = d.socket_command(&*env);
    cmd.args(["--seccomp", "none"]);
    let mut daemon = d.spawn(cmd, socket, true);
    // Connected and serving: past the point where the filter would go on.
    d.serve(&*env, socket, 0);
    assert_eq!(seccomp_mode(serving_pid(daemon.pid())).unwrap(), 0);
    assert_stops_cleanly(&mut daemon, "with no filter");
}
