//! The parameter server's runtime: the processes and connections around the pure cores of [`crate::ps`].
//!
//! - [`link`]: authenticated TCP links between a run's workers and servers, framed with their own header;
//! - [`server`]: the thread in a server process that hosts a `ServerCore` per range it replicates, takes the
//!   requests of the ranges it heads, passes the stream down each chain and answers from the tails;
//! - [`trainer`]: the thread in a worker process that runs the training loop over a `ClientCore`.
//!
//! The master orchestrates (starting servers, telling everyone the chains, starting workers, repairing chains when a
//! server is lost, telling servers to drop a lost worker) through its scheduler; see `scheduler::ps`.

pub(crate) mod link;
pub(crate) mod server;
pub(crate) mod trainer;
