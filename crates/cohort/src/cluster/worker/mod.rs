//! Worker mode: the loop a worker process runs, serving one master over its standard input and output (or a TCP
//! connection); what it does with each request is [`WorkerCore`]'s business.
//!
//! A worker is the user's own executable started with `COHORT_ROLE=worker` in its environment. The program calls
//! [`run_if_worker`] first thing in `main`; in a worker process that call never returns. Before anything else the
//! worker moves its protocol stream off file descriptor 1 and points fd 1 at stderr, so a stray `println!` in user
//! code lands in the master's log instead of corrupting frames.
//!
//! The job secret comes from `COHORT_SECRET`, or, if that is unset (ssh launches, where environments do not
//! travel), from a first line `COHORT-SECRET <hex>` on standard input.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod core;
pub mod fault;
pub mod rank;

pub(crate) use self::core::{Control, WorkerCore};
use crate::job::Registry;
use crate::wire::frame::{read_frame, write_frame, MAX_FRAME};
use crate::wire::handshake::{worker_handshake, HandshakeError, Secret, WorkerIdentity};
use crate::wire::{Message, WireError};
pub use rank::{note_termination, RankWorker};

pub use super::process::{LISTEN_ENV, LISTEN_LINE_PREFIX, ROLE_ENV, SECRET_ENV, SECRET_LINE_PREFIX};
/// How long a TCP worker waits for the master to connect and pass the handshake.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a worker stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The connection failed.
    #[error("connection to the master failed: {0}")]
    Wire(#[from] WireError),
    /// Setting up standard streams failed.
    #[error("cannot set up worker i/o: {0}")]
    Setup(String),
}

/// Whether this process was started as a cohort worker.
pub fn is_worker() -> bool {
    std::env::var(ROLE_ENV).is_ok_and(|v| v == "worker")
}

/// In a worker process: serve the master, then exit (status 0 after a clean shutdown, 1 on error). Anywhere else:
/// return immediately. Call it first thing in `main`, with the registry of every job the program may run.
pub fn run_if_worker(registry: &Registry) {
    // Ranks started by a launcher (srun, mpirun, Kubernetes) and tasks of a `--workers slurm` step connect over TCP.
    rank::run_if_rank_worker(registry);
    if is_worker() {
        let code = match serve_stdio(registry) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cohort worker (pid {}): {e}", std::process::id());
                1
            }
        };
        std::process::exit(code);
    }
}

/// Serves one master over stdin/stdout until it shuts us down or goes away.
pub fn serve_stdio(registry: &Registry) -> Result<(), WorkerError> {
    die_with_parent()?;
    let protocol_out = redirect_stdout_to_stderr()?;
    let mut input = BufReader::with_capacity(256 * 1024, std::io::stdin());
    let secret = match std::env::var(SECRET_ENV) {
        Ok(hex) => Secret::from_hex(&hex)?,
        Err(_) => read_secret_line(&mut input)?,
    };
    match std::env::var(LISTEN_ENV) {
        Ok(addr) => serve_tcp(registry, &addr, input, protocol_out, &secret),
        Err(_) => serve(registry, input, protocol_out, &secret, true),
    }
}

/// Asks the kernel to SIGKILL this worker when the process that started it ends: the master for a local worker, the
/// ssh server's session for a remote one (it ends with the master's connection). A worker that reads its control
/// channel ends on EOF anyway; this also ends one that cannot read — frozen by SIGSTOP, or stuck — so no lost
/// worker outlives its master. Fails if the parent is already gone.
fn die_with_parent() -> Result<(), WorkerError> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl and getppid only read and set this process's own attributes.
        let before = unsafe { libc::getppid() };
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(WorkerError::Setup(format!("prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error())));
        }
        // A parent that died before the request was made reparented us without a signal.
        // SAFETY: as above.
        if unsafe { libc::getppid() } != before {
            return Err(WorkerError::Setup("the process that started this worker is gone".into()));
        }
    }
    Ok(())
}

/// Listens on `addr`, announces the port on the control channel, and serves the first connection that passes the
/// handshake. The control channel's end (stdin EOF) still ends the worker: the master is gone.
fn serve_tcp(
    registry: &Registry,
    addr: &str,
    mut control_in: impl Read + Send + 'static,
    mut control_out: File,
    secret: &Secret,
) -> Result<(), WorkerError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| WorkerError::Setup(format!("cannot listen on {addr}: {e}")))?;
    let port = listener.local_addr().map_err(|e| WorkerError::Setup(e.to_string()))?.port();
    // The address the master reached us at over ssh is the one it can connect to.
    let ip = std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|c| c.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1".to_string());
    writeln!(control_out, "{LISTEN_LINE_PREFIX}{ip} {port}")
        .and_then(|_| control_out.flush())
        .map_err(WireError::Io)?;
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        while matches!(control_in.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    listener.set_nonblocking(true).map_err(|e| WorkerError::Setup(e.to_string()))?;
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).map_err(WireError::Io)?;
                stream.set_nodelay(true).ok();
                let reader = stream.try_clone().map_err(WireError::Io)?;
                match serve(registry, BufReader::with_capacity(256 * 1024, reader), stream, secret, true) {
                    Err(WorkerError::Handshake(e)) => eprintln!("cohort worker: refused a connection from {peer}: {e}"),
                    other => return other,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(WorkerError::Wire(WireError::Io(e))),
        }
    }
    Err(WorkerError::Setup(format!("no master connected to port {port} within {ACCEPT_TIMEOUT:?}")))
}

fn read_secret_line(input: &mut impl BufRead) -> Result<Secret, WorkerError> {
    let mut line = String::new();
    input.read_line(&mut line).map_err(WireError::Io)?;
    let hex = line.strip_prefix(SECRET_LINE_PREFIX).ok_or_else(|| {
        WorkerError::Setup(format!(
            "no job secret: {SECRET_ENV} is unset and stdin did not start with `{SECRET_LINE_PREFIX}`"
        ))
    })?;
    Ok(Secret::from_hex(hex)?)
}

/// Duplicates fd 1 for the protocol and points fd 1 at stderr.
fn redirect_stdout_to_stderr() -> Result<File, WorkerError> {
    std::io::stdout().flush().ok();
    // SAFETY: dup/dup2 on the process's own standard descriptors; the duplicate is owned by the returned File.
    unsafe {
        let fd = libc::dup(1);
        if fd < 0 {
            return Err(WorkerError::Setup(format!("dup(1): {}", std::io::Error::last_os_error())));
        }
        if libc::dup2(2, 1) < 0 {
            return Err(WorkerError::Setup(format!("dup2(2, 1): {}", std::io::Error::last_os_error())));
        }
        Ok(File::from_raw_fd(fd))
    }
}

/// Serves one master over any reader/writer pair. `exit_on_disconnect` makes the heartbeat thread end the process
/// when the master is gone even while a long computation runs (what a worker process wants; not a test thread).
pub fn serve<R: Read, W: Write + Send + 'static>(
    registry: &Registry,
    mut input: R,
    output: W,
    secret: &Secret,
    exit_on_disconnect: bool,
) -> Result<(), WorkerError> {
    let identity = WorkerIdentity {
        binary_sha256: crate::wire::own_binary_sha256().map_err(|e| WorkerError::Setup(e.to_string()))?,
        jobs: registry.names(),
        pid: std::process::id(),
        host: super::process::hostname(),
    };
    let mut output = output;
    let welcome = worker_handshake(&mut input, &mut output, secret, identity)?;
    let output = Arc::new(Mutex::new(output));
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = spawn_heartbeat(
        Arc::clone(&output),
        Arc::clone(&stop),
        Duration::from_millis(welcome.heartbeat_ms.max(1) as u64),
        exit_on_disconnect,
    );
    let notify_out = Arc::clone(&output);
    let notify: crate::cluster::ps::server::Notify = Arc::new(move |msg: Message, payload: Vec<u8>| {
        let _ = send(&notify_out, &msg, &payload);
    });
    let remote = core::Remote { secret: secret.clone(), notify, host: advertised_host() };
    let result = serve_loop(registry, &mut input, &output, remote);
    stop.store(true, Ordering::Relaxed);
    heartbeat.thread().unpark();
    let _ = heartbeat.join();
    result
}

fn spawn_heartbeat<W: Write + Send + 'static>(
    output: Arc<Mutex<W>>,
    stop: Arc<AtomicBool>,
    every: Duration,
    exit_on_disconnect: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next = Instant::now() + every;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::park_timeout(next - now);
                continue;
            }
            next = now + every;
            let Ok(mut w) = output.lock() else { return };
            if write_frame(&mut *w, &Message::Heartbeat, &[]).is_err() {
                if exit_on_disconnect {
                    // The master is gone; nobody will read what we are computing.
                    std::process::exit(0);
                }
                return;
            }
        }
    })
}

fn send<W: Write>(output: &Mutex<W>, msg: &Message, payload: &[u8]) -> Result<(), WireError> {
    let mut w = output.lock().map_err(|_| WireError::Malformed("output lock poisoned".into()))?;
    write_frame(&mut *w, msg, payload).map(|_| ())
}

/// The host other processes of a parameter-server run reach this one at: `COHORT_ADVERTISE` if set (a launcher
/// rank sets it to the address its master connection leaves from), the address an ssh session reached this host at,
/// or loopback.
fn advertised_host() -> String {
    if let Ok(h) = std::env::var(ADVERTISE_ENV) {
        return h;
    }
    std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|c| c.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// Environment variable naming the address other processes reach this worker at (parameter-server runs).
pub const ADVERTISE_ENV: &str = "COHORT_ADVERTISE";

fn serve_loop<R: Read, W: Write>(
    registry: &Registry,
    input: &mut R,
    output: &Mutex<W>,
    remote: core::Remote,
) -> Result<(), WorkerError> {
    let mut core = WorkerCore::new(registry).with_remote(remote);
    loop {
        let Some(frame) = read_frame(input, MAX_FRAME)? else {
            return Ok(()); // the master closed the connection
        };
        if core.handle(frame, &mut |msg, payload| send(output, &msg, payload))? == Control::Shutdown {
            return Ok(());
        }
    }
}
