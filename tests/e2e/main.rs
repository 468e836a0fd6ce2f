//! End-to-end tests: the real `sluice` binary running real guest components.

mod harness;

mod artifacts;
mod control;
mod example;
mod execution;
mod hostile;
mod http;
mod languages;
mod plugins;
mod server;
mod triggers;
mod validation;
