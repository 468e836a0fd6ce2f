//! Sluice's core: what a pipeline is, before anything runs.
//!
//! [`pipeline`] parses a pipeline file and validates it against the [`plugin`]
//! registry into a [`pipeline::Plan`], the input of the engine (`sluice-engine`).
//! Nothing here runs Wasm or touches the state store.

#![deny(missing_docs)]

pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod triggers;
pub mod units;
