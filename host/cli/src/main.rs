//! The `sluice` command-line tool.

fn main() -> std::process::ExitCode {
    // The process capability re-runs this binary to launch each native
    // command in its sandbox; that must happen before anything else starts.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == sluice_sandbox::launcher::LAUNCHER_ARG)
    {
        sluice_sandbox::launcher::main();
    }
    sluice::cli::main()
}
