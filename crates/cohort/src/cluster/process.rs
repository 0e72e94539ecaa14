//! Worker processes: starting them, keeping the tail of their stderr, describing how they ended, and making sure
//! none outlives the master (killed on drop).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::wire::handshake::Secret;

/// Environment variable that puts a process in worker mode (value `worker`).
pub const ROLE_ENV: &str = "COHORT_ROLE";
/// Environment variable carrying the per-job secret (hex).
pub const SECRET_ENV: &str = "COHORT_SECRET";
/// Prefix of the optional first stdin line carrying the secret.
pub const SECRET_LINE_PREFIX: &str = "COHORT-SECRET ";
/// Environment variable asking the worker to serve over TCP on this address (e.g. `0.0.0.0:0`) instead of stdio.
pub const LISTEN_ENV: &str = "COHORT_LISTEN";
/// Prefix of the line `COHORT-LISTEN <ip> <port>` a TCP worker writes on its stdout.
pub const LISTEN_LINE_PREFIX: &str = "COHORT-LISTEN ";
/// Environment variables a master hands on to ssh workers as they are (fault injection for tests, see
/// `cluster::worker::fault`): environments do not cross ssh otherwise.
pub(crate) const FORWARDED_ENV: [&str; 2] = ["COHORT_FAULT", "COHORT_FAULT_ONCE"];

/// This host's name (for handshakes and as the address `--workers slurm` tasks connect to).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Spawns `cmd` from one long-lived thread. Processes that must die with the master set `PR_SET_PDEATHSIG`, which
/// fires when the *thread* that spawned them exits; spawning them all from this thread (which lives as long as the
/// process) ties them to the master's lifetime, not to whichever short-lived thread happened to start them.
pub(crate) fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("cohort-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    let sent = spawner.lock().map(|tx| tx.send((cmd, reply)).is_ok()).unwrap_or(false);
    if !sent {
        return Err(std::io::Error::other("the spawner thread is gone"));
    }
    answer.recv().map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// Lines of stderr kept per worker for error reports.
pub const STDERR_TAIL_LINES: usize = 20;

/// A running worker process and the thread that drains its stderr.
pub(crate) struct WorkerProcess {
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl WorkerProcess {
    /// Starts `program` in worker mode on this machine. The secret travels in the child's environment.
    pub fn spawn_local(
        program: &Path,
        secret: &Secret,
        prefix: String,
        forward_stderr: bool,
    ) -> std::io::Result<(WorkerProcess, ChildStdout, ChildStdin)> {
        let mut cmd = Command::new(program);
        cmd.env(ROLE_ENV, "worker")
            .env(SECRET_ENV, secret.to_hex())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self::spawn(cmd, prefix, forward_stderr)
    }

    /// Starts an arbitrary command whose stdin/stdout carry the protocol (used by launchers). Spawned from the
    /// long-lived spawner thread, so a parent-death signal the command sets follows the master process.
    pub fn spawn(
        cmd: Command,
        prefix: String,
        forward_stderr: bool,
    ) -> std::io::Result<(WorkerProcess, ChildStdout, ChildStdin)> {
        let mut child = spawn_tied(cmd)?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let stdin = child.stdin.take().expect("stdin was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail2 = Arc::clone(&tail);
        let stderr_thread = std::thread::Builder::new()
            .name(format!("{prefix}-stderr"))
            .spawn(move || drain_stderr(stderr, &tail2, &prefix, forward_stderr))?;
        Ok((WorkerProcess { child, tail, stderr_thread: Some(stderr_thread) }, stdout, stdin))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `wait` for the process to exit and describes how it ended.
    pub fn describe_exit(&mut self, wait: Duration) -> String {
        match wait_with_deadline(&mut self.child, Instant::now() + wait) {
            Some(status) => describe_status(status),
            None => String::from("connection lost while the process is still running"),
        }
    }

    /// The exit status if the process ends within `wait`, else `None` (still running).
    pub fn exit_status(&mut self, wait: Duration) -> Option<ExitStatus> {
        wait_with_deadline(&mut self.child, Instant::now() + wait)
    }

    /// The last lines of stderr, after waiting up to `wait` for the stream to end.
    pub fn stderr_tail(&mut self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        while self.stderr_thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.tail.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default()
    }

    /// Waits until `deadline` for a clean exit, then kills.
    pub fn finish(&mut self, deadline: Instant) {
        if wait_with_deadline(&mut self.child, deadline).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_with_deadline(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => return None,
        }
    }
}

/// "exited with status 3", "killed by signal 9 (SIGKILL)".
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
        None => status.to_string(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGHUP => "SIGHUP",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

fn drain_stderr(stderr: impl Read, tail: &Mutex<VecDeque<String>>, prefix: &str, forward: bool) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if forward {
                    eprintln!("[{prefix}] {line}");
                }
                if let Ok(mut t) = tail.lock() {
                    if t.len() == STDERR_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        }
    }
}
