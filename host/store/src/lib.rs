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

/// Run `work` on tokio's blocking pool: state store calls (which may wait on
/// SQLite's write lock or PostgreSQL's round trips) and file-system work
/// (hashing, copying, removing trees) block, and tokio's worker threads must
/// stay free to drive everything else. A panic in `work` goes on in the caller.
pub async fn off_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(failed) => match failed.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(cancelled) => panic!("blocking work cancelled: {cancelled}"),
        },
    }
}
