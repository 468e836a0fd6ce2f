//! `noop`: the smallest possible action, so benchmarks measure the host, not the
//! plugin. With `sleep-ms` it sleeps first (memory benchmarks keep many alive).

use std::time::Duration;

use sluice_sdk::{Context, Failure, Outcome};

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let sleep_ms = ctx.config_u64("sleep-ms", 0)?;
    if sleep_ms > 0 {
        std::thread::sleep(Duration::from_millis(sleep_ms));
    }
    Ok(Outcome::new("noop"))
}

sluice_sdk::export_action!(run);
