//! Ranks over TCP, the master's side: admitting the connections of worker ranks (the worker side is
//! `cluster::worker::rank`).
//!
//! ```text
//! worker rank                                      master (rank 0, or a --workers slurm master)
//!   connect to MASTER_ADDR:MASTER_PORT, retrying until the connect timeout
//!   "COHORT-RANK <rank> <world>\n"          ──▶    (one thread per connection, 10 s for what follows)
//!                                           ◀──    Hello { magic, version, binary, nonce }
//!   HelloReply { ..., HMAC(secret, ...) }   ──▶    proof checked: a stranger is refused and waited past
//!                                           ◀──    Welcome, or Reject { reason } for a duplicate rank, a rank
//!                                                  outside the job or another world size (these fail the start)
//!   then frames as for any worker; the master waits until every expected rank is in, or its deadline
//! ```
//!
//! The rank line lets the master give the Welcome the worker's final index (rank order) and name it in messages; it
//! is trusted only once the proof that follows has verified. The secret itself never crosses the connection.
//!
//! A worker rank belongs to its master: when the connection ends before `Shutdown`, or a write to it fails (also in
//! the middle of a long computation, through the heartbeat), the rank prints why and exits with status 1, so a dead
//! master leaves no rank holding an allocation. TCP keep-alives cover a master whose host vanished.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::LaunchError;
use crate::wire::frame::{read_frame, write_frame, MAX_HANDSHAKE_FRAME};
use crate::wire::handshake::{MasterHandshake, Secret, WorkerHello};
use crate::wire::Message;

/// Prefix of the line a worker rank sends first: `COHORT-RANK <rank> <world>`.
pub const RANK_LINE_PREFIX: &str = "COHORT-RANK ";
/// Longest rank line accepted.
const RANK_LINE_MAX: usize = 64;
/// How long one connection may take from its first byte to the end of the handshake.
pub const ADMIT_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the master's listening socket on every interface (IPv6 and IPv4 where the system has both).
pub(crate) fn listen(port: u16, what: &str, port_from: &str) -> Result<TcpListener, LaunchError> {
    let listener = TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)));
    listener.map_err(|e| {
        let fix = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another program (or another job) uses it: set MASTER_PORT to a free port"
        } else {
            ""
        };
        LaunchError::Listen { what: what.into(), port, port_from: port_from.into(), reason: format!("{e}{fix}") }
    })
}

/// The ranks a master waits for: `first..world`, worker index `rank - first`.
pub(crate) struct Expect {
    /// Lowest expected rank (1 when rank 0 is the master, 0 for the tasks of a Slurm step).
    pub first: usize,
    /// The world size every rank must report.
    pub world: usize,
    /// What a rank is called in labels: `rank`, `slurm task`.
    pub kind: &'static str,
}

impl Expect {
    fn count(&self) -> usize {
        self.world.saturating_sub(self.first)
    }
}

/// A rank whose proof verified.
pub(crate) struct Admitted {
    /// Its rank.
    pub rank: usize,
    /// What a rank is called.
    pub kind: &'static str,
    /// The connection, handshake done.
    pub stream: TcpStream,
    /// What it said about itself.
    pub hello: WorkerHello,
}

/// One admission: who is expected, what they must prove, until when.
pub(crate) struct Admission<'a> {
    pub expect: Expect,
    pub secret: &'a Secret,
    /// Binary hash every rank must present.
    pub binary: [u8; 32],
    /// Cluster index of the first expected rank.
    pub base_id: usize,
    pub heartbeat_ms: u32,
    pub deadline: Instant,
    /// Who waits, for messages.
    pub what: String,
}

/// What one connection came to.
enum Outcome {
    Admitted(Box<Admitted>),
    /// A connection that did not prove the secret or did not speak the protocol: logged and waited past.
    Refused(String),
    /// An authenticated rank that does not fit: the start fails.
    Misfit(String),
}

/// State shared by the connection threads.
struct Shared {
    secret: Secret,
    binary: [u8; 32],
    base_id: usize,
    heartbeat_ms: u32,
    first: usize,
    world: usize,
    kind: &'static str,
    /// Admitted ranks: peer, host and pid.
    taken: Mutex<BTreeMap<usize, String>>,
}

impl Admission<'_> {
    /// Accepts connections until every expected rank is admitted. `watch` runs between polls and fails the
    /// admission early (a launcher that exited). Connections that fail the proof are refused and waited past; the
    /// timeout error lists them.
    pub fn run(
        self,
        listener: TcpListener,
        mut watch: impl FnMut() -> Result<(), LaunchError>,
    ) -> Result<Vec<Admitted>, LaunchError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| LaunchError::Io { what, source }
        };
        listener.set_nonblocking(true).map_err(io("setting up the listening socket"))?;
        let shared = Arc::new(Shared {
            secret: self.secret.clone(),
            binary: self.binary,
            base_id: self.base_id,
            heartbeat_ms: self.heartbeat_ms,
            first: self.expect.first,
            world: self.expect.world,
            kind: self.expect.kind,
            taken: Mutex::new(BTreeMap::new()),
        });
        let (tx, rx) = crossbeam_channel::unbounded::<Outcome>();
        let mut admitted: BTreeMap<usize, Admitted> = BTreeMap::new();
        let mut refused = Vec::new();
        let started = Instant::now();
        while admitted.len() < self.expect.count() {
            if Instant::now() >= self.deadline {
                let missing: Vec<usize> =
                    (self.expect.first..self.expect.world).filter(|r| !admitted.contains_key(r)).collect();
                return Err(LaunchError::AdmissionTimeout {
                    what: self.what,
                    missing: name_ranks(self.expect.kind, &missing, self.expect.world),
                    connected: admitted
                        .values()
                        .map(|a| format!("{} {} ({}, pid {})", a.kind, a.rank, a.hello.host, a.hello.pid))
                        .collect(),
                    refused,
                    after: self.deadline.saturating_duration_since(started),
                });
            }
            watch()?;
            match listener.accept() {
                Ok((stream, peer)) => {
                    let (shared, tx) = (Arc::clone(&shared), tx.clone());
                    std::thread::Builder::new()
                        .name("cohort-admit".into())
                        .spawn(move || {
                            let _ = tx.send(admit_one(stream, peer, &shared));
                        })
                        .map_err(io("starting an admission thread"))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(LaunchError::Io { what: format!("{} accepting a connection", self.what), source: e })
                }
            }
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(Outcome::Admitted(a)) => {
                    tracing::info!("admitted {} {} ({}, pid {})", a.kind, a.rank, a.hello.host, a.hello.pid);
                    admitted.insert(a.rank, *a);
                }
                Ok(Outcome::Refused(why)) => {
                    tracing::warn!("refused a connection: {why}");
                    refused.push(why);
                }
                Ok(Outcome::Misfit(why)) => return Err(LaunchError::Misfit(why)),
                Err(_) => {}
            }
        }
        tracing::info!("all {} {}s connected to {}", admitted.len(), self.expect.kind, self.what);
        Ok(admitted.into_values().collect())
    }
}

/// `rank 2 of 4`, `ranks 2 and 3 of 4`, `slurm tasks 0, 1 and 2 of 3`.
fn name_ranks(kind: &str, ranks: &[usize], world: usize) -> String {
    let list: Vec<String> = ranks.iter().map(usize::to_string).collect();
    match list.as_slice() {
        [one] => format!("{kind} {one} of {world}"),
        [init @ .., last] => format!("{kind}s {} and {last} of {world}", init.join(", ")),
        [] => format!("no {kind}"),
    }
}

/// The rank line, the handshake and the fit checks of one connection.
fn admit_one(mut stream: TcpStream, peer: SocketAddr, s: &Shared) -> Outcome {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let refused = |why: String| Outcome::Refused(format!("{peer}: {why}"));
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(ADMIT_STEP_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(ADMIT_STEP_TIMEOUT)).is_err()
    {
        return refused("cannot configure the connection".into());
    }
    stream.set_nodelay(true).ok();
    let line = match read_line(&mut stream) {
        Ok(l) => l,
        Err(why) => return refused(why),
    };
    let Some((rank, world)) = parse_rank_line(&line) else {
        return refused(format!("not a cohort rank (it sent {line:?})"));
    };
    let id = (s.base_id + rank.saturating_sub(s.first)) as u32;
    let hs = MasterHandshake::new(s.secret.clone(), s.binary);
    if let Err(e) = write_frame(&mut stream, &hs.hello(), &[]) {
        return refused(format!("{} {rank}: {e}", s.kind));
    }
    let reply = match read_frame(&mut stream, MAX_HANDSHAKE_FRAME) {
        Ok(Some(frame)) => frame.message,
        Ok(None) => return refused(format!("{} {rank} closed the connection during the handshake", s.kind)),
        Err(e) => return refused(format!("{} {rank}: {e}", s.kind)),
    };
    let (welcome, hello) = match hs.on_reply(reply, id, s.heartbeat_ms) {
        Ok(ok) => ok,
        Err((e, reject)) => {
            if let Some(reject) = reject {
                let _ = write_frame(&mut stream, &reject, &[]);
            }
            return refused(format!("{} {rank}: {e}", s.kind));
        }
    };
    // The peer proved the secret: what it says about itself is now trusted, and a misfit is a real mistake.
    let who = format!("{} {rank} ({}, pid {})", s.kind, hello.host, hello.pid);
    let misfit = if world != s.world {
        Some(format!(
            "{who} belongs to a job of {world} processes but this one has {}: the ranks disagree on the world size",
            s.world
        ))
    } else if rank < s.first || rank >= s.world {
        Some(format!(
            "{who} is not a worker of this job (expected {} {}..{}): does another process also act as the master?",
            s.kind,
            s.first,
            s.world - 1
        ))
    } else {
        let mut taken = s.taken.lock().unwrap_or_else(|p| p.into_inner());
        match taken.get(&rank) {
            Some(first) => Some(format!(
                "two processes claim {} {rank}: {first} and {} (pid {}); check that the launcher gives every \
                 process its own rank",
                s.kind, hello.host, hello.pid
            )),
            None => {
                taken.insert(rank, format!("{} (pid {})", hello.host, hello.pid));
                None
            }
        }
    };
    if let Some(why) = misfit {
        let _ = write_frame(&mut stream, &Message::Reject { reason: why.clone() }, &[]);
        return Outcome::Misfit(why);
    }
    if let Err(e) = write_frame(&mut stream, &welcome, &[]) {
        return refused(format!("{who}: {e}"));
    }
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(None);
    keepalive(&stream);
    Outcome::Admitted(Box::new(Admitted { rank, kind: s.kind, stream, hello }))
}

/// Reads one `\n`-terminated line byte by byte, so nothing after it is consumed.
fn read_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err("closed the connection without saying its rank".into()),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) if line.len() < RANK_LINE_MAX => line.push(byte[0]),
            Ok(_) => return Err(format!("not a cohort rank (it sent {:?}...)", String::from_utf8_lossy(&line))),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("said nothing in time ({e})")),
        }
    }
}

/// `COHORT-RANK 2 4` → `(2, 4)`.
fn parse_rank_line(line: &str) -> Option<(usize, usize)> {
    let mut words = line.strip_prefix(RANK_LINE_PREFIX)?.split_whitespace();
    let rank = words.next()?.parse().ok()?;
    let world = words.next()?.parse().ok()?;
    words.next().is_none().then_some((rank, world))
}

/// Keep-alives and a user timeout, so that a peer whose host vanished without closing is noticed in about half a
/// minute even when nothing is being sent. Best effort: a system without these options keeps its defaults.
pub(crate) fn keepalive(stream: &TcpStream) {
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 30_000);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_lines_parse_strictly() {
        assert_eq!(parse_rank_line("COHORT-RANK 2 4"), Some((2, 4)));
        for bad in ["COHORT-RANK 2", "COHORT-RANK a 4", "COHORT-RANK 2 4 5", "SSH-2.0-OpenSSH", "", "COHORT-RANK -1 2"]
        {
            assert_eq!(parse_rank_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn missing_ranks_are_named_in_words() {
        assert_eq!(name_ranks("rank", &[2], 3), "rank 2 of 3");
        assert_eq!(name_ranks("rank", &[1, 2, 3], 4), "ranks 1, 2 and 3 of 4");
        assert_eq!(name_ranks("slurm task", &[0, 1], 2), "slurm tasks 0 and 1 of 2");
    }
}
