//! Links between the processes of a parameter-server run: a worker to every server, a server to the next server of
//! each chain. TCP, framed like every cohort connection (length prefix, header length), with an empty header and a
//! postcard-encoded [`PsFrame`] as the payload: a frame's `u16` header length would cap a push or a reply at 64 KiB,
//! and a sparse push of a few thousand keys is larger than that.
//!
//! A connection is admitted only after both sides prove the job secret (the same per-job secret as the master's
//! connections), by HMAC over two fresh nonces; the secret never crosses the connection:
//!
//! ```text
//! client                                                   server
//!   Hello { magic, version, run, from, nonce_c }     ──▶
//!                                                    ◀──   Challenge { nonce_s, HMAC(secret, "cohort-ps-server" ‖ nonce_c ‖ nonce_s) }
//!   Proof { HMAC(secret, "cohort-ps-client" ‖ nonce_s ‖ nonce_c) } ──▶
//! ```
//!
//! After that each side has a [`Link`]: a writer thread drains a queue (so the server's loop and the worker's
//! computation never block on a slow peer) and a reader thread turns frames into events on a channel.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::ps::{Reply, Request};
use crate::wire::frame::{encode_prefix, read_frame_of, MAX_FRAME, MAX_HANDSHAKE_FRAME};
use crate::wire::handshake::{random_bytes, Secret};
use crate::wire::{WireError, MAGIC, PROTOCOL_VERSION};

/// Who is at the other end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Peer {
    /// The worker with this index in the run.
    Worker(u32),
    /// The server with this index in the run.
    Server(u32),
}

/// What every frame on a parameter-server link carries (as its payload).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PsFrame {
    /// Client → server, first frame.
    Hello { magic: [u8; 8], version: u32, run: u64, from: Peer, nonce: [u8; 32] },
    /// Server → client: its nonce and its proof.
    Challenge { nonce: [u8; 32], proof: [u8; 32] },
    /// Client → server: the client's proof.
    Proof { proof: [u8; 32] },
    /// Worker → the head of `range`'s chain.
    Request { range: u32, request: Request },
    /// The tail of `range`'s chain → a worker.
    Reply { range: u32, reply: Reply },
    /// A server → the next server of `range`'s chain: requests in the order the head took them, with the head's
    /// timestamps (several at once: replication batches what arrived together).
    Forward { range: u32, items: Vec<(Request, Duration)> },
}

/// Something that happened on a link.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A frame from `peer`.
    Frame(Peer, PsFrame),
    /// The link to `peer` ended.
    Closed(Peer),
}

/// One end of an admitted link.
pub(crate) struct Link {
    tx: Option<Sender<Vec<u8>>>,
    /// Bytes queued to go out, frame prefixes included.
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    /// Starts the reader and writer threads of an admitted `stream` to `peer`; frames and the close go to `events`,
    /// wrapped by `wrap`.
    pub fn start<E: Send + 'static>(
        stream: TcpStream,
        peer: Peer,
        events: Sender<E>,
        wrap: fn(LinkEvent) -> E,
    ) -> std::io::Result<Link> {
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(None).ok();
        stream.set_write_timeout(None).ok();
        let reader = stream.try_clone()?;
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        std::thread::Builder::new().name(format!("cohort-ps-read-{peer:?}")).spawn(move || {
            let mut r = BufReader::with_capacity(256 * 1024, reader);
            loop {
                match read_ps_frame(&mut r, MAX_FRAME) {
                    Ok(Some(frame)) => {
                        if events.send(wrap(LinkEvent::Frame(peer, frame))).is_err() {
                            return;
                        }
                    }
                    // A peer that goes away (closed, reset, cut mid-frame) is a close; the master's failure detector
                    // says why.
                    Ok(None) | Err(WireError::Io(_) | WireError::Truncated) => {
                        let _ = events.send(wrap(LinkEvent::Closed(peer)));
                        return;
                    }
                    Err(e) => {
                        eprintln!("cohort parameter-server link from {peer:?}: {e}; closing it");
                        let _ = events.send(wrap(LinkEvent::Closed(peer)));
                        return;
                    }
                }
            }
        })?;
        std::thread::Builder::new().name(format!("cohort-ps-write-{peer:?}")).spawn(move || write_loop(rx, stream))?;
        Ok(Link { tx: Some(tx), sent })
    }

    /// Queues a frame. A dead link shows up as a [`LinkEvent::Closed`]; a frame that cannot be encoded (larger than
    /// [`MAX_FRAME`]) is an error naming its size, and nothing is sent.
    pub fn send(&self, frame: &PsFrame) -> Result<(), String> {
        let bytes = encode(frame).map_err(|e| format!("cannot send a {} frame: {e}", frame.kind()))?;
        if let Some(tx) = &self.tx {
            self.sent.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(bytes);
        }
        Ok(())
    }
}

impl PsFrame {
    /// The variant's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PsFrame::Hello { .. } => "Hello",
            PsFrame::Challenge { .. } => "Challenge",
            PsFrame::Proof { .. } => "Proof",
            PsFrame::Request { .. } => "Request",
            PsFrame::Reply { .. } => "Reply",
            PsFrame::Forward { .. } => "Forward",
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.tx = None; // the writer flushes what is queued and ends
    }
}

/// One frame: the prefix of an empty header, then `frame` in postcard as the payload.
fn encode(frame: &PsFrame) -> Result<Vec<u8>, WireError> {
    let body = postcard::to_allocvec(frame).map_err(|e| WireError::Encode(e.to_string()))?;
    let mut bytes = encode_prefix(&(), body.len())?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Reads one frame of [`encode`]'s layout; `Ok(None)` on a clean close.
fn read_ps_frame<R: Read>(r: &mut R, max_len: u32) -> Result<Option<PsFrame>, WireError> {
    let Some(frame) = read_frame_of::<(), _>(r, max_len)? else { return Ok(None) };
    postcard::from_bytes(&frame.payload).map(Some).map_err(|e| WireError::Malformed(format!("bad link frame: {e}")))
}

fn write_loop(rx: Receiver<Vec<u8>>, stream: TcpStream) {
    let mut w = BufWriter::with_capacity(256 * 1024, stream);
    while let Ok(bytes) = rx.recv() {
        if w.write_all(&bytes).is_err() {
            return;
        }
        if rx.is_empty() && w.flush().is_err() {
            return;
        }
    }
    let _ = w.flush();
    if let Ok(s) = w.into_inner() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

fn send_now(stream: &mut TcpStream, frame: &PsFrame) -> Result<(), String> {
    let bytes = encode(frame).map_err(|e| e.to_string())?;
    stream.write_all(&bytes).and_then(|_| stream.flush()).map_err(|e| e.to_string())
}

fn recv_now(stream: &mut TcpStream) -> Result<PsFrame, String> {
    match read_ps_frame(stream, MAX_HANDSHAKE_FRAME) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err("the peer closed the connection during the handshake".into()),
        Err(e) => Err(format!("handshake: {e}")),
    }
}

/// Connects to a server of run `run` as `from`, proving the secret, within `timeout`.
pub(crate) fn connect(
    host: &str,
    port: u16,
    run: u64,
    from: Peer,
    secret: &Secret,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<_> =
        (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?.collect();
    let mut last = String::from("no address");
    let mut pause = Duration::from_millis(5);
    let mut stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("cannot connect to the parameter server at {host}:{port} within {timeout:?}: {last}"));
        }
        match addrs.iter().find_map(|a| TcpStream::connect_timeout(a, left).map_err(|e| last = e.to_string()).ok()) {
            Some(s) => break s,
            None => {
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    };
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(timeout)).ok();
    let nonce = random_bytes();
    send_now(&mut stream, &PsFrame::Hello { magic: MAGIC, version: PROTOCOL_VERSION, run, from, nonce })?;
    let (server_nonce, proof) = match recv_now(&mut stream)? {
        PsFrame::Challenge { nonce, proof } => (nonce, proof),
        other => return Err(format!("the server at {host}:{port} answered {other:?} instead of a challenge")),
    };
    if !secret.verify(b"cohort-ps-server", &nonce, &server_nonce, &proof) {
        return Err(format!("the server at {host}:{port} could not prove the job secret: not this job's server"));
    }
    send_now(&mut stream, &PsFrame::Proof { proof: secret.proof(b"cohort-ps-client", &server_nonce, &nonce) })?;
    Ok(stream)
}

/// Runs the server side of the handshake on an accepted `stream`; returns who connected.
pub(crate) fn admit(stream: &mut TcpStream, run: u64, secret: &Secret, timeout: Duration) -> Result<Peer, String> {
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(timeout)).ok();
    let (from, client_nonce) = match recv_now(stream)? {
        PsFrame::Hello { magic, version, run: r, from, nonce } => {
            if magic != MAGIC || version != PROTOCOL_VERSION {
                return Err(format!("a peer speaking protocol {version} (this is {PROTOCOL_VERSION})"));
            }
            if r != run {
                return Err(format!("a peer of run {r} (this is run {run})"));
            }
            (from, nonce)
        }
        other => return Err(format!("a peer that opened with {other:?}")),
    };
    let nonce = random_bytes();
    let proof = secret.proof(b"cohort-ps-server", &client_nonce, &nonce);
    send_now(stream, &PsFrame::Challenge { nonce, proof })?;
    match recv_now(stream)? {
        PsFrame::Proof { proof } if secret.verify(b"cohort-ps-client", &nonce, &client_nonce, &proof) => Ok(from),
        _ => Err(format!("{from:?} could not prove the job secret")),
    }
}

/// Opens a listening socket on every interface, on a free port.
pub(crate) fn listen() -> std::io::Result<TcpListener> {
    TcpListener::bind("0.0.0.0:0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ps::Update;

    #[test]
    fn frames_far_beyond_a_header_round_trip_and_bad_ones_are_errors() {
        // A sparse push of 50 000 keys: about 600 kB, ten times what a frame header may hold.
        let keys: Vec<u64> = (0..50_000).map(|k| k * 7).collect();
        let values: Vec<f32> = (0..50_000).map(|k| k as f32 * 0.5).collect();
        let push = Request::Push { worker: 1, clock: 3, seq: 9, update: Update::Sparse { keys, values } };
        let frame = PsFrame::Request { range: 2, request: push.clone() };
        let bytes = encode(&frame).unwrap();
        assert!(bytes.len() > 300_000, "{} bytes", bytes.len());
        let mut r = bytes.as_slice();
        match read_ps_frame(&mut r, MAX_FRAME).unwrap() {
            Some(PsFrame::Request { range: 2, request }) => assert_eq!(request, push),
            other => panic!("read back {other:?}"),
        }
        assert!(read_ps_frame(&mut r, MAX_FRAME).unwrap().is_none(), "a clean end after the frame");
        // Above the bound (the handshake's 64 KiB): refused before reading the body.
        assert!(matches!(
            read_ps_frame(&mut bytes.as_slice(), MAX_HANDSHAKE_FRAME),
            Err(WireError::FrameTooLarge { .. })
        ));
        // A cut frame and a payload that is no frame are errors, not panics.
        assert!(read_ps_frame(&mut &bytes[..bytes.len() / 2], MAX_FRAME).is_err());
        let junk = [encode_prefix(&(), 3).unwrap(), vec![0xff, 0xff, 0xff]].concat();
        assert!(matches!(read_ps_frame(&mut junk.as_slice(), MAX_FRAME), Err(WireError::Malformed(_))));
    }
}
