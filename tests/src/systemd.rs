//! systemd as seen from a test: the receiving end of `NOTIFY_SOCKET`,
//! `systemd-socket-activate`, and a reader for the unit files in
//! `contrib/systemd/`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fixture;
use crate::process::without_systemd_env;

/// The receiving end of `NOTIFY_SOCKET`: a datagram socket bound to a path
/// that the test hands to the daemon as `NOTIFY_SOCKET=<path>`.
#[derive(Debug)]
pub struct NotifyListener {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every message received so far, in order.
    pub seen: Vec<String>,
}

impl NotifyListener {
    /// Binds `dir/notify.sock`.
    pub fn bind(dir: &Path) -> io::Result<NotifyListener> {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path)?;
        Ok(NotifyListener {
            sock,
            path,
            seen: Vec::new(),
        })
    }

    /// The socket's path: the value of `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives one message, waiting at most `wait`; None if none came
    /// (or a signal interrupted the wait).
    pub fn recv(&mut self, wait: Duration) -> io::Result<Option<String>> {
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                Ok(Some(msg))
            }
            // A signal to the test process (EINTR) is no message either;
            // every caller loops until its own deadline.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for a message with the line `want` (such as
    /// `READY=1`); true if one came, also if it came earlier and is in
    /// [`Self::seen`].
    pub fn wait_for(&mut self, want: &str, timeout: Duration) -> io::Result<bool> {
        if self.seen.iter().any(|m| m.lines().any(|l| l == want)) {
            return Ok(true);
        }
        self.wait_for_new(want, timeout)
    }

    /// Like [`Self::wait_for`], but only a message received from now on
    /// counts (for a line that must follow an event, such as `STOPPING=1`
    /// after a signal).
    pub fn wait_for_new(&mut self, want: &str, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Some(msg) = self.recv(left)? {
                if msg.lines().any(|l| l == want) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Counts the messages with the line `want` received during `window`
    /// (from now on).
    pub fn count_for(&mut self, want: &str, window: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + window;
        let mut n = 0;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Some(msg) = self.recv(left)? {
                n += usize::from(msg.lines().any(|l| l == want));
            }
        }
        Ok(n)
    }
}

/// `systemd-socket-activate -l SOCKET [-E NOTIFY_SOCKET=NOTIFY] PROGRAM
/// ARGS...` with none of systemd's variables inherited: the first
/// connection to `socket` makes it exec `program` with `LISTEN_FDS=1` and
/// the socket as descriptor 3. It passes on only TERM, PATH, USER, HOME and
/// what `-E` names, hence `notify` as `-E`.
pub fn socket_activate_command<S: AsRef<OsStr>>(
    socket: &Path,
    notify: Option<&Path>,
    program: &Path,
    args: &[S],
) -> fixture::Result<Command> {
    let mut cmd = Command::new(fixture::find_binary("systemd-socket-activate")?);
    without_systemd_env(&mut cmd);
    cmd.arg("-l").arg(socket);
    if let Some(path) = notify {
        let mut notify_env = OsString::from("NOTIFY_SOCKET=");
        notify_env.push(path);
        cmd.arg("-E").arg(notify_env);
    }
    cmd.arg(program).args(args);
    Ok(cmd)
}

/// `cmd` run with `WATCHDOG_PID` set to `pid` (None: unchanged). `"$$"`
/// names the daemon itself: a shell sets it to its own pid and execs the
/// daemon, which keeps that pid. The environment `cmd` sets or removes is
/// carried over.
pub fn with_watchdog_pid(cmd: Command, pid: Option<&str>) -> Command {
    let Some(pid) = pid else {
        return cmd;
    };
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg(format!("WATCHDOG_PID={pid} exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

/// Seconds of a systemd time span like `10s`, `10`, `2min`, `500ms`;
/// panics on anything else.
pub fn time_span_secs(span: &str) -> f64 {
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

/// A parsed unit file: (section, key) -> every value given, in order.
#[derive(Debug, Clone, Default)]
pub struct Unit {
    entries: BTreeMap<(String, String), Vec<String>>,
}

impl Unit {
    /// Parses the unit file at `path`. Comments and blank lines are
    /// skipped; a continuation line (ending in `\`) or a line that is
    /// neither a section header nor `key=value` is an error naming the
    /// line, since ours use neither.
    pub fn parse(path: &Path) -> Result<Unit, String> {
        let text =
            fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut unit = Unit::default();
        let mut section = String::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let here = || format!("{}:{}", path.display(), n + 1);
            if line.ends_with('\\') {
                return Err(format!("{}: continuation line", here()));
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("{}: not key=value: {line}", here()))?;
            unit.entries
                .entry((section.clone(), k.trim().to_string()))
                .or_default()
                .push(v.trim().to_string());
        }
        Ok(unit)
    }

    /// Every value of `key` in `section` (empty if it is not set).
    pub fn get(&self, section: &str, key: &str) -> &[String] {
        self.entries
            .get(&(section.to_string(), key.to_string()))
            .map_or(&[], Vec::as_slice)
    }

    /// The one value of `key`; panics if it is missing or given twice.
    pub fn one(&self, section: &str, key: &str) -> &str {
        match self.get(section, key) {
            [v] => v,
            other => panic!("[{section}] {key}= should be given once, found {other:?}"),
        }
    }

    /// Checks that each `key` of `[Service]` is given once, with the value
    /// wanted; a failure names the key.
    #[track_caller]
    pub fn assert_service(&self, wanted: &[(&str, &str)]) {
        for &(key, want) in wanted {
            assert_eq!(self.one("Service", key), want, "[Service] {key}=");
        }
    }

    /// All values of a list-valued `key` (`CapabilityBoundingSet=`, ...),
    /// every assignment split on white space.
    pub fn words(&self, section: &str, key: &str) -> Vec<String> {
        self.get(section, key)
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect()
    }

    /// The variables `[Service] Environment=` sets for `instance` (`%i`
    /// replaced), as systemd passes them before any `EnvironmentFile=`.
    pub fn environment(&self, instance: &str) -> BTreeMap<String, String> {
        self.words("Service", "Environment")
            .iter()
            .filter_map(|a| a.split_once('='))
            .map(|(k, v)| (k.to_string(), v.replace("%i", instance)))
            .collect()
    }
}

/// The `KEY=VALUE` lines of a systemd `EnvironmentFile` (surrounding double
/// quotes removed, comments and blank lines skipped).
pub fn environment_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| format!("{}: not KEY=VALUE: {l}", path.display()))?;
            Ok((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// Expands an `ExecStart=` line as systemd does for what our units use:
/// `%i`, `${VAR}` (exactly one argument, empty if unset) and `$VAR` (split
/// on white space, nothing if unset).
pub fn expand_exec(exec: &str, instance: &str, vars: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for word in exec.split_whitespace() {
        let word = word.replace("%i", instance);
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            out.push(vars.get(name).cloned().unwrap_or_default());
        } else if word.contains("${") {
            // A variable inside a word (`${STATE_DIRECTORY}/%i.session`).
            let mut w = word.clone();
            while let Some((before, rest)) = w.split_once("${") {
                let Some((name, after)) = rest.split_once('}') else {
                    break;
                };
                let value = vars.get(name).map(String::as_str).unwrap_or_default();
                w = format!("{before}{value}{after}");
            }
            out.push(w);
        } else if let Some(name) = word.strip_prefix('$') {
            let value = vars.get(name).map(String::as_str).unwrap_or_default();
            out.extend(value.split_whitespace().map(str::to_string));
        } else {
            out.push(word);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::TempDir;

    #[test]
    fn unit_files_parse_into_sections_and_repeated_keys() {
        let dir = TempDir::new("vutest-unit").unwrap();
        let path = dir.join("x.service");
        fs::write(
            &path,
            "# comment\n[Unit]\nDescription=a b\n\n[Service]\nCapabilityBoundingSet=CAP_A CAP_B\n\
             CapabilityBoundingSet=CAP_C\nType=notify\n",
        )
        .unwrap();
        let u = Unit::parse(&path).unwrap();
        assert_eq!(u.one("Unit", "Description"), "a b");
        assert_eq!(u.one("Service", "Type"), "notify");
        assert_eq!(
            u.words("Service", "CapabilityBoundingSet"),
            ["CAP_A", "CAP_B", "CAP_C"]
        );
        assert!(u.get("Service", "Nope").is_empty());
        fs::write(&path, "[Unit]\nDescription=x \\\n").unwrap();
        assert!(Unit::parse(&path).unwrap_err().contains(":2"));
    }

    #[test]
    fn exec_lines_expand_like_systemd() {
        let vars: BTreeMap<String, String> = [
            ("DIR", "/srv/a b"),
            ("OPTS", "--xattr  --readonly"),
            ("EMPTY", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            expand_exec(
                "/bin/d --dir ${DIR} --tag %i $OPTS $EMPTY $UNSET",
                "s0",
                &vars
            ),
            [
                "/bin/d",
                "--dir",
                "/srv/a b",
                "--tag",
                "s0",
                "--xattr",
                "--readonly"
            ]
        );
        assert_eq!(
            expand_exec("--state-file ${DIR}/%i.session x${UNSET}y", "s0", &vars),
            ["--state-file", "/srv/a b/s0.session", "xy"]
        );
        let dir = TempDir::new("vutest-unit").unwrap();
        let unit = dir.join("u.service");
        fs::write(&unit, "[Service]\nEnvironment=TAG=%i OPTS=\n").unwrap();
        let env = Unit::parse(&unit).unwrap().environment("share0");
        assert_eq!(env["TAG"], "share0");
        assert_eq!(env["OPTS"], "");
        let conf = dir.join("x.conf");
        fs::write(&conf, "# c\nA=1\nB=\"x y\"\n").unwrap();
        let vars = environment_file(&conf).unwrap();
        assert_eq!((vars["A"].as_str(), vars["B"].as_str()), ("1", "x y"));
    }

    #[test]
    fn notify_listener_sees_messages_in_order() {
        let dir = TempDir::new("vutest-unit").unwrap();
        let mut n = NotifyListener::bind(dir.path()).unwrap();
        let tx = UnixDatagram::unbound().unwrap();
        tx.send_to(b"STATUS=x\nREADY=1", n.path()).unwrap();
        assert!(n.wait_for("READY=1", Duration::from_secs(5)).unwrap());
        assert!(!n.wait_for("STOPPING=1", Duration::from_millis(20)).unwrap());
        assert_eq!(n.seen, vec!["STATUS=x\nREADY=1".to_string()]);
        assert!(!n
            .wait_for_new("READY=1", Duration::from_millis(20))
            .unwrap());
        tx.send_to(b"WATCHDOG=1", n.path()).unwrap();
        tx.send_to(b"WATCHDOG=1", n.path()).unwrap();
        let pings = n.count_for("WATCHDOG=1", Duration::from_millis(200));
        assert_eq!(pings.unwrap(), 2);
    }
}
