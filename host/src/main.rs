//! The `sluice` command-line tool.

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
