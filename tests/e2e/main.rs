//! End-to-end tests: the real `sluice` binary running real guest components.

mod harness;

mod control;
mod example;
mod execution;
mod hostile;
mod http;
mod languages;
mod live;
mod plugins;
mod projects;
mod quotas;
mod scaffolds;
mod server;
mod supervision;
mod triggers;
mod validation;
