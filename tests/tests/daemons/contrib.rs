//! Each daemon's files in `contrib/`: the systemd units (what every
//! daemon's must say, `systemd-analyze verify` and `security`, and the
//! service's own command line with the example configuration, started by
//! socket activation) and the QEMU vhost-user descriptor. What only one
//! daemon's unit says is checked in that daemon's `cli` tests.

use std::time::Duration;

use vu_driver::contrib::{
    assert_qemu_descriptor, assert_service_unit, assert_service_unit_basics, assert_socket_unit,
    assert_systemd_analyze, contrib, instance_units, unit, unit_names,
};
use vu_driver::fixture::{Daemon, Readiness, TempDir};
use vu_driver::lifecycle::{assert_no_panic, signal_and_wait};
use vu_driver::ours::run_to_exit;
use vu_driver::systemd::{environment_file, expand_exec, time_span_secs, NotifyListener};
use vu_driver::under_test::{DaemonUnderTest, T};

/// How long a signalled daemon may take to exit.
/// How long a signalled daemon may take to exit (generous: a loaded
/// machine; a hang still fails).
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

for_each_daemon!(
    qemu_descriptor_agrees_with_print_capabilities_and_the_unit,
    unit_files_have_the_settings_every_daemon_needs,
    unit_files_pass_systemd_analyze_verify_and_security,
    unit_command_line_with_the_example_config_serves_under_socket_activation,
);

fn qemu_descriptor_agrees_with_print_capabilities_and_the_unit(d: &DaemonUnderTest) {
    let caps = run_to_exit(d.name, ["--print-capabilities"], T);
    assert_eq!(caps.code(), Some(0), "{caps:?}");
    assert_qemu_descriptor(
        &format!("qemu/50-{}.json", d.name),
        &caps.stdout,
        d.contrib.kind,
        d.contrib.installed_binary,
        &unit(&unit_names(d.name).0),
    );
    assert!(
        d.contrib
            .installed_binary
            .ends_with(&format!("/{}", d.name)),
        "{}",
        d.contrib.installed_binary
    );
}

fn unit_files_have_the_settings_every_daemon_needs(d: &DaemonUnderTest) {
    assert_socket_unit(d.name);
    let s = if d.contrib.read_write_paths {
        assert_service_unit(d.name)
    } else {
        assert_service_unit_basics(d.name)
    };
    if d.contrib.watchdog {
        let watchdog = time_span_secs(s.one("Service", "WatchdogSec"));
        assert!((1.0..=60.0).contains(&watchdog), "WatchdogSec {watchdog} s");
    } else {
        assert!(
            s.get("Service", "WatchdogSec").is_empty(),
            "WatchdogSec= for a daemon that does not serve from its main process"
        );
    }
    s.assert_service(&[
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
    ]);
}

fn unit_files_pass_systemd_analyze_verify_and_security(d: &DaemonUnderTest) {
    let dir = TempDir::new(&format!("vutest-units-{}", d.name)).unwrap();
    let c = &d.contrib;
    let (svc, sock) = instance_units(
        dir.path(),
        d.name,
        c.instance,
        c.installed_binary,
        &d.binary(),
    );
    let f = assert_systemd_analyze(&svc, &sock, c.max_exposure);
    if let Some(line) = f.stdout.lines().find(|l| l.contains("Overall exposure")) {
        eprintln!("{line}");
    }
}

fn unit_command_line_with_the_example_config_serves_under_socket_activation(d: &DaemonUnderTest) {
    let env = d.env("unit-cmd");
    let socket = env.socket();
    let c = &d.contrib;
    let service = unit(&unit_names(d.name).0);
    // Environment= defaults first, then the EnvironmentFile overrides them.
    let mut vars = service.environment(c.instance);
    vars.extend(environment_file(&contrib(c.example_conf)).unwrap());
    env.configure_unit(&mut vars);
    let argv = expand_exec(service.one("Service", "ExecStart"), c.instance, &vars);
    assert_eq!(argv[0], c.installed_binary);
    eprintln!("unit command line: {argv:?}");

    let mut n = NotifyListener::bind(env.dir()).unwrap();
    let cmd = d.activation_command(&*env, Some(n.path()), Some(&argv[1..]));
    let ready = [Readiness::Path(socket.to_path_buf())];
    let mut daemon = Daemon::spawn("systemd-socket-activate", cmd, socket, &ready, T).unwrap();
    // The first connection starts the daemon with the example's options.
    env.assert_unit_options(socket, &vars);
    // Type=notify: READY=1 must have been sent.
    assert!(
        n.wait_for("READY=1", T).unwrap(),
        "no READY=1 for Type=notify; got {:?}",
        n.seen
    );
    // And it serves the next frontend.
    d.serve(&*env, socket, 0);
    let (status, _) = signal_and_wait(&mut daemon, libc::SIGTERM, EXIT_DEADLINE);
    assert!(status.success(), "exit status {status}");
    assert!(
        socket.exists(),
        "the daemon removed the activated socket's file"
    );
    assert_no_panic(&daemon);
}
