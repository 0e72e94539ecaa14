//! Remote workers over the system's OpenSSH (qjam's RemoteWorker).
//!
//! For each host cohort opens **one** multiplexed connection (`ssh -M`, a control socket in a private temporary
//! directory) and runs everything else through it: a probe (OS, architecture, cache directory, whether the binary is
//! already there), the copy of the worker binary to `~/.cache/cohort/bin/<sha256>` (written to a temporary name,
//! checked, renamed atomically; skipped when already cached), and one session per worker slot running that binary in
//! worker mode. Running the real `ssh` means the user's `~/.ssh/config`, agent, keys, `known_hosts` and `ProxyJump`
//! all apply. cohort always passes `BatchMode=yes` (never a prompt) and a connect timeout, and keep-alives so a dead
//! link is noticed.
//!
//! The job secret goes down the session's stdin as a first line, never on a command line (where `ps` would show it)
//! or a TCP socket. Every ssh process is tied to the master: it gets SIGTERM if the master dies, and the remote
//! worker exits when its session's stdin ends.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::process::{describe_status, WorkerProcess};
use super::process::{spawn_tied, FORWARDED_ENV, LISTEN_LINE_PREFIX, SECRET_LINE_PREFIX};
use super::spec::SshTarget;
use crate::wire::handshake::Secret;

/// How cohort runs `ssh`.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// The ssh client (default `ssh` from `PATH`).
    pub program: PathBuf,
    /// Extra `-o KEY=VALUE` options, in order.
    pub options: Vec<(String, String)>,
    /// Connect timeout for the first connection to each host.
    pub connect_timeout: Duration,
    /// Upper bound for copying the worker binary to one host.
    pub copy_timeout: Duration,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            program: PathBuf::from("ssh"),
            options: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            copy_timeout: Duration::from_secs(600),
        }
    }
}

/// What the probe learnt about a host.
#[derive(Debug, Clone)]
pub struct RemoteInfo {
    /// `uname -s`, e.g. `Linux`.
    pub os: String,
    /// `uname -m`, e.g. `x86_64`.
    pub arch: String,
    /// Absolute path of the binary cache directory.
    pub cache_dir: String,
    /// Whether the binary with the wanted hash is already cached.
    pub cached: bool,
}

/// An open, multiplexed ssh connection to one host. Dropping it closes the connection and every session on it.
pub(crate) struct SshHost {
    target: SshTarget,
    config: SshConfig,
    dir: PathBuf,
    control: PathBuf,
    master: Child,
    master_stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Makes a child process receive SIGTERM when the thread that spawned it (the master) dies.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

impl SshHost {
    /// Opens the master connection, failing within the connect timeout with a message that names the host and says
    /// what to check.
    pub fn connect(target: &SshTarget, config: &SshConfig) -> Result<SshHost, String> {
        let dir = std::env::temp_dir()
            .join(format!("cohort-ssh-{}", hex::encode(&crate::wire::handshake::random_bytes()[..6])));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let control = dir.join("cm");
        let mut cmd = Command::new(&config.program);
        cmd.args(["-M", "-N", "-S"]).arg(&control).args(["-o", "ControlPersist=no"]);
        add_common_args(&mut cmd, target, config);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut master = match spawn_tied(cmd) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("cannot run {}: {e}; install the OpenSSH client", config.program.display()));
            }
        };
        let master_stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = master.stderr.take().expect("stderr was piped");
        let sink = std::sync::Arc::clone(&master_stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut host = SshHost { target: target.clone(), config: config.clone(), dir, control, master, master_stderr };
        host.wait_ready()?;
        Ok(host)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        // ssh's own ConnectTimeout bounds the TCP connect; authentication gets a little more.
        let limit = self.config.connect_timeout + Duration::from_secs(10);
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.master.try_wait() {
                // Give the stderr thread a moment to collect ssh's last words.
                std::thread::sleep(Duration::from_millis(50));
                let stderr = self.master_stderr.lock().map(|s| s.clone()).unwrap_or_default();
                return Err(classify(&self.target, status, &stderr, self.config.connect_timeout));
            }
            if self.control.exists() {
                let check = Command::new(&self.config.program)
                    .args(["-S"])
                    .arg(&self.control)
                    .args(["-O", "check", "-o", "BatchMode=yes"])
                    .arg(&self.target.host)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if check.is_ok_and(|s| s.success()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no ssh connection to {} after {limit:?}; check that the host is reachable and sshd answers",
                    self.target
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A command that runs `remote` on the host through the shared connection.
    pub fn command(&self, remote: &str) -> Command {
        let mut cmd = Command::new(&self.config.program);
        cmd.arg("-S").arg(&self.control);
        add_common_args(&mut cmd, &self.target, &self.config);
        cmd.arg("--").arg(remote);
        die_with_parent(&mut cmd);
        cmd
    }

    /// Runs a short remote shell script and returns its stdout, or an error naming the host with its stderr.
    fn run_script(&self, script: &str, stdin: Stdio, timeout: Duration, what: &str) -> Result<String, (i32, String)> {
        let mut cmd = self.command(&format!("/bin/sh -c {}", sh_quote(script)));
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| (-1, format!("cannot run ssh to {} for {what}: {e}", self.target)))?;
        let (status, stdout, stderr) = wait_output(child, timeout)
            .map_err(|_| (-1, format!("{what} on {} did not finish within {timeout:?}", self.target)))?;
        if status.success() {
            Ok(stdout)
        } else {
            Err((status.code().unwrap_or(-1), stderr.trim().to_string()))
        }
    }

    /// Finds the OS, architecture and cache directory, and whether the binary `sha` is already cached.
    pub fn probe(&self, sha: &str) -> Result<RemoteInfo, String> {
        let script = format!(
            "uname -s; uname -m; d=\"${{XDG_CACHE_HOME:-$HOME/.cache}}/cohort/bin\"; \
             case \"$d\" in /*) ;; *) d=\"$(pwd)/$d\";; esac; echo \"$d\"; \
             if [ -x \"$d/{sha}\" ]; then echo cached; else echo missing; fi"
        );
        let out = self
            .run_script(&script, Stdio::null(), self.config.connect_timeout + Duration::from_secs(20), "the probe")
            .map_err(|(_, e)| format!("probing {} failed: {e}", self.target))?;
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        match lines.as_slice() {
            [os, arch, dir, state, ..] => Ok(RemoteInfo {
                os: os.to_string(),
                arch: arch.to_string(),
                cache_dir: dir.to_string(),
                cached: *state == "cached",
            }),
            _ => {
                Err(format!("unexpected answer from {} to the probe: {out:?}; is the remote shell POSIX?", self.target))
            }
        }
    }

    /// Copies `binary` to `<cache_dir>/<sha>` unless it is there: temporary name, checksum, atomic rename.
    pub fn install(&self, binary: &Path, sha: &str, info: &RemoteInfo) -> Result<String, String> {
        let dest = format!("{}/{sha}", info.cache_dir);
        if info.cached {
            return Ok(dest);
        }
        let file =
            std::fs::File::open(binary).map_err(|e| format!("cannot read worker binary {}: {e}", binary.display()))?;
        let dir = sh_quote(&info.cache_dir);
        let script = format!(
            "set -e; d={dir}; f=\"$d/{sha}\"; mkdir -p \"$d\"; t=\"$f.tmp.$$\"; trap 'rm -f \"$t\"' EXIT; \
             cat > \"$t\"; \
             if command -v sha256sum >/dev/null 2>&1; then \
               got=$(sha256sum \"$t\" | cut -d' ' -f1); \
               if [ \"$got\" != {sha} ]; then echo \"checksum mismatch after copy: got $got\" >&2; exit 3; fi; \
             fi; \
             chmod 755 \"$t\"; mv -f \"$t\" \"$f\"; trap - EXIT"
        );
        self.run_script(&script, Stdio::from(file), self.config.copy_timeout, "copying the worker binary").map_err(
            |(_, err)| {
                let hint = if err.contains("No space left") || err.contains("Disk quota") {
                    format!(
                        "the remote disk is full: free space under {} or point XDG_CACHE_HOME at a larger filesystem",
                        info.cache_dir
                    )
                } else if err.contains("Permission denied")
                    || err.contains("Read-only file system")
                    || err.contains("Not a directory")
                {
                    format!(
                        "the cache directory {} is not writable: fix its permissions or point XDG_CACHE_HOME elsewhere",
                        info.cache_dir
                    )
                } else {
                    "check the remote user's home directory and disk".to_string()
                };
                format!("cannot copy the worker binary to {}:{dest}: {err} — {hint}", self.target)
            },
        )?;
        Ok(dest)
    }

    /// Removes the cached binary `sha` (so the next bootstrap copies it again). Returns whether it was there.
    pub fn remove_cached(&self, sha: &str) -> Result<bool, String> {
        let info = self.probe(sha)?;
        if !info.cached {
            return Ok(false);
        }
        let script = format!("rm -f {}", sh_quote(&format!("{}/{sha}", info.cache_dir)));
        self.run_script(&script, Stdio::null(), self.config.connect_timeout + Duration::from_secs(20), "removing")
            .map_err(|(_, e)| format!("cannot remove the cached binary on {}: {e}", self.target))?;
        Ok(true)
    }

    /// Starts one worker session running `remote_binary` in worker mode and writes the secret line to it.
    pub fn spawn_worker(
        &self,
        remote_binary: &str,
        secret: &Secret,
        prefix: String,
        forward_stderr: bool,
        listen: Option<&str>,
    ) -> std::io::Result<(WorkerProcess, std::process::ChildStdout, std::process::ChildStdin)> {
        let mut listen = listen.map(|l| format!(" COHORT_LISTEN={}", sh_quote(l))).unwrap_or_default();
        // Fault injection for tests travels like the role (environments do not cross ssh).
        for var in FORWARDED_ENV {
            if let Ok(value) = std::env::var(var) {
                listen.push_str(&format!(" {var}={}", sh_quote(&value)));
            }
        }
        let remote = format!("exec env COHORT_ROLE=worker{listen} {} worker", sh_quote(remote_binary));
        let mut cmd = self.command(&remote);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let (process, stdout, mut stdin) = WorkerProcess::spawn(cmd, prefix, forward_stderr)?;
        stdin.write_all(format!("{SECRET_LINE_PREFIX}{}\n", secret.to_hex()).as_bytes())?;
        stdin.flush()?;
        Ok((process, stdout, stdin))
    }

    /// The host this connection reaches.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        let _ = Command::new(&self.config.program)
            .arg("-S")
            .arg(&self.control)
            .args(["-O", "exit", "-o", "BatchMode=yes"])
            .arg(&self.target.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|c| wait_output(c, Duration::from_secs(3)).map_err(std::io::Error::other));
        let _ = self.master.kill();
        let _ = self.master.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn add_common_args(cmd: &mut Command, target: &SshTarget, config: &SshConfig) {
    cmd.args(["-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("ConnectTimeout={}", config.connect_timeout.as_secs().max(1)))
        .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]);
    for (k, v) in &config.options {
        cmd.arg("-o").arg(format!("{k}={v}"));
    }
    if let Some(p) = target.port {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &target.user {
        cmd.arg("-l").arg(u);
    }
    cmd.arg(&target.host);
}

/// Waits for a child with a deadline, collecting stdout and stderr; kills it on timeout.
fn wait_output(mut child: Child, timeout: Duration) -> Result<(ExitStatus, String, String), String> {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("timeout".into());
            }
        }
    };
    Ok((status, out_t.join().unwrap_or_default(), err_t.join().unwrap_or_default()))
}

/// Turns ssh's exit and stderr into an error that names the host and says what to do.
fn classify(target: &SshTarget, status: ExitStatus, stderr: &str, timeout: Duration) -> String {
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let host = &target.host;
    let hint = if stderr.contains("Could not resolve hostname") || stderr.contains("Name or service not known") {
        format!("unknown host {host}: check the name, /etc/hosts or your ~/.ssh/config")
    } else if stderr.contains("Connection refused") {
        format!("connection refused by {target}: is sshd running there and listening on that port?")
    } else if stderr.contains("timed out") {
        format!("could not reach {target} within {timeout:?}: check the network, firewalls and the port")
    } else if stderr.contains("No route to host") || stderr.contains("Network is unreachable") {
        format!("{target} is unreachable: check the network and routes")
    } else if stderr.contains("Permission denied") || stderr.contains("Too many authentication failures") {
        format!(
            "authentication failed for {target}: cohort runs ssh with BatchMode=yes and never prompts; load a key \
             into ssh-agent or pass --ssh-option IdentityFile=PATH, and make sure the key is in the remote \
             authorized_keys"
        )
    } else if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        format!(
            "the host key of {host} is unknown or changed: connect once with ssh to record it, or pass \
             --ssh-option StrictHostKeyChecking=accept-new"
        )
    } else {
        format!("ssh to {target} failed")
    };
    format!("{hint} (ssh {}: {last})", describe_status(status))
}

/// Reads one `\n`-terminated line (at most 256 bytes) with a deadline.
pub(crate) fn read_line_with_timeout(
    r: &mut std::process::ChildStdout,
    timeout: Duration,
) -> std::result::Result<String, String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let fd = r.as_raw_fd();
    while line.len() < 256 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timed out after {timeout:?}"));
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid descriptor we own.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if n <= 0 {
            continue;
        }
        let mut b = [0u8; 1];
        match r.read(&mut b) {
            Ok(0) => return Err("the session closed".into()),
            Ok(_) if b[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("line too long".into())
}

/// Parses `COHORT-LISTEN <ip> <port>`.
pub(crate) fn parse_listen_line(line: &str) -> Option<std::net::SocketAddr> {
    let mut words = line.strip_prefix(LISTEN_LINE_PREFIX)?.split_whitespace();
    let ip: std::net::IpAddr = words.next()?.parse().ok()?;
    let port: u16 = words.next()?.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, port))
}
