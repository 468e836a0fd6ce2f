//! `noop`: the smallest possible action, so benchmarks measure the host, not the
//! plugin. With `sleep-ms` it sleeps first (memory benchmarks keep many alive).

use std::time::Duration;

use sluice_sdk::{Context, Failure, Outcome};

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let sleep_ms = ctx.config_u64("sleep-ms", 0)?;
    if sleep_ms > 0 {
        std::thread::sleep(Duration::from_millis(sleep_ms));
    }
    // With `rounds`, continue that many times (a stand-in for polling a deploy).
    let rounds = ctx.config_u64("rounds", 0)?;
    let done: u64 = ctx.continuation().and_then(|t| t.parse().ok()).unwrap_or(0);
    if done < rounds {
        ctx.info(format!("round {} of {rounds}", done + 1));
        let delay = Duration::from_millis(ctx.config_u64("delay-ms", 100)?);
        return Ok(Outcome::new(format!("{done} of {rounds} rounds done"))
            .resume_later((done + 1).to_string(), delay));
    }
    Ok(Outcome::new(if rounds > 0 {
        format!("done after {rounds} rounds")
    } else {
        "noop".into()
    }))
}

sluice_sdk::export_action!(run);
