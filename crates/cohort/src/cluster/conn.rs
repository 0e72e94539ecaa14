//! One master-side connection to a worker: a reader thread that turns bytes into events, and a writer thread that
//! drains an outgoing queue, so the master never blocks on a slow or stopped worker and sees every close at once.

use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::wire::frame::{encode_prefix, read_frame, MAX_FRAME, MAX_HANDSHAKE_FRAME};
use crate::wire::{Frame, Message, WireError};

/// Something that happened on a connection.
pub(crate) enum EventKind {
    /// A whole frame arrived.
    Frame(Frame),
    /// The connection ended: `None` for a clean close, otherwise why.
    Closed(Option<WireError>),
}

/// What reaches the master's event loop.
// Frames are the common case; boxing them would cost an allocation each to shrink the rare `Launched`.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Incoming {
    /// Something happened on worker `worker`'s connection at `at`.
    Conn { worker: usize, kind: EventKind, at: Instant },
    /// A worker started in the background (a spare on another host) is ready, or could not be started.
    Launched(Result<Box<super::spawn::Launched>, String>),
}

/// Byte counters shared by every connection of a cluster.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

struct Outgoing {
    prefix: Vec<u8>,
    payload: Arc<Vec<u8>>,
}

/// The master's end of one worker connection.
pub(crate) struct Conn {
    tx: Option<Sender<Outgoing>>,
    last_seen_ns: Arc<AtomicU64>,
    epoch: Instant,
}

impl Conn {
    /// Starts the reader and writer threads for worker `id`.
    pub fn start(
        id: usize,
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        events: Sender<Incoming>,
        counters: Arc<Counters>,
        epoch: Instant,
    ) -> std::io::Result<Conn> {
        let last_seen_ns = Arc::new(AtomicU64::new(epoch.elapsed().as_nanos() as u64));
        let (tx, rx) = crossbeam_channel::unbounded::<Outgoing>();

        let seen = Arc::clone(&last_seen_ns);
        let rcounters = Arc::clone(&counters);
        let revents = events.clone();
        std::thread::Builder::new().name(format!("cohort-w{id}-read")).spawn(move || {
            // Every read counts as a sign of life, so a large frame that takes long to arrive is not a stall.
            let reader = Touch { inner: reader, seen: Arc::clone(&seen), epoch };
            let mut reader = BufReader::with_capacity(256 * 1024, reader);
            let mut limit = MAX_HANDSHAKE_FRAME;
            loop {
                let kind = match read_frame(&mut reader, limit) {
                    Ok(Some(frame)) => {
                        limit = MAX_FRAME;
                        rcounters.received.fetch_add(frame.wire_len as u64, Ordering::Relaxed);
                        EventKind::Frame(frame)
                    }
                    Ok(None) => EventKind::Closed(None),
                    Err(e) => EventKind::Closed(Some(e)),
                };
                let closed = matches!(kind, EventKind::Closed(_));
                if revents.send(Incoming::Conn { worker: id, kind, at: Instant::now() }).is_err() || closed {
                    return;
                }
            }
        })?;

        std::thread::Builder::new()
            .name(format!("cohort-w{id}-write"))
            .spawn(move || write_loop(id, rx, BufWriter::with_capacity(64 * 1024, writer), &counters, &events))?;

        Ok(Conn { tx: Some(tx), last_seen_ns, epoch })
    }

    /// Queues a frame. Fails only if the header cannot be encoded; a dead connection shows up as an event.
    pub fn send(&self, message: &Message, payload: Arc<Vec<u8>>) -> Result<(), WireError> {
        let prefix = encode_prefix(message, payload.len())?;
        if let Some(tx) = &self.tx {
            // A closed queue means the writer already reported the failure as an event.
            let _ = tx.send(Outgoing { prefix, payload });
        }
        Ok(())
    }

    /// When the last frame (of any kind) arrived from this worker.
    pub fn last_seen(&self) -> Instant {
        self.epoch + std::time::Duration::from_nanos(self.last_seen_ns.load(Ordering::Relaxed))
    }

    /// Closes the outgoing side once queued frames are written (the worker then sees end of input).
    pub fn close(&mut self) {
        self.tx = None;
    }
}

/// A reader that records the time of every successful read.
struct Touch<R> {
    inner: R,
    seen: Arc<AtomicU64>,
    epoch: Instant,
}

impl<R: Read> Read for Touch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.seen.store(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

fn write_loop(
    id: usize,
    rx: Receiver<Outgoing>,
    mut w: BufWriter<Box<dyn Write + Send>>,
    counters: &Counters,
    events: &Sender<Incoming>,
) {
    while let Ok(mut out) = rx.recv() {
        let n = (out.prefix.len() + out.payload.len()) as u64;
        let result = if out.payload.len() <= 16 * 1024 {
            // One buffer, one syscall: small frames dominate the latency of a round.
            out.prefix.extend_from_slice(&out.payload);
            w.write_all(&out.prefix)
        } else {
            w.write_all(&out.prefix).and_then(|_| w.write_all(&out.payload))
        };
        // Flush only when nothing else is queued, so a burst of chunks goes out in large writes.
        let result = result.and_then(|_| if rx.is_empty() { w.flush() } else { Ok(()) });
        if let Err(e) = result {
            let kind = EventKind::Closed(Some(WireError::Io(e)));
            let _ = events.send(Incoming::Conn { worker: id, kind, at: Instant::now() });
            return;
        }
        counters.sent.fetch_add(n, Ordering::Relaxed);
    }
    let _ = w.flush();
}
