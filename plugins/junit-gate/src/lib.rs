//! Sluice action `junit-gate`: read JUnit XML reports from the first input
//! artifact, export the counts and fail when too many tests failed.

mod find;
mod report;

use report::Summary;
use sluice_sdk::{Context, Failure, Outcome};

fn run(ctx: &Context) -> Result<Outcome, Failure> {
    let input = ctx.inputs().first().ok_or_else(|| {
        Failure::config("junit-gate needs an input artifact holding the test reports")
    })?;
    let pattern = ctx.config_or("path", "**/*.xml");
    let allowed = ctx.config_u64("allow-failures", 0)?;
    let glob = find::compile(pattern).map_err(Failure::config)?;
    let root = ctx.input_dir(input);

    let files = find::find(&root, &glob)
        .map_err(|e| Failure::job(format!("cannot list input artifact {input}: {e}")))?;
    let mut total = Summary::default();
    let mut reports = 0usize;
    for (i, file) in files.iter().enumerate() {
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        ctx.progress(
            u8::try_from(i * 100 / files.len()).unwrap_or(100),
            format!("reading {shown}"),
        );
        let xml = std::fs::read(file)
            .map_err(|e| Failure::job(format!("cannot read {input}/{shown}: {e}")))?;
        let xml = String::from_utf8_lossy(&xml);
        match report::parse_report(&xml) {
            Ok(Some(summary)) => {
                ctx.info(format!("{input}/{shown}: {}", summary.line()));
                total.merge(summary);
                reports += 1;
            }
            Ok(None) => ctx.warn(format!("{input}/{shown}: not a JUnit report, skipped")),
            Err(e) => {
                return Err(Failure::job(format!(
                    "{input}/{shown} is not well-formed XML: {e}"
                )));
            }
        }
    }
    if reports == 0 {
        return Err(Failure::config(format!(
            "no JUnit XML report matches `{pattern}` in input artifact {input}"
        )));
    }
    ctx.progress(100, "done");

    if let Some(message) = total.gate(allowed) {
        return Err(Failure::job(message));
    }
    let mut outcome = Outcome::new(format!(
        "{} in {reports} report{}",
        total.line(),
        if reports == 1 { "" } else { "s" }
    ));
    for (key, value) in total.variables() {
        outcome.set_variable(key, value);
    }
    Ok(outcome)
}

sluice_sdk::export_action!(run);
