//! Sluice: self-hosted continuous delivery whose every action is a sandboxed
//! WASI 0.2 component.
//!
//! A pipeline execution flows through these modules (see ARCHITECTURE.md):
//! [`pipeline`] parses and validates the file against the [`plugin`] registry into a
//! [`pipeline::Plan`]; the [`executor`] walks the plan stage by stage, resolving
//! variables, running each action in the [`sandbox`], ingesting its outputs into the
//! [`artifact`] store and recording every transition in the [`state`] store.

pub mod api;
pub mod artifact;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod executor;
pub mod export;
pub mod gates;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod sandbox;
pub mod scaffold;
pub mod secrets;
pub mod server;
pub mod state;
pub mod triggers;
pub mod units;
pub mod views;
