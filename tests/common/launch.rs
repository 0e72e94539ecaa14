//! Helpers for the launcher tests: a small training command, its report, processes watched through their stderr,
//! and finding the processes of one test by a tag in their environment.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::cohort_bin;

/// Arguments of a short `cohort train linear` run writing its report to `report`.
pub fn linear_args(report: &Path) -> Vec<String> {
    ["train", "linear", "--rows", "2000", "--features", "4", "--iterations", "10", "--report"]
        .iter()
        .map(|s| s.to_string())
        .chain([report.display().to_string()])
        .collect()
}

/// Arguments of a `cohort train linear` run that lasts until it is stopped.
pub fn endless_args() -> Vec<String> {
    ["train", "linear", "--rows", "2000", "--features", "4", "--iterations", "100000000"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `model_sha256` and `workers` of a report.
pub fn report(path: &Path) -> (String, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("no report at {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    (json["model_sha256"].as_str().unwrap().to_string(), json["workers"].as_u64().unwrap())
}

/// The model hash of the short run on `local:n`.
pub fn local_sha(n: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.json");
    let out = Command::new(cohort_bin())
        .args(linear_args(&path))
        .args(["--workers", &format!("local:{n}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    report(&path).0
}

/// A fresh job secret in hex.
pub fn secret_hex() -> String {
    cohort::wire::handshake::Secret::generate().to_hex()
}

/// A process whose stderr is read line by line on a thread.
pub struct Watched {
    pub child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Watched {
    /// Spawns `cmd` with stderr piped (stdout discarded).
    pub fn spawn(mut cmd: Command) -> Watched {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the command starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watched { child, lines, seen: Vec::new() }
    }

    /// Waits up to `limit` for a stderr line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        if self.seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// The stderr lines read so far.
    pub fn seen(&self) -> String {
        self.seen.join("\n")
    }

    /// Waits up to `limit` for the process to exit (killing it then and failing), and returns its status and all
    /// of its stderr.
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                panic!("still running after {limit:?}; stderr:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(l);
        }
        (status, self.seen.join("\n"))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `cohort` command with rank variables of the RANK/WORLD_SIZE contract.
pub fn rank_command(rank: usize, world: usize, port: u16, secret: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(cohort_bin());
    cmd.args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("COHORT_SECRET", secret)
        .env("COHORT_CONNECT_TIMEOUT", "30");
    cmd
}

/// Pids of the processes whose environment holds `COHORT_TEST_TAG=<tag>` and every one of `also`.
pub fn tagged(tag: &str, also: &[&str]) -> Vec<u32> {
    let want = format!("COHORT_TEST_TAG={tag}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if !super::alive(pid) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let vars: Vec<String> = env.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        if vars.contains(&want) && also.iter().all(|a| vars.iter().any(|v| v == a)) {
            pids.push(pid);
        }
    }
    pids
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid this test found for its own processes.
    let r = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(r, 0, "kill({pid}, {signal}) failed");
}

/// A tag unique to this test run, to find its processes later.
pub fn new_tag() -> String {
    format!("{}-{}", std::process::id(), secret_hex()[..8].to_owned())
}
