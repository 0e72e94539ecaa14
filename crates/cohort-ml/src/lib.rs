//! # cohort-ml
//!
//! Optimizers and models built on the cohort framework. Models implement cohort's job traits; they never touch a
//! socket.

#![deny(missing_docs)]
