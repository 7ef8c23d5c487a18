//! What only `vhost-net-daemon`'s command line has: the tap (`--tap`,
//! `--create`, `--tap-fd`), queue pairs, MAC and MTU, and what its systemd
//! unit says beyond what every daemon's does. The options every daemon
//! shares, its capabilities and contrib files are checked in the `daemons` binary.
//!
//! Every refusal is checked the same way: the exit code, exactly one line
//! starting with `error: ` (the first line that mentions an error at all)
//! naming the culprit, no panic, and no socket left behind. Everything that
//! touches a tap runs in a network namespace of its own.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vu_driver::contrib::{contrib, unit};
use vu_driver::fixture::{poll_until, Daemon, Readiness, TempDir};
use vu_driver::lifecycle::{assert_no_panic, signal_and_wait};
use vu_driver::net::{NetClient, NetOptions};
use vu_driver::netns::NetNs;
use vu_driver::ours::{bare_command, project_binary, run_to_exit, vhost_net_daemon};
use vu_driver::process::{inherit_fd_as, run_bounded, Finished};
use vu_driver::tap::{
    link, link_names, open_queue, HostSide, IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, QUEUE_FLAGS,
};

const NAME: &str = "vhost-net-daemon";
const T: Duration = Duration::from_secs(10);
const MAC: &str = "02:00:00:00:00:21";
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];

/// A namespace and a directory with a (not yet existing) socket path.
struct Env {
    ns: NetNs,
    _dir: TempDir,
    socket: PathBuf,
}

fn env(name: &str) -> Env {
    let ns = NetNs::new("vnd-cli").unwrap();
    let dir = TempDir::new(&format!("net-cli-{name}")).unwrap();
    let socket = dir.join("net.sock");
    Env {
        ns,
        _dir: dir,
        socket,
    }
}

/// Runs the daemon outside any namespace with `args` until it exits.
fn run<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    run_to_exit(NAME, args, T)
}

/// Runs the daemon inside `e.ns` with `--socket-path SOCKET` and `args`
/// until it exits (killed after 10 s).
fn run_in(e: &Env, args: &[&str]) -> Finished {
    let mut cmd = e.ns.command(&project_binary(NAME).unwrap());
    vu_driver::process::without_systemd_env(&mut cmd);
    cmd.arg("--socket-path").arg(&e.socket).args(args);
    run_bounded(&mut cmd, T).unwrap()
}

/// Asserts that the daemon refused to run (see [`Finished::refusal`]) and
/// left no socket; returns the error line.
fn assert_refused(e: &Env, f: &Finished, codes: &[i32], culprits: &[&str]) -> String {
    let line = f.refusal(codes, culprits).unwrap_or_else(|m| panic!("{m}"));
    eprintln!("refused: {line}");
    assert!(!e.socket.exists(), "socket created anyway ({line})");
    line
}

#[test]
fn no_tap_option_is_a_usage_error_naming_both_ways() {
    let e = env("notap");
    let f = run_in(&e, &[]);
    assert_refused(&e, &f, &[2], &["--tap", "--tap-fd"]);
}

/// Runs the daemon in a fresh `env(name)` on `--tap TAP`, a tap that does
/// not exist: it must refuse naming the tap. Returns the environment and
/// the error line.
fn refused_missing_tap(name: &str, tap: &str) -> (Env, String) {
    let e = env(name);
    let f = run_in(&e, &["--tap", tap]);
    let line = assert_refused(&e, &f, &[1], &[tap]);
    (e, line)
}

#[test]
fn a_tap_that_does_not_exist_is_refused_naming_it() {
    let (e, line) = refused_missing_tap("missing", "vnd-nosuch0");
    assert!(line.contains("--create"), "no hint at --create: {line}");
    assert!(
        !link_names(&e.ns).iter().any(|l| l == "vnd-nosuch0"),
        "the daemon created the tap without --create"
    );
}

#[test]
fn bad_mac_addresses_are_refused_naming_the_value() {
    let e = env("mac");
    for (mac, why) in [
        ("zz:00:00:00:00:01", "MAC"),
        ("02:00:00:00:00", "MAC"),
        ("02:00:00:00:00:001", "MAC"),
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
        ("00:00:00:00:00:00", "zero"),
    ] {
        let f = run_in(&e, &["--tap", "tap0", "--mac", mac]);
        assert_refused(&e, &f, &[2], &["--mac", mac, why]);
    }
}

#[test]
fn two_pairs_on_a_tap_without_multi_queue_are_refused_naming_it() {
    let e = env("nomq");
    e.ns.add_tap("vnd-single", false, None).unwrap();
    let f = run_in(&e, &["--tap", "vnd-single", "--num-queue-pairs", "2"]);
    assert_refused(&e, &f, &[1], &["vnd-single", "multi_queue"]);
}

/// The daemon's own hint for a missing tap is `ip tuntap add NAME mode tap
/// multi_queue`; a tap made that way must then serve the default one pair.
#[test]
fn the_tap_the_missing_tap_hint_suggests_serves_the_default_one_pair() {
    let (e, line) = refused_missing_tap("hint", "vnd-hint");
    let suggested = line
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no `command` in {line}"));
    let args: Vec<&str> = suggested.split_whitespace().collect();
    assert_eq!(args[0], "ip", "{suggested}");
    e.ns.ip(&args[1..]).unwrap();
    let mut d = vhost_net_daemon(&e.ns, &e.socket, &["--tap", "vnd-hint", "--mac", MAC])
        .unwrap_or_else(|err| {
            panic!("after `{suggested}`, the default --num-queue-pairs 1: {err}")
        });
    e.ns.ip(&["link", "set", "vnd-hint", "up"]).unwrap();
    let mut net = NetClient::connect(&e.socket, &NetOptions::default()).unwrap();
    let host = HostSide::open(&e.ns, "vnd-hint");
    host.assert_exchange(&mut net, 0, GUEST_MAC, "hinted tap");
    drop(net);
    assert_stopped(&mut d);
}

#[test]
fn tap_fd_count_not_matching_num_queue_pairs_is_a_usage_error() {
    let e = env("fdcount");
    for (args, culprits) in [
        (
            &["--tap-fd", "0", "--num-queue-pairs", "2"][..],
            &["--num-queue-pairs 2", "--tap-fd", "1 given"][..],
        ),
        (
            &["--tap-fd", "0", "--tap-fd", "1", "--num-queue-pairs", "1"],
            &["--num-queue-pairs 1", "--tap-fd", "2 given"],
        ),
    ] {
        let f = run_in(&e, args);
        assert_refused(&e, &f, &[2], culprits);
    }
}

/// Runs the daemon (outside the namespace: a descriptor carries its own)
/// with `fds` handed over as descriptors 5, 6, ... and `--tap-fd` for each.
fn tap_fd_command(e: &Env, fds: &[&OwnedFd], extra: &[&str]) -> Command {
    let mut cmd = bare_command(NAME).unwrap();
    cmd.arg("--socket-path").arg(&e.socket);
    for (i, fd) in fds.iter().enumerate() {
        let target = 5 + i as i32;
        inherit_fd_as(&mut cmd, fd.as_raw_fd(), target);
        cmd.arg("--tap-fd").arg(target.to_string());
    }
    cmd.args(extra);
    cmd
}

#[test]
fn tap_fd_that_is_not_a_tap_queue_is_refused_naming_it() {
    let e = env("fdnull");
    let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let f = run_bounded(&mut tap_fd_command(&e, &[&null], &[]), T).unwrap();
    assert_refused(&e, &f, &[1], &["--tap-fd 5", "tap"]);

    let f = run([
        "--socket-path",
        e.socket.to_str().unwrap(),
        "--tap-fd",
        "99",
    ]);
    assert_refused(&e, &f, &[1], &["--tap-fd 99", "not an open descriptor"]);

    // A tap queue without IFF_VNET_HDR: frames would lose their header.
    let plain = open_queue(&e.ns, "vnd-novnet", IFF_TAP | IFF_NO_PI).unwrap();
    let f = run_bounded(&mut tap_fd_command(&e, &[&plain], &[]), T).unwrap();
    assert_refused(&e, &f, &[1], &["--tap-fd 5", "IFF_VNET_HDR"]);
}

#[test]
fn out_of_range_numbers_are_refused_naming_the_option() {
    let e = env("numbers");
    for (args, culprits) in [
        (&["--queue-size", "100"][..], &["--queue-size", "100"][..]),
        (&["--queue-size", "65536"], &["--queue-size", "65536"]),
        (&["--queue-size", "1"], &["--queue-size"]),
        (&["--queue-size", "many"], &["--queue-size", "many"]),
        (&["--num-queue-pairs", "0"], &["--num-queue-pairs"]),
        (&["--num-queue-pairs", "17"], &["--num-queue-pairs", "17"]),
        (&["--mtu", "67"], &["--mtu", "67"]),
        (&["--seccomp", "maybe"], &["--seccomp", "maybe"]),
    ] {
        let mut all = vec!["--tap", "tap0"];
        all.extend_from_slice(args);
        let f = run_in(&e, &all);
        assert_refused(&e, &f, &[2], culprits);
    }
}

#[test]
fn create_makes_the_tap_up_and_it_goes_away_with_the_daemon() {
    let e = env("create");
    let mut d = vhost_net_daemon(&e.ns, &e.socket, &["--tap", "vnd-made", "--create"]).unwrap();
    let l = link(&e.ns, "vnd-made").expect("`ip -n NS link` shows the created tap");
    let flags = l["flags"].to_string();
    assert!(flags.contains("\"UP\""), "created tap is not up: {l}");
    // "serving tap ... (created)" comes once the jail is set up, after the
    // socket appeared.
    assert!(
        poll_until(Duration::from_secs(30), || d
            .log_contents()
            .contains("(created)")),
        "{}",
        d.log_contents()
    );
    let (status, _) = signal_and_wait(&mut d, libc::SIGTERM, Duration::from_secs(30));
    let gone = poll_until(Duration::from_secs(5), || link(&e.ns, "vnd-made").is_none());
    assert!(
        gone,
        "tap vnd-made still there after the daemon exited: {:?}",
        link_names(&e.ns)
    );
    assert!(status.success(), "exit status {status}");
    assert_no_panic(&d);
}

#[test]
fn create_on_an_existing_tap_attaches_and_leaves_it() {
    let e = env("create-existing");
    e.ns.add_tap("vnd-kept", false, None).unwrap();
    let mut d = vhost_net_daemon(&e.ns, &e.socket, &["--tap", "vnd-kept", "--create"]).unwrap();
    {
        let mut net = NetClient::connect(&e.socket, &NetOptions::default()).unwrap();
        let host = HostSide::open(&e.ns, "vnd-kept");
        let mac = config_mac(&net);
        host.assert_exchange(&mut net, 0, mac, "existing tap");
    }
    assert_stopped(&mut d);
    assert!(
        link(&e.ns, "vnd-kept").is_some(),
        "the daemon removed a tap it did not create"
    );
}

/// SIGTERM, then the exit status must be 0 (the guard prints the log if not).
fn assert_stopped(d: &mut Daemon) {
    let status = d.stop().unwrap();
    assert!(status.success(), "exit status {status} after SIGTERM");
}

fn config_mac(net: &NetClient) -> [u8; 6] {
    net.config().mac.expect("VIRTIO_NET_F_MAC")
}

#[test]
fn mtu_is_set_on_the_tap_and_advertised() {
    let e = env("mtu");
    e.ns.add_tap("vnd-mtu", false, None).unwrap();
    let mut d = vhost_net_daemon(&e.ns, &e.socket, &["--tap", "vnd-mtu", "--mtu", "1400"]).unwrap();
    let l = link(&e.ns, "vnd-mtu").unwrap();
    assert_eq!(l["mtu"], 1400, "tap MTU: {l}");
    {
        let net = NetClient::connect(&e.socket, &NetOptions::default()).unwrap();
        assert_eq!(net.config().mtu, Some(1400), "config space mtu");
    }
    assert_stopped(&mut d);
}

#[test]
fn tap_fd_opened_by_the_caller_serves_frames() {
    let e = env("tapfd");
    e.ns.add_tap("vnd-fd", false, None).unwrap();
    let q = open_queue(&e.ns, "vnd-fd", QUEUE_FLAGS).unwrap();
    let cmd = tap_fd_command(&e, &[&q], &["--mac", MAC]);
    let ready = [Readiness::Path(e.socket.clone())];
    let mut d = Daemon::spawn(NAME, cmd, &e.socket, &ready, T).unwrap();
    // The daemon holds its own copy: ours can go.
    drop(q);
    {
        let mut net = NetClient::connect(&e.socket, &NetOptions::default()).unwrap();
        assert_eq!(net.config().mac, Some(GUEST_MAC));
        let host = HostSide::open(&e.ns, "vnd-fd");
        host.assert_exchange(&mut net, 0, GUEST_MAC, "--tap-fd");
    }
    assert!(d.log_contents().contains("vnd-fd"), "{}", d.log_contents());
    assert_stopped(&mut d);
    assert!(link(&e.ns, "vnd-fd").is_some(), "a passed tap was removed");
}

#[test]
fn two_tap_fds_of_a_multi_queue_tap_serve_two_pairs() {
    let e = env("tapfd2");
    e.ns.add_tap("vnd-fd2", true, None).unwrap();
    let flags = QUEUE_FLAGS | IFF_MULTI_QUEUE;
    let q0 = open_queue(&e.ns, "vnd-fd2", flags).unwrap();
    let q1 = open_queue(&e.ns, "vnd-fd2", flags).unwrap();
    let cmd = tap_fd_command(&e, &[&q0, &q1], &["--mac", MAC]);
    let ready = [Readiness::Path(e.socket.clone())];
    let mut d = Daemon::spawn(NAME, cmd, &e.socket, &ready, T).unwrap();
    drop((q0, q1));
    {
        let opts = NetOptions {
            pairs: 2,
            ..NetOptions::default()
        };
        let mut net = NetClient::connect(&e.socket, &opts).unwrap();
        assert_eq!(net.config().max_virtqueue_pairs, Some(2));
        let host = HostSide::open(&e.ns, "vnd-fd2");
        host.assert_exchange(&mut net, 0, GUEST_MAC, "pair 0");
        host.assert_exchange(&mut net, 1, GUEST_MAC, "pair 1");
    }
    assert_stopped(&mut d);
}

// ---- contrib/ ----

const SERVICE: &str = "systemd/vhost-net-daemon@.service";

/// What only this daemon's unit says (what every daemon's says is checked
/// in the `daemons` binary).
#[test]
fn unit_files_have_the_key_settings() {
    let s = unit(SERVICE);
    let exec = s.one("Service", "ExecStart");
    assert!(exec.contains("--tap ${VHOST_NET_TAP}"), "ExecStart={exec}");
    assert_eq!(
        s.environment("tap-vm0")["VHOST_NET_TAP"],
        "tap-vm0",
        "the tap defaults to the instance name"
    );
    s.assert_service(&[
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "/dev/net/tun rw"),
        ("AmbientCapabilities", ""),
    ]);
    // CAP_NET_ADMIN at most (for --create, --mtu and root-owned taps).
    let caps = s.words("Service", "CapabilityBoundingSet");
    assert!(
        caps.iter().all(|c| c == "CAP_NET_ADMIN"),
        "CapabilityBoundingSet={caps:?}"
    );
    // The tap is in the host's namespace: no private network.
    assert!(
        s.get("Service", "PrivateNetwork")
            .iter()
            .all(|v| v == "no" || v == "false"),
        "PrivateNetwork= would hide the host's taps"
    );
    let families = s.words("Service", "RestrictAddressFamilies");
    assert!(families.contains(&"AF_UNIX".to_string()), "{families:?}");
    assert!(
        families.iter().all(|f| f == "AF_UNIX" || f == "AF_INET"),
        "RestrictAddressFamilies={families:?}"
    );
    // The unprivileged drop-in is documented.
    let text = std::fs::read_to_string(contrib(SERVICE)).unwrap();
    assert!(text.contains("#   User="), "User= drop-in example");
}
