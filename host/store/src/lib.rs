//! Sluice's records: what an execution leaves behind.
//!
//! The [`state`] store (SQLite) records every transition before it is reported;
//! the [`artifact`] store keeps output trees by digest and [`export`] hands them
//! out; [`remote`] shares them (and plugins) through a bucket between machines;
//! [`secrets`] says where secret values come from and masks them in everything
//! recorded.

#![deny(missing_docs)]

pub mod artifact;
pub mod export;
pub mod remote;
pub mod secrets;
pub mod state;
