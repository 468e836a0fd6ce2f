//! Sluice's engine: runs a [`sluice_core::pipeline::Plan`].
//!
//! The [`executor`] walks an execution through its stages (decisions in the pure
//! `executor::machine`, I/O in `executor::drive`), waiting at stage [`gates`],
//! running each action in the sandbox (`sluice-sandbox`) with its pipeline
//! [`cache`]s locked, and recording every change in the state store.

#![deny(missing_docs)]

pub mod cache;
pub mod executor;
pub mod gates;
