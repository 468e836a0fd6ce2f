//! {{name}}: a Sluice action. `run` is called once per attempt; see the SDK guide.

use sluice_sdk::{Context, Failure, Outcome};

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let who = ctx.config_or("who", "world");
    ctx.info(format!("greeting {who}"));
    if let Some(output) = ctx.outputs().first() {
        std::fs::write(ctx.output_dir(output).join("greeting.txt"), format!("hello, {who}\n"))?;
    }
    Ok(Outcome::new(format!("hello, {who}")).variable("who", who))
}

sluice_sdk::export_action!(run);
