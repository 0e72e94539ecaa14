//! The parameter server's pure core: what a server decides and computes, and what a worker must send, with no I/O.
//!
//! Workers hold data and a copy of the parameters (one flat `f32` vector indexed by `u64` keys); servers own
//! contiguous key ranges. A worker's loop at clock `c`: pull what it needs, compute an update on a mini-batch, push
//! it, declare clock `c` complete. A server applies pushes with an [`UpdateRule`] and answers a pull when its
//! [`Consistency`] mode allows (BSP, SSP, ASP or async), judged from its vector clock of the workers.
//!
//! - [`protocol`]: the [`Request`]s and [`Reply`]s, as plain serde types the runtime maps onto frames;
//! - [`ServerCore`]: one server — `handle(request, now)` returns the replies to send, [`ServerCore::snapshot`] and
//!   [`ServerCore::restore`] move its whole state to a replica or a checkpoint;
//! - [`ClientCore`]: one worker's side — splitting over servers, sequence numbers, unacknowledged pushes,
//!   reassembled pulls, and what to re-send after a server failover;
//! - [`rules`]: SGD, momentum, AdaGrad, Adam (lazy for sparse updates), and the trait for a user's own rule;
//! - [`consistency`]: the modes, their parsing (`bsp|ssp:S|asp:S,W|async`) and pull admission, with ASP's
//!   adaptation from measured clock-advance times;
//! - [`blocks`]: model block scheduling on the worker (quiet blocks pushed and pulled less often).
//!
//! Neither core reads a clock, sleeps or touches a socket: time comes in as data with each request, so the same code
//! runs under the runtime and under the simulated network of the tests (`sim`).
//!
//! ```
//! use std::time::Duration;
//! use cohort::ps::{ClientCore, ClientEvent, Consistency, Selection, ServerConfig, ServerCore, Sgd, Update};
//!
//! // One server owning keys 0..4 for two workers, BSP.
//! let config = ServerConfig::new(0..4, 2, Consistency::Bsp);
//! let mut server = ServerCore::new(config, Box::new(Sgd { lr: 0.5 }), vec![0.0; 4])?;
//! let mut workers = [ClientCore::new(0, vec![0, 4])?, ClientCore::new(1, vec![0, 4])?];
//! let t = Duration::ZERO;
//!
//! // Clock 0: both push a gradient and declare the clock complete.
//! for w in &mut workers {
//!     let mut requests = w.push(Update::Sparse { keys: vec![1], values: vec![1.0] })?;
//!     requests.extend(w.advance());
//!     for (_server, request) in requests {
//!         for out in server.handle(request, t) {
//!             w.on_reply(0, out.reply)?; // acknowledgements
//!         }
//!     }
//! }
//! // Clock 1: a BSP read sees both clock-0 updates: 0 - 0.5 * 1 - 0.5 * 1.
//! let (_id, requests) = workers[0].pull(&Selection::Range { start: 0, end: 4 })?;
//! let out = server.handle(requests[0].1.clone(), t);
//! let Some(ClientEvent::Pulled(read)) = workers[0].on_reply(0, out[0].reply.clone())? else { panic!() };
//! assert_eq!(read.values, [0.0, -1.0, 0.0, 0.0]);
//! assert_eq!(read.staleness(), 0);
//! # Ok::<(), cohort::ps::PsError>(())
//! ```

pub mod blocks;
pub mod client;
pub mod consistency;
mod error;
pub mod job;
mod metrics;
pub mod protocol;
pub mod rules;
mod server;
#[cfg(test)]
mod sim;

pub use blocks::{BlockConfig, BlockFilter, BlockStats};
pub use client::{ClientCore, ClientEvent, Pulled, ServerIdx};
pub use consistency::{ClockTable, Consistency, Gate, ParseConsistencyError};
pub use error::{PsError, Result};
pub use job::{Batch, BatchStats, PsJob, Sampler};
pub use metrics::{Metrics, Traffic, WaitStats};
pub use protocol::{Outgoing, ReadInfo, Reply, Request, RequestRef, Selection, Update, WorkerIdx};
pub use rules::{AdaGrad, Adam, Momentum, ParseRuleError, RuleSpec, Sgd, UpdateRule};
pub use server::{Apply, ServerConfig, ServerCore, Snapshot};
