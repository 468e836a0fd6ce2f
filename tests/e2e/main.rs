//! End-to-end tests: the real `sluice` binary running real guest components.

mod harness;

mod artifacts;
mod browser;
mod caches;
mod console;
mod control;
mod crashes;
mod example;
mod execution;
mod hardening;
mod hostile;
mod http;
mod languages;
mod live;
mod plugins;
mod projects;
mod quotas;
mod scaffolds;
mod secrets;
mod server;
mod shared;
mod supervision;
mod triggers;
mod validation;
mod workers;
