//! A parameter server inside a server process: one thread that owns a [`ServerCore`] for every key range this
//! process holds a replica of, and the links to the run's workers and to the next server of each chain.
//!
//! Each range has a chain of servers (head first; `--replication K` servers long). The head takes the workers'
//! requests for the range and stamps them with its clock; every member applies the same `(request, timestamp)`
//! stream, in the same order, to its own core, passes it on to its successor — batched: what arrived together goes
//! out together (aggregation before replication) — and only the tail answers the workers. So an acknowledged push
//! is on every replica, and when a member is lost the next one carries on with the same state: the workers re-send
//! what was not acknowledged, and the cores' sequence numbers apply it once.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::link::{admit, connect, listen, Link, LinkEvent, Peer, PsFrame};
use crate::ps::{Consistency, Request, RuleSpec, ServerConfig, ServerCore};
use crate::wire::handshake::Secret;
use crate::wire::{Message, PsRange};

/// Sends a frame to the master (the process's protocol output).
pub(crate) type Notify = Arc<dyn Fn(Message, Vec<u8>) + Send + Sync>;

/// What the process's main loop hands the server thread from the master.
#[derive(Debug)]
pub(crate) enum Control {
    Chains { chains: Vec<Vec<u32>>, addrs: Vec<(String, u16)> },
    Inject { range: u32, request: Request },
    Fetch { range: u32, req: u64, last: bool },
    End,
}

enum Event {
    Link(LinkEvent),
    Accepted(Peer, TcpStream),
    Control(Control),
    Ignored,
}

/// The running server thread, as the process's main loop sees it.
pub(crate) struct ServerHandle {
    events: Sender<Event>,
}

impl ServerHandle {
    /// Passes a message from the master on to the server thread.
    pub fn control(&self, c: Control) {
        let _ = self.events.send(Event::Control(c));
    }
}

/// How long a peer may take to connect and prove the secret.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the final fetch waits for every worker to have left a range before it is answered anyway.
const LAST_FETCH_WAIT: Duration = Duration::from_secs(60);

/// Starts serving `ranges` (with their initial parameters) for run `run`; returns the handle and the port it
/// listens on.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    run: u64,
    server: u32,
    ranges: Vec<(PsRange, Vec<f32>)>,
    workers: u32,
    consistency: &str,
    rule: &str,
    secret: Secret,
    notify: Notify,
) -> Result<(ServerHandle, u16), String> {
    let consistency: Consistency = consistency.parse().map_err(|e| format!("consistency {consistency:?}: {e}"))?;
    let spec: RuleSpec = rule.parse().map_err(|e| format!("update rule {rule:?}: {e}"))?;
    let mut cores = BTreeMap::new();
    for (r, init) in ranges {
        let rule = spec.build().map_err(|e| e.to_string())?;
        let config = ServerConfig::new(r.lo..r.hi, workers, consistency);
        cores.insert(r.range, ServerCore::new(config, rule, init).map_err(|e| e.to_string())?);
    }
    let listener = listen().map_err(|e| format!("cannot listen: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (tx, rx) = crossbeam_channel::unbounded();
    // Accepting: each connection proves the secret on a thread of its own, so a stranger cannot hold up the rest.
    let stop = Arc::new(AtomicBool::new(false));
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let (accept_tx, accept_secret, accept_stop) = (tx.clone(), secret.clone(), Arc::clone(&stop));
    std::thread::Builder::new()
        .name("cohort-ps-accept".into())
        .spawn(move || {
            while !accept_stop.load(Ordering::Relaxed) {
                let mut stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = stream.set_nonblocking(false);
                let (tx, secret) = (accept_tx.clone(), accept_secret.clone());
                let _ = std::thread::Builder::new().name("cohort-ps-admit".into()).spawn(move || {
                    match admit(&mut stream, run, &secret, ADMIT_TIMEOUT) {
                        Ok(peer) => {
                            let _ = tx.send(Event::Accepted(peer, stream));
                        }
                        Err(e) => eprintln!("cohort parameter server: refused a connection: {e}"),
                    }
                });
            }
        })
        .map_err(|e| e.to_string())?;
    let state = Server {
        run,
        me: server,
        cores,
        chains: Vec::new(),
        addrs: Vec::new(),
        links: HashMap::new(),
        next: HashMap::new(),
        forward: BTreeMap::new(),
        early: BTreeMap::new(),
        last_fetches: Vec::new(),
        epoch: Instant::now(),
        secret,
        notify,
        events: tx.clone(),
    };
    std::thread::Builder::new()
        .name("cohort-ps-server".into())
        .spawn(move || {
            state.run(rx);
            stop.store(true, Ordering::Relaxed);
        })
        .map_err(|e| e.to_string())?;
    Ok((ServerHandle { events: tx }, port))
}

struct Server {
    run: u64,
    me: u32,
    cores: BTreeMap<u32, ServerCore>,
    /// Per range: its servers, head first (empty until the master says).
    chains: Vec<Vec<u32>>,
    addrs: Vec<(String, u16)>,
    /// Links others opened to us (workers, predecessors).
    links: HashMap<Peer, Link>,
    /// Links to our successors, by server.
    next: HashMap<u32, Link>,
    /// Requests to pass on, per range, since the last flush.
    forward: BTreeMap<u32, Vec<(Request, Duration)>>,
    /// Worker requests for a range this server is about to head (they arrived before the new chains).
    early: BTreeMap<u32, Vec<Request>>,
    /// Final fetches waiting for every worker to leave their range: (range, request, answer by then anyway).
    last_fetches: Vec<(u32, u64, Instant)>,
    epoch: Instant,
    secret: Secret,
    notify: Notify,
    events: Sender<Event>,
}

impl Server {
    fn run(mut self, rx: Receiver<Event>) {
        loop {
            let event = match self.last_fetches.iter().map(|f| f.2).min() {
                Some(by) => match rx.recv_deadline(by) {
                    Ok(e) => Some(e),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(e) => Some(e),
                    Err(_) => return,
                },
            };
            if let Some(event) = event {
                if !self.event(event) {
                    return;
                }
            }
            while let Ok(event) = rx.try_recv() {
                if !self.event(event) {
                    return;
                }
            }
            self.flush();
            self.answer_last_fetches();
        }
    }

    /// Answers the final fetches of ranges every worker has left (or whose wait is over).
    fn answer_last_fetches(&mut self) {
        let now = Instant::now();
        let pending = std::mem::take(&mut self.last_fetches);
        for (range, req, by) in pending {
            let left = self.cores.get(&range).is_none_or(ServerCore::all_left);
            if left || now >= by {
                if !left {
                    eprintln!("cohort parameter server {}: range {range}: answering the final fetch though workers have not left", self.me);
                }
                self.fetch(range, req);
            } else {
                self.last_fetches.push((range, req, by));
            }
        }
    }

    /// Handles one event; false once the run is over.
    fn event(&mut self, event: Event) -> bool {
        match event {
            Event::Accepted(peer, stream) => match Link::start(stream, peer, self.events.clone(), Event::Link) {
                Ok(link) => {
                    self.links.insert(peer, link);
                }
                Err(e) => eprintln!("cohort parameter server: cannot start a link to {peer:?}: {e}"),
            },
            Event::Link(LinkEvent::Closed(peer)) => {
                self.links.remove(&peer);
            }
            Event::Link(LinkEvent::Frame(_, PsFrame::Request { range, request })) => {
                if self.head_of(range) {
                    let now = self.epoch.elapsed();
                    self.apply(range, request, now);
                } else if self.cores.contains_key(&range) {
                    // A worker that already knows this server heads the range; the master will say so shortly.
                    self.early.entry(range).or_default().push(request);
                }
            }
            Event::Link(LinkEvent::Frame(_, PsFrame::Forward { range, items })) => {
                for (request, at) in items {
                    self.apply(range, request, at);
                }
            }
            Event::Link(LinkEvent::Frame(peer, other)) => {
                eprintln!("cohort parameter server: unexpected {} from {peer:?}", other.kind());
            }
            Event::Control(Control::Chains { chains, addrs }) => self.chains_changed(chains, addrs),
            Event::Control(Control::Inject { range, request }) => {
                if self.head_of(range) {
                    let now = self.epoch.elapsed();
                    self.apply(range, request, now);
                }
            }
            Event::Control(Control::Fetch { range, req, last: false }) => self.fetch(range, req),
            Event::Control(Control::Fetch { range, req, last: true }) => {
                self.last_fetches.push((range, req, Instant::now() + LAST_FETCH_WAIT));
            }
            Event::Control(Control::End) => return false,
            Event::Ignored => {}
        }
        true
    }

    fn head_of(&self, range: u32) -> bool {
        self.chains.get(range as usize).and_then(|c| c.first()) == Some(&self.me)
    }

    fn tail_of(&self, range: u32) -> bool {
        self.chains.get(range as usize).and_then(|c| c.last()) == Some(&self.me)
    }

    /// The server after this one in `range`'s chain.
    fn successor(&self, range: u32) -> Option<u32> {
        let chain = self.chains.get(range as usize)?;
        let at = chain.iter().position(|&s| s == self.me)?;
        chain.get(at + 1).copied()
    }

    /// Applies a request to this replica, passes it on, and answers if this replica is the tail.
    fn apply(&mut self, range: u32, request: Request, at: Duration) {
        let successor = self.successor(range);
        let tail = self.tail_of(range);
        let Some(core) = self.cores.get_mut(&range) else { return };
        if successor.is_some() {
            self.forward.entry(range).or_default().push((request.clone(), at));
        }
        let outs = core.handle(request, at);
        if tail {
            for out in outs {
                if let Some(link) = self.links.get(&Peer::Worker(out.to)) {
                    if let Err(e) = link.send(&PsFrame::Reply { range, reply: out.reply }) {
                        eprintln!("cohort parameter server {}: to worker {}: {e}", self.me, out.to);
                    }
                }
            }
        }
    }

    /// Passes on what was applied since the last flush, one frame per range.
    fn flush(&mut self) {
        let forward = std::mem::take(&mut self.forward);
        for (range, items) in forward {
            let Some(next) = self.successor(range) else { continue };
            if !self.next.contains_key(&next) {
                self.connect_to(next);
            }
            if let Some(link) = self.next.get(&next) {
                if let Err(e) = link.send(&PsFrame::Forward { range, items }) {
                    eprintln!("cohort parameter server {}: to server {next}: {e}", self.me);
                }
            }
        }
    }

    fn connect_to(&mut self, server: u32) {
        let Some((host, port)) = self.addrs.get(server as usize).cloned() else { return };
        match connect(&host, port, self.run, Peer::Server(self.me), &self.secret, ADMIT_TIMEOUT) {
            Ok(stream) => {
                // Successors do not talk back; their link's close is noticed by the master, not here.
                if let Ok(link) = Link::start(stream, Peer::Server(server), self.events.clone(), |_| Event::Ignored) {
                    self.next.insert(server, link);
                }
            }
            Err(e) => eprintln!("cohort parameter server {}: cannot reach server {server}: {e}", self.me),
        }
    }

    fn chains_changed(&mut self, chains: Vec<Vec<u32>>, addrs: Vec<(String, u16)>) {
        self.chains = chains;
        self.addrs = addrs;
        // Links to servers that are no longer anyone's successor close.
        let wanted: Vec<u32> = self.cores.keys().filter_map(|&r| self.successor(r)).collect();
        self.next.retain(|s, _| wanted.contains(s));
        // Requests held for ranges this server now heads.
        let early = std::mem::take(&mut self.early);
        for (range, requests) in early {
            if self.head_of(range) {
                for request in requests {
                    let now = self.epoch.elapsed();
                    self.apply(range, request, now);
                }
            } else {
                self.early.insert(range, requests);
            }
        }
    }

    fn fetch(&mut self, range: u32, req: u64) {
        let Some(core) = self.cores.get(&range) else { return };
        let mut payload = Vec::with_capacity(core.params().len() * 4 + 256);
        <f32 as crate::wire::Scalar>::extend_le(core.params(), &mut payload);
        let metrics = postcard::to_allocvec(core.metrics()).unwrap_or_default();
        payload.extend_from_slice(&metrics);
        let msg = Message::PsFetched { run: self.run, range, req, metrics_len: metrics.len() as u64 };
        (self.notify)(msg, payload);
    }
}
