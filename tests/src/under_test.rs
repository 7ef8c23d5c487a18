//! Our three daemons described for the suites every daemon runs
//! (`tests/tests/daemons/`): a [`DaemonUnderTest`] says how to start the
//! daemon over what it serves, in each of the ways it gets its socket
//! (`--socket-path`, `--fd N`, systemd socket activation), what it prints
//! for `--print-capabilities`, which contrib files it ships; its [`Env`]
//! (one per test: an image, a share, a tap in a network namespace) and
//! [`Frontend`] drive requests through it to prove that it serves.
//!
//! [`blk::BLK`], [`fs::FS`] and [`net::NET`] are the three descriptions.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::device::VuDevice;
use crate::fixture::{Daemon, Readiness, TempDir};
use crate::ours::project_binary;
use crate::process::{inherit_fd_as, without_systemd_env};
use crate::systemd::socket_activate_command;

pub mod blk;
pub mod fs;
pub mod net;
pub mod rings;

/// How long a daemon may take to come up, and a request to be answered.
pub const T: Duration = Duration::from_secs(10);

/// What `common::serve` logs once the serving process (the jailed child,
/// with a namespace sandbox) waits for frontends.
pub const LISTENING_LINE: &str = "listening on ";

/// One of our daemons, as the shared suites see it.
#[derive(Debug)]
pub struct DaemonUnderTest {
    /// The binary (built next to the tests), named in every message.
    pub name: &'static str,
    /// What `--print-capabilities` prints, byte for byte.
    pub capabilities: &'static str,
    /// A line the daemon prints once it accepts connections, which a
    /// management layer waits for (virtiofsd's, for Kata).
    pub ready_line: Option<&'static str>,
    /// Options the watchdog tests run the daemon with: its namespace jail
    /// (the daemon reads WATCHDOG_PID before the jail forks, so the jailed
    /// child, PID 1 of its own pid namespace, pings for the process
    /// systemd started).
    pub watchdog_args: &'static [&'static str],
    /// Its files in `contrib/`.
    pub contrib: Contrib,
    /// Makes a test's environment; the argument names its directory.
    pub env: fn(&str) -> Box<dyn Env>,
}

/// What a daemon ships in `contrib/`: `systemd/NAME@.service`,
/// `systemd/NAME@.socket`, an example configuration and
/// `qemu/50-NAME.json`.
#[derive(Debug)]
pub struct Contrib {
    /// The vhost-user type of the QEMU descriptor and of
    /// `--print-capabilities` (`block`, `fs`, `net`).
    pub kind: &'static str,
    /// Where the unit and the descriptor expect the binary.
    pub installed_binary: &'static str,
    /// The unit instance the tests use (`disk0`).
    pub instance: &'static str,
    /// The example `EnvironmentFile`, below `contrib/`.
    pub example_conf: &'static str,
    /// How much exposure `systemd-analyze security` may find in the
    /// service, in tenths of 10.
    pub max_exposure: u32,
    /// The service documents a `ReadWritePaths=` drop-in (the daemons that
    /// serve files of the host).
    pub read_write_paths: bool,
    /// The service asks for the watchdog (`WatchdogSec=`).
    pub watchdog: bool,
}

/// Every daemon, for tests that loop over them.
pub static ALL: [&DaemonUnderTest; 3] = [&blk::BLK, &fs::FS, &net::NET];

/// A test's own temporary directory (for what the daemon serves, a
/// notify socket, a log) and the daemon's socket path in it; removed on
/// drop.
#[derive(Debug)]
pub struct Scratch {
    dir: TempDir,
    socket: PathBuf,
}

impl Scratch {
    /// A fresh `<tmp>/vutest-<what>-<test>...` with the socket path
    /// `<what>.sock` in it (not created).
    pub fn new(what: &str, test: &str) -> Self {
        let dir = TempDir::new(&format!("vutest-{what}-{test}")).unwrap();
        let socket = dir.join(format!("{what}.sock"));
        Scratch { dir, socket }
    }

    /// A path in the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// One test's environment: its [`Scratch`] and what the daemon serves
/// (`S`: an image, a share, a namespace with a tap); removed on drop
/// (what it serves first, then the directory). Each daemon's
/// [`Env`] is a `Fixture` of its own `S`.
#[derive(Debug)]
pub struct Fixture<S> {
    served: S,
    scratch: Scratch,
}

impl<S> Fixture<S> {
    /// A fresh [`Scratch`] (`what`, `test`, as [`Scratch::new`]) and what
    /// `serve` makes to serve in it.
    pub fn new(what: &str, test: &str, serve: impl FnOnce(&Scratch) -> S) -> Self {
        let scratch = Scratch::new(what, test);
        let served = serve(&scratch);
        Fixture { served, scratch }
    }

    /// What the daemon serves.
    pub fn served(&self) -> &S {
        &self.served
    }
}

/// What a frontend does through a connected client of one device, for the
/// environment `Self` serves: written once as a [`Frontend`] over any
/// device.
pub trait Rounds: Sync {
    /// The device's driver.
    type Client;
    /// A client connected to `socket` and set up: features, memory, rings
    /// (and FUSE INIT for fs).
    fn client(&self, socket: &Path) -> Self::Client;
    /// The vhost-user device underneath `client`.
    fn device(client: &mut Self::Client) -> &mut VuDevice;
    /// [`Frontend::serve`] through `client`.
    fn serve(&self, client: &mut Self::Client, round: u64);
    /// [`Frontend::exercise`] through `client`.
    fn exercise(&self, client: &mut Self::Client, round: u64, after: &mut dyn FnMut(&str));
    /// [`Frontend::leave_in_flight`] through `client`.
    fn leave_in_flight(&self, client: &mut Self::Client, round: u64);
}

/// What every [`Env`] has, whatever its daemon serves; a [`Fixture`] has it
/// when what it serves has [`Rounds`].
pub trait Connect {
    /// The test's directory and the daemon's socket path.
    fn scratch(&self) -> &Scratch;
    /// A frontend connected to `socket` and set up: features, memory,
    /// rings (and FUSE INIT for fs).
    fn connect(&self, socket: &Path) -> Box<dyn Frontend + '_>;
}

impl<S: Rounds> Connect for Fixture<S> {
    fn scratch(&self) -> &Scratch {
        &self.scratch
    }

    fn connect(&self, socket: &Path) -> Box<dyn Frontend + '_> {
        Box::new(Connected {
            served: &self.served,
            client: self.served.client(socket),
        })
    }
}

/// A connected client of the device `S` serves.
struct Connected<'a, S: Rounds> {
    served: &'a S,
    client: S::Client,
}

impl<S: Rounds> Frontend for Connected<'_, S> {
    fn device(&mut self) -> &mut VuDevice {
        S::device(&mut self.client)
    }

    fn serve(&mut self, round: u64) {
        self.served.serve(&mut self.client, round);
    }

    fn exercise(&mut self, round: u64, after: &mut dyn FnMut(&str)) {
        self.served.exercise(&mut self.client, round, after);
    }

    fn leave_in_flight(&mut self, round: u64) {
        self.served.leave_in_flight(&mut self.client, round);
    }
}

/// What one test's daemon serves and where its socket goes; removed on
/// drop (its directory, its network namespace).
pub trait Env: Sync + Connect {
    /// The test's own temporary directory (for a notify socket, a log).
    fn dir(&self) -> &Path {
        self.scratch().dir.path()
    }
    /// Where the daemon's socket goes (not created).
    fn socket(&self) -> &Path {
        &self.scratch().socket
    }
    /// The daemon's own arguments for what this environment serves
    /// (`--blk-file IMAGE`, ...), without a socket option.
    fn args(&self) -> Vec<OsString>;
    /// A command running `program` where the daemon must run (inside the
    /// network namespace of the tap for net).
    fn command_in(&self, program: &Path) -> Command {
        Command::new(program)
    }
    /// [`Env::command_in`] with systemd's variables removed.
    fn wrap(&self, program: &Path) -> Command {
        let mut cmd = self.command_in(program);
        without_systemd_env(&mut cmd);
        cmd
    }
    /// Keeps requests in flight through a frontend of its own on `socket`
    /// until `busy` is told to stop (or the daemon is gone); tells `busy`
    /// once they stream. Returns the check to make once the daemon has
    /// exited: nothing it acknowledged is lost.
    fn keep_busy(&self, socket: &Path, busy: &Busy) -> Box<dyn FnOnce() + Send>;
    /// Checks what the daemon must leave alone when it exits (net: a tap
    /// it did not create).
    fn assert_left_alone(&self) {}
    /// Checks that the example configuration sets what the environment
    /// provides, then points those variables at it (the image, the share,
    /// the tap).
    fn configure_unit(&self, vars: &mut BTreeMap<String, String>);
    /// Checks on a connection to `socket` that the example
    /// configuration's options (`vars`) took effect.
    fn assert_unit_options(&self, socket: &Path, vars: &BTreeMap<String, String>);
}

/// The two flags between a test and [`Env::keep_busy`]: the test says
/// stop, the busy frontend says its requests stream.
#[derive(Debug, Default)]
pub struct Busy {
    streaming: AtomicBool,
    stop: AtomicBool,
}

impl Busy {
    /// Tells the busy frontend to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether the test said stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Says that requests stream.
    pub fn set_streaming(&self) {
        self.streaming.store(true, Ordering::Release);
    }

    /// Whether requests stream.
    pub fn streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }
}

/// Points the example configuration's variable `name` at `value`, after
/// checking that the example sets it (for [`Env::configure_unit`]).
pub fn set_example_var(vars: &mut BTreeMap<String, String>, name: &str, value: &str) {
    assert!(vars.contains_key(name), "the example sets {name}");
    vars.insert(name.into(), value.into());
}

/// A connected frontend of one daemon.
pub trait Frontend {
    /// The vhost-user device underneath.
    fn device(&mut self) -> &mut VuDevice;
    /// One request each way, checked; `round` makes it unique (data
    /// written, a file created, frames tagged). Where the device keeps
    /// data (blk, fs), a round also checks that what the previous round
    /// left is still there, whichever frontend wrote it.
    fn serve(&mut self, round: u64);
    /// Every kind of request the device serves, checked; `after` runs
    /// after each kind with its name (to check that the daemon lives).
    fn exercise(&mut self, round: u64, after: &mut dyn FnMut(&str));
    /// Puts requests on the rings and kicks, without waiting for them.
    fn leave_in_flight(&mut self, round: u64);
}

impl DaemonUnderTest {
    /// A fresh environment; `test` names its directory.
    pub fn env(&self, test: &str) -> Box<dyn Env> {
        (self.env)(test)
    }

    /// The daemon's binary next to the tests.
    pub fn binary(&self) -> PathBuf {
        project_binary(self.name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The daemon over `env`, with no socket option yet.
    pub fn command(&self, env: &dyn Env) -> Command {
        let mut cmd = env.wrap(&self.binary());
        cmd.args(env.args());
        cmd
    }

    /// The daemon over `env` listening on `--socket-path SOCKET`.
    pub fn socket_command(&self, env: &dyn Env) -> Command {
        let mut cmd = self.command(env);
        cmd.arg("--socket-path").arg(env.socket());
        cmd
    }

    /// The daemon over `env` serving the listening socket handed to it as
    /// descriptor `target` (`--fd TARGET`); `fd` must stay open until the
    /// daemon is spawned.
    pub fn fd_command(&self, env: &dyn Env, fd: RawFd, target: RawFd) -> Command {
        let mut cmd = self.command(env);
        cmd.arg("--fd").arg(target.to_string());
        inherit_fd_as(&mut cmd, fd, target);
        cmd
    }

    /// `systemd-socket-activate` listening on `env.socket()` (with
    /// `NOTIFY_SOCKET=notify` passed on); the first connection makes it
    /// exec the daemon with `args` (or, if None, the environment's), where
    /// the environment runs it, with the socket as descriptor 3.
    pub fn activation_command(
        &self,
        env: &dyn Env,
        notify: Option<&Path>,
        args: Option<&[String]>,
    ) -> Command {
        let mut inner = env.wrap(&self.binary());
        match args {
            Some(a) => inner.args(a),
            None => inner.args(env.args()),
        };
        let program = PathBuf::from(inner.get_program());
        let argv: Vec<OsString> = inner.get_args().map(OsString::from).collect();
        socket_activate_command(env.socket(), notify, &program, &argv)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// What makes the daemon ready: `socket` exists (unless None) and the
    /// ready line, if it has one, is in its log.
    pub fn readiness(&self, socket: Option<&Path>) -> Vec<Readiness> {
        let mut r: Vec<Readiness> = socket
            .map(|s| Readiness::Path(s.to_path_buf()))
            .into_iter()
            .collect();
        r.extend(self.ready_line.map(|l| Readiness::LogLine(l.to_string())));
        r
    }

    /// Spawns `cmd` (serving `socket`) and waits until it is ready: the
    /// socket exists if `created` (the daemon binds it) and the ready line
    /// is logged. Panics, with the log, if it is not.
    pub fn spawn(&self, cmd: Command, socket: &Path, created: bool) -> Daemon {
        let ready = self.readiness(created.then_some(socket));
        Daemon::spawn(self.name, cmd, socket, &ready, T).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the daemon over `env` on `--socket-path`, ready.
    pub fn start(&self, env: &dyn Env) -> Daemon {
        self.spawn(self.socket_command(env), env.socket(), true)
    }

    /// Connects a frontend to `socket` and serves round `round` through it.
    pub fn serve(&self, env: &dyn Env, socket: &Path, round: u64) {
        env.connect(socket).serve(round);
    }
}
