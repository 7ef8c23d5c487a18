//! The guest console: parsing the lines `/init` prints, and the output of
//! one guest run.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

use super::{GuestError, Result};

/// How many console lines error messages quote.
const TAIL_LINES: usize = 60;

/// The guest's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStatus {
    /// The script exited 0.
    Pass,
    /// The script (or init) failed.
    Fail,
}

/// The parsed `VUTEST-RESULT` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestResult {
    /// Pass or fail.
    pub status: GuestStatus,
    /// The script's exit status (255 for init errors).
    pub exit_code: i32,
}

impl fmt::Display for GuestResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.status {
            GuestStatus::Pass => "pass",
            GuestStatus::Fail => "fail",
        };
        write!(f, "status={s} exit={}", self.exit_code)
    }
}

/// Incremental parser of the guest console.
#[derive(Debug, Default, Clone)]
pub struct ConsoleParser {
    /// Every line seen.
    pub lines: Vec<String>,
    /// The first result line, if seen.
    pub result: Option<GuestResult>,
    /// `VUTEST-KV` values (a later one replaces an earlier one).
    pub kv: BTreeMap<String, String>,
    /// `VUTEST-ERROR:` messages from init.
    pub errors: Vec<String>,
}

const RESULT_TAG: &str = "VUTEST-RESULT: ";
const KV_TAG: &str = "VUTEST-KV ";
const ERROR_TAG: &str = "VUTEST-ERROR: ";

impl ConsoleParser {
    /// Feeds one line (without its newline). Markers are found anywhere in
    /// the line, since kernel messages may share it.
    pub fn feed_line(&mut self, line: &str) {
        self.lines.push(line.to_string());
        if let Some(pos) = line.find(RESULT_TAG) {
            if self.result.is_none() {
                self.result = parse_result(&line[pos + RESULT_TAG.len()..]);
            }
        } else if let Some(pos) = line.find(KV_TAG) {
            if let Some((k, v)) = line[pos + KV_TAG.len()..].split_once('=') {
                self.kv.insert(k.trim().to_string(), v.to_string());
            }
        } else if let Some(pos) = line.find(ERROR_TAG) {
            self.errors.push(line[pos + ERROR_TAG.len()..].to_string());
        }
    }

    /// Parses a whole console text.
    pub fn parse(text: &str) -> Self {
        let mut p = ConsoleParser::default();
        for line in text.lines() {
            p.feed_line(line.trim_end_matches('\r'));
        }
        p
    }
}

/// Parses `status=pass|fail exit=N`.
fn parse_result(rest: &str) -> Option<GuestResult> {
    let mut status = None;
    let mut exit_code = None;
    for word in rest.split_whitespace() {
        match word.split_once('=') {
            Some(("status", "pass")) => status = Some(GuestStatus::Pass),
            Some(("status", "fail")) => status = Some(GuestStatus::Fail),
            Some(("exit", n)) => exit_code = n.parse().ok(),
            _ => {}
        }
    }
    Some(GuestResult {
        status: status?,
        exit_code: exit_code?,
    })
}

/// What one guest run produced.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// The serial console, line by line.
    pub console: Vec<String>,
    /// QEMU's stderr.
    pub qemu_stderr: String,
    /// The guest's result line, if it printed one.
    pub result: Option<GuestResult>,
    /// Values the script reported with `vutest-kv`.
    pub kv: BTreeMap<String, String>,
    /// Errors init reported.
    pub errors: Vec<String>,
    /// QEMU's exit status.
    pub qemu_status: ExitStatus,
    /// Wall time from spawning QEMU to its exit.
    pub duration: Duration,
}

impl GuestOutput {
    /// True if the guest printed `status=pass`.
    pub fn passed(&self) -> bool {
        matches!(
            self.result,
            Some(GuestResult {
                status: GuestStatus::Pass,
                ..
            })
        )
    }

    /// A value the script reported.
    pub fn kv(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(String::as_str)
    }

    /// A value the script reported; panics with the console if it did not.
    pub fn expect_kv(&self, key: &str) -> &str {
        self.kv(key).unwrap_or_else(|| {
            panic!(
                "guest did not report {key}; console:\n{}",
                self.console_text()
            )
        })
    }

    /// Prints how long run `what` took and what it reported, then panics
    /// (see [`Self::ensure_pass`]) unless the guest passed.
    pub fn expect_pass(&self, what: &str) {
        eprintln!(
            "{what}: guest boot+script+poweroff took {:.1?} (QEMU {}); reported {:?}",
            self.duration, self.qemu_status, self.kv
        );
        self.ensure_pass().unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    /// The console as one text.
    pub fn console_text(&self) -> String {
        self.console.join("\n")
    }

    /// `Ok` if the guest passed; otherwise an error quoting the result,
    /// init's errors, QEMU's stderr and the end of the console.
    pub fn ensure_pass(&self) -> Result<()> {
        if self.passed() {
            return Ok(());
        }
        let mut summary = match &self.result {
            Some(r) => format!("guest reported {r}"),
            None => format!(
                "no VUTEST-RESULT line; QEMU exited with {}",
                self.qemu_status
            ),
        };
        if !self.errors.is_empty() {
            summary.push_str(&format!("; init errors: {}", self.errors.join("; ")));
        }
        Err(GuestError::GuestFailed {
            summary,
            console_tail: tail(&self.console),
            stderr: self.qemu_stderr.clone(),
        })
    }
}

pub(crate) fn tail(lines: &[String]) -> String {
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join("\n")
}

/// Standard base64 with padding (what busybox `base64 -d` reads).
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_kv_and_errors_amid_kernel_noise() {
        let text = "[    1.2] virtio_blk virtio1: [vda] 131072 512-byte logical blocks\r\n\
                    VUTEST-BEGIN\n\
                    VUTEST-KV md5=d41d8cd98f00b204e9800998ecf8427e\n\
                    VUTEST-KV note=a=b c\n\
                    [    2.0] random: crng init doneVUTEST-KV late=1\n\
                    VUTEST-ERROR: mount failed\n\
                    VUTEST-RESULT: status=fail exit=7\n\
                    VUTEST-RESULT: status=pass exit=0\n\
                    [    2.1] reboot: Power down\n";
        let p = ConsoleParser::parse(text);
        assert_eq!(
            p.result,
            Some(GuestResult {
                status: GuestStatus::Fail,
                exit_code: 7
            })
        );
        assert_eq!(p.kv["md5"], "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(p.kv["note"], "a=b c");
        assert_eq!(p.kv["late"], "1");
        assert_eq!(p.errors, vec!["mount failed".to_string()]);
        assert_eq!(p.lines.len(), 9);
        assert!(!p.lines[0].ends_with('\r'));
    }

    #[test]
    fn malformed_result_lines_are_not_results() {
        for bad in [
            "VUTEST-RESULT: status=maybe exit=0",
            "VUTEST-RESULT: status=pass",
            "VUTEST-RESULT: exit=0",
            "VUTEST-RESULT: status=pass exit=x",
        ] {
            assert_eq!(ConsoleParser::parse(bad).result, None, "{bad}");
        }
        let p = ConsoleParser::parse("VUTEST-RESULT: status=pass exit=0");
        assert_eq!(
            p.result.map(|r| r.to_string()).as_deref(),
            Some("status=pass exit=0")
        );
    }

    #[test]
    fn base64_matches_known_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), want);
        }
    }
}
