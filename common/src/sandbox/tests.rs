//! Tests of the sandbox; the risky part of each runs in a forked child
//! ([`crate::testutil::in_child`]), so the test harness is never sandboxed.

use super::*;
use crate::testutil::{in_child, in_child_with, TempDir};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// A share with `marker` inside and `outside` next to it.
fn share(name: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(name);
    let share = dir.0.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("marker"), b"inside").unwrap();
    std::fs::write(dir.0.join("outside"), b"outside").unwrap();
    (dir, share)
}

fn status_field(name: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .ok_or(format!("no {name} in /proc/self/status"))?;
    u64::from_str_radix(line.trim(), 16).map_err(|e| e.to_string())
}

fn become_nobody() -> Result<(), String> {
    // SAFETY: plain credential changes of this forked test child.
    let r = unsafe { libc::setresgid(65534, 65534, 65534) | libc::setresuid(65534, 65534, 65534) };
    check(r == 0, || {
        format!("setresuid: {}", io::Error::last_os_error())
    })
}

#[test]
fn the_root_after_each_mode() {
    let dir = Path::new("/srv/share");
    assert_eq!(root_after(SandboxMode::Namespace, dir), Path::new("/share"));
    assert_eq!(root_after(SandboxMode::Chroot, dir), Path::new("/"));
    assert_eq!(root_after(SandboxMode::None, dir), dir);
}

#[test]
fn none_mode_changes_nothing() {
    let (_dir, share) = share("sandbox-none");
    let cwd = std::env::current_dir().unwrap();
    enter_namespaces(SandboxMode::None, || {}).unwrap();
    prepare_root(SandboxMode::None, &share).unwrap();
    assert_eq!(pivot(SandboxMode::None, &share).unwrap(), share);
    assert_eq!(std::env::current_dir().unwrap(), cwd);
}

fn getxattr(path: &str, name: &CStr) -> io::Result<Vec<u8>> {
    let path = CString::new(path).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: getxattr writes at most buf.len() bytes into `buf`.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf[..n as usize].to_vec())
}

#[test]
fn namespace_pivot_confines_the_child_to_the_share() {
    let (dir, share) = share("sandbox-ns");
    let outside = dir.0.join("outside");
    let out = in_child(|| {
        let e = |e: SandboxError| e.to_string();
        enter_namespaces(SandboxMode::Namespace, || {}).map_err(e)?;
        // From here on: the sandboxed child; its exit status is the
        // supervising parent's.
        // SAFETY: getpid has no arguments.
        let pid = unsafe { libc::getpid() };
        check(pid == 1, || format!("pid {pid} in the new namespace"))?;
        prepare_root(SandboxMode::Namespace, &share).map_err(e)?;
        let root = pivot(SandboxMode::Namespace, &share).map_err(e)?;
        check(root == Path::new(NAMESPACE_SHARE), || {
            format!("root {}", root.display())
        })?;
        check(root == root_after(SandboxMode::Namespace, &share), || {
            "root_after".into()
        })?;
        let marker = std::fs::read(root.join("marker")).map_err(|e| format!("marker: {e}"))?;
        check(marker == b"inside", || "wrong marker".into())?;
        check(!Path::new("/outside").exists(), || {
            "/outside visible".into()
        })?;
        check(!outside.exists(), || {
            format!("{} visible", outside.display())
        })?;
        let top: Vec<_> = std::fs::read_dir("/")
            .map_err(|e| e.to_string())?
            .filter_map(|d| d.ok().map(|d| d.file_name()))
            .collect();
        check(top.len() == 2, || {
            format!("/ holds {top:?}, not just proc and share")
        })?;
        // The root is read-only, the share is not.
        check(File::create("/new").is_err(), || "/ is writable".into())?;
        std::fs::write(root.join("from-sandbox"), b"x").map_err(|e| e.to_string())?;
        // /proc is this pid namespace's, and /proc/self/fd/N paths
        // reach our descriptors (fuse-backend-rs's xattr calls).
        let me = std::fs::read_link("/proc/self").map_err(|e| format!("/proc/self: {e}"))?;
        check(me == Path::new("1"), || {
            format!("/proc/self -> {}", me.display())
        })?;
        let f = File::open(root.join("marker")).map_err(|e| e.to_string())?;
        let via_proc = format!("/proc/self/fd/{}", f.as_raw_fd());
        let target = std::fs::read_link(&via_proc).map_err(|e| e.to_string())?;
        check(target == root.join("marker"), || {
            format!("{via_proc} -> {target:?}")
        })?;
        match getxattr(&via_proc, c"user.sandbox-test") {
            Ok(_) => {}
            Err(err) => check(
                matches!(err.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)),
                || format!("getxattr {via_proc}: {err}"),
            )?,
        }
        Ok(7)
    });
    out.assert_exit(7);
    // The host's view is untouched, and saw the write.
    assert!(share.join("marker").exists() && outside.exists());
    assert!(share.join("from-sandbox").exists());
    assert!(!share.join("proc").exists() && !share.join("share").exists());
}

#[test]
fn namespace_root_keeps_the_shares_submounts() {
    let (_dir, share) = share("sandbox-submount");
    std::fs::create_dir(share.join("sub")).unwrap();
    let out = in_child(|| {
        let e = |e: SandboxError| e.to_string();
        enter_namespaces(SandboxMode::Namespace, || {}).map_err(e)?;
        // Our own mount, in our namespace only (slave first, so it
        // cannot propagate to the host).
        make_rslave("", Path::new("/")).map_err(e)?;
        let sub = share.join("sub");
        mount("", Some(c"tmpfs"), &sub, Some(c"tmpfs"), 0, None).map_err(e)?;
        std::fs::write(sub.join("on-submount"), b"x").map_err(|e| e.to_string())?;
        prepare_root(SandboxMode::Namespace, &share).map_err(e)?;
        let root = pivot(SandboxMode::Namespace, &share).map_err(e)?;
        let inner = root.join("sub/on-submount");
        check(inner.exists(), || format!("{} missing", inner.display()))?;
        Ok(0)
    });
    out.assert_exit(0);
    assert!(
        !share.join("sub/on-submount").exists(),
        "the submount leaked to the host"
    );
}

#[test]
fn namespace_mode_refuses_to_share_the_root() {
    let out = in_child(|| {
        enter_namespaces(SandboxMode::Namespace, || {}).map_err(|e| e.to_string())?;
        match prepare_root(SandboxMode::Namespace, Path::new("/")) {
            Err(SandboxError::ShareIsRoot) => Ok(0),
            other => Err(format!("{other:?}")),
        }
    });
    out.assert_exit(0);
}

#[test]
fn namespace_parent_forwards_sigterm_and_exits_with_the_childs_status() {
    let (ready_r, ready_w) = UnixStream::pair().unwrap();
    let out = in_child_with(
        Duration::from_secs(30),
        || {
            // Installed before, as a daemon does: the child inherits it.
            let shutdown = crate::signals::Shutdown::install().map_err(|e| e.to_string())?;
            enter_namespaces(SandboxMode::Namespace, || {}).map_err(|e| e.to_string())?;
            (&ready_w).write_all(b"r").map_err(|e| e.to_string())?;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !shutdown.requested() {
                check(std::time::Instant::now() < deadline, || {
                    "no SIGTERM forwarded".into()
                })?;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(42)
        },
        |pid| {
            let mut b = [0u8; 1];
            (&ready_r).read_exact(&mut b).unwrap();
            // SAFETY: signals our own child (the supervising parent).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        },
    );
    out.assert_exit(42);
}

#[test]
fn namespace_parent_reports_a_killed_child_as_128_plus_signal() {
    let out = in_child(|| {
        enter_namespaces(SandboxMode::Namespace, || {}).map_err(|e| e.to_string())?;
        // A signal the kernel forces: PID 1 ignores ordinary ones.
        crate::seccomp::apply(crate::seccomp::SeccompAction::Kill, &[], &[])
            .map_err(|e| e.to_string())?;
        // SAFETY: getppid has no arguments; the filter kills us here.
        unsafe { libc::getppid() };
        Ok(0)
    });
    out.assert_exit(128 + libc::SIGSYS);
}

#[test]
fn namespaces_refuse_a_threaded_process() {
    let out = in_child(|| {
        let (_keep, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || rx.recv());
        match enter_namespaces(SandboxMode::Namespace, || {}) {
            Err(SandboxError::Threaded { threads: 2, .. }) => Ok(0),
            other => Err(format!("{other:?}")),
        }
    });
    out.assert_exit(0);
}

#[test]
fn chroot_confines_paths_without_a_pid_namespace() {
    let (_dir, share) = share("sandbox-chroot");
    let out = in_child(|| {
        enter_namespaces(SandboxMode::Chroot, || {}).map_err(|e| e.to_string())?;
        prepare_root(SandboxMode::Chroot, &share).map_err(|e| e.to_string())?;
        let root = pivot(SandboxMode::Chroot, &share).map_err(|e| e.to_string())?;
        check(root == Path::new("/"), || {
            format!("root {}", root.display())
        })?;
        check(Path::new("/marker").exists(), || "no /marker".into())?;
        check(!Path::new("/outside").exists(), || {
            "/outside visible".into()
        })?;
        check(std::env::current_dir().ok() == Some("/".into()), || {
            "cwd".into()
        })?;
        // SAFETY: getpid has no arguments.
        check(unsafe { libc::getpid() } != 1, || {
            "pid 1 in chroot mode".into()
        })?;
        Ok(0)
    });
    out.assert_exit(0);
}

#[test]
fn pivot_names_a_missing_share() {
    let out = in_child(|| {
        enter_namespaces(SandboxMode::Namespace, || {}).map_err(|e| e.to_string())?;
        let missing = Path::new("/nonexistent/share");
        let e = prepare_root(SandboxMode::Namespace, missing).unwrap_err();
        let msg = e.to_string();
        check(msg.contains("/nonexistent/share"), || msg.clone())?;
        Ok(0)
    });
    out.assert_exit(0);
}

#[test]
fn supplementary_groups_are_dropped() {
    let out = in_child(|| {
        let groups: [libc::gid_t; 3] = [1, 2, 3];
        // SAFETY: setgroups reads the 3 gids we pass.
        check(unsafe { libc::setgroups(3, groups.as_ptr()) } == 0, || {
            format!("setgroups: {}", io::Error::last_os_error())
        })?;
        let n = group_count().map_err(|e| e.to_string())?;
        check(n == 3, || format!("{n} groups set, not 3"))?;
        drop_supplementary_groups().map_err(|e| e.to_string())?;
        let n = group_count().map_err(|e| e.to_string())?;
        check(n == 0, || format!("{n} groups left"))?;
        // Unprivileged without groups: nothing to do, not an error.
        become_nobody()?;
        drop_supplementary_groups().map_err(|e| e.to_string())?;
        Ok(0)
    });
    out.assert_exit(0);
}

#[test]
fn capabilities_are_limited_to_the_kept_set() {
    let out = in_child(|| {
        let kept = |caps: &[Capability]| caps.iter().fold(0u64, |m, c| m | c.bitmask());
        limit_capabilities(&[Capability::CAP_CHOWN, Capability::CAP_SETUID])
            .map_err(|e| e.to_string())?;
        let both = kept(&[Capability::CAP_CHOWN, Capability::CAP_SETUID]);
        for (field, want) in [
            ("CapBnd", both),
            ("CapEff", both),
            ("CapPrm", both),
            ("CapInh", 0),
        ] {
            let got = status_field(field)?;
            check(got == want, || format!("{field} {got:x}, want {want:x}"))?;
        }
        // Never raises; without CAP_SETPCAP the bounding set stays.
        limit_capabilities(&[Capability::CAP_CHOWN, Capability::CAP_SYS_ADMIN])
            .map_err(|e| e.to_string())?;
        let chown = kept(&[Capability::CAP_CHOWN]);
        for (field, want) in [("CapBnd", both), ("CapEff", chown), ("CapPrm", chown)] {
            let got = status_field(field)?;
            check(got == want, || format!("{field} {got:x}, want {want:x}"))?;
        }
        Ok(0)
    });
    out.assert_exit(0);
    let out = in_child(|| {
        become_nobody()?;
        limit_capabilities(&[]).map_err(|e| e.to_string())?;
        Ok(0)
    });
    out.assert_exit(0);
}

#[test]
fn nofile_limit_is_bounded() {
    let out = in_child(|| {
        let set = |soft, hard| {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit reads one rlimit we own.
            check(
                unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0,
                || format!("setrlimit({soft}, {hard}): {}", io::Error::last_os_error()),
            )
        };
        let e = |e: SandboxError| e.to_string();
        let max = nr_open().ok_or("no fs.nr_open")?;
        let (_, hard) = nofile().map_err(e)?;
        set(1024, hard)?;
        let want = DEFAULT_NOFILE.min(hard);
        let got = raise_nofile_limit(None).map_err(e)?;
        check(got == want, || format!("default gave {got}, want {want}"))?;
        check(nofile().map_err(e)? == (want, hard), || {
            "limits not set".into()
        })?;
        // Already higher: never lowered; 0 leaves it; n sets the soft limit.
        set(hard, hard)?;
        check(raise_nofile_limit(None).map_err(e)? == hard, || {
            "lowered".into()
        })?;
        check(raise_nofile_limit(Some(0)).map_err(e)? == hard, || {
            "0 changed it".into()
        })?;
        check(raise_nofile_limit(Some(512)).map_err(e)? == 512, || {
            "512".into()
        })?;
        check(nofile().map_err(e)? == (512, hard), || {
            "hard changed".into()
        })?;
        match raise_nofile_limit(Some(max + 1)) {
            Err(SandboxError::NofileAboveMax { .. }) => {}
            other => return Err(format!("above nr_open: {other:?}")),
        }
        // With CAP_SYS_RESOURCE (not in every container): the default
        // stops at DEFAULT_NOFILE, and the hard limit is raised to n.
        let lim = libc::rlimit {
            rlim_cur: 1024,
            rlim_max: max,
        };
        // SAFETY: setrlimit reads one rlimit we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            let got = raise_nofile_limit(None).map_err(e)?;
            check(got == DEFAULT_NOFILE.min(max), || {
                format!("default gave {got}")
            })?;
            set(1024, 2048)?;
            check(raise_nofile_limit(Some(8192)).map_err(e)? == 8192, || {
                "8192".into()
            })?;
            check(nofile().map_err(e)? == (8192, 8192), || {
                "hard not raised".into()
            })?;
        }
        // Unprivileged: up to the hard limit only.
        set(1024, 5000)?;
        become_nobody()?;
        check(raise_nofile_limit(None).map_err(e)? == 5000, || {
            "unprivileged".into()
        })?;
        match raise_nofile_limit(Some(6000)) {
            Err(SandboxError::SetNofile { .. }) => Ok(0),
            other => Err(format!("raising the hard limit unprivileged: {other:?}")),
        }
    });
    out.assert_exit(0);
}

#[test]
fn the_supervisor_runs_at_exit_once_the_child_ended_and_the_child_never() {
    let (dir, _share) = share("sandbox-at-exit");
    let marker = dir.0.join("at-exit");
    std::fs::write(&marker, "").unwrap();
    let m = marker.clone();
    let out = in_child(move || {
        // A descriptor outside the sandbox, as the socket file's removal
        // holds one: the closure owns it and runs only in the parent,
        // where it removes the marker as the socket file is removed
        // (unlinkat on the directory's descriptor, under the supervisor's
        // seccomp filter).
        let dir = File::open(m.parent().unwrap()).map_err(|e| e.to_string())?;
        let dir_fd = dir.as_raw_fd();
        enter_namespaces(SandboxMode::Namespace, move || {
            let _ = nix::unistd::unlinkat(
                Some(dir.as_raw_fd()),
                "at-exit",
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        })
        .map_err(|e| e.to_string())?;
        // The child: the closure was dropped unrun, its descriptor closed.
        check(m.exists(), || "at_exit ran in the child".into())?;
        check(
            nix::fcntl::fcntl(dir_fd, nix::fcntl::FcntlArg::F_GETFD).is_err(),
            || format!("the child still holds descriptor {dir_fd}"),
        )?;
        Ok(5)
    });
    out.assert_exit(5);
    assert!(
        !marker.exists(),
        "the supervising parent did not run at_exit"
    );
}

/// Before any jail: files and directories inherited are closed (a
/// directory is a way out of any root) and named for the log; the kept
/// ones, sockets and pipes stay.
#[test]
fn inherited_files_are_closed_but_the_kept_ones_and_sockets() {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let (_dir, share) = share("sandbox-close-inherited");
    let out = in_child(move || {
        let dir = File::open(&share).map_err(|e| e.to_string())?.into_raw_fd();
        let kept = File::open(share.join("marker"))
            .map_err(|e| e.to_string())?
            .into_raw_fd();
        let (a, _b) = UnixStream::pair().map_err(|e| e.to_string())?;
        let closed = close_inherited_files_except(&[kept]).map_err(|e| e.to_string())?;
        let open = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok();
        check(!open(dir), || format!("directory fd {dir} still open"))?;
        check(open(kept), || format!("kept fd {kept} closed"))?;
        check(open(a.as_raw_fd()), || "a socket was closed".into())?;
        check(
            closed
                .iter()
                .any(|c| c.starts_with(&format!("fd {dir} -> "))),
            || format!("fd {dir} not named in {closed:?}"),
        )?;
        Ok(0)
    });
    out.assert_exit(0);
}
