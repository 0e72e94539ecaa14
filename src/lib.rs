//! The `cohort` command: `demo`, `train`, `eval`, `gen`, `bench` and the hidden `worker` mode.
//!
//! The binary is a thin shell over this library so integration tests can drive the same jobs from a test master
//! while the workers run the real `cohort` executable.

#![deny(missing_docs)]

pub mod bench;
pub mod cli;
pub mod commands;
pub mod jobs;
pub mod launch;
pub mod patches;
pub mod plot;
pub mod progress;
pub mod psrun;
pub mod report;
pub mod signals;

pub use jobs::registry;
