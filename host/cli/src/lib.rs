//! The `sluice` command-line tool: the binary that wires the crates together.
//!
//! [`cli`] parses the command line; `sluice run` loads a plan (`sluice-core`) and
//! runs it with the engine (`sluice-engine`), which runs each action in the
//! sandbox (`sluice-sandbox`) and records it in the store (`sluice-store`);
//! `sluice serve` hands the same engine to the HTTP server (`sluice-server`)
//! through [`engine::LocalEngine`]. [`bench`] and [`scaffold`] are tools for
//! operators and plugin authors. See ARCHITECTURE.md.

#![deny(missing_docs)]

pub mod bench;
pub mod cli;
pub mod engine;
pub mod scaffold;
