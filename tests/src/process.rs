//! A child process seen from a test: its open descriptors, threads, memory
//! and mappings read from `/proc`; handing it a file descriptor under a
//! chosen number; running a command to completion under a deadline; and a
//! clean environment for commands whose behaviour depends on systemd's
//! variables.

use std::fs::{self, File};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::fixture::{poll_until, TempDir};

/// The environment variables through which systemd talks to a service
/// (socket activation, notification, watchdog, journal). A test that did
/// not set them on purpose removes them with [`without_systemd_env`], so a
/// test run under a systemd unit behaves like one run from a shell.
pub const SYSTEMD_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
];

/// Removes every variable of [`SYSTEMD_ENV`] from `cmd`'s environment
/// (a later `cmd.env(..)` still sets one on purpose).
pub fn without_systemd_env(cmd: &mut Command) -> &mut Command {
    for var in SYSTEMD_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Number of open file descriptors of `pid` (entries of `/proc/PID/fd`).
pub fn fd_count(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// What each open descriptor of `pid` points at (`socket:[123]`,
/// `anon_inode:[eventfd]`, a path...), sorted; for failure messages.
pub fn fd_targets(pid: u32) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        // A descriptor closed between readdir and readlink is simply skipped.
        if let Ok(target) = fs::read_link(entry.path()) {
            out.push(format!(
                "{} -> {}",
                entry.file_name().to_string_lossy(),
                target.display()
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Who else holds the sockets among `targets` (lines of [`fd_targets`]):
/// for each `socket:[INODE]`, the processes (pid and command) with a
/// descriptor on it, and its line in /proc/net/unix (path, state). For the
/// message of a failed descriptor check: where a leftover socket came from.
pub fn socket_holders(targets: &[String]) -> Vec<String> {
    let unix = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let mut out = Vec::new();
    for t in targets {
        let Some(inode) = t.split("socket:[").nth(1).map(|r| r.trim_end_matches(']')) else {
            continue;
        };
        let mut holders = Vec::new();
        for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let holds = fs::read_dir(p.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|f| {
                    fs::read_link(f.path())
                        .is_ok_and(|l| l.to_string_lossy() == format!("socket:[{inode}]"))
                });
            if holds {
                holders.push(format!("{pid} {}", command_line(pid)));
            }
        }
        let line = unix
            .lines()
            .find(|l| l.split_whitespace().nth(6) == Some(inode))
            .unwrap_or("not in /proc/net/unix");
        out.push(format!("{t}: held by {holders:?}; {line}"));
    }
    out
}

/// The kicks waiting in `pid`'s eventfds (`eventfd-count` in
/// /proc/PID/fdinfo). A stopped vhost-user daemon's kick eventfd counts the
/// guest's kicks, so a count means a request sits in a ring, untaken.
pub fn pending_kicks(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("eventfd-count:"))
                .and_then(|n| u64::from_str_radix(n.trim(), 16).ok())
        })
        .sum()
}

/// The pids of `pid`'s children (every thread's) whose command line
/// contains `program`.
pub fn children_running(pid: u32, program: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|p| command_line(*p).contains(program))
        .collect()
}

/// `pid`'s command line, arguments joined with spaces (empty once gone).
pub fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// Number of threads of `pid` (entries of `/proc/PID/task`).
pub fn thread_count(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/task"))?.count())
}

/// One thread of a process as `/proc/PID/task/TID/status` shows it.
#[derive(Debug, Clone)]
pub struct ThreadStatus {
    /// Its id.
    pub tid: u32,
    /// The whole status text.
    pub status: String,
}

impl ThreadStatus {
    /// The value of `field` (`Name`, `Seccomp`, `State`, ...), trimmed.
    pub fn field(&self, field: &str) -> Option<&str> {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(str::trim)
    }

    /// The thread's name (`comm`).
    pub fn name(&self) -> &str {
        self.field("Name").unwrap_or_default()
    }

    /// How often it was switched out, voluntarily or not: a count that
    /// stays put while the thread sleeps and never wakes.
    pub fn switches(&self) -> u64 {
        ["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"]
            .iter()
            .filter_map(|f| self.field(f)?.parse::<u64>().ok())
            .sum()
    }
}

/// Every thread of `pid` (those that end while they are read are left out).
pub fn threads(pid: u32) -> io::Result<Vec<ThreadStatus>> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse() else {
            continue;
        };
        if let Ok(status) = fs::read_to_string(task.path().join("status")) {
            out.push(ThreadStatus { tid, status });
        }
    }
    Ok(out)
}

/// The thread of `pid` named `name`, if it runs.
pub fn thread_named(pid: u32, name: &str) -> io::Result<Option<ThreadStatus>> {
    Ok(threads(pid)?.into_iter().find(|t| t.name() == name))
}

/// The value of `field` in `/proc/PID/status` (`CapEff`, `NoNewPrivs`,
/// ...), trimmed.
pub fn status_field(pid: u32, field: &str) -> io::Result<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status has no {field} field"),
            )
        })
}

/// The namespaces a jail may leave (`pid`, `mnt`, `net`, `ipc`, `uts`,
/// `user`), each with whether `pid` is in another one than this process.
pub fn namespaces_apart(pid: u32) -> io::Result<Vec<(&'static str, bool)>> {
    ["pid", "mnt", "net", "ipc", "uts", "user"]
        .into_iter()
        .map(|ns| {
            let theirs = fs::read_link(format!("/proc/{pid}/ns/{ns}"))?;
            let ours = fs::read_link(format!("/proc/self/ns/{ns}"))?;
            Ok((ns, theirs != ours))
        })
        .collect()
}

/// Asserts what a jailed process holds: `caps` (hex, as `/proc/PID/status`
/// shows it) as its effective and permitted capabilities, NoNewPrivs 1
/// and a seccomp filter; `who` names it in the failure.
pub fn assert_held(pid: u32, who: &str, caps: &str) {
    for field in ["CapEff", "CapPrm"] {
        let value = status_field(pid, field).unwrap();
        assert_eq!(value, caps, "{who}: {field}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs").unwrap(), "1", "{who}");
    assert_eq!(seccomp_mode(pid).unwrap(), 2, "{who}: Seccomp");
}

/// Asserts that `pid` is in namespaces of its own exactly for those
/// named in `own` (of those [`namespaces_apart`] looks at).
pub fn assert_namespaces_apart(pid: u32, who: &str, own: &[&str]) {
    let apart = namespaces_apart(pid).unwrap();
    let want: Vec<(&str, bool)> = apart
        .iter()
        .map(|&(ns, _)| (ns, own.contains(&ns)))
        .collect();
    assert_eq!(apart, want, "{who}: namespaces apart from the host's");
}

/// The namespaces a jail in `mode` (`namespace`, `chroot`) has of its own,
/// run as root from the host's: all but the user namespace, or the mount
/// namespace alone.
pub fn jail_namespaces(mode: &str) -> &'static [&'static str] {
    match mode {
        "namespace" => &["pid", "mnt", "net", "ipc", "uts"],
        _ => &["mnt"],
    }
}

/// The uid nobody, as a jail started by an unprivileged user sees it.
pub const NOBODY: u32 = 65534;

/// Asserts that `pid` runs in a user namespace of its own mapping
/// [`NOBODY`] (who started it) to 0 inside.
pub fn assert_maps_nobody_to_root(pid: u32) {
    let uid_map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "65534", "1"],
        "the jail's user namespace maps nobody to 0"
    );
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmSize`, `RssShmem`, ...)
/// in KiB.
pub fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let value = status_field(pid, field)?;
    value
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status: {field}: {value} is not a kB count"),
            )
        })
}

/// The `Seccomp:` mode of `/proc/PID/status` (0 none, 1 strict, 2 filter).
pub fn seccomp_mode(pid: u32) -> io::Result<u32> {
    let value = status_field(pid, "Seccomp")?;
    value.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status: Seccomp: {value} is not a mode"),
        )
    })
}

/// The process that serves for the daemon `pid`: `pid` itself, or the
/// child it supervises when it forked one (a sandbox in new namespaces),
/// followed down as long as each has exactly one child.
pub fn serving_pid(pid: u32) -> u32 {
    let mut pid = pid;
    loop {
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let children: Vec<u32> = children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        match children[..] {
            [only] => pid = only,
            _ => return pid,
        }
    }
}

/// The mappings of `/proc/PID/maps` whose line contains `needle`: (start
/// address, size in bytes); none once the process is gone.
pub fn mappings(pid: u32, needle: &str) -> Vec<(u64, u64)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            let a = u64::from_str_radix(a, 16).ok()?;
            Some((a, u64::from_str_radix(b, 16).ok()? - a))
        })
        .collect()
}

/// `pid` and its descendants (`/proc/PID/task/*/children`).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let tasks = fs::read_dir(format!("/proc/{}/task", all[i]));
        for task in tasks.into_iter().flatten().flatten() {
            let children = fs::read_to_string(task.path().join("children"));
            all.extend(
                children
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    all
}

/// Number of lines of `/proc/PID/maps` that contain `needle` (for example
/// the name of the driver's guest-RAM memfd).
pub fn mappings_containing(pid: u32, needle: &str) -> io::Result<usize> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(maps.lines().filter(|l| l.contains(needle)).count())
}

/// Makes `fd` (open in this process) appear as descriptor `target` in the
/// child that `cmd` spawns, without the close-on-exec flag, the way systemd
/// or Kata pass a listening socket. `fd` must stay open until the child is
/// spawned; the parent's descriptor table is not touched, so children
/// spawned by other threads inherit nothing.
pub fn inherit_fd_as(cmd: &mut Command, fd: RawFd, target: RawFd) -> &mut Command {
    let hook = move || {
        if fd == target {
            // dup2 onto itself keeps FD_CLOEXEC; clear it instead.
            // SAFETY: fcntl on a descriptor number has no memory-safety
            // preconditions and is async-signal-safe.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            // SAFETY: as above.
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0
            {
                return Err(io::Error::last_os_error());
            }
        } else {
            // SAFETY: dup2 only manipulates this (forked) child's descriptor
            // table and is async-signal-safe; the new descriptor has no
            // FD_CLOEXEC.
            if unsafe { libc::dup2(fd, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only calls the
    // async-signal-safe fcntl and dup2; it allocates nothing and takes no lock.
    unsafe { cmd.pre_exec(hook) }
}

/// How a command run by [`run_bounded`] ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status; None if it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Everything it wrote on stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything it wrote on stderr (lossy UTF-8).
    pub stderr: String,
}

impl Finished {
    /// The exit code; None if it was killed at the deadline or by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Checks that a daemon refused to run: it exited by itself with one of
    /// `codes`, did not panic, and printed exactly one line starting with
    /// `error: `, which is the first line of stderr that mentions an error
    /// at all and contains every string of `culprits`. Returns that line,
    /// or what is wrong, with stderr quoted.
    pub fn refusal(&self, codes: &[i32], culprits: &[&str]) -> Result<String, String> {
        let stderr = &self.stderr;
        let Some(status) = self.status else {
            return Err(format!(
                "still running at the deadline instead of refusing; stderr:\n{stderr}"
            ));
        };
        if !self.code().is_some_and(|c| codes.contains(&c)) {
            return Err(format!(
                "exit status {status}, expected code {codes:?}; stderr:\n{stderr}"
            ));
        }
        if stderr.contains("panicked") {
            return Err(format!("it panicked:\n{stderr}"));
        }
        let first = stderr
            .lines()
            .find(|l| l.to_ascii_lowercase().contains("error"))
            .ok_or_else(|| format!("no error line on stderr:\n{stderr}"))?;
        if !first.starts_with("error: ") {
            return Err(format!(
                "the first error line does not start with `error: `: {first:?}\nstderr:\n{stderr}"
            ));
        }
        let n = stderr.lines().filter(|l| l.starts_with("error:")).count();
        if n != 1 {
            return Err(format!(
                "{n} `error:` lines, expected one; stderr:\n{stderr}"
            ));
        }
        if let Some(c) = culprits.iter().find(|c| !first.contains(**c)) {
            return Err(format!("the error line does not name {c:?}: {first:?}"));
        }
        Ok(first.to_string())
    }
}

/// Runs `cmd` (stdin null, stdout and stderr captured in files) until it
/// exits or `timeout` passes; then it is killed and `status` is None. Unlike
/// `Command::output`, a program that unexpectedly keeps running (a daemon
/// that should have refused its options) cannot hang the test.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> io::Result<Finished> {
    let dir = TempDir::new("vutest-run").map_err(io::Error::other)?;
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()?;
    let deadline = Instant::now() + timeout;
    let mut status = None;
    let mut wait_err = None;
    poll_until(timeout, || match child.try_wait() {
        Ok(Some(s)) => {
            status = Some(s);
            true
        }
        Ok(None) => Instant::now() >= deadline,
        Err(e) => {
            wait_err = Some(e);
            true
        }
    });
    if let Some(e) = wait_err {
        return Err(e);
    }
    if status.is_none() {
        // An error means it exited meanwhile; wait() reaps it either way.
        let _ = child.kill();
        child.wait()?;
    }
    let read = |p: &Path| fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(Finished {
        status,
        stdout: read(&out_path)?,
        stderr: read(&err_path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn proc_readers_see_this_process() {
        // Other tests run in parallel threads, so look for our descriptor
        // rather than count them.
        let pid = std::process::id();
        let f = File::open("/proc/self/status").unwrap();
        assert!(fd_count(pid).unwrap() >= 4);
        let want = format!("{} -> /proc/{pid}/status", f.as_raw_fd());
        let targets = fd_targets(pid).unwrap();
        assert!(targets.contains(&want), "{want} not in {targets:?}");
        drop(f);
        assert!(thread_count(pid).unwrap() >= 1);
        assert!(status_kib(pid, "VmRSS").unwrap() > 0);
        assert!(status_kib(pid, "NoSuchField").is_err());
        assert!(mappings_containing(pid, "[stack]").unwrap() >= 1);
    }

    #[test]
    fn run_bounded_captures_output_and_kills_at_deadline() {
        let done = run_bounded(
            Command::new("/bin/sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(done.code(), Some(3));
        assert_eq!(done.stdout, "out\n");
        assert_eq!(done.stderr, "err\n");

        let start = Instant::now();
        let hung = run_bounded(
            Command::new("/bin/sh").args(["-c", "exec sleep 1000"]),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(hung.status.is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn refusal_wants_one_error_line_naming_the_culprit() {
        let sh = |script: &str| {
            run_bounded(
                Command::new("/bin/sh").args(["-c", script]),
                Duration::from_secs(10),
            )
            .unwrap()
        };
        let ok = sh("echo 'note: x' >&2; echo 'error: --tag: too long' >&2; exit 2");
        assert_eq!(
            ok.refusal(&[2], &["--tag"]).unwrap(),
            "error: --tag: too long"
        );
        assert!(ok.refusal(&[1], &["--tag"]).is_err(), "wrong code");
        assert!(ok.refusal(&[2], &["--cache"]).is_err(), "culprit not named");
        let two = sh("echo 'error: a' >&2; echo 'error: b' >&2; exit 2");
        assert!(two.refusal(&[2], &[]).is_err());
        let late = sh("echo 'ERROR something' >&2; echo 'error: a' >&2; exit 2");
        assert!(late.refusal(&[2], &[]).is_err());
        assert!(sh("exit 0").refusal(&[0], &[]).is_err(), "no error line");
    }

    #[test]
    fn inherited_fd_appears_under_the_target_number() {
        let f = File::open("/proc/self/status").unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "readlink /proc/self/fd/9"]);
        inherit_fd_as(&mut cmd, f.as_raw_fd(), 9);
        let done = run_bounded(&mut cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(done.code(), Some(0), "{done:?}");
        assert!(done.stdout.trim_end().ends_with("/status"), "{done:?}");
    }

    #[test]
    fn systemd_variables_are_removed() {
        let mut cmd = Command::new("/usr/bin/env");
        cmd.env("NOTIFY_SOCKET", "/nowhere").env("KEEP_ME", "1");
        without_systemd_env(&mut cmd);
        let done = run_bounded(&mut cmd, Duration::from_secs(10)).unwrap();
        assert!(!done.stdout.contains("NOTIFY_SOCKET="), "{}", done.stdout);
        assert!(done.stdout.contains("KEEP_ME=1"), "{}", done.stdout);
    }
}
