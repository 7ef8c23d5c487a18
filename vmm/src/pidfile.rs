//! `--pidfile PATH`, as QEMU's `-pidfile` (Kata's QEMU line passes one):
//! the file is created if missing, locked (flock, exclusive) so a second
//! VMM on the same file fails at once instead of overwriting it, then
//! holds this process's pid and a newline. It is removed when the
//! [`PidFile`] drops (the VMM's normal exit); after a crash the stale file
//! is unlocked, and the next VMM takes it over.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{flock, FlockArg};

/// Why the pid file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("--pidfile {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--pidfile {}: another process holds its lock (is another VMM running?)", path.display())]
    Locked { path: PathBuf },
    #[error("--pidfile {}: writing the pid: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A locked pid file, removed on drop.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    /// Holds the lock while the VMM runs; closed after the removal.
    _lock: File,
}

impl PidFile {
    /// Creates (or takes over an unlocked) `path`, locks it and writes
    /// this process's pid.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        let open = |source| PidFileError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open)?;
        flock(file.as_raw_fd(), FlockArg::LockExclusiveNonblock).map_err(|_| {
            PidFileError::Locked {
                path: path.to_path_buf(),
            }
        })?;
        let write = |source| PidFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        file.set_len(0).map_err(write)?;
        writeln!(file, "{}", std::process::id()).map_err(write)?;
        Ok(PidFile {
            path: path.to_path_buf(),
            _lock: file,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked, so no other VMM takes it in between.
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("--pidfile {}: not removed: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_pid_refuses_a_second_holder_and_is_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("vmm-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vmm.pid");
        std::fs::write(&path, "99999\nstale\n").unwrap();
        let pid = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        let second = PidFile::create(&path).unwrap_err();
        assert!(matches!(second, PidFileError::Locked { .. }), "{second}");
        assert!(second.to_string().contains("vmm.pid"), "{second}");
        drop(pid);
        assert!(!path.exists());
        let missing = PidFile::create(&dir.join("no/such/dir/vmm.pid")).unwrap_err();
        assert!(missing.to_string().starts_with("--pidfile "), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
