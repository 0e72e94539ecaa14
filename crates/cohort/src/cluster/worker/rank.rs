//! Worker ranks: a process started by a launcher (a rank ≥ 1 of `srun`, `mpirun` or a Kubernetes job, or a task of
//! the `srun` step a `--workers slurm` master starts) connects to its master over TCP and serves it like any worker.
//! The master's side of the same connection is `cluster::launch::rank`.

use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::{serve, WorkerError};
use crate::cluster::launch::rank::RANK_LINE_PREFIX;
use crate::cluster::launch::{secret, timeout_from_env, LaunchError, MasterAddr, RankEnv, Source, CONNECT_ENV};
use crate::job::Registry;
use crate::wire::handshake::{HandshakeError, Secret};

/// A worker rank: where its master listens and what it must prove.
#[derive(Debug, Clone)]
pub struct RankWorker {
    /// This process's rank as the master will know it.
    pub rank: usize,
    /// The world size this rank reports.
    pub world: usize,
    /// Where the master listens.
    pub master: MasterAddr,
    /// The job secret.
    pub secret: Secret,
    /// How long to keep trying to reach the master.
    pub connect_timeout: Duration,
    /// How this rank is named in messages, e.g. `rank 2 of 3 (Slurm: SLURM_PROCID=2, ...)`.
    pub what: String,
}

impl RankWorker {
    /// The worker for a rank ≥ 1 of a launcher's job.
    pub fn new(env: &RankEnv, secret: Secret, connect_timeout: Duration) -> RankWorker {
        RankWorker {
            rank: env.rank,
            world: env.world,
            master: env.master.clone(),
            secret,
            connect_timeout,
            what: env.describe(),
        }
    }

    /// Connects to the master and serves it until it shuts the job down. Returns the process exit status: 0 after
    /// a clean shutdown, 1 (with the reason on stderr) otherwise. Meant to end the process: it exits by itself when
    /// the master goes away in the middle of a computation, and it makes SIGTERM print why the rank stops.
    pub fn serve(&self, registry: &Registry) -> i32 {
        note_termination(format!(
            "cohort {}: stopped by SIGTERM — the launcher ended the job (cancelled, out of time, or another rank \
             failed)",
            self.what
        ));
        match self.run(registry) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cohort (pid {}): {e}", std::process::id());
                1
            }
        }
    }

    fn run(&self, registry: &Registry) -> Result<(), LaunchError> {
        let master = self.master.to_string();
        let mut stream = self.connect()?;
        stream.set_nodelay(true).ok();
        // Parameter servers on this rank are reached at the address its master connection leaves from.
        if std::env::var(super::ADVERTISE_ENV).is_err() {
            if let Ok(local) = stream.local_addr() {
                std::env::set_var(super::ADVERTISE_ENV, local.ip().to_string());
            }
        }
        crate::cluster::launch::rank::keepalive(&stream);
        let gone = |detail: String| LaunchError::MasterGone { what: self.what.clone(), master: master.clone(), detail };
        stream
            .write_all(format!("{RANK_LINE_PREFIX}{} {}\n", self.rank, self.world).as_bytes())
            .map_err(|e| gone(e.to_string()))?;
        let eof = Arc::new(AtomicBool::new(false));
        let reader = stream.try_clone().map_err(|e| gone(e.to_string()))?;
        let reader = BufReader::with_capacity(256 * 1024, EofWatch { inner: reader, eof: Arc::clone(&eof) });
        let writer = MasterLink { inner: stream, what: self.what.clone(), master: master.clone() };
        match serve(registry, reader, writer, &self.secret, false) {
            Ok(()) if eof.load(Ordering::Relaxed) => Err(gone("it closed the connection".into())),
            Ok(()) => Ok(()),
            Err(WorkerError::Handshake(HandshakeError::Rejected { reason, .. })) => {
                Err(LaunchError::Refused { what: self.what.clone(), master, reason })
            }
            Err(WorkerError::Handshake(e @ (HandshakeError::Proof { .. } | HandshakeError::NotCohort { .. }))) => {
                Err(LaunchError::NotOurMaster { what: self.what.clone(), master, detail: e.to_string() })
            }
            Err(e) => Err(gone(e.to_string())),
        }
    }

    /// Connects to the master, retrying (rank 0 may start later than this rank) until the connect timeout.
    fn connect(&self) -> Result<TcpStream, LaunchError> {
        let started = Instant::now();
        let deadline = started + self.connect_timeout;
        let mut pause = Duration::from_millis(5);
        let mut last = String::from("no attempt finished");
        loop {
            match (self.master.host.as_str(), self.master.port).to_socket_addrs() {
                Ok(addrs) => {
                    for addr in addrs {
                        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
                        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2))) {
                            Ok(s) => return Ok(s),
                            Err(e) => last = format!("{addr}: {e}"),
                        }
                    }
                }
                Err(e) => last = format!("cannot resolve {}: {e}", self.master.host),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LaunchError::Unreachable {
                    what: self.what.clone(),
                    master: self.master.to_string(),
                    from: format!("host from {}; port from {}", self.master.host_from, self.master.port_from),
                    after: self.connect_timeout,
                    last,
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

/// Records whether the master closed the connection (a read of zero bytes).
struct EofWatch<R> {
    inner: R,
    eof: Arc<AtomicBool>,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof.store(true, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// A worker rank's connection to its master: a write that fails means the master is gone, and nobody will read
/// what this rank computes, so the rank says so and exits at once — also from the heartbeat thread in the middle
/// of a long computation.
struct MasterLink {
    inner: TcpStream,
    what: String,
    master: String,
}

impl MasterLink {
    fn lost(&self, e: &std::io::Error) -> ! {
        eprintln!(
            "cohort (pid {}): {}: lost the connection to the master at {} ({e}); it failed or was stopped — \
             exiting",
            std::process::id(),
            self.what,
            self.master
        );
        std::process::exit(1);
    }
}

impl Write for MasterLink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf).or_else(|e| self.lost(&e))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().or_else(|e| self.lost(&e))
    }
}

static TERMINATION_NOTE: OnceLock<Box<[u8]>> = OnceLock::new();

/// Makes SIGTERM print `message` on stderr before the process ends by it (with the usual status of a process killed
/// by SIGTERM). Launchers stop a job with SIGTERM — `scancel`, a time limit, `srun -K` or `mpirun` after another
/// rank failed, a deleted pod — and without this the job's log would not say why a rank vanished. Only the first
/// call has an effect.
pub fn note_termination(message: String) {
    if TERMINATION_NOTE.set(format!("{message}\n").into_bytes().into_boxed_slice()).is_err() {
        return;
    }
    // SAFETY: installs a handler that only calls async-signal-safe functions (write, signal, raise) on memory that
    // was initialised before installation and is never freed.
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}

extern "C" fn on_sigterm(sig: libc::c_int) {
    if let Some(note) = TERMINATION_NOTE.get() {
        // SAFETY: write(2) of an initialised, immutable buffer; async-signal-safe.
        unsafe {
            libc::write(2, note.as_ptr().cast(), note.len());
        }
    }
    // SAFETY: restoring the default action and re-raising are async-signal-safe; the process then ends by SIGTERM.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Called first by [`run_if_worker`](crate::cluster::worker::run_if_worker): if this process is a worker rank —
/// a task of a `--workers slurm` step (`COHORT_ROLE=worker` with `COHORT_CONNECT`), or a rank ≥ 1 of a launcher's
/// job with a secret in the environment — serve the master and exit. Otherwise return.
pub(crate) fn run_if_rank_worker(registry: &Registry) {
    let worker = match rank_worker_from_env() {
        Ok(Some(w)) => w,
        Ok(None) => return,
        Err(e) => {
            eprintln!("cohort (pid {}): {e}", std::process::id());
            std::process::exit(1);
        }
    };
    std::process::exit(worker.serve(registry));
}

/// The worker rank this process should be, from its environment alone.
fn rank_worker_from_env() -> Result<Option<RankWorker>, LaunchError> {
    let get = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let role = get(crate::cluster::process::ROLE_ENV);
    if role.as_deref() == Some("worker") {
        let Some(connect) = get(CONNECT_ENV) else { return Ok(None) };
        return task_from_env(&connect).map(Some);
    }
    if role.is_some() || !secret::in_env(&get) {
        return Ok(None);
    }
    match RankEnv::from_env()? {
        Some(env) if env.world >= 2 && env.rank >= 1 => {
            let secret = secret::load(None)?.ok_or_else(|| LaunchError::NoSecret { context: env.describe() })?;
            Ok(Some(RankWorker::new(&env, secret, timeout_from_env()?)))
        }
        _ => Ok(None),
    }
}

/// The worker of a task started by `--workers slurm`: its index is `SLURM_PROCID`, its master `COHORT_CONNECT`.
pub(crate) fn task_from_env(connect: &str) -> Result<RankWorker, LaunchError> {
    let env = RankEnv::from_env()?.filter(|e| e.source == Source::Slurm).ok_or_else(|| LaunchError::Incomplete {
        set: format!("{CONNECT_ENV}={connect}"),
        missing: "SLURM_PROCID (with SLURM_STEP_ID)".into(),
        hint: "only a task of the srun step that a --workers slurm master starts connects this way".into(),
    })?;
    let (host, port) = split_host_port(connect)
        .ok_or_else(|| LaunchError::BadPort { var: CONNECT_ENV.into(), value: connect.into() })?;
    let secret = secret::load(None)?.ok_or_else(|| LaunchError::NoSecret { context: env.describe() })?;
    let from = format!("{CONNECT_ENV}, set by the master");
    Ok(RankWorker {
        rank: env.rank,
        world: env.world,
        master: MasterAddr { host, port, host_from: from.clone(), port_from: from },
        secret,
        connect_timeout: timeout_from_env()?,
        what: format!("slurm task {} of {}", env.rank, env.world),
    })
}

/// `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port = port.parse::<u16>().ok().filter(|&p| p > 0)?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_pairs_split() {
        assert_eq!(split_host_port("vm:4000"), Some(("vm".into(), 4000)));
        assert_eq!(split_host_port("[::1]:4000"), Some(("::1".into(), 4000)));
        assert_eq!(split_host_port("vm"), None);
        assert_eq!(split_host_port(":4000"), None);
        assert_eq!(split_host_port("vm:0"), None);
    }
}
