//! The handshake that opens every master–worker connection.
//!
//! ```text
//! master                                              worker
//!   Hello { magic, version, expected binary, Nm }  ─▶
//!                                                  ◀─  HelloReply { version, own binary, Nw,
//!                                                          HMAC(secret, "cohort-worker"‖Nm‖Nw), jobs, pid, host }
//!   Welcome { id, HMAC(secret, "cohort-master"‖Nw‖Nm) } ─▶        (or Reject { reason })
//! ```
//!
//! The per-job secret never crosses the connection: it reaches the worker through its environment or the first line
//! of its standard input (see `cluster::worker`), and each side proves it knows it by an HMAC over both nonces. Any
//! mismatch (magic, version, binary hash, proof) ends the handshake with a `Reject` naming the reason.
//!
//! The master side is a small state machine with no I/O ([`MasterHandshake`]) so the runtime can drive it from its
//! event loop with a timeout; the worker side is a blocking function over any reader/writer.

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::frame::{read_frame, write_frame, MAX_HANDSHAKE_FRAME};
use super::message::Message;
use super::{WireError, MAGIC, PROTOCOL_VERSION};

/// A per-job shared secret (32 random bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A fresh secret from the operating system's random source.
    pub fn generate() -> Secret {
        Secret(random_bytes())
    }

    /// Parses the hex form produced by [`Secret::to_hex`].
    pub fn from_hex(s: &str) -> Result<Secret, HandshakeError> {
        let bytes = hex::decode(s.trim()).map_err(|e| HandshakeError::BadSecret(e.to_string()))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| HandshakeError::BadSecret("expected 64 hex digits".into()))?;
        Ok(Secret(arr))
    }

    /// Hex form, for handing to a worker process.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub(crate) fn proof(&self, label: &[u8], first: &[u8; 32], second: &[u8; 32]) -> [u8; 32] {
        self.mac(label, first, second).finalize().into_bytes().into()
    }

    pub(crate) fn verify(&self, label: &[u8], first: &[u8; 32], second: &[u8; 32], proof: &[u8; 32]) -> bool {
        // `verify_slice` compares in constant time.
        self.mac(label, first, second).verify_slice(proof).is_ok()
    }

    fn mac(&self, label: &[u8], first: &[u8; 32], second: &[u8; 32]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(label);
        mac.update(first);
        mac.update(second);
        mac
    }
}

/// 32 bytes from the operating system's random source.
pub fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer does not speak the cohort protocol at all.
    #[error("peer is not a cohort {expected} (first message was {got})")]
    NotCohort {
        /// What we expected the peer to be.
        expected: &'static str,
        /// What it sent.
        got: String,
    },
    /// Protocol versions differ.
    #[error("protocol version mismatch: this side speaks {ours}, the peer speaks {theirs}; run the same cohort build on both sides")]
    Version {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The worker runs a different executable than the master expects.
    #[error("worker binary sha256 {got} differs from the expected {expected}; the worker must run the same cohort build as the master (or the binary given with --worker-binary)")]
    Binary {
        /// Expected hash (hex).
        expected: String,
        /// Worker's hash (hex).
        got: String,
    },
    /// The HMAC proof did not verify: the peer does not know this job's secret.
    #[error("authentication failed: the {who} did not prove knowledge of this job's secret")]
    Proof {
        /// Which side failed to prove.
        who: &'static str,
    },
    /// The peer rejected us.
    #[error("rejected by the {who}: {reason}")]
    Rejected {
        /// Which side rejected.
        who: &'static str,
        /// Its reason.
        reason: String,
    },
    /// The secret handed to the worker is unusable.
    #[error("bad job secret: {0}")]
    BadSecret(String),
    /// The connection ended during the handshake.
    #[error("connection closed during the handshake")]
    Closed,
    /// A framing or I/O error.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// What the master learns about an accepted worker.
#[derive(Debug, Clone)]
pub struct WorkerHello {
    /// Jobs registered in the worker binary.
    pub jobs: Vec<String>,
    /// Worker process id.
    pub pid: u32,
    /// Worker host name.
    pub host: String,
    /// Worker binary hash.
    pub binary_sha256: [u8; 32],
}

/// Master side of the handshake, without I/O: send [`hello`](Self::hello), feed the reply to
/// [`on_reply`](Self::on_reply), send what it returns.
pub struct MasterHandshake {
    secret: Secret,
    expected_binary: [u8; 32],
    version: u32,
    nonce: [u8; 32],
}

impl MasterHandshake {
    /// Starts a handshake expecting a worker that runs the binary with hash `expected_binary`.
    pub fn new(secret: Secret, expected_binary: [u8; 32]) -> Self {
        Self::with_version(secret, expected_binary, PROTOCOL_VERSION)
    }

    /// Like [`new`](Self::new) but announcing another protocol version (for compatibility tests).
    pub fn with_version(secret: Secret, expected_binary: [u8; 32], version: u32) -> Self {
        MasterHandshake { secret, expected_binary, version, nonce: random_bytes() }
    }

    /// The first message.
    pub fn hello(&self) -> Message {
        Message::Hello { magic: MAGIC, version: self.version, binary_sha256: self.expected_binary, nonce: self.nonce }
    }

    /// Checks the worker's reply. On success returns the `Welcome` to send; on failure the error and, where the
    /// worker should be told why, a `Reject` to send before closing.
    #[allow(clippy::result_large_err)]
    pub fn on_reply(
        &self,
        reply: Message,
        worker_id: u32,
        heartbeat_ms: u32,
    ) -> Result<(Message, WorkerHello), (HandshakeError, Option<Message>)> {
        let (version, binary_sha256, nonce, proof, jobs, pid, host) = match reply {
            Message::HelloReply { version, binary_sha256, nonce, proof, jobs, pid, host } => {
                (version, binary_sha256, nonce, proof, jobs, pid, host)
            }
            Message::Reject { reason } => return Err((HandshakeError::Rejected { who: "worker", reason }, None)),
            other => {
                let err = HandshakeError::NotCohort { expected: "worker", got: other.kind().to_string() };
                return Err((err, None));
            }
        };
        let fail = |err: HandshakeError| {
            let reject = Message::Reject { reason: err.to_string() };
            Err((err, Some(reject)))
        };
        if version != self.version {
            return fail(HandshakeError::Version { ours: self.version, theirs: version });
        }
        if !self.secret.verify(b"cohort-worker", &self.nonce, &nonce, &proof) {
            return fail(HandshakeError::Proof { who: "worker" });
        }
        if binary_sha256 != self.expected_binary {
            return fail(HandshakeError::Binary {
                expected: hex::encode(self.expected_binary),
                got: hex::encode(binary_sha256),
            });
        }
        let proof = self.secret.proof(b"cohort-master", &nonce, &self.nonce);
        Ok((Message::Welcome { worker_id, proof, heartbeat_ms }, WorkerHello { jobs, pid, host, binary_sha256 }))
    }
}

/// What the worker learns from an accepted handshake.
#[derive(Debug, Clone, Copy)]
pub struct Welcome {
    /// This worker's index at the master.
    pub worker_id: u32,
    /// Heartbeat interval requested by the master.
    pub heartbeat_ms: u32,
}

/// Identity a worker presents in its reply.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    /// Hash of the worker's own executable.
    pub binary_sha256: [u8; 32],
    /// Registered job names.
    pub jobs: Vec<String>,
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
}

/// Worker side of the handshake, blocking on `r`/`w`.
pub fn worker_handshake<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    secret: &Secret,
    identity: WorkerIdentity,
) -> Result<Welcome, HandshakeError> {
    let frame = read_frame(r, MAX_HANDSHAKE_FRAME)?.ok_or(HandshakeError::Closed)?;
    let (master_nonce, version) = match frame.message {
        Message::Hello { magic, version, nonce, .. } if magic == MAGIC => (nonce, version),
        other => return Err(HandshakeError::NotCohort { expected: "master", got: other.kind().to_string() }),
    };
    if version != PROTOCOL_VERSION {
        let err = HandshakeError::Version { ours: PROTOCOL_VERSION, theirs: version };
        let _ = write_frame(w, &Message::Reject { reason: err.to_string() }, &[]);
        return Err(err);
    }
    let nonce = random_bytes();
    let proof = secret.proof(b"cohort-worker", &master_nonce, &nonce);
    let reply = Message::HelloReply {
        version: PROTOCOL_VERSION,
        binary_sha256: identity.binary_sha256,
        nonce,
        proof,
        jobs: identity.jobs,
        pid: identity.pid,
        host: identity.host,
    };
    write_frame(w, &reply, &[])?;
    let frame = read_frame(r, MAX_HANDSHAKE_FRAME)?.ok_or(HandshakeError::Closed)?;
    match frame.message {
        Message::Welcome { worker_id, proof, heartbeat_ms } => {
            if !secret.verify(b"cohort-master", &nonce, &master_nonce, &proof) {
                return Err(HandshakeError::Proof { who: "master" });
            }
            Ok(Welcome { worker_id, heartbeat_ms })
        }
        Message::Reject { reason } => Err(HandshakeError::Rejected { who: "master", reason }),
        other => Err(HandshakeError::NotCohort { expected: "master", got: other.kind().to_string() }),
    }
}

/// Master side of the handshake, blocking on `r`/`w` (the runtime uses [`MasterHandshake`] directly).
pub fn master_handshake<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    handshake: &MasterHandshake,
    worker_id: u32,
) -> Result<WorkerHello, HandshakeError> {
    write_frame(w, &handshake.hello(), &[])?;
    let frame = read_frame(r, MAX_HANDSHAKE_FRAME)?.ok_or(HandshakeError::Closed)?;
    match handshake.on_reply(frame.message, worker_id, 1000) {
        Ok((welcome, hello)) => {
            write_frame(w, &welcome, &[])?;
            Ok(hello)
        }
        Err((err, reject)) => {
            if let Some(reject) = reject {
                let _ = write_frame(w, &reject, &[]);
            }
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn identity(binary: [u8; 32]) -> WorkerIdentity {
        WorkerIdentity { binary_sha256: binary, jobs: vec!["a".into()], pid: 1, host: "h".into() }
    }

    /// Runs a worker handshake on a thread against `master` and returns both outcomes.
    fn run(
        master: MasterHandshake,
        worker_secret: Secret,
        worker_binary: [u8; 32],
    ) -> (Result<WorkerHello, HandshakeError>, Result<Welcome, HandshakeError>) {
        let (a, b) = UnixStream::pair().unwrap();
        let worker = std::thread::spawn(move || {
            let mut r = b.try_clone().unwrap();
            let mut w = b;
            worker_handshake(&mut r, &mut w, &worker_secret, identity(worker_binary))
        });
        let mut r = a.try_clone().unwrap();
        let mut w = a;
        let m = master_handshake(&mut r, &mut w, &master, 3);
        drop((r, w));
        (m, worker.join().unwrap())
    }

    #[test]
    fn matching_secret_and_binary_are_accepted() {
        let s = Secret::generate();
        let (m, w) = run(MasterHandshake::new(s.clone(), [7; 32]), s, [7; 32]);
        assert_eq!(m.unwrap().jobs, vec!["a".to_string()]);
        assert_eq!(w.unwrap().worker_id, 3);
    }

    #[test]
    fn wrong_secret_is_rejected_with_reason() {
        let (m, w) = run(MasterHandshake::new(Secret::generate(), [7; 32]), Secret::generate(), [7; 32]);
        assert!(matches!(m, Err(HandshakeError::Proof { who: "worker" })), "{m:?}");
        let w = w.unwrap_err().to_string();
        assert!(w.contains("rejected by the master") && w.contains("authentication failed"), "{w}");
    }

    #[test]
    fn wrong_binary_is_rejected_with_both_hashes() {
        let s = Secret::generate();
        let (m, w) = run(MasterHandshake::new(s.clone(), [7; 32]), s, [8; 32]);
        let m = m.unwrap_err().to_string();
        assert!(m.contains(&hex::encode([7u8; 32])) && m.contains(&hex::encode([8u8; 32])), "{m}");
        assert!(w.unwrap_err().to_string().contains("differs from the expected"));
    }

    #[test]
    fn wrong_version_is_rejected_by_the_worker() {
        let s = Secret::generate();
        let (m, w) = run(MasterHandshake::with_version(s.clone(), [7; 32], 999), s, [7; 32]);
        let m = m.unwrap_err().to_string();
        assert!(m.contains("rejected by the worker") && m.contains("999"), "{m}");
        assert!(matches!(w, Err(HandshakeError::Version { theirs: 999, .. })));
    }

    #[test]
    fn a_master_that_cannot_prove_the_secret_is_refused_by_the_worker() {
        // A fake master that forwards a Welcome with a bogus proof.
        let s = Secret::generate();
        let (a, b) = UnixStream::pair().unwrap();
        let s2 = s.clone();
        let worker = std::thread::spawn(move || {
            let mut r = b.try_clone().unwrap();
            let mut w = b;
            worker_handshake(&mut r, &mut w, &s2, identity([1; 32]))
        });
        let mut r = a.try_clone().unwrap();
        let mut w = a;
        let hs = MasterHandshake::new(s, [1; 32]);
        write_frame(&mut w, &hs.hello(), &[]).unwrap();
        read_frame(&mut r, MAX_HANDSHAKE_FRAME).unwrap().unwrap();
        write_frame(&mut w, &Message::Welcome { worker_id: 0, proof: [0; 32], heartbeat_ms: 1 }, &[]).unwrap();
        assert!(matches!(worker.join().unwrap(), Err(HandshakeError::Proof { who: "master" })));
    }

    #[test]
    fn a_non_cohort_peer_is_named() {
        let (a, b) = UnixStream::pair().unwrap();
        let worker = std::thread::spawn(move || {
            let mut r = b.try_clone().unwrap();
            let mut w = b;
            worker_handshake(&mut r, &mut w, &Secret::generate(), identity([1; 32]))
        });
        let mut w = a;
        write_frame(&mut w, &Message::Heartbeat, &[]).unwrap();
        let err = worker.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("not a cohort master"), "{err}");
    }

    #[test]
    fn secret_hex_round_trips_and_rejects_garbage() {
        let s = Secret::generate();
        assert_eq!(Secret::from_hex(&s.to_hex()).unwrap(), s);
        assert!(Secret::from_hex("abc").is_err());
        assert!(Secret::from_hex("zz").is_err());
    }
}
