//! Configuring and starting a cluster: the [`ClusterBuilder`]. It bootstraps the ssh hosts in parallel (connect,
//! check the platform, install the binary), starts every worker through the [`Spawner`](super::launch), and hands
//! them to the [`Cluster`], whose scheduler completes the handshakes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::master::{Cluster, DriverConfig};
use super::scheduler::{Config, Placement, Role};
use super::spawn::{spare_slots, DataChannel, Spawner};
use super::spec::{SshTarget, WorkerSpec};
use super::ssh::{SshConfig, SshHost};
use crate::wire::handshake::Secret;
use crate::{Error, Result};

/// Configures and starts a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    specs: Vec<WorkerSpec>,
    servers: Vec<WorkerSpec>,
    spares: Vec<WorkerSpec>,
    program: Option<PathBuf>,
    expected_binary: Option<[u8; 32]>,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    handshake_timeout: Duration,
    forward_stderr: bool,
    remote_binary: Option<PathBuf>,
    ssh: SshConfig,
    data_channel: DataChannel,
    max_failures: usize,
    respawn_local: bool,
    replicas: Option<u32>,
    placement: Placement,
    stragglers: Vec<(usize, f32)>,
    auto: bool,
    launcher: Option<super::launch::Launcher>,
}

/// Worker losses a cluster tolerates by default before it gives up.
pub const DEFAULT_MAX_FAILURES: usize = 3;
/// Default interval between a worker's heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
/// Default silence after which a worker is declared lost: a stopped or unreachable worker is noticed within this
/// (plus a few milliseconds), while a busy one, whose heartbeats come from their own thread, never is.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            specs: Vec::new(),
            servers: Vec::new(),
            spares: Vec::new(),
            program: None,
            expected_binary: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            handshake_timeout: Duration::from_secs(60),
            forward_stderr: true,
            remote_binary: None,
            ssh: SshConfig::default(),
            data_channel: DataChannel::Stdio,
            max_failures: DEFAULT_MAX_FAILURES,
            respawn_local: true,
            replicas: None,
            placement: Placement::Weighted,
            stragglers: Vec::new(),
            auto: false,
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

    /// Parameter-server processes to start beside the workers (same binary, local or ssh like workers), for
    /// [`Cluster::train_ps`]. They hold no data; each run spreads its keys over them.
    pub fn servers(mut self, specs: Vec<WorkerSpec>) -> Self {
        self.servers = specs;
        self
    }

    /// Workers kept in reserve: each replaces one lost remote worker (lost local workers are replaced by new local
    /// processes unless [`respawn_local`](Self::respawn_local) is off). Spare ssh hosts are connected only when
    /// needed.
    pub fn spares(mut self, specs: Vec<WorkerSpec>) -> Self {
        self.spares = specs;
        self
    }

    /// How many workers may be lost before the cluster gives up (default 3). Past it, the operation in flight fails
    /// with an error naming every loss, and the cluster refuses further work. 0 makes the first loss fatal.
    pub fn max_failures(mut self, n: usize) -> Self {
        self.max_failures = n;
        self
    }

    /// Whether a lost local worker is replaced by a new local process (default on); off, its chunks go to the
    /// surviving workers.
    pub fn respawn_local(mut self, on: bool) -> Self {
        self.respawn_local = on;
        self
    }

    /// Model replicas of multipass sessions (default: the number of workers started). Fixing it makes model
    /// averaging bit-identical for any number of worker processes.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = Some(n.max(1) as u32);
        self
    }

    /// How chunks are spread over workers (default: weighted by measured speed).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Makes the `index`-th worker started (0-based) do every map and pass `factor` times as slowly, to study
    /// stragglers reproducibly.
    pub fn straggler(mut self, index: usize, factor: f32) -> Self {
        self.stragglers.push((index, factor));
        self
    }

    /// Chooses how many of the started workers to keep after the first map-reduce round: the round's compute per
    /// chunk and overhead per worker predict the round time of every smaller count, the fastest is kept and the
    /// other workers are retired (their chunks move). Results do not change. See [`Cluster::auto_choice`].
    pub fn auto_workers(mut self, on: bool) -> Self {
        self.auto = on;
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

    /// How often workers send heartbeats (default 250 ms).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }

    /// How long a worker may stay silent before it is declared lost (default 3 s).
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

    fn spawner(&self) -> Result<Spawner> {
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
        let remote_hash = match &self.remote_binary {
            Some(p) => crate::wire::binary_sha256(p)
                .map_err(|e| launch_err(format!("cannot read --worker-binary {}: {e}", p.display())))?,
            None => program_hash,
        };
        Ok(Spawner {
            remote_binary: self.remote_binary.clone().unwrap_or_else(|| program.clone()),
            program,
            secret: match &self.launcher {
                Some(l) => l.secret()?.unwrap_or_else(Secret::generate),
                None => Secret::generate(),
            },
            local_expected: self.expected_binary.unwrap_or(program_hash),
            remote_expected: self.expected_binary.unwrap_or(remote_hash),
            remote_sha: hex::encode(remote_hash),
            explicit_binary: self.remote_binary.is_some(),
            forward_stderr: self.forward_stderr,
            data_channel: self.data_channel,
            handshake_timeout: self.handshake_timeout,
            ssh: self.ssh.clone(),
        })
    }

    /// Starts every worker, completes every handshake, and returns the running cluster. If any worker fails to
    /// start, every worker already started (local or remote) is stopped before the error is returned.
    pub fn start(self) -> Result<Cluster> {
        let total: usize = self.specs.iter().map(WorkerSpec::slots).sum::<usize>()
            + self.launcher.as_ref().map_or(0, super::launch::Launcher::workers);
        if total == 0 {
            return Err(Error::NoWorkers);
        }
        let spawner = self.spawner()?;
        let spares = spare_slots(&self.spares);
        let remote_spares = spares.iter().filter(|s| matches!(s, WorkerSpec::Ssh { .. })).count();
        let local_spares = spares.len() - remote_spares;
        let sched = Config {
            heartbeat_timeout: self.heartbeat_timeout,
            join_timeout: self.handshake_timeout,
            max_failures: self.max_failures,
            placement: self.placement,
            respawn_local: self.respawn_local,
            spares: remote_spares + local_spares,
            replicas: self.replicas,
        };
        let driver = DriverConfig {
            heartbeat_interval: self.heartbeat_interval,
            stragglers: self.stragglers.clone(),
            spares,
            auto: self.auto,
        };
        let mut cluster = Cluster::new(spawner.clone(), driver, sched);

        // Remote hosts first: connecting and copying run in parallel, one thread per host (servers' hosts too).
        let mut remote: Vec<(SshTarget, usize, usize)> = Vec::new();
        for (spec, server) in self.specs.iter().map(|s| (s, false)).chain(self.servers.iter().map(|s| (s, true))) {
            if let WorkerSpec::Ssh { target, slots } = spec {
                let i = match remote.iter().position(|(t, ..)| t == target) {
                    Some(i) => i,
                    None => {
                        remote.push((target.clone(), 0, 0));
                        remote.len() - 1
                    }
                };
                if server {
                    remote[i].2 += slots;
                } else {
                    remote[i].1 += slots;
                }
            }
        }
        if !remote.is_empty() {
            let targets: Vec<(SshTarget, usize)> = remote.iter().map(|(t, w, s)| (t.clone(), w + s)).collect();
            for ((host, path, _), (_, workers, servers)) in
                bootstrap_hosts(&targets, &spawner)?.into_iter().zip(&remote)
            {
                for i in 0..workers + servers {
                    let launched = spawner.remote(&host, &path).map_err(|reason| Error::Launch {
                        worker: format!("a process on {}", host.target()),
                        reason,
                    })?;
                    let role = if i < *workers { Role::Compute } else { Role::Server };
                    cluster.add_as(launched, role)?;
                }
                cluster.add_host(host);
            }
        }
        for (spec, role) in
            self.specs.iter().map(|s| (s, Role::Compute)).chain(self.servers.iter().map(|s| (s, Role::Server)))
        {
            if let WorkerSpec::Local { count } = spec {
                for _ in 0..*count {
                    let launched = spawner.local().map_err(|reason| Error::Launch {
                        worker: format!("a local process ({})", spawner.program.display()),
                        reason,
                    })?;
                    cluster.add_as(launched, role)?;
                }
            }
        }
        if let Some(launcher) = &self.launcher {
            start_launcher(
                &mut cluster,
                launcher,
                &spawner.secret,
                spawner.local_expected,
                &spawner.program,
                self.heartbeat_interval,
                self.forward_stderr,
            )?;
        }
        cluster.start()?;
        Ok(cluster)
    }
}

/// Connects to every host, checks its platform and installs the worker binary, in parallel. Returns each host's
/// connection, the remote path of the binary and the slot count, in the order given.
fn bootstrap_hosts(remote: &[(SshTarget, usize)], spawner: &Spawner) -> Result<Vec<(SshHost, String, usize)>> {
    let results: Vec<std::result::Result<(SshHost, String), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = remote.iter().map(|(target, _)| scope.spawn(move || spawner.bootstrap(target))).collect();
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

/// Adds the launcher's workers to `cluster` (after its local and ssh workers): rank 0 admits the other ranks;
/// a Slurm master starts `srun` and admits its tasks.
fn start_launcher(
    cluster: &mut Cluster,
    launcher: &super::launch::Launcher,
    secret: &Secret,
    binary: [u8; 32],
    program: &Path,
    heartbeat_interval: Duration,
    forward_stderr: bool,
) -> crate::Result<()> {
    let heartbeat_ms = heartbeat_interval.as_millis().clamp(1, u32::MAX as u128) as u32;
    let base_id = cluster.next_worker_id();
    let admitted = match launcher {
        super::launch::Launcher::Ranks(r) => {
            let master = &r.env.master;
            let what = format!("rank 0 (port {}, {})", master.port, master.port_from);
            let listener = super::launch::rank::listen(master.port, &what, &master.port_from)?;
            let expect = super::launch::rank::Expect { first: 1, world: r.env.world, kind: "rank" };
            let deadline = Instant::now() + r.timeout;
            let admission =
                super::launch::rank::Admission { expect, secret, binary, base_id, heartbeat_ms, deadline, what };
            admission.run(listener, || Ok(()))?
        }
        super::launch::Launcher::Slurm(s) => {
            let what = format!("the master of Slurm job {}", s.job_id);
            let listener = super::launch::rank::listen(0, &what, "any free port")?;
            let port = listener
                .local_addr()
                .map_err(|source| super::launch::LaunchError::Io { what: "reading the listening port".into(), source })?
                .port();
            let mut step = s.spawn(program, &format!("{}:{port}", s.master_host), secret, forward_stderr)?;
            let expect = super::launch::rank::Expect { first: 0, world: s.tasks, kind: "slurm task" };
            let deadline = Instant::now() + s.timeout;
            let admission =
                super::launch::rank::Admission { expect, secret, binary, base_id, heartbeat_ms, deadline, what };
            let admitted = admission.run(listener, || step.check_running());
            // Kept either way: on failure the cluster's drop stops it.
            cluster.add_launcher(step);
            admitted?
        }
    };
    for a in admitted {
        let place = format!("{} {} on {}, pid {}", a.kind, a.rank, a.hello.host, a.hello.pid);
        let reader = a
            .stream
            .try_clone()
            .map_err(|source| super::launch::LaunchError::Io { what: format!("setting up {place}"), source })?;
        cluster.add_connected(place, Box::new(reader), Box::new(a.stream), a.hello)?;
    }
    Ok(())
}
