//! Configuring and starting a cluster: the [`ClusterBuilder`], and the parallel bootstrap of ssh hosts (connect,
//! check the platform, install the binary) before any worker starts.

use std::path::PathBuf;
use std::time::Duration;

use super::master::Cluster;
use super::spec::{SshTarget, WorkerSpec};
use super::ssh::{SshConfig, SshHost};
use crate::wire::handshake::Secret;
use crate::{Error, Result};

/// Configures and starts a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    pub(super) specs: Vec<WorkerSpec>,
    pub(super) program: Option<PathBuf>,
    pub(super) expected_binary: Option<[u8; 32]>,
    pub(super) heartbeat_interval: Duration,
    pub(super) heartbeat_timeout: Duration,
    pub(super) handshake_timeout: Duration,
    pub(super) forward_stderr: bool,
    pub(super) remote_binary: Option<PathBuf>,
    pub(super) ssh: SshConfig,
    pub(super) data_channel: DataChannel,
    pub(super) launcher: Option<super::launch::Launcher>,
}

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

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            specs: Vec::new(),
            program: None,
            expected_binary: None,
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(60),
            forward_stderr: true,
            remote_binary: None,
            ssh: SshConfig::default(),
            data_channel: DataChannel::Stdio,
            launcher: None,
        }
    }
}

impl ClusterBuilder {
    /// The worker groups to start.
    pub fn workers(mut self, specs: Vec<WorkerSpec>) -> Self {
        self.specs = specs;
        self
    }

    /// Runs workers from this executable instead of the current one. It must call
    /// [`run_if_worker`](super::worker::run_if_worker) with a registry holding the jobs you run.
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Expects workers to report this binary hash instead of the worker program's own (mainly for tests).
    pub fn expect_binary_sha256(mut self, hash: [u8; 32]) -> Self {
        self.expected_binary = Some(hash);
        self
    }

    /// How often workers send heartbeats (default 500 ms).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }

    /// How long a worker may stay silent before it is declared stalled (default 20 s).
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }

    /// How long starting a worker and completing its handshake may take (default 60 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// The binary copied to ssh hosts (default: the worker program). Use it when the remote hosts need a build for
    /// another platform; workers must present this binary's hash.
    pub fn remote_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.remote_binary = Some(path.into());
        self
    }

    /// Adds `-o KEY=VALUE` to every ssh command.
    pub fn ssh_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.ssh.options.push((key.into(), value.into()));
        self
    }

    /// The ssh client to run (default `ssh` from `PATH`).
    pub fn ssh_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssh.program = path.into();
        self
    }

    /// Connect timeout for ssh hosts and TCP data channels (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.ssh.connect_timeout = d;
        self
    }

    /// How ssh workers exchange frames with the master (default: over the ssh channel).
    pub fn data_channel(mut self, channel: DataChannel) -> Self {
        self.data_channel = channel;
        self
    }

    /// Also takes workers from a launcher: as rank 0, the other ranks of a job that `srun`, `mpirun` or Kubernetes
    /// started; or, inside a Slurm allocation, tasks of an `srun` step this cluster starts. They join after the
    /// local and ssh workers, admitted over TCP after proving the launcher's job secret.
    pub fn launcher(mut self, launcher: impl Into<super::launch::Launcher>) -> Self {
        self.launcher = Some(launcher.into());
        self
    }

    /// Whether worker stderr lines are copied to the master's stderr, prefixed with the worker (default on).
    pub fn forward_stderr(mut self, on: bool) -> Self {
        self.forward_stderr = on;
        self
    }

    /// Removes the cached worker binary of this build from every ssh host in the specs, so the next start copies
    /// it again (what `cohort bench bootstrap` measures as a cold start). Returns how many copies were removed.
    pub fn clear_remote_cache(&self) -> Result<usize> {
        let binary = match &self.remote_binary.clone().or_else(|| self.program.clone()) {
            Some(p) => crate::wire::binary_sha256(p),
            None => crate::wire::own_binary_sha256(),
        }
        .map_err(|e| Error::Launch { worker: "workers".into(), reason: e.to_string() })?;
        let sha = hex::encode(binary);
        let mut removed = 0;
        for spec in &self.specs {
            if let WorkerSpec::Ssh { target, .. } = spec {
                let launch = |reason| Error::Launch { worker: format!("ssh host {target}"), reason };
                let host = SshHost::connect(target, &self.ssh).map_err(launch)?;
                removed += usize::from(host.remove_cached(&sha).map_err(launch)?);
            }
        }
        Ok(removed)
    }

    /// Starts every worker, completes every handshake, and returns the running cluster. If any worker fails to
    /// start, every worker already started (local or remote) is stopped before the error is returned.
    pub fn start(self) -> Result<Cluster> {
        let total: usize = self.specs.iter().map(WorkerSpec::slots).sum::<usize>()
            + self.launcher.as_ref().map_or(0, super::launch::Launcher::workers);
        if total == 0 {
            return Err(Error::NoWorkers);
        }
        let launch_err = |reason: String| Error::Launch { worker: "workers".into(), reason };
        let program = match &self.program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| launch_err(format!("cannot find own executable: {e}")))?,
        };
        let program_hash = match &self.program {
            Some(p) => crate::wire::binary_sha256(p)
                .map_err(|e| launch_err(format!("cannot read worker program {}: {e}", p.display())))?,
            None => crate::wire::own_binary_sha256().map_err(|e| launch_err(e.to_string()))?,
        };
        let local_expected = self.expected_binary.unwrap_or(program_hash);
        let secret = match &self.launcher {
            Some(l) => l.secret()?.unwrap_or_else(Secret::generate),
            None => Secret::generate(),
        };
        let mut cluster = Cluster::empty(total, self.heartbeat_timeout);

        // Remote hosts first: connecting and copying run in parallel, one thread per host.
        let mut remote: Vec<(SshTarget, usize)> = Vec::new();
        for spec in &self.specs {
            if let WorkerSpec::Ssh { target, slots } = spec {
                match remote.iter_mut().find(|(t, _)| t == target) {
                    Some((_, n)) => *n += slots,
                    None => remote.push((target.clone(), *slots)),
                }
            }
        }
        if !remote.is_empty() {
            let binary = self.remote_binary.clone().unwrap_or_else(|| program.clone());
            let binary_hash = match &self.remote_binary {
                Some(p) => crate::wire::binary_sha256(p)
                    .map_err(|e| launch_err(format!("cannot read --worker-binary {}: {e}", p.display())))?,
                None => program_hash,
            };
            let remote_expected = self.expected_binary.unwrap_or(binary_hash);
            let hosts = bootstrap_hosts(&remote, &binary, &hex::encode(binary_hash), &self)?;
            for (host, path, slots) in hosts {
                let host_index = cluster.add_host(host);
                for _ in 0..slots {
                    cluster.spawn_remote(host_index, &path, &secret, remote_expected, &self)?;
                }
            }
        }
        for spec in &self.specs {
            if let WorkerSpec::Local { count } = spec {
                for _ in 0..*count {
                    cluster.spawn_local(&program, &secret, local_expected, self.forward_stderr)?;
                }
            }
        }
        cluster.handshake_all(&secret, &self)?;
        if let Some(launcher) = &self.launcher {
            super::launch::start(&mut cluster, launcher, &secret, local_expected, &program, &self)?;
        }
        Ok(cluster)
    }
}

/// Connects to every host, checks its platform and installs the worker binary, in parallel. Returns each host's
/// connection, the remote path of the binary and the slot count, in the order given.
fn bootstrap_hosts(
    remote: &[(SshTarget, usize)],
    binary: &std::path::Path,
    sha: &str,
    cfg: &ClusterBuilder,
) -> Result<Vec<(SshHost, String, usize)>> {
    let local = binary_platform(binary, cfg.remote_binary.is_some());
    let results: Vec<std::result::Result<(SshHost, String), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = remote
            .iter()
            .map(|(target, _)| {
                let local = local.clone();
                scope.spawn(move || {
                    let host = SshHost::connect(target, &cfg.ssh)?;
                    let info = host.probe(sha)?;
                    check_platform(target, &info, &local)?;
                    let path = host.install(binary, sha, &info)?;
                    Ok((host, path))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("bootstrap thread panicked".into()))).collect()
    });
    let mut hosts = Vec::new();
    let mut first_error = None;
    for ((target, slots), r) in remote.iter().zip(results) {
        match r {
            Ok((host, path)) => hosts.push((host, path, *slots)),
            Err(reason) => {
                first_error.get_or_insert(Error::Launch { worker: format!("ssh host {target}"), reason });
            }
        }
    }
    // On any failure the hosts that did connect are dropped here, closing their connections.
    match first_error {
        Some(e) => Err(e),
        None => Ok(hosts),
    }
}

/// `(os, arch)` the worker binary runs on, lower-case as `uname` would say them (normalised).
fn binary_platform(binary: &std::path::Path, explicit: bool) -> (String, String) {
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

fn check_platform(
    target: &SshTarget,
    info: &super::ssh::RemoteInfo,
    local: &(String, String),
) -> std::result::Result<(), String> {
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
