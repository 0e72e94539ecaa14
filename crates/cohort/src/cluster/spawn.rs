//! Starting worker processes: local ones, and sessions on ssh hosts (with the host's bootstrap: connect, check the
//! platform, install the binary). The builder uses it for the first workers, the running cluster for replacements
//! and spares, so both start workers the same way.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::time::Duration;

use super::process::WorkerProcess;
use super::scheduler::Origin;
use super::spec::{SshTarget, WorkerSpec};
use super::ssh::{parse_listen_line, read_line_with_timeout, SshConfig, SshHost};
use crate::wire::handshake::Secret;

/// How the master and an ssh worker exchange frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataChannel {
    /// Over the ssh session's stdin/stdout: encrypted, no extra ports (the default).
    #[default]
    Stdio,
    /// Over a direct TCP connection to a port the worker opens and announces over ssh; faster on trusted
    /// networks, admitted only after the HMAC proof of the job secret.
    Tcp,
}

impl std::str::FromStr for DataChannel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "stdio" | "ssh" => Ok(DataChannel::Stdio),
            "tcp" => Ok(DataChannel::Tcp),
            other => Err(format!("unknown data channel {other:?}; expected stdio or tcp")),
        }
    }
}

/// A worker process whose connection is open but whose handshake has not run.
pub(crate) struct Launched {
    /// How to name it until the handshake tells more (e.g. `local pid 4242`, `ssh://host`).
    pub place: String,
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    pub process: WorkerProcess,
    /// For ssh workers on a TCP data channel: the session's stdin, held open so the worker lives.
    pub keepalive: Option<ChildStdin>,
    pub origin: Origin,
    /// Binary hash the worker must present.
    pub expected: [u8; 32],
    /// An ssh connection opened for this worker (a spare host), kept for the worker's lifetime.
    pub host: Option<SshHost>,
}

/// Everything needed to start a worker, now or later.
#[derive(Clone)]
pub(crate) struct Spawner {
    pub program: PathBuf,
    pub secret: Secret,
    /// Hash local workers must present.
    pub local_expected: [u8; 32],
    /// Hash remote workers must present.
    pub remote_expected: [u8; 32],
    /// The binary copied to ssh hosts, and its hash (hex).
    pub remote_binary: PathBuf,
    pub remote_sha: String,
    /// Whether `remote_binary` was given explicitly (then its ELF header says the platform).
    pub explicit_binary: bool,
    pub forward_stderr: bool,
    pub data_channel: DataChannel,
    pub handshake_timeout: Duration,
    pub ssh: SshConfig,
}

impl Spawner {
    /// Starts a local worker process.
    pub fn local(&self) -> Result<Launched, String> {
        let (process, stdout, stdin) =
            WorkerProcess::spawn_local(&self.program, &self.secret, "worker".into(), self.forward_stderr)
                .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        Ok(Launched {
            place: format!("local pid {}", process.pid()),
            reader: Box::new(stdout),
            writer: Box::new(stdin),
            process,
            keepalive: None,
            origin: Origin::Local,
            expected: self.local_expected,
            host: None,
        })
    }

    /// Starts a worker session on an ssh host already bootstrapped (`path`: the installed binary).
    pub fn remote(&self, host: &SshHost, path: &str) -> Result<Launched, String> {
        let target = host.target().clone();
        let listen = (self.data_channel == DataChannel::Tcp).then_some("0.0.0.0:0");
        let (process, mut stdout, stdin) = host
            .spawn_worker(path, &self.secret, format!("{target}"), self.forward_stderr, listen)
            .map_err(|e| format!("cannot start the ssh session: {e}"))?;
        let place = target.to_string();
        if self.data_channel == DataChannel::Stdio {
            return Ok(Launched {
                place,
                reader: Box::new(stdout),
                writer: Box::new(stdin),
                process,
                keepalive: None,
                origin: Origin::Remote,
                expected: self.remote_expected,
                host: None,
            });
        }
        // TCP data channel: the worker announces `COHORT-LISTEN <ip> <port>` on the ssh channel, then waits for us
        // to connect; the connection is admitted only after the handshake's HMAC proof.
        let mut process = process;
        let line = read_line_with_timeout(&mut stdout, self.handshake_timeout).map_err(|e| {
            let status = process.describe_exit(Duration::from_millis(500));
            let tail = process.stderr_tail(Duration::from_millis(500)).join(" | ");
            format!("no listening port from the worker ({e}); ssh {status}; stderr: {tail}")
        })?;
        let addr = parse_listen_line(&line).ok_or_else(|| format!("bad port announcement {line:?}"))?;
        let stream = std::net::TcpStream::connect_timeout(&addr, self.ssh.connect_timeout)
            .map_err(|e| format!("cannot open the TCP data channel to {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        let reader = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(Launched {
            place,
            reader: Box::new(reader),
            writer: Box::new(stream),
            process,
            keepalive: Some(stdin),
            origin: Origin::Remote,
            expected: self.remote_expected,
            host: None,
        })
    }

    /// Connects to `target`, checks its platform and installs the worker binary; returns the connection and the
    /// binary's path there.
    pub fn bootstrap(&self, target: &SshTarget) -> Result<(SshHost, String), String> {
        let local = binary_platform(&self.remote_binary, self.explicit_binary);
        let host = SshHost::connect(target, &self.ssh)?;
        let info = host.probe(&self.remote_sha)?;
        check_platform(target, &info, &local)?;
        let path = host.install(&self.remote_binary, &self.remote_sha, &info)?;
        Ok((host, path))
    }

    /// Starts one worker from a spare slot: a local process, or a session on a freshly bootstrapped ssh host.
    pub fn spare(&self, spec: &WorkerSpec) -> Result<Launched, String> {
        match spec {
            WorkerSpec::Local { .. } => self.local(),
            WorkerSpec::Ssh { target, .. } => {
                let (host, path) = self.bootstrap(target)?;
                let mut launched = self.remote(&host, &path)?;
                launched.host = Some(host);
                Ok(launched)
            }
        }
    }
}

/// Spare slots, one per worker they can start, in the order given.
pub(crate) fn spare_slots(specs: &[WorkerSpec]) -> VecDeque<WorkerSpec> {
    let mut out = VecDeque::new();
    for spec in specs {
        for _ in 0..spec.slots() {
            out.push_back(match spec {
                WorkerSpec::Local { .. } => WorkerSpec::Local { count: 1 },
                WorkerSpec::Ssh { target, .. } => WorkerSpec::Ssh { target: target.clone(), slots: 1 },
            });
        }
    }
    out
}

/// `(os, arch)` the worker binary runs on, lower-case as `uname` would say them (normalised).
pub(crate) fn binary_platform(binary: &Path, explicit: bool) -> (String, String) {
    if explicit {
        // A user-supplied binary: read the ELF header's e_machine (offset 18).
        let header = std::fs::read(binary).ok().and_then(|b| b.get(..20).map(<[u8]>::to_vec));
        return match header {
            Some(h) if h.starts_with(b"\x7fELF") => {
                let arch = match u16::from_le_bytes([h[18], h[19]]) {
                    0x3e => "x86_64",
                    0xb7 => "aarch64",
                    0x03 => "i686",
                    0x28 => "arm",
                    0xf3 => "riscv64",
                    0x15 => "ppc64le",
                    _ => "unknown",
                };
                ("linux".into(), arch.into())
            }
            // Not an ELF file (a wrapper script, say): nothing to check against.
            _ => ("unknown".into(), "unknown".into()),
        };
    }
    (std::env::consts::OS.to_string(), std::env::consts::ARCH.to_string())
}

fn normalise_arch(a: &str) -> &str {
    match a {
        "amd64" | "x64" => "x86_64",
        "arm64" => "aarch64",
        "i386" | "i486" | "i586" => "i686",
        other => other,
    }
}

fn check_platform(target: &SshTarget, info: &super::ssh::RemoteInfo, local: &(String, String)) -> Result<(), String> {
    let os = info.os.to_lowercase();
    let arch = normalise_arch(&info.arch).to_string();
    if local.0 == "unknown" || (os == local.0 && arch == normalise_arch(&local.1)) {
        return Ok(());
    }
    Err(format!(
        "{target} runs {} {} but the worker binary is built for {} {}: build cohort for that platform \
         (e.g. cargo build --release --target {}-unknown-{}-gnu) and pass it with --worker-binary PATH",
        info.os, info.arch, local.0, local.1, arch, os
    ))
}
